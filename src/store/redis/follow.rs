//! Redis Sentinel: which server is the master now, and connections that
//! move there when a failover names another one.
//!
//! The Sentinels are asked every second ([`Follower::run`], the store's
//! upkeep). When they name a master other than the one the connections
//! use, both connections are replaced and the hub is told to resync: it
//! listens again on the new master and catches every trackingId up from
//! the history, so what was published during the move is read back. Until
//! the Sentinels answer (or while they name no master) every command fails
//! and the node is not ready.
//!
//! A failover may lose the master's last writes; the history scripts
//! detect it (another Redis run id) and start those histories afresh
//! under a new epoch, as after any Redis restart.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, ProtocolVersion, TlsMode};

use super::target::RedisTls;
use super::{StoreError, managers};
use crate::store::Publications;

/// How often the Sentinels are asked.
const ASK_EVERY: Duration = Duration::from_secs(1);

/// A connection to the current master, replaceable while in use (clones
/// share it).
#[derive(Clone)]
pub(super) struct Swappable(Arc<RwLock<Option<ConnectionManager>>>);

impl Swappable {
    pub(super) fn new(conn: Option<ConnectionManager>) -> Self {
        Swappable(Arc::new(RwLock::new(conn)))
    }

    /// The connection now; `None` while no master is known.
    pub(super) fn current(&self) -> Option<ConnectionManager> {
        // A poisoned lock still holds a whole value (it is only replaced).
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn replace(&self, conn: ConnectionManager) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(conn);
    }
}

/// Asks the Sentinels for the master and moves the store's connections.
pub(super) struct Follower {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// `host:port` of the master the connections use.
    master: std::sync::Mutex<Option<String>>,
    commands: Swappable,
    pubsub: Swappable,
}

impl Follower {
    /// A follower of master `name` known to `sentinels` (URLs; the first
    /// one's user, password and database are used for the data nodes and
    /// the Sentinels alike; `rediss://` means TLS to both). Asks once: the
    /// connections start on the master named now, if any.
    pub(super) async fn connect(
        name: &str,
        sentinels: &[String],
        tls: &RedisTls,
        publications: &Publications,
    ) -> Result<Follower, StoreError> {
        let invalid = |e: redis::RedisError| StoreError::Unavailable(e.to_string());
        let mut addrs = Vec::new();
        let mut first = None;
        for url in sentinels {
            let info = url.as_str().into_connection_info().map_err(invalid)?;
            addrs.push(info.addr().clone());
            first.get_or_insert(info);
        }
        let Some(first) = first else {
            return Err(StoreError::Unavailable(
                "--redis-sentinel needs at least one Sentinel URL in --redis-url".into(),
            ));
        };
        let secure = matches!(addrs[0], ConnectionAddr::TcpTls { .. });
        let settings = first.redis_settings();
        let mut builder = SentinelClientBuilder::new(addrs, name, SentinelServerType::Master)
            .map_err(invalid)?
            .set_client_to_redis_protocol(ProtocolVersion::RESP3)
            .set_client_to_redis_db(settings.db());
        if let Some(user) = settings.username() {
            builder = builder
                .set_client_to_redis_username(user)
                .set_client_to_sentinel_username(user);
        }
        if let Some(password) = settings.password() {
            builder = builder
                .set_client_to_redis_password(password)
                .set_client_to_sentinel_password(password);
        }
        if secure {
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if let Some(certs) = tls.certificates() {
                builder = builder
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
        }
        let follower = Follower {
            sentinel: tokio::sync::Mutex::new(builder.build().map_err(invalid)?),
            master: std::sync::Mutex::new(None),
            commands: Swappable::new(None),
            pubsub: Swappable::new(None),
        };
        follower.ask(publications).await;
        Ok(follower)
    }

    /// The command and publication connections, which follow the master.
    pub(super) fn connections(&self) -> (Swappable, Swappable) {
        (self.commands.clone(), self.pubsub.clone())
    }

    /// Asks the Sentinels every second, for as long as the store serves.
    pub(super) async fn run(&self, publications: &Publications) {
        let mut every = tokio::time::interval(ASK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.ask(publications).await;
        }
    }

    /// Asks which server is the master; moves there if it is another.
    async fn ask(&self, publications: &Publications) {
        let client = match self.sentinel.lock().await.async_get_client().await {
            Ok(client) => client,
            Err(err) => {
                // The connections stay where they are: a master that is
                // still up keeps serving while the Sentinels are away. The
                // error may be the Sentinels', or the master's they name
                // (it is asked for its role): a master down before the
                // failover shows here as refused connections.
                tracing::warn!(%err, "no reachable master from the Redis Sentinels (they, or the master they name, did not answer)");
                return;
            }
        };
        let addr = client.get_connection_info().addr().to_string();
        let moved = {
            let mut master = self.master.lock().unwrap_or_else(|e| e.into_inner());
            if master.as_deref() == Some(addr.as_str()) {
                return;
            }
            master.replace(addr.clone())
        };
        match managers(client, publications) {
            Ok((commands, pubsub)) => {
                self.commands.replace(commands);
                self.pubsub.replace(pubsub);
                match moved {
                    Some(from) => {
                        tracing::warn!(%from, to = %addr, "the Sentinels name another Redis master; moved there, re-listening and catching up");
                        publications.resync();
                    }
                    None => tracing::info!(master = %addr, "Redis master named by the Sentinels"),
                }
            }
            Err(err) => {
                tracing::error!(%err, master = %addr, "cannot connect to the Redis master");
                *self.master.lock().unwrap_or_else(|e| e.into_inner()) = moved;
            }
        }
    }
}
