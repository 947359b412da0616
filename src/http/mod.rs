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
//! - [`openapi`]: the OpenAPI document of these endpoints, `GET /openapi.json`.
//! - [`error`]: the error body every endpoint answers with.
//! - [`state`]: what the handlers share.
//! - [`serve`]: the connection loop (timeouts, upgrades, graceful shutdown).
//! - [`body`], [`query`]: bounded body reads and strict query strings,
//!   for any endpoint; [`bearer`]: the one bearer-key check.

pub mod admin;
pub mod bearer;
pub mod body;
pub mod client;
pub mod connections;
pub mod error;
pub mod events;
pub mod ingest;
pub mod openapi;
pub mod ops;
pub mod query;
pub mod serve;
pub mod state;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::handler::Handler;
use axum::http::{HeaderName, HeaderValue, Method, Request, header};
use axum::middleware::from_fn_with_state;
use axum::routing::{MethodFilter, on};
use socketioxide::layer::SocketIoLayer;
use tower::util::MapRequestLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::detach::detach_head;
use client::{TrustedProxies, find_client};
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
    trusted: TrustedProxies,
    cors_origins: &[String],
) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    rest()
        .router
        // The operators' page and its API, outside the public document.
        .merge(admin_routes())
        .fallback(ops::not_found)
        .with_state(state)
        .layer(socket_io)
        // In front of the Socket.IO layer: a refused handshake never
        // reaches engineioxide.
        .layer(from_fn_with_state(connections, limit_connections))
        .layer(MapRequestLayer::new(detach_head(SOCKET_PATH)))
        // Before the head is detached: every X-Forwarded-For line counts.
        .layer(from_fn_with_state(trusted, find_client))
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

/// The REST routes, and the list of what they are: the OpenAPI document
/// must name exactly these (its test compares them).
pub struct Rest {
    pub router: Router<AppState>,
    /// Each route's method and path, in the order they are mounted.
    pub routes: Vec<(Method, &'static str)>,
}

impl Rest {
    /// Serves `method` on `path` with `handler`; any other method on that
    /// path is `405 METHOD_NOT_ALLOWED` with `Allow` (a GET route also
    /// answers HEAD, as axum does).
    fn mount<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone())
            .unwrap_or_else(|_| unreachable!("only standard methods are mounted"));
        self.router = self
            .router
            .route(path, on(filter, handler).fallback(ops::method_not_allowed));
        self.routes.push((method, path));
        self
    }
}

/// Every REST route (contract sections 3 to 6, and the OpenAPI document).
pub fn rest() -> Rest {
    Rest {
        router: Router::new(),
        routes: Vec::new(),
    }
    .mount(Method::POST, "/v1/payments", ingest::ingest)
    .mount(Method::GET, "/v1/events", events::events)
    .mount(Method::POST, "/v1/ws/tokens", tokens::mint)
    .mount(Method::GET, "/healthz", ops::healthz)
    .mount(Method::GET, "/readyz", ops::readyz)
    .mount(Method::GET, "/metrics", ops::metrics)
    .mount(Method::GET, openapi::PATH, openapi::openapi_json)
}

/// The admin page (beyond the contract, not in the OpenAPI document);
/// another method on its paths is `405` too.
fn admin_routes() -> Router<AppState> {
    use axum::routing::get;
    let other = ops::method_not_allowed;
    Router::new()
        .route("/admin", get(admin::page).fallback(other))
        .route("/admin/admin.js", get(admin::script).fallback(other))
        .route("/admin/admin.css", get(admin::style).fallback(other))
        .route("/admin/api/nodes", get(admin::nodes).fallback(other))
        .route("/admin/api/tracking", get(admin::tracking).fallback(other))
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
