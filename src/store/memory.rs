//! [`MemoryStore`]: the history store of a single node, held in this
//! process's memory. Everything in it is lost at restart; the epochs make
//! that visible to clients as `HISTORY_TRUNCATED`.
//!
//! Epochs are milliseconds of a clock that never goes backwards within the
//! process ([`Clock`]); several histories may share one. A history is
//! created afresh only after the previous one of its trackingId expired
//! entirely, which takes at least `--history-ttl` (≥ 1 s) on that same
//! clock, so its epoch is larger. Across a restart, epochs come from the
//! wall clock again, which has moved past every earlier epoch (none ran
//! ahead of it): this assumes the system clock does not step back by more
//! than the restart took.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::{
    Appended, HistoryPage, HistoryStore, Publication, Publications, Retention, StoreError,
    resolve_since,
};
use crate::model::{DedupeKey, EventId, NewPayment, Position, StoredEvent, now_ms};

/// Independent locks over the trackingId space, so that appends for
/// different trackingIds rarely contend. No lock is held across an await.
const SHARDS: usize = 64;

/// Wall-clock milliseconds that never go backwards within this process:
/// acceptance times, expiry and epochs all read it, so that an expired
/// history's successor always gets a larger epoch.
#[derive(Default)]
struct Clock {
    last: AtomicU64,
}

impl Clock {
    fn now(&self) -> u64 {
        let wall = now_ms();
        let before = self.last.fetch_max(wall, Ordering::Relaxed);
        before.max(wall)
    }
}

/// An in-memory [`HistoryStore`].
pub struct MemoryStore {
    retention: Retention,
    publications: Publications,
    shards: Box<[Mutex<HashMap<String, History>>]>,
    hasher: RandomState,
    clock: Clock,
}

/// One trackingId's history and dedupe keys.
struct History {
    epoch: u64,
    last_seq: u64,
    /// Retained events, oldest first, with contiguous seqs.
    events: VecDeque<StoredEvent>,
    dedupe: HashMap<DedupeKey, EventId>,
    /// Dedupe keys in order of expiry (insertion order, as the TTL is fixed).
    dedupe_expiry: VecDeque<(u64, DedupeKey)>,
}

impl History {
    fn prune(&mut self, now: u64, retention: &Retention) {
        while self.events.len() > retention.max_events {
            self.events.pop_front();
        }
        while self
            .events
            .front()
            .is_some_and(|ev| ev.accepted_ms.saturating_add(retention.history_ttl_ms) <= now)
        {
            self.events.pop_front();
        }
        while self.dedupe_expiry.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, key)) = self.dedupe_expiry.pop_front() {
                self.dedupe.remove(&key);
            }
        }
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

impl MemoryStore {
    /// A store whose publications go to `publications` (this node is the
    /// only node, so everything is published to it).
    pub fn new(retention: Retention, publications: Publications) -> Self {
        MemoryStore {
            retention,
            publications,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            clock: Clock::default(),
        }
    }

    fn shard(&self, tracking_id: &str) -> std::sync::MutexGuard<'_, HashMap<String, History>> {
        let idx = (self.hasher.hash_one(tracking_id) as usize) % SHARDS;
        // A panic while holding a shard cannot leave a history half-written
        // in a way later calls rely on, so a poisoned lock is still usable.
        self.shards[idx].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops expired events and keys everywhere, and histories left empty.
    /// Run periodically; reads and appends also prune what they touch.
    pub fn sweep(&self) -> SweepStats {
        let now = self.clock.now();
        let mut stats = SweepStats::default();
        for shard in self.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, h| {
                h.prune(now, &self.retention);
                !h.is_empty()
            });
            stats.histories += map.len();
            stats.events += map.values().map(|h| h.events.len()).sum::<usize>();
            stats.dedupe_keys += map.values().map(|h| h.dedupe.len()).sum::<usize>();
        }
        stats
    }
}

/// What a [`MemoryStore::sweep`] left in memory.
#[derive(Debug, Default, Clone, Copy)]
pub struct SweepStats {
    pub histories: usize,
    pub events: usize,
    pub dedupe_keys: usize,
}

#[async_trait]
impl HistoryStore for MemoryStore {
    async fn append(
        &self,
        tracking_id: &str,
        payments: &[NewPayment],
    ) -> Result<Vec<Appended>, StoreError> {
        let mut map = self.shard(tracking_id);
        // Under the lock that orders this trackingId's appends, so that
        // acceptance times never decrease along its history.
        let accepted_ms = self.clock.now();
        let history = match map.get_mut(tracking_id) {
            Some(h) => h,
            None => map.entry(tracking_id.to_owned()).or_insert(History {
                epoch: accepted_ms,
                last_seq: 0,
                events: VecDeque::new(),
                dedupe: HashMap::new(),
                dedupe_expiry: VecDeque::new(),
            }),
        };
        history.prune(accepted_ms, &self.retention);
        let dedupe_until = accepted_ms.saturating_add(self.retention.dedupe_ttl_ms);
        let mut out = Vec::with_capacity(payments.len());
        for payment in payments {
            if let Some(original) = history.dedupe.get(&payment.dedupe) {
                out.push(Appended::Duplicate(*original));
                continue;
            }
            history.last_seq += 1;
            let id = EventId {
                epoch: history.epoch,
                seq: history.last_seq,
            };
            let event = StoredEvent::new(id, accepted_ms, &payment.data);
            history.events.push_back(event.clone());
            history.dedupe.insert(payment.dedupe.clone(), id);
            history
                .dedupe_expiry
                .push_back((dedupe_until, payment.dedupe.clone()));
            // Published under the shard lock: a trackingId's events enter
            // the queue in seq order.
            self.publications.publish(Publication {
                tracking_id: tracking_id.to_owned(),
                id,
                envelope: event.envelope.clone(),
            });
            out.push(Appended::Stored(event));
        }
        history.prune(accepted_ms, &self.retention);
        Ok(out)
    }

    async fn read(
        &self,
        tracking_id: &str,
        since: Option<EventId>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let now = self.clock.now();
        let mut map = self.shard(tracking_id);
        match map.get_mut(tracking_id) {
            Some(history) => {
                history.prune(now, &self.retention);
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
        MemoryStore::new(
            Retention {
                max_events: 10,
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

    /// A clock stepped back does not move this store's clock back.
    #[test]
    fn the_clock_never_goes_backwards() {
        let clock = Clock::default();
        clock.advance(3_600_000);
        let ahead = clock.now();
        assert!(clock.now() >= ahead);
    }
}
