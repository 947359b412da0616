//! `tidings-load`: the load generator and side-by-side benchmark.
//!
//! - `tidings-load run` starts Tidings and the Node socket.io peer as real
//!   processes, runs every scenario against both, alternating, and writes
//!   `load-tests/results/` (see `load-tests/README.md`).
//! - `tidings-load worker` is a process holding a share of a scenario's
//!   sockets (spawned by `run`).
//! - `tidings-load probe` subscribes one lean client and prints the frames
//!   it relies on, for `check-client.mjs` to compare with socket.io-client.

mod client;
mod report;
mod run;
mod worker;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tidings-load",
    about = "Load generator and benchmark for Tidings"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the scenarios against both systems and write the results.
    Run(run::RunArgs),
    /// Hold sockets for the orchestrator (internal).
    Worker(worker::WorkerArgs),
    /// Ingest a burst into a running server (for profiling it under load).
    Burst {
        #[arg(long)]
        target: SocketAddr,
        /// TrackingIds `<prefix>-0` .. `<prefix>-<ids - 1>`, round robin.
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        ids: usize,
        #[arg(long)]
        requests: usize,
        #[arg(long, default_value_t = 100)]
        batch: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Subscribe one lean client and print each event it reads as JSON.
    Probe {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        tracking_id: String,
        /// Stop after this many events (the ack included).
        #[arg(long)]
        events: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Cmd::Run(args) => run::run(args).await,
            Cmd::Worker(args) => worker::run(args).await,
            Cmd::Probe {
                target,
                tracking_id,
                events,
            } => probe(target, &tracking_id, events).await,
            Cmd::Burst {
                target,
                prefix,
                ids,
                requests,
                batch,
                concurrency,
            } => run::burst(target, &prefix, ids, requests, batch, concurrency).await,
        }
    })
}

/// Prints `[event, payload]` for each event, as the load client reads it:
/// the event name from the frame's prefix and, for payments, the send time
/// it extracts.
async fn probe(target: SocketAddr, tracking_id: &str, events: usize) -> anyhow::Result<()> {
    use futures_util::SinkExt;
    let mut ws = client::connect(target, IpAddr::from([127, 0, 0, 1])).await?;
    let subscribe = format!(
        "42[\"subscribe\",{{\"trackingId\":{}}}]",
        serde_json::Value::from(tracking_id)
    );
    ws.send(tokio_tungstenite::tungstenite::Message::text(subscribe))
        .await?;
    for _ in 0..events {
        let frame =
            tokio::time::timeout(Duration::from_secs(10), client::next_text(&mut ws)).await??;
        let body = frame.strip_prefix("42").unwrap_or(&frame);
        let parsed: serde_json::Value = serde_json::from_str(body)?;
        let line = serde_json::json!({
            "event": parsed[0],
            "payload": parsed[1],
            "acked": frame.starts_with("42[\"ack\""),
            "sent_ns": client::payment_sent_ns(&frame),
        });
        println!("{line}");
    }
    Ok(())
}
