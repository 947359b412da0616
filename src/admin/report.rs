//! A node's report for the admin page: what it holds now (sockets,
//! subscriptions, connections, memory) and what it did since its previous
//! report (payments ingested per second, live delivery lag p99, drops),
//! read from the handles that feed this node's `/metrics`
//! ([`crate::telemetry::figures`]), so that the page and Prometheus show the
//! same figures.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::telemetry::figures::figures;

/// One node's report, as stored in the [`NodeDirectory`](crate::store::NodeDirectory)
/// and served to the admin page.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub id: String,
    pub hostname: String,
    /// The address this node listens on.
    pub listen: String,
    pub pid: u32,
    pub version: String,
    /// Milliseconds since the Unix epoch.
    pub started_at: u64,
    pub reported_at: u64,
    pub sockets: u64,
    pub polling: u64,
    pub websocket: u64,
    pub subscriptions: u64,
    pub topics: u64,
    pub connections: u64,
    pub connections_limit: u64,
    pub store_up: bool,
    pub rss_bytes: u64,
    /// Payments this node's ingest stored, per second, since its last report.
    pub ingest_per_second: f64,
    /// Payments handed to this node's rooms, per second, since its last report.
    pub broadcasts_per_second: f64,
    /// The live delivery lag's 99th percentile since the last report: the
    /// upper bound of its histogram bucket, in ms; None without deliveries.
    pub lag_p99_ms: Option<f64>,
    /// The p99 is beyond the last bucket (lag_p99_ms is that bucket's bound).
    pub lag_p99_capped: bool,
    pub lag_samples: u64,
    pub dropped_total: u64,
    pub dropped_recent: u64,
    /// Subscribers on this node of each trackingId being inspected.
    pub inspected: HashMap<String, u64>,
}

/// The figures of one scrape of this node's exposition that a report needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub sockets: f64,
    pub subscriptions: f64,
    pub topics: f64,
    pub connections: f64,
    pub connections_limit: f64,
    pub store_up: f64,
    pub rss_bytes: f64,
    pub stored: f64,
    pub broadcasts: f64,
    pub dropped: f64,
    /// Cumulative live lag buckets: (upper bound in seconds, count).
    pub lag_buckets: Vec<(f64, f64)>,
}

impl Sample {
    /// The figures now, from this node's metric handles.
    pub fn now() -> Sample {
        let f = figures();
        Sample {
            sockets: f.sockets.get(),
            subscriptions: f.subscriptions.get(),
            topics: f.topics.get(),
            connections: f.connections.get(),
            connections_limit: f.connections_limit.get(),
            store_up: f.store_up.get(),
            rss_bytes: f.rss_bytes.get(),
            stored: f.stored.get() as f64,
            broadcasts: f.broadcasts.get() as f64,
            dropped: f.dropped.get() as f64,
            lag_buckets: f.lag.cumulative(),
        }
    }
}

/// What happened between two samples `seconds` apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub ingest_per_second: f64,
    pub broadcasts_per_second: f64,
    pub lag_p99_ms: Option<f64>,
    pub lag_p99_capped: bool,
    pub lag_samples: u64,
    pub dropped_recent: u64,
}

impl Window {
    pub fn between(before: &Sample, now: &Sample, seconds: f64) -> Window {
        let per_second = |a: f64, b: f64| {
            if seconds > 0.0 {
                ((b - a).max(0.0)) / seconds
            } else {
                0.0
            }
        };
        // Bucket counts in the window, cumulative by bound.
        let deltas: Vec<(f64, f64)> = now
            .lag_buckets
            .iter()
            .map(|&(bound, count)| {
                let earlier = before
                    .lag_buckets
                    .iter()
                    .find(|(b, _)| *b == bound)
                    .map_or(0.0, |(_, c)| *c);
                (bound, (count - earlier).max(0.0))
            })
            .collect();
        let total = deltas.last().map_or(0.0, |(_, c)| *c);
        let (lag_p99_ms, lag_p99_capped) = if total > 0.0 {
            let rank = total * 0.99;
            let largest_finite = deltas
                .iter()
                .rev()
                .find(|(b, _)| b.is_finite())
                .map_or(0.0, |(b, _)| *b);
            match deltas.iter().find(|(_, c)| *c >= rank) {
                Some((bound, _)) if bound.is_finite() => (Some(bound * 1000.0), false),
                _ => (Some(largest_finite * 1000.0), true),
            }
        } else {
            (None, false)
        };
        Window {
            ingest_per_second: per_second(before.stored, now.stored),
            broadcasts_per_second: per_second(before.broadcasts, now.broadcasts),
            lag_p99_ms,
            lag_p99_capped,
            lag_samples: total as u64,
            dropped_recent: (now.dropped - before.dropped).max(0.0) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        Sample {
            sockets: 3.0,
            stored: 10.0,
            dropped: 7.0,
            lag_buckets: vec![(0.001, 90.0), (0.01, 99.0), (f64::INFINITY, 100.0)],
            ..Sample::default()
        }
    }

    #[test]
    fn window_rates_and_p99_come_from_the_deltas() {
        let before = Sample {
            stored: 4.0,
            dropped: 1.0,
            lag_buckets: vec![(0.001, 90.0), (0.01, 90.0), (f64::INFINITY, 90.0)],
            ..Sample::default()
        };
        let now = sample();
        let w = Window::between(&before, &now, 2.0);
        assert_eq!(w.ingest_per_second, 3.0);
        assert_eq!(w.dropped_recent, 6);
        assert_eq!(w.lag_samples, 10);
        // 10 new samples: 0 under 1 ms, 9 under 10 ms, 1 beyond: p99 beyond the last bound.
        assert_eq!(w.lag_p99_ms, Some(10.0));
        assert!(w.lag_p99_capped);
        let quiet = Window::between(&now, &now, 2.0);
        assert_eq!(quiet.lag_p99_ms, None);
        assert_eq!(quiet.ingest_per_second, 0.0);
    }
}
