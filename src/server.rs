//! Assembly: builds the store, the hub, the Socket.IO layer and the HTTP
//! routes from a [`Config`], and runs them until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use socketioxide::layer::SocketIoLayer;
use socketioxide::{ParserConfig, SocketIo};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::admin::Admin;
use crate::auth::slowdown::Slowdown;
use crate::auth::{Access, BearerKeys, TokenKeys};
use crate::config::{AuthMode, Config, ConfigError};
use crate::http::client::TrustedProxies;
use crate::http::connections::ConnectionLimits;
use crate::http::serve::{self, HttpTimeouts};
use crate::http::state::{Credentials, Limits};
use crate::http::{self, App, AppState, SOCKET_PATH};
use crate::hub::SocketHub;
use crate::memory_limit;
use crate::realtime::{self, Realtime};
use crate::store::{
    HistoryStore, MemoryDirectory, MemoryStore, NodeDirectory, PublicationStream, Publications,
    RedisStore, RedisTarget, RedisTls, Retention, StoreError,
};
use crate::telemetry;

/// How often the store is pinged in the background.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);

/// Packets a socket may have queued. A subscribe with `since` queues its
/// whole replay at once, so this is the history limit plus room for live
/// traffic; it is only a bound (memory is used by packets actually queued).
const LIVE_BUFFER: usize = 1024;

/// Largest Engine.IO payload a client may send (a polling POST, or a
/// websocket message and each of its frames: a larger one closes the
/// connection). Subscribe payloads are a few hundred bytes.
const MAX_SOCKET_MESSAGE: u64 = 64 * 1024;

/// Binary attachments one packet may announce (the contract uses none).
const MAX_ATTACHMENTS: usize = 4;

/// Pending connections the kernel may queue before we accept them.
const ACCEPT_BACKLOG: u32 = 8192;

/// Bytes of the websocket read buffer per connection (see
/// `docs/memory-per-connection.md`).
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
    hub: Arc<SocketHub>,
    realtime: Arc<Realtime>,
    publications: PublicationStream,
    shutdown_timeout: Duration,
    timeouts: HttpTimeouts,
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
        // A replay is whole: as long as the longest history.
        let history_limit = config.replay_limit();
        let (publications, stream) = Publications::channel(config.delivery_buffer as usize);
        let (store, directory) = open_store(config, publications.clone()).await?;
        let (sio_layer, io) = socket_io(config);
        let hub = SocketHub::new(store.clone(), history_limit);
        let access = access(config)?;
        let slowdown = Arc::new(Slowdown::default());
        let realtime = Realtime::new(
            hub.clone(),
            access.clone(),
            slowdown.clone(),
            config.max_subscriptions as usize,
            config.streams(),
            config.rate_limit,
            config.rate_burst,
        );
        let realtime = Arc::new(realtime);
        realtime::register(&io, realtime.clone());
        let listener = listen(config.listen).map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let counted = io.clone();
        let metrics = telemetry::Exporter::new(move || realtime::sockets_by_transport(&counted));
        let listen_addr = listener
            .local_addr()
            .map_or_else(|_| config.listen.to_string(), |a| a.to_string());
        let admin = Admin::new(listen_addr, directory, hub.clone(), metrics.clone());
        let credentials = Credentials {
            ingest_tokens: BearerKeys::new(&config.ingest_tokens),
            api_keys: BearerKeys::new(&config.api_keys),
            access,
            slowdown,
        };
        let limits = Limits {
            max_body: config.max_body as usize,
            max_batch: config.max_batch as usize,
            max_subscriptions: config.max_subscriptions as usize,
            streams: config.streams(),
        };
        // One node: a 202 means this node's sockets have been handed the
        // payments. A cluster node cannot promise that for other nodes.
        let local = config.redis_url.is_none().then_some(publications);
        let app = Arc::new(App::new(
            store,
            credentials,
            limits,
            metrics,
            local,
            Some(Arc::new(admin)),
        ));
        let router = http::app(
            app.clone(),
            sio_layer,
            connection_limits(config),
            TrustedProxies::new(&config.trusted_proxies),
            &config.cors_origins,
        );
        Ok(Server {
            listener,
            router,
            io,
            app,
            hub,
            realtime,
            publications: stream,
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout),
            timeouts: HttpTimeouts {
                header_read: Duration::from_secs(config.header_read_timeout),
                body_read: Duration::from_secs(config.body_read_timeout),
                // As long as a silent client may take to answer a ping.
                stall: Duration::from_secs(config.ping_interval + config.ping_timeout),
            },
        })
    }

    /// The router this server serves (it shares the server's Socket.IO
    /// layer, hub and store): for driving the server in-process without a
    /// connection, as the fuzz targets do.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        // A bound TCP listener always has a local address.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| unreachable!("bound listener has an address"))
    }

    /// Serves until `shutdown` resolves, then, in this order: turns
    /// `/readyz` unready and answers new ingest `503`; closes the listener
    /// (a client reconnecting now goes to another node); lets in-flight
    /// ingest finish; closes every socket (clients see a transport close
    /// and reconnect); lets the remaining requests finish; returns. Gives
    /// up waiting after the shutdown timeout.
    ///
    /// Install the handlers that resolve `shutdown` before calling this:
    /// from the `listening on` line, a signal must already be caught.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let addr = self.local_addr();
        // Every background part of the node, ended together when this set
        // is dropped (on return, whatever happened).
        let mut background = JoinSet::new();
        let store = self.app.store.clone();
        background.spawn(async move { store.upkeep().await });
        background.spawn(keepalive(self.app.store.clone()));
        background.spawn(self.hub.clone().audit());
        background.spawn(self.hub.clone().run(self.publications));
        background.spawn(self.app.metrics.clone().upkeep());
        background.spawn(forget_quiet_addresses(
            self.app.credentials.slowdown.clone(),
        ));
        if let Some(admin) = self.app.admin.clone() {
            background.spawn(admin.report_forever());
        }
        let (stop_accepting, accepting) = tokio::sync::oneshot::channel::<()>();
        let mut serve = tokio::spawn(serve::serve(
            self.listener,
            self.router,
            self.timeouts,
            async {
                let _ = accepting.await;
            },
        ));
        tracing::info!(%addr, "listening on {addr}");

        let result = tokio::select! {
            () = shutdown => {
                let deadline = Instant::now() + self.shutdown_timeout;
                drain(&self.app, &self.io, deadline, stop_accepting, &mut serve).await;
                Ok(())
            }
            served = &mut serve => served.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        };
        background.abort_all();
        self.hub.stop();
        self.realtime.stop();
        serve.abort();
        // Bounded: a Redis that is down cannot hold the stop up.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.app.store.release()).await;
        tracing::info!("stopped");
        result
    }
}

/// The shutdown sequence of [`Server::run`].
async fn drain(
    app: &App,
    io: &SocketIo,
    deadline: Instant,
    stop_accepting: tokio::sync::oneshot::Sender<()>,
    serve: &mut tokio::task::JoinHandle<std::io::Result<()>>,
) {
    tracing::info!("shutting down");
    app.begin_shutdown();
    let _ = stop_accepting.send(());
    if tokio::time::timeout_at(deadline, app.ingests_finished())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timed out waiting for ingest requests");
    }
    if tokio::time::timeout_at(deadline, io.clone().close())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timed out closing sockets");
    }
    if tokio::time::timeout_at(deadline, serve).await.is_err() {
        tracing::warn!("shutdown timed out; exiting with requests in flight");
    }
}

/// The history store the configuration names (memory, or Redis) and the
/// node directory beside it.
async fn open_store(
    config: &Config,
    publications: Publications,
) -> Result<(Arc<dyn HistoryStore>, Arc<dyn NodeDirectory>), StartError> {
    let retention = Retention {
        max_events: config.history_limit as usize,
        stream_max_events: config.stream_history_limit as usize,
        streams: config.streams(),
        history_ttl_ms: config.history_ttl * 1000,
        dedupe_ttl_ms: config.dedupe_ttl * 1000,
    };
    let Some(url) = &config.redis_url else {
        let (limit, source) = memory_limit::resolve(config.memory_limit);
        tracing::info!(
            bytes = limit,
            ?source,
            "memory store bounded to {limit} bytes; the oldest payments are evicted beyond it"
        );
        let memory = MemoryStore::new(retention, publications).with_memory_limit(limit);
        return Ok((Arc::new(memory), Arc::new(MemoryDirectory::default())));
    };
    let target = RedisTarget::new(url, config.redis_cluster, config.redis_sentinel.as_deref());
    // The target shows its URLs without their passwords.
    tracing::info!(
        redis = %target,
        "cluster mode: history, dedupe and publication in Redis at {target}"
    );
    let tls = redis_tls(config)?;
    let redis = RedisStore::connect_with_tls(&target, &tls, retention, publications).await?;
    let directory = Arc::new(redis.directory());
    Ok((Arc::new(redis), directory))
}

/// `--redis-ca-cert`, `--redis-client-cert` and `--redis-client-key`, read.
fn redis_tls(config: &Config) -> Result<RedisTls, ConfigError> {
    let read = |flag: &'static str, path: &Option<std::path::PathBuf>| {
        path.as_ref()
            .map(|path| {
                std::fs::read(path).map_err(|source| ConfigError::Unreadable {
                    flag,
                    path: path.clone(),
                    source,
                })
            })
            .transpose()
    };
    let cert = read("--redis-client-cert", &config.redis_client_cert)?;
    let key = read("--redis-client-key", &config.redis_client_key)?;
    Ok(RedisTls {
        ca_cert: read("--redis-ca-cert", &config.redis_ca_cert)?,
        client: cert.zip(key),
    })
}

/// Forgets, every minute, the addresses whose failed credentials are old.
async fn forget_quiet_addresses(slowdown: Arc<Slowdown>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        every.tick().await;
        slowdown.forget_quiet();
    }
}

/// The Socket.IO layer and its handle, with the bounds a hostile client
/// meets.
fn socket_io(config: &Config) -> (SocketIoLayer, SocketIo) {
    SocketIo::builder()
        .req_path(SOCKET_PATH)
        .max_buffer_size(config.replay_limit() + LIVE_BUFFER)
        .max_payload(MAX_SOCKET_MESSAGE)
        // tungstenite's defaults (64 MiB messages, 16 MiB frames) would let
        // one client make the server buffer megabytes before any check.
        .ws_max_message_size(MAX_SOCKET_MESSAGE as usize)
        .ws_max_frame_size(MAX_SOCKET_MESSAGE as usize)
        // No event of the contract carries binary data, but a client
        // that sends some is answered INVALID_PAYLOAD like any bad payload
        // (socket.io-client would re-send a buffered emit forever if the
        // connection closed instead). What it may send is bounded: a few
        // attachments, one message's worth of bytes, for a few seconds;
        // beyond, the connection closes.
        .with_parser(
            ParserConfig::common()
                .max_incoming_binaries(MAX_ATTACHMENTS)
                .max_incoming_binary_buf_size(MAX_SOCKET_MESSAGE as usize)
                .packet_completion_timeout(Duration::from_secs(config.connect_timeout)),
        )
        // A silent client (vanished, or an abandoned polling session) is
        // closed after a ping it does not answer; so is one whose
        // outgoing buffer is full when a ping is due (the close completes
        // once its stalled connection is reset: `drop_when_stalled`).
        .ping_interval(Duration::from_secs(config.ping_interval))
        .ping_timeout(Duration::from_secs(config.ping_timeout))
        // A session that has not joined the namespace by then is closed
        // (socket.io-client joins at once), also one refused at its
        // connect: a handshake alone holds a session for seconds, not 45.
        .connect_timeout(Duration::from_secs(config.connect_timeout))
        // Clients send a few small events; a 4 KB websocket read buffer
        // per connection would be most of an idle socket's memory.
        .ws_read_buffer_size(WS_READ_BUFFER)
        .build_layer()
}

/// Who may watch what (contract section 5).
fn access(config: &Config) -> Result<Access, ConfigError> {
    Ok(match config.auth {
        AuthMode::Open => Access::Open,
        AuthMode::Token => Access::Token(Arc::new(
            TokenKeys::new(&config.token_secrets, config.token_max_ttl)
                .ok_or(ConfigError::TokenModeWithoutSecret)?,
        )),
    })
}

/// `--max-connections` and `--max-connections-per-ip`.
fn connection_limits(config: &Config) -> Arc<ConnectionLimits> {
    metrics::gauge!(telemetry::CONNECTIONS_LIMIT).set(config.max_connections as f64);
    ConnectionLimits::new(
        SOCKET_PATH,
        usize::try_from(config.max_connections).unwrap_or(usize::MAX),
        Some(usize::try_from(config.max_connections_per_ip).unwrap_or(usize::MAX)),
    )
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

/// Pings the store every second: a Redis connection that broke is noticed
/// and re-established even when no request comes, and the store's state
/// is logged when it changes.
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
