//! The HTTP side: the router ([`app`]) with ingest, backfill and
//! operations endpoints around the Socket.IO layer, and the middleware
//! every request passes (CORS, request ids, tracing).
//!
//! - [`connections`]: connection limits, in front of the Socket.IO layer.
//! - [`ingest`]: `POST /v1/payments` (contract section 3).
//! - [`events`]: `GET /v1/events` (section 4).
//! - [`tokens`]: `POST /v1/ws/tokens`, socket tokens (section 5).
//! - [`ops`]: health, readiness, metrics (section 6).
//! - [`admin`]: the admin page behind `--api-key` (beyond the contract).
//! - [`error`]: the error body every endpoint answers with.
//! - [`state`]: what the handlers share.
//! - [`serve`]: the connection loop (timeouts, upgrades, graceful shutdown).
//! - [`body`], [`query`]: bounded body reads and strict query strings,
//!   for any endpoint.

pub mod admin;
pub mod body;
pub mod connections;
pub mod error;
pub mod events;
pub mod ingest;
pub mod ops;
pub mod query;
pub mod serve;
pub mod state;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Method, Request, header};
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use socketioxide::layer::SocketIoLayer;
use tower::util::MapRequestLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::detach::detach_head;
use connections::{ConnectionLimits, limit_connections};
pub use state::{App, AppState};

/// The Socket.IO endpoint path (contract section 1).
pub const SOCKET_PATH: &str = "/ws/v1";

/// Every route, the Socket.IO layer at [`SOCKET_PATH`] behind the
/// connection limits, and the middleware.
pub fn app(
    state: AppState,
    socket_io: SocketIoLayer,
    connections: Arc<ConnectionLimits>,
    cors_origins: &[String],
) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/v1/payments", post(ingest::ingest))
        .route("/v1/events", get(events::events))
        .route("/v1/ws/tokens", post(tokens::mint))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/admin", get(admin::page))
        .route("/admin/admin.js", get(admin::script))
        .route("/admin/admin.css", get(admin::style))
        .route("/admin/api/nodes", get(admin::nodes))
        .route("/admin/api/tracking", get(admin::tracking))
        .fallback(ops::not_found)
        .with_state(state)
        .layer(socket_io)
        // In front of the Socket.IO layer: a refused handshake never
        // reaches engineioxide.
        .layer(from_fn_with_state(connections, limit_connections))
        .layer(MapRequestLayer::new(detach_head(SOCKET_PATH)))
        .layer(cors(cors_origins))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let request_id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                // The path only: query strings may carry tokens.
                tracing::info_span!("http", method = %req.method(), path = req.uri().path(), request_id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::HeaderName::from_static("x-request-id"),
        ])
        .max_age(Duration::from_secs(600));
    if origins.iter().any(|o| o == "*") {
        // Any origin, without credentials: what socket.io-client sends by
        // default (withCredentials: false).
        layer.allow_origin(Any)
    } else {
        // Config::validate admitted only canonical origins, each a valid
        // header value.
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        layer
            .allow_origin(AllowOrigin::list(list))
            .allow_credentials(true)
    }
}
