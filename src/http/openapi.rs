//! The OpenAPI 3.1 document of the REST endpoints, served at
//! `GET /openapi.json` (no auth).
//!
//! The document is generated from the code: [`ApiDoc`] gathers the
//! `#[utoipa::path]` annotations of the handlers (their statuses, bodies,
//! headers and the contract's examples) and the `ToSchema` types of the
//! bodies, whose rules come from the constants validation uses. The request
//! bodies are read as JSON values and validated field by field (so that a
//! 400 lists every bad field), so their schemas are the schema-only types
//! below.
//!
//! Each node serves the document of itself ([`document`]): the security of
//! backfill and the answers of minting follow its `--auth` mode, and the
//! batch and token bounds its `--max-batch` and `--max-subscriptions`.

use std::borrow::Cow;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa::openapi::schema::{
    AdditionalProperties, AllOfBuilder, AnyOfBuilder, ArrayBuilder, ObjectBuilder, OneOfBuilder,
    Schema, Type,
};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use super::error::{ErrorBody, MethodNotAllowedError, NotFoundError};
use super::state::{App, AppState};
use super::{events, ingest, ops, tokens};
use crate::auth::Access;
use crate::model::schema::NO_CONTROL_CHARACTERS;
use crate::model::{ErrorCode, MAX_TRACKING_ID_BYTES};

/// Where the document is served.
pub const PATH: &str = "/openapi.json";

/// The document of every REST endpoint, before [`document`] fits it to a
/// node.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tidings",
        description = "A Socket.IO-compatible payment notification server: the REST side of the \
            Tributary wire contract v1 (ingest, backfill, socket tokens, operations). The realtime \
            side is Socket.IO at `/ws/v1` (not described here): a client emits `subscribe` \
            `{trackingId, since?, filter?}` and receives `ack`, `error` and `payment` events; a \
            `payment` event is the `PaymentEnvelope` (a stream's: `StreamPaymentEnvelope`) that \
            backfill returns.\n\n\
            Every error answers `{\"error\": {\"code\", \"message\", \"details\"?}}` (`ErrorBody`); \
            each answer's schema names the codes it can carry. A path answers a method it does not \
            serve with `405` `METHOD_NOT_ALLOWED` and `Allow`, and any other path with `404` `NOT_FOUND`.",
    ),
    paths(
        ingest::ingest,
        events::events,
        tokens::mint,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        openapi_json,
    ),
    // What the paths name but utoipa does not gather itself (the schemas
    // of query parameters), and the shapes of answers outside any path.
    components(schemas(
        crate::model::schema::Since,
        crate::model::schema::StatusList,
        events::Limit,
        ErrorBody,
        ErrorCode,
        NotFoundError,
        MethodNotAllowedError
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "ingest", description = "Payment backends post payments (contract section 3)."),
        (name = "backfill", description = "Reading a trackingId's retained events (contract section 4)."),
        (name = "tokens", description = "Socket tokens for `--auth token` (contract section 5)."),
        (name = "operations", description = "Health, readiness, metrics, this document (contract section 6)."),
    ),
)]
pub struct ApiDoc;

/// The security schemes the operations name.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            "ingestToken",
            bearer("An ingest token (`--ingest-token`, repeatable for rotation)."),
        );
        components.add_security_scheme(
            "apiKey",
            bearer(
                "An API key that may mint socket tokens (`--api-key`, repeatable for rotation).",
            ),
        );
        components.add_security_scheme(
            "socketToken",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "Token mode: a socket token (minted by `POST /v1/ws/tokens`, or signed by a backend with a shared `--token-secret`).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "socketTokenQuery",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "Token mode: the socket token as the `token` query parameter (never logged).",
            ))),
        );
    }
}

/// One payment of an ingest body (contract section 3).
pub struct PaymentIn;

impl PartialSchema for PaymentIn {
    fn schema() -> RefOr<Schema> {
        let key = || {
            OneOfBuilder::new()
                .item(Ref::from_schema_name("Key"))
                .item(ObjectBuilder::new().schema_type(Type::Null))
                .description(Some("`null` is the same as absent."))
        };
        let fields = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("trackingId", Ref::from_schema_name("TrackingId"))
            .required("trackingId")
            .property("amount", Ref::from_schema_name("Amount"))
            .required("amount")
            .property("timestamp", Ref::from_schema_name("ChainTimestamp"))
            .required("timestamp")
            .property("status", Ref::from_schema_name("PaymentStatus"))
            .required("status")
            .property(
                "signature",
                key().description(Some(
                    "The on-chain transaction signature; may be absent for a payment that never reached the chain, which then carries an `idempotencyKey`.",
                )),
            )
            .property(
                "idempotencyKey",
                key().description(Some(
                    "Identifies the payment for idempotency instead of the signature (it wins when both are given); not echoed in the event.",
                )),
            )
            // An unknown field is refused (a typo must not be stored).
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        let named = |field: &str| {
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property(field, ObjectBuilder::new().schema_type(Type::String))
                .required(field)
        };
        AllOfBuilder::new()
            .item(fields)
            .item(
                AnyOfBuilder::new()
                    .item(named("signature"))
                    .item(named("idempotencyKey"))
                    .description(Some("A `signature` or an `idempotencyKey` is required.")),
            )
            .examples([
                json!({ "trackingId": "sub-1", "amount": 1000000, "timestamp": 1699876543u64,
                "status": "executed", "signature": "5Jt...base58" }),
            ])
            .into()
    }
}

impl ToSchema for PaymentIn {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        use crate::model::schema::{Amount, ChainTimestamp, Key, TrackingId};
        for (name, schema) in [
            (TrackingId::name(), TrackingId::schema()),
            (Amount::name(), Amount::schema()),
            (ChainTimestamp::name(), ChainTimestamp::schema()),
            (Key::name(), Key::schema()),
            (
                crate::model::PaymentStatus::name(),
                crate::model::PaymentStatus::schema(),
            ),
        ] {
            schemas.push((name.into_owned(), schema));
        }
    }
}

/// The payments per ingest request the document names before [`document`]
/// puts the node's own `--max-batch` in its place.
const DEFAULT_MAX_BATCH: usize = 1000;

/// A batch of payments.
pub struct IngestBatch;

impl PartialSchema for IngestBatch {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(Ref::from_schema_name(PaymentIn::name()))
            .min_items(Some(1))
            .max_items(Some(DEFAULT_MAX_BATCH))
            .description(Some(
                "1 to `--max-batch` payments; one bad item refuses them all.",
            ))
            .into()
    }
}

impl ToSchema for IngestBatch {}

/// An ingest body: one payment or a batch.
pub struct IngestBody;

impl PartialSchema for IngestBody {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(Ref::from_schema_name(PaymentIn::name()))
            .item(Ref::from_schema_name(IngestBatch::name()))
            .into()
    }
}

impl ToSchema for IngestBody {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((PaymentIn::name().into_owned(), PaymentIn::schema()));
        schemas.push((IngestBatch::name().into_owned(), IngestBatch::schema()));
        PaymentIn::schemas(schemas);
    }
}

/// The entries a minted token may name before [`document`] puts the node's
/// own `--max-subscriptions` in their place.
const DEFAULT_MAX_ENTRIES: usize = 100;
/// `--token-max-ttl`'s default; a served document has the node's.
const DEFAULT_MAX_TTL: u64 = 3600;

/// A mint request (contract section 5).
pub struct TokenRequest;

impl PartialSchema for TokenRequest {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "trackingIds",
                ArrayBuilder::new()
                    .items(Ref::from_schema_name(TokenEntry::name()))
                    .min_items(Some(1))
                    .max_items(Some(DEFAULT_MAX_ENTRIES))
                    .description(Some(
                        "What the token covers: 1 to `--max-subscriptions` entries.",
                    )),
            )
            .required("trackingIds")
            .property(
                "ttlSeconds",
                OneOfBuilder::new()
                    .item(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(1))
                            .maximum(Some(DEFAULT_MAX_TTL)),
                    )
                    .item(ObjectBuilder::new().schema_type(Type::Null))
                    .default(Some(tokens::DEFAULT_TTL_SECONDS.into()))
                    .description(Some(
                        "How long the token may be used to connect, in seconds; absent or `null`: the default.",
                    )),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .into()
    }
}

impl ToSchema for TokenRequest {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((TokenEntry::name().into_owned(), TokenEntry::schema()));
    }
}

/// An entry of a mint request's `trackingIds`.
pub struct TokenEntry;

impl PartialSchema for TokenEntry {
    fn schema() -> RefOr<Schema> {
        // The character class of NO_CONTROL_CHARACTERS, without its anchors.
        let allowed = NO_CONTROL_CHARACTERS
            .trim_start_matches("^[^")
            .trim_end_matches("]*$");
        AnyOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(MAX_TRACKING_ID_BYTES))
                    .pattern(Some(format!("^[^{allowed}]*[^{allowed}*]$")))
                    .description(Some("A trackingId (not ending in `*`).")),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(2))
                    .max_length(Some(MAX_TRACKING_ID_BYTES + 1))
                    .pattern(Some(format!("^[^{allowed}]+\\*$")))
                    .description(Some(
                        "A prefix ending in `*`: covers every trackingId that starts with what precedes the `*`, itself a valid trackingId (a lone `*` is refused).",
                    )),
            )
            .examples(["sub-1", "merchant-42:*"])
            .into()
    }
}

impl ToSchema for TokenEntry {}

/// What `GET /openapi.json` answers: an OpenAPI 3.1 document.
pub struct OpenApiDocument;

impl PartialSchema for OpenApiDocument {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "openapi",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["3.1.0"])),
            )
            .required("openapi")
            .property("info", ObjectBuilder::new().schema_type(Type::Object))
            .required("info")
            .property("paths", ObjectBuilder::new().schema_type(Type::Object))
            .required("paths")
            .into()
    }
}

impl ToSchema for OpenApiDocument {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("OpenApiDocument")
    }
}

/// This document.
///
/// The OpenAPI 3.1 document of this node's REST endpoints, fitted to its
/// configuration (`--auth`, `--max-batch`, `--max-subscriptions`).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    responses(
        (status = 200, description = "The OpenAPI document.", body = OpenApiDocument,
            content_type = "application/json"),
    ),
)]
pub async fn openapi_json(State(app): State<AppState>) -> Response {
    let body = app
        .openapi_json
        .get_or_init(|| document(&app).to_string().into())
        .clone();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The document of the node `app` serves: [`ApiDoc`] fitted to its mode and
/// bounds.
pub fn document(app: &App) -> Value {
    let (token_mode, max_ttl) = match &app.credentials.access {
        Access::Token(keys) => (true, keys.max_ttl()),
        Access::Open => (false, DEFAULT_MAX_TTL),
    };
    fit(
        base(),
        &Node {
            token_mode,
            max_batch: app.limits.max_batch,
            max_subscriptions: app.limits.max_subscriptions.max(1),
            max_ttl,
        },
    )
}

/// What a served document depends on.
struct Node {
    token_mode: bool,
    max_batch: usize,
    max_subscriptions: usize,
    max_ttl: u64,
}

/// [`ApiDoc`] as JSON, with what utoipa 5 cannot say: a `Retry-After` is
/// always sent with a `503` (`required`, which utoipa's header type lacks).
pub fn base() -> Value {
    // Serialising the document's plain data cannot fail; were it to, the
    // answer is an empty object rather than a panic.
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for operation in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in operation.values_mut() {
                let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                    continue;
                };
                for response in responses.values_mut() {
                    if let Some(retry) = response.pointer_mut("/headers/Retry-After") {
                        retry["required"] = json!(true);
                    }
                }
            }
        }
    }
    doc
}

/// Fits the document to one node.
fn fit(mut doc: Value, node: &Node) -> Value {
    if let Some(max) = doc.pointer_mut("/components/schemas/IngestBatch/maxItems") {
        *max = json!(node.max_batch);
    }
    if let Some(max) =
        doc.pointer_mut("/components/schemas/TokenRequest/properties/trackingIds/maxItems")
    {
        *max = json!(node.max_subscriptions);
    }
    if let Some(max) =
        doc.pointer_mut("/components/schemas/TokenRequest/properties/ttlSeconds/oneOf/0/maximum")
    {
        *max = json!(node.max_ttl);
    }
    let mode = if node.token_mode {
        // Backfill needs a socket token: the open alternative goes.
        if let Some(backfill) = doc.pointer_mut("/paths/~1v1~1events/get") {
            backfill["security"] = json!([{ "socketToken": [] }, { "socketTokenQuery": [] }]);
        }
        "This node runs with `--auth token`: backfill needs a socket token covering the trackingId, and `POST /v1/ws/tokens` mints them."
    } else {
        // Backfill is open and never refuses a token; minting is not
        // served past the key check.
        if let Some(backfill) = doc
            .pointer_mut("/paths/~1v1~1events/get")
            .and_then(Value::as_object_mut)
        {
            backfill.remove("security");
            if let Some(responses) = backfill.get_mut("responses").and_then(Value::as_object_mut) {
                responses.remove("401");
                responses.remove("403");
                responses.remove("429");
            }
        }
        if let Some(responses) = doc
            .pointer_mut("/paths/~1v1~1ws~1tokens/post/responses")
            .and_then(Value::as_object_mut)
        {
            responses.retain(|status, _| ["401", "404", "429"].contains(&status.as_str()));
        }
        "This node runs with `--auth open`: anyone may backfill any trackingId, and `POST /v1/ws/tokens` answers `404` past the API key check."
    };
    if let Some(description) = doc.pointer_mut("/info/description") {
        let text = description.as_str().unwrap_or_default();
        *description = json!(format!(
            "{text}\n\n{mode} Payments per ingest request: at most {} (`--max-batch`).",
            node.max_batch
        ));
    }
    doc
}
