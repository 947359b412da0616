//! A worker process: holds up to a few thousand subscribers (one process
//! may hold at most 20,000 open files here) and reports to the
//! orchestrator over stdout, one JSON object per line; it takes commands
//! on stdin: `reset <phase> <payments>` (measure only payments of `phase`,
//! `payments` of them sent round robin over the rooms; answered with
//! `reset_done`), `window <from ns> <to ns>` (also time, apart, the
//! payments sent in that window to connections never lost), `report` and
//! `quit`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::client::{Seat, Stats, now_ns, subscriber};

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
    /// Rooms the ingester spreads payments over, round robin (the
    /// scenario's subscriber count): what each connection should receive.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
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
    /// A file of socket tokens, one line per connection by global index:
    /// each connection presents its own (token mode).
    #[arg(long)]
    pub tokens_file: Option<PathBuf>,
    /// A file of event ids, one line per connection by global index: each
    /// connection subscribes with its own as `since` (a replay).
    #[arg(long)]
    pub since_file: Option<PathBuf>,
    /// Measure this phase from the start, each connection expecting
    /// `--expect` payments of it: for payments that arrive right after the
    /// ack (a replay), before any `reset` could be sent.
    #[arg(long, default_value_t = 0)]
    pub phase: u64,
    #[arg(long, default_value_t = 0)]
    pub expect: u32,
    /// A connection lost after its ack resubscribes on another target
    /// with `since` = the last event id it received (a failover).
    #[arg(long)]
    pub reconnect: bool,
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
    /// `reset <phase>` took effect: from now on only payments of `phase`
    /// count.
    ResetDone { phase: u64 },
    /// Deliveries since the last reset: latency histogram as
    /// (microseconds, count) pairs.
    Report {
        received: u64,
        /// Payments of another phase (e.g. late warm-up frames).
        stale: u64,
        /// Payments that came before their subscribe's ack.
        #[serde(default)]
        before_ack: u64,
        /// Deliveries beyond what each connection should have received.
        over: u64,
        /// Deliveries each connection is still missing.
        short: u64,
        /// This process' CPU (user + system) since it started, seconds.
        cpu_s: f64,
        first_recv_ns: u64,
        last_recv_ns: u64,
        latency_us: Vec<(u64, u64)>,
        /// A failover's figures (see `Stats`): connections lost after their
        /// ack, acked again elsewhere, given up on; the last
        /// resubscription and the last catch-up (ns, 0 if none); the
        /// window's latency histogram.
        #[serde(default)]
        lost: u64,
        #[serde(default)]
        reconnected: u64,
        #[serde(default)]
        reconnect_failed: u64,
        #[serde(default)]
        resubscribed_max_ns: u64,
        #[serde(default)]
        caught_up_max_ns: u64,
        #[serde(default)]
        window_latency_us: Vec<(u64, u64)>,
    },
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let stats = Stats::new(args.count);
    stats.reset(args.phase);
    // What each connection should receive in the current phase.
    let mut expected: Vec<u32> = vec![args.expect; args.count];
    let tokens = seat_values(args.tokens_file.as_deref(), args.offset, args.count)?;
    let since = seat_values(args.since_file.as_deref(), args.offset, args.count)?;
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
            Seat {
                conn: i,
                tracking_id: tid,
                token: tokens.as_ref().map(|t| t[i].clone()),
                since: since.as_ref().map(|s| s[i].clone()),
                alternatives: if args.reconnect {
                    args.targets
                        .iter()
                        .copied()
                        .filter(|t| *t != target)
                        .collect()
                } else {
                    Vec::new()
                },
            },
            target,
            source,
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
        let mut words = line.split_whitespace();
        match words.next().unwrap_or("") {
            "reset" => {
                let phase = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let payments: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                for (i, e) in expected.iter_mut().enumerate() {
                    *e = per_conn_expected(&args, args.offset + i, payments);
                }
                stats.reset(phase);
                emit(&WorkerLine::ResetDone { phase });
            }
            "window" => {
                let mut at = || words.next().and_then(|w| w.parse::<u64>().ok());
                if let (Some(from), Some(to)) = (at(), at()) {
                    stats.window_from_ns.store(from, Ordering::SeqCst);
                    stats.window_to_ns.store(to, Ordering::SeqCst);
                }
            }
            "report" => {
                let (mut over, mut short) = (0u64, 0u64);
                for (got, want) in stats.per_conn.iter().zip(&expected) {
                    let got = got.load(Ordering::SeqCst);
                    over += u64::from(got.saturating_sub(*want));
                    short += u64::from(want.saturating_sub(got));
                }
                let pairs = |h: &std::sync::Mutex<hdrhistogram::Histogram<u64>>| {
                    h.lock()
                        .map(|h| {
                            h.iter_recorded()
                                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                emit(&WorkerLine::Report {
                    received: stats.received.load(Ordering::SeqCst),
                    stale: stats.stale.load(Ordering::SeqCst),
                    before_ack: stats.before_ack.load(Ordering::SeqCst),
                    over,
                    short,
                    cpu_s: own_cpu_s(),
                    first_recv_ns: stats.first_recv_ns.load(Ordering::SeqCst),
                    last_recv_ns: stats.last_recv_ns.load(Ordering::SeqCst),
                    latency_us: pairs(&stats.latency_us),
                    lost: stats.lost.load(Ordering::SeqCst),
                    reconnected: stats.reconnected.load(Ordering::SeqCst),
                    reconnect_failed: stats.reconnect_failed.load(Ordering::SeqCst),
                    resubscribed_max_ns: stats.resubscribed_max_ns.load(Ordering::SeqCst),
                    caught_up_max_ns: stats.caught_up_max_ns.load(Ordering::SeqCst),
                    window_latency_us: pairs(&stats.window_latency_us),
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

/// This worker's `count` lines of a per-connection file, from line
/// `offset` on (none without a file); a file too short is an error.
fn seat_values(
    file: Option<&Path>,
    offset: usize,
    count: usize,
) -> anyhow::Result<Option<Vec<String>>> {
    let Some(file) = file else { return Ok(None) };
    let text = std::fs::read_to_string(file)?;
    let values: Vec<String> = text
        .lines()
        .skip(offset)
        .take(count)
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(
        values.len() == count,
        "{} has {} lines for connections {offset}.., {count} needed",
        file.display(),
        values.len()
    );
    Ok(Some(values))
}

/// Payments the connection with global index `index` should receive when
/// `payments` are sent: all of them in a shared room; otherwise its share
/// of the ingester's round robin over `rooms` ids (`<prefix>-<index>`).
fn per_conn_expected(args: &WorkerArgs, index: usize, payments: u64) -> u32 {
    let count = if args.shared {
        payments
    } else {
        let rooms = args.rooms.max(1) as u64;
        payments / rooms + u64::from((index as u64 % rooms) < payments % rooms)
    };
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// This process' CPU time (user + system), seconds: the load generator's
/// own cost, so that a reader can tell which side was the bottleneck.
pub fn own_cpu_s() -> f64 {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn emit(line: &WorkerLine) {
    if let Ok(s) = serde_json::to_string(line) {
        println!("{s}");
    }
}
