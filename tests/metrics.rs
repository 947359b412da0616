//! `/metrics` follows what happens: each counter and gauge moves by exactly
//! what the test did. A test binary of its own, with one test, so that no
//! other server in the process moves the (process-wide) metrics meanwhile.

mod support;

use serde_json::json;
use support::{Client, TestServer, payment};

/// The sum of `name`'s samples whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, set) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

struct Metrics(String);

impl Metrics {
    async fn of(server: &TestServer) -> Metrics {
        let (status, text) = server.get_text("/metrics").await;
        assert_eq!(status, 200);
        Metrics(text)
    }
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sample(&self.0, name, labels)
    }
}

/// How much each metric moved between two readings.
fn moved(before: &Metrics, after: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.get(name, labels) - before.get(name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_what_happens() {
    // A one-slot publication queue: a batch overflows it, and the hub
    // catches its socket up.
    let server = TestServer::start(&["--delivery-buffer", "1"]).await;
    let m0 = Metrics::of(&server).await;

    let mut client = Client::connect(server.addr).await;
    client.subscribe("m").await;
    let m1 = Metrics::of(&server).await;
    assert_eq!(moved(&m0, &m1, "tidings_sockets", &[]), 1.0);
    assert_eq!(moved(&m0, &m1, "tidings_subscriptions", &[]), 1.0);
    assert_eq!(moved(&m0, &m1, "tidings_topics", &[]), 1.0);

    // 50 payments (one repeated): 49 stored, 1 duplicate, one 202.
    let mut batch: Vec<_> = (0..49).map(|i| payment("m", &format!("s{i}"))).collect();
    batch.push(payment("m", "s0"));
    let (status, _) = server.ingest(&json!(batch)).await;
    assert_eq!(status, 202);
    let mut seqs = Vec::new();
    while seqs.len() < 49 {
        let (name, ev) = client.next_event().await;
        assert_eq!(name, "payment", "{ev}");
        seqs.push(ev["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, (1..=49).collect::<Vec<_>>(), "in order, none missing");
    let m2 = Metrics::of(&server).await;
    assert_eq!(moved(&m1, &m2, "tidings_payments_stored_total", &[]), 49.0);
    assert_eq!(
        moved(&m1, &m2, "tidings_payments_duplicate_total", &[]),
        1.0
    );
    assert_eq!(
        moved(
            &m1,
            &m2,
            "tidings_ingest_requests_total",
            &[("status", "202")]
        ),
        1.0
    );
    let dropped = moved(
        &m1,
        &m2,
        "tidings_deliveries_dropped_total",
        &[("reason", "queue_full")],
    );
    assert!(dropped > 0.0, "the one-slot queue dropped publications");
    assert!(
        moved(
            &m1,
            &m2,
            "tidings_catch_ups_total",
            &[("reason", "dropped")]
        ) > 0.0
    );
    assert_eq!(
        moved(&m1, &m2, "tidings_broadcasts_total", &[]),
        49.0,
        "every stored payment handed to the room once"
    );
    assert!(moved(&m1, &m2, "tidings_catch_up_events_total", &[]) >= dropped);

    // A replay of 3, an INVALID_SINCE refusal.
    let (_, page) = server.get("/v1/events?trackingId=m&limit=1000").await;
    let since = page["data"][45]["id"].as_str().unwrap().to_owned();
    let mut other = Client::connect(server.addr).await;
    other
        .emit("subscribe", json!({"trackingId": "m", "since": since}))
        .await;
    assert_eq!(other.next_event().await.0, "ack");
    for _ in 0..3 {
        assert_eq!(other.next_event().await.0, "payment");
    }
    let (epoch, _) = since.split_once('-').unwrap();
    other
        .emit(
            "subscribe",
            json!({"trackingId": "m", "since": format!("{epoch}-99")}),
        )
        .await;
    assert_eq!(other.next_event().await.1["data"]["code"], "INVALID_SINCE");
    let m3 = Metrics::of(&server).await;
    assert_eq!(moved(&m2, &m3, "tidings_replayed_events_total", &[]), 3.0);
    assert_eq!(
        moved(
            &m2,
            &m3,
            "tidings_socket_errors_total",
            &[("code", "INVALID_SINCE")]
        ),
        1.0
    );
    assert_eq!(moved(&m2, &m3, "tidings_sockets", &[]), 1.0);
    assert_eq!(moved(&m2, &m3, "tidings_subscriptions", &[]), 1.0);
    assert_eq!(
        moved(&m2, &m3, "tidings_topics", &[]),
        0.0,
        "one topic, two sockets"
    );

    // Unsubscribe one, disconnect the other: nothing left.
    client.emit("unsubscribe", json!({"trackingId": "m"})).await;
    assert_eq!(client.next_event().await.0, "ack");
    drop(other);
    // The server sees the close, and releases what the socket held, on its
    // own time: poll, bounded.
    let deadline = tokio::time::Instant::now() + support::WAIT;
    let m4 = loop {
        let m = Metrics::of(&server).await;
        if moved(&m0, &m, "tidings_sockets", &[]) == 1.0
            && moved(&m0, &m, "tidings_topics", &[]) == 0.0
        {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the disconnect was not seen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(moved(&m0, &m4, "tidings_subscriptions", &[]), 0.0);
    assert_eq!(moved(&m0, &m4, "tidings_topics", &[]), 0.0);
    server.stop().await.unwrap();
}
