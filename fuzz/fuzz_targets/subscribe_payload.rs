//! Fuzz target: the `subscribe` / `unsubscribe` payload check,
//! `SubscribeRequest::parse`, on JSON parsed from the input and on
//! arbitrary `serde_json::Value`s built from it (biased towards objects
//! with `trackingId` and `since`, which raw JSON rarely reaches).
//!
//! Checks the contract (sections 1 and 8) against an independent reading of
//! the payload, with streams off and on (separator `:`): an accepted
//! payload's trackingId (or stream), `since` and `filter` are exactly the
//! ones given (`since` in its canonical form, `s`-marked for a stream); a
//! refused one gets the code the contract names for what is wrong with it.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tidings::model::{ErrorCode, EventId, PaymentStatus, Streams, check_tracking_id};
use tidings::realtime::protocol::SubscribeRequest;

/// A JSON value, built by `arbitrary`.
#[derive(Arbitrary, Debug)]
enum ArbValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(ArbStr),
    Array(Vec<ArbValue>),
    Object(Vec<(ArbKey, ArbValue)>),
}

#[derive(Arbitrary, Debug)]
enum ArbKey {
    TrackingId,
    Since,
    Filter,
    Status,
    Other(String),
}

/// Strings, often shaped like event ids.
#[derive(Arbitrary, Debug)]
enum ArbStr {
    Any(String),
    Id(u64, u64),
    StreamId(u64, u64),
    Parts(String, String),
    /// `<s>:*`, a stream name when `s` has no `:`.
    Stream(String),
    Status(u8),
}

impl ArbValue {
    fn build(self) -> Value {
        match self {
            ArbValue::Null => Value::Null,
            ArbValue::Bool(b) => Value::Bool(b),
            ArbValue::Int(i) => Value::from(i),
            ArbValue::Float(f) => Value::from(f),
            ArbValue::Str(s) => Value::String(match s {
                ArbStr::Any(s) => s,
                ArbStr::Id(epoch, seq) => format!("{epoch}-{seq}"),
                ArbStr::StreamId(epoch, seq) => format!("s{epoch}-{seq}"),
                ArbStr::Parts(a, b) => format!("{a}-{b}"),
                ArbStr::Stream(account) => format!("{account}:*"),
                ArbStr::Status(n) => ["executed", "failed", "pending", "Failed", ""][n as usize % 5]
                    .to_owned(),
            }),
            ArbValue::Array(items) => Value::Array(items.into_iter().map(Self::build).collect()),
            ArbValue::Object(entries) => {
                let mut map = Map::new();
                for (k, v) in entries {
                    let k = match k {
                        ArbKey::TrackingId => "trackingId".to_owned(),
                        ArbKey::Since => "since".to_owned(),
                        ArbKey::Filter => "filter".to_owned(),
                        ArbKey::Status => "status".to_owned(),
                        ArbKey::Other(k) => k,
                    };
                    map.insert(k, v.build());
                }
                Value::Object(map)
            }
        }
    }
}

/// The contract's reading of a name: `Some(is_stream)` when valid.
fn expected_name(name: &str, streams: bool) -> Option<bool> {
    let Some(prefix) = name.strip_suffix('*') else {
        return check_tracking_id(name).is_ok().then_some(false);
    };
    // A stream: an account (non-empty, ending with its only `:`) and `*`.
    let account = prefix.strip_suffix(':')?;
    let ok = streams
        && !account.is_empty()
        && !account.contains(':')
        && prefix.len() <= 256
        && !prefix.chars().any(char::is_control);
    ok.then_some(true)
}

/// The contract's reading of `since`, written independently of the server:
/// `Ok(None)` absent or null, `Ok(Some)` an id the server could have
/// written for that kind of history, `Err` anything else.
fn expected_since(v: Option<&Value>, stream: bool) -> Result<Option<EventId>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let bare = if stream {
                s.strip_prefix('s').ok_or(())?
            } else {
                s.as_str()
            };
            let (e, q) = bare.split_once('-').ok_or(())?;
            let id = EventId {
                epoch: e.parse().map_err(|_| ())?,
                seq: q.parse().map_err(|_| ())?,
            };
            // Canonical: exactly what Display writes, and seq at least 1.
            (id.seq > 0 && id.to_string() == bare)
                .then_some(Some(id))
                .ok_or(())
        }
        Some(_) => Err(()),
    }
}

/// The contract's reading of `filter`: `Ok(None)` absent or null,
/// `Ok(Some(statuses))` a valid one, `Err` anything else.
fn expected_filter(v: Option<&Value>) -> Result<Option<Vec<PaymentStatus>>, ()> {
    let map = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(()),
    };
    if map.len() != 1 {
        return Err(());
    }
    let Some(Value::Array(list)) = map.get("status") else {
        return Err(());
    };
    let statuses: Vec<PaymentStatus> = list
        .iter()
        .map(|v| match v.as_str() {
            Some("executed") => Ok(PaymentStatus::Executed),
            Some("failed") => Ok(PaymentStatus::Failed),
            Some("pending") => Ok(PaymentStatus::Pending),
            _ => Err(()),
        })
        .collect::<Result<_, _>>()?;
    if statuses.is_empty() {
        return Err(());
    }
    Ok(Some(statuses))
}

fn check(payload: Option<&Value>) {
    for (streams, on) in [(Streams::OFF, false), (Streams::with_separator(':').unwrap(), true)] {
        for with_since in [true, false] {
            check_one(payload, streams, on, with_since);
        }
    }
}

fn check_one(payload: Option<&Value>, streams: Streams, on: bool, with_since: bool) {
    let got = SubscribeRequest::parse(payload, with_since, streams);
    let Some(Value::Object(map)) = payload else {
        assert_eq!(got.map_err(|(c, _)| c), Err(ErrorCode::InvalidPayload));
        return;
    };
    let (tracking_id, stream) = match map.get("trackingId") {
        Some(Value::String(s)) => match expected_name(s, on) {
            Some(stream) => (s, stream),
            None => {
                assert_eq!(got.map_err(|(c, _)| c), Err(ErrorCode::InvalidTrackingId), "{s:?}");
                return;
            }
        },
        _ => {
            assert_eq!(got.map_err(|(c, _)| c), Err(ErrorCode::InvalidTrackingId));
            return;
        }
    };
    let (since, filter) = if with_since {
        (
            expected_since(map.get("since"), stream),
            expected_filter(map.get("filter")),
        )
    } else {
        (Ok(None), Ok(None))
    };
    match (got, since, filter) {
        (Ok(req), Ok(since), Ok(filter)) => {
            assert_eq!(&req.tracking_id, tracking_id);
            assert_eq!(req.since, since);
            match (req.filter, filter) {
                (None, None) => {}
                (Some(got), Some(statuses)) => {
                    for status in [
                        PaymentStatus::Executed,
                        PaymentStatus::Failed,
                        PaymentStatus::Pending,
                    ] {
                        assert_eq!(got.matches(status), statuses.contains(&status));
                    }
                }
                (got, want) => panic!("filter {got:?}, expected {want:?}"),
            }
        }
        (Err((code, message)), Err(()), _) => {
            assert_eq!(code, ErrorCode::InvalidSince);
            assert!(!message.is_empty());
        }
        (Err((code, message)), Ok(_), Err(())) => {
            assert_eq!(code, ErrorCode::InvalidPayload);
            assert!(!message.is_empty());
        }
        (got, since, filter) => {
            panic!("parse gave {got:?}, expected since {since:?} and filter {filter:?}")
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        check(None);
        return;
    };
    if mode % 2 == 0 {
        if let Ok(v) = serde_json::from_slice::<Value>(rest) {
            check(Some(&v));
        }
    } else if let Ok(v) = ArbValue::arbitrary_take_rest(Unstructured::new(rest)) {
        check(Some(&v.build()));
    }
});
