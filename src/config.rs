//! Configuration: every option is a flag and a `TIDINGS_*` environment
//! variable (contract section 7); the flag wins. `tidings --help` lists them.

use std::net::SocketAddr;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::memory_limit::MemoryLimit;
use crate::model::Streams;
use crate::telemetry::LogFormat;

/// Largest value of a flag in seconds: ten years. Durations are kept in
/// milliseconds, and a larger value would overflow (or wrap) on the way.
pub const MAX_SECONDS: u64 = 10 * 365 * 86_400;

/// Largest value of the hidden HTTP timeouts, in seconds.
pub const MAX_HTTP_TIMEOUT: u64 = 3_600;

/// Command-line and environment configuration of one Tidings node.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tidings",
    version,
    about = "Socket.IO-compatible payment notification server",
    long_about = "Socket.IO-compatible payment notification server.\n\n\
        Browsers subscribe to a trackingId over Socket.IO at /ws/v1; payment backends \
        push executions to POST /v1/payments; every subscriber of that trackingId \
        receives a `payment` event. Every option is also an environment variable \
        TIDINGS_<FLAG>; the flag wins."
)]
pub struct Config {
    /// Address to serve HTTP, Socket.IO and ingest on (port 0 picks a free port).
    #[arg(long, env = "TIDINGS_LISTEN", default_value = "0.0.0.0:3000")]
    pub listen: SocketAddr,

    /// Redis URL: unset runs one node with everything in memory; set, any
    /// number of nodes sharing it serve one cluster. With --redis-cluster, a
    /// comma-separated list of seed node URLs.
    #[arg(long, env = "TIDINGS_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// The Redis at --redis-url is a Redis Cluster (sharded pub/sub).
    #[arg(
        long,
        env = "TIDINGS_REDIS_CLUSTER",
        requires = "redis_url",
        conflicts_with = "redis_sentinel"
    )]
    pub redis_cluster: bool,

    /// Redis Sentinel: the name of the master the Sentinels monitor;
    /// --redis-url is then a comma-separated list of Sentinel URLs (the
    /// first one's user and password also log in to the master). The node
    /// follows the master through failovers.
    #[arg(
        long,
        env = "TIDINGS_REDIS_SENTINEL",
        requires = "redis_url",
        value_name = "MASTER"
    )]
    pub redis_sentinel: Option<String>,

    /// PEM file of the CA that signs the Redis servers' certificates
    /// (`rediss://` URLs); without it, the system's roots.
    #[arg(
        long,
        env = "TIDINGS_REDIS_CA_CERT",
        requires = "redis_url",
        value_name = "PATH"
    )]
    pub redis_ca_cert: Option<std::path::PathBuf>,

    /// PEM client certificate for mutual TLS with Redis (with --redis-client-key).
    #[arg(long, env = "TIDINGS_REDIS_CLIENT_CERT", requires_all = ["redis_url", "redis_client_key"], value_name = "PATH")]
    pub redis_client_cert: Option<std::path::PathBuf>,

    /// PEM private key of --redis-client-cert.
    #[arg(
        long,
        env = "TIDINGS_REDIS_CLIENT_KEY",
        requires = "redis_client_cert",
        value_name = "PATH"
    )]
    pub redis_client_key: Option<std::path::PathBuf>,

    /// Publications that may wait for delivery to this node's sockets;
    /// beyond it one is dropped (logged and counted) and the node reads it
    /// back from the history and delivers it itself.
    #[arg(long, env = "TIDINGS_DELIVERY_BUFFER", default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub delivery_buffer: u64,

    /// Bearer token that ingest accepts; repeat the flag (each value taken
    /// whole) or comma-separate the variable to accept several. Without
    /// one, ingest refuses every request.
    #[arg(
        long = "ingest-token",
        env = "TIDINGS_INGEST_TOKEN",
        hide_env_values = true
    )]
    pub ingest_tokens: Vec<String>,

    /// Who may subscribe: `open` (anyone) or `token` (short-lived socket tokens).
    #[arg(long, env = "TIDINGS_AUTH", value_enum, default_value_t = AuthMode::Open)]
    pub auth: AuthMode,

    /// Payments kept per trackingId for replay and backfill.
    #[arg(long, env = "TIDINGS_HISTORY_LIMIT", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub history_limit: u64,

    /// One character (not `*`, whitespace or a control character): a
    /// payment of a trackingId that contains it, not first, is also kept in
    /// its account's stream `<account><separator>*` (contract section 8).
    /// Unset: no streams.
    #[arg(long, env = "TIDINGS_STREAM_SEPARATOR", value_parser = parse_separator)]
    pub stream_separator: Option<char>,

    /// Payments kept per stream for replay and backfill (their age limit
    /// is --history-ttl).
    #[arg(long, env = "TIDINGS_STREAM_HISTORY_LIMIT", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub stream_history_limit: u64,

    /// Seconds a payment is kept for replay and backfill.
    #[arg(long, env = "TIDINGS_HISTORY_TTL", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=MAX_SECONDS))]
    pub history_ttl: u64,

    /// Seconds an idempotency key is remembered (at least --history-ttl).
    #[arg(long, env = "TIDINGS_DEDUPE_TTL", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=MAX_SECONDS))]
    pub dedupe_ttl: u64,

    /// Bytes the memory store may retain (events, dedupe keys, histories),
    /// e.g. 1073741824, 512MiB or 2GiB; beyond it the oldest payments are
    /// evicted. Default: a quarter of the cgroup's memory limit or of the
    /// machine's memory. Memory mode only (Redis's maxmemory bounds Redis).
    #[arg(long, env = "TIDINGS_MEMORY_LIMIT", conflicts_with = "redis_url")]
    pub memory_limit: Option<MemoryLimit>,

    /// Subscriptions one socket may hold at once.
    #[arg(long, env = "TIDINGS_MAX_SUBSCRIPTIONS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_subscriptions: u64,

    /// Payments per ingest request.
    #[arg(long, env = "TIDINGS_MAX_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_batch: u64,

    /// Bytes per ingest request body.
    #[arg(long, env = "TIDINGS_MAX_BODY", default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(64..=1_073_741_824))]
    pub max_body: u64,

    /// A key that may mint socket tokens (token mode) and open the admin
    /// page (`/admin`); repeatable.
    #[arg(long = "api-key", env = "TIDINGS_API_KEY", hide_env_values = true)]
    pub api_keys: Vec<String>,

    /// (token mode) An HS256 secret for socket tokens, at least 32 bytes;
    /// repeatable; the first signs, all verify.
    #[arg(
        long = "token-secret",
        env = "TIDINGS_TOKEN_SECRET",
        hide_env_values = true
    )]
    pub token_secrets: Vec<String>,

    /// (token mode) The longest lifetime, in seconds, a socket token may
    /// claim (minted or signed by a backend).
    #[arg(long, env = "TIDINGS_TOKEN_MAX_TTL", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=MAX_SECONDS))]
    pub token_max_ttl: u64,

    /// An address or CIDR range (a proxy) whose X-Forwarded-For is
    /// believed; repeatable. Every per-address rule uses the client address
    /// found there.
    #[arg(long = "trusted-proxy", env = "TIDINGS_TRUSTED_PROXY", value_name = "ADDR|CIDR", value_delimiter = ',', value_parser = parse_ip_range)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// An origin browsers may call from; repeatable; `*` allows any.
    #[arg(long = "cors-origin", env = "TIDINGS_CORS_ORIGIN", default_value = "*")]
    pub cors_origins: Vec<String>,

    /// Log format: `pretty` (default on a terminal) or `json` (default otherwise).
    #[arg(long, env = "TIDINGS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Socket events (subscribe/unsubscribe) one socket may send per second,
    /// sustained; beyond it the server answers RATE_LIMITED.
    #[arg(long, env = "TIDINGS_RATE_LIMIT", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: u32,

    /// Socket events one socket may send in a burst above --rate-limit.
    #[arg(long, env = "TIDINGS_RATE_BURST", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_burst: u32,

    /// Engine.IO sessions (connected clients) this node holds at once;
    /// beyond it a new connection is refused with 503 UNAVAILABLE. Keep it
    /// below the process's open-file limit (`ulimit -n`) minus about 1000.
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_connections: u64,

    /// Engine.IO sessions one client address may hold at once; beyond it a
    /// new connection is refused with 429 RATE_LIMITED. The default is 1 %
    /// of the default --max-connections: one address cannot fill a node,
    /// and an office behind one NAT still opens 200 tabs. Behind a proxy,
    /// set --trusted-proxy, or every client has the proxy's address.
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS_PER_IP", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_connections_per_ip: u64,

    /// Seconds a new connection has to complete the Socket.IO connect
    /// (socket.io-client does at once); then it is closed.
    #[arg(long, env = "TIDINGS_CONNECT_TIMEOUT", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub connect_timeout: u64,

    /// Seconds between the server's Engine.IO pings to each client.
    #[arg(long, env = "TIDINGS_PING_INTERVAL", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ping_interval: u64,

    /// Seconds a client has to answer a ping before its session is closed
    /// (a silent or vanished client, an abandoned polling session).
    #[arg(long, env = "TIDINGS_PING_TIMEOUT", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ping_timeout: u64,

    /// Seconds to wait for in-flight work at shutdown before exiting anyway.
    #[arg(long, env = "TIDINGS_SHUTDOWN_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=MAX_SECONDS))]
    pub shutdown_timeout: u64,

    /// Seconds a client may take to send a request's headers; also how long
    /// an idle keep-alive connection stays open. Hidden: a tuning knob
    /// (and what lets tests wait less), not part of the contract.
    #[arg(long, env = "TIDINGS_HEADER_READ_TIMEOUT", default_value_t = 10, hide = true, value_parser = clap::value_parser!(u64).range(1..=MAX_HTTP_TIMEOUT))]
    pub header_read_timeout: u64,

    /// Seconds a client may take to send a request body whole. Hidden, as
    /// --header-read-timeout.
    #[arg(long, env = "TIDINGS_BODY_READ_TIMEOUT", default_value_t = 10, hide = true, value_parser = clap::value_parser!(u64).range(1..=MAX_HTTP_TIMEOUT))]
    pub body_read_timeout: u64,
}

/// Checks that `origin` is exactly what a browser sends in `Origin` for a
/// page it may match: `http` or `https`, a host, an optional port, nothing
/// else, in the canonical form (lower case, punycode, no default port),
/// since the CORS layer compares it byte for byte.
fn check_origin(origin: &str) -> Result<(), String> {
    let url = url::Url::parse(origin).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {:?} is not http or https", url.scheme()));
    }
    if url.host().is_none() {
        return Err("no host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("it has user information".to_owned());
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err("an origin has no path, query or fragment".to_owned());
    }
    let canonical = url.origin().ascii_serialization();
    if origin != canonical {
        return Err(format!(
            "browsers send it as {canonical:?} (no trailing slash, lower case, no default port)"
        ));
    }
    Ok(())
}

/// `--trusted-proxy`: `10.0.0.0/8`, `::1/128` or one address.
fn parse_ip_range(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("{s:?} is not an address or a CIDR range such as 10.0.0.0/8"))
}

/// How sockets are authorised to subscribe (contract section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Anyone may subscribe to any trackingId.
    Open,
    /// A socket presents a short-lived token naming its trackingIds.
    Token,
}

/// A configuration that parses but cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--dedupe-ttl ({dedupe}) must be at least --history-ttl ({history})")]
    DedupeShorterThanHistory { dedupe: u64, history: u64 },
    #[error("--ingest-token values must not be empty")]
    EmptyIngestToken,
    #[error("--auth token needs at least one --token-secret (every node of a cluster the same)")]
    TokenModeWithoutSecret,
    #[error("--api-key and --token-secret values must not be empty")]
    EmptySecret,
    #[error(
        "a --token-secret is {len} bytes; at least 32 are needed (a short HS256 secret is recovered offline from any token a browser holds): generate one with `openssl rand -base64 32`"
    )]
    ShortTokenSecret { len: usize },
    #[error("cannot read {flag} {path}: {source}")]
    Unreadable {
        flag: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "invalid --cors-origin {origin:?}: {reason}; expected `*` or an origin such as https://app.example.com (scheme, host and optional port, nothing after)"
    )]
    BadCorsOrigin { origin: String, reason: String },
}

/// `--stream-separator`: exactly one character the contract allows.
fn parse_separator(value: &str) -> Result<char, String> {
    let mut chars = value.chars();
    let (Some(c), None) = (chars.next(), chars.next()) else {
        return Err("the stream separator must be exactly one character".to_owned());
    };
    Streams::with_separator(c).map(|_| c).map_err(str::to_owned)
}

impl Config {
    /// Whether payments are also kept in account streams, and how.
    pub fn streams(&self) -> Streams {
        self.stream_separator
            .and_then(|c| Streams::with_separator(c).ok())
            .unwrap_or(Streams::OFF)
    }

    /// The most events one history holds, so the most one replay sends.
    pub fn replay_limit(&self) -> usize {
        let streams = if self.stream_separator.is_some() {
            self.stream_history_limit
        } else {
            0
        };
        self.history_limit.max(streams) as usize
    }

    /// Checks what clap cannot: relations between options.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.dedupe_ttl < self.history_ttl {
            return Err(ConfigError::DedupeShorterThanHistory {
                dedupe: self.dedupe_ttl,
                history: self.history_ttl,
            });
        }
        if self.ingest_tokens.iter().any(|t| t.trim().is_empty()) {
            return Err(ConfigError::EmptyIngestToken);
        }
        let secrets = self.api_keys.iter().chain(&self.token_secrets);
        if secrets.into_iter().any(|s| s.trim().is_empty()) {
            return Err(ConfigError::EmptySecret);
        }
        if self.auth == AuthMode::Token && self.token_secrets.is_empty() {
            return Err(ConfigError::TokenModeWithoutSecret);
        }
        if let Some(short) = self.token_secrets.iter().find(|s| s.len() < 32) {
            return Err(ConfigError::ShortTokenSecret { len: short.len() });
        }
        for origin in self.cors_origins.iter().filter(|o| *o != "*") {
            check_origin(origin).map_err(|reason| ConfigError::BadCorsOrigin {
                origin: origin.clone(),
                reason,
            })?;
        }
        Ok(())
    }

    /// A configuration with every default, listening on `127.0.0.1:0`, for
    /// tests and embedding.
    pub fn for_tests(ingest_token: &str) -> Self {
        Config::parse_from([
            "tidings",
            "--listen",
            "127.0.0.1:0",
            "--ingest-token",
            ingest_token,
        ])
    }

    /// Reads the command line and the `TIDINGS_*` variables (contract
    /// section 7). A repeatable flag takes each value whole (a secret may
    /// hold a comma); its variable is a comma-separated list.
    pub fn load() -> Self {
        Self::try_load_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// [`Config::load`] from the given arguments.
    pub fn try_load_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut config = Self::from_arg_matches(&matches)?;
        let from_env = |id: &str| matches.value_source(id) == Some(ValueSource::EnvVariable);
        for (id, values) in [
            ("ingest_tokens", &mut config.ingest_tokens),
            ("api_keys", &mut config.api_keys),
            ("token_secrets", &mut config.token_secrets),
            ("cors_origins", &mut config.cors_origins),
        ] {
            if from_env(id) {
                *values = values
                    .iter()
                    .flat_map(|v| v.split(','))
                    .map(str::to_owned)
                    .collect();
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(args: &[&str]) -> Result<Config, clap::Error> {
        let mut all = vec!["tidings", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Config::try_parse_from(all)
    }

    #[test]
    fn seconds_are_bounded_so_milliseconds_cannot_overflow() {
        for flag in ["--history-ttl", "--dedupe-ttl", "--shutdown-timeout"] {
            let err = with(&[flag, "18446744073709552"]).unwrap_err();
            assert!(err.to_string().contains("315360000"), "{flag}: {err}");
            assert!(with(&[flag, "315360000"]).is_ok(), "{flag}");
        }
        let ten_years = with(&["--history-ttl", "315360000", "--dedupe-ttl", "315360000"]);
        assert!(ten_years.unwrap().validate().is_ok());
    }

    #[test]
    fn cors_origins_must_be_exact_origins() {
        for good in [
            "*",
            "https://a.example",
            "http://localhost:5173",
            "http://[::1]:8080",
        ] {
            let config = with(&["--cors-origin", good]).unwrap();
            assert!(config.validate().is_ok(), "{good}");
        }
        for bad in [
            "https://a.example/path",
            "https://a.example/",
            "not an origin",
            "https://exa mple.com",
            "ftp://a.example",
            "https://a.example?x=1",
            "https://user@a.example",
            "https://A.example",
            "https://a.example:443",
            "https://a.example\u{7f}",
        ] {
            let config = with(&["--cors-origin", bad]).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(
                err.contains(&format!("--cors-origin {bad:?}")),
                "{bad}: {err}"
            );
        }
    }
}
