//! The hub alone: a recording [`Subscriber`], the memory store behind a
//! gate that can hold a read back once it has read, and publications
//! relayed by hand, so that each test decides which publication the hub
//! gets, which it never sees, and when a store read returns. No sockets,
//! no Redis, no timing: every wait is for an event, bounded.
//!
//! Why this file is long: one scenario per race the hub must survive, each
//! set up in full where it is read.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::value::RawValue;
use tokio::sync::{Notify, oneshot};

use super::*;
use crate::model::{
    DedupeKey, Envelope, ErrorCode, ErrorData, NewPayment, PaymentData, PaymentStatus, StatusFilter,
};
use crate::store::{
    Appended, HistoryPage, MemoryStore, PublicationStream, Publications, Retention,
};

/// How long any wait of a test may take before it fails.
const PATIENCE: Duration = Duration::from_secs(5);

/// What a subscriber was handed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Payment(EventId),
    /// An `error` envelope: its code.
    Error(ErrorCode),
}

/// A payment's seq and its `prevSeq`, as a subscriber was handed it.
type Chained = (u64, Option<u64>);

/// A subscriber that records what it is handed.
#[derive(Clone)]
struct Recorder {
    id: u32,
    log: Arc<Mutex<Vec<Got>>>,
    /// Each payment's seq and `prevSeq` (filtered subscriptions only).
    prev: Arc<Mutex<Vec<Chained>>>,
    /// Payments (by seq) it refuses, as a socket whose buffer is full.
    refuse: Arc<Mutex<HashSet<u64>>>,
    changed: Arc<Notify>,
    connected: Arc<AtomicBool>,
}

impl Recorder {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        Recorder {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            log: Arc::default(),
            prev: Arc::default(),
            refuse: Arc::default(),
            changed: Arc::default(),
            connected: Arc::new(AtomicBool::new(true)),
        }
    }

    fn got(&self) -> Vec<Got> {
        self.log.lock().unwrap().clone()
    }

    fn payments(&self) -> Vec<u64> {
        self.got()
            .iter()
            .filter_map(|g| match g {
                Got::Payment(id) => Some(id.seq),
                Got::Error(_) => None,
            })
            .collect()
    }

    fn record(&self, got: Got) {
        self.log.lock().unwrap().push(got);
        self.changed.notify_waiters();
    }

    /// Waits until what was handed over satisfies `done`.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Got]) -> bool) {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                let mut changed = std::pin::pin!(changed);
                changed.as_mut().enable();
                if done(&self.got()) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(PATIENCE, wait).await.is_err() {
            panic!("subscriber {}: {what}; got {:?}", self.id, self.got());
        }
    }

    async fn wait_for_seqs(&self, seqs: &[u64]) {
        let want = seqs.to_vec();
        self.wait_for(&format!("payments {want:?}"), |_| {
            self.payments().len() >= want.len()
        })
        .await;
        assert_eq!(self.payments(), want, "subscriber {}", self.id);
    }
}

impl Subscriber for Recorder {
    type Id = u32;

    fn id(&self) -> u32 {
        self.id
    }

    fn send_payment(&self, envelope: &RawValue) -> bool {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Head {
            id: String,
            seq: u64,
            prev_seq: Option<u64>,
        }
        let head: Head = serde_json::from_str(envelope.get()).unwrap();
        if self.refuse.lock().unwrap().contains(&head.seq) {
            return false;
        }
        self.prev.lock().unwrap().push((head.seq, head.prev_seq));
        self.record(Got::Payment(head.id.parse().unwrap()));
        true
    }

    fn send_error(&self, envelope: &Envelope<ErrorData>) -> bool {
        self.record(Got::Error(envelope.data.code));
        true
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }
}

/// A read held back after it has read: the test acts while the hub waits
/// for it.
struct HeldRead {
    reached: oneshot::Receiver<()>,
    release: oneshot::Sender<()>,
}

impl HeldRead {
    async fn reached(&mut self) {
        tokio::time::timeout(PATIENCE, &mut self.reached)
            .await
            .expect("the held read was reached")
            .unwrap();
    }

    fn release(self) {
        let _ = self.release.send(());
    }
}

/// The memory store, with reads that can be held back, counted reads, and
/// the trackingIds listened to.
struct Gate {
    inner: MemoryStore,
    hold: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
    reads: AtomicUsize,
    listening: Mutex<HashSet<String>>,
    hold_before: AtomicBool,
}

impl Gate {
    fn hold_next_read(&self) -> HeldRead {
        let (reached_tx, reached) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        *self.hold.lock().unwrap() = Some((reached_tx, release_rx));
        HeldRead { reached, release }
    }

    /// As [`Gate::hold_next_read`], held before it reads.
    fn hold_next_read_before_reading(&self) -> HeldRead {
        self.hold_before.store(true, Ordering::SeqCst);
        self.hold_next_read()
    }

    async fn wait_if_held(&self) {
        let held = self.hold.lock().unwrap().take();
        if let Some((reached, release)) = held {
            let _ = reached.send(());
            let _ = release.await;
        }
    }

    fn listens_to(&self, tracking_id: &str) -> bool {
        self.listening.lock().unwrap().contains(tracking_id)
    }
}

#[async_trait]
impl HistoryStore for Gate {
    async fn append(
        &self,
        tracking_id: &str,
        payments: &[NewPayment],
    ) -> Result<Vec<Appended>, StoreError> {
        self.inner.append(tracking_id, payments).await
    }

    async fn read(
        &self,
        tracking_id: &str,
        since: Option<EventId>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.hold_before.swap(false, Ordering::SeqCst) {
            self.wait_if_held().await;
            return self.inner.read(tracking_id, since, limit).await;
        }
        let page = self.inner.read(tracking_id, since, limit).await;
        self.wait_if_held().await;
        page
    }

    async fn listen(&self, tracking_id: &str) -> Result<(), StoreError> {
        self.listening
            .lock()
            .unwrap()
            .insert(tracking_id.to_owned());
        Ok(())
    }

    async fn unlisten(&self, tracking_id: &str) {
        self.listening.lock().unwrap().remove(tracking_id);
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A hub, its store, and the relay between the store's publications and
/// the hub.
struct Bench {
    gate: Arc<Gate>,
    hub: Arc<Hub<Recorder>>,
    from_store: PublicationStream,
    to_hub: Publications,
    signed: AtomicU32,
}

impl Bench {
    fn new() -> Self {
        Self::retaining(1000)
    }

    fn retaining(max_events: usize) -> Self {
        let retention = Retention {
            max_events,
            stream_max_events: 10_000,
            streams: crate::model::Streams::OFF,
            history_ttl_ms: 3_600_000,
            dedupe_ttl_ms: 3_600_000,
        };
        let (published, from_store) = Publications::channel(100_000);
        let gate = Arc::new(Gate {
            inner: MemoryStore::new(retention, published),
            hold: Mutex::default(),
            reads: AtomicUsize::new(0),
            listening: Mutex::default(),
            hold_before: AtomicBool::new(false),
        });
        let (to_hub, hub_stream) = Publications::channel(100_000);
        let hub = Hub::new(gate.clone(), max_events);
        tokio::spawn(hub.clone().run(hub_stream));
        Bench {
            gate,
            hub,
            from_store,
            to_hub,
            signed: AtomicU32::new(0),
        }
    }

    /// Stores `n` payments for `tracking_id`, one call each; their ids.
    async fn append(&self, tracking_id: &str, n: usize) -> Vec<EventId> {
        self.append_statuses(tracking_id, &vec![PaymentStatus::Executed; n])
            .await
    }

    /// Stores one payment of each status for `tracking_id`, one call
    /// each; their ids.
    async fn append_statuses(&self, tracking_id: &str, statuses: &[PaymentStatus]) -> Vec<EventId> {
        let mut ids = Vec::new();
        for &status in statuses {
            let sig = format!("sig-{}", self.signed.fetch_add(1, Ordering::Relaxed));
            let payment = NewPayment {
                data: PaymentData {
                    tracking_id: tracking_id.to_owned(),
                    amount: 1,
                    timestamp: 1,
                    status,
                    signature: Some(sig.clone()),
                },
                dedupe: DedupeKey::Signature(sig),
            };
            let appended = self.gate.append(tracking_id, &[payment]).await.unwrap();
            ids.push(appended[0].id());
        }
        ids
    }

    /// The store's next publication.
    async fn next(&mut self) -> crate::store::Publication {
        match tokio::time::timeout(PATIENCE, self.from_store.next()).await {
            Ok(Some(Signal::Publication(p))) => p,
            _ => panic!("no publication from the store"),
        }
    }

    /// Hands the store's next `n` publications to the hub, and waits until
    /// the hub has handled them.
    async fn pass(&mut self, n: usize) {
        for _ in 0..n {
            let p = self.next().await;
            self.to_hub.publish(p);
        }
        self.flush().await;
    }

    /// The hub never sees the store's next publication.
    async fn lose(&mut self) {
        self.next().await;
    }

    /// The store's next publication is dropped from the hub's queue (a
    /// full delivery buffer): the hub is told which trackingId.
    async fn drop_one(&mut self) {
        let p = self.next().await;
        self.to_hub.lost(p.tracking_id);
    }

    async fn flush(&self) {
        tokio::time::timeout(PATIENCE, self.to_hub.flush())
            .await
            .expect("the hub handled its publications in time");
    }

    /// Subscribes `sub`, returning the ack's position.
    async fn subscribe(&self, sub: &Recorder, tid: &str, since: Option<EventId>) -> Position {
        subscribe(&self.hub, sub, tid, since).await
    }
}

async fn subscribe(
    hub: &Arc<Hub<Recorder>>,
    sub: &Recorder,
    tid: &str,
    since: Option<EventId>,
) -> Position {
    subscribe_filtered(hub, sub, tid, since, None).await
}

async fn subscribe_filtered(
    hub: &Arc<Hub<Recorder>>,
    sub: &Recorder,
    tid: &str,
    since: Option<EventId>,
    filter: Option<StatusFilter>,
) -> Position {
    let acked = Arc::new(Mutex::new(None));
    let ack = {
        let acked = acked.clone();
        move |position| *acked.lock().unwrap() = Some(position)
    };
    tokio::time::timeout(
        PATIENCE,
        hub.subscribe_filtered(sub, tid, since, filter, ack),
    )
    .await
    .expect("subscribe completed in time")
    .unwrap();
    let position = acked.lock().unwrap().take();
    position.expect("acked")
}

fn at(id: EventId) -> Position {
    id.into()
}

#[tokio::test]
async fn the_ack_carries_the_position_and_live_payments_follow_it() {
    let mut bench = Bench::new();
    let ids = bench.append("t", 3).await;
    bench.pass(3).await; // nobody follows "t" yet: ignored

    let a = Recorder::new();
    assert_eq!(bench.subscribe(&a, "t", None).await, at(ids[2]));
    assert_eq!(a.got(), [], "no replay without since");

    let next = bench.append("t", 1).await;
    bench.pass(1).await;
    a.wait_for_seqs(&[4]).await;

    // A second subscriber on a followed trackingId: the cursor is its
    // position, without a store read.
    let reads = bench.gate.reads.load(Ordering::SeqCst);
    let b = Recorder::new();
    assert_eq!(bench.subscribe(&b, "t", None).await, at(next[0]));
    assert_eq!(bench.gate.reads.load(Ordering::SeqCst), reads);

    // A repeated subscribe acks the position at that moment, and is one
    // subscription: the next payment comes once.
    assert_eq!(bench.subscribe(&a, "t", None).await, at(next[0]));
    bench.append("t", 1).await;
    bench.pass(1).await;
    a.wait_for_seqs(&[4, 5]).await;
    b.wait_for_seqs(&[5]).await;

    // No history: no id, seq 0.
    let c = Recorder::new();
    assert_eq!(bench.subscribe(&c, "fresh", None).await, Position::NONE);
}

#[tokio::test]
async fn a_replay_hands_over_to_the_live_payments_that_raced_it() {
    let mut bench = Bench::new();
    let ids = bench.append("t", 5).await;
    bench.pass(5).await;
    let live = Recorder::new();
    bench.subscribe(&live, "t", None).await;

    // The replay is read (up to seq 5), then held while 6 and 7 are
    // delivered to the room.
    let mut held = bench.gate.hold_next_read();
    let replaying = Recorder::new();
    let task = {
        let (hub, sub) = (bench.hub.clone(), replaying.clone());
        let since = ids[1];
        tokio::spawn(async move { subscribe(&hub, &sub, "t", Some(since)).await })
    };
    held.reached().await;
    bench.append("t", 2).await;
    bench.pass(2).await;
    live.wait_for_seqs(&[6, 7]).await;
    assert_eq!(replaying.got(), [], "nothing before the ack");

    held.release();
    let position = task.await.unwrap();
    assert_eq!(position.seq, 5, "the position when the replay was read");
    replaying.wait_for_seqs(&[3, 4, 5, 6, 7]).await;

    bench.append("t", 1).await;
    bench.pass(1).await;
    replaying.wait_for_seqs(&[3, 4, 5, 6, 7, 8]).await;
    live.wait_for_seqs(&[6, 7, 8]).await;
}

#[tokio::test]
async fn the_first_subscriber_misses_nothing_stored_between_its_listen_and_its_read() {
    let mut bench = Bench::new();
    let ids = bench.append("t", 4).await;
    bench.pass(4).await;

    let mut held = bench.gate.hold_next_read();
    let sub = Recorder::new();
    let task = {
        let (hub, sub) = (bench.hub.clone(), sub.clone());
        let since = ids[1];
        tokio::spawn(async move { subscribe(&hub, &sub, "t", Some(since)).await })
    };
    held.reached().await;
    assert!(bench.gate.listens_to("t"), "listened before reading");
    bench.append("t", 1).await;
    bench.pass(1).await;

    held.release();
    assert_eq!(task.await.unwrap().seq, 4);
    sub.wait_for_seqs(&[3, 4, 5]).await;
}

#[tokio::test]
async fn a_seq_jump_is_caught_up_from_the_history_in_order() {
    let mut bench = Bench::new();
    bench.append("t", 1).await;
    bench.pass(1).await;
    let sub = Recorder::new();
    bench.subscribe(&sub, "t", None).await;

    bench.append("t", 2).await;
    bench.lose().await; // 2 never reaches this node
    bench.pass(1).await; // 3 does: a jump
    sub.wait_for_seqs(&[2, 3]).await;
    assert!(!sub.got().contains(&Got::Error(ErrorCode::HistoryTruncated)));

    // Back in step: the next one is live.
    bench.append("t", 1).await;
    bench.pass(1).await;
    sub.wait_for_seqs(&[2, 3, 4]).await;
}

#[tokio::test]
async fn a_dropped_publication_is_caught_up_without_waiting_for_the_next() {
    let mut bench = Bench::new();
    let sub = Recorder::new();
    bench.subscribe(&sub, "t", None).await;
    bench.append("t", 1).await;
    bench.drop_one().await;
    sub.wait_for_seqs(&[1]).await;
}

#[tokio::test]
async fn a_resync_catches_every_followed_trackingid_up() {
    let mut bench = Bench::new();
    let (a, b) = (Recorder::new(), Recorder::new());
    bench.subscribe(&a, "a", None).await;
    bench.subscribe(&b, "b", None).await;
    bench.append("a", 2).await;
    bench.append("b", 1).await;
    for _ in 0..3 {
        bench.lose().await;
    }
    bench.to_hub.resync();
    a.wait_for_seqs(&[1, 2]).await;
    b.wait_for_seqs(&[1]).await;
}

#[tokio::test]
async fn what_is_no_longer_retained_is_announced_as_history_truncated() {
    let mut bench = Bench::retaining(3);
    let ids = bench.append("t", 6).await;
    bench.pass(6).await;

    // A since older than what is retained: ack, warning, then the oldest
    // retained onwards.
    let sub = Recorder::new();
    assert_eq!(bench.subscribe(&sub, "t", Some(ids[0])).await, at(ids[5]));
    sub.wait_for("the replay", |got| got.len() >= 4).await;
    assert_eq!(
        sub.got(),
        [
            Got::Error(ErrorCode::HistoryTruncated),
            Got::Payment(ids[3]),
            Got::Payment(ids[4]),
            Got::Payment(ids[5]),
        ]
    );

    // A catch-up that finds events gone: the room is warned, then gets
    // what is retained.
    let later = bench.append("t", 5).await;
    for _ in 0..4 {
        bench.lose().await;
    }
    bench.pass(1).await;
    sub.wait_for("the catch-up", |got| got.len() >= 8).await;
    assert_eq!(
        sub.got()[4..],
        [
            Got::Error(ErrorCode::HistoryTruncated),
            Got::Payment(later[2]),
            Got::Payment(later[3]),
            Got::Payment(later[4]),
        ]
    );
}

#[tokio::test]
async fn an_unsubscribe_racing_a_first_subscribe_leaves_nothing_behind() {
    let mut bench = Bench::new();
    let mut held = bench.gate.hold_next_read();
    let sub = Recorder::new();
    let subscribing = {
        let (hub, sub) = (bench.hub.clone(), sub.clone());
        tokio::spawn(async move { subscribe(&hub, &sub, "t", None).await })
    };
    held.reached().await;
    // A disconnect while the first read is in flight, then the session's
    // own unsubscribe once its subscribe returns.
    let unsubscribing = {
        let hub = bench.hub.clone();
        let id = sub.id();
        tokio::spawn(async move { hub.unsubscribe(id, "t").await })
    };
    tokio::task::yield_now().await;
    held.release();
    subscribing.await.unwrap();
    tokio::time::timeout(PATIENCE, unsubscribing)
        .await
        .unwrap()
        .unwrap();
    bench.hub.unsubscribe(sub.id(), "t").await;

    assert_eq!(bench.hub.topics(), 0, "the topic is retired");
    assert!(!bench.gate.listens_to("t"), "and no longer listened to");
    bench.append("t", 1).await;
    bench.pass(1).await;
    assert_eq!(sub.got(), []);

    // Subscribing again starts afresh.
    assert_eq!(bench.subscribe(&sub, "t", None).await.seq, 1);
    assert!(bench.gate.listens_to("t"));
}

#[tokio::test]
async fn an_unsubscribe_during_a_replay_keeps_the_replay_out_of_the_room() {
    let mut bench = Bench::new();
    let ids = bench.append("t", 2).await;
    bench.pass(2).await;
    let stays = Recorder::new();
    bench.subscribe(&stays, "t", None).await;

    let mut held = bench.gate.hold_next_read();
    let leaves = Recorder::new();
    let task = {
        let (hub, sub) = (bench.hub.clone(), leaves.clone());
        let since = ids[0];
        tokio::spawn(async move { subscribe(&hub, &sub, "t", Some(since)).await })
    };
    held.reached().await;
    bench.hub.unsubscribe(leaves.id(), "t").await;
    held.release();
    task.await.unwrap();

    bench.append("t", 1).await;
    bench.pass(1).await;
    stays.wait_for_seqs(&[3]).await;
    assert_eq!(leaves.payments(), [2], "its replay only, never the room");
    assert_eq!(bench.hub.subscribers("t"), 1);
}

#[tokio::test]
async fn unsubscribing_twice_takes_nothing_from_another_subscriber() {
    let mut bench = Bench::new();
    let (gone, stays) = (Recorder::new(), Recorder::new());
    bench.subscribe(&gone, "t", None).await;
    bench.subscribe(&stays, "t", None).await;
    bench.hub.unsubscribe(gone.id(), "t").await;
    bench.hub.unsubscribe(gone.id(), "t").await;

    assert_eq!(bench.hub.subscribers("t"), 1);
    assert!(bench.gate.listens_to("t"));
    bench.append("t", 1).await;
    bench.pass(1).await;
    stays.wait_for_seqs(&[1]).await;
    assert_eq!(gone.got(), []);
}

#[tokio::test]
async fn delivery_does_not_wait_for_a_subscribe_reading_the_store() {
    let mut bench = Bench::new();
    let ids = bench.append("t", 1).await;
    bench.pass(1).await;
    let live = Recorder::new();
    bench.subscribe(&live, "t", None).await;

    let mut held = bench.gate.hold_next_read();
    let slow = Recorder::new();
    let task = {
        let (hub, sub) = (bench.hub.clone(), slow.clone());
        let since = ids[0];
        tokio::spawn(async move { subscribe(&hub, &sub, "t", Some(since)).await })
    };
    held.reached().await;
    // The replay's read is in flight: a live payment still reaches the
    // room at once.
    bench.append("t", 1).await;
    bench.pass(1).await;
    live.wait_for_seqs(&[2]).await;

    held.release();
    task.await.unwrap();
    slow.wait_for_seqs(&[2]).await;
}

#[tokio::test]
async fn a_repeated_since_on_a_held_trackingid_replays_only_what_was_not_handed_over() {
    let mut bench = Bench::new();
    let ids = bench.append("t", 300).await;
    bench.pass(300).await;
    let a = Recorder::new();
    bench.subscribe(&a, "t", Some(ids[99])).await;
    let first: Vec<u64> = (101..=300).collect();
    a.wait_for_seqs(&first).await;

    // The same since, again and again: acked at the position, nothing
    // read, nothing sent again.
    let reads = bench.gate.reads.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(bench.subscribe(&a, "t", Some(ids[99])).await, at(ids[299]));
    }
    assert_eq!(
        bench.gate.reads.load(Ordering::SeqCst),
        reads,
        "no store read"
    );
    assert_eq!(a.payments(), first, "nothing re-sent");

    // An earlier since: only what lies before what it has (seq 51 to 100),
    // read once, then it follows live as before.
    assert_eq!(bench.subscribe(&a, "t", Some(ids[49])).await, at(ids[299]));
    let mut expected = first.clone();
    expected.extend(51..=100);
    a.wait_for_seqs(&expected).await;
    assert_eq!(bench.subscribe(&a, "t", Some(ids[49])).await, at(ids[299]));
    assert_eq!(bench.subscribe(&a, "t", Some(ids[200])).await, at(ids[299]));
    bench.append("t", 1).await;
    bench.pass(1).await;
    expected.push(301);
    a.wait_for_seqs(&expected).await;

    // A subscriber that joined without since has only what followed its
    // position: a since before it is a replay up to there.
    let b = Recorder::new();
    bench.subscribe(&b, "t", None).await;
    bench.subscribe(&b, "t", Some(ids[297])).await;
    b.wait_for_seqs(&[299, 300, 301]).await;
}

#[tokio::test]
async fn a_fill_hands_over_to_the_live_payments_that_raced_it_and_stops_where_it_has() {
    let mut bench = Bench::retaining(100);
    let ids = bench.append("t", 300).await;
    bench.pass(300).await;
    let a = Recorder::new();
    bench.subscribe(&a, "t", Some(ids[249])).await;
    a.wait_for_seqs(&(251..=300).collect::<Vec<_>>()).await;

    // A since older than what it has, read after 301 reached the room
    // (buffered for it meanwhile).
    let mut held = bench.gate.hold_next_read_before_reading();
    let task = {
        let (hub, sub, since) = (bench.hub.clone(), a.clone(), ids[219]);
        tokio::spawn(async move { subscribe(&hub, &sub, "t", Some(since)).await })
    };
    held.reached().await;
    bench.append("t", 1).await;
    bench.pass(1).await;
    held.release();
    task.await.unwrap();
    let mut expected: Vec<u64> = (251..=300).collect();
    expected.extend(221..=250);
    expected.push(301);
    a.wait_for_seqs(&expected).await;

    // A since no longer retained: a warning, then only what it lacks
    // (the oldest retained up to what it has), not the rest again.
    bench.subscribe(&a, "t", Some(ids[149])).await;
    expected.extend(202..=220);
    a.wait_for_seqs(&expected).await;
    let warned = a.got().contains(&Got::Error(ErrorCode::HistoryTruncated));
    assert!(warned, "HISTORY_TRUNCATED");
}

// ---------------------------------------------------------------- filters

const E: PaymentStatus = PaymentStatus::Executed;
const F: PaymentStatus = PaymentStatus::Failed;

fn failed_only() -> Option<StatusFilter> {
    StatusFilter::from_subscribe(Some(&serde_json::json!({"status": ["failed"]}))).unwrap()
}

impl Recorder {
    /// Each payment's seq and prevSeq, in the order handed over.
    fn chain(&self) -> Vec<Chained> {
        self.prev.lock().unwrap().clone()
    }
}

/// A filtered subscription is handed only matching payments, replayed and
/// live, each with the seq of the one before it (or where it started); an
/// unfiltered one beside it gets everything, without prevSeq.
#[tokio::test]
async fn a_filtered_subscription_gets_matching_payments_chained_by_prev_seq() {
    let mut bench = Bench::new();
    let ids = bench.append_statuses("t", &[E, F, E, F]).await;
    bench.pass(4).await;
    let filtered = Recorder::new();
    let plain = Recorder::new();
    let hub = bench.hub.clone();
    assert_eq!(
        subscribe_filtered(&hub, &filtered, "t", Some(ids[0]), failed_only()).await,
        at(ids[3])
    );
    bench.subscribe(&plain, "t", None).await;
    filtered.wait_for_seqs(&[2, 4]).await;
    assert_eq!(filtered.chain(), [(2, Some(1)), (4, Some(2))]);
    bench.append_statuses("t", &[E, E, F]).await;
    bench.pass(3).await;
    filtered.wait_for_seqs(&[2, 4, 7]).await;
    assert_eq!(
        filtered.chain()[2],
        (7, Some(4)),
        "the skipped ones are not a hole"
    );
    plain.wait_for_seqs(&[5, 6, 7]).await;
    assert!(plain.chain().iter().all(|(_, prev)| prev.is_none()));

    // Without since: the chain starts at the ack's position.
    let fresh = Recorder::new();
    let position = subscribe_filtered(&hub, &fresh, "t", None, failed_only()).await;
    assert_eq!(position.seq, 7);
    bench.append_statuses("t", &[F]).await;
    bench.pass(1).await;
    fresh.wait_for_seqs(&[8]).await;
    assert_eq!(fresh.chain(), [(8, Some(7))]);
}

/// After HISTORY_TRUNCATED the chain goes on from just before the oldest
/// retained payment (replay) or from where the room resumes (catch-up):
/// the client, warned, sees prevSeq jump rather than a false hole later.
#[tokio::test]
async fn a_filtered_chain_restarts_after_history_truncated() {
    let mut bench = Bench::retaining(3);
    let ids = bench.append_statuses("t", &[F, F, F, E, F, F]).await;
    bench.pass(6).await;
    let sub = Recorder::new();
    let hub = bench.hub.clone();
    subscribe_filtered(&hub, &sub, "t", Some(ids[0]), failed_only()).await;
    sub.wait_for_seqs(&[5, 6]).await;
    assert_eq!(sub.got()[0], Got::Error(ErrorCode::HistoryTruncated));
    assert_eq!(sub.chain(), [(5, Some(3)), (6, Some(5))]);

    // A catch-up that finds events gone: warned, then on from the base.
    bench.append_statuses("t", &[F, F, F, F, F]).await;
    for _ in 0..4 {
        bench.lose().await;
    }
    bench.pass(1).await;
    sub.wait_for_seqs(&[5, 6, 9, 10, 11]).await;
    assert_eq!(
        sub.chain()[2..],
        [(9, Some(8)), (10, Some(9)), (11, Some(10))]
    );
}

/// Subscribing again sets the filter anew: with since and another filter,
/// the replay is read again through it; a repeat with the same filter
/// resends nothing and the chain goes on.
#[tokio::test]
async fn a_resubscribe_replaces_the_filter() {
    let mut bench = Bench::new();
    let ids = bench.append_statuses("t", &[E, F, E]).await;
    bench.pass(3).await;
    let sub = Recorder::new();
    let hub = bench.hub.clone();
    subscribe_filtered(&hub, &sub, "t", Some(ids[0]), failed_only()).await;
    sub.wait_for_seqs(&[2]).await;
    // The same filter and since: nothing resent.
    subscribe_filtered(&hub, &sub, "t", Some(ids[0]), failed_only()).await;
    // No filter now: the replay from since, whole, without prevSeq.
    subscribe_filtered(&hub, &sub, "t", Some(ids[0]), None).await;
    sub.wait_for_seqs(&[2, 2, 3]).await;
    assert_eq!(sub.chain()[1..], [(2, None), (3, None)]);
    // Filtered again without since: from the ack's position on.
    subscribe_filtered(&hub, &sub, "t", None, failed_only()).await;
    bench.append_statuses("t", &[E, F]).await;
    bench.pass(2).await;
    sub.wait_for_seqs(&[2, 2, 3, 5]).await;
    assert_eq!(sub.chain()[3], (5, Some(3)));
}

/// A payment a subscriber could not take (its buffer was full) is not
/// counted as handed over: the resubscribe with `since` that its seq jump
/// calls for replays it, live or in a replay.
#[tokio::test]
async fn a_payment_the_subscriber_could_not_take_is_replayed_on_resubscribe() {
    let mut bench = Bench::new();
    let ids = bench.append("t", 1).await;
    bench.pass(1).await;
    let sub = Recorder::new();
    bench.subscribe(&sub, "t", Some(ids[0])).await;
    sub.refuse.lock().unwrap().insert(3);
    let ids = bench.append("t", 3).await;
    bench.pass(3).await;
    sub.wait_for_seqs(&[2, 4]).await;
    // Seen: 2, then 4. It resubscribes with since = 2.
    sub.refuse.lock().unwrap().clear();
    bench.subscribe(&sub, "t", Some(ids[0])).await;
    sub.wait_for_seqs(&[2, 4, 3]).await;

    // A replay that could not be taken whole: what it lacks is replayed
    // again on the next resubscribe.
    let late = Recorder::new();
    late.refuse.lock().unwrap().extend([3, 4]);
    bench.subscribe(&late, "t", Some(ids[0])).await;
    late.wait_for_seqs(&[]).await;
    late.refuse.lock().unwrap().clear();
    bench.subscribe(&late, "t", Some(ids[0])).await;
    late.wait_for_seqs(&[3, 4]).await;
}
