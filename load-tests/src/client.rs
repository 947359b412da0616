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
    pub received: AtomicU64,
    pub first_recv_ns: AtomicU64,
    pub last_recv_ns: AtomicU64,
    /// Ingest-to-receipt latency, microseconds.
    pub latency_us: Mutex<Histogram<u64>>,
}

impl Stats {
    pub fn new(conns: usize) -> Arc<Stats> {
        Arc::new(Stats {
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            phase: AtomicU64::new(0),
            per_conn: (0..conns).map(|_| AtomicU32::new(0)).collect(),
            stale: AtomicU64::new(0),
            received: AtomicU64::new(0),
            first_recv_ns: AtomicU64::new(u64::MAX),
            last_recv_ns: AtomicU64::new(0),
            latency_us: Mutex::new(
                Histogram::new_with_bounds(1, LATENCY_CAP_US, 3).expect("histogram bounds"),
            ),
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
        self.received.store(0, Ordering::SeqCst);
        self.first_recv_ns.store(u64::MAX, Ordering::SeqCst);
        self.last_recv_ns.store(0, Ordering::SeqCst);
        if let Ok(mut h) = self.latency_us.lock() {
            h.reset();
        }
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
        let us = now.saturating_sub(sent_ns) / 1000;
        if let Ok(mut h) = self.latency_us.lock() {
            h.saturating_record(us.max(1));
        }
    }
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
}

/// One subscriber: connect, subscribe to `tracking_id`, wait for the ack,
/// then record every payment until `stop` fires.
pub async fn subscriber(
    seat: Seat,
    target: SocketAddr,
    source: IpAddr,
    stats: Arc<Stats>,
    ack_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    connecting: tokio::sync::OwnedSemaphorePermit,
) {
    let Seat {
        conn,
        tracking_id,
        token,
        since,
    } = seat;
    let mut connecting = Some(connecting);
    let run = async {
        let mut ws = connect_with(target, source, token.as_deref()).await?;
        let mut request = serde_json::json!({ "trackingId": tracking_id });
        if let Some(since) = &since {
            request["since"] = serde_json::Value::from(since.as_str());
        }
        let subscribe = format!("42[\"subscribe\",{request}]");
        ws.send(Message::text(subscribe)).await?;
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
            }
        })
        .await;
        match acked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => anyhow::bail!("no ack within {ack_timeout:?}"),
        }
        stats.acked.fetch_add(1, Ordering::SeqCst);
        drop(connecting.take());
        let after_ack = |e: &dyn std::fmt::Display| anyhow::anyhow!("after-ack: {e}");
        loop {
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => {
                        let t = t.as_str();
                        if t == "2" {
                            ws.send(Message::text("3")).await.map_err(|e| after_ack(&e))?;
                        } else if let Some(tag) = payment_tag(t) {
                            stats.record(conn, tag);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(after_ack(&e)),
                    None => return Ok(()),
                },
                _ = stop.changed() => {
                    let _ = ws.close(None).await;
                    return Ok(());
                }
            }
        }
    };
    if let Err(err) = run.await {
        // A connection lost after its ack shows up as missing deliveries;
        // one that never got its ack is a failure.
        if !err.to_string().starts_with("after-ack") {
            stats.failed.fetch_add(1, Ordering::SeqCst);
        }
    }
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
