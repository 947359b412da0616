//! [`MemoryStore`]: the history store of a single node, held in this
//! process's memory. Everything in it is lost at restart; the epochs make
//! that visible to clients as `HISTORY_TRUNCATED`.
//!
//! Epochs are milliseconds of a clock that never goes backwards within the
//! process ([`Clock`]); several histories may share one. A history is
//! created afresh only after the previous one of its trackingId was removed
//! (expired entirely, or evicted to keep within the memory limit), and its
//! epoch must be larger than that of every history removed from its shard:
//! an append waits for the clock to pass it (at most a millisecond, as no
//! epoch is ahead of the clock). Across a restart, epochs come from the
//! wall clock again, which has moved past every earlier epoch (none ran
//! ahead of it): this assumes the system clock does not step back by more
//! than the restart took.
//!
//! Why this file is long (about 580 lines of code, then its tests): the
//! histories, the memory accounting and eviction keep one invariant together
//! (the accounted bytes match what is held, checked by a recount in the
//! tests); split, each half would have to trust the other.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Appended, HistoryPage, HistoryStore, Publication, Publications, Retention, StoreError,
    resolve_since,
};
use crate::model::{DedupeKey, EventId, NameKind, NewPayment, Position, StoredEvent, now_ms};
use crate::telemetry;

/// Independent locks over the trackingId space, so that appends for
/// different trackingIds rarely contend. No lock is held across an await.
const SHARDS: usize = 64;

/// Estimated bytes one retained event costs beyond its envelope's text: its
/// entry in the history's queue. The constants are calibrated against the
/// process's resident memory in `load-tests/results/sizing-*.txt`.
const EVENT_OVERHEAD: usize = 40;

/// Estimated bytes one dedupe key costs beyond twice its text (it is held
/// in the key map and in the expiry queue): the map's entry and spare
/// capacity, the queue's entry and two allocations.
const KEY_OVERHEAD: usize = 350;

/// Estimated bytes one history costs beyond its trackingId: the entry in
/// its shard's map, its queues' and map's first allocations.
const HISTORY_OVERHEAD: usize = 850;

/// How often expired history and dedupe keys are swept (reads and appends
/// also prune what they touch).
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Bytes one entry of the store-wide acceptance order costs.
const ORDER_ENTRY: usize = std::mem::size_of::<Evictable>();

/// Wall-clock milliseconds that never go backwards within this process:
/// acceptance times, expiry and epochs all read it, so that an expired
/// history's successor always gets a larger epoch.
struct Clock {
    last: AtomicU64,
    /// The wall clock (the system's; a stepped one in tests).
    wall: fn() -> u64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            last: AtomicU64::new(0),
            wall: now_ms,
        }
    }
}

impl Clock {
    fn now(&self) -> u64 {
        let wall = (self.wall)();
        let before = self.last.fetch_max(wall, Ordering::Relaxed);
        before.max(wall)
    }
}

/// An in-memory [`HistoryStore`].
///
/// Its memory is bounded as a whole (`--memory-limit`): it accounts an
/// estimate of the bytes it retains (events, dedupe keys, histories) and,
/// when an append takes it over the bound, evicts the oldest payments across
/// all trackingIds, in acceptance order, until it is under again. An evicted
/// payment loses its event and its dedupe key; a history left with neither
/// is removed, exactly as if it had expired.
pub struct MemoryStore {
    retention: Retention,
    publications: Publications,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: Clock,
    /// Bytes the accounting may reach before eviction starts.
    limit: usize,
    /// Accounted bytes: every history's `bytes` plus the order's entries.
    /// Changed under the lock of what it accounts, so it never wraps.
    used: AtomicUsize,
    /// Every stored payment, oldest first: where eviction starts. Entries
    /// whose payment is already gone (expired, dropped by the history limit)
    /// are skipped when reached, and trimmed by age in [`MemoryStore::sweep`].
    order: Mutex<VecDeque<Evictable>>,
    /// Payments evicted so far.
    evictions: AtomicU64,
}

/// The histories of one shard of the trackingId space.
#[derive(Default)]
struct Shard {
    histories: HashMap<Arc<str>, History>,
    /// The largest epoch of a history removed from this shard (expired or
    /// evicted). A history created afresh needs a larger one: eviction can
    /// remove a history within the millisecond that created it.
    removed_epoch: u64,
}

/// One stored payment in the store-wide acceptance order.
struct Evictable {
    tracking_id: Arc<str>,
    epoch: u64,
    seq: u64,
    accepted_ms: u64,
}

/// One trackingId's (or stream's) history and dedupe keys (a stream has
/// none: a payment's key lives in its trackingId's history).
struct History {
    tracking_id: Arc<str>,
    /// Events kept at most (`max_events`, or `stream_max_events`).
    limit: usize,
    epoch: u64,
    last_seq: u64,
    /// Retained events, oldest first, with contiguous seqs.
    events: VecDeque<StoredEvent>,
    dedupe: HashMap<DedupeKey, EventId>,
    /// Dedupe keys in order of expiry (insertion order, as the TTL is fixed).
    dedupe_expiry: VecDeque<(u64, DedupeKey)>,
    /// The estimated bytes this history retains, itself included.
    bytes: usize,
}

fn event_cost(event: &StoredEvent) -> usize {
    event.envelope.get().len() + EVENT_OVERHEAD
}

fn key_cost(key: &DedupeKey) -> usize {
    let text = match key {
        DedupeKey::Idempotency(k) | DedupeKey::Signature(k) => k.len(),
    };
    2 * text + KEY_OVERHEAD
}

impl History {
    fn new(tracking_id: Arc<str>, epoch: u64, retention: &Retention) -> Self {
        let limit = match NameKind::of(&tracking_id) {
            NameKind::Stream => retention.stream_max_events,
            NameKind::TrackingId => retention.max_events,
        };
        History {
            bytes: tracking_id.len() + HISTORY_OVERHEAD,
            tracking_id,
            limit,
            epoch,
            last_seq: 0,
            events: VecDeque::new(),
            dedupe: HashMap::new(),
            dedupe_expiry: VecDeque::new(),
        }
    }

    fn push(&mut self, event: StoredEvent, key: DedupeKey, dedupe_until: u64) {
        self.bytes += event_cost(&event) + key_cost(&key);
        self.dedupe.insert(key.clone(), event.id);
        self.events.push_back(event);
        self.dedupe_expiry.push_back((dedupe_until, key));
    }

    fn pop_event(&mut self) {
        if let Some(event) = self.events.pop_front() {
            self.bytes -= event_cost(&event);
        }
    }

    fn pop_key(&mut self) {
        if let Some((_, key)) = self.dedupe_expiry.pop_front() {
            self.dedupe.remove(&key);
            self.bytes -= key_cost(&key);
        }
    }

    fn prune(&mut self, now: u64, retention: &Retention) {
        while self.events.len() > self.limit {
            self.pop_event();
        }
        while self
            .events
            .front()
            .is_some_and(|ev| ev.accepted_ms.saturating_add(retention.history_ttl_ms) <= now)
        {
            self.pop_event();
        }
        while self.dedupe_expiry.front().is_some_and(|(at, _)| *at <= now) {
            self.pop_key();
        }
    }

    /// Drops the event and dedupe key of every payment up to `seq` (the
    /// oldest ones: both queues are in seq order). Whether anything was
    /// still retained.
    fn evict_through(&mut self, seq: u64) -> bool {
        let mut evicted = false;
        while self.events.front().is_some_and(|ev| ev.id.seq <= seq) {
            self.pop_event();
            evicted = true;
        }
        while self.dedupe_expiry.front().is_some_and(|(_, key)| {
            self.dedupe
                .get(key)
                .is_none_or(|original| original.seq <= seq)
        }) {
            self.pop_key();
            evicted = true;
        }
        evicted
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.dedupe.is_empty()
    }

    fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            seq: self.last_seq,
        }
    }

    fn first_retained_seq(&self) -> u64 {
        self.events
            .front()
            .map_or(self.last_seq + 1, |ev| ev.id.seq)
    }

    /// Reads after `since` as the trait documents.
    fn read(
        &self,
        since: Option<EventId>,
        limit: usize,
        now: u64,
    ) -> Result<HistoryPage, StoreError> {
        let first = self.first_retained_seq();
        let (start_seq, truncated) =
            resolve_since(since, Some((self.epoch, self.last_seq, first)), now)?;
        let skip = (start_seq - first) as usize;
        let events: Vec<StoredEvent> = self.events.iter().skip(skip).take(limit).cloned().collect();
        let has_more = self.events.len() > skip + events.len();
        Ok(HistoryPage {
            events,
            has_more,
            truncated,
            position: self.position(),
        })
    }
}

/// The id of a history's last stored event.
fn event_id_of(history: &History) -> EventId {
    EventId {
        epoch: history.epoch,
        seq: history.last_seq,
    }
}

/// Why an append must be tried again shortly.
struct EpochTaken;

impl MemoryStore {
    /// A store whose publications go to `publications` (this node is the
    /// only node, so everything is published to it), without a memory
    /// bound until [`MemoryStore::with_memory_limit`] sets one.
    pub fn new(retention: Retention, publications: Publications) -> Self {
        MemoryStore {
            retention,
            publications,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            clock: Clock::default(),
            limit: usize::MAX,
            used: AtomicUsize::new(0),
            order: Mutex::new(VecDeque::new()),
            evictions: AtomicU64::new(0),
        }
    }

    /// Bounds the bytes this store accounts to `bytes`: beyond it, the
    /// oldest payments are evicted.
    pub fn with_memory_limit(mut self, bytes: u64) -> Self {
        self.limit = usize::try_from(bytes).unwrap_or(usize::MAX);
        self
    }

    /// The estimated bytes retained now (never above the limit once an
    /// append has returned, unless appends are under way).
    pub fn memory_bytes(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Payments evicted to keep within the memory limit, since start.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// The shard of a trackingId or stream: chosen by the account when
    /// streams are on, so that a payment's two histories share one lock.
    fn shard(&self, name: &str) -> MutexGuard<'_, Shard> {
        let streams = self.retention.streams;
        let key = match name.strip_suffix('*') {
            Some(account) => account,
            None => streams.account_of(name).unwrap_or(name),
        };
        let idx = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A panic while holding a shard cannot leave a history half-written
        // in a way later calls rely on, so a poisoned lock is still usable.
        self.shards[idx].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn order(&self) -> MutexGuard<'_, VecDeque<Evictable>> {
        self.order.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a change of accounted bytes from `before` to `after`; called
    /// under the lock of what changed, so a later decrease never comes first.
    fn account(&self, before: usize, after: usize) {
        if after >= before {
            self.used.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    fn report(&self) {
        metrics::gauge!(telemetry::STORE_MEMORY_BYTES).set(self.memory_bytes() as f64);
    }

    /// Appends under the shard lock, or answers [`EpochTaken`] when the
    /// history must be created afresh but the clock has not yet passed the
    /// epoch of one removed from the shard in this same millisecond.
    fn try_append(
        &self,
        tracking_id: &str,
        payments: &[NewPayment],
    ) -> Result<Vec<Appended>, EpochTaken> {
        let stream = self.retention.streams.stream_of(tracking_id);
        let mut shard = self.shard(tracking_id);
        let Shard {
            histories,
            removed_epoch,
        } = &mut *shard;
        // Under the lock that orders this trackingId's (and its stream's)
        // appends, so that acceptance times never decrease along either.
        let accepted_ms = self.clock.now();
        // Both histories are checked before either is touched: an append
        // that must wait changes nothing.
        let fresh = |name: &str| !histories.contains_key(name);
        if (fresh(tracking_id) || stream.as_deref().is_some_and(fresh))
            && accepted_ms <= *removed_epoch
        {
            return Err(EpochTaken);
        }
        let (out, stored) = self.append_to(histories, tracking_id, payments, accepted_ms);
        let name: Arc<str> = Arc::from(tracking_id);
        let mut order_entries: Vec<Evictable> = stored
            .iter()
            .map(|(_, event)| Evictable {
                tracking_id: name.clone(),
                epoch: event.id.epoch,
                seq: event.id.seq,
                accepted_ms,
            })
            .collect();
        if let Some(stream) = stream.filter(|_| !stored.is_empty()) {
            order_entries.extend(self.append_to_stream(histories, &stream, &stored, accepted_ms));
        }
        if !order_entries.is_empty() {
            let mut order = self.order();
            // Accounted before the entries can be popped (and subtracted).
            self.used
                .fetch_add(order_entries.len() * ORDER_ENTRY, Ordering::Relaxed);
            order.extend(order_entries);
        }
        Ok(out)
    }

    /// The history of `name`, created afresh with `epoch` if it has none
    /// (the caller checked the epoch is free), and its bytes before.
    fn history<'h>(
        &self,
        histories: &'h mut HashMap<Arc<str>, History>,
        name: &str,
        epoch: u64,
    ) -> (&'h mut History, usize) {
        if histories.contains_key(name) {
            let history = histories
                .get_mut(name)
                .unwrap_or_else(|| unreachable!("checked just above"));
            let before = history.bytes;
            return (history, before);
        }
        let key: Arc<str> = Arc::from(name);
        let fresh = History::new(key.clone(), epoch, &self.retention);
        (histories.entry(key).or_insert(fresh), 0)
    }

    /// Stores and publishes `payments` in `tracking_id`'s history; returns
    /// the outcomes and each new event with its payment.
    fn append_to<'p>(
        &self,
        histories: &mut HashMap<Arc<str>, History>,
        tracking_id: &str,
        payments: &'p [NewPayment],
        accepted_ms: u64,
    ) -> (Vec<Appended>, Vec<(&'p NewPayment, StoredEvent)>) {
        let (history, before) = self.history(histories, tracking_id, accepted_ms);
        history.prune(accepted_ms, &self.retention);
        let dedupe_until = accepted_ms.saturating_add(self.retention.dedupe_ttl_ms);
        let mut out = Vec::with_capacity(payments.len());
        let mut stored = Vec::new();
        for payment in payments {
            if let Some(original) = history.dedupe.get(&payment.dedupe) {
                out.push(Appended::Duplicate(*original));
                continue;
            }
            history.last_seq += 1;
            let id = event_id_of(history);
            let event = StoredEvent::new(id, accepted_ms, &payment.data);
            history.push(event.clone(), payment.dedupe.clone(), dedupe_until);
            // Published under the shard lock: a trackingId's events enter
            // the queue in seq order.
            self.publications.publish(Publication {
                tracking_id: tracking_id.to_owned(),
                event: event.clone(),
            });
            stored.push((payment, event.clone()));
            out.push(Appended::Stored(event));
        }
        history.prune(accepted_ms, &self.retention);
        self.account(before, history.bytes);
        (out, stored)
    }

    /// Stores and publishes the new events `stored` of one trackingId in
    /// its stream, in their order; returns their entries of the order.
    fn append_to_stream(
        &self,
        histories: &mut HashMap<Arc<str>, History>,
        stream: &str,
        stored: &[(&NewPayment, StoredEvent)],
        accepted_ms: u64,
    ) -> Vec<Evictable> {
        let (history, before) = self.history(histories, stream, accepted_ms);
        history.prune(accepted_ms, &self.retention);
        let mut entries = Vec::with_capacity(stored.len());
        for (payment, source) in stored {
            history.last_seq += 1;
            let id = event_id_of(history);
            let event =
                StoredEvent::new_in_stream(stream, id, source.id, accepted_ms, &payment.data);
            history.bytes += event_cost(&event);
            history.events.push_back(event.clone());
            self.publications.publish(Publication {
                tracking_id: stream.to_owned(),
                event,
            });
            entries.push(Evictable {
                tracking_id: history.tracking_id.clone(),
                epoch: id.epoch,
                seq: id.seq,
                accepted_ms,
            });
        }
        history.prune(accepted_ms, &self.retention);
        self.account(before, history.bytes);
        entries
    }

    /// Evicts the oldest payments until the accounting is within the limit
    /// (or nothing is left to evict). Amortised O(1) per stored payment:
    /// each order entry is popped once. Takes no lock while holding another.
    fn evict_to_limit(&self) {
        let mut evicted = 0;
        while self.used.load(Ordering::Relaxed) > self.limit {
            let Some(oldest) = self.order().pop_front() else {
                break;
            };
            self.used.fetch_sub(ORDER_ENTRY, Ordering::Relaxed);
            if self.evict(&oldest) {
                evicted += 1;
            }
        }
        if evicted > 0 {
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
            metrics::counter!(telemetry::STORE_EVICTIONS).increment(evicted);
            tracing::debug!(
                evicted,
                bytes = self.memory_bytes(),
                "memory limit reached: evicted the oldest payments"
            );
        }
    }

    /// Drops `oldest`'s event and dedupe key if its history still holds
    /// them, and the history itself if that leaves it empty.
    fn evict(&self, oldest: &Evictable) -> bool {
        let now = self.clock.now();
        let mut shard = self.shard(&oldest.tracking_id);
        let Shard {
            histories,
            removed_epoch,
        } = &mut *shard;
        let Some(history) = histories.get_mut(&*oldest.tracking_id) else {
            return false;
        };
        if history.epoch != oldest.epoch {
            return false;
        }
        let before = history.bytes;
        history.prune(now, &self.retention);
        let evicted = history.evict_through(oldest.seq);
        if history.is_empty() {
            *removed_epoch = (*removed_epoch).max(history.epoch);
            histories.remove(&*oldest.tracking_id);
            self.account(before, 0);
        } else {
            self.account(before, history.bytes);
        }
        evicted
    }

    /// Drops expired events and keys everywhere, and histories left empty.
    /// Run periodically; reads and appends also prune what they touch.
    pub fn sweep(&self) -> SweepStats {
        let now = self.clock.now();
        let mut stats = SweepStats::default();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let Shard {
                histories,
                removed_epoch,
            } = &mut *shard;
            histories.retain(|_, h| {
                let before = h.bytes;
                h.prune(now, &self.retention);
                if h.is_empty() {
                    *removed_epoch = (*removed_epoch).max(h.epoch);
                    self.account(before, 0);
                    false
                } else {
                    self.account(before, h.bytes);
                    true
                }
            });
            stats.histories += histories.len();
            stats.events += histories.values().map(|h| h.events.len()).sum::<usize>();
            stats.dedupe_keys += histories.values().map(|h| h.dedupe.len()).sum::<usize>();
        }
        // Entries older than the dedupe window name payments that are gone
        // (history_ttl ≤ dedupe_ttl): without this, a store that never
        // reaches its limit would keep one per payment ever stored.
        let mut order = self.order();
        let mut trimmed = 0;
        while order
            .front()
            .is_some_and(|e| e.accepted_ms.saturating_add(self.retention.dedupe_ttl_ms) <= now)
        {
            order.pop_front();
            trimmed += 1;
        }
        self.used
            .fetch_sub(trimmed * ORDER_ENTRY, Ordering::Relaxed);
        if order.capacity() > 2 * order.len() + 1024 {
            order.shrink_to_fit();
        }
        drop(order);
        stats.memory_bytes = self.memory_bytes();
        self.report();
        stats
    }
}

/// What a [`MemoryStore::sweep`] left in memory.
#[derive(Debug, Default, Clone, Copy)]
pub struct SweepStats {
    pub histories: usize,
    pub events: usize,
    pub dedupe_keys: usize,
    /// The estimated bytes retained (see [`MemoryStore::memory_bytes`]).
    pub memory_bytes: usize,
}

#[async_trait]
impl HistoryStore for MemoryStore {
    async fn append(
        &self,
        tracking_id: &str,
        payments: &[NewPayment],
    ) -> Result<Vec<Appended>, StoreError> {
        loop {
            match self.try_append(tracking_id, payments) {
                Ok(out) => {
                    self.evict_to_limit();
                    self.report();
                    return Ok(out);
                }
                // The clock passes the removed epoch within a millisecond
                // (no epoch is ahead of it).
                Err(EpochTaken) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }

    async fn read(
        &self,
        tracking_id: &str,
        since: Option<EventId>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let now = self.clock.now();
        let mut shard = self.shard(tracking_id);
        match shard.histories.get_mut(tracking_id) {
            Some(history) => {
                let before = history.bytes;
                history.prune(now, &self.retention);
                self.account(before, history.bytes);
                history.read(since, limit, now)
            }
            None => {
                let (_, truncated) = resolve_since(since, None, now)?;
                Ok(HistoryPage {
                    truncated,
                    ..HistoryPage::default()
                })
            }
        }
    }

    async fn listen(&self, _tracking_id: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn unlisten(&self, _tracking_id: &str) {}

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Sweeps expired events and keys every [`SWEEP_EVERY`], and reports
    /// what is held.
    async fn upkeep(&self) {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            every.tick().await;
            let stats = self.sweep();
            metrics::gauge!(telemetry::STORE_HISTORIES).set(stats.histories as f64);
            metrics::gauge!(telemetry::STORE_EVENTS).set(stats.events as f64);
            metrics::gauge!(telemetry::STORE_DEDUPE_KEYS).set(stats.dedupe_keys as f64);
        }
    }
}

/// The guarantees shared with the Redis store are tested against both in
/// `tests/store.rs`; what is particular to memory is tested here.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PaymentData, PaymentStatus};

    fn payment(tid: &str, sig: &str) -> NewPayment {
        NewPayment {
            data: PaymentData {
                tracking_id: tid.into(),
                amount: 1,
                timestamp: 1,
                status: PaymentStatus::Executed,
                signature: Some(sig.into()),
            },
            dedupe: DedupeKey::Signature(sig.into()),
        }
    }

    fn store() -> MemoryStore {
        store_with(crate::model::Streams::OFF)
    }

    fn store_with(streams: crate::model::Streams) -> MemoryStore {
        MemoryStore::new(
            Retention {
                max_events: 10,
                stream_max_events: 50,
                streams,
                history_ttl_ms: 60_000,
                dedupe_ttl_ms: 60_000,
            },
            Publications::channel(100_000).0,
        )
    }

    impl Clock {
        /// Moves this clock forward, as if `ms` had passed.
        fn advance(&self, ms: u64) {
            self.last.fetch_max(self.now() + ms, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_history_created_afresh_gets_a_new_epoch() {
        let store = store();
        let old = store.append("t", &[payment("t", "a")]).await.unwrap()[0].id();
        // Two minutes later: expired (history and dedupe key).
        store.clock.advance(120_000);
        assert_eq!(store.sweep().histories, 0);
        let new = store.append("t", &[payment("t", "a")]).await.unwrap()[0].id();
        assert!(new.epoch > old.epoch);
        assert_eq!(new.seq, 1);
        let page = store.read("t", Some(old), 10).await.unwrap();
        assert!(page.truncated);
        assert_eq!(page.events.len(), 1);
    }

    /// Many new histories in a burst do not push epochs ahead of the clock,
    /// so a store started afterwards (a restart) issues larger epochs, and
    /// reads every id of the first store's epochs as truncated, never as
    /// INVALID_SINCE.
    #[tokio::test]
    async fn epochs_never_run_ahead_of_the_clock_and_grow_across_a_restart() {
        let before = store();
        let mut last = EventId { epoch: 0, seq: 0 };
        for i in 0..30_000 {
            let tid = format!("burst-{i}");
            last = before.append(&tid, &[payment(&tid, "p")]).await.unwrap()[0].id();
        }
        assert!(
            last.epoch <= now_ms(),
            "epoch {} ran ahead of the clock {}",
            last.epoch,
            now_ms()
        );
        // The restart takes at least a millisecond.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after = store();
        let page = after.read("burst-29999", Some(last), 10).await.unwrap();
        assert!(
            page.truncated,
            "a since from before the restart is truncated"
        );
        let fresh = after
            .append("burst-29999", &[payment("burst-29999", "q")])
            .await
            .unwrap()[0]
            .id();
        assert!(fresh.epoch > last.epoch, "{fresh} after {last}");
        assert_ne!(fresh, last);
    }

    impl MemoryStore {
        /// The bytes the accounting should hold, recounted from scratch.
        fn recount(&self) -> usize {
            let histories: usize = self
                .shards
                .iter()
                .map(|shard| {
                    let shard = shard.lock().unwrap();
                    shard
                        .histories
                        .values()
                        .map(|h| {
                            h.tracking_id.len()
                                + HISTORY_OVERHEAD
                                + h.events.iter().map(event_cost).sum::<usize>()
                                + h.dedupe_expiry
                                    .iter()
                                    .map(|(_, k)| key_cost(k))
                                    .sum::<usize>()
                        })
                        .sum::<usize>()
                })
                .sum();
            histories + self.order().len() * ORDER_ENTRY
        }
    }

    /// Four workers at once, 300 calls each of three payments (one a
    /// duplicate) for the trackingId `tid(worker, call)`.
    async fn append_from_four_workers(store: &Arc<MemoryStore>, tid: fn(usize, usize) -> String) {
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..4 {
            let store = store.clone();
            tasks.spawn(async move {
                for i in 0..300 {
                    let tid = tid(worker, i);
                    let batch = [
                        payment(&tid, &format!("{worker}-{i}")),
                        payment(&tid, &format!("{worker}-{i}")),
                        payment(&tid, &format!("{worker}-{i}-b")),
                    ];
                    store.append(&tid, &batch).await.unwrap();
                }
            });
        }
        tasks.join_all().await;
    }

    /// The running accounting matches a recount through appends that
    /// evict, duplicates, the history limit, concurrent appends, expiry and
    /// sweeps, and returns to zero once everything has expired.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_accounting_matches_what_is_held_and_returns_to_zero() {
        // Room for the newest ~300 payments of 28 trackingIds: some keep
        // more than the history limit (10) of payments, so events are also
        // dropped by count from histories that stay.
        let store = Arc::new(store().with_memory_limit(256 * 1024));
        append_from_four_workers(&store, |worker, i| format!("w{worker}-{}", i % 7)).await;
        assert!(store.evictions() > 0, "the limit was reached");
        assert_eq!(store.memory_bytes(), store.recount());
        assert!(store.memory_bytes() <= 256 * 1024);
        store.sweep();
        assert_eq!(store.memory_bytes(), store.recount());
        store.clock.advance(120_000);
        let left = store.sweep();
        assert_eq!((left.histories, left.memory_bytes), (0, 0));
        assert_eq!(store.order().len(), 0, "expired order entries are trimmed");
    }

    /// With streams on, each payment is held twice (its trackingId's
    /// history and its account's stream): the accounting still matches a
    /// recount through concurrent appends that evict across both, the
    /// streams stay contiguous and within their limit, and everything
    /// returns to zero once expired.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn with_streams_the_accounting_matches_and_streams_stay_contiguous() {
        let streams = crate::model::Streams::with_separator(':').unwrap();
        let store = Arc::new(store_with(streams).with_memory_limit(256 * 1024));
        append_from_four_workers(&store, |worker, i| {
            format!("acct-{}:w{worker}-{}", worker % 2, i % 7)
        })
        .await;
        assert!(store.evictions() > 0, "the limit was reached");
        assert_eq!(store.memory_bytes(), store.recount());
        assert!(store.memory_bytes() <= 256 * 1024);
        let mut kept = 0;
        for stream in ["acct-0:*", "acct-1:*"] {
            // A stream evicted whole is gone, like any history.
            let page = store.read(stream, None, 1000).await.unwrap();
            let seqs: Vec<u64> = page.events.iter().map(|e| e.id.seq).collect();
            assert!(seqs.len() <= 50, "{stream}: {}", seqs.len());
            assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
            if let Some(last) = seqs.last() {
                assert_eq!(*last, page.position.seq);
                kept += 1;
            }
        }
        assert!(kept > 0, "the newest payments' stream is retained");
        store.clock.advance(120_000);
        let left = store.sweep();
        assert_eq!((left.histories, left.memory_bytes), (0, 0));
    }

    /// A wall clock stepped back does not move this store's clock back; it
    /// follows the wall clock again once that has passed where it was.
    #[test]
    fn the_clock_never_goes_backwards() {
        static WALL: AtomicU64 = AtomicU64::new(0);
        let clock = Clock {
            last: AtomicU64::new(0),
            wall: || WALL.load(Ordering::SeqCst),
        };
        WALL.store(5_000, Ordering::SeqCst);
        assert_eq!(clock.now(), 5_000);
        WALL.store(1_000, Ordering::SeqCst); // stepped back (an NTP correction)
        assert_eq!(clock.now(), 5_000);
        WALL.store(4_999, Ordering::SeqCst);
        assert_eq!(clock.now(), 5_000);
        WALL.store(7_000, Ordering::SeqCst);
        assert_eq!(clock.now(), 7_000);
    }
}
