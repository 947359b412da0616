//! Fan-out: where a payment leaves. Stores a trackingId's payments and then
//! broadcasts them to its room, one trackingId at a time, so that every
//! subscriber sees that trackingId's payments in `seq` order.
//!
//! The same per-trackingId turn is taken by a socket subscribing (join the
//! room, read the history, emit the replay): a payment is then either in the
//! replay or delivered live after it, never both out of order and never
//! neither.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;

use socketioxide::SocketIo;
use tokio::sync::{Mutex, MutexGuard};

use crate::model::{NewPayment, PAYMENT_EVENT, StoredEvent, room_of};
use crate::store::{Appended, HistoryStore, StoreError};
use crate::telemetry;

/// Striped locks: two trackingIds share a turn only if they hash alike, and
/// a turn is held for one append and its broadcast, so sharing is cheap.
const TURNS: usize = 1024;

/// Stores payments and publishes them, in order, per trackingId.
pub struct Fanout {
    io: SocketIo,
    store: Arc<dyn HistoryStore>,
    turns: Box<[Mutex<()>]>,
    hasher: RandomState,
}

/// Held while a trackingId's history and room must not change under the
/// holder.
pub type Turn<'a> = MutexGuard<'a, ()>;

impl Fanout {
    pub fn new(io: SocketIo, store: Arc<dyn HistoryStore>) -> Self {
        Fanout {
            io,
            store,
            turns: (0..TURNS).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }

    pub fn store(&self) -> &Arc<dyn HistoryStore> {
        &self.store
    }

    /// Waits for this trackingId's turn.
    pub async fn turn(&self, tracking_id: &str) -> Turn<'_> {
        let idx = (self.hasher.hash_one(tracking_id) as usize) % TURNS;
        self.turns[idx].lock().await
    }

    /// Stores `payments` (all for `tracking_id`), then broadcasts each new
    /// one. Duplicates are not broadcast. Returns the store's outcomes.
    pub async fn store_and_publish(
        &self,
        tracking_id: &str,
        payments: &[NewPayment],
        accepted_ms: u64,
    ) -> Result<Vec<Appended>, StoreError> {
        let _turn = self.turn(tracking_id).await;
        let outcomes = self
            .store
            .append(tracking_id, payments, accepted_ms)
            .await?;
        let room = room_of(tracking_id);
        for outcome in &outcomes {
            match outcome {
                Appended::Stored(event) => {
                    metrics::counter!(telemetry::PAYMENTS_STORED).increment(1);
                    self.publish(&room, event).await;
                }
                Appended::Duplicate(_) => {
                    metrics::counter!(telemetry::PAYMENTS_DUPLICATE).increment(1);
                }
            }
        }
        Ok(outcomes)
    }

    async fn publish(&self, room: &str, event: &StoredEvent) {
        metrics::counter!(telemetry::BROADCASTS).increment(1);
        let result = self
            .io
            .to(room.to_owned())
            .emit(PAYMENT_EVENT, &event.envelope)
            .await;
        if let Err(err) = result {
            // A socket whose buffer is full (or that is closing) misses this
            // one; it sees the seq jump and recovers it with `since`.
            metrics::counter!(telemetry::DELIVERIES_DROPPED).increment(1);
            tracing::warn!(room, event_id = %event.id, error = %err, "payment not delivered to every socket");
        }
    }
}
