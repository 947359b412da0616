//! A lean Socket.IO (protocol v5, Engine.IO v4) websocket client: connect,
//! subscribe, then count and time `payment` events. Thousands run in one
//! process, so it keeps per-connection state small and parses only the
//! parts of a frame it relies on (checked against socket.io-client by
//! `tidings-load probe` and `check-client.mjs`).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

/// Nanoseconds since the Unix epoch: the clock shared by the ingester (which
/// writes it into each payment's signature) and the clients.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The latency histograms' ceiling, microseconds (120 s): a later delivery
/// is recorded at it, so a value there is "≥ 120 s", not a measurement.
pub const LATENCY_CAP_US: u64 = 120_000_000;

/// What all connections of one process record.
pub struct Stats {
    pub acked: AtomicU64,
    pub failed: AtomicU64,
    /// The phase being measured: only payments tagged with it count (the
    /// ingester writes its phase into each signature), so that a warm-up
    /// frame arriving late can never stand in for a measured one.
    pub phase: AtomicU64,
    /// Payments of the current phase received, per connection (index
    /// local to this process), to tell missing from duplicated ones.
    pub per_conn: Vec<AtomicU32>,
    /// Payments of another phase received since the last reset.
    pub stale: AtomicU64,
    /// Payments that came before their subscribe's ack (counted as
    /// received: they were delivered), since the last reset.
    pub before_ack: AtomicU64,
    pub received: AtomicU64,
    pub first_recv_ns: AtomicU64,
    pub last_recv_ns: AtomicU64,
    /// Ingest-to-receipt latency, microseconds.
    pub latency_us: Mutex<Histogram<u64>>,
    /// A failover's bookkeeping, per connection: 0 while it has never been
    /// lost, [`LOST`] while it is away, else when it was acked again (ns).
    pub resubscribed_ns: Vec<AtomicU64>,
    /// Connections lost after their ack, and then acked again elsewhere or
    /// given up on.
    pub lost: AtomicU64,
    pub reconnected: AtomicU64,
    pub reconnect_failed: AtomicU64,
    /// The last resubscription's ack, ns.
    pub resubscribed_max_ns: AtomicU64,
    /// When the last resubscribed connection had everything sent before it
    /// was acked again (the ack, or the receipt of the last such payment:
    /// its replay), ns.
    pub caught_up_max_ns: AtomicU64,
    /// Payments sent in `[window_from_ns, window_to_ns)` to connections
    /// never lost (live deliveries on the surviving nodes during a storm)
    /// are timed in `window_latency_us` as well.
    pub window_from_ns: AtomicU64,
    pub window_to_ns: AtomicU64,
    pub window_latency_us: Mutex<Histogram<u64>>,
}

/// `Stats::resubscribed_ns` of a connection lost and not yet back.
const LOST: u64 = u64::MAX;

impl Stats {
    pub fn new(conns: usize) -> Arc<Stats> {
        Arc::new(Stats {
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            phase: AtomicU64::new(0),
            per_conn: (0..conns).map(|_| AtomicU32::new(0)).collect(),
            stale: AtomicU64::new(0),
            before_ack: AtomicU64::new(0),
            received: AtomicU64::new(0),
            first_recv_ns: AtomicU64::new(u64::MAX),
            last_recv_ns: AtomicU64::new(0),
            latency_us: Mutex::new(histogram()),
            resubscribed_ns: (0..conns).map(|_| AtomicU64::new(0)).collect(),
            lost: AtomicU64::new(0),
            reconnected: AtomicU64::new(0),
            reconnect_failed: AtomicU64::new(0),
            resubscribed_max_ns: AtomicU64::new(0),
            caught_up_max_ns: AtomicU64::new(0),
            window_from_ns: AtomicU64::new(u64::MAX),
            window_to_ns: AtomicU64::new(0),
            window_latency_us: Mutex::new(histogram()),
        })
    }

    /// Starts measuring `phase`: the phase first, so that no frame of the
    /// old phase is counted after its counters are cleared.
    pub fn reset(&self, phase: u64) {
        self.phase.store(phase, Ordering::SeqCst);
        for c in &self.per_conn {
            c.store(0, Ordering::SeqCst);
        }
        self.stale.store(0, Ordering::SeqCst);
        self.before_ack.store(0, Ordering::SeqCst);
        self.received.store(0, Ordering::SeqCst);
        self.first_recv_ns.store(u64::MAX, Ordering::SeqCst);
        self.last_recv_ns.store(0, Ordering::SeqCst);
        for h in [&self.latency_us, &self.window_latency_us] {
            if let Ok(mut h) = h.lock() {
                h.reset();
            }
        }
    }

    /// Connection `conn` was lost after its ack.
    fn lost(&self, conn: usize) {
        self.lost.fetch_add(1, Ordering::SeqCst);
        if let Some(r) = self.resubscribed_ns.get(conn) {
            r.store(LOST, Ordering::SeqCst);
        }
    }

    /// Connection `conn` was acked again (on another node).
    fn resubscribed(&self, conn: usize) {
        let now = now_ns();
        self.reconnected.fetch_add(1, Ordering::SeqCst);
        if let Some(r) = self.resubscribed_ns.get(conn) {
            r.store(now, Ordering::SeqCst);
        }
        self.resubscribed_max_ns.fetch_max(now, Ordering::SeqCst);
        self.caught_up_max_ns.fetch_max(now, Ordering::SeqCst);
    }

    fn record(&self, conn: usize, tag: PaymentTag) {
        if tag.phase != self.phase.load(Ordering::Relaxed) {
            self.stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let sent_ns = tag.sent_ns;
        let now = now_ns();
        if let Some(c) = self.per_conn.get(conn) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        self.first_recv_ns.fetch_min(now, Ordering::Relaxed);
        self.last_recv_ns.fetch_max(now, Ordering::Relaxed);
        let us = (now.saturating_sub(sent_ns) / 1000).max(1);
        if let Ok(mut h) = self.latency_us.lock() {
            h.saturating_record(us);
        }
        let resubscribed = self
            .resubscribed_ns
            .get(conn)
            .map_or(0, |r| r.load(Ordering::Relaxed));
        if resubscribed == 0 {
            let from = self.window_from_ns.load(Ordering::Relaxed);
            let to = self.window_to_ns.load(Ordering::Relaxed);
            if (from..to).contains(&sent_ns)
                && let Ok(mut h) = self.window_latency_us.lock()
            {
                h.saturating_record(us);
            }
        } else if sent_ns < resubscribed {
            // Sent before this connection was back: its catch-up.
            self.caught_up_max_ns.fetch_max(now, Ordering::Relaxed);
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_CAP_US, 3).expect("histogram bounds")
}

type Ws = WebSocketStream<TcpStream>;

/// Opens a websocket from `source` to `target`'s Socket.IO endpoint and
/// completes the namespace connect.
pub async fn connect(target: SocketAddr, source: IpAddr) -> anyhow::Result<Ws> {
    connect_with(target, source, None).await
}

/// [`connect`], presenting `token` in the namespace connect's `auth`
/// (`40{"token":...}`, as socket.io-client's `auth: { token }` sends it)
/// when there is one.
pub async fn connect_with(
    target: SocketAddr,
    source: IpAddr,
    token: Option<&str>,
) -> anyhow::Result<Ws> {
    let socket = if source.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{target}/ws/v1/?EIO=4&transport=websocket");
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = client_async_with_config(url, stream, Some(config)).await?;
    let open = next_text(&mut ws).await?;
    anyhow::ensure!(open.starts_with('0'), "expected engine.io open, got {open}");
    let namespace_connect = match token {
        Some(t) => format!("40{}", serde_json::json!({ "token": t })),
        None => "40".to_owned(),
    };
    ws.send(Message::text(namespace_connect)).await?;
    let connected = next_text(&mut ws).await?;
    anyhow::ensure!(
        connected.starts_with("40"),
        "expected connect, got {connected}"
    );
    Ok(ws)
}

/// The next text frame other than a ping (which is answered).
pub async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => ws.send(Message::text("3")).await?,
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => anyhow::bail!("unexpected frame {other:?}"),
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("connection closed"),
        }
    }
}

/// Which connection of the process a subscriber is, and what it
/// subscribes to.
pub struct Seat {
    /// Index into `Stats::per_conn`.
    pub conn: usize,
    pub tracking_id: String,
    /// A socket token to connect with (token mode).
    pub token: Option<String>,
    /// An event id to subscribe with as `since` (a replay).
    pub since: Option<String>,
    /// Where to go when the connection is lost after its ack (a failover):
    /// the other nodes, tried in turn from `conn` on, at once and then
    /// every 100 ms for up to a minute, subscribing with `since` = the last
    /// event id received. Empty: a lost connection stays lost.
    pub alternatives: Vec<SocketAddr>,
}

/// How long a lost subscriber keeps trying the other nodes.
const RECONNECT_FOR: Duration = Duration::from_secs(60);
/// One reconnection attempt's bound (a SYN dropped by a full accept queue
/// is retried by the kernel after 1 s, then 3 s).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a subscribed connection ended.
enum Ended {
    Stopped,
    Lost,
}

/// One subscriber: connect, subscribe to `tracking_id`, wait for the ack,
/// then record every payment until `stop` fires; with `alternatives`,
/// resubscribe elsewhere when the connection is lost.
pub async fn subscriber(
    seat: Seat,
    target: SocketAddr,
    source: IpAddr,
    stats: Arc<Stats>,
    ack_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    connecting: tokio::sync::OwnedSemaphorePermit,
) {
    let conn = seat.conn;
    let mut last_id = seat.since.clone();
    let first = open(&seat, target, source, last_id.as_deref(), ack_timeout).await;
    drop(connecting);
    let mut ws = match first {
        Ok((ws, early)) => {
            stats
                .before_ack
                .fetch_add(early.len() as u64, Ordering::Relaxed);
            for frame in &early {
                take_payment(frame, conn, &stats, &mut last_id);
            }
            ws
        }
        // One that never got its ack is a failure; one lost after its ack
        // shows up as missing deliveries.
        Err(_) => {
            stats.failed.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    stats.acked.fetch_add(1, Ordering::SeqCst);
    loop {
        if let Ended::Stopped = listen(&mut ws, conn, &stats, &mut stop, &mut last_id).await {
            return;
        }
        if seat.alternatives.is_empty() || *stop.borrow() {
            return;
        }
        stats.lost(conn);
        match reconnect(&seat, source, &stats, &mut stop, last_id.as_deref()).await {
            Some((again, early)) => {
                stats
                    .before_ack
                    .fetch_add(early.len() as u64, Ordering::Relaxed);
                for frame in &early {
                    take_payment(frame, conn, &stats, &mut last_id);
                }
                ws = again;
            }
            None => return,
        }
    }
}

/// Tries the other nodes until one acks a subscribe with `since` (recorded
/// as the connection's resubscription), `stop` fires or time runs out
/// (recorded as a failed reconnection).
async fn reconnect(
    seat: &Seat,
    source: IpAddr,
    stats: &Stats,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    since: Option<&str>,
) -> Option<(Ws, Vec<String>)> {
    let deadline = tokio::time::Instant::now() + RECONNECT_FOR;
    for attempt in 0.. {
        let target = seat.alternatives[(seat.conn + attempt) % seat.alternatives.len()];
        let tried = tokio::select! {
            r = tokio::time::timeout(ATTEMPT_TIMEOUT, open(seat, target, source, since, ATTEMPT_TIMEOUT)) => r,
            _ = stop.changed() => return None,
        };
        if let Ok(Ok(opened)) = tried {
            stats.resubscribed(seat.conn);
            return Some(opened);
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stats.reconnect_failed.fetch_add(1, Ordering::SeqCst);
    None
}

/// Connects to `target` and subscribes (with `since` if given); returns
/// once the subscribe is acked, with the payment frames that came before
/// the ack (Tidings sends none; the peer joins the room before it reads the
/// history, so a live payment can precede its ack: it was delivered, and
/// counts).
async fn open(
    seat: &Seat,
    target: SocketAddr,
    source: IpAddr,
    since: Option<&str>,
    ack_timeout: Duration,
) -> anyhow::Result<(Ws, Vec<String>)> {
    let mut ws = connect_with(target, source, seat.token.as_deref()).await?;
    let mut request = serde_json::json!({ "trackingId": seat.tracking_id });
    if let Some(since) = since {
        request["since"] = serde_json::Value::from(since);
    }
    let subscribe = format!("42[\"subscribe\",{request}]");
    ws.send(Message::text(subscribe)).await?;
    let mut early = Vec::new();
    let acked = tokio::time::timeout(ack_timeout, async {
        loop {
            let frame = next_text(&mut ws).await?;
            if frame.starts_with("42[\"ack\"") {
                return Ok::<_, anyhow::Error>(());
            }
            anyhow::ensure!(
                !frame.starts_with("42[\"error\""),
                "subscribe refused: {frame}"
            );
            if payment_id(&frame).is_some() {
                early.push(frame);
            }
        }
    })
    .await;
    match acked {
        Ok(Ok(())) => Ok((ws, early)),
        Ok(Err(e)) => Err(e),
        Err(_) => anyhow::bail!("no ack within {ack_timeout:?}"),
    }
}

/// Records every payment on a subscribed connection (and remembers the
/// last event id, for a resubscription's `since`) until it is lost or
/// `stop` fires.
async fn listen(
    ws: &mut Ws,
    conn: usize,
    stats: &Stats,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    last_id: &mut Option<String>,
) -> Ended {
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    let t = t.as_str();
                    if t == "2" {
                        if ws.send(Message::text("3")).await.is_err() {
                            return Ended::Lost;
                        }
                    } else {
                        take_payment(t, conn, stats, last_id);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Ended::Lost,
            },
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return Ended::Stopped;
            }
        }
    }
}

/// Records a payment frame (anything else is ignored) and remembers its id
/// as the connection's last, for a resubscription's `since`.
fn take_payment(frame: &str, conn: usize, stats: &Stats, last_id: &mut Option<String>) {
    let Some(id) = payment_id(frame) else {
        return;
    };
    if let Some(tag) = payment_tag(frame) {
        stats.record(conn, tag);
    }
    match last_id {
        Some(held) => {
            held.clear();
            held.push_str(id);
        }
        None => *last_id = Some(id.to_owned()),
    }
}

/// The event id of a `payment` frame (`"id":"<epoch>-<seq>"`, the
/// envelope's first `id`: the payment's own fields have none).
pub fn payment_id(frame: &str) -> Option<&str> {
    if !frame.starts_with("42[\"payment\"") {
        return None;
    }
    let at = frame.find("\"id\":\"")? + "\"id\":\"".len();
    let rest = &frame[at..];
    Some(&rest[..rest.find('"')?])
}

/// What the ingester wrote into a payment's signature,
/// `lt-<sent ns>-<phase>-<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentTag {
    /// When the payment was due to be sent (its scheduled time in the rate
    /// scenarios), Unix ns.
    pub sent_ns: u64,
    pub phase: u64,
}

/// The send time the ingester wrote into a payment's signature
/// (`lt-<ns>-...`), if `frame` is a `payment` event.
pub fn payment_sent_ns(frame: &str) -> Option<u64> {
    let (sent, _) = signature_fields(frame)?;
    sent.parse().ok()
}

/// The send time and phase of a `payment` frame (`lt-<ns>-<phase>-<n>`).
pub fn payment_tag(frame: &str) -> Option<PaymentTag> {
    let (sent, rest) = signature_fields(frame)?;
    let phase = &rest[..rest.find('-')?];
    Some(PaymentTag {
        sent_ns: sent.parse().ok()?,
        phase: phase.parse().ok()?,
    })
}

/// `(<ns>, <the rest of the signature>)` of a `payment` frame.
fn signature_fields(frame: &str) -> Option<(&str, &str)> {
    if !frame.starts_with("42[\"payment\"") {
        return None;
    }
    let at = frame.find("\"signature\":\"lt-")? + "\"signature\":\"lt-".len();
    let digits = &frame[at..];
    let end = digits.find('-')?;
    Some((&digits[..end], &digits[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_send_time_from_a_payment_frame() {
        let frame = r#"42["payment",{"type":"payment_notification","id":"1-1","seq":1,"data":{"trackingId":"a","amount":1,"timestamp":1,"status":"executed","signature":"lt-123456789-7"},"timestamp":1}]"#;
        assert_eq!(payment_sent_ns(frame), Some(123456789));
        assert_eq!(payment_sent_ns(r#"42["ack",{"data":"x"}]"#), None);
    }

    #[test]
    fn reads_the_phase_from_a_payment_frame() {
        let frame = r#"42["payment",{"data":{"trackingId":"a","signature":"lt-123456789-2-7"}}]"#;
        assert_eq!(
            payment_tag(frame),
            Some(PaymentTag {
                sent_ns: 123456789,
                phase: 2
            })
        );
        // Without a phase (check-client.mjs' format) it is no measured payment.
        let untagged = r#"42["payment",{"data":{"signature":"lt-123456789-7"}}]"#;
        assert_eq!(payment_tag(untagged), None);
    }
}
