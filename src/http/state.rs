//! [`App`]: what the HTTP handlers share, handed to them as axum state.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;

use tokio::sync::Notify;

use crate::admin::Admin;
use crate::auth::slowdown::Slowdown;
use crate::auth::{Access, BearerKeys};
use crate::model::Streams;
use crate::store::{HistoryStore, Publications};
use crate::telemetry::Exporter;

/// Who may call what (contract sections 3 and 5).
pub struct Credentials {
    /// `--ingest-token`: who may ingest.
    pub ingest_tokens: BearerKeys,
    /// `--api-key`: who may mint socket tokens and open the admin page.
    pub api_keys: BearerKeys,
    /// Who may watch a trackingId over backfill.
    pub access: Access,
    /// Addresses that presented too many wrong credentials (shared with
    /// the sockets).
    pub slowdown: Arc<Slowdown>,
}

/// Bounds on what one request may ask.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of an ingest or mint body (`--max-body`).
    pub max_body: usize,
    /// Payments per ingest request (`--max-batch`).
    pub max_batch: usize,
    /// Entries a minted token may name (`--max-subscriptions`).
    pub max_subscriptions: usize,
    /// Which names ending in `*` are streams (`--stream-separator`).
    pub streams: Streams,
}

/// What the HTTP handlers share.
pub struct App {
    pub store: Arc<dyn HistoryStore>,
    pub credentials: Credentials,
    pub limits: Limits,
    pub metrics: Exporter,
    /// On a single node, ingest waits until the hub has handled what it
    /// published before answering.
    pub local_publications: Option<Publications>,
    /// The admin page's data (served only with `--api-key`).
    pub admin: Option<Arc<Admin>>,
    /// `GET /openapi.json`, made at the first request (it depends on the
    /// mode and bounds, which are fixed by then).
    pub(super) openapi_json: OnceLock<Bytes>,
    shutting_down: AtomicBool,
    ingests: InFlight,
}

pub type AppState = Arc<App>;

impl App {
    pub fn new(
        store: Arc<dyn HistoryStore>,
        credentials: Credentials,
        limits: Limits,
        metrics: Exporter,
        local_publications: Option<Publications>,
        admin: Option<Arc<Admin>>,
    ) -> Self {
        App {
            store,
            credentials,
            limits,
            metrics,
            local_publications,
            admin,
            openapi_json: OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            ingests: InFlight::default(),
        }
    }

    /// From now on ingest answers `503` and `/readyz` is unready.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Marks an ingest request in flight until the guard is dropped.
    pub fn ingest_started(&self) -> InFlightGuard<'_> {
        self.ingests.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(&self.ingests)
    }

    /// Resolves once no ingest request is in flight.
    pub async fn ingests_finished(&self) {
        loop {
            let idle = self.ingests.idle.notified();
            let mut idle = std::pin::pin!(idle);
            idle.as_mut().enable();
            if self.ingests.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Requests in flight, and a wake-up when the last one ends.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// One request in flight.
pub struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
