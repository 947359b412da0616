//! The node catches itself up: a publication that skips ahead, one dropped
//! from a full queue, or a lost publication connection (a resync) makes the
//! hub read the history from the topic's cursor and deliver what its
//! subscribers missed, in order, before newer live payments (held
//! meanwhile). Beside it, the audit: every few seconds, whether the store
//! still delivers what this node listens to.

use std::sync::Arc;
use std::time::Duration;

use super::topic::{Live, Topic};
use super::{Hub, Subscriber};
use crate::model::Position;
use crate::store::StoreError;
use crate::telemetry;

/// How often the hub asks the store whether its listens still hold, and
/// how soon after a resync.
const AUDIT_EVERY: Duration = Duration::from_secs(5);
const AUDIT_AFTER_RESYNC: Duration = Duration::from_secs(1);

/// Catch-up rounds without progress before a held publication the store
/// does not have is given up.
const STALLED_ROUNDS: u32 = 5;

/// Retry delays while the store is unreachable.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Delay between retries while the store is unreachable, doubling.
pub(super) struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(RETRY_MIN)
    }
}

impl Backoff {
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(RETRY_MAX);
    }
}

impl<S: Subscriber> Hub<S> {
    /// Asks for a catch-up read of `topic` and starts its task if none runs.
    pub(super) fn want_catch_up(
        self: &Arc<Self>,
        topic: &Arc<Topic<S>>,
        live: &mut Live<S>,
        reason: &'static str,
        relisten: bool,
    ) {
        if live.want_catch_up(reason, relisten) {
            self.start_catch_up(topic);
        }
    }

    /// Starts `topic`'s catch-up task (its `Live` said one must start).
    pub(super) fn start_catch_up(self: &Arc<Self>, topic: &Arc<Topic<S>>) {
        self.tasks.spawn(self.clone().catch_up(topic.clone()));
    }

    /// The publication connection was lost: every topic listens again and
    /// catches up.
    pub(super) fn resync(self: &Arc<Self>) {
        metrics::counter!(telemetry::STORE_RESYNCS).increment(1);
        self.audit_soon.notify_one();
        let topics = self.topics.all();
        tracing::info!(
            topics = topics.len(),
            "re-listening and catching up every trackingId"
        );
        for topic in topics {
            let mut live = topic.live();
            self.want_catch_up(&topic, &mut live, "resync", true);
        }
    }

    /// Asks the store, every few seconds and soon after a resync, whether
    /// this node's listens still hold; those that may not are listened to
    /// again and caught up. A safety net under resyncs, for a publication
    /// connection that came back with fewer subscriptions than it had
    /// (seen with redis-rs's Redis Cluster client).
    pub async fn audit(self: Arc<Self>) {
        let mut every = tokio::time::interval(AUDIT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = self.audit_soon.notified() => tokio::time::sleep(AUDIT_AFTER_RESYNC).await,
            }
            let listened: Vec<String> = self
                .topics
                .all()
                .into_iter()
                .filter(|t| t.is_listening())
                .map(|t| t.tracking_id.clone())
                .collect();
            if listened.is_empty() {
                continue;
            }
            match self.store.audit(&listened).await {
                Ok(lost) => {
                    if !lost.is_empty() {
                        tracing::warn!(
                            count = lost.len(),
                            "listens found missing; listening again and catching up"
                        );
                    }
                    for tid in lost {
                        if let Some(topic) = self.topics.get(&tid) {
                            let mut live = topic.live();
                            self.want_catch_up(&topic, &mut live, "audit", true);
                        }
                    }
                }
                // The store is down: its return is a resync.
                Err(err) => tracing::debug!(%err, "audit skipped"),
            }
        }
    }

    /// Reads the history from the cursor and delivers what the room
    /// missed, round after round, until the held publications follow on.
    async fn catch_up(self: Arc<Self>, topic: Arc<Topic<S>>) {
        let Ok(_permit) = self.catch_ups.clone().acquire_owned().await else {
            return;
        };
        let tid = topic.tracking_id.as_str();
        let mut retry = Backoff::default();
        let mut stalled = 0;
        loop {
            let (from, round, relisten) = {
                let mut live = topic.live();
                let Some(from) = live.cursor else {
                    live.catch_up.running = false;
                    return;
                };
                let relisten = std::mem::take(&mut live.catch_up.relisten);
                (from, live.catch_up.wanted, relisten)
            };
            if topic.is_retired() || (relisten && !self.relisten(&topic).await) {
                return;
            }
            let page = match self.store.read(tid, from.id(), self.replay_limit).await {
                Ok(page) => page,
                Err(StoreError::InvalidSince) => {
                    // The store holds less than this node delivered, and did
                    // not notice a loss: start again from where it stands.
                    tracing::error!(tracking_id = tid, cursor = ?from, "the store is behind this node's cursor");
                    let mut live = topic.live();
                    live.announce_gap(tid, "the storage lost events", Position::NONE);
                    live.cursor = Some(Position::NONE);
                    continue;
                }
                Err(StoreError::Malformed(_)) => {
                    // Reading again reads the same. The room is told; the
                    // next publication asks again.
                    let mut live = topic.live();
                    live.announce_gap(tid, "the storage answered something unreadable", from);
                    live.catch_up.running = false;
                    return;
                }
                Err(StoreError::Unavailable(err)) => {
                    tracing::debug!(tracking_id = tid, %err, "catch-up waits for the store");
                    if relisten {
                        topic.live().catch_up.relisten = true;
                    }
                    retry.wait().await;
                    continue;
                }
            };
            retry = Backoff::default();
            {
                let mut live = topic.live();
                if topic.is_retired() {
                    return;
                }
                let complete = live.apply(tid, from, page);
                let caught_up = complete && live.drain_held(tid);
                if caught_up && live.catch_up.wanted == round {
                    live.catch_up.running = false;
                    return;
                }
                if live.cursor != Some(from) {
                    stalled = 0;
                    continue;
                }
                // No progress: a held publication the store did not show
                // yet. Give it time; one the store never shows cannot be
                // waited for forever.
                stalled += 1;
                if stalled >= STALLED_ROUNDS
                    && let Some(event) = live.drop_held_front()
                {
                    tracing::error!(tracking_id = tid, id = %event.id, "held publication the store does not have: dropped");
                    stalled = 0;
                }
            }
            retry.wait().await;
        }
    }

    /// Listens again (after a resync); false once the topic is retired.
    async fn relisten(&self, topic: &Topic<S>) -> bool {
        let mut retry = Backoff::default();
        loop {
            {
                let _control = topic.control.lock().await;
                if topic.is_retired() || !topic.is_listening() {
                    return false;
                }
                if self.store.listen(&topic.tracking_id).await.is_ok() {
                    return true;
                }
            }
            retry.wait().await;
        }
    }
}
