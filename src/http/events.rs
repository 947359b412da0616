//! Backfill over REST (contract section 4): `GET /v1/events`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::error::ApiError;
use super::query::{QueryError, StrictQuery};
use super::state::AppState;
use crate::auth;
use crate::model::{ErrorCode, EventId, check_tracking_id};

/// Default and largest page of `GET /v1/events`.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    #[serde(rename = "trackingId")]
    tracking_id: Option<String>,
    since: Option<String>,
    limit: Option<String>,
    /// Token mode: the socket token, when not sent as a bearer header.
    token: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventsPage {
    data: Vec<Arc<RawValue>>,
    has_more: bool,
    truncated: bool,
}

/// `GET /v1/events?trackingId=&since=&limit=`: the retained `payment`
/// envelopes after `since`, exactly as sockets receive them.
pub async fn events(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<StrictQuery<EventsQuery>, QueryError>,
) -> Result<Response, ApiError> {
    let StrictQuery(q) = query.map_err(bad_query)?;
    // Token mode: who is asking comes before what is asked.
    let token = auth::bearer(&headers).or(q.token.as_deref());
    let grant = app
        .access
        .grant(token)
        .map_err(|e| ApiError::unauthorized(format!("{e}")))?;
    let PageRequest {
        tracking_id,
        since,
        limit,
    } = PageRequest::parse(q.tracking_id, q.since.as_deref(), q.limit.as_deref())?;
    if grant.is_some_and(|g| !g.covers(&tracking_id)) {
        return Err(ApiError::forbidden(
            "The token does not cover this trackingId",
        ));
    }
    let page = app.store.read(&tracking_id, since, limit).await?;
    Ok(Json(EventsPage {
        data: page.events.into_iter().map(|e| e.envelope).collect(),
        has_more: page.has_more,
        truncated: page.truncated,
    })
    .into_response())
}

/// A page of one trackingId's history asked for: `trackingId`, `since`
/// (absent or empty: from the oldest retained) and `limit`, checked.
pub struct PageRequest {
    pub tracking_id: String,
    pub since: Option<EventId>,
    pub limit: usize,
}

impl PageRequest {
    pub fn parse(
        tracking_id: Option<String>,
        since: Option<&str>,
        limit: Option<&str>,
    ) -> Result<PageRequest, ApiError> {
        let tracking_id = tracking_id.ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidTrackingId,
                "trackingId is required",
            )
        })?;
        check_tracking_id(&tracking_id)
            .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidTrackingId, m))?;
        let since = match since {
            None | Some("") => None,
            Some(s) => Some(
                s.parse::<EventId>()
                    .map_err(|_| ApiError::from(crate::store::StoreError::InvalidSince))?,
            ),
        };
        let limit = match limit {
            None => DEFAULT_PAGE,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if n >= 1 => n.min(MAX_PAGE),
                _ => {
                    return Err(ApiError::invalid_payload(format!(
                        "limit must be an integer from 1 to {MAX_PAGE}"
                    )));
                }
            },
        };
        Ok(PageRequest {
            tracking_id,
            since,
            limit,
        })
    }
}

/// A query refused by [`StrictQuery`], with the code of the parameter at
/// fault.
pub fn bad_query(err: QueryError) -> ApiError {
    let code = match err.parameter() {
        Some("trackingId") => ErrorCode::InvalidTrackingId,
        Some("since") => ErrorCode::InvalidSince,
        _ => ErrorCode::InvalidPayload,
    };
    ApiError::new(StatusCode::BAD_REQUEST, code, err.to_string())
}
