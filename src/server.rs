//! Assembly: builds the store, the Socket.IO layer, the HTTP routes and
//! their middleware from a [`Config`], and runs them until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Method, Request, header};
use axum::routing::{get, post};
use socketioxide::SocketIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Notify, mpsc};
use tower::util::MapRequestLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::api::{self, App, AppState};
use crate::config::Config;
use crate::detach::detach_head;
use crate::fanout::Fanout;
use crate::ingest::{self, IngestTokens};
use crate::realtime::{self, Realtime};
use crate::store::{
    Deliveries, HistoryStore, MemoryStore, Queued, RedisStore, Retention, StoreError,
};
use crate::telemetry;

/// The Socket.IO endpoint path (contract section 1).
pub const SOCKET_PATH: &str = "/ws/v1";

/// How often expired history and dedupe keys are swept from memory.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// How often the store is pinged in the background.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);

/// Packets a socket may have queued. A subscribe with `since` queues its
/// whole replay at once, so this is the history limit plus room for live
/// traffic; it is only a bound (memory is used by packets actually queued).
const LIVE_BUFFER: usize = 1024;

/// Largest Engine.IO payload a client may send (a polling POST or a
/// websocket message). Subscribe payloads are a few hundred bytes.
const MAX_SOCKET_MESSAGE: u64 = 64 * 1024;

/// Pending connections the kernel may queue before we accept them.
const ACCEPT_BACKLOG: u32 = 8192;

/// Bytes of the websocket read buffer per connection (see
/// `shared/notes/memory-per-connection.md`).
const WS_READ_BUFFER: usize = 256;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot set up Redis: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound, ready-to-run server.
pub struct Server {
    listener: TcpListener,
    router: Router,
    io: SocketIo,
    app: AppState,
    fanout: Arc<Fanout>,
    published: mpsc::Receiver<Queued>,
    /// The memory store, which needs sweeping; `None` in cluster mode,
    /// where Redis expires keys itself.
    memory: Option<Arc<MemoryStore>>,
    shutdown_timeout: Duration,
}

impl Server {
    /// Validates `config`, builds every part and binds the listener.
    pub async fn bind(config: &Config) -> Result<Server, StartError> {
        config.validate()?;
        if config.ingest_tokens.is_empty() {
            tracing::warn!(
                "no --ingest-token configured: ingest (POST /v1/payments) refuses every request"
            );
        }
        let history_limit = config.history_limit as usize;
        let retention = Retention {
            max_events: history_limit,
            history_ttl_ms: config.history_ttl * 1000,
            dedupe_ttl_ms: config.dedupe_ttl * 1000,
        };
        let (deliveries, published) = Deliveries::channel(config.delivery_buffer as usize);
        let (store, memory): (Arc<dyn HistoryStore>, _) = match config.redis_target() {
            None => {
                let memory = Arc::new(MemoryStore::new(retention, deliveries.clone()));
                (memory.clone(), Some(memory))
            }
            Some(target) => {
                tracing::info!(
                    ?target,
                    "cluster mode: history, dedupe and publication in Redis"
                );
                (
                    Arc::new(RedisStore::connect(&target, retention, deliveries.clone()).await?),
                    None,
                )
            }
        };

        let (sio_layer, io) = SocketIo::builder()
            .req_path(SOCKET_PATH)
            .max_buffer_size(history_limit + LIVE_BUFFER)
            .max_payload(MAX_SOCKET_MESSAGE)
            // Clients send a few small events; a 4 KB websocket read buffer
            // per connection would be most of an idle socket's memory.
            .ws_read_buffer_size(WS_READ_BUFFER)
            .build_layer();
        let fanout = Arc::new(Fanout::new(io.clone()));
        realtime::register(
            &io,
            Arc::new(Realtime::new(
                fanout.clone(),
                store.clone(),
                config.max_subscriptions as usize,
                history_limit,
                config.rate_limit,
                config.rate_burst,
            )),
        );
        let app: AppState = Arc::new(App::new(
            store,
            IngestTokens::new(&config.ingest_tokens),
            config.max_body as usize,
            config.max_batch as usize,
            telemetry::metrics_handle(),
            // One node: a 202 means this node's sockets have been handed the
            // payments. A cluster node cannot promise that for other nodes.
            config.redis_url.is_none().then_some(deliveries),
        ));

        let router = Router::new()
            .route("/v1/payments", post(ingest::ingest))
            .route("/v1/events", get(api::events))
            .route("/healthz", get(api::healthz))
            .route("/readyz", get(api::readyz))
            .route("/metrics", get(api::metrics))
            .fallback(api::not_found)
            .with_state(app.clone())
            .layer(sio_layer)
            .layer(MapRequestLayer::new(detach_head(SOCKET_PATH)))
            .layer(cors(&config.cors_origins))
            .layer(
                TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                    let request_id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    // The path only: query strings may carry tokens.
                    tracing::info_span!("http", method = %req.method(), path = req.uri().path(), request_id)
                }),
            )
            .layer(PropagateRequestIdLayer::new(HeaderName::from_static("x-request-id")))
            .layer(SetRequestIdLayer::new(HeaderName::from_static("x-request-id"), MakeRequestUuid));

        let listener = listen(config.listen).map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        Ok(Server {
            listener,
            router,
            io,
            app,
            fanout,
            published,
            memory,
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        // A bound TCP listener always has a local address.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| unreachable!("bound listener has an address"))
    }

    /// Serves until `shutdown` resolves, then: stops accepting connections,
    /// refuses new ingest, closes every socket (clients see a transport
    /// close and reconnect, to another node behind a load balancer), lets
    /// in-flight requests finish, and returns. Gives up waiting after the
    /// shutdown timeout.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let addr = self.local_addr();
        tracing::info!(%addr, "listening on {addr}");
        let sweeper = self.memory.map(|store| tokio::spawn(sweep(store)));
        let delivery = tokio::spawn(self.fanout.run(self.published));
        let keepalive = tokio::spawn(keepalive(self.app.store.clone()));
        let signalled = Arc::new(Notify::new());
        let on_signal = {
            let (app, io, signalled) = (self.app.clone(), self.io.clone(), signalled.clone());
            async move {
                shutdown.await;
                tracing::info!("shutting down");
                app.begin_shutdown();
                signalled.notify_one();
                io.close().await;
            }
        };
        let serve = axum::serve(self.listener, self.router).with_graceful_shutdown(on_signal);
        let timeout = self.shutdown_timeout;
        let result = tokio::select! {
            result = serve.into_future() => result,
            () = async { signalled.notified().await; tokio::time::sleep(timeout).await } => {
                tracing::warn!(?timeout, "shutdown timed out; exiting with work in flight");
                Ok(())
            }
        };
        if let Some(sweeper) = sweeper {
            sweeper.abort();
        }
        delivery.abort();
        keepalive.abort();
        tracing::info!("stopped");
        result
    }
}

/// Binds with a deep accept queue: when thousands of clients reconnect at
/// once (a node restarted behind a load balancer), a short queue drops
/// their SYNs and each waits a whole TCP retransmission (1 s, then 3 s...).
/// The kernel caps it at `net.core.somaxconn`.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::HeaderName::from_static("x-request-id"),
        ])
        .max_age(Duration::from_secs(600));
    if origins.iter().any(|o| o == "*") {
        // Any origin, without credentials: what socket.io-client sends by
        // default (withCredentials: false).
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        layer
            .allow_origin(AllowOrigin::list(list))
            .allow_credentials(true)
    }
}

/// Pings the store every second: a Redis connection that broke is noticed
/// and re-established (with its pub/sub subscriptions) even when no request
/// comes, and the store's state is logged when it changes.
async fn keepalive(store: Arc<dyn HistoryStore>) {
    let mut every = tokio::time::interval(KEEPALIVE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut up = true;
    loop {
        every.tick().await;
        match store.ping().await {
            Ok(()) if !up => {
                tracing::info!("storage reachable again");
                up = true;
            }
            Err(err) if up => {
                tracing::error!(%err, "storage unreachable: ingest answers 503 until it is back");
                up = false;
            }
            _ => {}
        }
        metrics::gauge!(telemetry::STORE_UP).set(if up { 1.0 } else { 0.0 });
    }
}

async fn sweep(store: Arc<MemoryStore>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    loop {
        every.tick().await;
        let stats = store.sweep();
        metrics::gauge!(telemetry::STORE_HISTORIES).set(stats.histories as f64);
        metrics::gauge!(telemetry::STORE_EVENTS).set(stats.events as f64);
        metrics::gauge!(telemetry::STORE_DEDUPE_KEYS).set(stats.dedupe_keys as f64);
    }
}
