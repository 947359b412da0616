//! Where the Redis is and how to reach it: one server, a Redis Cluster's
//! seeds or a Sentinel-managed master (`--redis-url`, `--redis-cluster`,
//! `--redis-sentinel`), and the TLS material of `rediss://` URLs. Every
//! way this module shows a URL hides its password.

use std::fmt;

use redis::{ClientTlsConfig, TlsCertificates};

/// The Redis a node uses.
#[derive(Clone)]
pub enum RedisTarget {
    /// One Redis server (`redis://host:port/db`, `rediss://` for TLS).
    Single(String),
    /// A Redis Cluster, given by seed node URLs.
    Cluster(Vec<String>),
    /// The master that Sentinels name `master`; the node asks them again
    /// every second and follows a failover.
    Sentinel {
        master: String,
        sentinels: Vec<String>,
    },
}

impl RedisTarget {
    /// `--redis-url`: one URL; with `--redis-cluster` a comma-separated
    /// list of seed node URLs; with `--redis-sentinel NAME` a
    /// comma-separated list of Sentinel URLs.
    pub fn new(url: &str, cluster: bool, sentinel: Option<&str>) -> Self {
        let list = || {
            url.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        match (cluster, sentinel) {
            (_, Some(master)) => RedisTarget::Sentinel {
                master: master.to_owned(),
                sentinels: list(),
            },
            (true, None) => RedisTarget::Cluster(list()),
            (false, None) => RedisTarget::Single(url.to_owned()),
        }
    }

    fn urls(&self) -> &[String] {
        match self {
            RedisTarget::Single(url) => std::slice::from_ref(url),
            RedisTarget::Cluster(urls)
            | RedisTarget::Sentinel {
                sentinels: urls, ..
            } => urls,
        }
    }
}

/// Shows the URLs with their passwords replaced by `***`: this is what the
/// start-up line and the admin page print.
impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls().iter().map(|u| redact(u)).collect();
        match self {
            RedisTarget::Single(_) => write!(f, "{}", urls.join(",")),
            RedisTarget::Cluster(_) => write!(f, "cluster {}", urls.join(",")),
            RedisTarget::Sentinel { master, .. } => {
                write!(f, "master {master:?} of sentinels {}", urls.join(","))
            }
        }
    }
}

/// As [`fmt::Display`]: a `{:?}` in a log line shows no password either.
impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `url` with its password (if any) replaced by `***`. What cannot be
/// parsed as a URL is not shown at all: it might be a password.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Cannot fail on a URL that has a password (it has a host).
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// The TLS material of `rediss://` connections: the CA that signs the
/// servers' certificates (`--redis-ca-cert`; without it the system's
/// roots) and a client certificate for mutual TLS.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// PEM.
    pub ca_cert: Option<Vec<u8>>,
    /// PEM certificate and PEM key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl RedisTls {
    /// What redis-rs takes, or `None` when nothing was given (the system's
    /// roots then verify).
    pub(super) fn certificates(&self) -> Option<TlsCertificates> {
        if self.ca_cert.is_none() && self.client.is_none() {
            return None;
        }
        Some(TlsCertificates {
            client_tls: self.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: self.ca_cert.clone(),
        })
    }
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca_cert", &self.ca_cert.is_some())
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
            ("rediss://user:pw@h:6380", "rediss://user:***@h:6380"),
            ("redis://user@h:6379", "redis://user@h:6379"),
            ("redis://h:6379", "redis://h:6379"),
            ("pw-without-scheme", "<not a URL>"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
        let cluster = RedisTarget::new("redis://:pw@a:1, redis://:pw@b:2", true, None);
        let shown = format!("{cluster} {cluster:?}");
        assert!(!shown.contains("pw@"), "{shown}");
        assert!(shown.contains("redis://:***@b:2"), "{shown}");
        let sentinel = RedisTarget::new("redis://u:pw@s:26379", false, Some("m"));
        assert!(!format!("{sentinel:?}").contains(":pw@"));
    }
}
