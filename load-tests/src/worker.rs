//! A worker process: holds up to a few thousand subscribers (one process
//! may hold at most 20,000 open files here) and reports to the
//! orchestrator over stdout, one JSON object per line; it takes commands
//! (`reset`, `report`, `quit`) on stdin.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::client::{Stats, now_ns, subscriber};

/// What a worker is asked to do.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Servers to connect to, round robin.
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<SocketAddr>,
    /// Source addresses to connect from, round robin (127.0.0.x spreads the
    /// ephemeral ports).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub sources: Vec<IpAddr>,
    /// Connections to hold.
    #[arg(long)]
    pub count: usize,
    /// First connection's global index (trackingId `<prefix>-<index>`).
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    #[arg(long)]
    pub prefix: String,
    /// All connections subscribe to `<prefix>` itself (one big room).
    #[arg(long)]
    pub shared: bool,
    /// Start connecting at this Unix time in ns (so that several workers
    /// storm together).
    #[arg(long, default_value_t = 0)]
    pub start_at_ns: u64,
    /// Connections in their handshake at once (0: all at once, a storm).
    /// Bounding it keeps tens of thousands of SYNs from overflowing the
    /// kernel's accept queue when the point is to hold connections, not to
    /// storm.
    #[arg(long, default_value_t = 0)]
    pub max_connecting: usize,
}

/// A worker's lines on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerLine {
    /// Every connection has been acked or has failed.
    Ready {
        acked: u64,
        failed: u64,
        done_ns: u64,
    },
    /// Deliveries since the last reset: latency histogram as
    /// (microseconds, count) pairs.
    Report {
        received: u64,
        first_recv_ns: u64,
        last_recv_ns: u64,
        latency_us: Vec<(u64, u64)>,
    },
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let stats = Stats::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = Duration::from_nanos(args.start_at_ns.saturating_sub(now_ns()));
    tokio::time::sleep(wait.min(Duration::from_secs(30))).await;
    let mut tasks = Vec::with_capacity(args.count);
    let connecting = Arc::new(tokio::sync::Semaphore::new(if args.max_connecting == 0 {
        tokio::sync::Semaphore::MAX_PERMITS
    } else {
        args.max_connecting
    }));
    for i in 0..args.count {
        let index = args.offset + i;
        let target = args.targets[index % args.targets.len()];
        let source = args.sources[index % args.sources.len()];
        let tid = if args.shared {
            args.prefix.clone()
        } else {
            format!("{}-{index}", args.prefix)
        };
        let permit = connecting.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(subscriber(
            target,
            source,
            tid,
            stats.clone(),
            Duration::from_secs(60),
            stop_rx.clone(),
            permit,
        )));
    }
    let total = args.count as u64;
    loop {
        let done = stats.acked.load(Ordering::SeqCst) + stats.failed.load(Ordering::SeqCst);
        if done >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    emit(&WorkerLine::Ready {
        acked: stats.acked.load(Ordering::SeqCst),
        failed: stats.failed.load(Ordering::SeqCst),
        done_ns: now_ns(),
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "reset" => stats.reset(),
            "report" => {
                let latency_us = stats
                    .latency_us
                    .lock()
                    .map(|h| {
                        h.iter_recorded()
                            .map(|v| (v.value_iterated_to(), v.count_at_value()))
                            .collect()
                    })
                    .unwrap_or_default();
                emit(&WorkerLine::Report {
                    received: stats.received.load(Ordering::SeqCst),
                    first_recv_ns: stats.first_recv_ns.load(Ordering::SeqCst),
                    last_recv_ns: stats.last_recv_ns.load(Ordering::SeqCst),
                    latency_us,
                });
            }
            "quit" => break,
            _ => {}
        }
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}

fn emit(line: &WorkerLine) {
    if let Ok(s) = serde_json::to_string(line) {
        println!("{s}");
    }
}
