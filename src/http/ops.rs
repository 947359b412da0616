//! Operations endpoints (contract section 6): health, readiness, metrics,
//! and the answers to any other path or method.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, UnavailableError};
use super::state::AppState;

/// The body of `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    status: Up,
}

/// The `status` of `/healthz`: always `ok`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Up {
    Ok,
}

/// The body of `/readyz` when ready.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Readiness {
    status: Ready,
}

/// The `status` of a ready `/readyz`: always `ready`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ready {
    Ready,
}

/// The process is up.
///
/// Answers as long as the process serves HTTP; says nothing about the
/// storage (see `/readyz`).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    responses(
        (status = 200, description = "The process is up.", body = Health,
            example = json!({ "status": "ok" })),
    ),
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: Up::Ok })
}

/// The node can serve.
///
/// Not shutting down, and its storage (and, in a cluster, the Redis that
/// carries publications) reachable. A load balancer takes the node out of
/// rotation while this answers `503`.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    responses(
        (status = 200, description = "The node can serve.", body = Readiness,
            example = json!({ "status": "ready" })),
        (status = 503, description = "Shutting down, or the storage is unreachable (the reason is logged, not answered).",
            body = UnavailableError,
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again.")),
            example = json!({ "error": { "code": "UNAVAILABLE", "message": "Storage is unreachable" } })),
    ),
)]
pub async fn readyz(State(app): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    if app.shutting_down() {
        return Err(ApiError::unavailable("Shutting down"));
    }
    // The store's error text stays in the log: it names hosts, ports and
    // system errors, which are nobody's business on a public endpoint.
    app.store.ping().await.map_err(|err| {
        tracing::warn!(%err, "not ready: storage unreachable");
        ApiError::unavailable("Storage is unreachable")
    })?;
    Ok(Json(Readiness {
        status: Ready::Ready,
    }))
}

/// The Prometheus text exposition of this node's metrics.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Prometheus metrics.
///
/// This node's counters, gauges and histograms in the Prometheus text
/// format (the metrics are listed in `docs/operations.md`). The figures read rather
/// than counted (process, sockets by transport) are taken at each scrape.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text format, version 0.0.4.",
            content_type = "text/plain", body = String,
            example = "# TYPE tidings_sockets gauge\ntidings_sockets 0\n"),
    ),
)]
pub async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        app.metrics.render(),
    )
        .into_response()
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::not_found("No such endpoint")
}

/// A method a path does not serve. The router adds `Allow` (the methods
/// it does serve) to this answer; without this handler axum would answer
/// with an empty body, outside the contract's error shape.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed(
        "This path does not serve this method; Allow lists those it serves".into(),
    )
}
