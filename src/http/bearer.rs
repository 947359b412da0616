//! The one bearer-key check of the REST side: ingest tokens for
//! `POST /v1/payments`, API keys for minting socket tokens and the admin
//! page. Made before a byte of the body is read.

use std::net::IpAddr;

use axum::http::HeaderMap;

use super::error::ApiError;
use crate::auth::slowdown::{Slowdown, retry_after_secs};
use crate::auth::{BearerKeys, bearer};

/// Which secret a call presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// `--ingest-token`.
    IngestToken,
    /// `--api-key`.
    ApiKey,
}

impl Credential {
    fn name(self) -> &'static str {
        match self {
            Credential::IngestToken => "ingest token",
            Credential::ApiKey => "API key",
        }
    }

    /// What a server without this credential refuses.
    fn disabled(self) -> &'static str {
        match self {
            Credential::IngestToken => "Ingest is disabled: the server has no --ingest-token",
            Credential::ApiKey => "Calls with an API key are disabled: the server has no --api-key",
        }
    }
}

/// `401 UNAUTHORIZED` unless the request presents one of `keys` as
/// `Authorization: Bearer <key>`; always when no key is configured.
/// `429 RATE_LIMITED` without looking while `client` is slowed down for
/// failed credentials; a wrong key counts as one.
pub fn require(
    keys: &BearerKeys,
    slowdown: &Slowdown,
    client: Option<IpAddr>,
    headers: &HeaderMap,
    what: Credential,
) -> Result<(), ApiError> {
    slowed(slowdown, client)?;
    if keys.is_empty() {
        return Err(ApiError::unauthorized(what.disabled()));
    }
    match bearer(headers) {
        Some(key) if keys.accepts(key) => Ok(()),
        Some(_) => {
            slowdown.failed(client);
            Err(ApiError::unauthorized(format!("Invalid {}", what.name())))
        }
        None => Err(ApiError::unauthorized(format!(
            "Missing Authorization: Bearer <{}>",
            what.name()
        ))),
    }
}

/// `429 RATE_LIMITED` with `Retry-After` while `client` is slowed down.
pub fn slowed(slowdown: &Slowdown, client: Option<IpAddr>) -> Result<(), ApiError> {
    slowdown.check(client).map_err(|wait| ApiError::SlowedDown {
        retry_after_secs: retry_after_secs(wait),
    })
}
