//! [`App`]: what the HTTP handlers share, handed to them as axum state.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;

use metrics_exporter_prometheus::PrometheusHandle;
use socketioxide::SocketIo;
use tokio::sync::Notify;

use super::ingest::IngestTokens;
use crate::admin::Admin;
use crate::auth::{Access, BearerKeys};
use crate::store::{HistoryStore, Publications};

/// What the HTTP handlers share.
pub struct App {
    pub store: Arc<dyn HistoryStore>,
    pub ingest_tokens: IngestTokens,
    /// Who may watch a trackingId over backfill (contract section 5).
    pub access: Access,
    /// Keys that may mint socket tokens.
    pub api_keys: BearerKeys,
    /// Entries a minted token may name (`--max-subscriptions`).
    pub max_subscriptions: usize,
    pub max_body: usize,
    pub max_batch: usize,
    pub metrics: PrometheusHandle,
    /// On a single node, ingest waits until the hub has handled what it
    /// published before answering.
    pub local_publications: Option<Publications>,
    /// This node's sockets, counted by transport at each scrape.
    pub io: Option<SocketIo>,
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
        ingest_tokens: IngestTokens,
        max_body: usize,
        max_batch: usize,
        metrics: PrometheusHandle,
        local_publications: Option<Publications>,
    ) -> Self {
        App {
            store,
            ingest_tokens,
            access: Access::Open,
            api_keys: BearerKeys::default(),
            max_subscriptions: 0,
            max_body,
            max_batch,
            metrics,
            local_publications,
            io: None,
            admin: None,
            openapi_json: OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            ingests: InFlight::default(),
        }
    }

    /// Token mode: backfill needs a token, and `api_keys` may mint tokens
    /// naming up to `max_subscriptions` entries.
    pub fn with_access(
        mut self,
        access: Access,
        api_keys: BearerKeys,
        max_subscriptions: usize,
    ) -> Self {
        self.access = access;
        self.api_keys = api_keys;
        self.max_subscriptions = max_subscriptions;
        self
    }

    /// The Socket.IO handle whose sockets `/metrics` counts by transport.
    pub fn with_io(mut self, io: SocketIo) -> Self {
        self.io = Some(io);
        self
    }

    /// The admin page's data source.
    pub fn with_admin(mut self, admin: Arc<Admin>) -> Self {
        self.admin = Some(admin);
        self
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
