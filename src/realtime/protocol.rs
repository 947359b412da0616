//! The socket side of the contract (section 1): what a `subscribe` or
//! `unsubscribe` payload must look like, and how the server answers: the
//! `ack` / `error` event, also sent to the client's acknowledgement
//! callback when it passed one.

use serde::Serialize;
use serde_json::Value;
use socketioxide::extract::{AckSender, SocketRef};

use crate::model::{Envelope, ErrorCode, EventId, NameKind, StatusFilter, Streams, WireId};
use crate::store::StoreError;
use crate::telemetry::{self, SocketTag};

/// A refusal: the code and the message the client sees.
pub type Refusal = (ErrorCode, String);

/// A parsed `subscribe` / `unsubscribe` payload.
#[derive(Debug, PartialEq, Eq)]
pub struct SubscribeRequest {
    /// A trackingId, or a stream (contract section 8).
    pub tracking_id: String,
    pub since: Option<EventId>,
    pub filter: Option<StatusFilter>,
}

impl SubscribeRequest {
    /// Checks a payload against the contract; `with_since` reads `since`
    /// and `filter` (unsubscribe ignores them). `streams` says which names
    /// ending in `*` are streams.
    pub fn parse(
        payload: Option<&Value>,
        with_since: bool,
        streams: Streams,
    ) -> Result<Self, Refusal> {
        let Some(Value::Object(map)) = payload else {
            return Err((
                ErrorCode::InvalidPayload,
                "Payload must be an object like { \"trackingId\": \"...\" }".to_owned(),
            ));
        };
        let tracking_id = match map.get("trackingId") {
            Some(Value::String(s)) => s,
            _ => {
                return Err((
                    ErrorCode::InvalidTrackingId,
                    "Tracking ID is required and must be a string".to_owned(),
                ));
            }
        };
        let kind = streams
            .check_name(tracking_id)
            .map_err(|m| (ErrorCode::InvalidTrackingId, m))?;
        let since = match map.get("since") {
            _ if !with_since => None,
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => {
                return Err((
                    ErrorCode::InvalidSince,
                    "since must not be empty".to_owned(),
                ));
            }
            Some(Value::String(s)) => Some(WireId::parse(s, kind).ok_or_else(|| {
                let message = match kind {
                    NameKind::Stream => {
                        "since is not an event id of a stream this server could have issued"
                    }
                    NameKind::TrackingId => {
                        "since is not an event id this server could have issued"
                    }
                };
                (ErrorCode::InvalidSince, message.to_owned())
            })?),
            Some(_) => {
                return Err((
                    ErrorCode::InvalidSince,
                    "since must be an event id string".to_owned(),
                ));
            }
        };
        let filter = if with_since {
            StatusFilter::from_subscribe(map.get("filter"))
                .map_err(|m| (ErrorCode::InvalidPayload, m))?
        } else {
            None
        };
        Ok(SubscribeRequest {
            tracking_id: tracking_id.clone(),
            since,
            filter,
        })
    }
}

/// What a socket is told when the store fails a subscribe: the one
/// mapping from store errors to socket error codes.
pub fn refusal(tracking_id: &str, err: &StoreError) -> Refusal {
    match err {
        StoreError::InvalidSince => (ErrorCode::InvalidSince, err.to_string()),
        // Logged and counted where it was found.
        StoreError::Malformed(_) => (
            ErrorCode::ConnectionError,
            "The server could not read its storage's answer".to_owned(),
        ),
        StoreError::Unavailable(detail) => {
            tracing::warn!(tracking_id, error = %detail, "subscribe failed: storage unavailable");
            (
                ErrorCode::ConnectionError,
                "Storage is unavailable; try again".to_owned(),
            )
        }
    }
}

/// Emits `event` and answers the acknowledgement callback, if the client
/// passed one, with the same envelope.
pub fn reply<T: Serialize>(socket: &SocketRef, ack: AckSender, event: &str, envelope: &T) {
    if let Err(err) = socket.emit(event, envelope) {
        tracing::debug!(sock = %SocketTag::of(socket.id), event, error = %err, "reply not sent");
    }
    if let Err(err) = ack.send(envelope) {
        tracing::debug!(sock = %SocketTag::of(socket.id), error = %err, "ack callback not sent");
    }
}

/// Refuses a command: the `error` event (and callback), counted by code.
/// `tracking_id` names the trackingId it was about, when it was valid.
pub fn reply_error(
    socket: &SocketRef,
    ack: AckSender,
    tracking_id: Option<&str>,
    (code, message): Refusal,
) {
    metrics::counter!(telemetry::SOCKET_ERRORS, "code" => code.as_str()).increment(1);
    let envelope = match tracking_id {
        Some(tid) => Envelope::error_for(tid, code, message),
        None => Envelope::error(code, message),
    };
    reply(socket, ack, "error", &envelope);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<SubscribeRequest, ErrorCode> {
        SubscribeRequest::parse(Some(&v), true, Streams::OFF).map_err(|(c, _)| c)
    }

    #[test]
    fn streams_and_filters_are_read() {
        let on = Streams::with_separator(':').unwrap();
        let parse_on = |v: Value| SubscribeRequest::parse(Some(&v), true, on).map_err(|(c, _)| c);
        let req = parse_on(
            json!({"trackingId": "m:*", "since": "s3-2", "filter": {"status": ["failed"]}}),
        )
        .unwrap();
        assert_eq!(req.since, Some(EventId { epoch: 3, seq: 2 }));
        assert!(req.filter.is_some());
        assert_eq!(
            parse_on(json!({"trackingId": "m:*", "since": "3-2"})).err(),
            Some(ErrorCode::InvalidSince)
        );
        assert_eq!(
            parse_on(json!({"trackingId": "m:x", "since": "s3-2"})).err(),
            Some(ErrorCode::InvalidSince)
        );
        assert_eq!(
            parse_on(json!({"trackingId": "m:x:*"})).err(),
            Some(ErrorCode::InvalidTrackingId)
        );
        assert_eq!(
            parse(json!({"trackingId": "m:*"})).err(),
            Some(ErrorCode::InvalidTrackingId)
        );
        assert_eq!(
            parse_on(json!({"trackingId": "m:x", "filter": {}})).err(),
            Some(ErrorCode::InvalidPayload)
        );
        // Unsubscribe reads neither.
        assert!(
            SubscribeRequest::parse(Some(&json!({"trackingId": "m:x", "filter": 5})), false, on)
                .is_ok()
        );
    }

    #[test]
    fn payloads_map_to_the_contract_codes() {
        assert_eq!(
            SubscribeRequest::parse(None, true, Streams::OFF).map_err(|(c, _)| c),
            Err(ErrorCode::InvalidPayload)
        );
        assert_eq!(parse(json!("sub-1")), Err(ErrorCode::InvalidPayload));
        assert_eq!(parse(json!(["sub-1"])), Err(ErrorCode::InvalidPayload));
        assert_eq!(parse(json!(null)), Err(ErrorCode::InvalidPayload));
        assert_eq!(parse(json!({})), Err(ErrorCode::InvalidTrackingId));
        assert_eq!(
            parse(json!({"trackingId": 5})),
            Err(ErrorCode::InvalidTrackingId)
        );
        assert_eq!(
            parse(json!({"trackingId": ""})),
            Err(ErrorCode::InvalidTrackingId)
        );
        assert_eq!(
            parse(json!({"trackingId": "a", "since": ""})),
            Err(ErrorCode::InvalidSince)
        );
        assert_eq!(
            parse(json!({"trackingId": "a", "since": 5})),
            Err(ErrorCode::InvalidSince)
        );
        assert_eq!(
            parse(json!({"trackingId": "a", "since": "x"})),
            Err(ErrorCode::InvalidSince)
        );
        assert_eq!(
            parse(json!({"trackingId": "a", "since": null})),
            Ok(SubscribeRequest {
                tracking_id: "a".into(),
                since: None,
                filter: None,
            })
        );
        assert_eq!(
            parse(json!({"trackingId": "a", "since": "3-2"})),
            Ok(SubscribeRequest {
                tracking_id: "a".into(),
                since: Some(EventId { epoch: 3, seq: 2 }),
                filter: None,
            })
        );
        // unsubscribe ignores since, whatever it holds.
        assert_eq!(
            SubscribeRequest::parse(
                Some(&json!({"trackingId": "a", "since": 5})),
                false,
                Streams::OFF
            )
            .map(|r| r.since),
            Ok(None)
        );
    }
}
