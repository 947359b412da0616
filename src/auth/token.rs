//! Socket tokens (contract section 5): HS256 JWTs whose `tids` claim names
//! the trackingIds a socket may watch.
//!
//! The first `--token-secret` signs; every one verifies, so secrets rotate
//! without downtime: add the new secret second, then move it first once
//! every node has it, then drop the old one. A minted token's header
//! carries a `kid` derived from its secret by a one-way hash (it tells which
//! secret signed it, not the secret); a token without a `kid`, or with one
//! this node does not know (a backend signing tokens itself), is checked
//! against every secret. Only HS256 is accepted.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Grant;

/// Clock difference tolerated on `exp`, in seconds.
pub const LEEWAY_SECONDS: u64 = 60;

/// Longest token accepted, in bytes: far above any token naming
/// `--max-subscriptions` entries, and a bound on what verification reads.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Why a token does not authorise anything. The messages say what is wrong
/// without repeating the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a token is required (handshake auth `token` or `token` query parameter)")]
    Missing,
    #[error("the token is not a well-formed HS256 JWT with `exp` and `tids` claims")]
    Malformed,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token claims a longer lifetime than this server accepts (--token-max-ttl)")]
    TooLong,
}

/// The claims of a socket token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// Expiry, seconds since the Unix epoch.
    exp: u64,
    /// Issue time, seconds since the Unix epoch (set by minting; optional
    /// in tokens a backend signs itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    /// Not before, seconds since the Unix epoch (optional; honoured with
    /// the same leeway as `exp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    /// Exact trackingIds and `prefix*` entries.
    tids: Vec<String>,
}

/// A token as minted by `POST /v1/ws/tokens`.
#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    /// Milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

struct Secret {
    kid: String,
    decoding: DecodingKey,
}

/// The node's token secrets.
pub struct TokenKeys {
    signing_kid: String,
    signing: EncodingKey,
    secrets: Vec<Secret>,
    validation: Validation,
    /// `--token-max-ttl`, seconds.
    max_ttl: u64,
}

impl TokenKeys {
    /// The keys of `secrets`, the first of which signs, for tokens that
    /// live at most `max_ttl` seconds. `None` when there is no secret.
    pub fn new<S: AsRef<str>>(secrets: &[S], max_ttl: u64) -> Option<Self> {
        let first = secrets.first()?.as_ref();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECONDS;
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        Some(TokenKeys {
            signing_kid: kid_of(first),
            signing: EncodingKey::from_secret(first.as_bytes()),
            secrets: secrets
                .iter()
                .map(|s| Secret {
                    kid: kid_of(s.as_ref()),
                    decoding: DecodingKey::from_secret(s.as_ref().as_bytes()),
                })
                .collect(),
            validation,
            max_ttl,
        })
    }

    /// The longest lifetime a token may claim, in seconds.
    pub fn max_ttl(&self) -> u64 {
        self.max_ttl
    }

    /// A leaked token is never a long-lived credential: its `exp` may lie
    /// at most `max_ttl` after its `iat`, and (whatever `iat` says, which
    /// a backend's token may set in the future) at most `max_ttl` plus the
    /// clock leeway after now.
    fn check_lifetime(&self, claims: &Claims, now_s: u64) -> Result<(), TokenError> {
        let from_iat = claims
            .iat
            .is_some_and(|iat| claims.exp.saturating_sub(iat) > self.max_ttl);
        let from_now = claims.exp.saturating_sub(now_s) > self.max_ttl + LEEWAY_SECONDS;
        if from_iat || from_now {
            Err(TokenError::TooLong)
        } else {
            Ok(())
        }
    }

    /// A token for `tids` (already validated), valid for `ttl_seconds`
    /// from `now_ms`.
    pub fn mint(&self, tids: &[String], ttl_seconds: u64, now_ms: u64) -> Minted {
        let iat = now_ms / 1000;
        let exp = iat.saturating_add(ttl_seconds);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.signing_kid.clone());
        let claims = Claims {
            exp,
            iat: Some(iat),
            nbf: None,
            tids: tids.to_vec(),
        };
        // HS256 signing of serialisable claims cannot fail: the key is a
        // byte string and the claims are plain data.
        let token = jsonwebtoken::encode(&header, &claims, &self.signing).unwrap_or_default();
        Minted {
            token,
            expires_at_ms: exp.saturating_mul(1000),
        }
    }

    /// What `token` grants, if it is a valid, unexpired token signed by one
    /// of the secrets.
    pub fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::Malformed);
        }
        let known = header
            .kid
            .as_deref()
            .and_then(|kid| self.secrets.iter().find(|s| s.kid == kid));
        let candidates = match known {
            Some(secret) => std::slice::from_ref(secret),
            None => self.secrets.as_slice(),
        };
        let mut outcome = Err(TokenError::BadSignature);
        for secret in candidates {
            match jsonwebtoken::decode::<Claims>(token, &secret.decoding, &self.validation) {
                Ok(data) => {
                    self.check_lifetime(&data.claims, crate::model::now_ms() / 1000)?;
                    return Ok(Grant::new(&data.claims.tids));
                }
                Err(err) => match err.kind() {
                    ErrorKind::InvalidSignature => {}
                    // Checked only once the signature verified: this secret
                    // signed it, and it has expired.
                    ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                    ErrorKind::ImmatureSignature => return Err(TokenError::NotYetValid),
                    _ => outcome = Err(TokenError::Malformed),
                },
            }
        }
        outcome
    }
}

/// A public name for a secret: the first 8 bytes of a SHA-256 of it, hex.
fn kid_of(secret: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"tidings socket token kid\0")
        .chain_update(secret.as_bytes())
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::now_ms;

    fn keys(secrets: &[&str]) -> TokenKeys {
        TokenKeys::new(secrets, 3600).unwrap()
    }

    fn signed(secret: &str, claims: &Claims) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn nbf_is_honoured_with_leeway() {
        let k = keys(&["s"]);
        let now = now_ms() / 1000;
        let claims = |nbf| Claims {
            exp: now + 600,
            iat: None,
            nbf: Some(nbf),
            tids: tids(&["x"]),
        };
        assert_eq!(
            k.verify(&signed("s", &claims(now + 120))),
            Err(TokenError::NotYetValid)
        );
        assert!(k.verify(&signed("s", &claims(now + 30))).is_ok());
        assert!(k.verify(&signed("s", &claims(now - 30))).is_ok());
    }

    #[test]
    fn lifetimes_beyond_the_maximum_are_refused() {
        let k = keys(&["s"]);
        let now = now_ms() / 1000;
        let claims = |iat, exp| Claims {
            exp,
            iat,
            nbf: None,
            tids: tids(&["x"]),
        };
        // exp - iat: at most --token-max-ttl.
        assert!(
            k.verify(&signed("s", &claims(Some(now), now + 3600)))
                .is_ok()
        );
        assert_eq!(
            k.verify(&signed("s", &claims(Some(now), now + 3601))),
            Err(TokenError::TooLong)
        );
        let ten_years = 10 * 365 * 86_400;
        assert_eq!(
            k.verify(&signed("s", &claims(Some(now), now + ten_years))),
            Err(TokenError::TooLong)
        );
        // Without iat, from now (with the leeway); an iat in the future
        // does not stretch it either.
        assert!(k.verify(&signed("s", &claims(None, now + 3600))).is_ok());
        assert_eq!(
            k.verify(&signed("s", &claims(None, now + 7200))),
            Err(TokenError::TooLong)
        );
        assert_eq!(
            k.verify(&signed(
                "s",
                &claims(Some(now + ten_years), now + ten_years + 60)
            )),
            Err(TokenError::TooLong)
        );
        // The bound is the server's.
        let long = TokenKeys::new(&["s"], 86_400).unwrap();
        assert!(
            long.verify(&signed("s", &claims(Some(now), now + 7200)))
                .is_ok()
        );
    }

    fn tids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_minted_token_verifies_and_grants_its_ids() {
        let k = keys(&["s1"]);
        let minted = k.mint(&tids(&["sub-1", "m:*"]), 60, now_ms());
        let grant = k.verify(&minted.token).unwrap();
        assert!(grant.covers("sub-1"));
        assert!(grant.covers("m:x"));
        assert!(!grant.covers("sub-2"));
        assert!(minted.expires_at_ms > now_ms() + 58_000);
        assert!(!minted.token.contains("s1"));
    }

    #[test]
    fn every_secret_verifies_and_the_first_signs() {
        let old = keys(&["old"]);
        let rotating = keys(&["new", "old"]);
        let by_old = old.mint(&tids(&["a"]), 60, now_ms());
        assert!(rotating.verify(&by_old.token).is_ok());
        let by_new = rotating.mint(&tids(&["a"]), 60, now_ms());
        assert_eq!(old.verify(&by_new.token), Err(TokenError::BadSignature));
        assert!(keys(&["new"]).verify(&by_new.token).is_ok());
    }

    #[test]
    fn expiry_has_sixty_seconds_of_leeway() {
        let k = keys(&["s"]);
        let now = now_ms();
        let recent = k.mint(&tids(&["a"]), 1, now - 30_000);
        assert!(k.verify(&recent.token).is_ok());
        let old = k.mint(&tids(&["a"]), 1, now - 120_000);
        assert_eq!(k.verify(&old.token), Err(TokenError::Expired));
    }

    #[test]
    fn self_signed_tokens_without_kid_are_checked_against_every_secret() {
        let k = keys(&["first", "second"]);
        let claims = Claims {
            exp: now_ms() / 1000 + 60,
            iat: None,
            nbf: None,
            tids: tids(&["x"]),
        };
        for (kid, secret) in [(None, "second"), (Some("mine".to_owned()), "first")] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = kid;
            let t = jsonwebtoken::encode(
                &header,
                &claims,
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap();
            assert!(k.verify(&t).unwrap().covers("x"));
        }
    }

    #[test]
    fn other_algorithms_and_garbage_are_refused() {
        let k = keys(&["s"]);
        let claims = Claims {
            exp: now_ms() / 1000 + 60,
            iat: None,
            nbf: None,
            tids: tids(&["x"]),
        };
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(b"s"),
        )
        .unwrap();
        assert_eq!(k.verify(&hs512), Err(TokenError::Malformed));
        // alg none: header {"alg":"none"}, no signature.
        let none = "eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTksInRpZHMiOlsieCJdfQ.";
        assert!(k.verify(none).is_err());
        for bad in ["", "abc", "a.b.c", "..."] {
            assert!(k.verify(bad).is_err(), "{bad:?}");
        }
        // Valid signature, but no tids claim.
        #[derive(Serialize)]
        struct NoTids {
            exp: u64,
        }
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoTids {
                exp: now_ms() / 1000 + 60,
            },
            &EncodingKey::from_secret(b"s"),
        )
        .unwrap();
        assert_eq!(k.verify(&t), Err(TokenError::Malformed));
    }
}
