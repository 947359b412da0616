//! Who may do what: the bearer keys of ingest and token minting, and who
//! may watch a trackingId (contract section 5).
//!
//! - [`BearerKeys`]: a set of secrets a request presents as
//!   `Authorization: Bearer <key>` (ingest tokens, API keys), compared in
//!   constant time.
//! - [`token`]: socket tokens (HS256 JWTs): minting and verification.
//! - [`Grant`]: what one socket (or one backfill request) may watch.
//! - [`Access`]: the node's mode, `open` or `token`.

pub mod slowdown;
pub mod token;

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use token::{Minted, TokenError, TokenKeys};

/// Secrets kept only as SHA-256 digests, so that comparing them is
/// constant-time and independent of their lengths, and the secrets
/// themselves are not held by the process after start.
#[derive(Clone, Default)]
pub struct BearerKeys(Vec<[u8; 32]>);

impl BearerKeys {
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Self {
        BearerKeys(keys.iter().map(|k| digest(k.as_ref())).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `presented` is one of the keys. Compares against every key,
    /// whichever matches.
    pub fn accepts(&self, presented: &str) -> bool {
        let presented = digest(presented);
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |found, k| {
                found | k.ct_eq(&presented)
            })
            .into()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The credential of `Authorization: Bearer <credential>`, if the header
/// has that form (the scheme is case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
}

/// The trackingIds a token names: exact ids, and prefixes (an entry ending
/// in `*` covers every trackingId that starts with what precedes it; a
/// lone `*` covers nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl Grant {
    /// The grant of a token's `tids` claim.
    pub fn new(entries: &[String]) -> Self {
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for entry in entries {
            match entry.strip_suffix('*') {
                // A lone `*` would cover everything: the contract says it
                // covers nothing.
                Some("") => {}
                Some(prefix) => prefixes.push(prefix.to_owned()),
                None => exact.push(entry.clone()),
            }
        }
        Grant { exact, prefixes }
    }

    /// Whether the grant covers `tracking_id`, or the stream `P*`
    /// (contract section 5: a prefix entry `Q*` covers it when `P` starts
    /// with `Q`; an exact entry never does).
    pub fn covers(&self, tracking_id: &str) -> bool {
        if let Some(stream) = tracking_id.strip_suffix('*') {
            return self.prefixes.iter().any(|p| stream.starts_with(p.as_str()));
        }
        self.exact.iter().any(|e| e == tracking_id)
            || self
                .prefixes
                .iter()
                .any(|p| tracking_id.starts_with(p.as_str()))
    }
}

/// How this node decides who may watch a trackingId.
#[derive(Clone)]
pub enum Access {
    /// Anyone may watch any trackingId.
    Open,
    /// A socket or a backfill request presents a token.
    Token(Arc<TokenKeys>),
}

impl Access {
    /// What a request presenting `token` may watch: `None` in open mode
    /// (everything).
    pub fn grant(&self, token: Option<&str>) -> Result<Option<Grant>, TokenError> {
        match self {
            Access::Open => Ok(None),
            Access::Token(keys) => {
                let token = token.ok_or(TokenError::Missing)?;
                keys.verify(token).map(Some)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(entries: &[&str]) -> Grant {
        Grant::new(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn entries_cover_exact_ids_and_prefixes() {
        let g = grant(&["sub-1", "merchant-42:*"]);
        assert!(g.covers("sub-1"));
        assert!(!g.covers("sub-10"));
        assert!(!g.covers("sub-"));
        assert!(g.covers("merchant-42:"));
        assert!(g.covers("merchant-42:inv-7"));
        assert!(!g.covers("merchant-4"));
        assert!(!g.covers("merchant-420:x"));
    }

    #[test]
    fn a_lone_star_covers_nothing() {
        let g = grant(&["*"]);
        assert!(!g.covers("sub-1"));
        assert!(!g.covers("*"));
        assert!(!g.covers(""));
    }

    #[test]
    fn bearer_keys_match_exactly() {
        let keys = BearerKeys::new(&["alpha", "beta"]);
        assert!(keys.accepts("alpha"));
        assert!(keys.accepts("beta"));
        assert!(!keys.accepts("alph"));
        assert!(!keys.accepts("alphaa"));
        assert!(!keys.accepts(""));
        assert!(!BearerKeys::default().accepts(""));
    }

    #[test]
    fn bearer_header_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
