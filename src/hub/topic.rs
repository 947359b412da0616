//! One trackingId on this node: [`Topic`], its subscribers here and the
//! node's *cursor* (the last event they were handed), and [`Live`], the
//! rules that move the cursor. Everything in `Live` runs under the topic's
//! live lock and never awaits: delivery, holding publications while the
//! topic is out of step with the store, buffering for subscribers whose
//! replay is being read, applying a catch-up read. What needs the store
//! (listen, read) is the hub's ([`super::handover`], [`super::catch_up`]).
//!
//! A `Live` answers `true` where a catch-up read must start; the hub, which
//! owns the tasks, starts it.

use std::cell::OnceCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::Subscriber;
use super::order::{Step, resume, step};
use crate::model::{
    Envelope, EventId, PaymentStatus, Position, StatusFilter, StoredEvent, now_ms, status_of,
    with_prev_seq,
};
use crate::store::HistoryPage;
use crate::telemetry;

/// Live publications held per trackingId while its catch-up read is in
/// flight; beyond it they are dropped and the next read fetches them.
const HELD_LIMIT: usize = 4096;

/// Live payments buffered per subscriber while its replay is read; beyond
/// it the hub reads again from where the subscriber stands.
pub(super) const PENDING_LIMIT: usize = 1024;

/// One trackingId on this node.
pub(super) struct Topic<S: Subscriber> {
    pub tracking_id: String,
    /// Serialises the subscribe and unsubscribe decisions of this
    /// trackingId (listen, unlisten); held across the store's listen and
    /// first read. Delivery never takes it.
    pub control: tokio::sync::Mutex<()>,
    /// Delivery state; held briefly, never across an await.
    live: Mutex<Live<S>>,
    /// Set once the topic is out of the hub's registry: whoever still holds
    /// it lets go (a new subscriber makes a new topic).
    retired: AtomicBool,
    /// The store delivers this trackingId's publications here. Changed
    /// only under `control`; read by anyone (the audit).
    listening: AtomicBool,
}

/// What a subscriber whose replay is being read missed from the room.
pub(super) enum Missed {
    /// An event handed to the room.
    Event(StoredEvent),
    /// The room's cursor moved to this position without an event (a
    /// catch-up found events gone, or a history that started afresh with
    /// none yet): the room was warned.
    Jump(Position),
}

/// What a member of the room has been handed: everything after a position
/// (or everything retained). It lets a `subscribe` with `since` repeated on
/// a held trackingId be answered without reading or sending again what the
/// subscriber already has. It may claim less than was sent, never more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Coverage {
    /// Every event after this position (in its epoch).
    After(Position),
    /// Everything the history retained when its replay was read, and all
    /// since: an earlier `since` cannot get more.
    All,
}

/// What a repeated `subscribe` with `since` needs, given the coverage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    /// Nothing: everything after `since` has been handed over already.
    Nothing,
    /// The events after `since` up to this position, which the member was
    /// not handed; what follows it, it has.
    Until(Position),
    /// A replay as for a new subscriber (another epoch).
    Replay,
}

impl Coverage {
    /// What a member standing at `cursor` needs for `since`. A `since`
    /// beyond the cursor (or of another epoch) is the store's to judge
    /// (`INVALID_SINCE`, or a history this node has not caught up with).
    pub fn need(self, since: EventId, cursor: Option<Position>) -> Need {
        let within = cursor.is_some_and(|c| c.epoch == since.epoch && since.seq <= c.seq);
        if !within {
            return Need::Replay;
        }
        match self {
            Coverage::All => Need::Nothing,
            Coverage::After(from) if from.epoch == since.epoch && since.seq >= from.seq => {
                Need::Nothing
            }
            Coverage::After(from) if from.epoch == since.epoch => Need::Until(from),
            Coverage::After(_) => Need::Replay,
        }
    }
}

/// A filtered subscription (contract section 8): the statuses it takes,
/// and the last payment it was sent, or where its chain starts (the next
/// payment's `prevSeq` is its seq). Boxed where it is held, so that
/// unfiltered members pay one pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Filtered {
    pub statuses: StatusFilter,
    pub last: Position,
}

impl Filtered {
    pub fn new(statuses: Option<StatusFilter>, last: Position) -> Option<Box<Self>> {
        statuses.map(|statuses| Box::new(Filtered { statuses, last }))
    }
}

/// The statuses of a subscription's filter, if it has one.
pub(super) fn statuses(filter: &Option<Box<Filtered>>) -> Option<StatusFilter> {
    filter.as_ref().map(|f| f.statuses)
}

/// A subscriber in the room.
pub(super) struct Member<S> {
    pub sub: S,
    /// Narrowed to what follows a payment it could not take (its buffer
    /// was full): what it lacks is never taken as handed over.
    pub covers: Coverage,
    /// `None`: every payment, as stored (no `prevSeq`).
    pub filter: Option<Box<Filtered>>,
}

/// A subscriber whose replay is being read: out of the room, live payments
/// buffered (bounded).
#[derive(Default)]
pub(super) struct Pending {
    pub buffered: Vec<Missed>,
    pub overflow: bool,
    /// For a subscriber that was in the room (a resubscribe): the cursor
    /// when it left, where it stands if its read fails.
    pub left_at: Option<Position>,
    /// And its filter then, which it keeps if its read fails.
    pub left_filter: Option<Box<Filtered>>,
}

/// The catch-up task's bookkeeping.
#[derive(Default)]
pub(super) struct CatchUp {
    /// A catch-up task runs for this topic.
    pub running: bool,
    /// Rounds asked for; a round that started before the last request is
    /// followed by another.
    pub wanted: u64,
    /// The next round listens again first (after a resync).
    pub relisten: bool,
}

/// Publications waiting for the cursor (first read, or catch-up).
#[derive(Default)]
struct Held {
    events: VecDeque<StoredEvent>,
    /// Some were dropped beyond [`HELD_LIMIT`]: a read must fetch them.
    overflow: bool,
}

/// A topic's delivery state.
pub(super) struct Live<S: Subscriber> {
    /// The last event handed to the room; `None` until the first
    /// subscriber's read says where the history stands.
    pub cursor: Option<Position>,
    /// The room: subscribers handed every event as it comes. The one
    /// membership of this node.
    pub members: HashMap<S::Id, Member<S>>,
    /// Subscribers whose replay is being read.
    pub pending: HashMap<S::Id, Pending>,
    held: Held,
    pub catch_up: CatchUp,
}

impl<S: Subscriber> Default for Live<S> {
    fn default() -> Self {
        Live {
            cursor: None,
            members: HashMap::new(),
            pending: HashMap::new(),
            held: Held::default(),
            catch_up: CatchUp::default(),
        }
    }
}

impl Pending {
    pub fn buffer(&mut self, missed: Missed) {
        if self.buffered.len() < PENDING_LIMIT {
            self.buffered.push(missed);
        } else {
            self.overflow = true;
        }
    }
}

impl<S: Subscriber> Topic<S> {
    pub fn new(tracking_id: &str) -> Self {
        Topic {
            tracking_id: tracking_id.to_owned(),
            control: tokio::sync::Mutex::default(),
            live: Mutex::default(),
            retired: AtomicBool::new(false),
            listening: AtomicBool::new(false),
        }
    }

    pub fn live(&self) -> MutexGuard<'_, Live<S>> {
        // Every field is updated in one step; a panic elsewhere cannot leave
        // it half-written, so a poisoned lock is still usable.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    /// Called with `control` held.
    pub fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::SeqCst);
    }
}

/// Hands `event` to `sub` (through its filter, if any), counting a
/// subscriber that cannot take it. A payment the filter skips counts as
/// handed over.
pub(super) fn send_payment<S: Subscriber>(
    sub: &S,
    filter: Option<&mut Filtered>,
    event: &StoredEvent,
) -> bool {
    send_with(sub, filter, event, &OnceCell::new())
}

/// [`send_payment`], with the event's status read at most once for all
/// the filtered subscribers it is offered to.
fn send_with<S: Subscriber>(
    sub: &S,
    filter: Option<&mut Filtered>,
    event: &StoredEvent,
    status: &OnceCell<Option<PaymentStatus>>,
) -> bool {
    let sent = match filter {
        None => sub.send_payment(&event.envelope),
        Some(filter) => {
            // At or before where its chain stands (a payment the room
            // delivers while behind a replay, or one in flight): it has it,
            // and a prevSeq going back would read as a hole.
            let old = event.id.epoch == filter.last.epoch && event.id.seq <= filter.last.seq;
            let status = *status.get_or_init(|| status_of(&event.envelope));
            if old || !status.is_some_and(|s| filter.statuses.matches(s)) {
                return true;
            }
            let prev = std::mem::replace(&mut filter.last, event.id.into()).seq;
            // Sent or not, it is this subscription's last: if it is lost,
            // the next one's prevSeq shows the client the hole.
            sub.send_payment(&with_prev_seq(&event.envelope, prev))
        }
    };
    if !sent {
        metrics::counter!(telemetry::DELIVERIES_DROPPED, "reason" => telemetry::DROP_SOCKET)
            .increment(1);
    }
    sent
}

/// Sends `sub` a `HISTORY_TRUNCATED` warning about `tracking_id`.
pub(super) fn warn<S: Subscriber>(sub: &S, tracking_id: &str, message: String) {
    metrics::counter!(telemetry::SOCKET_ERRORS, "code" => "HISTORY_TRUNCATED").increment(1);
    if !sub.send_error(&Envelope::truncated(tracking_id, message)) {
        metrics::counter!(telemetry::DELIVERIES_DROPPED, "reason" => telemetry::DROP_SOCKET)
            .increment(1);
    }
}

impl<S: Subscriber> Live<S> {
    /// No subscriber left, in the room or pending.
    pub fn idle(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }

    /// `sub` joins the room: from now on it is handed every event (that
    /// its filter takes); it has been handed what `covers` says.
    pub fn join(&mut self, sub: &S, covers: Coverage, filter: Option<Box<Filtered>>) {
        let member = Member {
            sub: sub.clone(),
            covers,
            filter,
        };
        self.members.insert(sub.id(), member);
    }

    /// What `id`, if it is in the room, was handed already, and the
    /// statuses it takes.
    pub fn coverage(&self, id: S::Id) -> Option<(Coverage, Option<StatusFilter>)> {
        self.members
            .get(&id)
            .map(|m| (m.covers, statuses(&m.filter)))
    }

    /// `id` leaves the room and stops waiting for its replay, if it did.
    pub fn remove(&mut self, id: S::Id) {
        self.members.remove(&id);
        self.pending.remove(&id);
    }

    /// `sub` resubscribes with `since`: it leaves the room and waits for
    /// its replay. Whether it was in the room.
    pub fn begin_replay(&mut self, id: S::Id) -> bool {
        let member = self.members.remove(&id);
        let was_member = member.is_some();
        let left_at = self.cursor.filter(|_| was_member);
        self.pending.insert(
            id,
            Pending {
                left_at,
                left_filter: member.and_then(|m| m.filter),
                ..Pending::default()
            },
        );
        was_member
    }

    /// Asks for a catch-up read; true when its task must be started (none
    /// runs, and the cursor is known).
    pub fn want_catch_up(&mut self, reason: &'static str, relisten: bool) -> bool {
        metrics::counter!(telemetry::CATCH_UPS, "reason" => reason).increment(1);
        self.catch_up.wanted += 1;
        self.catch_up.relisten |= relisten;
        if self.cursor.is_some() && !self.catch_up.running {
            self.catch_up.running = true;
            return true;
        }
        false
    }

    /// The first subscriber's read says where the history stands: from
    /// there, the topic delivers. True when a catch-up must start (a drop
    /// or a resync came while the read was in flight, or what was held
    /// does not follow).
    pub fn start(&mut self, tracking_id: &str, position: Position) -> bool {
        self.cursor = Some(position);
        if self.catch_up.wanted > 0 {
            self.catch_up.running = true;
            return true;
        }
        if !self.drain_held(tracking_id) {
            return self.want_catch_up("gap", false);
        }
        false
    }

    /// A live publication: delivered now if it is the next one, held while
    /// the topic is not in step with the store. True when a catch-up must
    /// start.
    pub fn offer(&mut self, tracking_id: &str, event: StoredEvent) -> bool {
        let cursor = match self.cursor {
            Some(cursor) if !self.catch_up.running => cursor,
            _ => {
                self.hold(event);
                return false;
            }
        };
        if let Err(event) = self.follow(tracking_id, cursor, event) {
            self.hold(event);
            return self.want_catch_up("gap", false);
        }
        false
    }

    fn hold(&mut self, event: StoredEvent) {
        if self.held.events.len() < HELD_LIMIT {
            self.held.events.push_back(event);
        } else {
            self.held.overflow = true;
        }
    }

    /// Drops the oldest held publication (one the store never shows).
    pub fn drop_held_front(&mut self) -> Option<StoredEvent> {
        self.held.events.pop_front()
    }

    /// Delivers `event` if it follows `cursor` (announcing a history that
    /// started afresh), skips it if it is old; hands it back on a gap.
    fn follow(
        &mut self,
        tracking_id: &str,
        cursor: Position,
        event: StoredEvent,
    ) -> Result<(), StoredEvent> {
        match step(cursor, event.id) {
            Step::Old => {}
            Step::Next => self.deliver(event, telemetry::PATH_LIVE),
            Step::Restart => {
                let base = Position {
                    epoch: event.id.epoch,
                    seq: 0,
                };
                self.announce_gap(tracking_id, "its history started afresh", base);
                self.deliver(event, telemetry::PATH_LIVE);
            }
            Step::Gap => return Err(event),
        }
        Ok(())
    }

    /// Hands the next event to the room and to every pending subscriber's
    /// buffer, and moves the cursor. `path` labels its delivery lag.
    pub fn deliver(&mut self, event: StoredEvent, path: &'static str) {
        metrics::counter!(telemetry::BROADCASTS).increment(1);
        if !self.members.is_empty() {
            let status = OnceCell::new();
            for member in self.members.values_mut() {
                if !send_with(&member.sub, member.filter.as_deref_mut(), &event, &status) {
                    // It lacks this one: a resubscribe with since must get it.
                    member.covers = Coverage::After(event.id.into());
                }
            }
            // Once per payment and node, after the last subscriber here was
            // handed it; a clock behind the accepting node's reads as 0.
            let lag_ms = now_ms().saturating_sub(event.accepted_ms);
            telemetry::delivery_lag(path).record(lag_ms as f64 / 1000.0);
        }
        self.cursor = Some(event.id.into());
        for pending in self.pending.values_mut() {
            pending.buffer(Missed::Event(event.clone()));
        }
    }

    /// Tells the room that some of its events cannot be delivered; the
    /// next ones follow `base` (filtered members' chains restart there).
    pub fn announce_gap(&mut self, tracking_id: &str, why: &str, base: Position) {
        metrics::counter!(telemetry::GAPS_ANNOUNCED).increment(1);
        tracing::warn!(
            tracking_id,
            members = self.members.len(),
            pending = self.pending.len(),
            "announcing a gap: {why}"
        );
        for member in self.members.values_mut() {
            if let Some(filter) = member.filter.as_deref_mut() {
                filter.last = base;
            }
            warn(
                &member.sub,
                tracking_id,
                format!(
                    "Payments of trackingId {tracking_id} may be missing and cannot be recovered: {why}"
                ),
            );
        }
    }

    /// Delivers held publications that follow the cursor; false when one
    /// does not (or some were dropped): a catch-up read is needed.
    pub fn drain_held(&mut self, tracking_id: &str) -> bool {
        while let Some(event) = self.held.events.pop_front() {
            let Some(cursor) = self.cursor else {
                self.held.events.push_front(event);
                return false;
            };
            if let Err(event) = self.follow(tracking_id, cursor, event) {
                self.held.events.push_front(event);
                return false;
            }
        }
        !std::mem::take(&mut self.held.overflow)
    }

    /// Applies a catch-up read made from `from`: announces what cannot be
    /// recovered and delivers the rest. False when the history has more.
    pub fn apply(&mut self, tracking_id: &str, from: Position, page: HistoryPage) -> bool {
        let (gap, base) = resume(from, page.position, page.events.first().map(|e| e.id));
        if gap {
            self.announce_gap(tracking_id, "they are no longer retained", base);
            // Subscribers out of the room now are told when they come back.
            for pending in self.pending.values_mut() {
                pending.buffer(Missed::Jump(base));
            }
        }
        self.cursor = Some(base);
        let mut delivered = 0;
        for event in page.events {
            if self.cursor.is_some_and(|c| step(c, event.id) == Step::Next) {
                self.deliver(event, telemetry::PATH_CATCH_UP);
                delivered += 1;
            }
        }
        metrics::counter!(telemetry::CATCH_UP_EVENTS).increment(delivered);
        !page.has_more
    }
}
