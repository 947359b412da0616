//! The [`HistoryStore`] guarantees, checked against both implementations:
//! the memory store, and the Redis store on a real `redis-server` (and a
//! real Redis Cluster) that the test starts on a free port.

#[path = "support/redis.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use redis_server::{RedisCluster, RedisServer};
use serde_json::Value;
use tidings::model::{
    DedupeKey, EventId, NewPayment, PaymentData, PaymentStatus, StoredEvent, now_ms,
};
use tidings::store::{
    Appended, HistoryStore, MemoryStore, PublicationStream, Publications, RedisStore, RedisTarget,
    Retention, Signal, StoreError,
};

fn retention(max_events: usize) -> Retention {
    Retention {
        max_events,
        stream_max_events: 10_000,
        streams: tidings::model::Streams::OFF,
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

/// The next signal, within 5 s.
async fn next_signal(rx: &mut PublicationStream) -> Signal {
    tokio::time::timeout(Duration::from_secs(5), rx.next())
        .await
        .expect("a signal arrives")
        .expect("queue open")
}

/// The next publication's trackingId and seq (the envelope's seq matches
/// the publication's id).
async fn next_seq(rx: &mut PublicationStream) -> (String, u64) {
    let Signal::Publication(p) = next_signal(rx).await else {
        panic!("a publication")
    };
    let v: Value = serde_json::from_str(p.event.envelope.get()).unwrap();
    assert_eq!(v["id"], p.event.id.to_string());
    assert_eq!(v["seq"], p.event.id.seq);
    (p.tracking_id, p.event.id.seq)
}

async fn next_publication(rx: &mut PublicationStream) -> tidings::store::Publication {
    match next_signal(rx).await {
        Signal::Publication(p) => p,
        _ => panic!("a publication"),
    }
}

async fn redis_store(
    redis: &RedisServer,
    max_events: usize,
) -> (Arc<RedisStore>, PublicationStream) {
    let (publications, rx) = Publications::channel(10_000);
    let store = RedisStore::connect(
        &RedisTarget::Single(redis.url()),
        retention(max_events),
        publications,
    )
    .await
    .expect("connects");
    (Arc::new(store), rx)
}

async fn append(store: &dyn HistoryStore, tid: &str, sigs: &[&str]) -> Vec<Appended> {
    let batch: Vec<NewPayment> = sigs.iter().map(|s| payment(tid, s)).collect();
    store.append(tid, &batch).await.expect("append")
}

/// The behaviour both stores share: contiguous seqs, idempotency, paging,
/// positions, truncation, INVALID_SINCE, publication of new events only,
/// in order, acceptance times that never decrease.
async fn conformance(store: &dyn HistoryStore, published: &mut PublicationStream) {
    store.listen("t").await.unwrap();
    let empty = store.read("t", None, 10).await.unwrap();
    assert_eq!(empty.position.id(), None, "no history: no position");
    let out = append(store, "t", &["a", "b", "a"]).await;
    assert_eq!(seqs(&out), vec![(1, false), (2, false), (1, true)]);
    let first = out[0].id();
    for expected in [1, 2] {
        assert_eq!(next_seq(published).await, ("t".to_owned(), expected));
    }
    let out = append(store, "t", &["n0", "n1", "n2", "n3"]).await;
    assert_eq!(
        seqs(&out),
        vec![(3, false), (4, false), (5, false), (6, false)]
    );
    for expected in 3..=6 {
        assert_eq!(next_seq(published).await.1, expected);
    }

    // History limit 3: seqs 4..6 retained; the position is the last stored.
    let page = store.read("t", None, 10).await.unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.id.seq).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    assert!(!page.truncated && !page.has_more);
    assert_eq!(page.position.id(), Some(out[3].id()));
    let times: Vec<u64> = page.events.iter().map(|e| e.accepted_ms).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
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
    // A position-only read (limit 0) reads no event.
    let page = store.read("t", None, 0).await.unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.position.seq, 6);
    // Replay returns the stored envelope unchanged.
    let page = store.read("t", Some(four), 10).await.unwrap();
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
    // A seq no JavaScript client could hold, nor Lua compute with.
    let huge = EventId {
        epoch: first.epoch,
        seq: u64::MAX,
    };
    assert!(matches!(
        store.read("t", Some(huge), 10).await,
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
    // No since changes the history: the next append continues it.
    assert_eq!(append(store, "t", &["after"]).await[0].id().seq, 7);
    assert_eq!(next_seq(published).await.1, 7);
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
    let (publications, mut rx) = Publications::channel(100);
    let store = MemoryStore::new(retention(3), publications);
    conformance(&store, &mut rx).await;
}

#[tokio::test]
async fn redis_store_keeps_the_guarantees() {
    let redis = RedisServer::start();
    let (store, mut rx) = redis_store(&redis, 3).await;
    conformance(store.as_ref(), &mut rx).await;
    // A trackingId nobody listens to is not delivered here.
    append(store.as_ref(), "quiet", &["q"]).await;
    append(store.as_ref(), "t", &["z"]).await;
    assert_eq!(next_seq(&mut rx).await, ("t".to_owned(), 8));
}

/// A full queue drops a publication and names its trackingId beside the
/// queue, so the hub can catch it up.
#[tokio::test]
async fn a_full_queue_reports_what_it_dropped() {
    let (publications, mut rx) = Publications::channel(1);
    let store = MemoryStore::new(retention(10), publications);
    append(&store, "x", &["1", "2", "3"]).await;
    let Signal::Dropped(dropped) = next_signal(&mut rx).await else {
        panic!("the drop comes first")
    };
    assert_eq!(dropped, vec!["x".to_owned()]);
    assert_eq!(next_seq(&mut rx).await.1, 1);
}

/// A signature as long as a real one (88 base58 characters), unique per
/// `n`: dedupe keys cost what they cost in production.
fn long_sig(n: usize) -> String {
    format!("{n:0>88}")
}

/// A memory store bounded to `limit` bytes, with room for 1000 events per
/// trackingId and nothing expiring during the test.
fn bounded_store(limit: u64) -> (MemoryStore, PublicationStream) {
    let (publications, rx) = Publications::channel(1_000_000);
    let store = MemoryStore::new(retention(1000), publications).with_memory_limit(limit);
    (store, rx)
}

/// Filled far beyond its bound with payments for many trackingIds, the
/// memory store never accounts more than the bound after an append, keeps
/// the newest payments and evicts the oldest across all trackingIds (every
/// evicted payment is older than every retained one), keeps each retained
/// history contiguous and in its epoch, answers a `since` into evicted
/// events truncated with what is retained, and no longer dedupes an evicted
/// payment while still deduping a retained one.
#[tokio::test]
async fn the_memory_store_stays_within_its_bound_evicting_the_oldest_first() {
    const LIMIT: u64 = 512 * 1024;
    const TIDS: usize = 100;
    const ROUNDS: usize = 60;
    let (store, _rx) = bounded_store(LIMIT);
    let tid = |t: usize| format!("bound-{t}");
    // first[t]: tid t's first id; payment (round r, tid t) is global number
    // r * TIDS + t, its seq r + 1.
    let mut first = Vec::new();
    for r in 0..ROUNDS {
        for t in 0..TIDS {
            let sig = long_sig(r * TIDS + t);
            let out = append(&store, &tid(t), &[&sig]).await;
            assert!(matches!(out[0], Appended::Stored(_)));
            assert_eq!(out[0].id().seq, r as u64 + 1);
            if r == 0 {
                first.push(out[0].id());
            }
            assert!(
                store.memory_bytes() <= LIMIT as usize,
                "{} bytes accounted over a bound of {LIMIT}",
                store.memory_bytes()
            );
        }
    }
    assert!(store.evictions() > 0);
    let (mut newest_evicted, mut oldest_retained) = (None::<usize>, usize::MAX);
    let mut retained = 0;
    for (t, first_id) in first.iter().enumerate() {
        let page = store.read(&tid(t), None, 1000).await.unwrap();
        let seqs: Vec<u64> = page.events.iter().map(|e| e.id.seq).collect();
        assert_eq!(
            seqs.last(),
            Some(&(ROUNDS as u64)),
            "tid {t} keeps its newest"
        );
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "contiguous: {seqs:?}"
        );
        assert!(page.events.iter().all(|e| e.id.epoch == first_id.epoch));
        assert_eq!(page.position.id().map(|id| id.seq), Some(ROUNDS as u64));
        retained += seqs.len();
        let first_seq = seqs[0] as usize;
        oldest_retained = oldest_retained.min((first_seq - 1) * TIDS + t);
        if first_seq > 1 {
            newest_evicted = newest_evicted.max(Some((first_seq - 2) * TIDS + t));
        }
        // A since into what was evicted: truncated, from the oldest retained.
        let page = store.read(&tid(t), Some(*first_id), 1000).await.unwrap();
        assert_eq!(page.truncated, first_seq > 2, "tid {t} from {first_seq}");
        assert_eq!(page.events.first().map(|e| e.id.seq), Some(seqs[0].max(2)));
    }
    let newest_evicted = newest_evicted.expect("the oldest payments were evicted");
    assert!(
        newest_evicted < oldest_retained,
        "payment {newest_evicted} was evicted while the older {oldest_retained} is retained"
    );
    assert!(
        retained < ROUNDS * TIDS / 2,
        "only {retained} of {} retained",
        ROUNDS * TIDS
    );
    // The oldest payment's key was evicted with it: it is stored again. A
    // retained one is still a duplicate.
    let again = append(&store, &tid(0), &[&long_sig(0)]).await;
    assert!(matches!(again[0], Appended::Stored(_)));
    let newest = long_sig((ROUNDS - 1) * TIDS + TIDS - 1);
    let again = append(&store, &tid(TIDS - 1), &[&newest]).await;
    assert!(matches!(again[0], Appended::Duplicate(id) if id.seq == ROUNDS as u64));
}

/// A history evicted entirely behaves like an expired one: a `since` into
/// it reads truncated and empty, and the next payment starts a new, larger
/// epoch at seq 1.
#[tokio::test]
async fn a_history_evicted_entirely_starts_a_new_larger_epoch() {
    let (store, _rx) = bounded_store(64 * 1024);
    let old = append(&store, "gone", &["g1", "g2"]).await[1].id();
    let mut n = 0;
    while store
        .read("gone", None, 10)
        .await
        .unwrap()
        .position
        .id()
        .is_some()
    {
        append(&store, &format!("filler-{n}"), &[&long_sig(n)]).await;
        n += 1;
        assert!(n < 10_000, "the oldest history is never evicted");
    }
    let page = store.read("gone", Some(old), 10).await.unwrap();
    assert!(page.truncated && page.events.is_empty());
    let fresh = append(&store, "gone", &["g1"]).await;
    assert!(
        matches!(fresh[0], Appended::Stored(_)),
        "its key went with it"
    );
    let fresh = fresh[0].id();
    assert!(fresh.epoch > old.epoch, "{fresh} after {old}");
    assert_eq!(fresh.seq, 1);
    let page = store.read("gone", Some(old), 10).await.unwrap();
    assert!(page.truncated);
    assert_eq!(
        page.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![fresh]
    );
}

/// A bound below one payment evicts each history within the millisecond
/// that created it: the next one still gets a larger epoch, so no id is
/// ever issued twice.
#[tokio::test]
async fn a_history_evicted_in_the_millisecond_it_was_created_never_reuses_its_epoch() {
    let (store, _rx) = bounded_store(1);
    let mut ids = Vec::new();
    for i in 0..50 {
        let out = append(&store, "flash", &[&format!("f{i}")]).await;
        assert!(matches!(out[0], Appended::Stored(_)));
        ids.push(out[0].id());
        assert_eq!(store.memory_bytes(), 0, "everything evicted");
    }
    assert!(
        ids.windows(2)
            .all(|w| w[1].epoch > w[0].epoch && w[1].seq == 1),
        "{ids:?}"
    );
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
                let out = append(store.as_ref(), "race", &[&format!("{n}-{i}")]).await;
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
/// truncated and starts a new epoch; listening is plain (not counted).
#[tokio::test]
async fn redis_dedupe_is_shared_and_a_lost_history_is_truncated() {
    let redis = RedisServer::start();
    let (a, mut published) = redis_store(&redis, 1000).await;
    let (b, _) = redis_store(&redis, 1000).await;
    a.listen("d").await.unwrap();
    let first = append(a.as_ref(), "d", &["x"]).await;
    let again = append(b.as_ref(), "d", &["x"]).await;
    assert!(matches!(again[0], Appended::Duplicate(id) if id == first[0].id()));
    assert_eq!(next_seq(&mut published).await.1, 1);

    assert_eq!(redis.cli(&["flushall"]), "OK");
    let page = b.read("d", Some(first[0].id()), 10).await.unwrap();
    assert!(page.truncated && page.events.is_empty());
    let fresh = append(b.as_ref(), "d", &["y"]).await;
    assert!(fresh[0].id().epoch > first[0].id().epoch);
    assert_eq!(fresh[0].id().seq, 1);
    let page = b.read("d", Some(first[0].id()), 10).await.unwrap();
    assert!(page.truncated);
    assert_eq!(page.events.len(), 1);
    assert_eq!(next_seq(&mut published).await.1, 1);

    // Listening twice is one listen: one unlisten stops delivery.
    a.listen("d").await.unwrap();
    a.unlisten("d").await;
    append(b.as_ref(), "d", &["z"]).await;
    a.listen("other").await.unwrap();
    append(b.as_ref(), "other", &["o"]).await;
    // Barrier: "other" arrives, and nothing for "d" came before it.
    assert_eq!(next_seq(&mut published).await, ("other".to_owned(), 1));
}

/// Redis restarted from an older snapshot (what RDB snapshots, `appendfsync
/// everysec` and asynchronous failover all do): the ids issued after the
/// snapshot are never issued again, a `since` from before the loss (total
/// or partial) is truncated, never invalid, and what the snapshot kept
/// still dedupes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restored_from_an_older_snapshot_never_reissues_an_id() {
    let mut redis = RedisServer::start();
    let (store, _rx) = redis_store(&redis, 1000).await;
    let kept = append(store.as_ref(), "r", &["p1", "p2"]).await;
    assert_eq!(redis.cli(&["save"]), "OK");
    let lost = append(store.as_ref(), "r", &["p3"]).await[0].id();
    assert_eq!(lost.seq, 3);
    redis.restart(); // SIGKILL, then start from the snapshot: p3 is gone
    wait_until_up(store.as_ref()).await;

    for since in [lost, kept[1].id(), kept[0].id()] {
        let page = store.read("r", Some(since), 10).await.unwrap();
        assert!(page.truncated, "since {since} after the loss");
        assert!(
            page.events.is_empty(),
            "no event of the old history: {since}"
        );
    }
    let next = append(store.as_ref(), "r", &["p4", "p3", "p2"]).await;
    let (p4, p3) = (next[0].id(), next[1].id());
    assert!(p4.epoch > lost.epoch, "a new epoch: {p4} after {lost}");
    assert_ne!(p4, lost);
    assert_eq!((p4.seq, p3.seq), (1, 2), "p3's retry is stored anew");
    assert!(matches!(next[1], Appended::Stored(_)));
    assert!(
        matches!(next[2], Appended::Duplicate(id) if id == kept[1].id()),
        "p2 was in the snapshot: still a duplicate"
    );
    let page = store.read("r", Some(p4), 10).await.unwrap();
    assert!(!page.truncated);
    assert_eq!(
        page.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![p3]
    );
}

/// A restart with all the data (no way to tell it from a rollback) also
/// starts each history afresh: conservative, never wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_with_its_data_starts_histories_afresh() {
    let mut redis = RedisServer::start();
    let (store, _rx) = redis_store(&redis, 1000).await;
    let before = append(store.as_ref(), "w", &["a"]).await[0].id();
    assert_eq!(redis.cli(&["save"]), "OK");
    redis.restart();
    wait_until_up(store.as_ref()).await;
    let page = store.read("w", Some(before), 10).await.unwrap();
    assert!(page.truncated);
    assert!(page.position.epoch > before.epoch);
    assert_eq!(page.position.id(), None, "the new history has no event yet");
    // The read sealed it once; reading again changes nothing more.
    let again = store.read("w", None, 10).await.unwrap();
    assert_eq!(again.position, page.position);
    let after = append(store.as_ref(), "w", &["b"]).await[0].id();
    assert_eq!((after.epoch, after.seq), (page.position.epoch, 1));
}

/// One envelope: the Lua script writes it for Redis, `StoredEvent::new`
/// for memory, and both must be the same bytes for the same payment
/// (unicode, the largest amount, no signature with an idempotencyKey, every
/// status), in what the append returns, what a read returns and what is
/// published.
#[tokio::test]
async fn the_lua_envelope_is_byte_for_byte_the_rust_one() {
    let redis = RedisServer::start();
    let (store, mut rx) = redis_store(&redis, 1000).await;
    let tid = "商户-42:sub-é\"q\"\u{1F4B8}";
    store.listen(tid).await.unwrap();
    let data = |status, amount, signature: Option<&str>| PaymentData {
        tracking_id: tid.into(),
        amount,
        timestamp: 253_402_300_799,
        status,
        signature: signature.map(str::to_owned),
    };
    let batch = [
        NewPayment {
            data: data(
                PaymentStatus::Executed,
                9_007_199_254_740_991,
                Some("5Jt…<\u{7}>\\/"),
            ),
            dedupe: DedupeKey::Signature("a".into()),
        },
        NewPayment {
            data: data(PaymentStatus::Failed, 0, None),
            dedupe: DedupeKey::Idempotency("never reached the chain".into()),
        },
        NewPayment {
            data: data(PaymentStatus::Pending, 1, Some("\u{2028}\u{a0}")),
            dedupe: DedupeKey::Signature("c".into()),
        },
    ];
    let appended = store.append(tid, &batch).await.unwrap();
    let page = store.read(tid, None, 10).await.unwrap();
    for (i, (payment, outcome)) in batch.iter().zip(&appended).enumerate() {
        let Appended::Stored(stored) = outcome else {
            panic!("payment {i} stored");
        };
        let rust = StoredEvent::new(stored.id, stored.accepted_ms, &payment.data);
        assert_eq!(
            stored.envelope.get(),
            rust.envelope.get(),
            "payment {i}: append"
        );
        assert_eq!(
            page.events[i].envelope.get(),
            rust.envelope.get(),
            "payment {i}: read"
        );
        assert_eq!(
            page.events[i].accepted_ms, stored.accepted_ms,
            "payment {i}: time"
        );
        let published = next_publication(&mut rx).await;
        assert_eq!(
            published.event.envelope.get(),
            rust.envelope.get(),
            "payment {i}: published"
        );
        assert_eq!(
            (published.event.id, published.event.accepted_ms),
            (stored.id, stored.accepted_ms)
        );
    }
}

/// A key of the wrong type stops an append before it writes any payment:
/// one trackingId's payments of a call are stored whole or not at all. It is
/// an answer the server cannot read (`Malformed`, answered 500), not an
/// outage (`Unavailable`, retried).
#[tokio::test]
async fn a_failing_append_writes_nothing() {
    let redis = RedisServer::start();
    let (store, mut rx) = redis_store(&redis, 1000).await;
    store.listen("w").await.unwrap();
    // The second payment's dedupe key is taken by a hash.
    assert_eq!(redis.cli(&["hset", "tidings:{w}:d:s:bad", "f", "v"]), "1");
    let batch = [payment("w", "good"), payment("w", "bad")];
    assert!(matches!(
        store.append("w", &batch).await,
        Err(StoreError::Malformed(_))
    ));
    let page = store.read("w", None, 10).await.unwrap();
    assert!(page.events.is_empty(), "nothing stored: {:?}", page.events);
    assert_eq!(redis.cli(&["exists", "tidings:{w}:d:s:good"]), "0");
    assert_eq!(redis.cli(&["del", "tidings:{w}:d:s:bad"]), "1");
    let out = store.append("w", &batch).await.unwrap();
    assert_eq!(seqs(&out), vec![(1, false), (2, false)]);
    // Only the successful call published, once each.
    assert_eq!(next_seq(&mut rx).await.1, 1);
    assert_eq!(next_seq(&mut rx).await.1, 2);
}

/// A lost publication connection is signalled, and after it listening
/// works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pubsub_connection_is_signalled() {
    let redis = RedisServer::start();
    let (store, mut rx) = redis_store(&redis, 1000).await;
    store.listen("k").await.unwrap();
    let killed = redis.cli(&["client", "kill", "type", "pubsub"]);
    assert_eq!(killed, "1", "one pub/sub connection killed");
    assert!(matches!(next_signal(&mut rx).await, Signal::Resync));
    store.listen("k").await.unwrap();
    append(store.as_ref(), "k", &["after"]).await;
    assert_eq!(next_seq(&mut rx).await, ("k".to_owned(), 1));
}

async fn wait_until_up(store: &dyn HistoryStore) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while store.ping().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "store did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With Redis gone every call fails fast as Unavailable, and the store
/// recovers when Redis is back on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_fails_fast_while_redis_is_down_and_recovers() {
    let mut redis = RedisServer::start();
    let (store, mut published) = redis_store(&redis, 1000).await;
    store.listen("r").await.unwrap();
    redis.kill();
    let started = std::time::Instant::now();
    assert!(matches!(
        store.append("r", &[payment("r", "1")]).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(store.ping().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failing took {:?}",
        started.elapsed()
    );
    redis.restart();
    wait_until_up(store.as_ref()).await;
    // The store said its publications may be lost; listening again works.
    let mut resynced = false;
    while let Ok(Some(signal)) =
        tokio::time::timeout(Duration::from_millis(500), published.next()).await
    {
        resynced |= matches!(signal, Signal::Resync);
    }
    assert!(resynced, "the lost connection was signalled");
    store.listen("r").await.unwrap();
    let out = append(store.as_ref(), "r", &["2"]).await;
    assert_eq!(out[0].id().seq, 1);
    assert_eq!(next_seq(&mut published).await, ("r".to_owned(), 1));
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
            let (publications, rx) = Publications::channel(10_000);
            let store = RedisStore::connect(&target, retention(max_events), publications)
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
        append(node.as_ref(), id, &["p1", "p2"]).await;
        let dup = append(b.as_ref(), id, &["p1"]).await;
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

/// On a Redis Cluster, a killed pub/sub connection is signalled, and
/// listening again to every trackingId at once (as the hub does) restores
/// every channel, on the one connection redis-rs keeps per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_pubsub_connection_is_restored_for_every_channel() {
    let cluster = RedisCluster::start();
    let (publications, mut rx) = Publications::channel(10_000);
    let store = Arc::new(
        RedisStore::connect(
            &RedisTarget::Cluster(cluster.seeds()),
            retention(100),
            publications,
        )
        .await
        .expect("connects"),
    );
    let ids: Vec<String> = (0..12).map(|i| format!("kill-{i}")).collect();
    for id in &ids {
        store.listen(id).await.unwrap();
    }
    for round in 0..4 {
        let node = &cluster.nodes[round % 2];
        node.cli(&["client", "kill", "type", "pubsub"]);
        // The hub listens again as soon as it is told, for every
        // trackingId at once.
        assert!(matches!(next_signal(&mut rx).await, Signal::Resync));
        let listens = ids.iter().map(|id| {
            let store = store.clone();
            async move { store.listen(id).await }
        });
        for result in futures_util::future::join_all(listens).await {
            result.unwrap();
        }
        // Every channel has its one subscriber again.
        for id in &ids {
            let channel = format!("tidings:{{{id}}}:p");
            let count: u32 = cluster
                .nodes
                .iter()
                .map(|n| {
                    n.cli(&["pubsub", "shardnumsub", &channel])
                        .lines()
                        .nth(1)
                        .and_then(|c| c.parse::<u32>().ok())
                        .unwrap_or(0)
                })
                .sum();
            assert_eq!(count, 1, "round {round}: {channel} has {count} subscribers");
        }
    }
    for id in &ids {
        append(store.as_ref(), id, &["after"]).await;
    }
    let mut got: Vec<String> = Vec::new();
    for _ in 0..ids.len() {
        got.push(next_seq(&mut rx).await.0);
    }
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want, "every channel delivers again");
}

/// The audit finds the listens a node believes it has but its publication
/// connection does not: on one Redis by count, on a Redis Cluster by count
/// per master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_finds_missing_listens() {
    let redis = RedisServer::start();
    let (store, _rx) = redis_store(&redis, 100).await;
    store.listen("a").await.unwrap();
    store.listen("b").await.unwrap();
    let held = ["a".to_owned(), "b".to_owned()];
    assert!(store.audit(&held).await.unwrap().is_empty());
    let claimed = ["a".to_owned(), "b".to_owned(), "never".to_owned()];
    let mut lost = store.audit(&claimed).await.unwrap();
    lost.sort();
    assert_eq!(
        lost,
        vec!["a", "b", "never"],
        "one Redis: every listen is suspect"
    );

    let cluster = RedisCluster::start();
    let (publications, _rx) = Publications::channel(100);
    let store = RedisStore::connect(
        &RedisTarget::Cluster(cluster.seeds()),
        retention(100),
        publications,
    )
    .await
    .expect("connects");
    let ids: Vec<String> = (0..12).map(|i| format!("audit-{i}")).collect();
    for id in &ids {
        store.listen(id).await.unwrap();
    }
    let first = store.audit(&ids).await;
    assert!(first.as_ref().is_ok_and(|l| l.is_empty()), "{first:?}");
    // One more claimed than held: the suspects are that master's, only.
    let mut claimed = ids.clone();
    claimed.push("never".to_owned());
    let lost = store.audit(&claimed).await.unwrap();
    let master_of = |id: &str| {
        let slot: u16 = cluster.nodes[0]
            .cli(&["cluster", "keyslot", &format!("tidings:{{{id}}}:p")])
            .parse()
            .unwrap();
        cluster
            .nodes
            .iter()
            .position(|n| owns(n, slot))
            .expect("a master serves every slot")
    };
    let home = master_of("never");
    let mut want: Vec<String> = ids
        .iter()
        .filter(|id| master_of(id) == home)
        .cloned()
        .collect();
    want.push("never".to_owned());
    let mut lost = lost;
    lost.sort();
    want.sort();
    assert_eq!(lost, want);
}

/// Whether `node` serves `slot` (from its own CLUSTER SLOTS and port).
fn owns(node: &RedisServer, slot: u16) -> bool {
    let out = node.cli(&["cluster", "slots"]);
    let lines: Vec<&str> = out.lines().collect();
    // redis-cli prints each range as: start, end, host, port, id, ...
    lines.windows(4).any(|w| {
        let (Ok(start), Ok(end), Ok(port)) = (
            w[0].parse::<u16>(),
            w[1].parse::<u16>(),
            w[3].parse::<u16>(),
        ) else {
            return false;
        };
        start <= slot && slot <= end && port == node.port && w[2].contains('.')
    })
}

// ------------------------------------------------------------ account streams

fn streams_on(max_events: usize, stream_max_events: usize) -> Retention {
    Retention {
        stream_max_events,
        streams: tidings::model::Streams::with_separator(':').unwrap(),
        ..retention(max_events)
    }
}

/// The next publication of `name`, skipping others'.
async fn next_of(rx: &mut PublicationStream, name: &str) -> tidings::store::Publication {
    loop {
        let p = next_publication(rx).await;
        if p.tracking_id == name {
            return p;
        }
    }
}

/// Section 8 in a store: each new payment of an account's trackingId is in
/// its stream too, with the stream's own epoch and contiguous seq and its
/// source; a duplicate in neither; trackingIds of no account in none; the
/// stream keeps its own limit and is read and published as a history.
async fn stream_conformance(store: &dyn HistoryStore, published: &mut PublicationStream) {
    let stream = "m:*";
    store.listen(stream).await.unwrap();
    assert_eq!(store.read(stream, None, 10).await.unwrap().position.seq, 0);
    let a = append(store, "m:a", &["a1", "a2", "a1"]).await;
    assert_eq!(seqs(&a), vec![(1, false), (2, false), (1, true)]);
    let b = append(store, "m:b:c", &["b1"]).await;
    append(store, "x", &["x1"]).await;
    append(store, ":m", &["y1"]).await;
    let dup = append(store, "m:a", &["a2"]).await;
    assert!(matches!(dup[0], Appended::Duplicate(_)));
    let page = store.read(stream, None, 10).await.unwrap();
    assert_eq!(page.position.seq, 3, "a duplicate is in neither history");
    let sources = [a[0].id(), a[1].id(), b[0].id()];
    let tids = ["m:a", "m:a", "m:b:c"];
    for (i, event) in page.events.iter().enumerate() {
        let v: Value = serde_json::from_str(event.envelope.get()).unwrap();
        assert_eq!(event.id.seq, i as u64 + 1);
        assert_eq!(v["id"], format!("s{}", event.id), "a stream id is marked");
        assert_eq!(v["seq"], i as u64 + 1);
        assert_eq!(v["stream"], stream);
        assert_eq!(v["source"]["id"], sources[i].to_string());
        assert_eq!(v["source"]["seq"], sources[i].seq);
        assert_eq!(v["data"]["trackingId"], tids[i]);
        assert_eq!(v["type"], "payment_notification");
        let p = next_of(published, stream).await;
        assert_eq!(p.event.id, event.id, "published in stream order");
        assert_eq!(p.event.envelope.get(), event.envelope.get());
    }
    // Both histories' acceptance time is the same.
    let tid_page = store.read("m:b:c", None, 10).await.unwrap();
    assert_eq!(tid_page.events[0].accepted_ms, page.events[2].accepted_ms);
    // A since from within the stream replays what follows it.
    let after = store
        .read(stream, Some(page.events[0].id), 10)
        .await
        .unwrap();
    assert_eq!(after.events.len(), 2);
    assert!(!after.truncated);
    // The stream keeps its own limit (3 here, the trackingIds 1000).
    append(store, "m:z", &["z1", "z2"]).await;
    let page = store.read(stream, None, 10).await.unwrap();
    let kept: Vec<u64> = page.events.iter().map(|e| e.id.seq).collect();
    assert_eq!(kept, vec![3, 4, 5]);
    let from_old = store
        .read(
            stream,
            Some(EventId {
                seq: 1,
                ..page.events[0].id
            }),
            10,
        )
        .await
        .unwrap();
    assert!(from_old.truncated, "events after since are gone");
}

#[tokio::test]
async fn memory_streams_keep_the_guarantees() {
    let (publications, mut rx) = Publications::channel(100);
    let store = MemoryStore::new(streams_on(1000, 3), publications);
    stream_conformance(&store, &mut rx).await;
}

#[tokio::test]
async fn redis_streams_keep_the_guarantees() {
    let redis = RedisServer::start();
    let (publications, mut rx) = Publications::channel(10_000);
    let store = RedisStore::connect(
        &RedisTarget::Single(redis.url()),
        streams_on(1000, 3),
        publications,
    )
    .await
    .expect("connects");
    stream_conformance(&store, &mut rx).await;
    // The account is the hash tag of both histories.
    assert_eq!(redis.cli(&["exists", "tidings:{m:}a}:meta"]), "1");
    assert_eq!(redis.cli(&["exists", "tidings:{m:}*}:events"]), "1");
}

/// On a Redis Cluster, with nodes appending to several trackingIds of one
/// account at once: the stream's seq is contiguous, every payment is in it
/// once, and each trackingId's payments keep their order in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_streams_are_contiguous_under_concurrent_appends() {
    let cluster = RedisCluster::start();
    let target = RedisTarget::Cluster(cluster.seeds());
    let connect = |stream_max| {
        let target = target.clone();
        async move {
            let (publications, rx) = Publications::channel(10_000);
            let store = RedisStore::connect(&target, streams_on(1000, stream_max), publications)
                .await
                .expect("connects");
            (Arc::new(store), rx)
        }
    };
    let (store, mut rx) = connect(3).await;
    stream_conformance(store.as_ref(), &mut rx).await;
    let (a, _) = connect(10_000).await;
    let (b, _) = connect(10_000).await;
    let (c, mut published) = connect(10_000).await;
    c.listen("acct:*").await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for (n, node) in [a, b].into_iter().enumerate() {
        tasks.spawn(async move {
            for i in 0..60 {
                let tid = format!("acct:t{}", i % 3);
                append(
                    node.as_ref(),
                    &tid,
                    &[&format!("{n}-{i}"), &format!("{n}-{i}b")],
                )
                .await;
            }
        });
    }
    tasks.join_all().await;
    let mut last_source: std::collections::HashMap<String, u64> = Default::default();
    let mut sources = std::collections::HashSet::new();
    for expected in 1..=240 {
        let p = next_of(&mut published, "acct:*").await;
        assert_eq!(p.event.id.seq, expected, "stream seq contiguous, in order");
        let v: Value = serde_json::from_str(p.event.envelope.get()).unwrap();
        let tid = v["data"]["trackingId"].as_str().unwrap().to_owned();
        let seq = v["source"]["seq"].as_u64().unwrap();
        let before = last_source.insert(tid.clone(), seq).unwrap_or(0);
        assert_eq!(
            seq,
            before + 1,
            "{tid}'s payments in their order in the stream"
        );
        assert!(
            sources.insert(v["source"]["id"].to_string() + &tid),
            "once each"
        );
    }
}

/// The stream envelope the script writes is the one the memory store
/// writes (`StoredEvent::new_in_stream`), byte for byte.
#[tokio::test]
async fn the_lua_stream_envelope_is_byte_for_byte_the_rust_one() {
    let redis = RedisServer::start();
    let (publications, _rx) = Publications::channel(10_000);
    let store = RedisStore::connect(
        &RedisTarget::Single(redis.url()),
        streams_on(1000, 1000),
        publications,
    )
    .await
    .expect("connects");
    let tid = "商户-\"42\":sub-é\u{1F4B8}";
    let stream = "商户-\"42\":*";
    let mut p = payment(tid, "5Jt…<\u{7}>\\/");
    p.data.amount = 9_007_199_254_740_991;
    let out = store.append(tid, &[p.clone()]).await.unwrap();
    let page = store.read(stream, None, 10).await.unwrap();
    let event = &page.events[0];
    let rust =
        StoredEvent::new_in_stream(stream, event.id, out[0].id(), event.accepted_ms, &p.data);
    assert_eq!(event.envelope.get(), rust.envelope.get());
}

/// Nodes with different `--stream-separator`s never write to one Redis at
/// once (their key layouts would keep an account's trackingId in two
/// histories, each issuing ids): the second is refused until the first's
/// claim lapses; then a history in the new layout starts afresh, with a
/// larger epoch, so no id is ever issued twice.
#[tokio::test]
async fn a_node_with_another_separator_waits_for_the_layout_to_be_free() {
    let redis = RedisServer::start();
    let connect = |retention| {
        let url = redis.url();
        async move {
            let (publications, rx) = Publications::channel(10_000);
            let store = RedisStore::connect(&RedisTarget::Single(url), retention, publications)
                .await
                .expect("connects");
            (store, rx)
        }
    };
    let (old, _) = connect(retention(1000)).await;
    old.ping().await.unwrap();
    let before = append(&old, "m:a", &["a1", "a2"]).await;
    let (new, _) = connect(streams_on(1000, 1000)).await;
    let refused = new.ping().await.unwrap_err().to_string();
    assert!(refused.contains("no --stream-separator"), "{refused}");
    assert!(matches!(
        new.append("m:a", &[payment("m:a", "a3")]).await,
        Err(StoreError::Unavailable(_))
    ));
    assert_eq!(
        old.read("m:a", None, 10).await.unwrap().position.seq,
        2,
        "nothing stored"
    );
    // The old nodes stop and give their claim back.
    old.release().await;
    new.ping().await.expect("the layout is claimed once free");
    let after = append(&new, "m:a", &["a3"]).await;
    assert!(
        after[0].id().epoch > before[1].id().epoch,
        "a new, larger epoch"
    );
    assert_eq!(after[0].id().seq, 1);
    let page = new.read("m:a", Some(before[1].id()), 10).await.unwrap();
    assert!(
        page.truncated,
        "a since from the old layout reads as truncated"
    );
    assert!(new.ping().await.is_ok());

    // Back to the old layout after the new node died without giving its
    // claim back: refused until that claim lapses (its deadline is set in
    // the past here). The old keys still hold the first history, but
    // payments went elsewhere meanwhile: it is not resumed but starts
    // afresh, and a since from it reads as truncated, never as complete.
    let (back, _) = connect(retention(1000)).await;
    assert!(
        back.ping().await.is_err(),
        "a dead node's claim holds until it lapses"
    );
    drop(new);
    let claims = redis.cli(&["hkeys", "tidings:{layout}:claims"]);
    let nodes: Vec<&str> = claims.lines().filter(|k| k.starts_with("n:")).collect();
    assert_eq!(nodes.len(), 1, "{claims}");
    redis.cli(&["hset", "tidings:{layout}:claims", nodes[0], "1"]);
    back.ping().await.unwrap();
    let again = append(&back, "m:a", &["a4"]).await;
    assert_eq!(again[0].id().seq, 1, "the old history is not resumed");
    assert!(again[0].id().epoch > after[0].id().epoch);
    let page = back.read("m:a", Some(before[1].id()), 10).await.unwrap();
    assert!(page.truncated);
}
