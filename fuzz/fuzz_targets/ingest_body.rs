//! Fuzz target: the ingest body (`POST /v1/payments`), parse + validate,
//! through `tidings::http::ingest::parse_batch`, the function the handler
//! calls once the body is read.
//!
//! Beyond "no panic", it checks what the contract promises (section 3): an
//! accepted batch holds exactly the items of the body, each with a valid
//! trackingId, amounts and timestamps in range, keys within bounds and the
//! dedupe key chosen as documented; a refusal is `INVALID_PAYLOAD` or
//! `PAYLOAD_TOO_LARGE`, with at most one detail per (item, field), so a
//! details count bounded by the items and their keys.

#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tidings::http::ingest::{FIELDS, MAX_KEY_BYTES, MAX_TIMESTAMP_SECONDS, parse_batch};
use tidings::model::{DedupeKey, ErrorCode, MAX_SAFE_INTEGER, check_tracking_id};

/// Small, so that the fuzzer reaches the batch limit too.
const MAX_BATCH: usize = 8;

fn valid_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_KEY_BYTES && !s.chars().any(char::is_control)
}

/// The body's items as the contract reads them: one object is a batch of one.
fn items(data: &[u8]) -> Option<Vec<Value>> {
    match serde_json::from_slice(data).ok()? {
        Value::Array(items) => Some(items),
        other => Some(vec![other]),
    }
}

fuzz_target!(|data: &[u8]| {
    match parse_batch(data, MAX_BATCH) {
        Ok(payments) => {
            let items = items(data).expect("an accepted body is JSON");
            assert_eq!(items.len(), payments.len(), "one payment per item");
            assert!((1..=MAX_BATCH).contains(&payments.len()));
            for (p, item) in payments.iter().zip(&items) {
                let d = &p.data;
                assert!(check_tracking_id(&d.tracking_id).is_ok());
                assert!(d.amount <= MAX_SAFE_INTEGER);
                assert!(d.timestamp <= MAX_TIMESTAMP_SECONDS);
                let map = item.as_object().expect("an accepted item is an object");
                assert!(map.keys().all(|k| FIELDS.contains(&k.as_str())));
                // Exactly what was ingested.
                assert_eq!(map["trackingId"], Value::from(d.tracking_id.as_str()));
                // Numbers may be written as whole floats (`455.0`); either
                // way the value is exactly the integer (both are below 2^53,
                // where every integer is a float).
                assert_eq!(map["amount"].as_f64(), Some(d.amount as f64));
                assert_eq!(map["timestamp"].as_f64(), Some(d.timestamp as f64));
                assert_eq!(map["status"], serde_json::to_value(d.status).unwrap());
                let given = |k: &str| map.get(k).filter(|v| !v.is_null());
                assert_eq!(
                    given("signature").cloned(),
                    d.signature.clone().map(Value::from)
                );
                // The idempotencyKey wins over the signature.
                match (&p.dedupe, given("idempotencyKey")) {
                    (DedupeKey::Idempotency(k), Some(v)) => {
                        assert_eq!(v, &Value::from(k.as_str()));
                        assert!(valid_key(k));
                    }
                    (DedupeKey::Signature(s), None) => {
                        assert_eq!(d.signature.as_ref(), Some(s));
                        assert!(valid_key(s));
                    }
                    (dedupe, key) => panic!("dedupe {dedupe:?} for idempotencyKey {key:?}"),
                }
            }
        }
        Err(err) => {
            let status = err.status().as_u16();
            match err.code() {
                ErrorCode::InvalidPayload => assert_eq!(status, 400),
                ErrorCode::PayloadTooLarge => {
                    assert_eq!(status, 413);
                    let n = items(data).map_or(0, |i| i.len());
                    assert!(n > MAX_BATCH, "413 for a batch of {n}");
                    assert!(err.details().is_empty());
                }
                other => panic!("unexpected code {other:?}"),
            }
            let details = err.details();
            if details.is_empty() {
                return;
            }
            let items = items(data).expect("details are given for JSON bodies only");
            assert!(!details.is_empty());
            // Bounded by the request's shape: one per known field (or one
            // for an item that is not an object) plus one per unknown key.
            let bound: usize = items
                .iter()
                .map(|item| match item.as_object() {
                    Some(map) => {
                        FIELDS.len() + map.keys().filter(|k| !FIELDS.contains(&k.as_str())).count()
                    }
                    None => 1,
                })
                .sum();
            assert!(
                details.len() <= bound,
                "{} details, bound {bound}",
                details.len()
            );
            let mut seen = HashSet::new();
            for detail in details {
                assert!(detail.index < items.len());
                assert!(
                    seen.insert((detail.index, detail.field.clone())),
                    "one detail per bad field: {detail:?}"
                );
                let item = &items[detail.index];
                match (&detail.field, item.as_object()) {
                    (None, None) => {}
                    (Some(field), Some(map)) => {
                        assert!(FIELDS.contains(&field.as_str()) || map.contains_key(field));
                    }
                    (field, _) => panic!("field {field:?} for item {item}"),
                }
                assert!(!detail.message.is_empty());
            }
        }
    }
});
