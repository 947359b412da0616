//! The [`HistoryStore`] guarantees, checked against both implementations:
//! the memory store, and the Redis store on a real `redis-server` that the
//! test starts on a free port.

#[path = "support/redis.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use redis_server::{RedisCluster, RedisServer};
use serde_json::Value;
use tidings::model::{DedupeKey, EventId, NewPayment, PaymentData, PaymentStatus, now_ms};
use tidings::store::{
    Appended, Deliveries, HistoryStore, MemoryStore, Queued, RedisStore, RedisTarget, Retention,
    StoreError,
};
use tokio::sync::mpsc;

fn retention(max_events: usize) -> Retention {
    Retention {
        max_events,
        history_ttl_ms: 60_000,
        dedupe_ttl_ms: 60_000,
    }
}

fn payment(tid: &str, sig: &str) -> NewPayment {
    NewPayment {
        data: PaymentData {
            tracking_id: tid.into(),
            amount: 5,
            timestamp: 1_699_876_543,
            status: PaymentStatus::Executed,
            signature: Some(sig.into()),
        },
        dedupe: DedupeKey::Signature(sig.into()),
    }
}

fn seqs(out: &[Appended]) -> Vec<(u64, bool)> {
    out.iter()
        .map(|a| (a.id().seq, matches!(a, Appended::Duplicate(_))))
        .collect()
}

async fn next_seq(rx: &mut mpsc::Receiver<Queued>) -> (String, u64) {
    let queued = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a publication arrives")
        .expect("queue open");
    let Queued::Delivery(d) = queued else {
        panic!("a delivery")
    };
    let v: Value = serde_json::from_str(d.envelope.get()).unwrap();
    (d.tracking_id, v["seq"].as_u64().unwrap())
}

async fn redis_store(
    redis: &RedisServer,
    max_events: usize,
) -> (Arc<RedisStore>, mpsc::Receiver<Queued>) {
    let (deliveries, rx) = Deliveries::channel(10_000);
    let store = RedisStore::connect(
        &RedisTarget::Single(redis.url()),
        retention(max_events),
        deliveries,
    )
    .await
    .expect("connects");
    (Arc::new(store), rx)
}

/// The behaviour both stores share: contiguous seqs, idempotency, paging,
/// truncation, INVALID_SINCE, publication of new events only, in order.
async fn conformance(store: &dyn HistoryStore, published: &mut mpsc::Receiver<Queued>) {
    store.listen("t").await.unwrap();
    let now = now_ms();
    let out = store
        .append(
            "t",
            &[payment("t", "a"), payment("t", "b"), payment("t", "a")],
            now,
        )
        .await
        .unwrap();
    assert_eq!(seqs(&out), vec![(1, false), (2, false), (1, true)]);
    let first = out[0].id();
    for expected in [1, 2] {
        assert_eq!(next_seq(published).await, ("t".to_owned(), expected));
    }
    let batch: Vec<NewPayment> = (0..4).map(|i| payment("t", &format!("n{i}"))).collect();
    let out = store.append("t", &batch, now).await.unwrap();
    assert_eq!(
        seqs(&out),
        vec![(3, false), (4, false), (5, false), (6, false)]
    );
    for expected in 3..=6 {
        assert_eq!(next_seq(published).await.1, expected);
    }

    // History limit 3: seqs 4..6 retained.
    let page = store.read("t", None, 10).await.unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.id.seq).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    assert!(!page.truncated && !page.has_more);
    let page = store.read("t", Some(first), 2).await.unwrap();
    assert!(page.truncated, "seqs 2 and 3 are gone");
    assert!(page.has_more);
    assert_eq!(
        page.events.iter().map(|e| e.id.seq).collect::<Vec<_>>(),
        vec![4, 5]
    );
    let four = page.events[0].id;
    let page = store.read("t", Some(four), 10).await.unwrap();
    assert!(!page.truncated);
    assert_eq!(
        page.events.iter().map(|e| e.id.seq).collect::<Vec<_>>(),
        vec![5, 6]
    );
    // Replay returns the stored envelope unchanged.
    let v: Value = serde_json::from_str(page.events[0].envelope.get()).unwrap();
    assert_eq!(v["id"], page.events[0].id.to_string());
    assert_eq!(v["type"], "payment_notification");
    assert_eq!(v["data"]["signature"], "n2");

    let ahead = EventId {
        epoch: first.epoch,
        seq: 7,
    };
    assert!(matches!(
        store.read("t", Some(ahead), 10).await,
        Err(StoreError::InvalidSince)
    ));
    let future = EventId {
        epoch: now_ms() + 3_600_000,
        seq: 1,
    };
    assert!(matches!(
        store.read("t", Some(future), 10).await,
        Err(StoreError::InvalidSince)
    ));
    let older = EventId {
        epoch: first.epoch - 1,
        seq: 1,
    };
    assert!(store.read("t", Some(older), 10).await.unwrap().truncated);
    assert!(
        store
            .read("nothing", Some(first), 10)
            .await
            .unwrap()
            .truncated
    );
    assert!(!store.read("nothing", None, 10).await.unwrap().truncated);
    store.ping().await.unwrap();
}

#[tokio::test]
async fn memory_store_keeps_the_guarantees() {
    let (deliveries, mut rx) = Deliveries::channel(100);
    let store = MemoryStore::new(retention(3), deliveries);
    conformance(&store, &mut rx).await;
}

#[tokio::test]
async fn redis_store_keeps_the_guarantees() {
    let redis = RedisServer::start();
    let (store, mut rx) = redis_store(&redis, 3).await;
    conformance(store.as_ref(), &mut rx).await;
    // A trackingId nobody listens to is not delivered here.
    store
        .append("quiet", &[payment("quiet", "q")], now_ms())
        .await
        .unwrap();
    store
        .append("t", &[payment("t", "z")], now_ms())
        .await
        .unwrap();
    assert_eq!(next_seq(&mut rx).await, ("t".to_owned(), 7));
}

/// Two nodes appending for one trackingId at once never share or skip a
/// seq, and a third node receives the publications in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_nodes_appending_at_once_get_contiguous_seqs_in_order() {
    let redis = RedisServer::start();
    let (a, _) = redis_store(&redis, 1000).await;
    let (b, _) = redis_store(&redis, 1000).await;
    let (c, mut published) = redis_store(&redis, 1000).await;
    c.listen("race").await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for (n, store) in [a, b].into_iter().enumerate() {
        tasks.spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..100 {
                let out = store
                    .append("race", &[payment("race", &format!("{n}-{i}"))], now_ms())
                    .await
                    .unwrap();
                seqs.push(out[0].id().seq);
            }
            seqs
        });
    }
    let mut all: Vec<u64> = tasks.join_all().await.into_iter().flatten().collect();
    all.sort();
    assert_eq!(all, (1..=200).collect::<Vec<_>>());
    for expected in 1..=200 {
        assert_eq!(
            next_seq(&mut published).await.1,
            expected,
            "publications out of order"
        );
    }
}

/// Duplicates are recognised across nodes; a history Redis lost reads as
/// truncated and starts a new epoch; unlistening stops delivery.
#[tokio::test]
async fn redis_dedupe_is_shared_and_a_lost_history_is_truncated() {
    let redis = RedisServer::start();
    let (a, mut published) = redis_store(&redis, 1000).await;
    let (b, _) = redis_store(&redis, 1000).await;
    a.listen("d").await.unwrap();
    let first = a.append("d", &[payment("d", "x")], now_ms()).await.unwrap();
    let again = b.append("d", &[payment("d", "x")], now_ms()).await.unwrap();
    assert!(matches!(again[0], Appended::Duplicate(id) if id == first[0].id()));
    assert_eq!(next_seq(&mut published).await.1, 1);

    assert_eq!(redis.cli(&["flushall"]), "OK");
    let page = b.read("d", Some(first[0].id()), 10).await.unwrap();
    assert!(page.truncated && page.events.is_empty());
    let fresh = b.append("d", &[payment("d", "y")], now_ms()).await.unwrap();
    assert!(fresh[0].id().epoch > first[0].id().epoch);
    assert_eq!(fresh[0].id().seq, 1);
    let page = b.read("d", Some(first[0].id()), 10).await.unwrap();
    assert!(page.truncated);
    assert_eq!(page.events.len(), 1);
    assert_eq!(next_seq(&mut published).await.1, 1);

    a.unlisten("d").await;
    b.append("d", &[payment("d", "z")], now_ms()).await.unwrap();
    a.listen("other").await.unwrap();
    b.append("other", &[payment("other", "o")], now_ms())
        .await
        .unwrap();
    // Barrier: "other" arrives, and nothing for "d" came before it.
    assert_eq!(next_seq(&mut published).await, ("other".to_owned(), 1));
}

/// With Redis gone every call fails fast as Unavailable, and the store
/// recovers, listens included, when Redis is back on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_fails_fast_while_redis_is_down_and_recovers() {
    let redis = RedisServer::start();
    let port = redis.port;
    let (store, mut published) = redis_store(&redis, 1000).await;
    store.listen("r").await.unwrap();
    drop(redis);
    let started = std::time::Instant::now();
    assert!(matches!(
        store.append("r", &[payment("r", "1")], now_ms()).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(store.ping().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failing took {:?}",
        started.elapsed()
    );

    let _back = RedisServer::start_on(port);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while store.ping().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "store did not recover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = store
        .append("r", &[payment("r", "2")], now_ms())
        .await
        .unwrap();
    assert_eq!(out[0].id().seq, 1);
    assert_eq!(
        next_seq(&mut published).await,
        ("r".to_owned(), 1),
        "resubscribed after reconnect"
    );
}

/// The same guarantees on a three-master Redis Cluster: one trackingId's
/// keys share a slot, publications use sharded pub/sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_store_keeps_the_guarantees() {
    let cluster = RedisCluster::start();
    let target = RedisTarget::Cluster(cluster.seeds());
    let connect = |max_events| {
        let target = target.clone();
        async move {
            let (deliveries, rx) = Deliveries::channel(10_000);
            let store = RedisStore::connect(&target, retention(max_events), deliveries)
                .await
                .expect("connects");
            (Arc::new(store), rx)
        }
    };
    let (store, mut rx) = connect(3).await;
    conformance(store.as_ref(), &mut rx).await;

    // Many trackingIds (spread over the three masters), two nodes
    // appending, a third listening.
    let (a, _) = connect(1000).await;
    let (b, _) = connect(1000).await;
    let (c, mut published) = connect(1000).await;
    let ids: Vec<String> = (0..12).map(|i| format!("spread-{i}")).collect();
    for id in &ids {
        c.listen(id).await.unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        let node = if i % 2 == 0 { &a } else { &b };
        node.append(id, &[payment(id, "p1"), payment(id, "p2")], now_ms())
            .await
            .unwrap();
        let dup = b.append(id, &[payment(id, "p1")], now_ms()).await.unwrap();
        assert!(matches!(dup[0], Appended::Duplicate(_)));
    }
    let mut got: Vec<(String, u64)> = Vec::new();
    for _ in 0..ids.len() * 2 {
        got.push(next_seq(&mut published).await);
    }
    for id in &ids {
        let mine: Vec<u64> = got
            .iter()
            .filter(|(t, _)| t == id)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(mine, vec![1, 2], "{id}");
    }
}
