//! The history and dedupe store: where an accepted payment is kept for
//! replay, backfill and idempotency, and from where it is published to the
//! nodes whose sockets watch its trackingId.
//!
//! One trait, [`HistoryStore`], with an in-memory implementation
//! ([`MemoryStore`]) for a single node and a Redis implementation
//! ([`RedisStore`]) for a cluster. Every implementation keeps the guarantees
//! written on the trait: callers rely on them, the tests in
//! `tests/store.rs` check them against both. Publications reach this node
//! through [`Publications`], which the [`Hub`](crate::hub::Hub) consumes.
//! Beside them, off the payment path, [`NodeDirectory`]: where nodes report
//! themselves for the admin page.

mod directory;
mod memory;
mod publications;
mod redis;

pub use directory::{MAX_INSPECTED, MemoryDirectory, NodeDirectory};
pub use memory::{MemoryStore, SweepStats};
pub use publications::{Publication, PublicationStream, Publications, Signal};
pub use redis::{RedisDirectory, RedisStore, RedisTarget, RedisTls, redact};

use async_trait::async_trait;

use crate::model::{EventId, NewPayment, Position, StoredEvent, Streams};

/// Which histories are kept (per trackingId, and per account stream when
/// streams are on), how long and how many events.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Events kept per trackingId; older ones are dropped first.
    pub max_events: usize,
    /// Events kept per stream.
    pub stream_max_events: usize,
    /// Whether payments are also kept in their account's stream.
    pub streams: Streams,
    /// Milliseconds an event is kept after it was accepted.
    pub history_ttl_ms: u64,
    /// Milliseconds an idempotency key is remembered; never shorter than
    /// `history_ttl_ms`.
    pub dedupe_ttl_ms: u64,
}

/// The outcome of appending one payment.
#[derive(Debug, Clone)]
pub enum Appended {
    /// A new event was stored (and published).
    Stored(StoredEvent),
    /// The payment's dedupe key was already taken: this is the original's id.
    Duplicate(EventId),
}

impl Appended {
    pub fn id(&self) -> EventId {
        match self {
            Appended::Stored(ev) => ev.id,
            Appended::Duplicate(id) => *id,
        }
    }
}

/// A page of history, oldest first.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// Retained events after `since`, in seq order, at most `limit`.
    pub events: Vec<StoredEvent>,
    /// More retained events follow this page.
    pub has_more: bool,
    /// At least one event after `since` is no longer retained, or `since`
    /// came from a history that is gone: `events` starts at the oldest
    /// retained event and the reader has a gap.
    pub truncated: bool,
    /// The last event stored in the trackingId's current history when the
    /// page was read (retained or not); [`Position::NONE`] without history.
    pub position: Position,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `since` is well formed but could not have been issued by this history
    /// (its seq is ahead of the history, or its epoch is in the future).
    #[error("since is not an event id this server could have issued")]
    InvalidSince,
    /// The backing storage cannot be reached; nothing was changed. Worth
    /// retrying: it recovers by itself.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The storage answered something this server cannot read (a reply of
    /// the wrong shape, a key of the wrong type, an envelope that is not
    /// JSON): a bug or a foreign writer, not an outage. Retrying gives the
    /// same answer, so callers do not retry it; it is logged and counted
    /// where it is made ([`StoreError::malformed`]).
    #[error("unreadable answer from the storage: {0}")]
    Malformed(String),
}

impl StoreError {
    /// A [`StoreError::Malformed`], logged with its context and counted
    /// (`tidings_store_malformed_total`) once, where it is found.
    pub fn malformed(what: impl Into<String>) -> Self {
        let what = what.into();
        tracing::error!(what, "unreadable answer from the storage");
        metrics::counter!(crate::telemetry::STORE_MALFORMED).increment(1);
        StoreError::Malformed(what)
    }
}

/// Per-trackingId payment history with idempotency, and with streams on
/// (contract section 8) per account stream.
///
/// A stream is a history like a trackingId's, named `<account>*`: it is
/// read, listened to and published exactly as one. `append` for a
/// trackingId of an account stores each new event in the trackingId's
/// history and in its stream's, with the stream's own epoch and seq, in
/// the same atomic step (both or neither; a duplicate in neither), and
/// publishes both; a trackingId's events enter its stream in their seq
/// order. Every guarantee below holds for a stream as for a trackingId.
///
/// A trackingId's history is a sequence of events numbered by `seq` 1, 2, 3,
/// ... within an *epoch*. Guarantees every implementation keeps:
///
/// - **Atomic, contiguous append.** One `append` call assigns its new events
///   the next seqs of the trackingId with no hole and no repeat, also when
///   several callers (or several nodes sharing the store) append for the same
///   trackingId at once. The call is all or nothing: on error nothing of it is
///   stored, published or remembered, so a retry is safe. The acceptance time
///   (the envelope `timestamp`) is taken inside the step that orders appends,
///   so it never decreases along a history.
/// - **Idempotency.** Within `dedupe_ttl_ms` of first acceptance, a payment
///   whose [`DedupeKey`](crate::model::DedupeKey) was seen for the same
///   trackingId is not stored again: `append` answers
///   [`Appended::Duplicate`] with the original's id. This includes a
///   repetition inside one call. (Unless the payment was evicted under a
///   memory bound, below: its key is then forgotten with it.)
/// - **Bounded retention.** At most `max_events` events per trackingId are
///   kept, none older than `history_ttl_ms`; memory for dedupe keys is bounded
///   by `dedupe_ttl_ms`. Dropping old events never renumbers the rest. A
///   store with a bound on its memory as a whole ([`MemoryStore`]) may drop
///   the oldest payments (event and key) earlier, across trackingIds: to
///   readers that is the same as an earlier expiry.
/// - **Epochs: never the same id twice.** When a trackingId's history is
///   created afresh (first payment, after it expired entirely, after a
///   restart of a memory store, after the storage was wiped, restarted or
///   failed over, or restored from an older snapshot) it gets a new epoch
///   greater than any earlier one for that trackingId, and its ids are never
///   reused. A `since` from an earlier epoch, or for a history that no longer
///   exists, reads as `truncated`: a reader is never left to believe it
///   missed nothing when it cannot be known. No `since` ever changes a
///   history (a forged one cannot start a new epoch for everyone else).
/// - **Atomic store-and-publish, in order.** Each new event is published
///   in the same atomic step that stores it. Every node that
///   [`listen`](HistoryStore::listen)s to the trackingId receives it on its
///   [`Publications`] queue, and receives a trackingId's events in `seq`
///   order, whichever node appended them. Duplicates are not published.
///   When the publication connection was lost (events may have been missed
///   by every listen) the store says so with [`Publications::resync`].
/// - **Listen before read.** Once `listen` has returned, every event stored
///   afterwards reaches this node (or a resync is signalled): a caller that
///   listens, then reads the history, misses nothing between the two.
/// - **Unavailable means unchanged.** Every method fails with
///   [`StoreError::Unavailable`] rather than wait indefinitely when the
///   backing storage is unreachable, and recovers by itself when it is back.
///   An answer it cannot read is [`StoreError::Malformed`], never
///   `Unavailable`: retrying it would loop forever.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Appends `payments`, all for `tracking_id`, in order, and publishes
    /// each new one. Returns one outcome per payment, in the same order.
    async fn append(
        &self,
        tracking_id: &str,
        payments: &[NewPayment],
    ) -> Result<Vec<Appended>, StoreError>;

    /// Reads up to `limit` retained events after `since` (from the oldest
    /// retained event without it), with the history's position. Fails with
    /// [`StoreError::InvalidSince`] for a `since` this history could not
    /// have issued.
    async fn read(
        &self,
        tracking_id: &str,
        since: Option<EventId>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError>;

    /// Starts delivering `tracking_id`'s publications to this node. Plain
    /// and idempotent (not counted): the caller ([`crate::hub::Hub`])
    /// decides when a trackingId is listened to.
    async fn listen(&self, tracking_id: &str) -> Result<(), StoreError>;

    /// Stops delivering `tracking_id`'s publications to this node.
    async fn unlisten(&self, tracking_id: &str);

    /// Succeeds when the store can serve reads, writes and publications.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The store's own upkeep, run for as long as the store serves (the
    /// memory store sweeps expired history; Redis expires keys itself).
    /// Never returns; the default has nothing to do.
    async fn upkeep(&self) {
        std::future::pending::<()>().await
    }

    /// The node stops: gives back what it holds in shared storage (the
    /// Redis store's key-layout claim). The default holds nothing.
    async fn release(&self) {}

    /// Checks that this node still listens to every one of `tracking_ids`
    /// (those the hub listens to) and returns those whose listen may have
    /// been lost: the hub listens to them again and catches them up. A
    /// safety net beside [`Publications::resync`], for a publication
    /// connection that came back with fewer subscriptions than it had. The
    /// default trusts the store.
    async fn audit(&self, tracking_ids: &[String]) -> Result<Vec<String>, StoreError> {
        let _ = tracking_ids;
        Ok(Vec::new())
    }
}

/// Where reading after `since` starts, given what a history holds, shared
/// by every implementation so that they answer alike.
///
/// `history` is `(epoch, last_seq, first_retained_seq)` of the trackingId's
/// history, or `None` when it has none. Returns the first seq to read and
/// whether something after `since` is no longer retained.
pub fn resolve_since(
    since: Option<EventId>,
    history: Option<(u64, u64, u64)>,
    now_ms: u64,
) -> Result<(u64, bool), StoreError> {
    let first = history.map_or(1, |(_, _, first)| first);
    let Some(since) = since else {
        return Ok((first, false));
    };
    match history {
        Some((epoch, last, first)) if since.epoch == epoch => {
            if since.seq > last {
                return Err(StoreError::InvalidSince);
            }
            let missing = since.seq + 1 < first && last > since.seq;
            Ok((first.max(since.seq + 1), missing))
        }
        // An epoch later than both the clock and the current history was
        // not issued by this server.
        Some((epoch, _, _)) if since.epoch > now_ms.max(epoch) => Err(StoreError::InvalidSince),
        None if since.epoch > now_ms => Err(StoreError::InvalidSince),
        // An id from another epoch, or for a history that is gone: the
        // history it came from is lost.
        _ => Ok((first, true)),
    }
}
