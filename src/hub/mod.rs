//! The node-local hub: which of this node's subscribers watch which
//! trackingId, and the one place where a payment leaves this node for them.
//!
//! Per trackingId the hub keeps a [`topic::Topic`]: the subscribers on this
//! node (the one membership: nothing else keeps rooms), whether the node
//! listens to the store for it, and the node's *cursor*, the last event its
//! subscribers were handed. Three rules keep delivery exact:
//!
//! - **First subscriber listens, last one unlistens**, decided under the
//!   topic's control lock, which only subscribes and unsubscribes of that
//!   trackingId take (held across the store's listen and first read).
//!   Delivery never takes it and never waits on the store: a slow subscribe
//!   stalls nobody else.
//! - **Replay hands over to live with nothing lost and nothing early**
//!   ([`handover`]). A subscriber whose replay is being read is *pending*:
//!   live payments for it are buffered (bounded), and after its replay they
//!   are sent from where the replay ended, then it joins the room, all
//!   under the topic's live lock that delivery also takes. A subscribe
//!   without `since` on a trackingId the node already follows needs no
//!   store call: its position is the cursor.
//! - **The node catches itself up** ([`catch_up`]). Each publication is
//!   checked against the cursor ([`order::step`]): one that skips ahead, a
//!   publication dropped from a full queue, or a lost publication
//!   connection makes the hub read the history from the cursor and deliver
//!   what its subscribers missed, in order, before newer live payments,
//!   which are held meanwhile. What cannot be recovered is announced with a
//!   `HISTORY_TRUNCATED` warning naming the trackingId.
//!
//! The parts, and what each may touch:
//!
//! - [`subscriber`]: the [`Subscriber`] interface, the only way envelopes
//!   leave the hub; [`socket`] implements it for socketioxide (the only
//!   module here that names it).
//! - [`topic`]: one trackingId's state and the rules that move its cursor,
//!   under its locks; never awaits, never calls the store.
//! - [`registry`]: the topics by trackingId.
//! - [`handover`] and [`catch_up`]: what needs the store (reads, listens).
//! - [`order`]: pure ordering rules (what an event is to a reader).
//!
//! Tested alone in [`tests`] (a recording [`Subscriber`], the memory store,
//! publications relayed by hand): no sockets, no Redis.

mod catch_up;
mod handover;
mod order;
mod registry;
mod socket;
mod subscriber;
#[cfg(test)]
mod tests;
mod topic;

use std::sync::Arc;

use socketioxide::extract::SocketRef;
use tokio::sync::{MutexGuard, Notify, Semaphore};

use crate::model::{EventId, Position, StatusFilter};
use crate::store::{HistoryStore, PublicationStream, Signal, StoreError};
use crate::tasks::TaskSet;
use crate::telemetry;
use registry::Registry;
pub use subscriber::Subscriber;
use topic::{Coverage, Filtered, Need, Pending, Topic};

/// Catch-up reads in flight at once on this node (a resync after a lost
/// publication connection starts one per trackingId).
const CATCH_UP_CONCURRENCY: usize = 32;

/// Replay reads in flight at once on this node (each socket has at most
/// one: its commands run in order). More wait: a burst of reconnecting
/// clients replaying their histories cannot have the node read thousands
/// of histories at once.
pub const REPLAYS_IN_FLIGHT: usize = 64;

/// What [`followed`] decided.
enum Followed<A> {
    /// Acked; nothing to read.
    Done,
    /// The subscriber is pending: read this, then hand over.
    Replay(Replay, bool, A),
}

/// A subscribe on a trackingId the node follows, under its live lock: the
/// cursor is the position of a subscribe without `since`, and a member's
/// repeated `since` may need nothing; else the subscriber leaves the room
/// (if in it) and waits for its replay (live payments buffered). A
/// function of its own so that no guard is held across an await.
///
/// What a member was handed is measured through its filter: a subscribe
/// that changes the filter starts afresh (without `since`: from the
/// cursor; with it: a whole replay with the new filter).
fn followed<S: Subscriber, A: FnOnce(Position)>(
    topic: &Topic<S>,
    sub: &S,
    since: Option<EventId>,
    filter: Option<StatusFilter>,
    ack: A,
) -> Followed<A> {
    let mut live = topic.live();
    let held = live
        .coverage(sub.id())
        .and_then(|(covers, held)| (held == filter).then_some(covers));
    let Some(since) = since else {
        // Every later event reaches the room.
        let at = live.cursor.unwrap_or_default();
        ack(at);
        let covers = held.unwrap_or(Coverage::After(at));
        live.join(sub, covers, Filtered::new(filter, at));
        return Followed::Done;
    };
    let fill = match held.map(|covers| covers.need(since, live.cursor)) {
        Some(Need::Nothing) => {
            // Same filter: its prevSeq chain goes on.
            metrics::counter!(telemetry::REPLAYS_SKIPPED).increment(1);
            ack(live.cursor.unwrap_or_default());
            return Followed::Done;
        }
        // A filtered member's chain would not follow from a partial fill.
        Some(Need::Until(to)) if filter.is_none() => Some(to),
        Some(_) | None => None,
    };
    let was_member = live.begin_replay(sub.id());
    Followed::Replay(Replay { since, fill }, was_member, ack)
}

/// A subscribe with `since`: what to read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replay {
    pub since: EventId,
    /// A member's repeated subscribe: it lacks only the events after
    /// `since` up to here (inclusive).
    pub fill: Option<Position>,
}

/// The hub of a Socket.IO server.
pub type SocketHub = Hub<SocketRef>;

/// This node's subscriptions, per trackingId.
pub struct Hub<S: Subscriber> {
    store: Arc<dyn HistoryStore>,
    topics: Registry<S>,
    /// Most events one read returns (the history limit: a replay is whole).
    replay_limit: usize,
    catch_ups: Arc<Semaphore>,
    replays: Semaphore,
    /// Wakes the audit soon after a resync.
    audit_soon: Notify,
    /// The catch-up tasks: they end with the hub ([`Hub::stop`]).
    tasks: TaskSet,
}

/// Proof that the caller holds a topic's control lock.
type Control<'a> = MutexGuard<'a, ()>;

impl<S: Subscriber> Hub<S> {
    pub fn new(store: Arc<dyn HistoryStore>, replay_limit: usize) -> Arc<Self> {
        Arc::new(Hub {
            store,
            topics: Registry::new(),
            replay_limit,
            catch_ups: Arc::new(Semaphore::new(CATCH_UP_CONCURRENCY)),
            replays: Semaphore::new(REPLAYS_IN_FLIGHT),
            audit_soon: Notify::new(),
            tasks: TaskSet::default(),
        })
    }

    /// Ends the catch-up tasks (the server is stopping).
    pub fn stop(&self) {
        self.tasks.abort_all();
    }

    /// Takes the store's publications and signals until the store is gone.
    pub async fn run(self: Arc<Self>, mut publications: PublicationStream) {
        while let Some(signal) = publications.next().await {
            match signal {
                Signal::Publication(p) => {
                    if let Some(topic) = self.topics.get(&p.tracking_id) {
                        let mut live = topic.live();
                        if live.offer(&topic.tracking_id, p.event) {
                            self.start_catch_up(&topic);
                        }
                    }
                }
                Signal::Dropped(tracking_ids) => {
                    for tid in tracking_ids {
                        if let Some(topic) = self.topics.get(&tid) {
                            let mut live = topic.live();
                            self.want_catch_up(&topic, &mut live, "dropped", false);
                        }
                    }
                }
                Signal::Resync => self.resync(),
                Signal::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Subscribes `sub` to `tracking_id`, replaying what followed `since`.
    /// Calls `ack` with the position once the subscription has taken
    /// effect, before any payment of it; then sends the `HISTORY_TRUNCATED`
    /// warning if due, the replay, and live payments. On error nothing
    /// changed (a subscriber that held the trackingId keeps it) and `ack` is
    /// not called. Returns how many events were replayed.
    ///
    /// A subscribe with `since` repeated on a trackingId `sub` holds replays
    /// only what `sub` was not handed since it subscribed (usually nothing,
    /// and then nothing is read): re-sending the same `since` cannot make
    /// the node read and send the history again and again.
    pub async fn subscribe(
        self: &Arc<Self>,
        sub: &S,
        tracking_id: &str,
        since: Option<EventId>,
        ack: impl FnOnce(Position),
    ) -> Result<usize, StoreError> {
        self.subscribe_filtered(sub, tracking_id, since, None, ack)
            .await
    }

    /// [`Hub::subscribe`] with a status filter (contract section 8): only
    /// matching payments are replayed and delivered, each with `prevSeq`.
    /// A subscribe repeated on a held name sets its filter anew.
    pub async fn subscribe_filtered(
        self: &Arc<Self>,
        sub: &S,
        tracking_id: &str,
        since: Option<EventId>,
        filter: Option<StatusFilter>,
        ack: impl FnOnce(Position),
    ) -> Result<usize, StoreError> {
        loop {
            let topic = self.topics.get_or_create(tracking_id);
            let control = topic.control.lock().await;
            if topic.is_retired() {
                continue;
            }
            if !topic.is_listening() {
                return self
                    .subscribe_first(&topic, control, sub, since, filter, ack)
                    .await;
            }
            let (replay, was_member, ack) = match followed(&topic, sub, since, filter, ack) {
                Followed::Done => return Ok(0),
                Followed::Replay(replay, was_member, ack) => (replay, was_member, ack),
            };
            // Read without holding the control lock.
            drop(control);
            return self
                .subscribe_replay(&topic, sub, replay, filter, was_member, ack)
                .await;
        }
    }

    /// The first subscriber on this node: listen, then read, so that
    /// nothing stored in between is missed; the read places the cursor.
    async fn subscribe_first(
        self: &Arc<Self>,
        topic: &Arc<Topic<S>>,
        control: Control<'_>,
        sub: &S,
        since: Option<EventId>,
        filter: Option<StatusFilter>,
        ack: impl FnOnce(Position),
    ) -> Result<usize, StoreError> {
        let tid = topic.tracking_id.as_str();
        if let Err(err) = self.store.listen(tid).await {
            self.topics.retire(topic);
            return Err(err);
        }
        topic.set_listening(true);
        topic.live().pending.insert(sub.id(), Pending::default());
        let replay = since.map(|since| Replay { since, fill: None });
        let page = match self.read_replay(tid, replay).await {
            Ok(page) => page,
            Err(err) => {
                topic.live().pending.remove(&sub.id());
                self.release(topic, &control).await;
                return Err(err);
            }
        };
        if topic.live().start(tid, page.position) {
            self.start_catch_up(topic);
        }
        drop(control);
        Ok(self.hand_over(topic, sub, replay, filter, page, ack).await)
    }

    /// A subscribe with `since` on a trackingId the node follows: read the
    /// replay, then hand over; on failure, back to where it was.
    async fn subscribe_replay(
        &self,
        topic: &Arc<Topic<S>>,
        sub: &S,
        replay: Replay,
        filter: Option<StatusFilter>,
        was_member: bool,
        ack: impl FnOnce(Position),
    ) -> Result<usize, StoreError> {
        let tid = topic.tracking_id.as_str();
        match self.read_replay(tid, Some(replay)).await {
            Ok(page) => Ok(self
                .hand_over(topic, sub, Some(replay), filter, page, ack)
                .await),
            Err(err) => {
                if was_member {
                    self.rejoin(topic, sub);
                } else {
                    topic.live().pending.remove(&sub.id());
                    let control = topic.control.lock().await;
                    if !topic.is_retired() {
                        self.release(topic, &control).await;
                    }
                }
                Err(err)
            }
        }
    }

    /// A subscribe's read: the position only without `since`; with it, the
    /// whole retained history after it, or only up to where what the
    /// subscriber has begins. At most [`REPLAYS_IN_FLIGHT`] at once.
    async fn read_replay(
        &self,
        tid: &str,
        replay: Option<Replay>,
    ) -> Result<crate::store::HistoryPage, StoreError> {
        let Some(replay) = replay else {
            return self.store.read(tid, None, 0).await;
        };
        let limit = match replay.fill {
            Some(to) => usize::try_from(to.seq.saturating_sub(replay.since.seq))
                .unwrap_or(usize::MAX)
                .min(self.replay_limit),
            None => self.replay_limit,
        };
        // Closed only with the hub, which then ends this task anyway.
        let _permit = self.replays.acquire().await;
        self.store.read(tid, Some(replay.since), limit).await
    }

    /// Unsubscribes `id` from `tracking_id` (also a subscribe of it in
    /// flight). Idempotent: unsubscribing twice, or racing a disconnect,
    /// changes nothing more.
    pub async fn unsubscribe(&self, id: S::Id, tracking_id: &str) {
        let Some(topic) = self.topics.get(tracking_id) else {
            return;
        };
        let control = topic.control.lock().await;
        if topic.is_retired() {
            return;
        }
        topic.live().remove(id);
        self.release(&topic, &control).await;
    }

    /// The last subscriber is gone: stop listening and retire the topic.
    async fn release(&self, topic: &Arc<Topic<S>>, _control: &Control<'_>) {
        if !topic.live().idle() {
            return;
        }
        if topic.is_listening() {
            topic.set_listening(false);
            self.store.unlisten(&topic.tracking_id).await;
        }
        self.topics.retire(topic);
    }

    /// Subscribers of `tracking_id` on this node (in the room, or with
    /// their replay being read), for the admin page's inspector.
    pub fn subscribers(&self, tracking_id: &str) -> usize {
        self.topics.get(tracking_id).map_or(0, |topic| {
            let live = topic.live();
            live.members.len() + live.pending.len()
        })
    }

    /// The trackingIds this node follows, for tests and operators.
    pub fn topics(&self) -> usize {
        self.topics.len()
    }
}
