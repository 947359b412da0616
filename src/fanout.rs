//! Fan-out: where a payment leaves this node. One task takes the store's
//! publications off the [`Deliveries`](crate::store::Deliveries) queue, in
//! order, and broadcasts each to its trackingId's room on this node.
//!
//! A socket subscribing takes the same per-trackingId *turn* while it joins
//! the room, reads the history and emits the replay: a payment is then
//! either in the replay or delivered live after it (or both: clients dedupe
//! by id), never delivered before the replay and never lost between the
//! two.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;

use socketioxide::SocketIo;
use tokio::sync::{Mutex, MutexGuard, mpsc};

use crate::model::{PAYMENT_EVENT, room_of};
use crate::store::{Delivery, Queued};
use crate::telemetry;

/// Striped locks: two trackingIds share a turn only if they hash alike, and
/// a turn is held only for one delivery or one subscribe, so sharing is
/// cheap.
const TURNS: usize = 1024;

/// Delivers published payments to this node's sockets.
pub struct Fanout {
    io: SocketIo,
    turns: Box<[Mutex<()>]>,
    hasher: RandomState,
}

/// Held while a trackingId's room must not receive deliveries.
pub type Turn<'a> = MutexGuard<'a, ()>;

impl Fanout {
    pub fn new(io: SocketIo) -> Self {
        Fanout {
            io,
            turns: (0..TURNS).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Waits for this trackingId's turn.
    pub async fn turn(&self, tracking_id: &str) -> Turn<'_> {
        let idx = (self.hasher.hash_one(tracking_id) as usize) % TURNS;
        self.turns[idx].lock().await
    }

    /// Delivers everything published until the queue closes.
    pub async fn run(self: Arc<Self>, mut published: mpsc::Receiver<Queued>) {
        while let Some(queued) = published.recv().await {
            match queued {
                Queued::Delivery(delivery) => self.deliver(delivery).await,
                Queued::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    async fn deliver(&self, delivery: Delivery) {
        let _turn = self.turn(&delivery.tracking_id).await;
        metrics::counter!(telemetry::BROADCASTS).increment(1);
        let room = room_of(&delivery.tracking_id);
        let result = self
            .io
            .to(room)
            .emit(PAYMENT_EVENT, &delivery.envelope)
            .await;
        if let Err(err) = result {
            // A socket whose buffer is full (or that is closing) misses this
            // one; it sees the seq jump and recovers it with `since`.
            metrics::counter!(telemetry::DELIVERIES_DROPPED).increment(1);
            tracing::warn!(tracking_id = %delivery.tracking_id, error = %err, "payment not delivered to every socket");
        }
    }
}
