//! Fuzz target: the `subscribe` / `unsubscribe` payload check,
//! `SubscribeRequest::parse`, on JSON parsed from the input and on
//! arbitrary `serde_json::Value`s built from it (biased towards objects
//! with `trackingId` and `since`, which raw JSON rarely reaches).
//!
//! Checks the contract (section 1) against an independent reading of the
//! payload: an accepted payload's trackingId and `since` are exactly the
//! ones given (`since` in its canonical form); a refused one gets the code
//! the contract names for what is wrong with it.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tidings::model::{ErrorCode, EventId, check_tracking_id};
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
    Other(String),
}

/// Strings, often shaped like event ids.
#[derive(Arbitrary, Debug)]
enum ArbStr {
    Any(String),
    Id(u64, u64),
    Parts(String, String),
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
                ArbStr::Parts(a, b) => format!("{a}-{b}"),
            }),
            ArbValue::Array(items) => Value::Array(items.into_iter().map(Self::build).collect()),
            ArbValue::Object(entries) => {
                let mut map = Map::new();
                for (k, v) in entries {
                    let k = match k {
                        ArbKey::TrackingId => "trackingId".to_owned(),
                        ArbKey::Since => "since".to_owned(),
                        ArbKey::Other(k) => k,
                    };
                    map.insert(k, v.build());
                }
                Value::Object(map)
            }
        }
    }
}

/// The contract's reading of `since`, written independently of the server:
/// `Ok(None)` absent or null, `Ok(Some)` an id the server could have
/// written, `Err` anything else.
fn expected_since(v: Option<&Value>) -> Result<Option<EventId>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let (e, q) = s.split_once('-').ok_or(())?;
            let id = EventId {
                epoch: e.parse().map_err(|_| ())?,
                seq: q.parse().map_err(|_| ())?,
            };
            // Canonical: exactly what Display writes, and seq at least 1.
            (id.seq > 0 && id.to_string() == *s)
                .then_some(Some(id))
                .ok_or(())
        }
        Some(_) => Err(()),
    }
}

fn check(payload: Option<&Value>) {
    for with_since in [true, false] {
        let got = SubscribeRequest::parse(payload, with_since);
        let Some(Value::Object(map)) = payload else {
            assert_eq!(got.map_err(|(c, _)| c), Err(ErrorCode::InvalidPayload));
            continue;
        };
        let tracking_id = match map.get("trackingId") {
            Some(Value::String(s)) if check_tracking_id(s).is_ok() => s,
            _ => {
                assert_eq!(got.map_err(|(c, _)| c), Err(ErrorCode::InvalidTrackingId));
                continue;
            }
        };
        let since = if with_since {
            expected_since(map.get("since"))
        } else {
            Ok(None)
        };
        match (got, since) {
            (Ok(req), Ok(since)) => {
                assert_eq!(&req.tracking_id, tracking_id);
                assert_eq!(req.since, since);
            }
            (Err((code, message)), Err(())) => {
                assert_eq!(code, ErrorCode::InvalidSince);
                assert!(!message.is_empty());
            }
            (got, since) => panic!("parse gave {got:?}, expected since {since:?}"),
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
