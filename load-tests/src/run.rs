//! The orchestrator: starts each system (Tidings, and the Node socket.io
//! peer) as real processes, runs every scenario against both in turn with
//! worker processes holding the sockets, and writes the results.

use std::ffi::OsStr;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::client::{LATENCY_CAP_US, now_ns};
use crate::report::{Machine, Provenance, Record, Results};
use crate::worker::WorkerLine;
use crate::worker::own_cpu_s;

/// Sockets one worker process holds (well under the 20,000 open files a
/// process may have here).
const PER_WORKER: usize = 5_000;
const INGEST_TOKEN: &str = "load-token";
/// Token mode (`token-storm`): the key that mints socket tokens and the
/// secret that signs them (a benchmark's, on loopback).
const API_KEY: &str = "load-api-key";
const TOKEN_SECRET: &str = "load-token-secret-0123456789abcdef";
/// How long after the last expected delivery duplicates are still looked
/// for.
const OVER_DELIVERY_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Multiplies every count and duration (1.0 is the full run; 0.05 a
    /// quick smoke run).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Only the scenarios whose names contain one of these.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Only these systems.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tidings,peer,peer-cluster"
    )]
    pub systems: Vec<String>,
    /// Where results go.
    #[arg(long, default_value = "load-tests/results")]
    pub out: PathBuf,
    /// A label for this run, stored with the results (e.g. the optimisation
    /// being measured).
    #[arg(long, default_value = "")]
    pub label: String,
    /// The tidings binary.
    #[arg(long, default_value = "target/release/tidings")]
    pub tidings_bin: PathBuf,
    /// Extra flags for tidings nodes.
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    pub tidings_flags: String,
    /// Repeats of each scenario for each system; each figure is reported
    /// as the median with min and max.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// Exit non-zero (after writing the results) if any scenario failed,
    /// lost a connection or an ingest request, or delivered fewer or more
    /// payments than expected: for a smoke run in CI.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Tidings,
    /// The peer as one Node process.
    Peer,
    /// The peer as a Node `cluster` of one worker per core sharing one
    /// port, through Redis (`peer/cluster.mjs`).
    PeerCluster,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Tidings => "tidings",
            System::Peer => "peer",
            System::PeerCluster => "peer-cluster",
        }
    }
}

/// A server process.
struct Node {
    child: Child,
    addr: SocketAddr,
    pid: u32,
}

impl Node {
    async fn start(
        system: System,
        args: &RunArgs,
        redis: Option<&str>,
        tokens: bool,
    ) -> anyhow::Result<Node> {
        let mut cmd = match system {
            System::Tidings => {
                let mut c = Command::new(&args.tidings_bin);
                c.args([
                    "--listen",
                    "127.0.0.1:0",
                    "--ingest-token",
                    INGEST_TOKEN,
                    "--log-format",
                    "json",
                ]);
                c.args(["--rate-burst", "1000", "--delivery-buffer", "1000000"]);
                if let Some(url) = redis {
                    c.args(["--redis-url", url]);
                }
                if tokens {
                    c.args(["--auth", "token", "--api-key", API_KEY])
                        .args(["--token-secret", TOKEN_SECRET]);
                }
                c.args(args.tidings_flags.split_whitespace());
                c.env("RUST_LOG", "info");
                c
            }
            System::Peer | System::PeerCluster => {
                let mut c = Command::new("node");
                c.arg(if system == System::PeerCluster {
                    "load-tests/peer/cluster.mjs"
                } else {
                    "load-tests/peer/server.mjs"
                })
                .args(["--listen", "127.0.0.1:0"]);
                if let Some(url) = redis {
                    c.args(["--redis-url", url]);
                }
                c.env("PEER_INGEST_TOKEN", INGEST_TOKEN);
                if tokens {
                    c.env("PEER_TOKEN_SECRET", TOKEN_SECRET);
                }
                c
            }
        };
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", system.name()))?;
        let pid = child.id().context("pid")?;
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for stream in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = tx.send(line);
                }
            });
        }
        let addr = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = rx.recv().await {
                if let Some(at) = line.find("listening on ") {
                    let rest = &line[at + "listening on ".len()..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                        .unwrap_or(rest.len());
                    if let Ok(addr) = rest[..end].parse::<SocketAddr>() {
                        return Some(addr);
                    }
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .with_context(|| format!("{} did not report its address", system.name()))?;
        // Keep draining its output so that it never blocks on a full pipe.
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        Ok(Node { child, addr, pid })
    }

    /// The server's processes: this one and its descendants (a Node
    /// cluster's workers).
    fn processes(&self) -> Vec<u32> {
        process_tree(self.pid)
    }

    fn rss_kb(&self) -> u64 {
        self.processes().into_iter().map(rss_kb).sum()
    }

    /// OS threads of its processes now (all of them: a runtime's workers,
    /// and Node's libuv pool and V8 helpers too).
    fn threads(&self) -> u64 {
        self.processes()
            .into_iter()
            .map(|p| proc_status_field(p, "Threads:"))
            .sum()
    }

    /// CPU (user + system) its processes used since they started, seconds.
    fn cpu_s(&self) -> f64 {
        self.processes().into_iter().map(cpu_s).sum()
    }

    /// Kills the server and its descendants (a Node cluster's workers
    /// would otherwise outlive a killed primary).
    async fn stop(mut self) {
        let descendants: Vec<u32> = self.processes().into_iter().skip(1).collect();
        let _ = self.child.kill().await;
        for pid in descendants {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill only sends a signal, to a process this
                // harness started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// `pid` and its descendants, from `/proc/<pid>/task/*/children`.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", all[i]));
        for task in tasks.into_iter().flatten().flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            all.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        i += 1;
    }
    all
}

/// CPU (user + system) process `pid` used since it started, seconds.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from
    // field 3 on: utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf reads a constant of the system.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / per_s
}

fn rss_kb(pid: u32) -> u64 {
    proc_status_field(pid, "VmRSS:")
}

/// A numeric field of `/proc/<pid>/status` (0 if unreadable).
fn proc_status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// A redis-server on a free port.
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    async fn start() -> anyhow::Result<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("tidings-load-redis-{port}"));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("redis-server")?;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(Redis {
                    child,
                    url: format!("redis://127.0.0.1:{port}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("redis-server did not start")
    }

    fn cpu_s(&self) -> f64 {
        self.child.id().map_or(0.0, cpu_s)
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The worker processes holding one scenario's sockets.
struct Clients {
    workers: Vec<(Child, ChildStdin, Lines<BufReader<ChildStdout>>)>,
    acked: u64,
    failed: u64,
    /// When the last worker was done (all acked or failed), Unix ns.
    done_ns: u64,
}

struct Spread<'a> {
    targets: &'a [SocketAddr],
    count: usize,
    prefix: &'a str,
    shared: bool,
    /// Rooms payments are spread over (round robin): the subscriber count.
    rooms: usize,
    /// Connect all at once at a common instant (a storm); otherwise each
    /// worker starts when spawned.
    start_at_ns: u64,
}

/// What each connection brings besides its trackingId: files of one line
/// per connection (by global index), and a phase measured from the start.
#[derive(Default)]
struct Seats<'a> {
    tokens_file: Option<&'a std::path::Path>,
    since_file: Option<&'a std::path::Path>,
    /// Measure this phase from the start (0: wait for a `reset`) ...
    phase: u64,
    /// ... each connection expecting this many payments of it.
    expect: u32,
    /// A connection lost after its ack resubscribes on another target.
    reconnect: bool,
}

impl Clients {
    /// What a connect storm that began at `start` (ns) achieved: the time
    /// until every client was acked, and how many were or failed.
    fn record_storm(&self, rec: &mut Recorder, start: u64) {
        rec.add(
            "connect_all_acked_s",
            "s",
            self.done_ns.saturating_sub(start) as f64 / 1e9,
        );
        rec.add("max_conns", "conns", self.acked as f64);
        rec.add("failed", "conns", self.failed as f64);
    }

    async fn start(spread: Spread<'_>) -> anyhow::Result<Clients> {
        Clients::start_seated(spread, &Seats::default()).await
    }

    async fn start_seated(spread: Spread<'_>, seats: &Seats<'_>) -> anyhow::Result<Clients> {
        let exe = std::env::current_exe()?;
        let targets: Vec<String> = spread.targets.iter().map(|t| t.to_string()).collect();
        // 127.0.0.1-4 as sources: 4 x ~28k ephemeral ports.
        let sources: Vec<IpAddr> = (1..=4).map(|i| IpAddr::from([127, 0, 0, i])).collect();
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        let mut workers = Vec::new();
        let mut offset = 0;
        while offset < spread.count {
            let n = PER_WORKER.min(spread.count - offset);
            let mut child = Command::new(&exe)
                .arg("worker")
                .args([
                    "--targets",
                    &targets.join(","),
                    "--sources",
                    &sources.join(","),
                ])
                .args([
                    "--count",
                    &n.to_string(),
                    "--offset",
                    &offset.to_string(),
                    "--prefix",
                    spread.prefix,
                    "--rooms",
                    &spread.rooms.to_string(),
                ])
                .args(["--start-at-ns", &spread.start_at_ns.to_string()])
                .args([
                    "--max-connecting",
                    if spread.start_at_ns == 0 { "200" } else { "0" },
                ])
                .args(if spread.shared {
                    vec!["--shared"]
                } else {
                    vec![]
                })
                .args(if seats.reconnect {
                    vec!["--reconnect"]
                } else {
                    vec![]
                })
                .args(["--phase", &seats.phase.to_string()])
                .args(["--expect", &seats.expect.to_string()])
                .args(
                    seats
                        .tokens_file
                        .iter()
                        .flat_map(|f| [OsStr::new("--tokens-file"), f.as_os_str()]),
                )
                .args(
                    seats
                        .since_file
                        .iter()
                        .flat_map(|f| [OsStr::new("--since-file"), f.as_os_str()]),
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()?;
            let stdin = child.stdin.take().context("stdin")?;
            let stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
            workers.push((child, stdin, stdout));
            offset += n;
        }
        let mut clients = Clients {
            workers,
            acked: 0,
            failed: 0,
            done_ns: 0,
        };
        for (_, _, lines) in clients.workers.iter_mut() {
            match next_line(lines, Duration::from_secs(180)).await? {
                WorkerLine::Ready {
                    acked,
                    failed,
                    done_ns,
                } => {
                    clients.acked += acked;
                    clients.failed += failed;
                    clients.done_ns = clients.done_ns.max(done_ns);
                }
                other => bail!("unexpected worker line {other:?}"),
            }
        }
        Ok(clients)
    }

    async fn command(&mut self, cmd: &str) -> anyhow::Result<()> {
        for (_, stdin, _) in self.workers.iter_mut() {
            stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
            stdin.flush().await?;
        }
        Ok(())
    }

    /// Starts measuring `phase`, in which `payments` will be sent, and
    /// waits until every worker confirmed it: frames of an earlier phase
    /// are never counted after this returns.
    async fn reset(&mut self, phase: u64, payments: u64) -> anyhow::Result<()> {
        self.command(&format!("reset {phase} {payments}")).await?;
        for (_, _, lines) in self.workers.iter_mut() {
            match next_line(lines, Duration::from_secs(30)).await? {
                WorkerLine::ResetDone { phase: done } if done == phase => {}
                other => bail!("expected reset_done {phase}, got {other:?}"),
            }
        }
        Ok(())
    }

    /// Deliveries since the last reset, merged across workers.
    async fn report(&mut self) -> anyhow::Result<Delivered> {
        self.command("report").await?;
        let mut d = Delivered {
            received: 0,
            stale: 0,
            before_ack: 0,
            over: 0,
            short: 0,
            cpu_s: 0.0,
            first_ns: u64::MAX,
            last_ns: 0,
            latency_us: Histogram::new_with_bounds(1, LATENCY_CAP_US, 3)?,
            failover: Failover {
                lost: 0,
                reconnected: 0,
                reconnect_failed: 0,
                resubscribed_max_ns: 0,
                caught_up_max_ns: 0,
                window_latency_us: Histogram::new_with_bounds(1, LATENCY_CAP_US, 3)?,
            },
        };
        for (_, _, lines) in self.workers.iter_mut() {
            match next_line(lines, Duration::from_secs(30)).await? {
                WorkerLine::Report {
                    received,
                    stale,
                    before_ack,
                    over,
                    short,
                    cpu_s,
                    first_recv_ns,
                    last_recv_ns,
                    latency_us,
                    lost,
                    reconnected,
                    reconnect_failed,
                    resubscribed_max_ns,
                    caught_up_max_ns,
                    window_latency_us,
                } => {
                    let f = &mut d.failover;
                    f.lost += lost;
                    f.reconnected += reconnected;
                    f.reconnect_failed += reconnect_failed;
                    f.resubscribed_max_ns = f.resubscribed_max_ns.max(resubscribed_max_ns);
                    f.caught_up_max_ns = f.caught_up_max_ns.max(caught_up_max_ns);
                    for (v, c) in window_latency_us {
                        f.window_latency_us.saturating_record_n(v, c);
                    }
                    d.received += received;
                    d.stale += stale;
                    d.before_ack += before_ack;
                    d.over += over;
                    d.short += short;
                    d.cpu_s += cpu_s;
                    d.first_ns = d.first_ns.min(first_recv_ns);
                    d.last_ns = d.last_ns.max(last_recv_ns);
                    for (v, c) in latency_us {
                        d.latency_us.saturating_record_n(v, c);
                    }
                }
                other => bail!("unexpected worker line {other:?}"),
            }
        }
        Ok(d)
    }

    /// Waits until every connection has what it should receive in this
    /// phase (or `timeout`), polling the workers' counts; then, after
    /// `grace` for duplicates still in flight (an absence, which no event
    /// announces), reports what arrived in all.
    async fn wait_for(&mut self, timeout: Duration, grace: Duration) -> anyhow::Result<Delivered> {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.report().await?;
            if d.short == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(grace).await;
        self.report().await
    }

    /// Stops the workers and adds their CPU to `rec`.
    async fn stop(mut self, rec: &mut Recorder) {
        // The last report carries each worker's CPU over its life.
        match self.report().await {
            Ok(d) => rec.workers_cpu_s += d.cpu_s,
            Err(err) => println!("  no final report from the workers: {err:#}"),
        }
        rec.workers += self.workers.len();
        let _ = self.command("quit").await;
        for (mut child, _, _) in self.workers.drain(..) {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

async fn next_line(
    lines: &mut Lines<BufReader<ChildStdout>>,
    timeout: Duration,
) -> anyhow::Result<WorkerLine> {
    loop {
        let line = tokio::time::timeout(timeout, lines.next_line())
            .await
            .context("worker timed out")??
            .context("worker exited")?;
        if let Ok(parsed) = serde_json::from_str::<WorkerLine>(&line) {
            return Ok(parsed);
        }
    }
}

struct Delivered {
    /// Payments of the measured phase received.
    received: u64,
    /// Payments of an earlier phase received during this one (not counted).
    stale: u64,
    /// Payments that came before their subscribe's ack (counted).
    before_ack: u64,
    /// Deliveries beyond what each connection should have received.
    over: u64,
    /// Deliveries still missing, summed over the connections.
    short: u64,
    /// The workers' CPU (user + system) since they started, seconds.
    cpu_s: f64,
    first_ns: u64,
    last_ns: u64,
    latency_us: Histogram<u64>,
    failover: Failover,
}

/// What the workers saw of a failover, merged.
struct Failover {
    /// Connections lost after their ack.
    lost: u64,
    /// ... acked again on another node, or given up on.
    reconnected: u64,
    reconnect_failed: u64,
    /// The last resubscription's ack, ns.
    resubscribed_max_ns: u64,
    /// When the last resubscribed connection had every payment sent before
    /// its resubscription, ns.
    caught_up_max_ns: u64,
    /// Latency of the payments sent in the worker's window to connections
    /// never lost.
    window_latency_us: Histogram<u64>,
}

/// Posts payments to a node's ingest endpoint; each signature carries the
/// send time (`lt-<ns>-<n>`) for the clients to time the delivery.
#[derive(Clone)]
struct Ingester {
    http: reqwest::Client,
    url: String,
    counter: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    /// Written into every signature: the clients count only the phase
    /// they measure.
    phase: Arc<AtomicU64>,
    /// How far behind its schedule the rate loop fell at worst (a request
    /// sent later than `start + i / rate`), ns.
    max_lag_ns: Arc<AtomicU64>,
}

impl Ingester {
    fn new(node: SocketAddr) -> Self {
        Ingester {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap_or_default(),
            url: format!("http://{node}/v1/payments"),
            counter: Arc::default(),
            errors: Arc::default(),
            phase: Arc::default(),
            max_lag_ns: Arc::default(),
        }
    }

    /// Sends one request. `scheduled_ns` is when a rate loop was due to send
    /// it: the latency is measured from then, so that the time a request
    /// waited for the loop (coordinated omission) is counted; a burst has
    /// no schedule and measures from now.
    async fn post(&self, tracking_ids: &[String], scheduled_ns: Option<u64>) {
        let now = now_ns();
        let sent = match scheduled_ns {
            Some(due) => {
                self.max_lag_ns
                    .fetch_max(now.saturating_sub(due), Ordering::Relaxed);
                due
            }
            None => now,
        };
        let phase = self.phase.load(Ordering::Relaxed);
        let mut body = String::with_capacity(tracking_ids.len() * 140 + 2);
        body.push('[');
        for (i, tid) in tracking_ids.iter().enumerate() {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                r#"{{"trackingId":"{tid}","amount":1000000,"timestamp":1699876543,"status":"executed","signature":"lt-{sent}-{phase}-{n}"}}"#
            ));
        }
        body.push(']');
        let res = self
            .http
            .post(&self.url)
            .bearer_auth(INGEST_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        if !res.is_ok_and(|r| r.status().as_u16() == 202) {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `per_second` requests of `batch` payments each, spread evenly, for
    /// `duration`, ids chosen round robin from `ids`.
    async fn at_rate(
        &self,
        ids: &[String],
        per_second: u64,
        batch: usize,
        duration: Duration,
    ) -> u64 {
        let total = rate_requests(per_second, duration.as_secs_f64());
        let interval = Duration::from_secs_f64(1.0 / per_second as f64);
        let start = tokio::time::Instant::now();
        let start_ns = now_ns();
        let limit = Arc::new(tokio::sync::Semaphore::new(256));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..total {
            tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
            let chosen: Vec<String> = (0..batch)
                .map(|j| ids[((i as usize) * batch + j) % ids.len()].clone())
                .collect();
            let due = start_ns + interval.mul_f64(i as f64).as_nanos() as u64;
            let (me, permit) = (self.clone(), limit.clone().acquire_owned().await);
            tasks.spawn(async move {
                me.post(&chosen, Some(due)).await;
                drop(permit);
            });
        }
        while tasks.join_next().await.is_some() {}
        total * batch as u64
    }

    /// `requests` requests of `batch` payments each, as fast as
    /// `concurrency` connections allow.
    async fn burst(
        &self,
        ids: &[String],
        requests: usize,
        batch: usize,
        concurrency: usize,
    ) -> u64 {
        let next = Arc::new(AtomicU64::new(0));
        let ids = Arc::new(ids.to_vec());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (me, next, ids) = (self.clone(), next.clone(), ids.clone());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= requests {
                        break;
                    }
                    let chosen: Vec<String> = (0..batch)
                        .map(|j| ids[(i * batch + j) % ids.len()].clone())
                        .collect();
                    me.post(&chosen, None).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        (requests * batch) as u64
    }
}

struct Recorder {
    scenario: String,
    system: System,
    run: usize,
    records: Vec<Record>,
    /// CPU of the scenario's worker processes, seconds, added as each set
    /// of workers stops.
    workers_cpu_s: f64,
    /// Worker processes the scenario started.
    workers: usize,
}

impl Recorder {
    fn add(&mut self, metric: &str, unit: &str, value: f64) {
        self.add_value(metric, unit, value, false);
    }

    fn add_value(&mut self, metric: &str, unit: &str, value: f64, capped: bool) {
        println!(
            "  {:<10} {:<28} {}{:>14.3} {}",
            self.system.name(),
            metric,
            if capped { "≥" } else { " " },
            value,
            unit
        );
        self.records.push(Record {
            scenario: self.scenario.clone(),
            system: self.system.name().to_owned(),
            run: self.run,
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            value,
            capped,
        });
    }

    /// What arrived against what should have: received, expected,
    /// missing, duplicated, of an earlier phase.
    fn counts(&mut self, d: &Delivered, expected: u64) {
        self.add("deliveries", "count", d.received as f64);
        self.add("deliveries_expected", "count", expected as f64);
        self.add("deliveries_missing", "count", d.short as f64);
        self.add("deliveries_over", "count", d.over as f64);
        self.add("stale_frames", "count", d.stale as f64);
        self.add("payments_before_ack", "count", d.before_ack as f64);
    }

    /// The ingester's failed requests and, for a rate loop, how far it
    /// fell behind its schedule.
    fn ingest(&mut self, ingester: &Ingester, at_rate: bool) {
        if at_rate {
            self.add(
                "send_lag_max_ms",
                "ms",
                ingester.max_lag_ns.load(Ordering::Relaxed) as f64 / 1e6,
            );
        }
        self.add(
            "ingest_errors",
            "requests",
            ingester.errors.load(Ordering::Relaxed) as f64,
        );
    }

    fn deliveries(&mut self, d: &Delivered, expected: u64, sent_ns: u64) {
        let span = (d.last_ns.saturating_sub(sent_ns)) as f64 / 1e9;
        self.counts(d, expected);
        if span > 0.0 {
            self.add("deliveries_per_s", "1/s", d.received as f64 / span);
        }
        for (metric, q) in [
            ("latency_p50_ms", 0.5),
            ("latency_p99_ms", 0.99),
            ("latency_p999_ms", 0.999),
        ] {
            let (ms, capped) = quantile_ms(&d.latency_us, q);
            self.add_value(metric, "ms", ms, capped);
        }
    }
}

/// The latency at quantile `q`, ms, and whether it is at the histogram's
/// ceiling (where it stores every later delivery, at or just above the
/// cap by its precision): then the figure is only a lower bound.
fn quantile_ms(h: &Histogram<u64>, q: f64) -> (f64, bool) {
    let us = h.value_at_quantile(q);
    (us.min(LATENCY_CAP_US) as f64 / 1000.0, us >= LATENCY_CAP_US)
}

/// How long memory is left to settle: the full time from scale 0.1 up, a
/// tenth of it in a smoke run (scale 0.01), which checks the harness, not
/// the figures.
fn settle(scale: f64, full: Duration) -> Duration {
    full.mul_f64((scale * 10.0).clamp(0.1, 1.0))
}

fn scaled(n: usize, scale: f64) -> usize {
    ((n as f64 * scale).round() as usize).max(1)
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// One system's nodes for a scenario: one node in memory, or several
/// sharing a Redis of their own.
struct Deployment {
    nodes: Vec<Node>,
    redis: Option<Redis>,
    /// CPU of the nodes killed during the scenario, up to their death.
    killed_cpu_s: f64,
}

impl Deployment {
    async fn start(system: System, args: &RunArgs, nodes: usize) -> anyhow::Result<Deployment> {
        Deployment::start_with(system, args, nodes, false).await
    }

    /// [`Deployment::start`], in token mode with `tokens`.
    async fn start_with(
        system: System,
        args: &RunArgs,
        nodes: usize,
        tokens: bool,
    ) -> anyhow::Result<Deployment> {
        // The clustered peer's workers share their store through Redis
        // even as one node.
        let redis = if nodes > 1 || system == System::PeerCluster {
            Some(Redis::start().await?)
        } else {
            None
        };
        let mut started = Vec::new();
        for _ in 0..nodes {
            let redis = redis.as_ref().map(|r| r.url.as_str());
            started.push(Node::start(system, args, redis, tokens).await?);
        }
        Ok(Deployment {
            nodes: started,
            redis,
            killed_cpu_s: 0.0,
        })
    }

    /// SIGKILLs the last node (and its workers): a machine dying.
    async fn kill_last(&mut self) {
        if let Some(node) = self.nodes.pop() {
            self.killed_cpu_s += node.cpu_s();
            node.stop().await;
        }
    }

    /// Records what the servers used (processes, threads, CPU over their
    /// lives, which are the scenario's) and stops them.
    async fn stop(self, rec: &mut Recorder) {
        rec.add(
            "server_processes",
            "processes",
            self.nodes
                .iter()
                .map(|n| n.processes().len())
                .sum::<usize>() as f64,
        );
        rec.add(
            "server_threads",
            "threads",
            self.nodes.iter().map(Node::threads).sum::<u64>() as f64,
        );
        rec.add(
            "server_cpu_s",
            "s",
            self.killed_cpu_s + self.nodes.iter().map(Node::cpu_s).sum::<f64>(),
        );
        if let Some(redis) = &self.redis {
            rec.add("redis_cpu_s", "s", redis.cpu_s());
        }
        for node in self.nodes {
            node.stop().await;
        }
        if let Some(redis) = self.redis {
            redis.stop().await;
        }
    }
}

/// Idle: N sockets each subscribed to its own trackingId, spread over
/// `nodes` nodes; RSS delta per connection.
async fn idle(rec: &mut Recorder, args: &RunArgs, n: usize, nodes: usize) -> anyhow::Result<()> {
    let deployment = Deployment::start(rec.system, args, nodes).await?;
    let servers = &deployment.nodes;
    tokio::time::sleep(settle(args.scale, Duration::from_secs(1))).await;
    let before: u64 = servers.iter().map(Node::rss_kb).sum();
    let targets: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let clients = Clients::start(Spread {
        targets: &targets,
        count: n,
        prefix: "idle",
        shared: false,
        rooms: n,
        start_at_ns: 0,
    })
    .await?;
    tokio::time::sleep(settle(args.scale, Duration::from_secs(3))).await;
    let after: u64 = servers.iter().map(Node::rss_kb).sum();
    rec.add("max_conns", "conns", clients.acked as f64);
    rec.add("failed", "conns", clients.failed as f64);
    rec.add(
        "rss_kb_per_conn",
        "KB",
        after.saturating_sub(before) as f64 / clients.acked.max(1) as f64,
    );
    rec.add("rss_mb_total", "MB", after as f64 / 1024.0);
    clients.stop(rec).await;
    deployment.stop(rec).await;
    Ok(())
}

/// Connect storm: K clients connect and subscribe at one instant. With
/// `tokens` (Tidings in token mode), each presents a token of its own
/// covering its trackingId, minted before the storm (not measured).
async fn storm(rec: &mut Recorder, args: &RunArgs, k: usize, tokens: bool) -> anyhow::Result<()> {
    let deployment = Deployment::start_with(rec.system, args, 1, tokens).await?;
    let addr = deployment.nodes[0].addr;
    let tokens_file = if tokens {
        let tids = ids("storm", k);
        // Tidings mints them as its users' backends do; the peer has no
        // endpoint, and verifies tokens signed here with the same secret.
        let minted = if rec.system == System::Tidings {
            mint_tokens(addr, &tids).await?
        } else {
            sign_tokens(&tids)?
        };
        Some(SeatFile::write("tokens", &minted)?)
    } else {
        None
    };
    let start = now_ns() + 2_000_000_000;
    let clients = Clients::start_seated(
        Spread {
            targets: &[addr],
            count: k,
            prefix: "storm",
            shared: false,
            rooms: k,
            start_at_ns: start,
        },
        &Seats {
            tokens_file: tokens_file.as_ref().map(|f| f.path.as_path()),
            ..Seats::default()
        },
    )
    .await?;
    clients.record_storm(rec, start);
    clients.stop(rec).await;
    deployment.stop(rec).await;
    Ok(())
}

/// Replay storm: `k` trackingIds each get a first payment (whose id the
/// clients hold) and then `events` more; the `k` clients connect at one
/// instant, each subscribing with `since` = that first id, so that each is
/// owed exactly `events` replayed payments. Measured: until every client
/// has them all (and nothing more).
async fn replay_storm(
    rec: &mut Recorder,
    args: &RunArgs,
    k: usize,
    events: u32,
) -> anyhow::Result<()> {
    let deployment = Deployment::start(rec.system, args, 1).await?;
    let addr = deployment.nodes[0].addr;
    let room_ids = ids("replay", k);
    let held = ingest_first(addr, &room_ids).await?;
    let since_file = SeatFile::write("since", &held)?;
    // The history to replay, phase 2: `events` per trackingId, round robin.
    let ingester = Ingester::new(addr);
    ingester.phase.store(2, Ordering::Relaxed);
    ingester.burst(&room_ids, k, events as usize, 4).await;
    let start = now_ns() + 2_000_000_000;
    let mut clients = Clients::start_seated(
        Spread {
            targets: &[addr],
            count: k,
            prefix: "replay",
            shared: false,
            rooms: k,
            start_at_ns: start,
        },
        &Seats {
            since_file: Some(&since_file.path),
            phase: 2,
            expect: events,
            ..Seats::default()
        },
    )
    .await?;
    clients.record_storm(rec, start);
    let d = clients
        .wait_for(Duration::from_secs(60), OVER_DELIVERY_GRACE)
        .await?;
    // The payments' own latency would be from their ingest, before the
    // storm: not a figure of the replay. Its span is.
    rec.add(
        "replay_all_received_s",
        "s",
        d.last_ns.saturating_sub(start) as f64 / 1e9,
    );
    let span = d.last_ns.saturating_sub(start) as f64 / 1e9;
    if span > 0.0 {
        rec.add("deliveries_per_s", "1/s", d.received as f64 / span);
    }
    rec.counts(&d, k as u64 * u64::from(events));
    rec.ingest(&ingester, false);
    clients.stop(rec).await;
    deployment.stop(rec).await;
    Ok(())
}

/// How long after the kill live deliveries on the surviving nodes are
/// timed apart: the storm (the target is every client caught up within
/// 5 s).
const FAILOVER_WINDOW: Duration = Duration::from_secs(5);

/// Failover: `per_node` sockets on each of 3 nodes sharing one Redis, each
/// subscribed to its own trackingId with `since` = the id of its first
/// payment; ingest on the first node at `rate` payments/s (one per
/// request, round robin over the trackingIds) for `secs`; a third of the
/// way in, the last node is SIGKILLed, and its clients resubscribe at once
/// on the other two with the last id they received. Measured: until every
/// one of them is acked again and has every payment sent before that
/// (its replay); the survivors' live latency in the 5 s after the kill;
/// Redis' CPU in those 5 s; and at the end, that every client had every
/// payment exactly once.
async fn failover(
    rec: &mut Recorder,
    args: &RunArgs,
    per_node: usize,
    rate: u64,
    secs: f64,
) -> anyhow::Result<()> {
    let mut deployment = Deployment::start(rec.system, args, 3).await?;
    let targets: Vec<SocketAddr> = deployment.nodes.iter().map(|n| n.addr).collect();
    let k = per_node * targets.len();
    let room_ids = ids("failover", k);
    let held = ingest_first(targets[0], &room_ids).await?;
    let since_file = SeatFile::write("since", &held)?;
    let mut clients = Clients::start_seated(
        Spread {
            targets: &targets,
            count: k,
            prefix: "failover",
            shared: false,
            rooms: k,
            start_at_ns: 0,
        },
        &Seats {
            since_file: Some(&since_file.path),
            reconnect: true,
            ..Seats::default()
        },
    )
    .await?;
    rec.add("max_conns", "conns", clients.acked as f64);
    rec.add("failed", "conns", clients.failed as f64);
    let total = rate_requests(rate, secs);
    clients.reset(2, total).await?;
    let ingester = Ingester::new(targets[0]);
    ingester.phase.store(2, Ordering::Relaxed);
    let sending = {
        let (ingester, ids) = (ingester.clone(), room_ids.clone());
        tokio::spawn(async move {
            ingester
                .at_rate(&ids, rate, 1, Duration::from_secs_f64(secs))
                .await
        })
    };
    let kill_at = Instant::now() + Duration::from_secs_f64(secs / 3.0);
    let kill_ns = now_ns() + Duration::from_secs_f64(secs / 3.0).as_nanos() as u64;
    let window_end_ns = kill_ns + FAILOVER_WINDOW.as_nanos() as u64;
    clients
        .command(&format!("window {kill_ns} {window_end_ns}"))
        .await?;
    tokio::time::sleep_until(kill_at.into()).await;
    let redis_before = deployment.redis.as_ref().map_or(0.0, Redis::cpu_s);
    deployment.kill_last().await;
    tokio::time::sleep(FAILOVER_WINDOW).await;
    let redis_storm_s = deployment.redis.as_ref().map_or(0.0, Redis::cpu_s) - redis_before;
    sending.await?;
    let d = clients
        .wait_for(Duration::from_secs(60), OVER_DELIVERY_GRACE)
        .await?;
    let f = &d.failover;
    let since_kill = |ns: u64| ns.saturating_sub(kill_ns) as f64 / 1e9;
    rec.add("failover_clients", "conns", per_node as f64);
    rec.add("connections_lost", "conns", f.lost as f64);
    // Only the killed node's clients may lose their connection.
    rec.add(
        "lost_unexpected",
        "conns",
        f.lost.abs_diff(per_node as u64) as f64,
    );
    rec.add("reconnected", "conns", f.reconnected as f64);
    rec.add("reconnect_failed", "conns", f.reconnect_failed as f64);
    rec.add("resubscribed_all_s", "s", since_kill(f.resubscribed_max_ns));
    rec.add("caught_up_all_s", "s", since_kill(f.caught_up_max_ns));
    for (metric, q) in [
        ("live_latency_p50_ms", 0.5),
        ("live_latency_p99_ms", 0.99),
        ("live_latency_p999_ms", 0.999),
    ] {
        let (ms, capped) = quantile_ms(&f.window_latency_us, q);
        rec.add_value(metric, "ms", ms, capped);
    }
    rec.add(
        "redis_cpu_storm_pct",
        "%",
        redis_storm_s / FAILOVER_WINDOW.as_secs_f64() * 100.0,
    );
    rec.counts(&d, total);
    rec.ingest(&ingester, true);
    clients.stop(rec).await;
    deployment.stop(rec).await;
    Ok(())
}

/// Ingests one payment for each of `tracking_ids` (untagged: no client
/// counts it) and returns their event ids, in the same order.
async fn ingest_first(node: SocketAddr, tracking_ids: &[String]) -> anyhow::Result<Vec<String>> {
    let http = reqwest::Client::new();
    let mut held = Vec::with_capacity(tracking_ids.len());
    for chunk in tracking_ids.chunks(100) {
        let body: Vec<serde_json::Value> = chunk
            .iter()
            .map(|tid| {
                serde_json::json!({
                    "trackingId": tid, "amount": 1, "timestamp": 1699876543,
                    "status": "executed", "signature": format!("first-{tid}"),
                })
            })
            .collect();
        let res = http
            .post(format!("http://{node}/v1/payments"))
            .bearer_auth(INGEST_TOKEN)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            res.status().as_u16() == 202,
            "ingest answered {}",
            res.status()
        );
        let answer: serde_json::Value = res.json().await?;
        let data = answer["data"]
            .as_array()
            .context("ingest answer without data")?;
        anyhow::ensure!(
            data.len() == chunk.len(),
            "ingest answered {} ids",
            data.len()
        );
        for item in data {
            held.push(
                item["id"]
                    .as_str()
                    .context("ingest answer without an id")?
                    .to_owned(),
            );
        }
    }
    Ok(held)
}

/// Mints one socket token per trackingId (covering it alone) from the
/// node's `POST /v1/ws/tokens`, a few at a time, in order.
async fn mint_tokens(node: SocketAddr, tracking_ids: &[String]) -> anyhow::Result<Vec<String>> {
    use futures_util::StreamExt;
    let http = reqwest::Client::new();
    let url = format!("http://{node}/v1/ws/tokens");
    let minted: Vec<anyhow::Result<String>> = futures_util::stream::iter(tracking_ids)
        .map(|tid| {
            let (http, url) = (&http, &url);
            async move {
                let res = http
                    .post(url)
                    .bearer_auth(API_KEY)
                    .json(&serde_json::json!({ "trackingIds": [tid] }))
                    .send()
                    .await?;
                anyhow::ensure!(
                    res.status().as_u16() == 201,
                    "mint answered {}",
                    res.status()
                );
                let answer: serde_json::Value = res.json().await?;
                Ok(answer["token"]
                    .as_str()
                    .context("mint answer without a token")?
                    .to_owned())
            }
        })
        .buffered(8)
        .collect()
        .await;
    minted.into_iter().collect()
}

/// Signs one socket token per trackingId (covering it alone) with the
/// shared secret, as a backend may (HS256, `exp` in 10 minutes).
fn sign_tokens(tracking_ids: &[String]) -> anyhow::Result<Vec<String>> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let key = EncodingKey::from_secret(TOKEN_SECRET.as_bytes());
    let now = now_ns() / 1_000_000_000;
    tracking_ids
        .iter()
        .map(|tid| {
            let claims = serde_json::json!({ "exp": now + 600, "iat": now, "tids": [tid] });
            Ok(encode(&Header::new(Algorithm::HS256), &claims, &key)?)
        })
        .collect()
}

/// A file of one value per connection for the workers, removed when
/// dropped.
struct SeatFile {
    path: PathBuf,
}

impl SeatFile {
    fn write(what: &str, values: &[String]) -> anyhow::Result<SeatFile> {
        let path = std::env::temp_dir().join(format!(
            "tidings-load-{what}-{}-{}",
            std::process::id(),
            now_ns()
        ));
        std::fs::write(&path, values.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(SeatFile { path })
    }
}

impl Drop for SeatFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Every scenario, in the order they run; counts are at scale 1.
const SCENARIOS: [(&str, Scenario); 13] = [
    (
        "idle-1k",
        Scenario::Idle {
            conns: 1_000,
            nodes: 1,
        },
    ),
    (
        "idle-10k",
        Scenario::Idle {
            conns: 10_000,
            nodes: 1,
        },
    ),
    (
        "idle-19k",
        Scenario::Idle {
            conns: 19_000,
            nodes: 1,
        },
    ),
    (
        "idle-50k-3nodes",
        Scenario::Idle {
            conns: 50_000,
            nodes: 3,
        },
    ),
    ("storm-10k", Scenario::Storm { clients: 10_000 }),
    ("token-storm-10k", Scenario::TokenStorm { clients: 10_000 }),
    (
        "replay-storm-10k-since-100",
        Scenario::ReplayStorm {
            clients: 10_000,
            events: 100,
        },
    ),
    (
        "fanout-rooms-10k-rate-1k",
        Scenario::Fanout {
            subscribers: 10_000,
            shared: false,
            nodes: 1,
            load: Load::Rate(1_000, 1, 10.0),
        },
    ),
    (
        "fanout-rooms-10k-batched-burst",
        Scenario::Fanout {
            subscribers: 10_000,
            shared: false,
            nodes: 1,
            load: Load::Burst(1_000, 100, 4),
        },
    ),
    (
        "fanout-bigroom-10k-rate-100",
        Scenario::Fanout {
            subscribers: 10_000,
            shared: true,
            nodes: 1,
            load: Load::Rate(100, 1, 10.0),
        },
    ),
    (
        "fanout-bigroom-10k-burst",
        Scenario::Fanout {
            subscribers: 10_000,
            shared: true,
            nodes: 1,
            load: Load::Burst(100, 1, 4),
        },
    ),
    (
        "cluster-fanout-rooms-10k-rate-1k",
        Scenario::Fanout {
            subscribers: 10_000,
            shared: false,
            nodes: 2,
            load: Load::Rate(1_000, 1, 10.0),
        },
    ),
    (
        "failover-3nodes-13k-each-rate-1k",
        Scenario::Failover {
            per_node: 13_000,
            rate: 1_000,
            secs: 30.0,
        },
    ),
];

#[derive(Debug, Clone, Copy)]
enum Scenario {
    /// Connections each subscribed to its own trackingId, over `nodes`.
    Idle { conns: usize, nodes: usize },
    /// Clients connecting and subscribing at one instant.
    Storm { clients: usize },
    /// The storm in token mode: each client presents a token of its own.
    TokenStorm { clients: usize },
    /// Clients each with `events` payments in their trackingId's history
    /// since the id they hold connect at one instant and subscribe with
    /// that `since`.
    ReplayStorm { clients: usize, events: u32 },
    /// `per_node` subscribers on each of 3 nodes, ingest at `rate` for
    /// `secs`, the last node killed a third of the way in (13k each, not
    /// 15k: the survivors end up holding 19.5k sockets each, within the
    /// 20,000 open files a process may have here).
    Failover {
        per_node: usize,
        rate: u64,
        secs: f64,
    },
    /// Subscribers (own rooms, or one `shared` room) on `nodes`, ingest on
    /// the first node.
    Fanout {
        subscribers: usize,
        shared: bool,
        nodes: usize,
        load: Load,
    },
}

#[derive(Debug, Clone, Copy)]
enum Load {
    /// Requests per second, payments per request, seconds.
    Rate(u64, usize, f64),
    /// Requests, payments per request, concurrency.
    Burst(usize, usize, usize),
}

impl Load {
    /// Payments the ingester sends for this load.
    fn payments(self) -> u64 {
        match self {
            Load::Rate(per_s, batch, secs) => rate_requests(per_s, secs) * batch as u64,
            Load::Burst(requests, batch, _) => (requests * batch) as u64,
        }
    }
}

/// Requests sent at `per_s` for `secs`.
fn rate_requests(per_s: u64, secs: f64) -> u64 {
    (per_s as f64 * secs) as u64
}

/// Fan-out: `subscribers` sockets (one room each, or one shared room) on
/// `nodes` nodes, ingest on the first node.
async fn fanout(
    rec: &mut Recorder,
    args: &RunArgs,
    subscribers: usize,
    shared: bool,
    nodes: usize,
    load: Load,
) -> anyhow::Result<()> {
    let deployment = Deployment::start(rec.system, args, nodes).await?;
    let servers = &deployment.nodes;
    let targets: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let prefix = if shared { "room" } else { "fan" };
    let mut clients = Clients::start(Spread {
        targets: &targets,
        count: subscribers,
        prefix,
        shared,
        rooms: subscribers,
        start_at_ns: 0,
    })
    .await?;
    if clients.failed > 0 {
        rec.add("failed", "conns", clients.failed as f64);
    }
    let room_ids = if shared {
        vec![prefix.to_owned()]
    } else {
        ids(prefix, subscribers)
    };
    let ingester = Ingester::new(servers[0].addr);
    // Warm up (connections, code paths) in phase 1 and wait for it to be
    // delivered, then measure phase 2: the workers confirm the switch and
    // count only payments tagged with it.
    // 200 payments (requests, batch, concurrency) over the rooms; 10 in a
    // shared room, where each is a delivery per subscriber (100,000 at
    // full scale, a few seconds for the slowest system).
    let (requests, batch, concurrency) = if shared { (2, 5, 2) } else { (20, 10, 2) };
    clients.reset(1, (requests * batch) as u64).await?;
    ingester.phase.store(1, Ordering::Relaxed);
    ingester
        .burst(&room_ids, requests, batch, concurrency)
        .await;
    // Only its arrival matters, not duplicates: no grace.
    let warm = clients
        .wait_for(Duration::from_secs(60), Duration::ZERO)
        .await?;
    if warm.short > 0 {
        rec.add("warmup_missing", "count", warm.short as f64);
    }
    clients.reset(2, load.payments()).await?;
    ingester.phase.store(2, Ordering::Relaxed);
    let sent_ns = now_ns();
    let payments = match load {
        Load::Rate(per_s, batch, secs) => {
            ingester
                .at_rate(&room_ids, per_s, batch, Duration::from_secs_f64(secs))
                .await
        }
        Load::Burst(requests, batch, concurrency) => {
            ingester
                .burst(&room_ids, requests, batch, concurrency)
                .await
        }
    };
    let expected = if shared {
        payments * subscribers as u64
    } else {
        payments
    };
    let d = clients
        .wait_for(Duration::from_secs(60), OVER_DELIVERY_GRACE)
        .await?;
    rec.deliveries(&d, expected, sent_ns);
    rec.ingest(&ingester, matches!(load, Load::Rate(..)));
    // Summed over the nodes (one figure per run for the summaries).
    rec.add(
        "rss_mb_after",
        "MB",
        servers.iter().map(Node::rss_kb).sum::<u64>() as f64 / 1024.0,
    );
    clients.stop(rec).await;
    deployment.stop(rec).await;
    Ok(())
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let s = args.scale;
    let mut systems = Vec::new();
    for name in &args.systems {
        systems.push(match name.as_str() {
            "tidings" => System::Tidings,
            "peer" => System::Peer,
            "peer-cluster" => System::PeerCluster,
            other => bail!("unknown system {other} (known: tidings, peer, peer-cluster)"),
        });
    }
    let mut records = Vec::new();
    let started = std::time::SystemTime::now();
    // The tree as the run starts (the binaries were built from it): edits
    // made while it runs must not pass for what was measured.
    let runs = args.runs as usize;
    let provenance = Provenance::collect(runs);
    for (i, (name, scenario)) in SCENARIOS.iter().copied().enumerate() {
        if !args.only.is_empty() && !args.only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        for run in 1..=runs {
            // Rotate which system goes first, from scenario to scenario and
            // from run to run (with two systems: alternate).
            let mut order = systems.clone();
            if !order.is_empty() {
                let n = order.len();
                order.rotate_left((i + run - 1) % n);
            }
            for system in order.iter().copied() {
                println!("{name} / {} / run {run} of {runs}", system.name());
                let mut rec = Recorder {
                    scenario: name.to_owned(),
                    system,
                    run,
                    records: Vec::new(),
                    workers_cpu_s: 0.0,
                    workers: 0,
                };
                let own_cpu_before = own_cpu_s();
                let result = match scenario {
                    Scenario::Idle { conns, nodes } => {
                        idle(&mut rec, &args, scaled(conns, s), nodes).await
                    }
                    Scenario::Storm { clients } => {
                        storm(&mut rec, &args, scaled(clients, s), false).await
                    }
                    Scenario::TokenStorm { clients } => {
                        storm(&mut rec, &args, scaled(clients, s), true).await
                    }
                    Scenario::ReplayStorm { clients, events } => {
                        replay_storm(&mut rec, &args, scaled(clients, s), events).await
                    }
                    Scenario::Failover {
                        per_node,
                        rate,
                        secs,
                    } => {
                        // Long enough at any scale for the kill, its window
                        // and the catch-up to fit in.
                        let secs = (secs * s).max(3.0);
                        failover(&mut rec, &args, scaled(per_node, s), rate, secs).await
                    }
                    Scenario::Fanout {
                        subscribers,
                        shared,
                        nodes,
                        load,
                    } => {
                        let load = match load {
                            Load::Rate(per_s, batch, secs) => {
                                Load::Rate(per_s, batch, secs * s.min(1.0))
                            }
                            Load::Burst(requests, batch, c) => {
                                Load::Burst(scaled(requests, s), batch, c)
                            }
                        };
                        fanout(&mut rec, &args, scaled(subscribers, s), shared, nodes, load).await
                    }
                };
                if let Err(err) = result {
                    println!("  {} failed: {err:#}", system.name());
                    rec.add("scenario_failed", "bool", 1.0);
                }
                // The load generator's own cost: this process over the
                // scenario and its workers over their lives.
                let cpu = own_cpu_s() - own_cpu_before + rec.workers_cpu_s;
                rec.add("loadgen_cpu_s", "s", cpu);
                rec.add("loadgen_processes", "processes", 1.0 + rec.workers as f64);
                records.extend(rec.records);
            }
        }
    }
    let results = Results {
        label: &args.label,
        provenance,
        machine: Machine::collect(),
        started_unix_s: started
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        scale: args.scale,
        systems: systems.iter().map(|s| s.name().to_owned()).collect(),
        records: &records,
    };
    results.write(&args.out)?;
    if args.check {
        let broken = check(&records);
        if !broken.is_empty() {
            for b in &broken {
                println!("check failed: {b}");
            }
            bail!("{} check(s) failed", broken.len());
        }
        println!("check passed: every scenario delivered exactly what it sent");
    }
    Ok(())
}

/// What `--check` refuses: every record that says the harness (or a
/// system) did not do what the scenario asked.
fn check(records: &[Record]) -> Vec<String> {
    const MUST_BE_ZERO: [&str; 8] = [
        "scenario_failed",
        "reconnect_failed",
        "lost_unexpected",
        "failed",
        "deliveries_missing",
        "deliveries_over",
        "ingest_errors",
        "warmup_missing",
    ];
    // The peer joins the room before it reads the history (the usual
    // socket.io way: nothing is lost), so a payment sent in between reaches
    // a resubscribing client live and again in its replay. That is the
    // peer's measured behaviour in the failover, not a fault of the
    // harness: reported, not refused.
    let peer_duplicates = |r: &Record| {
        r.metric == "deliveries_over" && r.system != "tidings" && r.scenario.starts_with("failover")
    };
    records
        .iter()
        .filter(|r| MUST_BE_ZERO.contains(&r.metric.as_str()) && r.value != 0.0)
        .filter(|r| !peer_duplicates(r))
        .map(|r| {
            format!(
                "{} / {} / run {}: {} = {}",
                r.scenario, r.system, r.run, r.metric, r.value
            )
        })
        .collect()
}

/// `tidings-load burst`: one burst of ingest, reporting its duration.
pub async fn burst(
    target: SocketAddr,
    prefix: &str,
    n_ids: usize,
    requests: usize,
    batch: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let ingester = Ingester::new(target);
    let started = Instant::now();
    let payments = ingester
        .burst(&ids(prefix, n_ids), requests, batch, concurrency)
        .await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{payments} payments in {secs:.2} s ({:.0}/s), {} failed requests",
        payments as f64 / secs,
        ingester.errors.load(Ordering::Relaxed)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantile_at_the_histogram_ceiling_is_flagged_capped() {
        let mut h = Histogram::new_with_bounds(1, LATENCY_CAP_US, 3).unwrap();
        h.saturating_record_n(2_000, 98);
        // Two deliveries later than the cap are stored at it.
        h.saturating_record_n(LATENCY_CAP_US * 3, 2);
        let (p50, capped) = quantile_ms(&h, 0.5);
        assert!((1.99..2.01).contains(&p50) && !capped, "{p50} {capped}");
        assert_eq!(quantile_ms(&h, 0.99), (120_000.0, true));
    }
}
