//! The HTTP API around the Socket.IO endpoint: ingest (in
//! [`crate::ingest`]), backfill, health, readiness and metrics, with the
//! shared state they are handed and the error body they all answer with.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ingest::{Detail, IngestTokens};
use crate::model::{ErrorCode, EventId, check_tracking_id};
use crate::store::{Deliveries, HistoryStore, StoreError};

/// Default and largest page of `GET /v1/events`.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// Seconds a client is told to wait before retrying a `503`.
const RETRY_AFTER_SECONDS: &str = "1";

/// What the HTTP handlers share.
pub struct App {
    pub store: Arc<dyn HistoryStore>,
    pub ingest_tokens: IngestTokens,
    pub max_body: usize,
    pub max_batch: usize,
    pub metrics: PrometheusHandle,
    /// On a single node, ingest waits for this queue to be delivered before
    /// answering.
    pub local_deliveries: Option<Deliveries>,
    shutting_down: AtomicBool,
}

pub type AppState = Arc<App>;

impl App {
    pub fn new(
        store: Arc<dyn HistoryStore>,
        ingest_tokens: IngestTokens,
        max_body: usize,
        max_batch: usize,
        metrics: PrometheusHandle,
        local_deliveries: Option<Deliveries>,
    ) -> Self {
        App {
            store,
            ingest_tokens,
            max_body,
            max_batch,
            metrics,
            local_deliveries,
            shutting_down: AtomicBool::new(false),
        }
    }

    /// From now on ingest answers `503` and `/readyz` is unready.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// Every HTTP error: `{ "error": { "code", "message", "details"? } }`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    details: Option<Vec<Detail>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn invalid_payload(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            message,
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::ConnectionError,
            "Internal error",
        )
    }

    pub fn with_details(mut self, details: Vec<Detail>) -> Self {
        self.details = Some(details);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            code: ErrorCode,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<&'a [Detail]>,
        }
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                details: self.details.as_deref(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    #[serde(rename = "trackingId")]
    tracking_id: Option<String>,
    since: Option<String>,
    limit: Option<String>,
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
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_payload(e.body_text()))?;
    let tracking_id = q.tracking_id.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidTrackingId,
            "trackingId is required",
        )
    })?;
    check_tracking_id(&tracking_id)
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidTrackingId, m))?;
    let invalid_since = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidSince,
            "since is not an event id this server could have issued",
        )
    };
    let since = match q.since.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.parse::<EventId>().map_err(|_| invalid_since())?),
    };
    let limit = match q.limit.as_deref() {
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
    let page = app
        .store
        .read(&tracking_id, since, limit)
        .await
        .map_err(|err| match err {
            StoreError::InvalidSince => invalid_since(),
            StoreError::Unavailable(_) => ApiError::unavailable("Storage is unavailable"),
        })?;
    Ok(Json(EventsPage {
        data: page.events.into_iter().map(|e| e.envelope).collect(),
        has_more: page.has_more,
        truncated: page.truncated,
    })
    .into_response())
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the node can serve (not shutting down, storage reachable).
pub async fn readyz(State(app): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if app.shutting_down() {
        return Err(ApiError::unavailable("Shutting down"));
    }
    app.store
        .ping()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "No such endpoint",
    )
}
