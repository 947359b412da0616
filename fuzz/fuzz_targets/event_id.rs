//! Fuzz target: event ids and `since` (`EventId::from_str`), positions,
//! and reading the id of a stored envelope (`EventId::of_envelope`).
//!
//! A string parses exactly when it is the canonical form of an id (two
//! decimal u64 without sign or leading zero, seq at least 1), and a parsed
//! id displays back to the same string; the oracle is written without the
//! parser's code. Any (epoch, seq) displays to a string that parses back to
//! it (seq ≥ 1), and a `Position` serialises to the wire shape whose `id`
//! parses back to the position.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use serde_json::value::RawValue;
use tidings::model::{EventId, Position};

/// Whether `s` is `format!("{epoch}-{seq}")` of some u64 pair with seq ≥ 1.
fn canonical(s: &str) -> Option<EventId> {
    let (e, q) = s.split_once('-')?;
    let id = EventId {
        epoch: e.parse().ok()?,
        seq: q.parse().ok()?,
    };
    (id.seq >= 1 && format!("{}-{}", id.epoch, id.seq) == s).then_some(id)
}

fn ids_from_numbers(data: &[u8]) {
    let mut n = [0u8; 16];
    let len = data.len().min(16);
    n[..len].copy_from_slice(&data[..len]);
    let epoch = u64::from_le_bytes(n[..8].try_into().unwrap());
    let seq = u64::from_le_bytes(n[8..].try_into().unwrap());
    let id = EventId { epoch, seq };
    let text = id.to_string();
    let parsed = text.parse::<EventId>();
    if seq == 0 {
        assert!(parsed.is_err(), "seq 0 is no event: {text}");
    } else {
        assert_eq!(parsed, Ok(id));
    }
    let position = Position { epoch, seq };
    let wire = serde_json::to_value(position).unwrap();
    assert_eq!(wire["seq"], Value::from(seq));
    match (&wire["id"], position.id()) {
        (Value::Null, None) => assert_eq!(seq, 0),
        (Value::String(s), Some(at)) => {
            assert_eq!(s.parse::<EventId>(), Ok(at));
            assert_eq!(Position::from(at), position);
        }
        (wire_id, id) => panic!("position {position:?}: wire id {wire_id}, id {id:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    ids_from_numbers(data);
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match s.parse::<EventId>() {
        Ok(id) => {
            assert_eq!(id.to_string(), s, "displays back to itself");
            assert_eq!(canonical(s), Some(id));
        }
        Err(_) => assert_eq!(canonical(s), None, "{s:?} is an id but was refused"),
    }
    // The envelope reader: never panics on any JSON; on an object as the
    // server writes it (serde_json, no duplicate keys), an id exactly where
    // its `id` is one.
    if let Ok(raw) = serde_json::from_str::<Box<RawValue>>(s) {
        let _ = EventId::of_envelope(&raw);
        // (A RawValue also holds numbers a Value cannot, like 1e999.)
        let value: Value = serde_json::from_str(s).unwrap_or(Value::Null);
        if value.is_object() {
            let written = serde_json::value::to_raw_value(&value).unwrap();
            let field = value.get("id").and_then(Value::as_str);
            assert_eq!(
                EventId::of_envelope(&written),
                field.and_then(canonical),
                "{s}"
            );
        }
    }
});
