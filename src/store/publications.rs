//! [`Publications`]: the queue between a store and this node's
//! [`Hub`](crate::hub::Hub). The store pushes each publication it receives
//! (in seq order per trackingId); the hub takes them off one at a time.
//!
//! The queue is bounded (`--delivery-buffer`): when it is full a
//! publication is dropped, counted and logged, and its trackingId is
//! remembered so that the hub catches that trackingId's sockets up from the
//! history. When the store's publication connection is lost it signals a
//! resync: every trackingId may have missed events. Neither signal can be
//! lost to a full queue: they travel beside it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc, oneshot};

use crate::model::StoredEvent;
use crate::telemetry;

/// A published event, on its way to this node's subscribed sockets: the
/// event as the store stored it (its id, acceptance time and envelope), so
/// that nothing has to be read back out of the envelope.
#[derive(Debug, Clone)]
pub struct Publication {
    pub tracking_id: String,
    pub event: StoredEvent,
}

/// What the hub is told, in order.
#[derive(Debug)]
pub enum Signal {
    Publication(Publication),
    /// Publications of these trackingIds were dropped: the queue was full.
    Dropped(Vec<String>),
    /// The publication connection was lost and re-established: any
    /// trackingId may have missed events.
    Resync,
    /// Answered once everything queued before it has been handled.
    Flush(oneshot::Sender<()>),
}

enum Queued {
    Publication(Publication),
    Flush(oneshot::Sender<()>),
}

/// What travels beside the bounded queue.
#[derive(Default)]
struct Side {
    dropped: Mutex<HashSet<String>>,
    resync: AtomicBool,
    wake: Notify,
}

/// The store's end: push publications and signals.
#[derive(Clone)]
pub struct Publications {
    tx: mpsc::Sender<Queued>,
    side: Arc<Side>,
}

/// The hub's end.
pub struct PublicationStream {
    rx: mpsc::Receiver<Queued>,
    side: Arc<Side>,
}

impl Publications {
    /// A queue holding up to `capacity` publications, and its receiving end.
    pub fn channel(capacity: usize) -> (Publications, PublicationStream) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let side = Arc::new(Side::default());
        (
            Publications {
                tx,
                side: side.clone(),
            },
            PublicationStream { rx, side },
        )
    }

    /// Queues a publication without waiting; when the queue is full it is
    /// dropped and its trackingId marked for catch-up. Must not block: the
    /// store calls it from its connection's reader (or under a lock).
    pub fn publish(&self, publication: Publication) {
        match self.tx.try_send(Queued::Publication(publication)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Queued::Publication(p))) => {
                metrics::counter!(telemetry::DELIVERIES_DROPPED, "reason" => telemetry::DROP_QUEUE_FULL)
                    .increment(1);
                tracing::warn!(
                    tracking_id = %p.tracking_id,
                    "delivery buffer full: publication dropped; this node catches its sockets up from the history"
                );
                self.lost(p.tracking_id);
            }
            // The hub is gone (shutting down) or a flush marker: nothing to do.
            Err(_) => {}
        }
    }

    /// A publication of `tracking_id` reached this node but could not be
    /// read (or was dropped): the hub catches that trackingId up from the
    /// history. Must not block, as [`Publications::publish`].
    pub fn lost(&self, tracking_id: String) {
        self.side
            .dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tracking_id);
        self.side.wake.notify_one();
    }

    /// The publication connection was lost: every trackingId this node
    /// listens to may have missed events.
    pub fn resync(&self) {
        self.side.resync.store(true, Ordering::SeqCst);
        self.side.wake.notify_one();
    }

    /// Waits until everything queued so far has been handled by the hub (or
    /// the hub is gone).
    pub async fn flush(&self) {
        let (done, handled) = oneshot::channel();
        if self.tx.send(Queued::Flush(done)).await.is_ok() {
            let _ = handled.await;
        }
    }
}

impl PublicationStream {
    /// The next signal; `None` once every [`Publications`] is gone.
    /// Resyncs and drops come before queued publications: those are then
    /// held by the hub until its catch-up read has been applied.
    pub async fn next(&mut self) -> Option<Signal> {
        loop {
            if self.side.resync.swap(false, Ordering::SeqCst) {
                return Some(Signal::Resync);
            }
            let dropped: Vec<String> = self
                .side
                .dropped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
                .collect();
            if !dropped.is_empty() {
                return Some(Signal::Dropped(dropped));
            }
            tokio::select! {
                biased;
                () = self.side.wake.notified() => continue,
                queued = self.rx.recv() => {
                    return queued.map(|q| match q {
                        Queued::Publication(p) => Signal::Publication(p),
                        Queued::Flush(done) => Signal::Flush(done),
                    });
                }
            }
        }
    }
}
