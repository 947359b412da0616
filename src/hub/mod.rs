//! The node-local hub: which of this node's sockets watch which trackingId,
//! and the one place where a payment leaves this node for them.
//!
//! Per trackingId the hub owns a [`Topic`]: the sockets subscribed on this
//! node, whether the node listens to the store for it, and the node's
//! *cursor*, the last event its subscribers were handed. Three rules keep
//! delivery exact:
//!
//! - **First subscriber listens, last one unlistens**, decided under the
//!   topic's control lock, which only subscribes and unsubscribes of that
//!   trackingId take (held across the store's listen and first read).
//!   Delivery never takes it and never waits on the store: a slow subscribe
//!   stalls nobody else.
//! - **Replay hands over to live with nothing lost and nothing early.** A
//!   socket whose replay is being read is *pending*: live payments for it
//!   are buffered (bounded), and after its replay they are sent from where
//!   the replay ended, then the socket joins the room, all under the
//!   topic's live lock that delivery also takes. A subscribe without
//!   `since` on a trackingId the node already follows needs no store call:
//!   its position is the cursor.
//! - **The node catches itself up.** Each publication is checked against
//!   the cursor ([`order::step`]): one that skips ahead, a publication
//!   dropped from a full queue, or a lost publication connection (a
//!   resync) makes the hub read the history from the cursor and deliver
//!   what the sockets missed, in order, before newer live payments, which
//!   are held meanwhile. What cannot be recovered (no longer retained, or
//!   the history started afresh) is announced to the subscribers with a
//!   `HISTORY_TRUNCATED` warning naming the trackingId.

mod order;

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use tokio::sync::{Notify, Semaphore};

use crate::model::{
    Envelope, EventId, PAYMENT_EVENT, Position, envelope_timestamp, now_ms, room_of,
};
use crate::store::{HistoryPage, HistoryStore, PublicationStream, Signal, StoreError};
use crate::telemetry;
use order::{Step, jump, resume, step};

/// Independent maps over the trackingId space.
const SHARDS: usize = 64;

/// Live publications held per trackingId while its catch-up read is in
/// flight; beyond it they are dropped and the next read fetches them.
const HELD_LIMIT: usize = 4096;

/// Live payments buffered per socket while its replay is read; beyond it
/// the hub reads again from where the socket stands.
const PENDING_LIMIT: usize = 1024;

/// Catch-up reads in flight at once on this node (a resync after a lost
/// publication connection starts one per trackingId).
const CATCH_UP_CONCURRENCY: usize = 32;

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

/// An event on its way to sockets: its id and the envelope they get.
type Event = (EventId, Arc<RawValue>);

/// What a pending socket missed from the room while its replay was read.
enum Missed {
    /// An event handed to the room.
    Event(Event),
    /// The room's cursor moved to this position without an event (a
    /// catch-up found events gone, or a history that started afresh with
    /// none yet): the room was warned.
    Jump(Position),
}

/// One shard of the trackingId → topic map.
type Topics = RwLock<HashMap<String, Arc<Topic>>>;

/// This node's subscriptions, per trackingId.
pub struct Hub {
    io: SocketIo,
    store: Arc<dyn HistoryStore>,
    shards: Box<[Topics]>,
    hasher: RandomState,
    /// Most events one read returns (the history limit: a replay is whole).
    replay_limit: usize,
    catch_ups: Arc<Semaphore>,
    /// Wakes the audit soon after a resync.
    audit_soon: Notify,
    lag: LagHistograms,
}

/// The delivery lag histograms, looked up once (a lookup by name and
/// label per delivery would cost more than the recording).
#[derive(Default)]
struct LagHistograms(std::sync::OnceLock<[metrics::Histogram; 2]>);

impl LagHistograms {
    fn get(&self, path: &'static str) -> &metrics::Histogram {
        // Registered at the first delivery, once the server's recorder is
        // installed (a handle taken before would record nowhere).
        let [live, catch_up] = self.0.get_or_init(|| {
            [telemetry::PATH_LIVE, telemetry::PATH_CATCH_UP]
                .map(|p| metrics::histogram!(telemetry::DELIVERY_LAG, "path" => p))
        });
        if path == telemetry::PATH_LIVE {
            live
        } else {
            catch_up
        }
    }
}

/// One trackingId on this node.
struct Topic {
    tracking_id: String,
    room: String,
    /// Serialises subscribe and unsubscribe decisions (listen, unlisten).
    control: tokio::sync::Mutex<Control>,
    /// Delivery state; held briefly, never across an await.
    live: Mutex<Live>,
    /// Set once the topic is out of the hub's map: whoever still holds it
    /// lets go (a new subscriber makes a new topic).
    retired: AtomicBool,
    /// `Control::listening`, readable without the control lock (by the
    /// audit).
    listened: AtomicBool,
}

#[derive(Default)]
struct Control {
    /// The store delivers this trackingId's publications here.
    listening: bool,
}

#[derive(Default)]
struct Live {
    /// The last event handed to the room; `None` until the first
    /// subscriber's read says where the history stands.
    cursor: Option<Position>,
    /// Sockets in the room.
    members: HashSet<Sid>,
    /// Sockets whose replay is being read.
    pending: HashMap<Sid, Pending>,
    /// Publications waiting for the cursor (first read or catch-up).
    held: VecDeque<Event>,
    held_overflow: bool,
    /// A catch-up task runs for this topic.
    catching_up: bool,
    /// Catch-up rounds asked for; a round that started before the last
    /// request is followed by another.
    wanted: u64,
    /// The next catch-up round listens again first (after a resync).
    relisten: bool,
}

#[derive(Default)]
struct Pending {
    buffered: Vec<Missed>,
    overflow: bool,
    /// For a socket that was in the room (a resubscribe): the cursor when
    /// it left, where it stands if its read fails.
    left_at: Option<Position>,
}

impl Live {
    fn hold(&mut self, event: Event) {
        if self.held.len() < HELD_LIMIT {
            self.held.push_back(event);
        } else {
            self.held_overflow = true;
        }
    }

    fn idle(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }
}

impl Pending {
    fn buffer(&mut self, missed: Missed) {
        if self.buffered.len() < PENDING_LIMIT {
            self.buffered.push(missed);
        } else {
            self.overflow = true;
        }
    }
}

impl Topic {
    fn new(tracking_id: &str) -> Self {
        Topic {
            tracking_id: tracking_id.to_owned(),
            room: room_of(tracking_id),
            control: tokio::sync::Mutex::default(),
            live: Mutex::default(),
            retired: AtomicBool::new(false),
            listened: AtomicBool::new(false),
        }
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        // Every field is updated in one step; a panic elsewhere cannot leave
        // it half-written, so a poisoned lock is still usable.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }
}

impl Hub {
    pub fn new(io: SocketIo, store: Arc<dyn HistoryStore>, replay_limit: usize) -> Arc<Hub> {
        Arc::new(Hub {
            io,
            store,
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            replay_limit,
            catch_ups: Arc::new(Semaphore::new(CATCH_UP_CONCURRENCY)),
            audit_soon: Notify::new(),
            lag: LagHistograms::default(),
        })
    }

    /// Asks the store, every few seconds and soon after a resync, whether
    /// this node's listens still hold; those that may not are listened to
    /// again and caught up. A safety net under [`Hub::run`]'s resyncs, for a
    /// publication connection that came back with fewer subscriptions than
    /// it had (seen with redis-rs's Redis Cluster client).
    pub async fn audit(self: Arc<Self>) {
        let mut every = tokio::time::interval(AUDIT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = self.audit_soon.notified() => tokio::time::sleep(AUDIT_AFTER_RESYNC).await,
            }
            let listened: Vec<String> = self
                .all_topics()
                .into_iter()
                .filter(|t| t.listened.load(Ordering::SeqCst))
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
                        if let Some(topic) = self.get(&tid) {
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

    /// Takes the store's publications and signals until the store is gone.
    pub async fn run(self: Arc<Self>, mut publications: PublicationStream) {
        while let Some(signal) = publications.next().await {
            match signal {
                Signal::Publication(p) => {
                    if let Some(topic) = self.get(&p.tracking_id) {
                        let mut live = topic.live();
                        self.offer(&topic, &mut live, (p.id, p.envelope));
                    }
                }
                Signal::Dropped(tracking_ids) => {
                    for tid in tracking_ids {
                        if let Some(topic) = self.get(&tid) {
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

    /// Subscribes `socket` to `tracking_id`, replaying what followed
    /// `since`. Calls `ack` with the position once the subscription has
    /// taken effect, before any payment of it; then sends the
    /// `HISTORY_TRUNCATED` warning if due, the replay, and live payments.
    /// On error nothing changed (a socket that held the trackingId keeps
    /// it) and `ack` is not called.
    pub async fn subscribe(
        self: &Arc<Self>,
        socket: &SocketRef,
        tracking_id: &str,
        since: Option<EventId>,
        ack: impl FnOnce(Position),
    ) -> Result<(), StoreError> {
        let sid = socket.id;
        // Without since, only the position is read.
        let limit = if since.is_some() {
            self.replay_limit
        } else {
            0
        };
        loop {
            let topic = self.get_or_create(tracking_id);
            let mut control = topic.control.lock().await;
            if topic.is_retired() {
                continue;
            }
            if !control.listening {
                // The first subscriber on this node: listen, then read, so
                // that nothing stored in between is missed.
                if let Err(err) = self.store.listen(tracking_id).await {
                    self.retire(&topic);
                    return Err(err);
                }
                control.listening = true;
                topic.listened.store(true, Ordering::SeqCst);
                topic.live().pending.insert(sid, Pending::default());
                let page = match self.store.read(tracking_id, since, limit).await {
                    Ok(page) => page,
                    Err(err) => {
                        topic.live().pending.remove(&sid);
                        self.release(&topic, &mut control).await;
                        return Err(err);
                    }
                };
                self.start(&topic, &mut topic.live(), page.position);
                drop(control);
                self.hand_over(&topic, socket, since, page, ack).await;
                return Ok(());
            }
            if since.is_none() {
                // The node follows this trackingId: its cursor is the
                // position, and every later event reaches the room.
                let mut live = topic.live();
                ack(live.cursor.unwrap_or_default());
                if live.members.insert(sid) {
                    socket.join(topic.room.clone());
                }
                return Ok(());
            }
            // A replay: pending (out of the room, live payments buffered)
            // while it is read, without holding the control lock.
            let was_member = {
                let mut live = topic.live();
                let was_member = live.members.remove(&sid);
                if was_member {
                    socket.leave(topic.room.clone());
                }
                let left_at = live.cursor.filter(|_| was_member);
                tracing::debug!(tracking_id, socket_id = %sid, was_member, ?left_at, "pending: replay read");
                live.pending.insert(
                    sid,
                    Pending {
                        left_at,
                        ..Pending::default()
                    },
                );
                was_member
            };
            drop(control);
            return match self.store.read(tracking_id, since, limit).await {
                Ok(page) => {
                    self.hand_over(&topic, socket, since, page, ack).await;
                    Ok(())
                }
                Err(err) => {
                    if was_member {
                        self.rejoin(&topic, socket);
                    } else {
                        topic.live().pending.remove(&sid);
                        let mut control = topic.control.lock().await;
                        if !topic.is_retired() {
                            self.release(&topic, &mut control).await;
                        }
                    }
                    Err(err)
                }
            };
        }
    }

    /// Unsubscribes `socket` from `tracking_id` (also a subscribe of it in
    /// flight). Idempotent: unsubscribing twice, or racing a disconnect,
    /// changes nothing more.
    pub async fn unsubscribe(&self, socket: &SocketRef, tracking_id: &str) {
        let Some(topic) = self.get(tracking_id) else {
            return;
        };
        let mut control = topic.control.lock().await;
        if topic.is_retired() {
            return;
        }
        {
            let mut live = topic.live();
            if live.members.remove(&socket.id) {
                socket.leave(topic.room.clone());
            }
            live.pending.remove(&socket.id);
        }
        self.release(&topic, &mut control).await;
    }

    /// Sockets of this node subscribed to `tracking_id` (in the room, or
    /// with their replay being read), for the admin page's inspector.
    pub fn subscribers(&self, tracking_id: &str) -> usize {
        self.get(tracking_id).map_or(0, |topic| {
            let live = topic.live();
            live.members.len() + live.pending.len()
        })
    }

    /// The trackingIds this node follows, for tests and operators.
    pub fn topics(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    fn all_topics(&self) -> Vec<Arc<Topic>> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.read()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn shard(&self, tracking_id: &str) -> &Topics {
        &self.shards[(self.hasher.hash_one(tracking_id) as usize) % SHARDS]
    }

    fn get(&self, tracking_id: &str) -> Option<Arc<Topic>> {
        self.shard(tracking_id)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tracking_id)
            .cloned()
    }

    fn get_or_create(&self, tracking_id: &str) -> Arc<Topic> {
        if let Some(topic) = self.get(tracking_id) {
            return topic;
        }
        let mut map = self
            .shard(tracking_id)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(tracking_id.to_owned())
            .or_insert_with(|| {
                metrics::gauge!(telemetry::TOPICS).increment(1.0);
                Arc::new(Topic::new(tracking_id))
            })
            .clone()
    }

    /// Takes `topic` out of the map: the next subscriber starts afresh.
    fn retire(&self, topic: &Arc<Topic>) {
        let mut map = self
            .shard(&topic.tracking_id)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if map
            .get(&topic.tracking_id)
            .is_some_and(|t| Arc::ptr_eq(t, topic))
        {
            map.remove(&topic.tracking_id);
            metrics::gauge!(telemetry::TOPICS).decrement(1.0);
        }
        topic.retired.store(true, Ordering::SeqCst);
    }

    /// The last subscriber is gone: stop listening and retire the topic.
    /// The caller holds the control lock.
    async fn release(&self, topic: &Arc<Topic>, control: &mut Control) {
        if !topic.live().idle() {
            return;
        }
        if control.listening {
            topic.listened.store(false, Ordering::SeqCst);
            self.store.unlisten(&topic.tracking_id).await;
            control.listening = false;
        }
        self.retire(topic);
    }

    /// The first subscriber's read says where the history stands: from
    /// there, the topic delivers.
    fn start(self: &Arc<Self>, topic: &Arc<Topic>, live: &mut Live, position: Position) {
        live.cursor = Some(position);
        if live.wanted > 0 {
            // A drop or a resync came while the first read was in flight.
            live.catching_up = true;
            tokio::spawn(self.clone().catch_up(topic.clone()));
        } else if !self.drain_held(topic, live) {
            self.want_catch_up(topic, live, "gap", false);
        }
    }

    /// A live publication: delivered now if it is the next one, held while
    /// the topic is not in step with the store.
    fn offer(self: &Arc<Self>, topic: &Arc<Topic>, live: &mut Live, event: Event) {
        let cursor = match live.cursor {
            Some(cursor) if !live.catching_up => cursor,
            _ => return live.hold(event),
        };
        if let Err(event) = self.follow(topic, live, cursor, event) {
            live.hold(event);
            self.want_catch_up(topic, live, "gap", false);
        }
    }

    /// Delivers `event` if it follows `cursor` (announcing a history that
    /// started afresh), skips it if it is old; hands it back on a gap.
    fn follow(
        &self,
        topic: &Topic,
        live: &mut Live,
        cursor: Position,
        event: Event,
    ) -> Result<(), Event> {
        match step(cursor, event.0) {
            Step::Old => {}
            Step::Next => self.deliver(topic, live, event, telemetry::PATH_LIVE),
            Step::Restart => {
                self.announce_gap(topic, live, "its history started afresh");
                self.deliver(topic, live, event, telemetry::PATH_LIVE);
            }
            Step::Gap => return Err(event),
        }
        Ok(())
    }

    /// Hands the next event to the room and to every pending socket's
    /// buffer, and moves the cursor. `path` labels its delivery lag.
    fn deliver(&self, topic: &Topic, live: &mut Live, (id, envelope): Event, path: &'static str) {
        metrics::counter!(telemetry::BROADCASTS).increment(1);
        if !live.members.is_empty() {
            to_room(&self.io, &topic.room, PAYMENT_EVENT, &*envelope);
            // Once per payment and node, after the last subscriber here was
            // handed it; a clock behind the accepting node's reads as 0.
            if let Some(accepted) = envelope_timestamp(&envelope) {
                let lag_ms = now_ms().saturating_sub(accepted);
                self.lag.get(path).record(lag_ms as f64 / 1000.0);
            }
        }
        for pending in live.pending.values_mut() {
            pending.buffer(Missed::Event((id, envelope.clone())));
        }
        live.cursor = Some(id.into());
    }

    /// Tells the room that some of its events cannot be delivered.
    fn announce_gap(&self, topic: &Topic, live: &Live, why: &str) {
        metrics::counter!(telemetry::GAPS_ANNOUNCED).increment(1);
        tracing::warn!(tracking_id = %topic.tracking_id, members = live.members.len(), pending = live.pending.len(), "announcing a gap: {why}");
        if !live.members.is_empty() {
            let warning = Envelope::truncated(
                &topic.tracking_id,
                format!(
                    "Payments of trackingId {} may be missing and cannot be recovered: {why}",
                    topic.tracking_id
                ),
            );
            to_room(&self.io, &topic.room, "error", &warning);
        }
    }

    /// Delivers held publications that follow the cursor; false when one
    /// does not (or some were dropped): a catch-up read is needed.
    fn drain_held(&self, topic: &Topic, live: &mut Live) -> bool {
        while let Some(event) = live.held.pop_front() {
            let Some(cursor) = live.cursor else {
                live.held.push_front(event);
                return false;
            };
            if let Err(event) = self.follow(topic, live, cursor, event) {
                live.held.push_front(event);
                return false;
            }
        }
        !std::mem::take(&mut live.held_overflow)
    }

    /// Asks for a catch-up read of `topic` and starts its task if none runs.
    fn want_catch_up(
        self: &Arc<Self>,
        topic: &Arc<Topic>,
        live: &mut Live,
        reason: &'static str,
        relisten: bool,
    ) {
        metrics::counter!(telemetry::CATCH_UPS, "reason" => reason).increment(1);
        live.wanted += 1;
        live.relisten |= relisten;
        if live.cursor.is_some() && !live.catching_up {
            live.catching_up = true;
            tokio::spawn(self.clone().catch_up(topic.clone()));
        }
    }

    /// The publication connection was lost: every topic listens again and
    /// catches up.
    fn resync(self: &Arc<Self>) {
        metrics::counter!(telemetry::STORE_RESYNCS).increment(1);
        self.audit_soon.notify_one();
        let topics = self.all_topics();
        tracing::info!(
            topics = topics.len(),
            "re-listening and catching up every trackingId"
        );
        for topic in topics {
            let mut live = topic.live();
            self.want_catch_up(&topic, &mut live, "resync", true);
        }
    }

    /// Reads the history from the cursor and delivers what the room
    /// missed, round after round, until the held publications follow on.
    async fn catch_up(self: Arc<Self>, topic: Arc<Topic>) {
        let Ok(_permit) = self.catch_ups.clone().acquire_owned().await else {
            return;
        };
        let mut retry = Backoff::default();
        let mut stalled = 0;
        loop {
            let (from, round, relisten) = {
                let mut live = topic.live();
                let Some(from) = live.cursor else {
                    live.catching_up = false;
                    return;
                };
                (from, live.wanted, std::mem::take(&mut live.relisten))
            };
            if topic.is_retired() || (relisten && !self.relisten(&topic).await) {
                return;
            }
            let page = match self
                .store
                .read(&topic.tracking_id, from.id(), self.replay_limit)
                .await
            {
                Ok(page) => page,
                Err(StoreError::InvalidSince) => {
                    // The store holds less than this node delivered, and did
                    // not notice a loss: start again from where it stands.
                    tracing::error!(tracking_id = %topic.tracking_id, cursor = ?from, "the store is behind this node's cursor");
                    let mut live = topic.live();
                    self.announce_gap(&topic, &live, "the storage lost events");
                    live.cursor = Some(Position::NONE);
                    continue;
                }
                Err(StoreError::Unavailable(err)) => {
                    tracing::debug!(tracking_id = %topic.tracking_id, %err, "catch-up waits for the store");
                    if relisten {
                        topic.live().relisten = true;
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
                let complete = self.apply(&topic, &mut live, from, page);
                let caught_up = complete && self.drain_held(&topic, &mut live);
                if caught_up && live.wanted == round {
                    live.catching_up = false;
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
                    && let Some((id, _)) = live.held.pop_front()
                {
                    tracing::error!(tracking_id = %topic.tracking_id, %id, "held publication the store does not have: dropped");
                    stalled = 0;
                }
            }
            retry.wait().await;
        }
    }

    /// Listens again (after a resync); false once the topic is retired.
    async fn relisten(&self, topic: &Topic) -> bool {
        let mut retry = Backoff::default();
        loop {
            {
                let control = topic.control.lock().await;
                if topic.is_retired() || !control.listening {
                    return false;
                }
                if self.store.listen(&topic.tracking_id).await.is_ok() {
                    return true;
                }
            }
            retry.wait().await;
        }
    }

    /// Applies a catch-up read made from `from`: announces what cannot be
    /// recovered and delivers the rest. False when the history has more.
    fn apply(&self, topic: &Topic, live: &mut Live, from: Position, page: HistoryPage) -> bool {
        let (gap, base) = resume(from, page.position, page.events.first().map(|e| e.id));
        if gap {
            self.announce_gap(topic, live, "they are no longer retained");
            // Sockets out of the room now are told when they come back.
            for pending in live.pending.values_mut() {
                pending.buffer(Missed::Jump(base));
            }
        }
        live.cursor = Some(base);
        let mut delivered = 0;
        for event in page.events {
            if live.cursor.is_some_and(|c| step(c, event.id) == Step::Next) {
                self.deliver(
                    topic,
                    live,
                    (event.id, event.envelope),
                    telemetry::PATH_CATCH_UP,
                );
                delivered += 1;
            }
        }
        metrics::counter!(telemetry::CATCH_UP_EVENTS).increment(delivered);
        !page.has_more
    }

    /// A pending socket's read is back: ack, warning, replay, then what was
    /// buffered meanwhile from where the replay ended, then the room.
    async fn hand_over(
        &self,
        topic: &Topic,
        socket: &SocketRef,
        since: Option<EventId>,
        page: HistoryPage,
        ack: impl FnOnce(Position),
    ) {
        let tid = topic.tracking_id.as_str();
        ack(page.position);
        let mut at = page.position;
        if since.is_some() {
            if page.truncated {
                warn_socket(
                    socket,
                    tid,
                    format!(
                        "Some payments of trackingId {tid} after the given since are no longer retained; replay starts at the oldest retained one"
                    ),
                );
            }
            metrics::counter!(telemetry::REPLAYED).increment(page.events.len() as u64);
            metrics::histogram!(telemetry::REPLAY_EVENTS).record(page.events.len() as f64);
            for event in &page.events {
                to_socket(socket, PAYMENT_EVENT, &*event.envelope);
            }
            if page.has_more
                && let Some(last) = page.events.last()
            {
                at = last.id.into();
            }
        }
        let mut retry = Backoff::default();
        loop {
            {
                let mut live = topic.live();
                let Some(pending) = live.pending.get_mut(&socket.id) else {
                    return; // unsubscribed (disconnected) meanwhile
                };
                let overflow = std::mem::take(&mut pending.overflow);
                let buffered = std::mem::take(&mut pending.buffered);
                let missing = match send_following(socket, tid, at, buffered, Gaps::Stop) {
                    Ok(after) => {
                        at = after;
                        overflow
                    }
                    Err(before) => {
                        at = before;
                        true
                    }
                };
                if !missing {
                    tracing::debug!(tracking_id = tid, socket_id = %socket.id, ?at, "joins the room after its replay");
                    live.pending.remove(&socket.id);
                    if live.members.insert(socket.id) {
                        socket.join(topic.room.clone());
                    }
                    return;
                }
            }
            // Live payments outran the buffer: read what is missing.
            match self.store.read(tid, at.id(), self.replay_limit).await {
                Ok(more) => {
                    let (gap, base) = resume(at, more.position, more.events.first().map(|e| e.id));
                    if gap {
                        warn_socket(
                            socket,
                            tid,
                            format!("Some payments of trackingId {tid} are no longer retained"),
                        );
                    }
                    at = base;
                    for event in more.events {
                        if step(at, event.id) == Step::Next {
                            to_socket(socket, PAYMENT_EVENT, &*event.envelope);
                            at = event.id.into();
                        }
                    }
                }
                Err(StoreError::InvalidSince) => at = Position::NONE,
                Err(StoreError::Unavailable(_)) => {
                    if !socket.connected() {
                        topic.live().pending.remove(&socket.id);
                        return;
                    }
                    retry.wait().await;
                }
            }
        }
    }

    /// A failed resubscribe: the socket gets what the room got meanwhile,
    /// warnings included, and is back in the room, as if nothing happened.
    fn rejoin(&self, topic: &Topic, socket: &SocketRef) {
        let mut live = topic.live();
        let Some(pending) = live.pending.remove(&socket.id) else {
            return;
        };
        let at = pending.left_at.unwrap_or_default();
        let tid = topic.tracking_id.as_str();
        tracing::debug!(tracking_id = tid, socket_id = %socket.id, ?at, missed = pending.buffered.len(), "rejoining after a failed resubscribe");
        // No gap can stop it: the room's own gaps were announced to the
        // room, so they are announced here too.
        let _ = send_following(socket, tid, at, pending.buffered, Gaps::Warn);
        if live.members.insert(socket.id) {
            socket.join(topic.room.clone());
        }
    }
}

/// What [`send_following`] does at a gap.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gaps {
    /// Stop there: the caller reads what is missing.
    Stop,
    /// Warn the socket (`HISTORY_TRUNCATED`) and go on.
    Warn,
}

/// Sends `socket` what it missed from the room (`missed`) that follows
/// `at`, with a `HISTORY_TRUNCATED` warning before a history that started
/// afresh (and, with [`Gaps::Warn`], before any gap). Returns where the
/// socket now stands, or, with [`Gaps::Stop`], where it stood at the first
/// gap.
fn send_following(
    socket: &SocketRef,
    tid: &str,
    mut at: Position,
    missed: Vec<Missed>,
    gaps: Gaps,
) -> Result<Position, Position> {
    for item in missed {
        let (id, envelope) = match item {
            Missed::Event(event) => event,
            Missed::Jump(to) => {
                let (after, gap) = jump(at, to);
                if gap && gaps == Gaps::Stop {
                    return Err(at);
                }
                if gap {
                    warn_socket(
                        socket,
                        tid,
                        format!(
                            "Payments of trackingId {tid} may be missing and cannot be recovered"
                        ),
                    );
                }
                at = after;
                continue;
            }
        };
        match step(at, id) {
            Step::Old => continue,
            Step::Next => {}
            Step::Restart => warn_socket(
                socket,
                tid,
                format!("The history of trackingId {tid} started afresh"),
            ),
            Step::Gap if gaps == Gaps::Stop => return Err(at),
            Step::Gap => warn_socket(
                socket,
                tid,
                format!("Payments of trackingId {tid} may be missing and cannot be recovered"),
            ),
        }
        to_socket(socket, PAYMENT_EVENT, &*envelope);
        at = id.into();
    }
    Ok(at)
}

/// Delay between retries while the store is unreachable, doubling.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(RETRY_MIN)
    }
}

impl Backoff {
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(RETRY_MAX);
    }
}

/// Emits to one socket; false when the socket cannot take it (closed, or
/// its buffer is full: that client sees the seq jump and recovers).
fn to_socket<T: Serialize + ?Sized>(socket: &SocketRef, event: &str, data: &T) -> bool {
    match socket.emit(event, data) {
        Ok(()) => true,
        Err(err) => {
            metrics::counter!(telemetry::DELIVERIES_DROPPED, "reason" => telemetry::DROP_SOCKET)
                .increment(1);
            tracing::debug!(socket_id = %socket.id, event, error = %err, "emit failed");
            false
        }
    }
}

fn warn_socket(socket: &SocketRef, tracking_id: &str, message: String) {
    metrics::counter!(telemetry::SOCKET_ERRORS, "code" => "HISTORY_TRUNCATED").increment(1);
    to_socket(socket, "error", &Envelope::truncated(tracking_id, message));
}

/// Emits to every socket in `room` on this node, now. socketioxide's local
/// adapter broadcasts synchronously behind an async signature, so one poll
/// completes it; this keeps the broadcast under the topic's live lock.
fn to_room<T: Serialize + ?Sized>(io: &SocketIo, room: &str, event: &str, data: &T) {
    let broadcast = pin!(io.to(room.to_owned()).emit(event, data));
    let failed = match broadcast.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => 0,
        Poll::Ready(Err(socketioxide::BroadcastError::Socket(errors))) => errors.len(),
        Poll::Ready(Err(err)) => {
            tracing::error!(room, error = %err, "broadcast failed");
            1
        }
        Poll::Pending => {
            tracing::error!(room, "broadcast did not complete at once");
            1
        }
    };
    if failed > 0 {
        // A socket whose buffer is full (or that is closing) misses this
        // one; it sees the seq jump and recovers it with `since`.
        metrics::counter!(telemetry::DELIVERIES_DROPPED, "reason" => telemetry::DROP_SOCKET)
            .increment(failed as u64);
        tracing::debug!(room, failed, "delivery failed for some sockets");
    }
}
