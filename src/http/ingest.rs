//! Ingest (contract section 3): where a payment enters. `POST /v1/payments`
//! authenticates the backend, validates every item, then stores and
//! publishes them through the [`HistoryStore`](crate::store::HistoryStore),
//! one trackingId at a time: each trackingId's payments of a request are
//! stored whole or not at all; a request spanning several may be cut by a
//! storage failure (`503`) after some of them, and a retry of the same
//! request is then safe (what was stored answers `duplicate`).
//!
//! Why this file is long (about 460 lines of code, then its tests): a
//! fifth of it is the OpenAPI description of the endpoint beside its
//! handler, the rest is the validation of every field the contract names.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::bearer::{Credential, require};
use super::body::{read_bounded, refuse_unread};
use super::client::Client;
use super::error::{
    ApiError, Detail, Details, InternalError, InvalidPayloadError, PayloadTooLargeError,
    SlowedDownError, UnauthorizedError, UnavailableError,
};
use super::state::AppState;
use crate::model::{
    DedupeKey, EventId, MAX_SAFE_INTEGER, NewPayment, PaymentData, PaymentStatus,
    check_tracking_id, json_integer,
};
use crate::store::Appended;
use crate::telemetry;

pub use crate::model::{MAX_KEY_BYTES, MAX_TIMESTAMP_SECONDS};

/// The `202` answer: one entry per item, in request order.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptedBody {
    data: Vec<Accepted>,
}

/// One entry of a `202` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Accepted {
    /// The event id (for a duplicate, the original's).
    id: EventId,
    /// The event's seq (for a duplicate, the original's).
    #[schema(minimum = 1)]
    seq: u64,
    #[schema(value_type = crate::model::schema::TrackingId)]
    tracking_id: String,
    /// Whether the payment was already stored (same trackingId and
    /// idempotencyKey, else signature, within the dedupe window): it was
    /// not stored or broadcast again.
    duplicate: bool,
}

/// Ingest payments.
///
/// One payment or a batch (an array) of them. Every item is validated
/// before anything is stored: one bad item refuses the whole request
/// (`400`, one detail per bad field) and nothing is published. `202` comes
/// only once every accepted event is stored and published. Idempotent per
/// (trackingId, idempotencyKey), else (trackingId, signature): a repeat
/// answers `duplicate: true` with the original id and seq, and a retry of a
/// request that got `503` is always safe. The token is checked before the
/// body is read; answers that refuse an unread body (`401`, `503`) and
/// those about the body itself (`408`, `413`) close the connection.
#[utoipa::path(
    post,
    path = "/v1/payments",
    tag = "ingest",
    operation_id = "ingestPayments",
    security(("ingestToken" = [])),
    request_body(
        content = crate::http::openapi::IngestBody,
        content_type = "application/json",
        description = "One payment, or an array of 1 to `--max-batch` payments (default 1000), at most `--max-body` bytes (default 1 MiB).",
        examples(
            ("payment" = (summary = "One payment (contract section 3)",
                value = json!({ "trackingId": "sub-1", "amount": 1000000, "timestamp": 1699876543u64,
                                "status": "executed", "signature": "5Jt...base58" }))),
            ("batch" = (summary = "A batch, with a payment that never reached the chain (an idempotencyKey instead of a signature)",
                value = json!([
                    { "trackingId": "sub-1", "amount": 1000000, "timestamp": 1699876543u64,
                      "status": "executed", "signature": "5Jt...base58" },
                    { "trackingId": "sub-2", "amount": 250000, "timestamp": 1699876544u64,
                      "status": "failed", "idempotencyKey": "sub-2:attempt-1" }
                ]))),
        ),
    ),
    responses(
        (status = 202, description = "Every item is stored and published (or was a duplicate), one entry per item in request order.",
            body = AcceptedBody,
            example = json!({ "data": [
                { "id": "1699876543210-42", "seq": 42, "trackingId": "sub-1", "duplicate": false }
            ] })),
        (status = 400, description = "The body is not JSON, or at least one item is invalid: nothing was stored.",
            body = InvalidPayloadError,
            example = json!({ "error": { "code": "INVALID_PAYLOAD",
                "message": "1 invalid field(s); nothing was stored",
                "details": [ { "index": 2, "field": "amount",
                    "message": "amount is required and must be a non-negative integer in the token's base units, at most 9007199254740991 (2^53 - 1) so that JavaScript clients read it exactly" } ] } })),
        (status = 401, description = "Missing or wrong ingest token (or no `--ingest-token` configured), checked before the body is read.",
            body = UnauthorizedError,
            example = json!({ "error": { "code": "UNAUTHORIZED", "message": "Invalid ingest token" } })),
        (status = 408, description = "The body did not arrive whole within the body timeout (10 s); nothing was stored.",
            body = InvalidPayloadError,
            example = json!({ "error": { "code": "INVALID_PAYLOAD", "message": "The request body was not received within 10 s" } })),
        (status = 413, description = "The body is over `--max-body` bytes or the batch over `--max-batch` payments; nothing was stored.",
            body = PayloadTooLargeError,
            example = json!({ "error": { "code": "PAYLOAD_TOO_LARGE", "message": "A batch holds at most 1000 payments; got 1001" } })),
        (status = 500, description = "The server could not read its storage's answer (a key of the wrong type, a reply of another shape): a bug or a foreign writer, logged and counted in `tidings_store_malformed_total`. Each trackingId's payments of the request were stored whole or not at all, as for a `503`; retrying as is reads the same.",
            body = InternalError,
            example = json!({ "error": { "code": "INTERNAL_ERROR", "message": "The server could not read its storage's answer" } })),
        (status = 429, description = "Too many failed credentials from this address: refused without being checked until `Retry-After` seconds have passed.",
            body = SlowedDownError,
            headers(("Retry-After" = u64, description = "Seconds until this address is checked again.")),
            example = json!({ "error": { "code": "RATE_LIMITED", "message": "Too many failed credentials from this address; retry after the time in Retry-After" } })),
        (status = 503, description = "The storage is unreachable or the node is shutting down. Each trackingId's payments of the request were stored whole or not at all; retrying the same request is safe (what was stored answers `duplicate`).",
            body = UnavailableError,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying.")),
            example = json!({ "error": { "code": "UNAVAILABLE", "message": "Storage is unavailable; retry the same request" } })),
    ),
)]
pub async fn ingest(
    State(app): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let _in_flight = app.ingest_started();
    let response = match accept(&app, client, &headers, body).await {
        Ok(accepted) => {
            (StatusCode::ACCEPTED, Json(AcceptedBody { data: accepted })).into_response()
        }
        Err(err) => err.into_response(),
    };
    let status = response.status().as_str().to_owned();
    metrics::histogram!(telemetry::INGEST_DURATION, "status" => status.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(telemetry::INGEST_REQUESTS, "status" => status).increment(1);
    response
}

async fn accept(
    app: &AppState,
    client: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<Accepted>, ApiError> {
    // The token is checked before a byte of the body is read.
    let credentials = &app.credentials;
    let (tokens, slowdown) = (&credentials.ingest_tokens, &credentials.slowdown);
    if let Err(refusal) = require(tokens, slowdown, client, headers, Credential::IngestToken) {
        return Err(refuse_unread(headers, body, refusal));
    }
    if app.shutting_down() {
        let refusal = ApiError::unavailable("The server is shutting down; retry on another node");
        return Err(refuse_unread(headers, body, refusal));
    }
    let bytes = read_bounded(headers, body, app.limits.max_body).await?;
    let payments = parse_batch(&bytes, app.limits.max_batch)?;

    let mut out: Vec<Option<Accepted>> = (0..payments.len()).map(|_| None).collect();
    for Group {
        tracking_id,
        indices,
        payments: group,
    } in group_by_tracking_id(payments)
    {
        let tracking_id = tracking_id.as_str();
        let appending = Instant::now();
        let appended = app.store.append(tracking_id, &group).await;
        let outcome = if appended.is_ok() { "ok" } else { "error" };
        metrics::histogram!(telemetry::APPEND_DURATION, "outcome" => outcome)
            .record(appending.elapsed().as_secs_f64());
        let outcomes = appended.map_err(|err| {
            tracing::warn!(tracking_id, "ingest stopped: {err}");
            ApiError::from(err)
        })?;
        for (&index, outcome) in indices.iter().zip(outcomes) {
            let id = outcome.id();
            let counter = match outcome {
                Appended::Stored(_) => telemetry::PAYMENTS_STORED,
                Appended::Duplicate(_) => telemetry::PAYMENTS_DUPLICATE,
            };
            metrics::counter!(counter).increment(1);
            out[index] = Some(Accepted {
                id,
                seq: id.seq,
                tracking_id: tracking_id.to_owned(),
                duplicate: matches!(outcome, Appended::Duplicate(_)),
            });
        }
    }
    if let Some(publications) = &app.local_publications {
        publications.flush().await;
    }
    Ok(out.into_iter().flatten().collect())
}

/// Parses and validates a whole ingest body, as `POST /v1/payments` does
/// once the body is read: one object or an array of 1 to `max_batch`
/// payments. Any bad item rejects the whole batch (`INVALID_PAYLOAD` with
/// one detail per bad field, capped; `PAYLOAD_TOO_LARGE` over
/// `max_batch`). Public for the fuzz targets and property tests.
pub fn parse_batch(bytes: &[u8], max_batch: usize) -> Result<Vec<NewPayment>, ApiError> {
    validate(&parse_items(bytes, max_batch)?, &Literals::new(bytes))
}

/// The literal text of the numbers of a body's items, read again (only)
/// when a number is not a plain integer: `455.0` is 455, but whether
/// `4503599627370496.5` is an integer cannot be told from the float it
/// parses to.
pub struct Literals<'a> {
    body: &'a [u8],
    items: OnceCell<Vec<HashMap<String, Box<RawValue>>>>,
}

impl<'a> Literals<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Literals {
            body,
            items: OnceCell::new(),
        }
    }

    /// The literal of `field` of item `index` (of the object, for a body
    /// that is one).
    pub fn of(&self, index: usize, field: &str) -> Option<String> {
        let items = self.items.get_or_init(|| {
            let Ok(body) = serde_json::from_slice::<Box<RawValue>>(self.body) else {
                return Vec::new();
            };
            let items = if body.get().starts_with('[') {
                serde_json::from_str::<Vec<Box<RawValue>>>(body.get()).unwrap_or_default()
            } else {
                vec![body]
            };
            items
                .iter()
                .map(|item| serde_json::from_str(item.get()).unwrap_or_default())
                .collect()
        });
        Some(items.get(index)?.get(field)?.get().to_owned())
    }
}

/// The body as a list of items: one object is a batch of one.
fn parse_items(bytes: &[u8], max_batch: usize) -> Result<Vec<Value>, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|err| ApiError::invalid_payload(format!("Body is not valid JSON: {err}")))?;
    let items = match value {
        Value::Array(items) => items,
        other => vec![other],
    };
    if items.is_empty() {
        return Err(ApiError::invalid_payload(
            "A batch must hold at least one payment",
        ));
    }
    if items.len() > max_batch {
        return Err(ApiError::PayloadTooLarge(format!(
            "A batch holds at most {max_batch} payments; got {}",
            items.len()
        )));
    }
    Ok(items)
}

/// Validates every item; any bad field rejects the whole request.
fn validate(items: &[Value], literals: &Literals) -> Result<Vec<NewPayment>, ApiError> {
    let mut details = Details::default();
    let payments: Vec<Option<NewPayment>> = items
        .iter()
        .enumerate()
        .map(|(index, item)| validate_item(index, item, &mut details, literals))
        .collect();
    if !details.is_empty() {
        return Err(details.into_error());
    }
    Ok(payments.into_iter().flatten().collect())
}

/// The fields a payment may have; any other is a detail.
pub const FIELDS: [&str; 6] = [
    "trackingId",
    "amount",
    "timestamp",
    "status",
    "signature",
    "idempotencyKey",
];

fn validate_item(
    index: usize,
    item: &Value,
    details: &mut Details,
    literals: &Literals,
) -> Option<NewPayment> {
    let before = details.total();
    let mut bad = |field: Option<&str>, message: String| {
        details.push(Detail {
            index,
            field: field.map(str::to_owned),
            message,
        })
    };
    let Value::Object(map) = item else {
        bad(None, "A payment must be a JSON object".to_owned());
        return None;
    };
    for key in map.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
        bad(
            Some(key),
            format!("Unknown field; expected only {}", FIELDS.join(", ")),
        );
    }
    let tracking_id = match map.get("trackingId") {
        Some(Value::String(s)) => match check_tracking_id(s) {
            Ok(()) => Some(s.clone()),
            Err(m) => {
                bad(Some("trackingId"), m.to_owned());
                None
            }
        },
        _ => {
            bad(
                Some("trackingId"),
                "Tracking ID is required and must be a string".to_owned(),
            );
            None
        }
    };
    let literal = |field: &str| literals.of(index, field);
    let amount = safe_integer(
        map,
        "amount",
        MAX_SAFE_INTEGER,
        &literal,
        &mut bad,
        "a non-negative integer in the token's base units, at most 9007199254740991 (2^53 - 1) so that JavaScript clients read it exactly",
    );
    let timestamp = safe_integer(
        map,
        "timestamp",
        MAX_TIMESTAMP_SECONDS,
        &literal,
        &mut bad,
        "the on-chain execution time in seconds since the Unix epoch: a non-negative integer at most 253402300799 (milliseconds are not accepted)",
    );
    let status = match map.get("status") {
        Some(Value::String(s)) => PaymentStatus::parse(s),
        _ => None,
    };
    if status.is_none() {
        bad(
            Some("status"),
            "status must be one of executed, failed, pending".to_owned(),
        );
    }
    let signature = optional_key(map, "signature", &mut bad);
    let idempotency_key = optional_key(map, "idempotencyKey", &mut bad);
    let dedupe = match (idempotency_key, signature.clone()) {
        (Some(Some(key)), _) => Some(DedupeKey::Idempotency(key)),
        (_, Some(Some(sig))) => Some(DedupeKey::Signature(sig)),
        (Some(None), _) | (_, Some(None)) => None, // already reported
        (None, None) => {
            bad(Some("signature"), "signature (or, for a payment that never reached the chain, idempotencyKey) is required".to_owned());
            None
        }
    };
    if details.total() > before {
        return None;
    }
    Some(NewPayment {
        data: PaymentData {
            tracking_id: tracking_id?,
            amount: amount?,
            timestamp: timestamp?,
            status: status?,
            signature: signature.flatten(),
        },
        dedupe: dedupe?,
    })
}

fn safe_integer(
    map: &Map<String, Value>,
    field: &str,
    max: u64,
    literal: &impl Fn(&str) -> Option<String>,
    bad: &mut impl FnMut(Option<&str>, String),
    what: &str,
) -> Option<u64> {
    let value = map
        .get(field)
        .and_then(|v| json_integer(v, || literal(field), max));
    match value {
        Some(n) => Some(n),
        None => {
            bad(
                Some(field),
                format!("{field} is required and must be {what}"),
            );
            None
        }
    }
}

/// An optional string key: `None` when absent or null, `Some(None)` when
/// present but invalid (reported), `Some(Some(s))` when valid.
fn optional_key(
    map: &Map<String, Value>,
    field: &str,
    bad: &mut impl FnMut(Option<&str>, String),
) -> Option<Option<String>> {
    match map.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= MAX_KEY_BYTES && !s.chars().any(char::is_control) =>
        {
            Some(Some(s.clone()))
        }
        Some(_) => {
            bad(
                Some(field),
                format!(
                    "{field} must be a non-empty string of at most {MAX_KEY_BYTES} bytes without control characters"
                ),
            );
            Some(None)
        }
    }
}

/// One trackingId's items of a request: their indices in the request and
/// the payments themselves, in request order.
struct Group {
    tracking_id: String,
    indices: Vec<usize>,
    payments: Vec<NewPayment>,
}

/// Splits a request by trackingId (in order of first appearance), moving
/// the payments rather than copying them.
fn group_by_tracking_id(payments: Vec<NewPayment>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut position: HashMap<String, usize> = HashMap::new();
    for (i, p) in payments.into_iter().enumerate() {
        let at = match position.get(&p.data.tracking_id) {
            Some(&at) => at,
            None => {
                position.insert(p.data.tracking_id.clone(), groups.len());
                groups.push(Group {
                    tracking_id: p.data.tracking_id.clone(),
                    indices: Vec::new(),
                    payments: Vec::new(),
                });
                groups.len() - 1
            }
        };
        groups[at].indices.push(i);
        groups[at].payments.push(p);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ErrorCode;
    use serde_json::json;

    fn fields(item: Value) -> Vec<Option<String>> {
        let mut details = Details::default();
        let text = item.to_string();
        validate_item(0, &item, &mut details, &Literals::new(text.as_bytes()));
        details.kept().iter().map(|d| d.field.clone()).collect()
    }

    fn good() -> Value {
        json!({"trackingId": "sub-1", "amount": 1, "timestamp": 1699876543, "status": "executed", "signature": "sig"})
    }

    fn with(key: &str, v: Value) -> Value {
        let mut item = good();
        item[key] = v;
        item
    }

    #[test]
    fn each_bad_field_is_reported_once() {
        assert!(fields(good()).is_empty());
        let f = |s: &str| vec![Some(s.to_owned())];
        assert_eq!(fields(with("amount", json!(-1))), f("amount"));
        assert_eq!(fields(with("amount", json!(1.5))), f("amount"));
        assert_eq!(fields(with("amount", json!("1"))), f("amount"));
        assert_eq!(
            fields(with("amount", json!(MAX_SAFE_INTEGER + 1))),
            f("amount")
        );
        assert!(fields(with("amount", json!(MAX_SAFE_INTEGER))).is_empty());
        assert_eq!(
            fields(with("timestamp", json!(1699876543210u64))),
            f("timestamp")
        );
        assert_eq!(fields(with("status", json!("done"))), f("status"));
        assert_eq!(fields(with("signature", json!(""))), f("signature"));
        assert_eq!(
            fields(with("idempotencyKey", json!(5))),
            f("idempotencyKey")
        );
        assert_eq!(fields(with("extra", json!(1))), f("extra"));
        assert_eq!(fields(with("trackingId", json!("a\u{0}"))), f("trackingId"));
        assert_eq!(fields(json!("x")), vec![None]);
        let mut no_key = good();
        no_key.as_object_mut().unwrap().remove("signature");
        assert_eq!(fields(no_key.clone()), f("signature"));
        no_key["idempotencyKey"] = json!("k1");
        assert!(fields(no_key).is_empty());
        assert_eq!(fields(json!({})).len(), 5); // trackingId, amount, timestamp, status, signature
    }

    #[test]
    fn whole_numbers_are_integers_and_fractions_are_refused_exactly() {
        let body = |amount: &str, timestamp: &str| {
            format!(
                r#"[{{"trackingId":"t","amount":1,"timestamp":1,"status":"failed","signature":"a"}},
                    {{"trackingId":"t","amount":{amount},"timestamp":{timestamp},"status":"failed","signature":"b"}}]"#
            )
        };
        let ok = parse_batch(body("1000000.0", "1.699876543e9").as_bytes(), 10).unwrap();
        assert_eq!(
            (ok[1].data.amount, ok[1].data.timestamp),
            (1_000_000, 1_699_876_543)
        );
        for (amount, timestamp, field) in [
            ("4503599627370496.5", "1", "amount"),
            ("1.5", "1", "amount"),
            ("9007199254740992.0", "1", "amount"),
            ("1", "1699876543210.0", "timestamp"),
            ("1", "1.0000000000000001", "timestamp"),
        ] {
            let err = parse_batch(body(amount, timestamp).as_bytes(), 10).unwrap_err();
            let bad: Vec<_> = err
                .details()
                .iter()
                .map(|d| (d.index, d.field.clone()))
                .collect();
            assert_eq!(bad, [(1, Some(field.to_owned()))], "{amount} {timestamp}");
        }
        let one =
            r#"{"trackingId":"t","amount":2e3,"timestamp":5,"status":"failed","signature":"a"}"#;
        assert_eq!(
            parse_batch(one.as_bytes(), 10).unwrap()[0].data.amount,
            2000
        );
    }

    /// An exponent of i64::MIN once overflowed `abs()` (a panic in a debug
    /// build, the build the fuzzers use): refused as a bad amount instead.
    #[test]
    fn an_exponent_at_the_end_of_i64_is_a_bad_field_not_a_panic() {
        let body = |exponent: &str| {
            format!(
                r#"{{"trackingId":"t","amount":1.5e{exponent},"timestamp":1,"status":"executed","signature":"s"}}"#
            )
        };
        let err = parse_batch(body("-9223372036854775808").as_bytes(), 10).unwrap_err();
        let bad: Vec<_> = err.details().iter().map(|d| d.field.clone()).collect();
        assert_eq!(bad, [Some("amount".to_owned())]);
        // Too large for serde_json: the body is not JSON it can read.
        let err = parse_batch(body("9223372036854775807").as_bytes(), 10).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidPayload);
    }

    #[test]
    fn idempotency_key_wins_over_signature() {
        let mut details = Details::default();
        let item = with("idempotencyKey", json!("k"));
        let text = item.to_string();
        let p = validate_item(0, &item, &mut details, &Literals::new(text.as_bytes())).unwrap();
        assert_eq!(p.dedupe, DedupeKey::Idempotency("k".into()));
        assert_eq!(p.data.signature.as_deref(), Some("sig"));
    }
}
