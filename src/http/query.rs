//! [`StrictQuery`]: a query-string extractor that refuses what axum's
//! `Query` silently repairs. `Query` decodes percent-escapes that are not
//! UTF-8 (`trackingId=%FF`) to U+FFFD, so a client asking for one
//! trackingId would be answered about another; here such a query is an
//! error naming the parameter, for the endpoint to answer with its code.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode;
use serde::de::DeserializeOwned;

/// The query string deserialized into `T`, once every name and value is
/// known to be UTF-8 after percent-decoding.
#[derive(Debug)]
pub struct StrictQuery<T>(pub T);

/// Why a query string was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The value of `name` is not UTF-8 once percent-decoded.
    #[error("query parameter {name} is not valid UTF-8 once percent-decoded")]
    ValueNotUtf8 { name: String },
    /// A parameter's name is not UTF-8 once percent-decoded.
    #[error("a query parameter name is not valid UTF-8 once percent-decoded")]
    NameNotUtf8,
    /// Well-encoded, but not of the expected shape (e.g. a repeated name).
    #[error("invalid query string: {0}")]
    Shape(String),
}

impl QueryError {
    /// The parameter whose value is at fault, if one is.
    pub fn parameter(&self) -> Option<&str> {
        match self {
            QueryError::ValueNotUtf8 { name } => Some(name),
            _ => None,
        }
    }
}

/// For an endpoint that takes the extractor as is (not as a `Result`):
/// `400 INVALID_PAYLOAD`. Endpoints whose parameters have codes of their
/// own map [`QueryError::parameter`] to them.
impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        super::error::ApiError::invalid_payload(self.to_string()).into_response()
    }
}

impl<T, S> FromRequestParts<S> for StrictQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = QueryError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse(parts.uri.query().unwrap_or("")).map(StrictQuery)
    }
}

/// Checks every pair of `query` strictly, then deserializes it. Once every
/// pair decodes to UTF-8, serde_urlencoded's lossy decoding loses nothing.
pub fn parse<T: DeserializeOwned>(query: &str) -> Result<T, QueryError> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name).ok_or(QueryError::NameNotUtf8)?;
        if decode(value).is_none() {
            return Err(QueryError::ValueNotUtf8 { name });
        }
    }
    serde_urlencoded::from_str(query).map_err(|e| QueryError::Shape(e.to_string()))
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space), or
/// `None` when the bytes are not UTF-8.
fn decode(raw: &str) -> Option<String> {
    let spaced = raw.replace('+', " ");
    percent_decode(spaced.as_bytes())
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    type Map = HashMap<String, String>;

    #[test]
    fn decodes_what_is_utf8_and_names_what_is_not() {
        let q: Map = parse("trackingId=a%20b+c&since=%E2%82%AC").unwrap();
        assert_eq!(q["trackingId"], "a b c");
        assert_eq!(q["since"], "€");
        assert_eq!(
            parse::<Map>("limit=1&trackingId=%FF"),
            Err(QueryError::ValueNotUtf8 {
                name: "trackingId".into()
            })
        );
        assert_eq!(
            parse::<Map>("since=%C3").unwrap_err().parameter(),
            Some("since")
        );
        assert_eq!(parse::<Map>("%FF=1"), Err(QueryError::NameNotUtf8));
        // A lone or bad escape is kept literally, as everywhere else.
        assert_eq!(parse::<Map>("a=%ZZ%").unwrap()["a"], "%ZZ%");
        assert!(parse::<Map>("").unwrap().is_empty());
    }
}
