//! [`RedisStore`]: the history store of a cluster. Every node shares one
//! Redis (or one Redis Cluster), so a payment ingested on any node gets the
//! same seq, dedupe answer, replay and backfill on every node.
//!
//! Layout, per trackingId (the `{...}` hash tag keeps all of one
//! trackingId's keys in one Redis Cluster slot, so one script can touch them
//! all):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `tidings:{<id>}:meta` | hash | `epoch`, `seq` (the last seq issued), `rid` (run id of the Redis process that last wrote it), `gen` (the key-layout generation that last wrote it) |
//! | `tidings:{<id>}:events` | stream | one entry per retained event, stream id `<epoch>-<seq>`, fields `t` (accepted ms) and `e` (the envelope) |
//! | `tidings:{<id>}:d:<k or s>:<key>` | string | the event id first stored under that dedupe key |
//! | `tidings:{<id>}:p` | pub/sub channel | each new envelope, published by the script that stored it |
//!
//! `<id>` is the trackingId with `%`, `{` and `}` percent-encoded, so that
//! no trackingId can reach into another's keys, and so that a channel name
//! tells its trackingId back.
//!
//! With streams on (contract section 8), a trackingId of account `A` and
//! the stream `A*` use `tidings:{<A>}<rest>}:...` (`<rest>` is `*` for the
//! stream): the account is the hash tag, so one script stores a payment in
//! both histories, atomically, also on a Redis Cluster (`keys.rs`). All of
//! an account's payments then live on one shard.
//!
//! Appending and publishing happen in one Lua script (`lua/append.lua`),
//! which Redis runs atomically: seqs are contiguous across nodes and every
//! node receives a trackingId's publications in seq order. Times (epochs,
//! acceptance) come from Redis's clock, so nodes with skewed clocks still
//! agree.
//!
//! What this assumes of Redis, and what it detects instead of assuming:
//! - A Redis that restarted (with whatever persistence), failed over to a
//!   replica, or was restored from a snapshot may have lost acknowledged
//!   writes. The scripts detect it (the history was written by another
//!   Redis run id) and start that history afresh with a larger epoch, so no
//!   id is issued twice; readers of the old history get `HISTORY_TRUNCATED`.
//!   No persistence setting is required for correctness; persistence only
//!   decides how much history survives for dedupe.
//! - Keys must not be evicted (`maxmemory-policy noeviction`, Redis's
//!   default): an evicted dedupe key would let a payment be stored twice.
//!   The store checks the policy when it connects and warns otherwise.
//! - Epochs are Redis's clock in milliseconds: Redis servers' clocks are
//!   expected to be synchronised (NTP), as a failover moves the clock with
//!   the data.
//!
//! Why this file is long (about 540 lines): the store, its publication
//! connection and the audit of that connection's subscriptions share the
//! connection types and the key layout above; the key layout, reply parsing
//! and the node directory are beside it (`keys.rs`, `reply.rs`,
//! `directory.rs`).

mod directory;
mod follow;
mod keys;
mod reply;
mod target;

pub use directory::RedisDirectory;
use follow::{Follower, Swappable};
use keys::{Keys, key_slot};
use redis::{ErrorKind, RedisError};
use reply::{bulk_string, client_info_count, int, malformed, slot_owners, store_error};
pub use target::{RedisTarget, RedisTls, redact};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, PushInfo, PushKind, RedisFuture, Script, Value};
use serde_json::value::RawValue;

use super::{
    Appended, HistoryPage, HistoryStore, Publication, Publications, Retention, StoreError,
    resolve_since,
};
use crate::model::{EventId, NewPayment, Position, StoredEvent};

/// How long one Redis command may take before the store reports itself
/// unavailable (and ingest answers `503`).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The key [`RedisStore::probe_write`] sets.
const WRITE_PROBE_KEY: &str = "tidings:probe:writable";

/// A connection to a single Redis, a Redis Cluster, or whichever master
/// the Sentinels name; all reconnect by themselves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    /// Replaced when the Sentinels name another master.
    Followed(Swappable),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Followed(c) => {
                let c = c.current();
                Box::pin(async move { no_master(c)?.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Followed(c) => {
                let c = c.current();
                Box::pin(async move {
                    no_master(c)?
                        .req_packed_commands(pipeline, offset, count)
                        .await
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Followed(c) => c.current().map_or(0, |c| c.get_db()),
        }
    }
}

/// The connection to the master, or the error while none is known.
fn no_master(conn: Option<ConnectionManager>) -> Result<ConnectionManager, RedisError> {
    conn.ok_or_else(|| RedisError::from((ErrorKind::Io, "the Sentinels name no master yet")))
}

/// The shared part of both scripts, then each script's body.
const HISTORY_LUA: &str = include_str!("lua/history.lua");
const APPEND_LUA: &str = include_str!("lua/append.lua");
const READ_LUA: &str = include_str!("lua/read.lua");
const LAYOUT_LUA: &str = include_str!("lua/layout.lua");

/// The keys where running nodes claim their key layout, and where its
/// generations are counted (`lua/layout.lua`; one slot).
const LAYOUT_CLAIM_KEY: &str = "tidings:{layout}:claims";
const LAYOUT_GENERATIONS_KEY: &str = "tidings:{layout}:generations";
/// How long a node's layout claim lasts without renewal (nodes renew it
/// each second and give it back when they stop): a node with another
/// `--stream-separator` may serve this long after the last node of the old
/// one died.
const LAYOUT_TTL_MS: u64 = 10_000;

/// A [`HistoryStore`] in Redis.
pub struct RedisStore {
    retention: Retention,
    cluster: bool,
    commands: Conn,
    /// A connection of its own for pub/sub: publications arrive on it as
    /// RESP3 push messages. When it breaks, the store signals a resync and
    /// the hub listens again to every trackingId and catches up.
    pubsub: Conn,
    /// With Sentinel: asks which server is the master and moves both
    /// connections there.
    follower: Option<Follower>,
    /// Told to resync when the publication connection moves.
    publications: Publications,
    append: Script,
    read: Script,
    layout: Script,
    /// This node holds the claim on the key layout: it may write.
    layout_claimed: AtomicBool,
    /// The key layout's generation this node claimed (0: none yet):
    /// histories of another are started afresh.
    generation: AtomicU64,
    /// This node's name in the layout claims.
    node: String,
    /// Whether Redis's eviction policy was checked since it was last
    /// unreachable.
    config_checked: AtomicBool,
    /// On a Redis Cluster, one subscribe or unsubscribe at a time:
    /// redis-rs's cluster client, asked for several while it reconnects to
    /// a node, opens one connection per request and keeps only one of them,
    /// losing the others' subscriptions (seen by the checker; reproduced in
    /// tests/store.rs).
    subscribing: Option<tokio::sync::Mutex<()>>,
}

impl RedisStore {
    /// Connects (lazily: the server starts while Redis is down, and is
    /// unready until it is up) and publishes to `publications`.
    pub async fn connect(
        target: &RedisTarget,
        retention: Retention,
        publications: Publications,
    ) -> Result<Self, StoreError> {
        Self::connect_with_tls(target, &RedisTls::default(), retention, publications).await
    }

    /// [`RedisStore::connect`] with TLS material for `rediss://` URLs.
    pub async fn connect_with_tls(
        target: &RedisTarget,
        tls: &RedisTls,
        retention: Retention,
        publications: Publications,
    ) -> Result<Self, StoreError> {
        // rustls needs one crypto provider for the process; a second
        // store in the same process finds it installed. ring, not
        // aws-lc-rs: no C build beyond cc. Deprecated for lacking the
        // post-quantum key exchange, which Redis servers do not offer.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let unavailable = |e: redis::RedisError| StoreError::Unavailable(e.to_string());
        let mut follower = None;
        let (commands, pubsub, cluster) = match target {
            RedisTarget::Single(url) => {
                let url = with_resp3(url);
                let client = match tls.certificates() {
                    Some(certs) => redis::Client::build_with_tls(url, certs),
                    None => redis::Client::open(url),
                }
                .map_err(unavailable)?;
                let (commands, pubsub) = managers(client, &publications)?;
                (Conn::Single(commands), Conn::Single(pubsub), false)
            }
            RedisTarget::Cluster(seeds) => {
                let builder = || {
                    let builder = ClusterClientBuilder::new(seeds.clone())
                        .use_protocol(redis::ProtocolVersion::RESP3)
                        .connection_timeout(CONNECT_TIMEOUT)
                        .response_timeout(RESPONSE_TIMEOUT)
                        .retries(2);
                    match tls.certificates() {
                        Some(certs) => builder.certs(certs),
                        None => builder,
                    }
                };
                let on_push = push_sender(publications.clone());
                let commands = builder().build().map_err(unavailable)?;
                let pubsub = builder()
                    .push_sender(on_push)
                    .build()
                    .map_err(unavailable)?;
                let commands = commands.get_async_connection().await.map_err(unavailable)?;
                let pubsub = pubsub.get_async_connection().await.map_err(unavailable)?;
                (Conn::Cluster(commands), Conn::Cluster(pubsub), true)
            }
            RedisTarget::Sentinel { master, sentinels } => {
                let found = Follower::connect(master, sentinels, tls, &publications).await?;
                let (commands, pubsub) = found.connections();
                follower = Some(found);
                (Conn::Followed(commands), Conn::Followed(pubsub), false)
            }
        };
        Ok(RedisStore {
            retention,
            cluster,
            commands,
            pubsub,
            follower,
            publications,
            // `#!lua` (Redis 7 script flags, none given): Redis refuses the
            // whole script when it is out of memory. Without it, Redis
            // checks memory only until a script's first write, and a new
            // history's first write is a DEL, which is allowed then: every
            // new trackingId would be stored past maxmemory.
            append: Script::new(&format!("#!lua\n{HISTORY_LUA}\n{APPEND_LUA}")),
            read: Script::new(&format!("{HISTORY_LUA}\n{READ_LUA}")),
            layout: Script::new(LAYOUT_LUA),
            layout_claimed: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            node: uuid::Uuid::new_v4().simple().to_string(),
            config_checked: AtomicBool::new(false),
            subscribing: cluster.then(|| tokio::sync::Mutex::new(())),
        })
    }

    async fn one_at_a_time(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.subscribing {
            Some(gate) => Some(gate.lock().await),
            None => None,
        }
    }

    /// Warns when Redis may evict keys: an evicted dedupe key lets a payment
    /// be stored twice, an evicted history loses events silently.
    async fn check_config(&self) {
        if self.config_checked.swap(true, Ordering::Relaxed) {
            return;
        }
        // A map in RESP3 (the protocol this store speaks), a flat list in RESP2.
        let policy: redis::RedisResult<HashMap<String, String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut self.commands.clone())
            .await;
        match policy.as_ref().map(|p| p.get("maxmemory-policy")) {
            Ok(Some(policy)) if policy == "noeviction" => {}
            Ok(Some(policy)) => tracing::warn!(
                policy,
                "Redis maxmemory-policy is not noeviction: evicted keys can lose history and let a payment be stored twice; set maxmemory-policy noeviction"
            ),
            // CONFIG may be disabled (managed Redis): nothing to check.
            _ => tracing::info!("cannot read Redis maxmemory-policy; it must be noeviction"),
        }
    }
}

/// The command and the publication connections to one server.
fn managers(
    client: redis::Client,
    publications: &Publications,
) -> Result<(ConnectionManager, ConnectionManager), StoreError> {
    let unavailable = |e: redis::RedisError| StoreError::Unavailable(e.to_string());
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let commands = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
        .map_err(unavailable)?;
    let pubsub = ConnectionManager::new_lazy_with_config(
        client,
        config
            .set_push_sender(push_sender(publications.clone()))
            .set_automatic_resubscription(),
    )
    .map_err(unavailable)?;
    Ok((commands, pubsub))
}

/// What a publication connection does with what Redis pushes.
fn push_sender(
    publications: Publications,
) -> impl Fn(PushInfo) -> Result<(), redis::aio::SendError> + Send + Sync + 'static {
    move |push: PushInfo| {
        on_push(push, &publications);
        Ok(())
    }
}

/// Asks for RESP3, which pub/sub on a shared connection needs.
fn with_resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

/// Hands a publication to the queue, or signals a resync when the
/// connection was lost. Runs on the connection's reader: it must not block.
fn on_push(push: PushInfo, publications: &Publications) {
    match push.kind {
        PushKind::Message | PushKind::SMessage => {}
        PushKind::Disconnection => {
            // Publications sent while it was down are lost to this node.
            tracing::warn!("Redis publication connection lost; re-listening and catching up");
            publications.resync();
            return;
        }
        _ => return,
    }
    let mut data = push.data.into_iter();
    let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
        return;
    };
    let Some(tracking_id) = bulk_string(channel)
        .as_deref()
        .and_then(Keys::tracking_id_of_channel)
    else {
        tracing::warn!("publication on a channel that is not a trackingId's");
        return;
    };
    match bulk_string(payload).and_then(read_publication) {
        Some(event) => publications.publish(Publication { tracking_id, event }),
        None => {
            // Not ours (a node of an older version, a foreign publisher):
            // the history is the truth, so this node reads it back.
            let _ = StoreError::malformed(format!("publication of trackingId {tracking_id}"));
            publications.lost(tracking_id);
        }
    }
}

/// A publication as `append.lua` writes it: `<id> <accepted ms> <envelope>`.
/// The envelope is split off the payload, not copied.
fn read_publication(mut payload: String) -> Option<StoredEvent> {
    let first = payload.find(' ')?;
    let second = first + 1 + payload[first + 1..].find(' ')?;
    let envelope = payload.split_off(second + 1);
    Some(StoredEvent {
        id: payload[..first].parse().ok()?,
        accepted_ms: payload[first + 1..second].parse().ok()?,
        envelope: Arc::from(RawValue::from_string(envelope).ok()?),
    })
}

#[async_trait]
impl HistoryStore for RedisStore {
    async fn append(
        &self,
        tracking_id: &str,
        payments: &[NewPayment],
    ) -> Result<Vec<Appended>, StoreError> {
        let generation = self.generation().await?;
        let streams = self.retention.streams;
        let keys = Keys::new(tracking_id, streams);
        let stream = streams
            .stream_of(tracking_id)
            .map(|name| (Keys::new(&name, streams), name));
        let mut invocation = self.append.prepare_invoke();
        invocation.key(keys.meta()).key(keys.events());
        if let Some((stream_keys, _)) = &stream {
            invocation.key(stream_keys.meta()).key(stream_keys.events());
        }
        for p in payments {
            invocation.key(keys.dedupe(&p.dedupe));
        }
        invocation
            .arg(self.retention.max_events)
            .arg(self.retention.history_ttl_ms)
            .arg(self.retention.dedupe_ttl_ms)
            .arg(if self.cluster { "SPUBLISH" } else { "PUBLISH" })
            .arg(keys.channel());
        match &stream {
            Some((stream_keys, name)) => {
                let name = serde_json::to_string(name)
                    .map_err(|e| StoreError::malformed(format!("stream name: {e}")))?;
                invocation
                    .arg(name)
                    .arg(stream_keys.channel())
                    .arg(self.retention.stream_max_events);
            }
            None => {
                invocation.arg("").arg("").arg(0);
            }
        }
        invocation.arg(generation);
        for p in payments {
            let data = serde_json::to_string(&p.data)
                .map_err(|e| StoreError::malformed(format!("payment data: {e}")))?;
            invocation.arg(data);
        }
        let reply: Value = invocation
            .invoke_async(&mut self.commands.clone())
            .await
            .map_err(store_error)?;
        let Value::Array(items) = reply else {
            return Err(malformed("append"));
        };
        let mut items = items.into_iter();
        let accepted_ms = items
            .next()
            .as_ref()
            .and_then(int)
            .ok_or_else(|| malformed("append time"))?;
        let mut out = Vec::with_capacity(payments.len());
        for item in items {
            let Value::Array(fields) = item else {
                return Err(malformed("append item"));
            };
            let mut fields = fields.into_iter();
            let id: EventId = fields
                .next()
                .and_then(bulk_string)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| malformed("event id"))?;
            let duplicate = fields.next().as_ref().and_then(int) == Some(1);
            if duplicate {
                out.push(Appended::Duplicate(id));
                continue;
            }
            let envelope = fields
                .next()
                .and_then(bulk_string)
                .and_then(|s| RawValue::from_string(s).ok())
                .ok_or_else(|| malformed("envelope"))?;
            out.push(Appended::Stored(StoredEvent {
                id,
                accepted_ms,
                envelope: Arc::from(envelope),
            }));
        }
        if out.len() != payments.len() {
            return Err(malformed("append count"));
        }
        Ok(out)
    }

    async fn read(
        &self,
        tracking_id: &str,
        since: Option<EventId>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let generation = self.generation().await?;
        let keys = Keys::new(tracking_id, self.retention.streams);
        let (since_epoch, since_seq) =
            since.map_or((String::new(), 0), |s| (s.epoch.to_string(), s.seq));
        let reply: Value = self
            .read
            .key(keys.meta())
            .key(keys.events())
            .arg(since_epoch)
            .arg(since_seq)
            .arg(limit)
            .arg(self.retention.history_ttl_ms)
            .arg(generation)
            .invoke_async(&mut self.commands.clone())
            .await
            .map_err(store_error)?;
        let Value::Array(items) = reply else {
            return Err(malformed("read"));
        };
        let now = items
            .first()
            .and_then(int)
            .ok_or_else(|| malformed("read time"))?;
        if items.len() < 4 {
            let (_, truncated) = resolve_since(since, None, now)?;
            return Ok(HistoryPage {
                truncated,
                ..HistoryPage::default()
            });
        }
        let epoch = int(&items[1]).ok_or_else(|| malformed("epoch"))?;
        let last = int(&items[2]).ok_or_else(|| malformed("last seq"))?;
        let first = int(&items[3]).ok_or_else(|| malformed("first seq"))?;
        let (_, truncated) = resolve_since(since, Some((epoch, last, first)), now)?;
        let mut events = Vec::new();
        let mut rest = items.into_iter().skip(4);
        while let (Some(id), Some(t), Some(envelope)) = (rest.next(), rest.next(), rest.next()) {
            let id: EventId = bulk_string(id)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| malformed("event id"))?;
            let accepted_ms = int(&t).ok_or_else(|| malformed("event time"))?;
            let envelope = bulk_string(envelope)
                .and_then(|s| RawValue::from_string(s).ok())
                .ok_or_else(|| malformed("envelope"))?;
            events.push(StoredEvent {
                id,
                accepted_ms,
                envelope: Arc::from(envelope),
            });
        }
        let has_more = events.len() > limit;
        events.truncate(limit);
        Ok(HistoryPage {
            events,
            has_more,
            truncated,
            position: Position { epoch, seq: last },
        })
    }

    async fn listen(&self, tracking_id: &str) -> Result<(), StoreError> {
        let channel = Keys::new(tracking_id, self.retention.streams).channel();
        let _one_at_a_time = self.one_at_a_time().await;
        let result = match &self.pubsub {
            Conn::Single(c) => c.clone().subscribe(&channel).await,
            Conn::Followed(c) => match no_master(c.current()) {
                Ok(mut c) => c.subscribe(&channel).await,
                Err(err) => Err(err),
            },
            Conn::Cluster(c) => c.clone().ssubscribe(&channel).await,
        };
        result.map_err(store_error)
    }

    async fn unlisten(&self, tracking_id: &str) {
        let channel = Keys::new(tracking_id, self.retention.streams).channel();
        let _one_at_a_time = self.one_at_a_time().await;
        let result = match &self.pubsub {
            Conn::Single(c) => c.clone().unsubscribe(&channel).await,
            Conn::Followed(c) => match no_master(c.current()) {
                Ok(mut c) => c.unsubscribe(&channel).await,
                Err(err) => Err(err),
            },
            Conn::Cluster(c) => c.clone().sunsubscribe(&channel).await,
        };
        if let Err(err) = result {
            // The connection is down: after it reconnects it may resubscribe
            // this channel too; its publications are then ignored (no
            // socket here holds the trackingId).
            tracing::warn!(%tracking_id, %err, "unsubscribe failed");
        }
    }

    async fn audit(&self, tracking_ids: &[String]) -> Result<Vec<String>, StoreError> {
        let unavailable = store_error;
        match &self.pubsub {
            Conn::Single(_) | Conn::Followed(_) => {
                let info: String = redis::cmd("CLIENT")
                    .arg("INFO")
                    .query_async(&mut self.pubsub.clone())
                    .await
                    .map_err(unavailable)?;
                let held =
                    client_info_count(&info, "sub").ok_or_else(|| malformed("CLIENT INFO"))?;
                Ok(if held < tracking_ids.len() {
                    tracking_ids.to_vec()
                } else {
                    Vec::new()
                })
            }
            Conn::Cluster(conn) => {
                // Who owns which slots, then each master's count of this
                // node's shard subscriptions on its pub/sub connection.
                let slots: Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(&mut self.commands.clone())
                    .await
                    .map_err(unavailable)?;
                let owners = slot_owners(slots).ok_or_else(|| malformed("CLUSTER SLOTS"))?;
                let mut by_master: HashMap<(String, u16), Vec<String>> = HashMap::new();
                for tid in tracking_ids {
                    let slot =
                        key_slot(Keys::new(tid, self.retention.streams).channel().as_bytes());
                    if let Some(owner) = owners
                        .iter()
                        .find(|(start, end, _)| (*start..=*end).contains(&slot))
                    {
                        by_master
                            .entry(owner.2.clone())
                            .or_default()
                            .push(tid.clone());
                    }
                }
                let mut suspects = Vec::new();
                for ((host, port), tids) in by_master {
                    let routing =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                    let info = conn
                        .clone()
                        .route_command(redis::cmd("CLIENT").arg("INFO").clone(), routing)
                        .await
                        .map_err(unavailable)?;
                    let held = bulk_string(info)
                        .as_deref()
                        .and_then(|info| client_info_count(info, "ssub"))
                        .ok_or_else(|| malformed("CLIENT INFO"))?;
                    if held < tids.len() {
                        suspects.extend(tids);
                    }
                }
                Ok(suspects)
            }
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        for conn in [&self.commands, &self.pubsub] {
            let reply: redis::RedisResult<String> =
                redis::cmd("PING").query_async(&mut conn.clone()).await;
            if let Err(err) = reply {
                self.config_checked.store(false, Ordering::Relaxed);
                return Err(StoreError::Unavailable(err.to_string()));
            }
        }
        if !self.cluster {
            self.probe_write().await?;
        }
        self.claim_layout().await?;
        self.check_config().await;
        Ok(())
    }

    /// Gives this node's layout claim back: a node with another
    /// `--stream-separator` need not wait for it to lapse.
    async fn release(&self) {
        let released: redis::RedisResult<(u8, String)> = self
            .layout
            .key(LAYOUT_CLAIM_KEY)
            .key(LAYOUT_GENERATIONS_KEY)
            .arg("")
            .arg(LAYOUT_TTL_MS)
            .arg(&self.node)
            .arg("release")
            .invoke_async(&mut self.commands.clone())
            .await;
        if let Err(err) = released {
            tracing::warn!(%err, "the key-layout claim was not given back; it lapses by itself");
        }
    }

    async fn upkeep(&self) {
        match &self.follower {
            Some(follower) => follower.run(&self.publications).await,
            None => std::future::pending().await,
        }
    }
}

impl RedisStore {
    /// Claims (or renews) the key layout of this node's
    /// `--stream-separator`: refused while nodes with another one use this
    /// Redis, which would keep an account's trackingIds in two histories at
    /// once. Until the claim holds, the node is not ready and stores
    /// nothing. Out of memory, the claim stands as it was.
    async fn claim_layout(&self) -> Result<(), StoreError> {
        let mine = self
            .retention
            .streams
            .separator()
            .map(String::from)
            .unwrap_or_default();
        let answer: redis::RedisResult<(u8, String)> = self
            .layout
            .key(LAYOUT_CLAIM_KEY)
            .key(LAYOUT_GENERATIONS_KEY)
            .arg(&mine)
            .arg(LAYOUT_TTL_MS)
            .arg(&self.node)
            .arg("claim")
            .invoke_async(&mut self.commands.clone())
            .await;
        match answer {
            Ok((1, generation)) => {
                let generation = generation
                    .parse()
                    .map_err(|_| StoreError::malformed("layout generation"))?;
                self.generation.store(generation, Ordering::Relaxed);
                self.layout_claimed.store(true, Ordering::Relaxed);
                Ok(())
            }
            Ok((_, other)) => {
                self.layout_claimed.store(false, Ordering::Relaxed);
                let other = if other.is_empty() {
                    "no --stream-separator".to_owned()
                } else {
                    format!("--stream-separator {other:?}")
                };
                Err(StoreError::Unavailable(format!(
                    "nodes with {other} use this Redis: a node with another --stream-separator serves only once they have all stopped (docs/operations.md)"
                )))
            }
            Err(err) if err.code() == Some("OOM") => Ok(()),
            Err(err) => Err(store_error(err)),
        }
    }

    /// The key-layout generation to write with, once claimed.
    async fn generation(&self) -> Result<u64, StoreError> {
        if !self.layout_claimed.load(Ordering::Relaxed)
            || self.generation.load(Ordering::Relaxed) == 0
        {
            self.claim_layout().await?;
        }
        match self.generation.load(Ordering::Relaxed) {
            0 => Err(StoreError::Unavailable(
                "the key layout is not claimed yet".to_owned(),
            )),
            generation => Ok(generation),
        }
    }

    /// Whether the server takes writes: a replica answers `READONLY` (a
    /// node configured with a replica's address, or left on a master that
    /// a failover demoted) and the node is then not ready. One small key
    /// that expires by itself. `OOM` is not a refusal to report: every
    /// node shares it, and taking them all out of the load balancer at
    /// once would only add an outage (ingest answers 503 meanwhile).
    /// A Redis Cluster redirects writes to masters itself.
    async fn probe_write(&self) -> Result<(), StoreError> {
        let probe: redis::RedisResult<()> = redis::cmd("SET")
            .arg(WRITE_PROBE_KEY)
            .arg(1)
            .arg("PX")
            .arg(10_000)
            .query_async(&mut self.commands.clone())
            .await;
        match probe {
            Ok(()) => Ok(()),
            Err(err) if err.code() == Some("OOM") => Ok(()),
            Err(err) => Err(StoreError::Unavailable(format!(
                "Redis does not take writes: {err}"
            ))),
        }
    }
}
