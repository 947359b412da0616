//! Property tests (proptest, stable toolchain, part of `cargo test`) for the
//! parsers the fuzz targets in `fuzz/` exercise: event ids and positions,
//! the ingest body, and the subscribe payload. Round trips, and "a rejected
//! input changes nothing": a batch with one bad item is refused whole by
//! the real router, and the store holds nothing of it afterwards.
//!
//! The properties hold for every input, so a random seed cannot make them
//! flaky; proptest's default of 256 cases keeps the run to a few seconds.

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use proptest::prelude::*;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use tidings::auth::{Access, BearerKeys};
use tidings::http::connections::ConnectionLimits;
use tidings::http::ingest::{FIELDS, MAX_KEY_BYTES, MAX_TIMESTAMP_SECONDS, parse_batch};
use tidings::http::state::{Credentials, Limits};
use tidings::http::{self, App, SOCKET_PATH};
use tidings::model::{
    DedupeKey, ErrorCode, EventId, MAX_SAFE_INTEGER, NewPayment, PaymentData, PaymentStatus,
    Position,
};
use tidings::realtime::protocol::SubscribeRequest;
use tidings::store::{HistoryStore, MemoryStore, PublicationStream, Publications, Retention};
use tower::ServiceExt;

const TOKEN: &str = "props-token";
const MAX_BATCH: usize = 1000;

// ---------------------------------------------------------------- event ids

/// Strings near the id grammar: digits, signs, dashes, zeros, spaces.
fn id_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9+\\- ]{0,24}",
        "(0|[1-9][0-9]{0,20})-(0|[1-9][0-9]{0,20})",
        // Signs and leading zeros, which u64::from_str alone would accept.
        "[+0]?[0-9]{1,3}-[+0]?[0-9]{1,3}",
        ".{0,24}",
    ]
}

/// Whether `s` is `"{epoch}-{seq}"` of some u64 pair with seq ≥ 1, read
/// without the parser's code.
fn canonical(s: &str) -> Option<EventId> {
    let (e, q) = s.split_once('-')?;
    let id = EventId {
        epoch: e.parse().ok()?,
        seq: q.parse().ok()?,
    };
    (id.seq >= 1 && format!("{}-{}", id.epoch, id.seq) == s).then_some(id)
}

proptest! {
    #[test]
    fn an_event_id_displays_and_parses_back(epoch: u64, seq in 1..=u64::MAX) {
        let id = EventId { epoch, seq };
        prop_assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
    }

    #[test]
    fn a_string_parses_to_an_id_that_displays_back_or_is_rejected(s in id_like()) {
        match s.parse::<EventId>() {
            Ok(id) => {
                prop_assert_eq!(id.to_string(), s.clone());
                prop_assert_eq!(canonical(&s), Some(id));
            }
            Err(_) => prop_assert_eq!(canonical(&s), None, "{:?} was refused", s),
        }
    }

    #[test]
    fn a_position_has_the_wire_shape_and_its_id_parses_back(epoch: u64, seq: u64) {
        let position = Position { epoch, seq };
        let wire = serde_json::to_value(position).unwrap();
        prop_assert_eq!(&wire["seq"], &json!(seq));
        if seq == 0 {
            prop_assert_eq!(&wire["id"], &Value::Null);
        } else {
            let id: EventId = wire["id"].as_str().unwrap().parse().unwrap();
            prop_assert_eq!(Position::from(id), position);
        }
    }
}

// ------------------------------------------------------------------- ingest

/// A string the contract accepts as a trackingId or key: 1 to 64 chars
/// (at most 256 bytes) of any category but Cc.
fn contract_string() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z0-9:_-]{1,64}", "[^\\p{Cc}]{1,64}",]
}

/// A string the contract accepts as a trackingId: a [`contract_string`]
/// that does not end in `*` (that is a prefix).
fn tracking_id() -> impl Strategy<Value = String> {
    contract_string().prop_filter("a trackingId never ends in *", |s| !s.ends_with('*'))
}

fn status() -> impl Strategy<Value = PaymentStatus> {
    prop_oneof![
        Just(PaymentStatus::Executed),
        Just(PaymentStatus::Failed),
        Just(PaymentStatus::Pending),
    ]
}

/// A valid payment: what parse_batch must give back for it, and its JSON.
#[derive(Debug, Clone)]
struct Valid {
    payment: NewPayment,
    idempotency_key: Option<String>,
}

impl Valid {
    fn json(&self) -> Value {
        let d = &self.payment.data;
        let mut item = json!({
            "trackingId": d.tracking_id, "amount": d.amount,
            "timestamp": d.timestamp, "status": d.status,
        });
        if let Some(sig) = &d.signature {
            item["signature"] = json!(sig);
        }
        if let Some(key) = &self.idempotency_key {
            item["idempotencyKey"] = json!(key);
        }
        item
    }
}

fn valid_payment(tracking_id: impl Strategy<Value = String>) -> impl Strategy<Value = Valid> {
    (
        tracking_id,
        0..=MAX_SAFE_INTEGER,
        0..=MAX_TIMESTAMP_SECONDS,
        status(),
        proptest::option::of(contract_string()),
        proptest::option::of(contract_string()),
    )
        .prop_filter("a signature or an idempotencyKey", |(.., sig, key)| {
            sig.is_some() || key.is_some()
        })
        .prop_map(|(tracking_id, amount, timestamp, status, signature, key)| {
            let dedupe = match (&key, &signature) {
                (Some(k), _) => DedupeKey::Idempotency(k.clone()),
                (None, Some(s)) => DedupeKey::Signature(s.clone()),
                (None, None) => unreachable!("filtered out"),
            };
            Valid {
                payment: NewPayment {
                    data: PaymentData {
                        tracking_id,
                        amount,
                        timestamp,
                        status,
                        signature,
                    },
                    dedupe,
                },
                idempotency_key: key,
            }
        })
}

/// One way to spoil a valid item; each is a refusal of the contract.
#[derive(Debug, Clone)]
enum Spoil {
    TrackingId(Value),
    Amount(Value),
    Timestamp(Value),
    Status(Value),
    Signature(Value),
    IdempotencyKey(Value),
    NoDedupeKey,
    UnknownField(String),
    NotAnObject(Value),
}

fn spoil() -> impl Strategy<Value = Spoil> {
    let control = proptest::char::ranges(vec!['\u{0}'..='\u{1f}', '\u{7f}'..='\u{9f}'].into());
    prop_oneof![
        Just(Spoil::TrackingId(json!(""))),
        Just(Spoil::TrackingId(json!("a".repeat(257)))),
        control.prop_map(|c| Spoil::TrackingId(json!(format!("a{c}b")))),
        any::<i64>().prop_map(|n| Spoil::TrackingId(json!(n))),
        Just(Spoil::TrackingId(Value::Null)),
        (MAX_SAFE_INTEGER + 1..=u64::MAX).prop_map(|n| Spoil::Amount(json!(n))),
        (i64::MIN..0).prop_map(|n| Spoil::Amount(json!(n))),
        Just(Spoil::Amount(json!(1.5))),
        Just(Spoil::Amount(json!("100"))),
        (MAX_TIMESTAMP_SECONDS + 1..=u64::MAX).prop_map(|n| Spoil::Timestamp(json!(n))),
        Just(Spoil::Timestamp(Value::Null)),
        "[a-z]{0,10}"
            .prop_filter("not a status", |s| PaymentStatus::parse(s).is_none())
            .prop_map(|s| Spoil::Status(json!(s))),
        Just(Spoil::Signature(json!(""))),
        Just(Spoil::Signature(json!("s".repeat(MAX_KEY_BYTES + 1)))),
        Just(Spoil::IdempotencyKey(json!(5))),
        Just(Spoil::NoDedupeKey),
        "[a-z]{1,12}"
            .prop_filter("not a field", |k| !FIELDS.contains(&k.as_str()))
            .prop_map(Spoil::UnknownField),
        prop_oneof![
            Just(json!(null)),
            Just(json!("x")),
            Just(json!([1])),
            Just(json!(7))
        ]
        .prop_map(Spoil::NotAnObject),
    ]
}

impl Spoil {
    fn apply(&self, mut item: Value) -> Value {
        let mut set = |k: &str, v: &Value| {
            if v.is_null() {
                item.as_object_mut().unwrap().remove(k);
            } else {
                item[k] = v.clone();
            }
        };
        match self {
            Spoil::TrackingId(v) => set("trackingId", v),
            Spoil::Amount(v) => set("amount", v),
            Spoil::Timestamp(v) => set("timestamp", v),
            Spoil::Status(v) => set("status", v),
            Spoil::Signature(v) => set("signature", v),
            Spoil::IdempotencyKey(v) => set("idempotencyKey", v),
            Spoil::NoDedupeKey => {
                set("signature", &Value::Null);
                set("idempotencyKey", &Value::Null);
            }
            Spoil::UnknownField(k) => set(k, &json!(1)),
            Spoil::NotAnObject(v) => return v.clone(),
        }
        item
    }
}

/// A real router (every middleware, the Socket.IO layer) on a memory store.
struct Node {
    rt: tokio::runtime::Runtime,
    router: Router,
    store: Arc<MemoryStore>,
    _publications: PublicationStream,
}

static NODE: LazyLock<Node> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (publications, stream) = Publications::channel(1024);
    let retention = Retention {
        max_events: 1000,
        stream_max_events: 10_000,
        streams: tidings::model::Streams::OFF,
        history_ttl_ms: 3_600_000,
        dedupe_ttl_ms: 3_600_000,
    };
    let store = Arc::new(MemoryStore::new(retention, publications));
    let router = rt.block_on(async {
        let (layer, _io) = SocketIo::builder().req_path(SOCKET_PATH).build_layer();
        let credentials = Credentials {
            ingest_tokens: BearerKeys::new(&[TOKEN]),
            api_keys: BearerKeys::default(),
            access: Access::Open,
            slowdown: Default::default(),
        };
        let limits = Limits {
            max_body: 1 << 20,
            max_batch: MAX_BATCH,
            max_subscriptions: 100,
            streams: tidings::model::Streams::OFF,
        };
        let metrics = tidings::telemetry::Exporter::new(|| (0, 0));
        let app = Arc::new(App::new(
            store.clone(),
            credentials,
            limits,
            metrics,
            None,
            None,
        ));
        let connections = ConnectionLimits::new(SOCKET_PATH, usize::MAX, None);
        let trusted = Default::default();
        http::app(app, layer, connections, trusted, &["*".to_owned()])
    });
    Node {
        rt,
        router,
        store,
        _publications: stream,
    }
});

impl Node {
    /// `POST /v1/payments` with `body`; the status and the JSON answer.
    fn ingest(&self, body: &Value) -> (StatusCode, Value) {
        let req = Request::post("/v1/payments")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.rt.block_on(async {
            let res = self.router.clone().oneshot(req).await.unwrap();
            let status = res.status();
            let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, serde_json::from_slice(&bytes).unwrap())
        })
    }

    /// How many events the store holds for `tracking_id`, and its position.
    fn held(&self, tracking_id: &str) -> (usize, Position) {
        self.rt.block_on(async {
            let page = self.store.read(tracking_id, None, 10_000).await.unwrap();
            (page.events.len(), page.position)
        })
    }
}

/// A batch for trackingIds of their own: `tag` keeps every case apart, so
/// that "the store holds nothing" is about this case only.
fn batch(tag: &'static str) -> impl Strategy<Value = Vec<Valid>> {
    let tid = (any::<u64>(), 0..4u8).prop_map(move |(case, n)| format!("{tag}-{case:x}-{n}"));
    proptest::collection::vec(valid_payment(tid), 1..12)
}

fn body_of(items: &[Valid], single: bool) -> Value {
    match items {
        [one] if single => one.json(),
        _ => Value::Array(items.iter().map(Valid::json).collect()),
    }
}

proptest! {
    #[test]
    fn a_valid_batch_round_trips_through_parse_batch(
        items in proptest::collection::vec(valid_payment(tracking_id()), 1..20),
        single: bool,
    ) {
        let body = body_of(&items, single).to_string();
        let parsed = parse_batch(body.as_bytes(), MAX_BATCH).map_err(|e| e.details().to_vec());
        let expected: Vec<NewPayment> = items.iter().map(|v| v.payment.clone()).collect();
        prop_assert_eq!(parsed, Ok(expected));
    }

    #[test]
    fn a_batch_with_one_bad_item_is_refused_whole_and_changes_nothing(
        items in batch("bad"),
        at in any::<prop::sample::Index>(),
        how in spoil(),
    ) {
        let at = at.index(items.len());
        let mut body: Vec<Value> = items.iter().map(Valid::json).collect();
        body[at] = how.apply(body[at].clone());
        let body = Value::Array(body);

        let err = parse_batch(body.to_string().as_bytes(), MAX_BATCH).unwrap_err();
        prop_assert_eq!(err.code(), ErrorCode::InvalidPayload);
        let details = err.details();
        prop_assert!(!details.is_empty());
        prop_assert!(details.iter().all(|d| d.index == at), "{:?}", details);

        let (status, answer) = NODE.ingest(&body);
        prop_assert_eq!(status, StatusCode::BAD_REQUEST);
        prop_assert_eq!(&answer["error"]["code"], "INVALID_PAYLOAD");
        prop_assert!(answer["error"]["details"].as_array().is_some_and(|d| !d.is_empty()));
        for item in &items {
            let tid = &item.payment.data.tracking_id;
            prop_assert_eq!(NODE.held(tid), (0, Position::NONE), "{} after {:?}", tid, how);
        }
    }

    /// The control of the property above: the same router and store do
    /// keep a valid batch, so an empty history there means something.
    #[test]
    fn a_valid_batch_is_stored_by_the_router(items in batch("good")) {
        let (status, answer) = NODE.ingest(&body_of(&items, false));
        prop_assert_eq!(status, StatusCode::ACCEPTED, "{}", answer);
        prop_assert_eq!(answer["data"].as_array().map(Vec::len), Some(items.len()));
        let mut tids: Vec<&str> = items.iter().map(|v| v.payment.data.tracking_id.as_str()).collect();
        tids.sort_unstable();
        tids.dedup();
        let stored: usize = tids.iter().map(|t| NODE.held(t).0).sum();
        let fresh: Vec<_> = answer["data"].as_array().unwrap().iter().filter(|e| e["duplicate"] == false).collect();
        prop_assert_eq!(stored, fresh.len());
        prop_assert!(stored >= 1);
    }
}

// -------------------------------------------------------- subscribe payload

fn code_of(payload: &Value, with_since: bool) -> Result<SubscribeRequest, ErrorCode> {
    SubscribeRequest::parse(Some(payload), with_since, tidings::model::Streams::OFF)
        .map_err(|(code, _)| code)
}

proptest! {
    #[test]
    fn a_valid_subscribe_parses_to_its_tracking_id_and_since(
        tracking_id in tracking_id(),
        since in proptest::option::of((any::<u64>(), 1..=u64::MAX)),
        null_since: bool,
    ) {
        let since = since.map(|(epoch, seq)| EventId { epoch, seq });
        let mut payload = json!({ "trackingId": tracking_id });
        match since {
            Some(id) => payload["since"] = json!(id.to_string()),
            None if null_since => payload["since"] = Value::Null,
            None => {}
        }
        prop_assert_eq!(
            code_of(&payload, true),
            Ok(SubscribeRequest { tracking_id: tracking_id.clone(), since, filter: None })
        );
        // unsubscribe reads the trackingId and ignores since.
        prop_assert_eq!(
            code_of(&payload, false),
            Ok(SubscribeRequest { tracking_id, since: None, filter: None })
        );
    }

    #[test]
    fn a_payload_that_is_not_an_object_is_invalid_payload(
        v in prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,20}".prop_map(Value::from),
            proptest::collection::vec(".{0,8}".prop_map(Value::from), 0..4).prop_map(Value::from),
        ],
    ) {
        prop_assert_eq!(code_of(&v, true), Err(ErrorCode::InvalidPayload));
    }

    #[test]
    fn a_bad_tracking_id_is_invalid_tracking_id(
        bad in prop_oneof![
            Just(json!("")),
            Just(json!("€".repeat(86))),
            proptest::char::ranges(vec!['\u{0}'..='\u{1f}', '\u{7f}'..='\u{9f}'].into())
                .prop_map(|c| json!(format!("id{c}"))),
            any::<i64>().prop_map(|n| json!(n)),
            Just(json!(null)),
            Just(json!(["sub-1"])),
            tracking_id().prop_map(|s| json!(format!("{s}*"))),
        ],
        since in id_like(),
    ) {
        // The trackingId is checked first, whatever since holds.
        let payload = json!({ "trackingId": bad, "since": since });
        prop_assert_eq!(code_of(&payload, true), Err(ErrorCode::InvalidTrackingId));
        prop_assert_eq!(code_of(&payload, false), Err(ErrorCode::InvalidTrackingId));
    }

    #[test]
    fn a_bad_since_is_invalid_since(
        tracking_id in tracking_id(),
        since in prop_oneof![
            id_like().prop_filter("not an id", |s| canonical(s).is_none()).prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            Just(json!(true)),
            Just(json!({"epoch": 1, "seq": 1})),
        ],
    ) {
        let payload = json!({ "trackingId": tracking_id, "since": since });
        prop_assert_eq!(code_of(&payload, true), Err(ErrorCode::InvalidSince));
        prop_assert!(code_of(&payload, false).is_ok(), "unsubscribe ignores since");
    }
}
