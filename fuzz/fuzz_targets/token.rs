//! Fuzz target: socket-token parsing and verification
//! (`tidings::auth::token::TokenKeys::verify`, contract section 5), for a
//! node with two secrets (`s1` signs, `s2` still verifies).
//!
//! The first byte picks the mode:
//!
//! - even: the rest, as a string, is a token. No one can sign with the
//!   node's secrets without them, so every such token must be refused:
//!   an `Ok` is a forgery.
//! - odd: the rest drives `arbitrary` to build a token the way a backend
//!   would (`jsonwebtoken::encode`): the secret (s1, s2 or another), the
//!   algorithm, the `kid` (none, s1's, s2's or another), the claims (`exp`
//!   around now, `iat`, `nbf`, `tids` or garbage in their place), then
//!   perhaps one byte of the token changed. The oracle, written from the
//!   contract: only an HS256 token signed by a secret the node holds (and
//!   that its `kid`, when it names one of them, names) with a numeric
//!   `exp` no more than 60 s past, an `nbf` (if any) no more than 60 s
//!   ahead, a lifetime within `--token-max-ttl` (`exp - iat`, and `exp -
//!   now` with the 60 s leeway) and a string-list `tids` verifies, and then
//!   grants exactly `Grant::new(tids)`; an expired one is `Expired`, one
//!   not valid yet `NotYetValid`, one too long `TooLong`; any changed byte
//!   makes it fail.

#![no_main]

use std::time::{SystemTime, UNIX_EPOCH};

use arbitrary::{Arbitrary, Unstructured};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use std::sync::LazyLock;
use tidings::auth::Grant;
use tidings::auth::token::{TokenError, TokenKeys};

const SECRETS: [&str; 2] = ["s1-fuzz-secret", "s2-fuzz-secret"];

/// Seconds near the expiry bound where the oracle does not judge (the
/// clock moves between signing and verifying).
const MARGIN: i64 = 5;
const LEEWAY: i64 = 60;
/// The node's `--token-max-ttl`.
const MAX_TTL: i64 = 3600;

struct Node {
    keys: TokenKeys,
    /// The `kid` each secret's minted tokens carry.
    kids: [String; 2],
}

static NODE: LazyLock<Node> = LazyLock::new(|| {
    let kid = |secrets: &[&str]| -> String {
        let minted = TokenKeys::new(secrets, MAX_TTL as u64).unwrap().mint(
            &["x".to_owned()],
            60,
            now() * 1000,
        );
        jsonwebtoken::decode_header(&minted.token)
            .unwrap()
            .kid
            .unwrap()
    };
    Node {
        keys: TokenKeys::new(&SECRETS, MAX_TTL as u64).expect("two secrets"),
        kids: [kid(&SECRETS[..1]), kid(&SECRETS[1..])],
    }
});

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Arbitrary, Debug)]
enum Secret {
    S1,
    S2,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Alg {
    Hs256,
    Hs384,
    Hs512,
}

#[derive(Arbitrary, Debug)]
enum Kid {
    None,
    S1,
    S2,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Exp {
    Missing,
    /// Seconds from now.
    In(i32),
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum Tids {
    Missing,
    List(Vec<String>),
    Number(i64),
    Mixed(Vec<Option<String>>),
}

#[derive(Arbitrary, Debug)]
struct Built {
    secret: Secret,
    alg: Alg,
    kid: Kid,
    exp: Exp,
    /// Seconds from now.
    iat: Option<i32>,
    /// Seconds from now.
    nbf: Option<i32>,
    tids: Tids,
    extra: Option<(String, String)>,
    /// Replace the byte at this position (modulo the length) with this one.
    tamper: Option<(u16, u8)>,
}

fn built(b: Built) {
    let node = &*NODE;
    let now = now() as i64;
    let mut claims = serde_json::Map::new();
    let mut exp_at = None;
    match &b.exp {
        Exp::Missing => {}
        Exp::In(s) => {
            let at = (now + i64::from(*s)).max(0);
            exp_at = Some(at);
            claims.insert("exp".into(), json!(at));
        }
        Exp::Text(t) => {
            claims.insert("exp".into(), json!(t));
        }
    }
    let iat_at = b.iat.map(|s| (now + i64::from(s)).max(0));
    if let Some(iat) = iat_at {
        claims.insert("iat".into(), json!(iat));
    }
    let nbf_at = b.nbf.map(|s| (now + i64::from(s)).max(0));
    if let Some(nbf) = nbf_at {
        claims.insert("nbf".into(), json!(nbf));
    }
    let tids = match &b.tids {
        Tids::Missing => None,
        Tids::List(l) => {
            claims.insert("tids".into(), json!(l));
            Some(l.clone())
        }
        Tids::Number(n) => {
            claims.insert("tids".into(), json!(n));
            None
        }
        Tids::Mixed(l) => {
            claims.insert("tids".into(), json!(l));
            l.iter().cloned().collect::<Option<Vec<String>>>()
        }
    };
    // Any other claim is ignored (the three above have their own cases).
    if let Some((k, v)) = &b.extra
        && !["exp", "iat", "nbf", "tids"].contains(&k.as_str())
    {
        claims.insert(k.clone(), json!(v));
    }
    let (secret, signer) = match &b.secret {
        Secret::S1 => (SECRETS[0], Some(0)),
        Secret::S2 => (SECRETS[1], Some(1)),
        // Another secret is one the node does not hold (unless it is one).
        Secret::Other(s) => (s.as_str(), SECRETS.iter().position(|k| k == s)),
    };
    let mut header = Header::new(match b.alg {
        Alg::Hs256 => Algorithm::HS256,
        Alg::Hs384 => Algorithm::HS384,
        Alg::Hs512 => Algorithm::HS512,
    });
    let named = match &b.kid {
        Kid::None => None,
        Kid::S1 => Some(0),
        Kid::S2 => Some(1),
        Kid::Other(k) => node.kids.iter().position(|kid| kid == k),
    };
    header.kid = match &b.kid {
        Kid::None => None,
        Kid::S1 => Some(node.kids[0].clone()),
        Kid::S2 => Some(node.kids[1].clone()),
        Kid::Other(k) => Some(k.clone()),
    };
    let Ok(token) = jsonwebtoken::encode(
        &header,
        &Value::Object(claims),
        &EncodingKey::from_secret(secret.as_bytes()),
    ) else {
        return;
    };
    let mut token = token.into_bytes();
    let mut tampered = false;
    if let Some((at, byte)) = b.tamper {
        let at = usize::from(at) % token.len();
        tampered = token[at] != byte;
        token[at] = byte;
    }
    let Ok(token) = String::from_utf8(token) else {
        return;
    };
    let got = node.keys.verify(&token);

    if tampered {
        assert!(got.is_err(), "a changed token verified: {got:?}");
        return;
    }
    let hs256 = matches!(b.alg, Alg::Hs256);
    // The secret that must verify it: the one its kid names, else any.
    let verifies = hs256
        && match (signer, named) {
            (Some(s), Some(k)) => s == k,
            (Some(_), None) => true,
            (None, _) => false,
        };
    if !verifies {
        assert!(
            matches!(got, Err(TokenError::BadSignature | TokenError::Malformed)),
            "{got:?}"
        );
        if hs256 {
            assert_eq!(got, Err(TokenError::BadSignature));
        }
        return;
    }
    match (exp_at, &tids) {
        (Some(at), Some(tids)) => {
            // Expiry is checked first, then nbf, then the lifetime; near
            // a bound the clock decides, and the oracle does not judge.
            let near = |x: i64, bound: i64| (x - bound).abs() <= MARGIN;
            if near(at, now - LEEWAY) {
                return;
            }
            if at < now - LEEWAY {
                assert_eq!(got, Err(TokenError::Expired));
                return;
            }
            if let Some(nbf) = nbf_at {
                if near(nbf, now + LEEWAY) {
                    return;
                }
                if nbf > now + LEEWAY {
                    assert_eq!(got, Err(TokenError::NotYetValid));
                    return;
                }
            }
            let too_long_from_iat = iat_at.is_some_and(|iat| at - iat > MAX_TTL);
            if !too_long_from_iat && near(at - now, MAX_TTL + LEEWAY) {
                return;
            }
            if too_long_from_iat || at - now > MAX_TTL + LEEWAY {
                assert_eq!(got, Err(TokenError::TooLong));
            } else {
                assert_eq!(got, Ok(Grant::new(tids)));
            }
        }
        // exp or tids missing or of the wrong type: malformed (an expired
        // one with bad tids may say either).
        _ => assert!(
            matches!(
                got,
                Err(TokenError::Malformed
                    | TokenError::Expired
                    | TokenError::NotYetValid
                    | TokenError::TooLong)
            ),
            "{got:?} for {b:?}"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let token = String::from_utf8_lossy(rest);
        let got = NODE.keys.verify(&token);
        assert!(got.is_err(), "forged: {token:?} gave {got:?}");
    } else if let Ok(b) = Built::arbitrary_take_rest(Unstructured::new(rest)) {
        built(b);
    }
});
