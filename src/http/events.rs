//! Backfill over REST (contract section 4): `GET /v1/events`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::bearer::slowed;
use super::client::Client;
use super::error::{
    ApiError, BackfillQueryError, ForbiddenError, InternalError, SlowedDownError,
    UnauthorizedError, UnavailableError,
};
use super::query::{QueryError, StrictQuery};
use super::state::AppState;
use crate::auth::{self, Access};
use crate::model::{EventId, NameKind, StatusFilter, Streams, WireId, with_prev_seq};
use crate::store::HistoryStore;

/// Default and largest page of `GET /v1/events`.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    #[serde(rename = "trackingId")]
    tracking_id: Option<String>,
    since: Option<String>,
    limit: Option<String>,
    /// Only payments of these statuses (comma-separated), with `prevSeq`.
    status: Option<String>,
    /// Token mode: the socket token, when not sent as a bearer header.
    token: Option<String>,
}

/// A page of backfill.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventsPage {
    /// The retained `payment` envelopes after `since`, in seq order, exactly
    /// as sockets receive them.
    #[schema(value_type = Vec<crate::model::schema::AnyPaymentEnvelope>)]
    data: Vec<Arc<RawValue>>,
    /// More events follow this page: ask again with `since` = the last id.
    has_more: bool,
    /// Something after `since` is no longer retained (or the history
    /// `since` came from was lost): the page starts at the oldest retained
    /// event, and the client has a gap.
    truncated: bool,
}

/// The `limit` query parameter.
pub struct Limit;

impl utoipa::PartialSchema for Limit {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Integer)
            .minimum(Some(1))
            // Anything the server can read is accepted; above MAX_PAGE it is lowered.
            .maximum(Some(usize::MAX))
            .default(Some(DEFAULT_PAGE.into()))
            .description(Some(format!(
                "Events per page, default {DEFAULT_PAGE}; a larger value than {MAX_PAGE} is lowered to {MAX_PAGE}."
            )))
            .build()
            .into()
    }
}

impl ToSchema for Limit {}

/// Backfill.
///
/// The retained `payment` envelopes of a trackingId (or, with
/// `--stream-separator`, of an account stream) after `since`, in seq
/// order: the same objects the socket sends, so a client fills a `seq` gap
/// or resumes from here. With `status`, only matching payments, each with
/// `prevSeq`. Without `since` (or with `since=` empty) the page
/// starts at the oldest retained event. In token mode it needs a socket
/// token covering the trackingId (who is asking is checked before the
/// query).
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "backfill",
    operation_id = "backfill",
    params(
        ("trackingId" = crate::model::schema::TrackingId, Query, description = "The trackingId whose events to read, or (with `--stream-separator`) an account stream `<account><separator>*` (the `*` URL-encoded or not).",
            example = "sub-1"),
        ("since" = Option<crate::model::schema::Since>, Query,
            description = "The last event id the client saw; the page starts after it.",
            example = "1699876543210-41"),
        ("limit" = Option<Limit>, Query, example = 100),
        ("status" = Option<crate::model::schema::StatusList>, Query, example = "executed,failed"),
    ),
    security((), ("socketToken" = []), ("socketTokenQuery" = [])),
    responses(
        (status = 200, description = "A page of events.", body = EventsPage,
            examples(
                ("page" = (summary = "A page with one payment (the payment envelope of contract section 1)",
                    value = json!({ "data": [
                        { "type": "payment_notification",
                          "id": "1699876543210-0", "seq": 42,
                          "data": { "trackingId": "sub-1", "amount": 1000000, "timestamp": 1699876543u64,
                                    "status": "executed", "signature": "5Jt...base58" },
                          "timestamp": 1699876543210u64 }
                    ], "hasMore": false, "truncated": false }))),
                ("stream" = (summary = "An account stream, filtered with status=failed (contract section 8): stream envelopes, each with prevSeq",
                    value = json!({ "data": [
                        { "type": "payment_notification", "stream": "merchant-42:*",
                          "id": "s1699876543000-17", "seq": 17,
                          "source": { "id": "1699876500000-3", "seq": 3 },
                          "data": { "trackingId": "merchant-42:sub-7", "amount": 1000000, "timestamp": 1699876543u64,
                                    "status": "failed", "signature": "5Jt...base58" },
                          "timestamp": 1699876543210u64, "prevSeq": 12 }
                    ], "hasMore": false, "truncated": false }))),
                ("truncated" = (summary = "Nothing retained after since, and events were lost",
                    value = json!({ "data": [], "hasMore": false, "truncated": true }))),
            )),
        (status = 400, description = "A bad query: `INVALID_TRACKING_ID`, `INVALID_SINCE` (not an id this server could have issued), `INVALID_PAYLOAD` (limit).",
            body = BackfillQueryError,
            example = json!({ "error": { "code": "INVALID_SINCE", "message": "since is not an event id this server could have issued" } })),
        (status = 401, description = "Token mode: the socket token is missing, invalid or expired; or the request has an `Authorization` header that is not `Bearer <token>`, or both the header and the `token` parameter.",
            body = UnauthorizedError,
            example = json!({ "error": { "code": "UNAUTHORIZED", "message": "the token has expired" } })),
        (status = 403, description = "Token mode: the socket token does not cover this trackingId.",
            body = ForbiddenError,
            example = json!({ "error": { "code": "FORBIDDEN", "message": "The token does not cover this trackingId" } })),
        (status = 429, description = "Token mode: too many failed credentials (socket tokens) from this address: refused without being checked until `Retry-After` seconds have passed.",
            body = SlowedDownError,
            headers(("Retry-After" = u64, description = "Seconds until this address is checked again.")),
            example = json!({ "error": { "code": "RATE_LIMITED", "message": "Too many failed credentials from this address; retry after the time in Retry-After" } })),
        (status = 500, description = "The server could not read its storage's answer (a key of the wrong type, a reply of another shape): a bug or a foreign writer, logged and counted in `tidings_store_malformed_total`. Retrying as is reads the same.",
            body = InternalError,
            example = json!({ "error": { "code": "INTERNAL_ERROR", "message": "The server could not read its storage's answer" } })),
        (status = 503, description = "The storage is unreachable.",
            body = UnavailableError,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying.")),
            example = json!({ "error": { "code": "UNAVAILABLE", "message": "Storage is unavailable; retry the same request" } })),
    ),
)]
pub async fn events(
    State(app): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    query: Result<StrictQuery<EventsQuery>, QueryError>,
) -> Result<Response, ApiError> {
    let StrictQuery(q) = query.map_err(bad_query)?;
    // Token mode: who is asking comes before what is asked.
    let credentials = &app.credentials;
    let token = if matches!(credentials.access, Access::Token(_)) {
        slowed(&credentials.slowdown, client)?;
        presented_token(&headers, q.token.as_deref())?
    } else {
        None
    };
    let grant = credentials.access.grant(token).map_err(|e| {
        // A missing (or empty) token is no guess: it does not count.
        if token.is_some_and(|t| !t.is_empty()) {
            credentials.slowdown.failed(client);
        }
        ApiError::unauthorized(format!("{e}"))
    })?;
    let (tracking_id, kind) = required_tracking_id(q.tracking_id, app.limits.streams)?;
    if grant.is_some_and(|g| !g.covers(&tracking_id)) {
        return Err(ApiError::forbidden(
            "The token does not cover this trackingId",
        ));
    }
    let since = since_param(q.since.as_deref(), kind)?;
    let limit = limit_param(q.limit.as_deref(), DEFAULT_PAGE)?;
    let status = q
        .status
        .as_deref()
        .map(StatusFilter::from_query)
        .transpose()
        .map_err(ApiError::invalid_payload)?;
    let page = match status {
        None => {
            let page = app.store.read(&tracking_id, since, limit).await?;
            EventsPage {
                data: page.events.into_iter().map(|e| e.envelope).collect(),
                has_more: page.has_more,
                truncated: page.truncated,
            }
        }
        Some(status) => filtered_page(&*app.store, &tracking_id, since, limit, status).await?,
    };
    Ok(Json(page).into_response())
}

/// Events read per store call while a filtered page is collected.
const FILTER_CHUNK: usize = 1000;

/// A backfill page with a status filter (contract section 8): up to
/// `limit` matching payments after `since`, each with `prevSeq`, reading
/// the history in chunks. `hasMore` says whether a matching one follows.
async fn filtered_page(
    store: &dyn HistoryStore,
    name: &str,
    since: Option<EventId>,
    limit: usize,
    status: StatusFilter,
) -> Result<EventsPage, ApiError> {
    let first = store.read(name, since, FILTER_CHUNK).await?;
    let truncated = first.truncated;
    // The chain starts at since's seq when the page follows it, else just
    // before the oldest retained payment.
    let mut prev = match since {
        Some(since) if !truncated => since.seq,
        _ => first
            .events
            .first()
            .map_or(first.position.seq, |e| e.id.seq - 1),
    };
    let mut data = Vec::new();
    let mut page = first;
    loop {
        let mut cursor = None;
        for event in &page.events {
            cursor = Some(event.id);
            if !crate::model::status_of(&event.envelope).is_some_and(|s| status.matches(s)) {
                continue;
            }
            if data.len() == limit {
                return Ok(EventsPage {
                    data,
                    has_more: true,
                    truncated,
                });
            }
            data.push(Arc::from(with_prev_seq(&event.envelope, prev)));
            prev = event.id.seq;
        }
        if !page.has_more || cursor.is_none() {
            break;
        }
        page = store.read(name, cursor, FILTER_CHUNK).await?;
        if page.truncated {
            // The history moved on under the read: what was collected stands,
            // and the next page (from its last id) says what is gone.
            return Ok(EventsPage {
                data,
                has_more: true,
                truncated,
            });
        }
    }
    Ok(EventsPage {
        data,
        has_more: false,
        truncated,
    })
}

/// The socket token a backfill request presents (token mode): the bearer
/// credential, or the `token` parameter. An `Authorization` header is the
/// credential whatever it holds, so one that is not `Bearer <token>` is
/// refused rather than passed over for the parameter, and so is a request
/// with both: which one speaks for the client would be anybody's guess
/// (RFC 6750 section 2: one method per request).
fn presented_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Result<Option<&'a str>, ApiError> {
    match (headers.contains_key(header::AUTHORIZATION), query) {
        (true, Some(_)) => Err(ApiError::unauthorized(
            "Send the token once: as Authorization: Bearer or as the token query parameter, not both",
        )),
        (true, None) => auth::bearer(headers)
            .map(Some)
            .ok_or_else(|| ApiError::unauthorized("Authorization must be Bearer <socket token>")),
        (false, query) => Ok(query),
    }
}

/// A query refused by [`StrictQuery`], with the code of the parameter at
/// fault.
/// The `trackingId` parameter, required and checked: a trackingId, or a
/// stream when `streams` are on.
pub fn required_tracking_id(
    tracking_id: Option<String>,
    streams: Streams,
) -> Result<(String, NameKind), ApiError> {
    let tracking_id =
        tracking_id.ok_or_else(|| ApiError::invalid_tracking_id("trackingId is required"))?;
    let kind = streams
        .check_name(&tracking_id)
        .map_err(ApiError::invalid_tracking_id)?;
    Ok((tracking_id, kind))
}

/// The `since` parameter of a history of `kind`: absent or empty is from
/// the oldest retained; an id of the other kind is refused.
pub fn since_param(since: Option<&str>, kind: NameKind) -> Result<Option<EventId>, ApiError> {
    match since {
        None | Some("") => Ok(None),
        Some(s) => WireId::parse(s, kind)
            .map(Some)
            .ok_or_else(ApiError::invalid_since),
    }
}

/// The `limit` parameter: 1 or more (lowered to [`MAX_PAGE`]), `default`
/// when absent.
pub fn limit_param(limit: Option<&str>, default: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n.min(MAX_PAGE)),
            _ => Err(ApiError::invalid_payload(format!(
                "limit must be an integer from 1 to {MAX_PAGE}"
            ))),
        },
    }
}

/// A query refused by [`StrictQuery`], with the code of the parameter at
/// fault.
pub fn bad_query(err: QueryError) -> ApiError {
    let message = err.to_string();
    match err.parameter() {
        Some("trackingId") => ApiError::InvalidTrackingId(message),
        Some("since") => ApiError::InvalidSince(message),
        _ => ApiError::invalid_payload(message),
    }
}
