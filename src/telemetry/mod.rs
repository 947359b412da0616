//! Telemetry: logging through `tracing` (pretty or JSON) and Prometheus
//! metrics. Every metric name the server records is declared here, so the
//! list of what `/metrics` exposes is in one place; [`Exporter`] renders
//! them (with the figures read at each scrape: the process's, sockets by
//! transport), and [`figures`] keeps the few the admin report reads.

pub mod figures;

use std::io::IsTerminal;
use std::sync::Arc;

use clap::ValueEnum;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Counter: payments stored (not duplicates), by nothing.
pub const PAYMENTS_STORED: &str = "tidings_payments_stored_total";
/// Counter: ingested payments answered as duplicates.
pub const PAYMENTS_DUPLICATE: &str = "tidings_payments_duplicate_total";
/// Counter: ingest requests, labelled by `status` (HTTP status code).
pub const INGEST_REQUESTS: &str = "tidings_ingest_requests_total";
/// Counter: `payment` broadcasts made (one per stored payment).
pub const BROADCASTS: &str = "tidings_broadcasts_total";
/// Counter: deliveries dropped, labelled by `reason`: [`DROP_QUEUE_FULL`]
/// (this node's publication queue was full: the hub catches its sockets up
/// from the history) or [`DROP_SOCKET`] (one socket's outgoing buffer was
/// full or the socket was closing: that client sees the seq jump and
/// recovers with `since`).
pub const DELIVERIES_DROPPED: &str = "tidings_deliveries_dropped_total";
pub const DROP_QUEUE_FULL: &str = "queue_full";
pub const DROP_SOCKET: &str = "socket_buffer";
/// Counter: catch-up reads started by the hub, labelled by `reason`:
/// `gap` (a publication's seq skipped ahead), `dropped` (a publication was
/// dropped from the queue), `resync` (the store's pub/sub connection was
/// re-established) or `audit` (the store found a listen missing).
pub const CATCH_UPS: &str = "tidings_catch_ups_total";
/// Counter: events delivered to sockets by catch-up reads.
pub const CATCH_UP_EVENTS: &str = "tidings_catch_up_events_total";
/// Counter: `HISTORY_TRUNCATED` warnings sent unprompted to a trackingId's
/// subscribers on this node (its history started afresh, or events owed to
/// them are no longer retained).
pub const GAPS_ANNOUNCED: &str = "tidings_gaps_announced_total";
/// Counter: times the store's publication connection was lost and the hub
/// re-listened to every trackingId and caught them up.
pub const STORE_RESYNCS: &str = "tidings_store_resyncs_total";
/// Gauge: trackingIds with at least one subscriber on this node.
pub const TOPICS: &str = "tidings_topics";
/// Counter: events replayed to sockets subscribing with `since`.
pub const REPLAYED: &str = "tidings_replayed_events_total";
/// Counter: subscribes with `since` repeated on a held trackingId that
/// needed no replay (the socket had been handed everything after `since`).
pub const REPLAYS_SKIPPED: &str = "tidings_replays_skipped_total";
/// Counter: socket errors sent, labelled by `code`.
pub const SOCKET_ERRORS: &str = "tidings_socket_errors_total";
/// Counter: socket connections refused in token mode: for want of a valid
/// token (`UNAUTHORIZED`), or from an address slowed down for failed
/// credentials (`RATE_LIMITED`).
pub const CONNECTS_UNAUTHORIZED: &str = "tidings_connects_unauthorized_total";
/// Counter: socket tokens minted by `POST /v1/ws/tokens`.
pub const TOKENS_MINTED: &str = "tidings_tokens_minted_total";
/// Gauge: connected sockets on this node.
pub const SOCKETS: &str = "tidings_sockets";
/// Gauge: subscriptions held by sockets on this node.
pub const SUBSCRIPTIONS: &str = "tidings_subscriptions";
/// Gauge: Engine.IO sessions holding a connection slot on this node
/// (connected clients, and handshakes not yet joined or not yet reaped).
pub const CONNECTIONS: &str = "tidings_connections";
/// Counter: connection handshakes refused, labelled by `reason`:
/// `node_limit` (`--max-connections`) or `ip_limit`
/// (`--max-connections-per-ip`).
pub const CONNECTIONS_REFUSED: &str = "tidings_connections_refused_total";
/// Gauge: 1 while the store (Redis in cluster mode) answers, else 0.
pub const STORE_UP: &str = "tidings_store_up";
/// Gauge: histories, events and dedupe keys held by the memory store.
pub const STORE_HISTORIES: &str = "tidings_store_histories";
pub const STORE_EVENTS: &str = "tidings_store_events";
pub const STORE_DEDUPE_KEYS: &str = "tidings_store_dedupe_keys";
/// Gauge: the memory store's estimate of the bytes it retains (bounded by
/// `--memory-limit`).
pub const STORE_MEMORY_BYTES: &str = "tidings_store_memory_bytes";
/// Counter: payments (event and dedupe key) the memory store evicted,
/// oldest first, to keep within `--memory-limit`.
pub const STORE_EVICTIONS: &str = "tidings_store_evictions_total";
/// Counter: answers from the storage this server could not read (a reply
/// of the wrong shape, a key of the wrong type, a publication that is not
/// ours): a bug or a foreign writer, answered `500`, never retried.
pub const STORE_MALFORMED: &str = "tidings_store_malformed_total";
/// Gauge: this node's `--max-connections` (for "near its limit" alerts
/// against [`CONNECTIONS`]).
pub const CONNECTIONS_LIMIT: &str = "tidings_connections_limit";
/// Gauge, set at each scrape: connected sockets on this node by their
/// current `transport` (`polling`, `websocket`).
pub const SOCKETS_BY_TRANSPORT: &str = "tidings_sockets_by_transport";

/// Histogram: `POST /v1/payments` from the first byte handled to the
/// response, labelled by `status`.
pub const INGEST_DURATION: &str = "tidings_ingest_request_duration_seconds";
/// Histogram: one store append (one trackingId's payments of a request,
/// stored and published), labelled by `outcome` (`ok`, `error`).
pub const APPEND_DURATION: &str = "tidings_store_append_duration_seconds";
/// Histogram: from a payment's acceptance (its envelope `timestamp`, a
/// wall-clock millisecond, so across nodes it includes their clock skew)
/// to this node handing it to the outgoing buffer of every socket
/// subscribed here, labelled by `path`: [`PATH_LIVE`] (the publication,
/// in order) or [`PATH_CATCH_UP`] (read back from the history after a
/// drop, a seq gap or a pub/sub reconnect: late by how long that took).
pub const DELIVERY_LAG: &str = "tidings_delivery_lag_seconds";
pub const PATH_LIVE: &str = "live";
pub const PATH_CATCH_UP: &str = "catch_up";
/// The [`DELIVERY_LAG`] histogram of `path` ([`PATH_LIVE`] or
/// [`PATH_CATCH_UP`]), looked up once: a lookup by name and label per
/// delivery would cost more than the recording. Registered at the first
/// delivery, once the server's recorder is installed.
pub fn delivery_lag(path: &'static str) -> &'static metrics::Histogram {
    static HANDLES: std::sync::OnceLock<[metrics::Histogram; 2]> = std::sync::OnceLock::new();
    let [live, catch_up] = HANDLES.get_or_init(|| {
        [PATH_LIVE, PATH_CATCH_UP].map(|p| metrics::histogram!(DELIVERY_LAG, "path" => p))
    });
    if path == PATH_LIVE { live } else { catch_up }
}
/// Histogram: events replayed to one socket for one subscribe with
/// `since` (0 when it was already up to date).
pub const REPLAY_EVENTS: &str = "tidings_replay_events";

/// Buckets of the duration histograms, in seconds: 0.5 ms to 10 s.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of the delivery lag, in seconds: its resolution is the
/// envelope's millisecond, so the first bucket is 1 ms; up to a minute (a
/// catch-up after Redis came back).
const LAG_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets of the replay sizes (`--history-limit` is 1000 by default).
const REPLAY_BUCKETS: &[f64] = &[0.0, 1.0, 10.0, 100.0, 1000.0, 10000.0];
/// How often recorded histogram samples are folded into their buckets
/// when nobody scrapes (the exporter holds them until then).
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the global `tracing` subscriber. `RUST_LOG` filters (default
/// `info`). Pretty output on a terminal, JSON otherwise, unless `format`
/// says which.
pub fn init_logging(format: Option<LogFormat>) {
    let format = format.unwrap_or(if std::io::stdout().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let no_frames = tracing_subscriber::filter::filter_fn(not_a_frame);
    // `try_init` fails only if a subscriber is already set (tests, embedding);
    // the existing one is kept.
    let _ = match format {
        LogFormat::Pretty => builder.finish().with(no_frames).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .finish()
            .with(no_frames)
            .try_init(),
    };
}

/// Whatever `RUST_LOG` asks: tungstenite logs every websocket frame below
/// `info`, the Engine.IO session id of the open packet and the socket
/// token of the connect packet included, and neither may reach a log.
fn not_a_frame(meta: &tracing::Metadata<'_>) -> bool {
    let target = meta.target();
    let websocket = target.starts_with("tungstenite") || target.starts_with("tokio_tungstenite");
    !websocket || *meta.level() <= tracing::Level::INFO
}

/// Installs the global Prometheus recorder, or returns the one already
/// installed (several servers in one test process share it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = buckets(PrometheusBuilder::new()).build_recorder();
            let handle = recorder.handle();
            // Prometheus's recorder, keeping the admin report's figures.
            if metrics::set_global_recorder(figures::Tee(recorder)).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            zero_series();
            handle
        })
        .clone()
}

/// Histograms render as Prometheus histograms (not summaries) with these
/// buckets, so that quantiles can be aggregated across nodes.
fn buckets(builder: PrometheusBuilder) -> PrometheusBuilder {
    let histograms = [
        (INGEST_DURATION, DURATION_BUCKETS),
        (APPEND_DURATION, DURATION_BUCKETS),
        (DELIVERY_LAG, LAG_BUCKETS),
        (REPLAY_EVENTS, REPLAY_BUCKETS),
    ];
    histograms
        .into_iter()
        .fold(builder, |builder, (name, buckets)| {
            // Only an empty bucket list is refused; none of these is empty.
            match builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets) {
                Ok(builder) => builder,
                Err(_) => unreachable!("non-empty buckets for {name}"),
            }
        })
}

/// The process's own figures (RSS, CPU seconds, open and max files,
/// threads), read from `/proc` when `/metrics` is scraped.
pub fn collect_process_metrics() {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR
        .get_or_init(|| {
            let collector = metrics_process::Collector::default();
            collector.describe();
            collector
        })
        .collect();
}

/// Counts this node's connected sockets by transport: (polling, websocket).
pub type TransportCount = dyn Fn() -> (u64, u64) + Send + Sync;

/// This node's metrics in the Prometheus text format. The figures that are
/// read rather than counted (the process's, sockets by transport) are
/// taken at each render; the socket layer says how to count its sockets.
#[derive(Clone)]
pub struct Exporter {
    handle: PrometheusHandle,
    transports: Arc<TransportCount>,
}

impl Exporter {
    /// Installs the recorder (once per process) and counts sockets by
    /// transport with `transports`.
    pub fn new(transports: impl Fn() -> (u64, u64) + Send + Sync + 'static) -> Self {
        Exporter {
            handle: metrics_handle(),
            transports: Arc::new(transports),
        }
    }

    /// Connected sockets by transport now: (polling, websocket).
    pub fn sockets_by_transport(&self) -> (u64, u64) {
        (self.transports)()
    }

    /// The exposition, with the read figures taken now.
    pub fn render(&self) -> String {
        collect_process_metrics();
        let (polling, websocket) = self.sockets_by_transport();
        metrics::gauge!(SOCKETS_BY_TRANSPORT, "transport" => "polling").set(polling as f64);
        metrics::gauge!(SOCKETS_BY_TRANSPORT, "transport" => "websocket").set(websocket as f64);
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets every few
    /// seconds, so their memory stays bounded between scrapes.
    pub async fn upkeep(self) {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.handle.run_upkeep();
        }
    }
}

/// Series that dashboards and alerts query exist from the first scrape,
/// at zero, rather than from the first time their thing happens.
/// (Histograms cannot: they render only once they have a sample.)
fn zero_series() {
    for reason in [DROP_QUEUE_FULL, DROP_SOCKET] {
        metrics::counter!(DELIVERIES_DROPPED, "reason" => reason).increment(0);
    }
    for reason in ["gap", "dropped", "resync", "audit"] {
        metrics::counter!(CATCH_UPS, "reason" => reason).increment(0);
    }
    for reason in ["node_limit", "ip_limit"] {
        metrics::counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(0);
    }
    for name in [
        PAYMENTS_STORED,
        PAYMENTS_DUPLICATE,
        STORE_EVICTIONS,
        STORE_MALFORMED,
        STORE_RESYNCS,
        GAPS_ANNOUNCED,
        CATCH_UP_EVENTS,
        REPLAYED,
        REPLAYS_SKIPPED,
        BROADCASTS,
        TOKENS_MINTED,
        CONNECTS_UNAUTHORIZED,
    ] {
        metrics::counter!(name).increment(0);
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        CONNECTIONS_LIMIT,
        "This node's --max-connections (compare with tidings_connections)"
    );
    describe_gauge!(
        SOCKETS_BY_TRANSPORT,
        "Connected sockets on this node by current transport (polling, websocket)"
    );
    describe_histogram!(
        INGEST_DURATION,
        Unit::Seconds,
        "POST /v1/payments duration, by HTTP status"
    );
    describe_histogram!(
        APPEND_DURATION,
        Unit::Seconds,
        "One store append (a trackingId's payments of a request, stored and published), by outcome"
    );
    describe_histogram!(
        DELIVERY_LAG,
        Unit::Seconds,
        "Payment acceptance to handed to every subscribed socket on this node, by path (live, catch_up)"
    );
    describe_histogram!(
        REPLAY_EVENTS,
        Unit::Count,
        "Events replayed to one socket for one subscribe with since"
    );
    describe_counter!(PAYMENTS_STORED, "Payments stored (duplicates excluded)");
    describe_counter!(
        CONNECTS_UNAUTHORIZED,
        "Socket connections refused in token mode (no valid token, or an address slowed down for failed credentials)"
    );
    describe_counter!(TOKENS_MINTED, "Socket tokens minted");
    describe_counter!(
        PAYMENTS_DUPLICATE,
        "Ingested payments answered as duplicates"
    );
    describe_counter!(INGEST_REQUESTS, "Ingest requests by HTTP status");
    describe_counter!(BROADCASTS, "Payment broadcasts to trackingId rooms");
    describe_counter!(
        DELIVERIES_DROPPED,
        "Deliveries dropped, by reason (queue_full: recovered by catch-up; socket_buffer: the client recovers with since)"
    );
    describe_counter!(CATCH_UPS, "Catch-up reads started by the hub, by reason");
    describe_counter!(CATCH_UP_EVENTS, "Events delivered by catch-up reads");
    describe_counter!(
        GAPS_ANNOUNCED,
        "HISTORY_TRUNCATED warnings sent unprompted to a trackingId's subscribers"
    );
    describe_counter!(
        STORE_RESYNCS,
        "Publication connection re-established: every trackingId re-listened and caught up"
    );
    describe_gauge!(TOPICS, "TrackingIds with subscribers on this node");
    describe_counter!(
        REPLAYED,
        "Events replayed to sockets subscribing with since"
    );
    describe_counter!(
        REPLAYS_SKIPPED,
        "Subscribes with since repeated on a held trackingId that needed no replay"
    );
    describe_counter!(SOCKET_ERRORS, "Error envelopes sent to sockets, by code");
    describe_gauge!(SOCKETS, "Connected sockets on this node");
    describe_gauge!(SUBSCRIPTIONS, "Subscriptions held by sockets on this node");
    describe_gauge!(
        CONNECTIONS,
        "Engine.IO sessions holding a connection slot on this node"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connection handshakes refused, by reason (node_limit, ip_limit)"
    );
    describe_gauge!(STORE_UP, "1 while the store answers pings, else 0");
    describe_gauge!(STORE_HISTORIES, "TrackingId histories in the memory store");
    describe_gauge!(STORE_EVENTS, "Events retained in the memory store");
    describe_gauge!(
        STORE_DEDUPE_KEYS,
        "Idempotency keys remembered by the memory store"
    );
    describe_gauge!(
        STORE_MEMORY_BYTES,
        "Estimated bytes retained by the memory store (bounded by --memory-limit)"
    );
    describe_counter!(
        STORE_MALFORMED,
        "Answers from the storage that could not be read (a bug or a foreign writer; answered 500, not retried)"
    );
    describe_counter!(
        STORE_EVICTIONS,
        "Payments evicted by the memory store, oldest first, to keep within --memory-limit"
    );
}

/// A socket's name in the logs: eight hex digits derived from its Engine.IO
/// session id with a key drawn when the process starts. The session id
/// itself is never logged: it is a polling session's only credential (a
/// log reader could poll the victim's packets and post events as it).
/// The same socket has the same tag in every line of one process.
pub struct SocketTag([u8; 4]);

impl SocketTag {
    pub fn of(sid: impl std::fmt::Display) -> Self {
        use sha2::{Digest, Sha256};
        static KEY: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
        let key = KEY.get_or_init(|| *uuid::Uuid::new_v4().as_bytes());
        let mut hash = Sha256::new();
        hash.update(key);
        hash.update(sid.to_string().as_bytes());
        let digest = hash.finalize();
        SocketTag([digest[0], digest[1], digest[2], digest[3]])
    }
}

impl std::fmt::Display for SocketTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a:02x}{b:02x}{c:02x}{d:02x}")
    }
}
