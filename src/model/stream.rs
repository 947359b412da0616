//! Account streams and filters (contract section 8): which stream a
//! trackingId belongs to, what a stream's name and ids look like on the
//! wire, and the status filter a subscription or a backfill may carry.
//!
//! Inside the server a stream is a history like any other, named
//! `<account>*` and numbered by [`EventId`]s; only its wire form differs: its
//! ids are written `s<epoch>-<seq>`. Both histories of a payment are created
//! in one atomic step and so may share an epoch millisecond: the `s` keeps a
//! stream's ids from ever being the same strings as a trackingId's, and a
//! `since` of the other kind from being read as one of this kind.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{EventId, PaymentStatus, Position, check_name};

/// The character a stream's ids start with on the wire.
const STREAM_ID_MARK: char = 's';

/// Whether account streams are on (`--stream-separator`), and with which
/// separator. Off: no name ending in `*` is valid, nothing costs more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streams {
    separator: Option<char>,
}

/// What a valid subscription name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    TrackingId,
    Stream,
}

impl NameKind {
    /// Ids of this kind of history are written with the stream mark.
    pub fn is_stream(self) -> bool {
        self == NameKind::Stream
    }

    /// The kind of a name already checked ([`Streams::check_name`]).
    pub fn of(name: &str) -> Self {
        if name.ends_with('*') {
            NameKind::Stream
        } else {
            NameKind::TrackingId
        }
    }
}

impl Streams {
    /// No streams.
    pub const OFF: Streams = Streams { separator: None };

    /// Streams with `separator`, checked as the contract asks (one
    /// character, not `*`, whitespace or a control character).
    pub fn with_separator(separator: char) -> Result<Self, &'static str> {
        if separator == '*' || separator.is_whitespace() || separator.is_control() {
            return Err("the stream separator must not be *, whitespace or a control character");
        }
        Ok(Streams {
            separator: Some(separator),
        })
    }

    pub fn separator(self) -> Option<char> {
        self.separator
    }

    pub fn enabled(self) -> bool {
        self.separator.is_some()
    }

    /// The account of `tracking_id` (up to and including its first
    /// separator), when it belongs to a stream: it contains the separator
    /// and does not begin with it.
    pub fn account_of(self, tracking_id: &str) -> Option<&str> {
        let sep = self.separator?;
        let at = tracking_id.find(sep)?;
        (at > 0).then(|| &tracking_id[..at + sep.len_utf8()])
    }

    /// The stream `tracking_id` belongs to, if any.
    pub fn stream_of(self, tracking_id: &str) -> Option<String> {
        self.account_of(tracking_id)
            .map(|account| format!("{account}*"))
    }

    /// Checks a name a client subscribes to or backfills: a trackingId, or
    /// (with streams on) a stream `<account><separator>*`. The message is
    /// what the client sees.
    pub fn check_name(self, name: &str) -> Result<NameKind, String> {
        let (Some(prefix), Some(sep)) = (name.strip_suffix('*'), self.separator) else {
            check_name(name).map_err(str::to_owned)?;
            if name.ends_with('*') {
                return Err(
                    "Streams are off on this server: a name ending in * is not a trackingId"
                        .to_owned(),
                );
            }
            return Ok(NameKind::TrackingId);
        };
        // The prefix must be exactly one account: it ends with its only
        // separator, with something before it.
        if self.account_of(prefix) != Some(prefix) {
            return Err(format!(
                "A stream is an account followed by \"{sep}*\" (the account not empty and without \"{sep}\"), like merchant-42{sep}*"
            ));
        }
        // The account is held to a trackingId's rules: a stream's name may
        // be one byte longer than the longest trackingId, so that every
        // trackingId's stream can be read.
        check_name(prefix).map_err(str::to_owned)?;
        Ok(NameKind::Stream)
    }
}

/// An event id as written on the wire: a stream's carry the stream mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireId {
    pub id: EventId,
    pub kind: NameKind,
}

impl fmt::Display for WireId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.is_stream() {
            write!(f, "{STREAM_ID_MARK}{}", self.id)
        } else {
            self.id.fmt(f)
        }
    }
}

impl Serialize for WireId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl WireId {
    /// Reads a `since` for a history of `kind`: an id of the other kind is
    /// refused (`INVALID_SINCE`), never read as one of this kind.
    pub fn parse(s: &str, kind: NameKind) -> Option<EventId> {
        let bare = if kind.is_stream() {
            s.strip_prefix(STREAM_ID_MARK)?
        } else {
            s
        };
        bare.parse().ok()
    }
}

/// A history's position as written on the wire, for a history of `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WirePosition {
    pub position: Position,
    pub kind: NameKind,
}

impl Serialize for WirePosition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire {
            id: Option<WireId>,
            seq: u64,
        }
        Wire {
            id: self.position.id().map(|id| WireId {
                id,
                kind: self.kind,
            }),
            seq: self.position.seq,
        }
        .serialize(s)
    }
}

/// Which payment statuses a subscription or a backfill takes (contract
/// section 8): a non-empty set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusFilter {
    bits: u8,
}

impl StatusFilter {
    fn bit(status: PaymentStatus) -> u8 {
        match status {
            PaymentStatus::Executed => 1,
            PaymentStatus::Failed => 2,
            PaymentStatus::Pending => 4,
        }
    }

    pub fn matches(self, status: PaymentStatus) -> bool {
        self.bits & Self::bit(status) != 0
    }

    /// Reads a non-empty list of status names.
    fn of_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut bits = 0;
        for name in names {
            let status = PaymentStatus::parse(name).ok_or_else(|| {
                format!(
                    "Unknown status {name:?} in the filter: the statuses are executed, failed and pending"
                )
            })?;
            bits |= Self::bit(status);
        }
        if bits == 0 {
            return Err("A filter's status must be a non-empty list".to_owned());
        }
        Ok(StatusFilter { bits })
    }

    /// Reads a subscribe's `filter`: absent or `null` is none; else exactly
    /// `{ "status": [ ...statuses ] }`, non-empty. The message is what the
    /// client sees (`INVALID_PAYLOAD`).
    pub fn from_subscribe(filter: Option<&Value>) -> Result<Option<Self>, String> {
        let map = match filter {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(map)) => map,
            Some(_) => {
                return Err(
                    "filter must be an object like { \"status\": [\"executed\"] }".to_owned(),
                );
            }
        };
        if let Some(other) = map.keys().find(|k| *k != "status") {
            return Err(format!(
                "Unknown key {other:?} in the filter: only status is known"
            ));
        }
        let Some(Value::Array(list)) = map.get("status") else {
            return Err("A filter's status must be a non-empty list".to_owned());
        };
        let names: Option<Vec<&str>> = list.iter().map(Value::as_str).collect();
        let names = names.ok_or("A filter's status must be a list of strings")?;
        Self::of_names(names).map(Some)
    }

    /// Reads a backfill's `status` parameter: comma-separated statuses.
    pub fn from_query(list: &str) -> Result<Self, String> {
        if list.is_empty() {
            return Err("status must be a comma-separated list of statuses".to_owned());
        }
        Self::of_names(list.split(','))
    }
}

/// The status of a stored `payment` envelope, read only where a filter
/// asks (unfiltered delivery never parses an envelope).
pub fn status_of(envelope: &RawValue) -> Option<PaymentStatus> {
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        status: &'a str,
    }
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        data: Data<'a>,
    }
    let head: Head<'_> = serde_json::from_str(envelope.get()).ok()?;
    PaymentStatus::parse(head.data.status)
}

/// `envelope` with `prevSeq` added: what a filtered subscription is sent.
pub fn with_prev_seq(envelope: &RawValue, prev_seq: u64) -> Box<RawValue> {
    let text = envelope.get();
    // A stored envelope is a JSON object: it ends with its closing brace.
    let body = text.strip_suffix('}').unwrap_or(text);
    let out = format!("{body},\"prevSeq\":{prev_seq}}}");
    RawValue::from_string(out).unwrap_or_else(|_| envelope.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn colon() -> Streams {
        Streams::with_separator(':').unwrap()
    }

    #[test]
    fn a_tracking_id_belongs_to_its_account_stream() {
        let s = colon();
        assert_eq!(
            s.stream_of("merchant-42:sub-7").as_deref(),
            Some("merchant-42:*")
        );
        assert_eq!(
            s.stream_of("merchant-42:inv:9").as_deref(),
            Some("merchant-42:*")
        );
        assert_eq!(s.stream_of("a:").as_deref(), Some("a:*"));
        assert_eq!(s.stream_of("sub-7"), None);
        assert_eq!(s.stream_of(":sub-7"), None);
        assert_eq!(Streams::OFF.stream_of("merchant-42:sub-7"), None);
        let euro = Streams::with_separator('€').unwrap();
        assert_eq!(euro.stream_of("a€b").as_deref(), Some("a€*"));
    }

    #[test]
    fn separators_follow_the_contract() {
        for bad in ['*', ' ', '\t', '\n', '\u{0}', '\u{85}'] {
            assert!(Streams::with_separator(bad).is_err(), "{bad:?}");
        }
        assert!(Streams::with_separator('/').is_ok());
    }

    #[test]
    fn names_are_checked() {
        let s = colon();
        assert_eq!(s.check_name("merchant-42:*"), Ok(NameKind::Stream));
        assert_eq!(s.check_name("merchant-42:sub-7"), Ok(NameKind::TrackingId));
        assert_eq!(s.check_name("a*b:*"), Ok(NameKind::Stream));
        for bad in ["*", "merchant-42*", "a:b:*", ":*", "", "a:\u{1}*"] {
            assert!(s.check_name(bad).is_err(), "{bad:?}");
        }
        let longest = format!("{}:", "b".repeat(255));
        assert_eq!(
            s.stream_of(&longest).map(|n| s.check_name(&n)),
            Some(Ok(NameKind::Stream))
        );
        assert!(s.check_name(&format!("{}:*", "b".repeat(256))).is_err());
        let off = Streams::OFF.check_name("merchant-42:*").unwrap_err();
        assert!(off.contains("Streams are off"), "{off}");
        assert_eq!(Streams::OFF.check_name("x"), Ok(NameKind::TrackingId));
    }

    #[test]
    fn stream_ids_never_read_as_tracking_ids() {
        let id = EventId { epoch: 5, seq: 2 };
        let wire = WireId {
            id,
            kind: NameKind::Stream,
        };
        assert_eq!(wire.to_string(), "s5-2");
        assert_eq!(WireId::parse("s5-2", NameKind::Stream), Some(id));
        assert_eq!(WireId::parse("5-2", NameKind::Stream), None);
        assert_eq!(WireId::parse("s5-2", NameKind::TrackingId), None);
        assert_eq!(WireId::parse("5-2", NameKind::TrackingId), Some(id));
        assert_eq!(WireId::parse("ss5-2", NameKind::Stream), None);
        let at = WirePosition {
            position: Position { epoch: 5, seq: 2 },
            kind: NameKind::Stream,
        };
        assert_eq!(
            serde_json::to_value(at).unwrap(),
            json!({"id": "s5-2", "seq": 2})
        );
    }

    #[test]
    fn filters_are_checked() {
        let f = StatusFilter::from_subscribe(Some(&json!({"status": ["failed", "failed"]})))
            .unwrap()
            .unwrap();
        assert!(f.matches(PaymentStatus::Failed));
        assert!(!f.matches(PaymentStatus::Executed));
        assert_eq!(StatusFilter::from_subscribe(None), Ok(None));
        assert_eq!(StatusFilter::from_subscribe(Some(&Value::Null)), Ok(None));
        for bad in [
            json!({}),
            json!({"status": []}),
            json!({"status": ["nope"]}),
            json!({"status": "failed"}),
            json!({"status": [1]}),
            json!({"status": ["failed"], "other": 1}),
            json!(5),
            json!(["failed"]),
        ] {
            assert!(StatusFilter::from_subscribe(Some(&bad)).is_err(), "{bad}");
        }
        assert!(StatusFilter::from_query("executed,pending").is_ok());
        for bad in ["", ",", "executed,", "EXECUTED", "nope"] {
            assert!(StatusFilter::from_query(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prev_seq_is_added_to_the_envelope() {
        let raw =
            RawValue::from_string(r#"{"id":"1-2","data":{"status":"failed"}}"#.into()).unwrap();
        assert_eq!(status_of(&raw), Some(PaymentStatus::Failed));
        let v: Value = serde_json::from_str(with_prev_seq(&raw, 7).get()).unwrap();
        assert_eq!(
            v,
            json!({"id": "1-2", "data": {"status": "failed"}, "prevSeq": 7})
        );
    }
}
