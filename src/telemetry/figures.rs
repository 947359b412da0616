//! [`Figures`]: the few figures a node reports about itself on the admin
//! page, kept by the very metric handles that feed `/metrics`. The
//! recorder the server installs ([`Tee`]) wraps Prometheus's: for the
//! metrics named here, each handle it gives out also keeps a copy that the
//! report reads directly, so nothing is rendered and parsed back, and the
//! page and Prometheus cannot disagree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

use super::{
    BROADCASTS, CONNECTIONS, CONNECTIONS_LIMIT, DELIVERIES_DROPPED, DELIVERY_LAG, LAG_BUCKETS,
    PATH_LIVE, PAYMENTS_STORED, SOCKETS, STORE_UP, SUBSCRIPTIONS, TOPICS,
};

/// The process's resident memory, recorded by `metrics-process`.
const RSS: &str = "process_resident_memory_bytes";

/// A gauge's current value.
#[derive(Default)]
pub struct Level(AtomicU64);

/// A counter's total (summed over its labels).
#[derive(Default)]
pub struct Count(AtomicU64);

/// A histogram's bucket counts: `counts[i]` samples at most `bounds[i]`
/// (and above the previous bound), the last one beyond every bound.
pub struct Buckets {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
}

impl Level {
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn update(&self, change: impl Fn(f64) -> f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some(change(f64::from_bits(bits)).to_bits())
            });
    }
}

impl Count {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Buckets {
    fn new(bounds: &'static [f64]) -> Self {
        Buckets {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn record(&self, value: f64) {
        let at = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[at].fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts by upper bound (the last one infinite), as
    /// Prometheus buckets are.
    pub fn cumulative(&self) -> Vec<(f64, f64)> {
        let mut total = 0;
        self.bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.counts)
            .map(|(bound, count)| {
                total += count.load(Ordering::Relaxed);
                (bound, total as f64)
            })
            .collect()
    }
}

/// What the admin report reads.
pub struct Figures {
    pub sockets: Level,
    pub subscriptions: Level,
    pub topics: Level,
    pub connections: Level,
    pub connections_limit: Level,
    pub store_up: Level,
    pub rss_bytes: Level,
    pub stored: Count,
    pub broadcasts: Count,
    pub dropped: Count,
    /// The live delivery lag, in seconds.
    pub lag: Buckets,
}

/// This process's figures (one recorder per process).
pub fn figures() -> &'static Figures {
    static FIGURES: LazyLock<Figures> = LazyLock::new(|| Figures {
        sockets: Level::default(),
        subscriptions: Level::default(),
        topics: Level::default(),
        connections: Level::default(),
        connections_limit: Level::default(),
        store_up: Level::default(),
        rss_bytes: Level::default(),
        stored: Count::default(),
        broadcasts: Count::default(),
        dropped: Count::default(),
        lag: Buckets::new(LAG_BUCKETS),
    });
    &FIGURES
}

impl Figures {
    fn level(&'static self, key: &Key) -> Option<&'static Level> {
        match key.name() {
            SOCKETS => Some(&self.sockets),
            SUBSCRIPTIONS => Some(&self.subscriptions),
            TOPICS => Some(&self.topics),
            CONNECTIONS => Some(&self.connections),
            CONNECTIONS_LIMIT => Some(&self.connections_limit),
            STORE_UP => Some(&self.store_up),
            RSS => Some(&self.rss_bytes),
            _ => None,
        }
    }

    fn count(&'static self, key: &Key) -> Option<&'static Count> {
        match key.name() {
            PAYMENTS_STORED => Some(&self.stored),
            BROADCASTS => Some(&self.broadcasts),
            DELIVERIES_DROPPED => Some(&self.dropped),
            _ => None,
        }
    }

    fn buckets(&'static self, key: &Key) -> Option<&'static Buckets> {
        let live = key
            .labels()
            .any(|l| l.key() == "path" && l.value() == PATH_LIVE);
        (key.name() == DELIVERY_LAG && live).then_some(&self.lag)
    }
}

/// A recorder that hands out `R`'s handles, keeping a copy in
/// [`figures`] for the metrics the admin report reads.
pub struct Tee<R>(pub R);

struct TeeCounter(Counter, &'static Count);
struct TeeGauge(Gauge, &'static Level);
struct TeeHistogram(Histogram, &'static Buckets);

impl CounterFn for TeeCounter {
    fn increment(&self, value: u64) {
        self.0.increment(value);
        self.1.0.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.0.absolute(value);
        self.1.0.fetch_max(value, Ordering::Relaxed);
    }
}

impl GaugeFn for TeeGauge {
    fn increment(&self, value: f64) {
        self.0.increment(value);
        self.1.update(|v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.0.decrement(value);
        self.1.update(|v| v - value);
    }

    fn set(&self, value: f64) {
        self.0.set(value);
        self.1.update(|_| value);
    }
}

impl HistogramFn for TeeHistogram {
    fn record(&self, value: f64) {
        self.0.record(value);
        self.1.record(value);
    }
}

impl<R: Recorder> Recorder for Tee<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let inner = self.0.register_counter(key, metadata);
        match figures().count(key) {
            Some(copy) => Counter::from_arc(Arc::new(TeeCounter(inner, copy))),
            None => inner,
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        let inner = self.0.register_gauge(key, metadata);
        match figures().level(key) {
            Some(copy) => Gauge::from_arc(Arc::new(TeeGauge(inner, copy))),
            None => inner,
        }
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let inner = self.0.register_histogram(key, metadata);
        match figures().buckets(key) {
            Some(copy) => Histogram::from_arc(Arc::new(TeeHistogram(inner, copy))),
            None => inner,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::{Level as Verbosity, NoopRecorder};

    fn metadata() -> Metadata<'static> {
        Metadata::new("test", Verbosity::INFO, None)
    }

    /// The handles the recorder gives out keep the figures: counters summed
    /// over labels, gauges moved and set, the live lag only, by bucket.
    /// (The figures are the process's: this is the only test that records
    /// through a `Tee`.)
    #[test]
    fn handles_keep_the_figures_the_report_reads() {
        let tee = Tee(NoopRecorder);
        let f = figures();
        let stored = f.stored.get();
        tee.register_counter(&Key::from_name(PAYMENTS_STORED), &metadata())
            .increment(3);
        assert_eq!(f.stored.get(), stored + 3);
        let dropped = f.dropped.get();
        for reason in ["queue_full", "socket_buffer"] {
            let key = Key::from_parts(
                DELIVERIES_DROPPED,
                vec![metrics::Label::new("reason", reason)],
            );
            tee.register_counter(&key, &metadata()).increment(2);
        }
        assert_eq!(f.dropped.get(), dropped + 4);

        let sockets = tee.register_gauge(&Key::from_name(SOCKETS), &metadata());
        sockets.set(10.0);
        sockets.increment(2.0);
        sockets.decrement(5.0);
        assert_eq!(f.sockets.get(), 7.0);

        let lag = |path: &'static str| {
            let key = Key::from_parts(DELIVERY_LAG, vec![metrics::Label::new("path", path)]);
            tee.register_histogram(&key, &metadata())
        };
        let before = f.lag.cumulative();
        lag(PATH_LIVE).record(0.0015); // in the 2 ms bucket
        lag("catch_up").record(0.0015); // not the live lag
        lag(PATH_LIVE).record(1e9); // beyond every bound
        let after = f.lag.cumulative();
        let added: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a.1 - b.1).collect();
        let two_ms = LAG_BUCKETS.iter().position(|b| *b == 0.002).unwrap();
        assert_eq!(added[two_ms - 1], 0.0);
        assert_eq!(added[two_ms], 1.0);
        assert_eq!(*added.last().unwrap(), 2.0);
        assert_eq!(after.last().unwrap().0, f64::INFINITY);

        // Others pass through untouched.
        let other = tee.register_counter(&Key::from_name("something_else_total"), &metadata());
        other.increment(1);
        assert_eq!(f.stored.get(), stored + 3);
    }
}
