//! The history and dedupe store: where an accepted payment is kept for
//! replay, backfill and idempotency.
//!
//! One trait, [`HistoryStore`], with an in-memory implementation
//! ([`MemoryStore`]) for a single node. A Redis implementation for clusters
//! goes behind the same trait. Every implementation keeps the guarantees
//! written on the trait: callers rely on them, tests check them.

mod memory;

pub use memory::MemoryStore;

use async_trait::async_trait;

use crate::model::{EventId, NewPayment, StoredEvent};

/// How long and how much history is kept per trackingId.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Events kept per trackingId; older ones are dropped first.
    pub max_events: usize,
    /// Milliseconds an event is kept after it was accepted.
    pub history_ttl_ms: u64,
    /// Milliseconds an idempotency key is remembered; never shorter than
    /// `history_ttl_ms`.
    pub dedupe_ttl_ms: u64,
}

/// The outcome of appending one payment.
#[derive(Debug, Clone)]
pub enum Appended {
    /// A new event was stored: it must be published.
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
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `since` is well formed but could not have been issued by this history
    /// (its seq is ahead of the history, or its epoch is in the future).
    #[error("since is not an event id this server could have issued")]
    InvalidSince,
    /// The backing storage cannot be reached; nothing was changed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// Per-trackingId payment history with idempotency.
///
/// A trackingId's history is a sequence of events numbered by `seq` 1, 2, 3,
/// ... within an *epoch*. Guarantees every implementation keeps:
///
/// - **Atomic, contiguous append.** One `append` call assigns its new events
///   the next seqs of the trackingId with no hole and no repeat, also when
///   several callers (or several nodes sharing the store) append for the same
///   trackingId at once. The call is all or nothing: on error nothing of it is
///   stored or remembered, so a retry is safe.
/// - **Idempotency.** Within `dedupe_ttl_ms` of first acceptance, a payment
///   whose [`DedupeKey`](crate::model::DedupeKey) was seen for the same
///   trackingId is not stored again: `append` answers
///   [`Appended::Duplicate`] with the original's id. This includes a
///   repetition inside one call.
/// - **Bounded retention.** At most `max_events` events per trackingId are
///   kept, none older than `history_ttl_ms`; memory for dedupe keys is bounded
///   by `dedupe_ttl_ms`. Dropping old events never renumbers the rest.
/// - **Epochs.** When a trackingId's history is created afresh (first
///   payment, after it expired entirely, after a restart of a memory store,
///   or after the storage was wiped) it gets a new epoch greater than any
///   earlier one for that trackingId, and its ids are never reused. A `since`
///   from an earlier epoch, or for a history that no longer exists, reads as
///   `truncated`: a reader is never left to believe it missed nothing when
///   it cannot be known.
/// - **Stored before published.** Callers publish an event only after
///   `append` returned it, so a reader that subscribes first and then reads
///   the history misses nothing.
///
/// What a store does not do: publish. Ordering of publication per
/// trackingId is the caller's job (see [`crate::fanout`]).
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Appends `payments`, all for `tracking_id`, in order. Returns one
    /// outcome per payment, in the same order.
    async fn append(
        &self,
        tracking_id: &str,
        payments: &[NewPayment],
        accepted_ms: u64,
    ) -> Result<Vec<Appended>, StoreError>;

    /// Reads up to `limit` retained events after `since` (from the oldest
    /// retained event without it). Fails with [`StoreError::InvalidSince`]
    /// for a `since` this history could not have issued.
    async fn read(
        &self,
        tracking_id: &str,
        since: Option<EventId>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError>;

    /// Succeeds when the store can serve reads and writes.
    async fn ping(&self) -> Result<(), StoreError>;
}
