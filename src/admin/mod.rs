//! The admin page's data: every node of the cluster reports itself every
//! [`REPORT_EVERY`] through the store's [`NodeDirectory`] (Redis in a
//! cluster), and any node's `/admin` reads every report. A report
//! ([`report::NodeReport`]) carries what the node holds and what it did
//! since its last report, sampled from its own metric handles, and the
//! number of its subscribers of each trackingId an operator is inspecting.
//!
//! Off the payment path: a report that cannot be written is logged and
//! tried again at the next tick; nothing waits for it.

pub mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hub::SocketHub;
use crate::model::now_ms;
use crate::store::{NodeDirectory, StoreError};
use crate::telemetry::{self, Exporter};
use report::{NodeReport, Sample, Window};

/// How often a node reports itself.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);
/// A node whose last report is older than this is shown as silent...
pub const SILENT_AFTER_MS: u64 = 10_000;
/// ... and forgotten after this.
pub const FORGET_AFTER_MS: u64 = 60_000;
/// How long nodes keep counting a trackingId's subscribers after an
/// operator last looked at it.
pub const INSPECT_FOR_MS: u64 = 30_000;

/// A report as the page shows it: silent when the node stopped reporting.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    #[serde(flatten)]
    pub report: NodeReport,
    pub age_ms: u64,
    pub silent: bool,
}

/// This node's side of the admin page.
pub struct Admin {
    id: String,
    hostname: String,
    listen: String,
    started_at: u64,
    directory: Arc<dyn NodeDirectory>,
    hub: Arc<SocketHub>,
    metrics: Exporter,
}

impl Admin {
    pub fn new(
        listen: String,
        directory: Arc<dyn NodeDirectory>,
        hub: Arc<SocketHub>,
        metrics: Exporter,
    ) -> Self {
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        Admin {
            id: uuid[..12].to_owned(),
            hostname: hostname(),
            listen,
            started_at: now_ms(),
            directory,
            hub,
            metrics,
        }
    }

    /// This node's id in the reports.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reports this node every [`REPORT_EVERY`], forever.
    pub async fn report_forever(self: Arc<Self>) {
        let mut every = tokio::time::interval(REPORT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous: Option<(Instant, Sample)> = None;
        loop {
            every.tick().await;
            telemetry::collect_process_metrics();
            let sample = Sample::now();
            let now = Instant::now();
            let window = match &previous {
                Some((at, before)) => {
                    Window::between(before, &sample, now.duration_since(*at).as_secs_f64())
                }
                None => Window::between(&sample, &sample, 0.0),
            };
            if let Err(err) = self.report(&sample, &window).await {
                tracing::debug!(%err, "admin report not written");
            }
            previous = Some((now, sample));
        }
    }

    async fn report(&self, sample: &Sample, window: &Window) -> Result<(), StoreError> {
        let reported_at = now_ms();
        let inspected = self
            .directory
            .inspected(reported_at)
            .await?
            .into_iter()
            .map(|tid| {
                let n = self.hub.subscribers(&tid) as u64;
                (tid, n)
            })
            .collect();
        let (polling, websocket) = self.metrics.sockets_by_transport();
        let report = NodeReport {
            id: self.id.clone(),
            hostname: self.hostname.clone(),
            listen: self.listen.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.started_at,
            reported_at,
            sockets: sample.sockets as u64,
            polling,
            websocket,
            subscriptions: sample.subscriptions as u64,
            topics: sample.topics as u64,
            connections: sample.connections as u64,
            connections_limit: sample.connections_limit as u64,
            store_up: sample.store_up > 0.0,
            rss_bytes: sample.rss_bytes as u64,
            ingest_per_second: window.ingest_per_second,
            broadcasts_per_second: window.broadcasts_per_second,
            lag_p99_ms: window.lag_p99_ms,
            lag_p99_capped: window.lag_p99_capped,
            lag_samples: window.lag_samples,
            dropped_total: sample.dropped as u64,
            dropped_recent: window.dropped_recent,
            inspected,
        };
        // Serialising plain numbers and strings cannot fail.
        let json = serde_json::to_string(&report).unwrap_or_default();
        self.directory.report(&self.id, &json).await
    }

    /// Every node's last report (this one's included once it reported),
    /// newest first by start time; forgets nodes silent for a minute.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, StoreError> {
        let now = now_ms();
        let mut views = Vec::new();
        let mut gone = Vec::new();
        for (id, json) in self.directory.reports().await? {
            let Ok(report) = serde_json::from_str::<NodeReport>(&json) else {
                // Not a report this version understands: leave it alone.
                continue;
            };
            let age_ms = now.saturating_sub(report.reported_at);
            if age_ms > FORGET_AFTER_MS {
                gone.push(id);
                continue;
            }
            views.push(NodeView {
                report,
                age_ms,
                silent: age_ms > SILENT_AFTER_MS,
            });
        }
        if !gone.is_empty() {
            self.directory.forget(&gone).await?;
        }
        views.sort_by(|a, b| {
            (&a.report.hostname, &a.report.listen, &a.report.id).cmp(&(
                &b.report.hostname,
                &b.report.listen,
                &b.report.id,
            ))
        });
        Ok(views)
    }

    /// Asks every node to count `tracking_id`'s subscribers in its next
    /// reports.
    pub async fn inspect(&self, tracking_id: &str) -> Result<(), StoreError> {
        self.directory
            .inspect(tracking_id, now_ms() + INSPECT_FOR_MS)
            .await
    }
}

/// The machine's name, for telling nodes apart on the page.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
