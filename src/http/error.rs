//! Every HTTP error answers `{ "error": { "code", "message", "details"? } }`
//! (contract section 3). [`ApiError`] is that body with its status, and
//! the one mapping from store errors to HTTP answers.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::model::ErrorCode;
use crate::store::StoreError;

/// Seconds a client is told to wait before retrying a `503`.
const RETRY_AFTER_SECONDS: &str = "1";

/// Details an error body lists at most: a body of 100,000 bad fields must
/// not be answered with megabytes (see [`Details`]).
pub const MAX_DETAILS: usize = 100;

/// One bad field of one item of a request body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Detail {
    pub index: usize,
    /// The field, or `null` when the item itself is wrong (not an object).
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
        ApiError::invalid_payload(message).with_details(self.kept)
    }
}

/// An HTTP error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    details: Option<Vec<Detail>>,
    /// Answer with `Connection: close`: what is left of the request on the
    /// connection cannot be trusted (a body cut short or too large).
    close: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            close: false,
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

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    pub fn with_details(mut self, details: Vec<Detail>) -> Self {
        self.details = Some(details);
        self
    }

    /// Closes the connection after the answer.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn details(&self) -> &[Detail] {
        self.details.as_deref().unwrap_or_default()
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::InvalidSince => ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidSince,
                "since is not an event id this server could have issued",
            ),
            StoreError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "storage unavailable");
                ApiError::unavailable("Storage is unavailable; retry the same request")
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
        if self.close {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

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
        assert_eq!(err.message, "3 invalid field(s); nothing was stored");
        assert_eq!(err.details.as_ref().map(Vec::len), Some(3));

        let mut many = Details::default();
        (0..MAX_DETAILS + 5).for_each(|i| many.push(detail(i)));
        assert_eq!(many.total(), MAX_DETAILS + 5);
        let err = many.into_error();
        assert_eq!(
            err.message,
            "105 invalid fields, the first 100 listed; nothing was stored"
        );
        let kept = err.details.unwrap();
        assert_eq!(kept.len(), MAX_DETAILS);
        assert_eq!(kept.last().map(|d| d.index), Some(MAX_DETAILS - 1));
    }
}
