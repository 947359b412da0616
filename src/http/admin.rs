//! The admin page, behind `--api-key` (beyond the contract): `GET /admin`
//! (a plain page and its script, no build step, served from the binary)
//! and the JSON it reads with the API key as a bearer token:
//! `GET /admin/api/nodes` (every node's last report) and
//! `GET /admin/api/tracking?trackingId=&since=&limit=` (a trackingId's
//! latest history, or what came after `since` for a live tail, and its
//! subscribers per node). Without `--api-key` every admin path answers
//! 404.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::bearer::{Credential, require};
use super::client::Client;
use super::error::ApiError;
use super::events::{bad_query, limit_param, required_tracking_id, since_param};
use super::query::{QueryError, StrictQuery};
use super::state::AppState;
use crate::admin::{Admin, NodeView};
use crate::model::{EventId, WirePosition};

const PAGE: &str = include_str!("assets/admin.html");
const SCRIPT: &str = include_str!("assets/admin.js");
/// The latest events the inspector shows when no `since` is given.
const LATEST: u64 = 20;

/// The page and its script may only talk to this origin; nothing inline.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
const STYLE: &str = include_str!("assets/admin.css");

/// `GET /admin`.
pub async fn page(State(app): State<AppState>) -> Result<Response, ApiError> {
    enabled(&app)?;
    Ok(asset("text/html; charset=utf-8", PAGE))
}

/// `GET /admin/admin.js`.
pub async fn script(State(app): State<AppState>) -> Result<Response, ApiError> {
    enabled(&app)?;
    Ok(asset("text/javascript; charset=utf-8", SCRIPT))
}

/// `GET /admin/admin.css`.
pub async fn style(State(app): State<AppState>) -> Result<Response, ApiError> {
    enabled(&app)?;
    Ok(asset("text/css; charset=utf-8", STYLE))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodesBody {
    /// The node that answered.
    node: String,
    nodes: Vec<NodeView>,
}

/// `GET /admin/api/nodes`.
pub async fn nodes(
    State(app): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let admin = authorize(&app, client, &headers)?;
    let nodes = admin.nodes().await?;
    Ok(Json(NodesBody {
        node: admin.id().to_owned(),
        nodes,
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
pub struct TrackingQuery {
    #[serde(rename = "trackingId")]
    tracking_id: Option<String>,
    since: Option<String>,
    limit: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TrackingBody {
    tracking_id: String,
    position: WirePosition,
    history: History,
    subscribers: Vec<Subscribers>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct History {
    data: Vec<Arc<RawValue>>,
    has_more: bool,
    truncated: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Subscribers {
    node: String,
    hostname: String,
    listen: String,
    silent: bool,
    /// None until that node has reported since the inspection began.
    subscribers: Option<u64>,
}

/// `GET /admin/api/tracking`: without `since`, the latest [`LATEST`] (or
/// `limit`) events; with it, the events after it (a live tail). Starts or
/// prolongs the nodes' counting of its subscribers.
pub async fn tracking(
    State(app): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    query: Result<StrictQuery<TrackingQuery>, QueryError>,
) -> Result<Response, ApiError> {
    let admin = authorize(&app, client, &headers)?;
    let StrictQuery(q) = query.map_err(bad_query)?;
    // A trackingId or a stream: both are histories.
    let (tracking_id, kind) = required_tracking_id(q.tracking_id, app.limits.streams)?;
    let since = since_param(q.since.as_deref(), kind)?;
    let limit = limit_param(q.limit.as_deref(), LATEST as usize)?;
    let tid = tracking_id.as_str();
    admin.inspect(tid).await?;
    let page = if since.is_some() {
        app.store.read(tid, since, limit).await?
    } else {
        // Where the history stands, then its last events.
        let latest = limit as u64;
        let head = app.store.read(tid, None, 1).await?;
        let since = (head.position.seq > latest).then(|| EventId {
            epoch: head.position.epoch,
            seq: head.position.seq - latest,
        });
        app.store.read(tid, since, latest as usize).await?
    };
    let subscribers = admin
        .nodes()
        .await?
        .into_iter()
        .map(|view| Subscribers {
            subscribers: view.report.inspected.get(tid).copied(),
            node: view.report.id,
            hostname: view.report.hostname,
            listen: view.report.listen,
            silent: view.silent,
        })
        .collect();
    Ok(Json(TrackingBody {
        tracking_id: tracking_id.clone(),
        position: WirePosition {
            position: page.position,
            kind,
        },
        history: History {
            data: page.events.into_iter().map(|e| e.envelope).collect(),
            has_more: page.has_more,
            truncated: page.truncated,
        },
        subscribers,
    })
    .into_response())
}

fn disabled() -> ApiError {
    ApiError::not_found("The admin page is disabled: the server has no --api-key")
}

fn enabled(app: &AppState) -> Result<&Arc<Admin>, ApiError> {
    match &app.admin {
        Some(admin) if !app.credentials.api_keys.is_empty() => Ok(admin),
        _ => Err(disabled()),
    }
}

/// An API key as the bearer token.
fn authorize<'a>(
    app: &'a AppState,
    client: Option<std::net::IpAddr>,
    headers: &HeaderMap,
) -> Result<&'a Arc<Admin>, ApiError> {
    let admin = enabled(app)?;
    let credentials = &app.credentials;
    let keys = &credentials.api_keys;
    require(
        keys,
        &credentials.slowdown,
        client,
        headers,
        Credential::ApiKey,
    )?;
    Ok(admin)
}
