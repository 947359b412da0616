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
//! | `tidings:{<id>}:meta` | hash | `epoch`, `seq` (the last seq issued) |
//! | `tidings:{<id>}:events` | stream | one entry per retained event, stream id `<epoch>-<seq>`, fields `t` (accepted ms) and `e` (the envelope) |
//! | `tidings:{<id>}:d:<k or s>:<key>` | string | the event id first stored under that dedupe key |
//! | `tidings:{<id>}:p` | pub/sub channel | each new envelope, published by the script that stored it |
//!
//! `<id>` is the trackingId with `%`, `{` and `}` percent-encoded, so that
//! no trackingId can reach into another's keys.
//!
//! Appending and publishing happen in one Lua script, which Redis runs
//! atomically: seqs are contiguous across nodes and every node receives a
//! trackingId's publications in seq order. Times (epochs, acceptance) come
//! from Redis's clock, so nodes with skewed clocks still agree.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, PushInfo, PushKind, RedisFuture, Script, Value};
use serde_json::value::RawValue;

use super::{
    Appended, Deliveries, Delivery, HistoryPage, HistoryStore, Retention, StoreError, resolve_since,
};
use crate::model::{EventId, NewPayment, StoredEvent};

/// How long one Redis command may take before the store reports itself
/// unavailable (and ingest answers `503`).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Which Redis to use.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// One Redis server (`redis://host:port/db`).
    Single(String),
    /// A Redis Cluster, given by seed node URLs.
    Cluster(Vec<String>),
}

/// A connection to a single Redis or a Redis Cluster; both reconnect by
/// themselves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
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
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Shared by both scripts: Redis's clock, and dropping events older than the
/// history TTL from the front of a stream.
const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function trim(stream, cutoff)
  while true do
    local batch = redis.call('XRANGE', stream, '-', '+', 'COUNT', 100)
    if #batch == 0 then return end
    for _, entry in ipairs(batch) do
      if tonumber(entry[2][2]) > cutoff then return end
      redis.call('XDEL', stream, entry[1])
    end
  end
end
"#;

/// KEYS: meta, events, then one dedupe key per payment.
/// ARGV: max_events, history_ttl_ms, dedupe_ttl_ms, publish command,
/// channel, then one `data` JSON per payment.
/// Returns: { now, { id, duplicate (0/1), envelope or nil }, ... }.
const APPEND: &str = r#"
local meta, events = KEYS[1], KEYS[2]
local max_events, ttl, dttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local publish, channel = ARGV[4], ARGV[5]
local now = now_ms()
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  -- A history created afresh: a new epoch, and no entry of an older one.
  epoch = string.format('%d', now)
  redis.call('DEL', events)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0)
end
trim(events, now - ttl)
local out = { now }
for i = 6, #ARGV do
  local dedupe = KEYS[i - 3]
  local original = redis.call('GET', dedupe)
  if original then
    out[#out + 1] = { original, 1 }
  else
    local seq = redis.call('HINCRBY', meta, 'seq', 1)
    local id = epoch .. '-' .. string.format('%d', seq)
    local envelope = '{"type":"payment_notification","id":"' .. id .. '","seq":' ..
      string.format('%d', seq) .. ',"data":' .. ARGV[i] .. ',"timestamp":' ..
      string.format('%d', now) .. '}'
    redis.call('XADD', events, 'MAXLEN', max_events, id, 't', string.format('%d', now), 'e', envelope)
    redis.call('SET', dedupe, id, 'PX', dttl)
    redis.call(publish, channel, envelope)
    out[#out + 1] = { id, 0, envelope }
  end
end
redis.call('PEXPIRE', meta, dttl)
redis.call('PEXPIRE', events, ttl)
return out
"#;

/// KEYS: meta, events. ARGV: since epoch ('' for none), since seq, limit,
/// history_ttl_ms.
/// Returns { now } without a history, else
/// { now, epoch, last_seq, first_retained_seq, id, t, envelope, id, t, envelope, ... }
/// with up to limit + 1 events from where the read starts.
const READ: &str = r#"
local meta, events = KEYS[1], KEYS[2]
local since_epoch, since_seq, limit, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local m = redis.call('HMGET', meta, 'epoch', 'seq')
if not m[1] then return { now } end
local epoch, last = m[1], tonumber(m[2])
trim(events, now - ttl)
local first = last + 1
local head = redis.call('XRANGE', events, '-', '+', 'COUNT', 1)
if #head > 0 then
  first = tonumber(string.match(head[1][1], '-(%d+)$'))
end
local start = '-'
if since_epoch == epoch then start = epoch .. '-' .. string.format('%d', since_seq + 1) end
local out = { now, epoch, last, first }
for _, entry in ipairs(redis.call('XRANGE', events, start, '+', 'COUNT', limit + 1)) do
  out[#out + 1] = entry[1]
  out[#out + 1] = entry[2][2]
  out[#out + 1] = entry[2][4]
end
return out
"#;

/// A [`HistoryStore`] in Redis.
pub struct RedisStore {
    retention: Retention,
    cluster: bool,
    commands: Conn,
    /// A connection of its own for pub/sub: publications arrive on it as
    /// RESP3 push messages, and it resubscribes by itself after a reconnect.
    pubsub: Conn,
    append: Script,
    read: Script,
    /// Listen counts per trackingId.
    listens: Mutex<HashMap<String, usize>>,
    /// Channel name to trackingId, for the channels listened to.
    channels: Arc<RwLock<HashMap<String, String>>>,
}

impl RedisStore {
    /// Connects (lazily: the server starts while Redis is down, and is
    /// unready until it is up) and publishes to `deliveries`.
    pub async fn connect(
        target: &RedisTarget,
        retention: Retention,
        deliveries: Deliveries,
    ) -> Result<Self, StoreError> {
        let channels: Arc<RwLock<HashMap<String, String>>> = Arc::default();
        let on_push = {
            let channels = channels.clone();
            move |push: PushInfo| {
                on_publication(push, &channels, &deliveries);
                Ok::<(), redis::aio::SendError>(())
            }
        };
        let unavailable = |e: redis::RedisError| StoreError::Unavailable(e.to_string());
        let (commands, pubsub, cluster) = match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(with_resp3(url)).map_err(unavailable)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let commands =
                    ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                        .map_err(unavailable)?;
                let pubsub = ConnectionManager::new_lazy_with_config(
                    client,
                    config
                        .set_push_sender(on_push)
                        .set_automatic_resubscription(),
                )
                .map_err(unavailable)?;
                (Conn::Single(commands), Conn::Single(pubsub), false)
            }
            RedisTarget::Cluster(seeds) => {
                let builder = || {
                    ClusterClientBuilder::new(seeds.clone())
                        .use_protocol(redis::ProtocolVersion::RESP3)
                        .connection_timeout(CONNECT_TIMEOUT)
                        .response_timeout(RESPONSE_TIMEOUT)
                        .retries(2)
                };
                let commands = builder().build().map_err(unavailable)?;
                let pubsub = builder()
                    .push_sender(on_push)
                    .build()
                    .map_err(unavailable)?;
                let commands = commands.get_async_connection().await.map_err(unavailable)?;
                let pubsub = pubsub.get_async_connection().await.map_err(unavailable)?;
                (Conn::Cluster(commands), Conn::Cluster(pubsub), true)
            }
        };
        Ok(RedisStore {
            retention,
            cluster,
            commands,
            pubsub,
            append: Script::new(&format!("{PRELUDE}{APPEND}")),
            read: Script::new(&format!("{PRELUDE}{READ}")),
            listens: Mutex::default(),
            channels,
        })
    }

    fn listens(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.listens.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn subscribe(&self, channel: &str) -> redis::RedisResult<()> {
        match self.pubsub.clone() {
            Conn::Single(mut c) => c.subscribe(channel).await,
            Conn::Cluster(mut c) => c.ssubscribe(channel).await,
        }
    }

    async fn unsubscribe(&self, channel: &str) -> redis::RedisResult<()> {
        match self.pubsub.clone() {
            Conn::Single(mut c) => c.unsubscribe(channel).await,
            Conn::Cluster(mut c) => c.sunsubscribe(channel).await,
        }
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

/// Hands a publication to the delivery queue. Runs on the connection's
/// reader: it must not block.
fn on_publication(
    push: PushInfo,
    channels: &RwLock<HashMap<String, String>>,
    deliveries: &Deliveries,
) {
    if !matches!(push.kind, PushKind::Message | PushKind::SMessage) {
        return;
    }
    let mut data = push.data.into_iter();
    let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
        return;
    };
    let (Some(channel), Some(payload)) = (bulk_string(channel), bulk_string(payload)) else {
        tracing::warn!("unreadable pub/sub message");
        return;
    };
    let tracking_id = channels
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&channel)
        .cloned();
    let Some(tracking_id) = tracking_id else {
        return; // unsubscribed meanwhile
    };
    match RawValue::from_string(payload) {
        Ok(envelope) => deliveries.push(Delivery {
            tracking_id,
            envelope: Arc::from(envelope),
        }),
        Err(err) => tracing::warn!(%tracking_id, %err, "publication is not JSON"),
    }
}

fn bulk_string(v: Value) -> Option<String> {
    match v {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn malformed(what: &str) -> StoreError {
    StoreError::Unavailable(format!("unexpected reply from Redis ({what})"))
}

/// Keys and channel of one trackingId.
struct Keys {
    base: String,
}

impl Keys {
    fn new(tracking_id: &str) -> Self {
        let mut escaped = String::with_capacity(tracking_id.len());
        for c in tracking_id.chars() {
            match c {
                '%' => escaped.push_str("%25"),
                '{' => escaped.push_str("%7B"),
                '}' => escaped.push_str("%7D"),
                c => escaped.push(c),
            }
        }
        Keys {
            base: format!("tidings:{{{escaped}}}"),
        }
    }
    fn meta(&self) -> String {
        format!("{}:meta", self.base)
    }
    fn events(&self) -> String {
        format!("{}:events", self.base)
    }
    fn dedupe(&self, key: &crate::model::DedupeKey) -> String {
        format!("{}:d:{}", self.base, key.as_key())
    }
    fn channel(&self) -> String {
        format!("{}:p", self.base)
    }
}

#[async_trait]
impl HistoryStore for RedisStore {
    async fn append(
        &self,
        tracking_id: &str,
        payments: &[NewPayment],
        _accepted_ms: u64,
    ) -> Result<Vec<Appended>, StoreError> {
        let keys = Keys::new(tracking_id);
        let mut invocation = self.append.prepare_invoke();
        invocation.key(keys.meta()).key(keys.events());
        for p in payments {
            invocation.key(keys.dedupe(&p.dedupe));
        }
        invocation
            .arg(self.retention.max_events)
            .arg(self.retention.history_ttl_ms)
            .arg(self.retention.dedupe_ttl_ms)
            .arg(if self.cluster { "SPUBLISH" } else { "PUBLISH" })
            .arg(keys.channel());
        for p in payments {
            let data = serde_json::to_string(&p.data)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            invocation.arg(data);
        }
        let reply: Value = invocation
            .invoke_async(&mut self.commands.clone())
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
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
        let keys = Keys::new(tracking_id);
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
            .invoke_async(&mut self.commands.clone())
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
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
        })
    }

    async fn listen(&self, tracking_id: &str) -> Result<(), StoreError> {
        {
            let mut listens = self.listens();
            let count = listens.entry(tracking_id.to_owned()).or_insert(0);
            *count += 1;
            if *count > 1 {
                return Ok(());
            }
        }
        let channel = Keys::new(tracking_id).channel();
        // Mapped before subscribing, so that a publication arriving right
        // after the subscription is confirmed finds its trackingId.
        self.channels
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(channel.clone(), tracking_id.to_owned());
        if let Err(err) = self.subscribe(&channel).await {
            self.listens().remove(tracking_id);
            self.channels
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&channel);
            return Err(StoreError::Unavailable(err.to_string()));
        }
        Ok(())
    }

    async fn unlisten(&self, tracking_id: &str) {
        {
            let mut listens = self.listens();
            match listens.get_mut(tracking_id) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    return;
                }
                Some(_) => {
                    listens.remove(tracking_id);
                }
                None => return,
            }
        }
        let channel = Keys::new(tracking_id).channel();
        if let Err(err) = self.unsubscribe(&channel).await {
            // The connection is down: after it reconnects it resubscribes
            // to this channel too; publications for it are then ignored.
            tracing::warn!(%tracking_id, %err, "unsubscribe failed");
        }
        self.channels
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&channel);
    }

    async fn ping(&self) -> Result<(), StoreError> {
        for conn in [&self.commands, &self.pubsub] {
            let reply: redis::RedisResult<String> =
                redis::cmd("PING").query_async(&mut conn.clone()).await;
            reply.map_err(|e| StoreError::Unavailable(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag_and_cannot_collide() {
        let k = Keys::new("a}b{c%");
        assert_eq!(k.meta(), "tidings:{a%7Db%7Bc%25}:meta");
        assert_eq!(k.channel(), "tidings:{a%7Db%7Bc%25}:p");
        // A trackingId cannot end its hash tag early and reach into another
        // trackingId's keys.
        let sneaky = Keys::new("x}:d:s:sig");
        assert_ne!(
            sneaky.meta(),
            Keys::new("x").dedupe(&crate::model::DedupeKey::Signature("sig}:meta".into()))
        );
    }
}
