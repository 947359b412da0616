//! The wire types of the contract: trackingIds, event ids, payments, and the
//! envelopes every server event is wrapped in (contract sections 1 and 3).
//!
//! Why this file is long (about 420 lines of code, then its tests): the
//! contract's wire types are read together; the OpenAPI schemas and the
//! integer literals are beside it (`schema.rs`, `number.rs`).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

mod number;
pub mod schema;
mod stream;

pub use number::{exact_integer, json_integer};
pub use stream::{NameKind, StatusFilter, Streams, WireId, WirePosition, status_of, with_prev_seq};

/// Longest trackingId accepted, in UTF-8 bytes.
pub const MAX_TRACKING_ID_BYTES: usize = 256;

/// Largest integer a JavaScript number holds exactly (2^53 - 1). Amounts and
/// timestamps above it are refused at ingest rather than rounded by clients.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Largest accepted payment `timestamp`: 9999-12-31T23:59:59Z in seconds. A
/// value above it is almost surely milliseconds, which the contract forbids.
pub const MAX_TIMESTAMP_SECONDS: u64 = 253_402_300_799;

/// Longest `signature` or `idempotencyKey`, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// Socket.IO event name of a payment.
pub const PAYMENT_EVENT: &str = "payment";

/// Milliseconds since the Unix epoch, the unit of every envelope `timestamp`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a trackingId is refused; the message is what clients see. A name
/// ending in `*` is a prefix (a stream, or a token's prefix entry), never
/// a trackingId: otherwise a token entry for the exact id `X*` would read
/// every `X...` as a prefix.
pub fn check_tracking_id(id: &str) -> Result<(), &'static str> {
    check_name(id)?;
    if id.ends_with('*') {
        return Err("Tracking ID must not end in * (a name ending in * is a prefix)");
    }
    Ok(())
}

/// The rules a trackingId and a prefix share (a prefix may end in `*`).
pub fn check_name(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        Err("Tracking ID must not be empty")
    } else if id.len() > MAX_TRACKING_ID_BYTES {
        Err("Tracking ID must be at most 256 bytes")
    } else if id.chars().any(char::is_control) {
        // `char::is_control` is exactly Unicode category Cc.
        Err("Tracking ID must not contain control characters")
    } else {
        Ok(())
    }
}

/// An event id: the epoch of the trackingId's history and the event's seq,
/// written `<epoch>-<seq>`. Clients treat it as opaque; the server reads the
/// epoch to tell a `since` from a lost history (a new epoch starts whenever a
/// history is created afresh) from one it still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub epoch: u64,
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

impl EventId {
    /// Reads the `id` of a `payment` envelope (publications carry only the
    /// envelope).
    pub fn of_envelope(envelope: &RawValue) -> Option<EventId> {
        #[derive(Deserialize)]
        struct Head<'a> {
            #[serde(borrow)]
            id: &'a str,
        }
        serde_json::from_str::<Head<'_>>(envelope.get())
            .ok()?
            .id
            .parse()
            .ok()
    }
}

/// Where a trackingId's history stands: its epoch and last seq. `seq` 0 is a
/// history with no event yet, and epoch 0 means there is no history at all.
/// Written on the wire as `{ "id": "<epoch>-<seq>" | null, "seq": n }`, the
/// `position` of a subscribe's `ack` (contract section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

impl Position {
    /// No history.
    pub const NONE: Position = Position { epoch: 0, seq: 0 };

    /// The id of the event at this position, `None` before the first one.
    pub fn id(self) -> Option<EventId> {
        (self.seq > 0).then_some(EventId {
            epoch: self.epoch,
            seq: self.seq,
        })
    }
}

impl From<EventId> for Position {
    fn from(id: EventId) -> Self {
        Position {
            epoch: id.epoch,
            seq: id.seq,
        }
    }
}

impl Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire {
            id: Option<EventId>,
            seq: u64,
        }
        Wire {
            id: self.id(),
            seq: self.seq,
        }
        .serialize(s)
    }
}

/// A string that is not an event id this server could have written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an event id")]
pub struct BadEventId;

impl FromStr for EventId {
    type Err = BadEventId;

    /// Accepts exactly what `Display` writes: two decimal integers without
    /// signs or leading zeros, and a seq of at least 1.
    fn from_str(s: &str) -> Result<Self, BadEventId> {
        fn number(part: &str) -> Result<u64, BadEventId> {
            let canonical = !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_digit())
                && (part == "0" || !part.starts_with('0'));
            if !canonical {
                return Err(BadEventId);
            }
            part.parse().map_err(|_| BadEventId)
        }
        let (epoch, seq) = s.split_once('-').ok_or(BadEventId)?;
        let id = EventId {
            epoch: number(epoch)?,
            seq: number(seq)?,
        };
        if id.seq == 0 {
            return Err(BadEventId);
        }
        Ok(id)
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Outcome of a payment on chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PaymentStatus {
    Executed,
    Failed,
    Pending,
}

impl PaymentStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "executed" => Some(Self::Executed),
            "failed" => Some(Self::Failed),
            "pending" => Some(Self::Pending),
            _ => None,
        }
    }
}

/// The `data` of a `payment` envelope: exactly what was ingested, less the
/// idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PaymentData {
    #[schema(value_type = schema::TrackingId)]
    pub tracking_id: String,
    #[schema(value_type = schema::Amount)]
    pub amount: u64,
    /// On-chain execution time, in seconds.
    #[schema(value_type = schema::ChainTimestamp)]
    pub timestamp: u64,
    pub status: PaymentStatus,
    /// The on-chain transaction signature, when the payment had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = schema::Key)]
    pub signature: Option<String>,
}

/// What identifies a payment for idempotency within its trackingId.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DedupeKey {
    /// The ingested `idempotencyKey`, which wins when given.
    Idempotency(String),
    /// The on-chain signature otherwise.
    Signature(String),
}

impl DedupeKey {
    /// A single string form, for stores keyed by strings.
    pub fn as_key(&self) -> String {
        match self {
            DedupeKey::Idempotency(k) => format!("k:{k}"),
            DedupeKey::Signature(s) => format!("s:{s}"),
        }
    }
}

/// A validated payment, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPayment {
    pub data: PaymentData,
    pub dedupe: DedupeKey,
}

/// A stored payment event: its identity and the envelope every client gets,
/// serialised once at acceptance and returned unchanged by replay and
/// backfill.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: EventId,
    /// When the server accepted it (ms); also the envelope's `timestamp`.
    pub accepted_ms: u64,
    pub envelope: Arc<RawValue>,
}

/// The `payment` envelope: what a socket receives and backfill returns.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PaymentEnvelope)]
pub struct PaymentEnvelope<'a> {
    /// Always `payment_notification` (the Socket.IO event is `payment`).
    #[serde(rename = "type")]
    #[schema(value_type = schema::PaymentNotification)]
    kind: &'static str,
    id: EventId,
    /// The event's position in its trackingId's history: 1, 2, 3... without holes.
    #[schema(minimum = 1)]
    seq: u64,
    data: &'a PaymentData,
    /// When the server accepted the payment, in milliseconds since the Unix epoch.
    #[schema(value_type = schema::Millis)]
    timestamp: u64,
    /// Only on the payments of a filtered subscription, or of a backfill
    /// with `status` (contract section 8): the `seq` of the payment sent
    /// before it (or of where the subscription or page started). A client
    /// whose last `seq` differs missed something.
    #[serde(rename = "prevSeq", skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    prev_seq: Option<u64>,
}

impl StoredEvent {
    /// Builds the `payment` envelope of a newly accepted payment.
    pub fn new(id: EventId, accepted_ms: u64, data: &PaymentData) -> Self {
        let envelope = PaymentEnvelope {
            kind: "payment_notification",
            id,
            seq: id.seq,
            data,
            timestamp: accepted_ms,
            prev_seq: None,
        };
        Self::of(id, accepted_ms, &envelope)
    }

    /// The stored event whose envelope is `envelope`, serialised once.
    fn of(id: EventId, accepted_ms: u64, envelope: &impl Serialize) -> Self {
        // Serialising plain strings and integers into JSON cannot fail.
        let raw = serde_json::value::to_raw_value(envelope)
            .unwrap_or_else(|_| unreachable!("a payment envelope is always serialisable"));
        StoredEvent {
            id,
            accepted_ms,
            envelope: Arc::from(raw),
        }
    }
}

/// The `payment` envelope of a stream (contract section 8): the stream's
/// own id and seq, and the payment's place in its trackingId's history.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = StreamPaymentEnvelope)]
pub struct StreamEnvelope<'a> {
    /// Always `payment_notification` (the Socket.IO event is `payment`).
    #[serde(rename = "type")]
    #[schema(value_type = schema::PaymentNotification)]
    kind: &'static str,
    /// The stream: `<account><separator>*`.
    #[schema(example = "merchant-42:*")]
    stream: &'a str,
    /// The stream's event id, `s<epoch>-<seq>`: never the same string as
    /// a trackingId's.
    #[schema(value_type = String, example = "s1699876543000-17")]
    id: WireId,
    /// The event's position in the stream: 1, 2, 3... without holes.
    #[schema(minimum = 1)]
    seq: u64,
    source: Source,
    data: &'a PaymentData,
    /// When the server accepted the payment, in milliseconds since the Unix epoch.
    #[schema(value_type = schema::Millis)]
    timestamp: u64,
    /// As on a trackingId's payment: only with a filter.
    #[serde(rename = "prevSeq", skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    prev_seq: Option<u64>,
}

/// The payment's place in its own trackingId's history.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The payment's id in its trackingId's history.
    #[schema(value_type = String, example = "1699876500000-3")]
    id: EventId,
    #[schema(minimum = 1)]
    seq: u64,
}

impl StoredEvent {
    /// Builds the stream `stream`'s envelope of a payment newly accepted
    /// as `source` in its trackingId's history; `id` is the stream's.
    pub fn new_in_stream(
        stream: &str,
        id: EventId,
        source: EventId,
        accepted_ms: u64,
        data: &PaymentData,
    ) -> Self {
        let envelope = StreamEnvelope {
            kind: "payment_notification",
            stream,
            id: WireId {
                id,
                kind: NameKind::Stream,
            },
            seq: id.seq,
            source: Source {
                id: source,
                seq: source.seq,
            },
            data,
            timestamp: accepted_ms,
            prev_seq: None,
        };
        Self::of(id, accepted_ms, &envelope)
    }
}

/// A server event envelope: `{ type, data, timestamp }`, and for a
/// subscribe's `ack` the history's `position`.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope<T> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub data: T,
    pub timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<WirePosition>,
}

/// The `data` of an `error` envelope. When the error concerns one
/// trackingId (a refused subscribe, a `HISTORY_TRUNCATED` warning) it names
/// it, so that a socket holding several can tell which one it is about.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorData {
    pub code: ErrorCode,
    pub message: String,
    #[serde(rename = "trackingId", skip_serializing_if = "Option::is_none")]
    pub tracking_id: Option<String>,
}

/// Every error code of the contract, and the codes of the HTTP answers the
/// contract leaves open (`NOT_FOUND`, `METHOD_NOT_ALLOWED`, and
/// `INTERNAL_ERROR` for a `500`: the server could not read its storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidTrackingId,
    InvalidPayload,
    InvalidSince,
    TooManySubscriptions,
    RateLimited,
    Unauthorized,
    Forbidden,
    HistoryTruncated,
    ConnectionError,
    PayloadTooLarge,
    Unavailable,
    NotFound,
    MethodNotAllowed,
    InternalError,
}

impl ErrorCode {
    /// Every code, in declaration order (the OpenAPI `ErrorBody` lists them).
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::InvalidTrackingId,
        ErrorCode::InvalidPayload,
        ErrorCode::InvalidSince,
        ErrorCode::TooManySubscriptions,
        ErrorCode::RateLimited,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::HistoryTruncated,
        ErrorCode::ConnectionError,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Unavailable,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidTrackingId => "INVALID_TRACKING_ID",
            ErrorCode::InvalidPayload => "INVALID_PAYLOAD",
            ErrorCode::InvalidSince => "INVALID_SINCE",
            ErrorCode::TooManySubscriptions => "TOO_MANY_SUBSCRIPTIONS",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::HistoryTruncated => "HISTORY_TRUNCATED",
            ErrorCode::ConnectionError => "CONNECTION_ERROR",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::InternalError => "INTERNAL_ERROR",
        }
    }
}

impl Envelope<String> {
    /// The `ack` of a subscribe, with the position of the trackingId's
    /// (or stream's) history.
    pub fn subscribed(tracking_id: &str, position: Position) -> Self {
        Envelope {
            kind: "ack",
            data: format!("Subscribed to trackingId: {tracking_id}"),
            timestamp: now_ms(),
            position: Some(WirePosition {
                position,
                kind: NameKind::of(tracking_id),
            }),
        }
    }

    /// The `ack` of an unsubscribe.
    pub fn unsubscribed(tracking_id: &str) -> Self {
        Envelope {
            kind: "ack",
            data: format!("Unsubscribed from trackingId: {tracking_id}"),
            timestamp: now_ms(),
            position: None,
        }
    }
}

impl Envelope<ErrorData> {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Envelope {
            kind: "error",
            data: ErrorData {
                code,
                message: message.into(),
                tracking_id: None,
            },
            timestamp: now_ms(),
            position: None,
        }
    }

    /// An error about one trackingId.
    pub fn error_for(tracking_id: &str, code: ErrorCode, message: impl Into<String>) -> Self {
        let mut envelope = Self::error(code, message);
        envelope.data.tracking_id = Some(tracking_id.to_owned());
        envelope
    }

    /// The `HISTORY_TRUNCATED` warning: `tracking_id`'s socket has a gap
    /// that cannot be filled (events gone, or the history started afresh).
    pub fn truncated(tracking_id: &str, message: impl Into<String>) -> Self {
        Self::error_for(tracking_id, ErrorCode::HistoryTruncated, message)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_error_code_once_and_as_serialised() {
        let names: Vec<String> = ErrorCode::ALL
            .iter()
            .map(|c| {
                serde_json::to_value(c)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let as_str: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names, as_str);
        let distinct: std::collections::HashSet<_> = as_str.iter().collect();
        assert_eq!(distinct.len(), ErrorCode::ALL.len());
    }

    use super::*;

    #[test]
    fn event_ids_round_trip_and_reject_non_canonical_forms() {
        let id = EventId {
            epoch: 1699876543210,
            seq: 42,
        };
        assert_eq!(id.to_string(), "1699876543210-42");
        assert_eq!("1699876543210-42".parse::<EventId>(), Ok(id));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1-0",
            "01-1",
            "1-01",
            "+1-1",
            "1-+1",
            "a-1",
            "1-1-1",
            "1",
            " 1-1",
            "99999999999999999999-1",
        ] {
            assert_eq!(bad.parse::<EventId>(), Err(BadEventId), "{bad:?}");
        }
    }

    #[test]
    fn positions_have_the_wire_shape() {
        let at = Position { epoch: 7, seq: 41 };
        assert_eq!(
            serde_json::to_value(at).unwrap(),
            serde_json::json!({"id": "7-41", "seq": 41})
        );
        for empty in [Position::NONE, Position { epoch: 7, seq: 0 }] {
            assert_eq!(
                serde_json::to_value(empty).unwrap(),
                serde_json::json!({"id": null, "seq": 0})
            );
        }
    }

    #[test]
    fn an_envelope_names_its_event() {
        let data = PaymentData {
            tracking_id: "t".into(),
            amount: 1,
            timestamp: 1,
            status: PaymentStatus::Pending,
            signature: None,
        };
        let ev = StoredEvent::new(EventId { epoch: 9, seq: 3 }, 5, &data);
        assert_eq!(
            EventId::of_envelope(&ev.envelope),
            Some(EventId { epoch: 9, seq: 3 })
        );
        let other = serde_json::value::to_raw_value(&serde_json::json!({"id": 5})).unwrap();
        assert_eq!(EventId::of_envelope(&other), None);
    }

    #[test]
    fn tracking_ids_follow_the_contract() {
        assert!(check_tracking_id("sub-1").is_ok());
        assert!(check_tracking_id(&"a".repeat(256)).is_ok());
        assert!(check_tracking_id(&"a".repeat(257)).is_err());
        assert!(check_tracking_id(&"€".repeat(86)).is_err()); // 258 bytes
        assert!(check_tracking_id("").is_err());
        for c in ['\u{0}', '\u{1f}', '\u{7f}', '\u{85}', '\u{9f}'] {
            assert!(check_tracking_id(&format!("a{c}b")).is_err(), "{c:?}");
        }
        assert!(check_tracking_id("a\u{a0}b").is_ok()); // no-break space is not Cc
    }

    #[test]
    fn payment_envelope_has_the_contract_shape() {
        let data = PaymentData {
            tracking_id: "sub-1".into(),
            amount: 1_000_000,
            timestamp: 1_699_876_543,
            status: PaymentStatus::Executed,
            signature: None,
        };
        let ev = StoredEvent::new(EventId { epoch: 7, seq: 1 }, 1_699_876_543_210, &data);
        let v: serde_json::Value = serde_json::from_str(ev.envelope.get()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "payment_notification", "id": "7-1", "seq": 1,
                "data": {"trackingId": "sub-1", "amount": 1000000, "timestamp": 1699876543, "status": "executed"},
                "timestamp": 1699876543210u64
            })
        );
    }
}
