//! Minting socket tokens (contract section 5): `POST /v1/ws/tokens`.
//!
//! A backend holding an API key asks for a token naming the trackingIds a
//! browser may watch, and hands it to that browser. The key is checked
//! before a byte of the body is read.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::bearer::{Credential, require};
use super::body::{read_bounded, refuse_unread};
use super::client::Client;
use super::error::{
    ApiError, Detail, InvalidPayloadError, NotFoundError, PayloadTooLargeError, SlowedDownError,
    UnauthorizedError,
};
use super::ingest::Literals;
use super::state::AppState;
use crate::auth::Access;
use crate::model::{check_name, check_tracking_id, json_integer, now_ms};
use crate::telemetry;
use std::net::IpAddr;

/// `ttlSeconds` when the request does not say.
pub const DEFAULT_TTL_SECONDS: u64 = 60;

/// The fields a mint request may have; any other is a detail.
pub const FIELDS: [&str; 2] = ["trackingIds", "ttlSeconds"];

/// A minted token (`201`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MintedBody {
    /// An HS256 JWT (RFC 7519) with `exp`, `iat` (seconds) and `tids`, its
    /// header naming the signing secret by `kid`.
    #[schema(min_length = 1)]
    token: String,
    /// When the token expires, in milliseconds since the Unix epoch.
    #[schema(value_type = crate::model::schema::Millis)]
    expires_at: u64,
}

/// A valid mint request.
#[derive(Debug, PartialEq, Eq)]
pub struct MintRequest {
    pub tracking_ids: Vec<String>,
    pub ttl_seconds: u64,
}

/// Mint a socket token (token mode).
///
/// A backend holding an API key gets a short-lived token naming the
/// trackingIds a browser may watch, and hands it to that browser: the
/// browser connects with it (handshake auth or `token` query parameter)
/// and backfills with it. The key is checked before the body is read; in
/// `--auth open` a call with a valid key answers `404` (tokens are not
/// used there).
#[utoipa::path(
    post,
    path = "/v1/ws/tokens",
    tag = "tokens",
    operation_id = "mintToken",
    security(("apiKey" = [])),
    request_body(
        content = crate::http::openapi::TokenRequest,
        content_type = "application/json",
        example = json!({ "trackingIds": ["sub-1", "sub-2"], "ttlSeconds": 60 }),
    ),
    responses(
        (status = 201, description = "The token.", body = MintedBody,
            example = json!({ "token": "<jwt>", "expiresAt": 1699876603210u64 })),
        (status = 400, description = "A bad request body: one detail per bad field (`index` 0, `field` `trackingIds`, `ttlSeconds` or an unknown field; the message names a bad entry's position).",
            body = InvalidPayloadError,
            example = json!({ "error": { "code": "INVALID_PAYLOAD", "message": "1 invalid field(s); no token was minted",
                "details": [ { "index": 0, "field": "trackingIds",
                    "message": "trackingIds[1]: a lone * is refused: name trackingIds or a prefix such as \"merchant-42:*\"" } ] } })),
        (status = 401, description = "Missing or wrong API key (or no `--api-key` configured), checked before the body is read.",
            body = UnauthorizedError,
            example = json!({ "error": { "code": "UNAUTHORIZED", "message": "Invalid API key" } })),
        (status = 404, description = "The server runs with `--auth open`: tokens are not used (after the key check).",
            body = NotFoundError,
            example = json!({ "error": { "code": "NOT_FOUND", "message": "Socket tokens are not used: the server runs with --auth open" } })),
        (status = 408, description = "The body did not arrive whole within the body timeout (10 s).",
            body = InvalidPayloadError,
            example = json!({ "error": { "code": "INVALID_PAYLOAD", "message": "The request body was not received within 10 s" } })),
        (status = 413, description = "The body is over `--max-body` bytes.",
            body = PayloadTooLargeError,
            example = json!({ "error": { "code": "PAYLOAD_TOO_LARGE", "message": "Request body is larger than 1048576 bytes" } })),
        (status = 429, description = "Too many failed credentials from this address: refused without being checked until `Retry-After` seconds have passed.",
            body = SlowedDownError,
            headers(("Retry-After" = u64, description = "Seconds until this address is checked again.")),
            example = json!({ "error": { "code": "RATE_LIMITED", "message": "Too many failed credentials from this address; retry after the time in Retry-After" } })),
    ),
)]
pub async fn mint(
    State(app): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match mint_token(&app, client, &headers, body).await {
        Ok(minted) => (StatusCode::CREATED, Json(minted)).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn mint_token(
    app: &AppState,
    client: Option<IpAddr>,
    headers: &HeaderMap,
    body: Body,
) -> Result<MintedBody, ApiError> {
    let credentials = &app.credentials;
    let keys = &credentials.api_keys;
    if let Err(refusal) = require(
        keys,
        &credentials.slowdown,
        client,
        headers,
        Credential::ApiKey,
    ) {
        return Err(refuse_unread(headers, body, refusal));
    }
    let Access::Token(keys) = &app.credentials.access else {
        let refusal =
            ApiError::not_found("Socket tokens are not used: the server runs with --auth open");
        return Err(refuse_unread(headers, body, refusal));
    };
    let bytes = read_bounded(headers, body, app.limits.max_body).await?;
    let request = parse_mint(&bytes, app.limits.max_subscriptions, keys.max_ttl())?;
    let minted = keys.mint(&request.tracking_ids, request.ttl_seconds, now_ms());
    metrics::counter!(telemetry::TOKENS_MINTED).increment(1);
    Ok(MintedBody {
        token: minted.token,
        expires_at: minted.expires_at_ms,
    })
}

/// Parses and validates a mint body; every bad field is a detail of one
/// `400 INVALID_PAYLOAD`.
pub fn parse_mint(bytes: &[u8], max_entries: usize, max_ttl: u64) -> Result<MintRequest, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid_payload(format!("Request body is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::invalid_payload(
            "Request body must be an object: { \"trackingIds\": [...], \"ttlSeconds\": 60 }",
        ));
    };
    let mut details = Vec::new();
    let mut bad = |field: &str, message: String| {
        details.push(Detail {
            index: 0,
            field: Some(field.to_owned()),
            message,
        })
    };
    for name in fields.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
        bad(name, format!("Unknown field {name:?}"));
    }
    let tracking_ids = match fields.get("trackingIds") {
        Some(Value::Array(entries)) if entries.is_empty() || entries.len() > max_entries => {
            bad(
                "trackingIds",
                format!("trackingIds must hold 1 to {max_entries} entries"),
            );
            Vec::new()
        }
        Some(Value::Array(entries)) => {
            let mut ids = Vec::with_capacity(entries.len());
            for (at, entry) in entries.iter().enumerate() {
                match entry.as_str().map(|e| (e, check_entry(e))) {
                    Some((e, Ok(()))) => ids.push(e.to_owned()),
                    Some((_, Err(why))) => bad("trackingIds", format!("trackingIds[{at}]: {why}")),
                    None => bad(
                        "trackingIds",
                        format!("trackingIds[{at}]: must be a string"),
                    ),
                }
            }
            ids
        }
        Some(_) => {
            bad("trackingIds", "trackingIds must be an array".to_owned());
            Vec::new()
        }
        None => {
            bad("trackingIds", "trackingIds is required".to_owned());
            Vec::new()
        }
    };
    let ttl_seconds = match fields.get("ttlSeconds") {
        None | Some(Value::Null) => DEFAULT_TTL_SECONDS,
        // `60.0` is 60, as for ingest's integers.
        Some(v) => match json_integer(v, || Literals::new(bytes).of(0, "ttlSeconds"), max_ttl) {
            Some(n) if (1..=max_ttl).contains(&n) => n,
            _ => {
                bad(
                    "ttlSeconds",
                    format!("ttlSeconds must be an integer from 1 to {max_ttl} (--token-max-ttl)"),
                );
                DEFAULT_TTL_SECONDS
            }
        },
    };
    if !details.is_empty() {
        let count = details.len();
        return Err(ApiError::InvalidPayload {
            message: format!("{count} invalid field(s); no token was minted"),
            details: Some(details),
        });
    }
    Ok(MintRequest {
        tracking_ids,
        ttl_seconds,
    })
}

/// An entry of `trackingIds`: a trackingId, or a prefix ending in `*`.
fn check_entry(entry: &str) -> Result<(), &'static str> {
    match entry.strip_suffix('*') {
        Some("") => {
            Err("a lone * is refused: name trackingIds or a prefix such as \"merchant-42:*\"")
        }
        Some(prefix) => check_name(prefix),
        None => check_tracking_id(entry),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<MintRequest, Vec<(Option<String>, String)>> {
        parse_mint(v.to_string().as_bytes(), 3, 3600).map_err(|e| {
            e.details()
                .iter()
                .map(|d| (d.field.clone(), d.message.clone()))
                .collect()
        })
    }

    #[test]
    fn good_requests() {
        assert_eq!(
            parse(json!({ "trackingIds": ["a", "m:*"] })).unwrap(),
            MintRequest {
                tracking_ids: vec!["a".into(), "m:*".into()],
                ttl_seconds: 60
            }
        );
        assert_eq!(
            parse(json!({ "trackingIds": ["a"], "ttlSeconds": 3600 }))
                .unwrap()
                .ttl_seconds,
            3600
        );
        // A whole number written with a fraction is that integer.
        assert_eq!(
            parse(json!({ "trackingIds": ["a"], "ttlSeconds": 60.0 }))
                .unwrap()
                .ttl_seconds,
            60
        );
    }

    #[test]
    fn bad_requests_name_the_field_and_position() {
        let cases = [
            (json!({}), "trackingIds", "required"),
            (json!({ "trackingIds": [] }), "trackingIds", "1 to 3"),
            (
                json!({ "trackingIds": ["a", "b", "c", "d"] }),
                "trackingIds",
                "1 to 3",
            ),
            (json!({ "trackingIds": "a" }), "trackingIds", "array"),
            (
                json!({ "trackingIds": ["a", "*"] }),
                "trackingIds",
                "trackingIds[1]",
            ),
            (
                json!({ "trackingIds": ["a", 5] }),
                "trackingIds",
                "trackingIds[1]",
            ),
            (
                json!({ "trackingIds": ["", "a"] }),
                "trackingIds",
                "trackingIds[0]",
            ),
            (
                json!({ "trackingIds": ["a"], "ttlSeconds": 0 }),
                "ttlSeconds",
                "1 to 3600",
            ),
            (
                json!({ "trackingIds": ["a"], "ttlSeconds": 3601 }),
                "ttlSeconds",
                "1 to 3600",
            ),
            (
                json!({ "trackingIds": ["a"], "ttlSeconds": 1.5 }),
                "ttlSeconds",
                "1 to 3600",
            ),
            (
                json!({ "trackingIds": ["a"], "ttlSeconds": 0.0 }),
                "ttlSeconds",
                "1 to 3600",
            ),
            (
                json!({ "trackingIds": ["a"], "ttlSeconds": "60" }),
                "ttlSeconds",
                "1 to 3600",
            ),
            (
                json!({ "trackingIds": ["a"], "tids": [] }),
                "tids",
                "Unknown",
            ),
        ];
        for (body, field, message) in cases {
            let details = parse(body.clone()).unwrap_err();
            assert_eq!(details.len(), 1, "{body}: {details:?}");
            assert_eq!(details[0].0.as_deref(), Some(field), "{body}");
            assert!(details[0].1.contains(message), "{body}: {details:?}");
        }
        assert!(parse_mint(b"[1]", 3, 3600).is_err());
        assert!(parse_mint(b"{", 3, 3600).is_err());
    }
}
