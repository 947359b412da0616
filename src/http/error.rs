//! Every HTTP error answers `{ "error": { "code", "message", "details"? } }`
//! (contract section 3). [`ApiError`] is that body with its status, and
//! the one mapping from store errors to HTTP answers. The schemas of that
//! body for the OpenAPI document are here too: [`ErrorBody`] with every
//! code, and one schema per kind of answer with the codes it can carry.

use std::borrow::Cow;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::schema::{AdditionalProperties, ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::auth::slowdown::SLOWED_DOWN;
use crate::model::ErrorCode;
use crate::store::StoreError;

/// Seconds a client is told to wait before retrying a `503`.
const RETRY_AFTER_SECONDS: &str = "1";

/// Details an error body lists at most: a body of 100,000 bad fields must
/// not be answered with megabytes (see [`Details`]).
pub const MAX_DETAILS: usize = 100;

/// One bad field of one item of a request body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Detail {
    /// The item's position in the request (a single-object body is 0).
    pub index: usize,
    /// The field, or `null` when the item itself is wrong (not an object).
    #[schema(required = true)]
    pub field: Option<String>,
    pub message: String,
}

/// The bad fields of a request as they are found: all are counted, the
/// first [`MAX_DETAILS`] are kept.
#[derive(Debug, Default)]
pub struct Details {
    kept: Vec<Detail>,
    total: usize,
}

impl Details {
    pub fn push(&mut self, detail: Detail) {
        self.total += 1;
        if self.kept.len() < MAX_DETAILS {
            self.kept.push(detail);
        }
    }

    /// The details that will be listed.
    pub fn kept(&self) -> &[Detail] {
        &self.kept
    }

    /// Every bad field found, kept or not.
    pub fn total(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// `400 INVALID_PAYLOAD` listing the kept details, its message saying
    /// how many were found and, when not all are listed, how many are.
    pub fn into_error(self) -> ApiError {
        let message = if self.total > self.kept.len() {
            format!(
                "{} invalid fields, the first {} listed; nothing was stored",
                self.total,
                self.kept.len()
            )
        } else {
            format!("{} invalid field(s); nothing was stored", self.total)
        };
        ApiError::InvalidPayload {
            message,
            details: Some(self.kept),
        }
    }
}

/// An HTTP error answer. Each variant fixes its status and code; the one
/// place where they are chosen.
#[derive(Debug)]
pub enum ApiError {
    /// `400 INVALID_PAYLOAD`: a bad body or parameter; `details` lists the
    /// bad fields when the body was read and validated.
    InvalidPayload {
        message: String,
        details: Option<Vec<Detail>>,
    },
    /// `400 INVALID_TRACKING_ID`.
    InvalidTrackingId(String),
    /// `400 INVALID_SINCE`.
    InvalidSince(String),
    /// `401 UNAUTHORIZED`: a credential missing or wrong.
    Unauthorized(String),
    /// `403 FORBIDDEN`: a socket token that does not cover the trackingId.
    Forbidden(String),
    /// `404 NOT_FOUND`.
    NotFound(String),
    /// `405 METHOD_NOT_ALLOWED` (the router adds `Allow`).
    MethodNotAllowed(String),
    /// `408 INVALID_PAYLOAD`: the body did not arrive in time.
    BodyTimeout(String),
    /// `413 PAYLOAD_TOO_LARGE`.
    PayloadTooLarge(String),
    /// `429 RATE_LIMITED`.
    RateLimited(String),
    /// `429 RATE_LIMITED` with `Retry-After`: this address presented too
    /// many wrong credentials; nothing it sends is checked meanwhile.
    SlowedDown { retry_after_secs: u64 },
    /// `500 INTERNAL_ERROR`: the server could not read its storage's
    /// answer. Retrying the same request reads the same.
    Internal(String),
    /// `503 UNAVAILABLE` with `Retry-After`: retry the same request.
    Unavailable(String),
    /// Any of the above, answered with `Connection: close`: what is left of
    /// the request on the connection cannot be trusted (a body cut short,
    /// too large, or refused unread).
    Closing(Box<ApiError>),
}

impl ApiError {
    pub fn invalid_payload(message: impl Into<String>) -> Self {
        ApiError::InvalidPayload {
            message: message.into(),
            details: None,
        }
    }

    pub fn invalid_tracking_id(message: impl Into<String>) -> Self {
        ApiError::InvalidTrackingId(message.into())
    }

    pub fn invalid_since() -> Self {
        ApiError::InvalidSince("since is not an event id this server could have issued".into())
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::Unauthorized(message.into())
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::Forbidden(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::NotFound(message.into())
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::Unavailable(message.into())
    }

    /// The same answer, closing the connection after it.
    pub fn closing(self) -> Self {
        match self {
            closing @ ApiError::Closing(_) => closing,
            other => ApiError::Closing(Box::new(other)),
        }
    }

    /// The answer without its connection handling.
    fn inner(&self) -> &ApiError {
        match self {
            ApiError::Closing(inner) => inner.inner(),
            other => other,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self.inner() {
            ApiError::InvalidPayload { .. }
            | ApiError::InvalidTrackingId(_)
            | ApiError::InvalidSince(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited(_) | ApiError::SlowedDown { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Closing(_) => unreachable!("inner() unwraps Closing"),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self.inner() {
            ApiError::InvalidPayload { .. } | ApiError::BodyTimeout(_) => ErrorCode::InvalidPayload,
            ApiError::InvalidTrackingId(_) => ErrorCode::InvalidTrackingId,
            ApiError::InvalidSince(_) => ErrorCode::InvalidSince,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            ApiError::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            ApiError::RateLimited(_) | ApiError::SlowedDown { .. } => ErrorCode::RateLimited,
            ApiError::Internal(_) => ErrorCode::InternalError,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::Closing(_) => unreachable!("inner() unwraps Closing"),
        }
    }

    pub fn message(&self) -> &str {
        match self.inner() {
            ApiError::InvalidPayload { message, .. }
            | ApiError::InvalidTrackingId(message)
            | ApiError::InvalidSince(message)
            | ApiError::Unauthorized(message)
            | ApiError::Forbidden(message)
            | ApiError::NotFound(message)
            | ApiError::MethodNotAllowed(message)
            | ApiError::BodyTimeout(message)
            | ApiError::PayloadTooLarge(message)
            | ApiError::RateLimited(message)
            | ApiError::Internal(message)
            | ApiError::Unavailable(message) => message,
            ApiError::SlowedDown { .. } => SLOWED_DOWN,
            ApiError::Closing(_) => unreachable!("inner() unwraps Closing"),
        }
    }

    pub fn details(&self) -> &[Detail] {
        match self.inner() {
            ApiError::InvalidPayload {
                details: Some(details),
                ..
            } => details,
            _ => &[],
        }
    }
}

/// The one mapping from store errors to HTTP answers.
impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::InvalidSince => ApiError::invalid_since(),
            StoreError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "storage unavailable");
                ApiError::unavailable("Storage is unavailable; retry the same request")
            }
            // Logged and counted where it was found; retrying reads the same.
            StoreError::Malformed(_) => {
                ApiError::Internal("The server could not read its storage's answer".into())
            }
        }
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
        let details = match self.inner() {
            ApiError::InvalidPayload { details, .. } => details.as_deref(),
            _ => None,
        };
        let body = Body {
            error: Inner {
                code: self.code(),
                message: self.message(),
                details,
            },
        };
        let status = self.status();
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        if let ApiError::SlowedDown { retry_after_secs } = self.inner()
            && let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if matches!(self, ApiError::Closing(_)) {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// The error body `{ "error": { "code", "message", "details"? } }` whose
/// `code` is one of `codes`; `details` (the bad fields) only where `details`.
/// Closed objects: a field the contract does not name is a failure of the
/// response schema check.
fn error_schema(codes: &[ErrorCode], details: bool, description: &str) -> RefOr<Schema> {
    let mut inner = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(codes.iter().map(|c| c.as_str()))),
        )
        .required("code")
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .required("message")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    if details {
        inner = inner.property(
            "details",
            ArrayBuilder::new().items(Ref::from_schema_name(Detail::name())),
        );
    }
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .property("error", inner)
        .required("error")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .build()
        .into()
}

/// Declares a schema-only type for the error body of one kind of answer.
macro_rules! error_schema {
    ($(#[$doc:meta])* $name:ident, [$($code:ident),+], details: $details:expr, $description:expr) => {
        error_schema!($(#[$doc])* $name, codes: &[$(ErrorCode::$code),+], details: $details, $description);
    };
    ($(#[$doc:meta])* $name:ident, codes: $codes:expr, details: $details:expr, $description:expr) => {
        $(#[$doc])*
        pub struct $name;
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                error_schema($codes, $details, $description)
            }
        }
        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                if $details {
                    schemas.push((Detail::name().into_owned(), Detail::schema()));
                }
            }
        }
    };
}

error_schema!(
    /// Any error answer, with every code.
    ErrorBody,
    codes: &ErrorCode::ALL,
    details: true,
    "Every error answer has this shape (contract section 3); each answer's own schema names the codes it can carry."
);
error_schema!(
    /// A refused request body (`400`), or one not received in time (`408`).
    InvalidPayloadError,
    [InvalidPayload],
    details: true,
    "`details` lists the bad fields (the first 100; the message says how many there were) when the body was read and validated; a body that is not JSON, or not received in time, has none."
);
error_schema!(
    /// A refused backfill query (`400`).
    BackfillQueryError,
    [InvalidTrackingId, InvalidSince, InvalidPayload],
    details: false,
    "`INVALID_TRACKING_ID` (trackingId), `INVALID_SINCE` (since), `INVALID_PAYLOAD` (limit, or a query string that is not valid UTF-8 once percent-decoded or repeats a parameter)."
);
error_schema!(
    /// A missing or wrong credential (`401`).
    UnauthorizedError,
    [Unauthorized],
    details: false,
    "The credential is missing, wrong, or (a socket token) invalid or expired."
);
error_schema!(
    /// A socket token that does not cover the trackingId (`403`).
    ForbiddenError,
    [Forbidden],
    details: false,
    "The socket token does not cover this trackingId."
);
error_schema!(
    /// No such endpoint, or minting in open mode (`404`).
    NotFoundError,
    [NotFound],
    details: false,
    "Not found."
);
error_schema!(
    /// A method the path does not serve (`405`, with `Allow`).
    MethodNotAllowedError,
    [MethodNotAllowed],
    details: false,
    "The path does not serve this method; `Allow` lists those it serves."
);
error_schema!(
    /// A body or batch over its limit (`413`).
    PayloadTooLargeError,
    [PayloadTooLarge],
    details: false,
    "The body is over `--max-body` bytes, or the batch over `--max-batch` payments."
);
error_schema!(
    /// Too many failed credentials from this address (`429`, with `Retry-After`).
    SlowedDownError,
    [RateLimited],
    details: false,
    "This address presented too many wrong credentials (ingest tokens, API keys, socket tokens): nothing it sends is checked until `Retry-After` seconds have passed. Other addresses are not affected."
);
error_schema!(
    /// The storage's answer could not be read (`500`).
    InternalError,
    [InternalError],
    details: false,
    "The server could not read its storage's answer: a bug or a foreign writer (logged and counted in `tidings_store_malformed_total`). Retrying the same request reads the same; it is not a `503`."
);
error_schema!(
    /// Storage unreachable, or the node shutting down (`503`, with `Retry-After`).
    UnavailableError,
    [Unavailable],
    details: false,
    "The storage is unreachable or the node is shutting down: retry the same request (after `Retry-After` seconds), on another node if need be."
);

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(index: usize) -> Detail {
        Detail {
            index,
            field: Some("f".into()),
            message: "bad".into(),
        }
    }

    #[test]
    fn details_are_counted_all_and_kept_up_to_the_cap() {
        let mut few = Details::default();
        (0..3).for_each(|i| few.push(detail(i)));
        let err = few.into_error();
        assert_eq!(err.message(), "3 invalid field(s); nothing was stored");
        assert_eq!(err.details().len(), 3);

        let mut many = Details::default();
        (0..MAX_DETAILS + 5).for_each(|i| many.push(detail(i)));
        assert_eq!(many.total(), MAX_DETAILS + 5);
        let err = many.into_error();
        assert_eq!(
            err.message(),
            "105 invalid fields, the first 100 listed; nothing was stored"
        );
        let kept = err.details();
        assert_eq!(kept.len(), MAX_DETAILS);
        assert_eq!(kept.last().map(|d| d.index), Some(MAX_DETAILS - 1));
    }
}
