//! Operations endpoints (contract section 6): health, readiness, metrics,
//! and the answer to any other path.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;
use crate::model::ErrorCode;
use crate::telemetry;

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the node can serve (not shutting down, storage reachable).
pub async fn readyz(State(app): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if app.shutting_down() {
        return Err(ApiError::unavailable("Shutting down"));
    }
    // The store's error text stays in the log: it names hosts, ports and
    // system errors, which are nobody's business on a public endpoint.
    app.store.ping().await.map_err(|err| {
        tracing::warn!(%err, "not ready: storage unreachable");
        ApiError::unavailable("Storage is unreachable")
    })?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

/// `GET /metrics`: Prometheus text format. The figures read rather than
/// counted (process, sockets by transport) are taken now.
pub async fn metrics(State(app): State<AppState>) -> Response {
    telemetry::collect_process_metrics();
    if let Some(io) = &app.io {
        let (polling, websocket) = crate::realtime::sockets_by_transport(io);
        metrics::gauge!(telemetry::SOCKETS_BY_TRANSPORT, "transport" => "polling")
            .set(polling as f64);
        metrics::gauge!(telemetry::SOCKETS_BY_TRANSPORT, "transport" => "websocket")
            .set(websocket as f64);
    }
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
