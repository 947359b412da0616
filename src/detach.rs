//! Memory per connection: detach a Socket.IO request's head from hyper's
//! read buffer.
//!
//! hyper parses a request's URI and header values as slices of its
//! connection read buffer (8–16 KB). engineioxide keeps the request head of
//! every socket for the socket's whole life, and axum's `OriginalUri` keeps
//! a copy of the URI, so that buffer stays allocated for as long as the
//! socket is connected, long after the websocket upgrade made it useless.
//! Measured in `docs/memory-per-connection.md`: 16 KB of a 38 KB
//! idle connection. This layer rebuilds the head of requests to the
//! Socket.IO path as owned copies, keeping only the headers the handshake
//! and the transports read; of the extensions (which engineioxide keeps
//! too: axum's URL params and matched path, the request id, the original
//! URI, ~600 bytes a socket), only hyper's upgrade handle (a websocket
//! needs it), the peer and client addresses (the connection limits and
//! the slowdown read them; the client address is found before this layer
//! runs, from every `X-Forwarded-For` line) and the connection's hangup.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap, HeaderName, HeaderValue, Request, Uri, header};

/// Headers engineioxide and socketioxide read (handshake, websocket
/// upgrade, polling bodies, CORS), plus the request id worth logging.
const KEPT: [HeaderName; 12] = [
    header::HOST,
    header::ORIGIN,
    header::UPGRADE,
    header::CONNECTION,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::ACCESS_CONTROL_REQUEST_METHOD,
    header::ACCESS_CONTROL_REQUEST_HEADERS,
];

/// Rebuilds the URI and headers of requests under `path` as owned copies.
pub fn detach_head<B>(path: &'static str) -> impl Fn(Request<B>) -> Request<B> + Clone {
    move |req: Request<B>| {
        if !req.uri().path().starts_with(path) {
            return req;
        }
        let (mut parts, body) = req.into_parts();
        let mut headers = HeaderMap::with_capacity(KEPT.len());
        for name in KEPT.iter() {
            for value in parts.headers.get_all(name) {
                if let Ok(owned) = HeaderValue::from_bytes(value.as_bytes()) {
                    headers.append(name.clone(), owned);
                }
            }
        }
        for name in ["x-request-id"] {
            if let Some(value) = parts.headers.get(name)
                && let Ok(owned) = HeaderValue::from_bytes(value.as_bytes())
            {
                headers.insert(HeaderName::from_static(name), owned);
            }
        }
        parts.headers = headers;
        // Parsing from a fresh String makes the URI own its bytes.
        if let Ok(uri) = parts.uri.to_string().parse::<Uri>() {
            parts.uri = uri;
        }
        let mut extensions = Extensions::new();
        if let Some(upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
            extensions.insert(upgrade);
        }
        if let Some(peer) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            extensions.insert(*peer);
        }
        if let Some(client) = parts.extensions.get::<crate::http::client::ClientAddr>() {
            extensions.insert(*client);
        }
        // How the server closes a websocket it refuses.
        if let Some(hangup) = parts.extensions.remove::<crate::http::serve::Hangup>() {
            extensions.insert(hangup);
        }
        parts.extensions = extensions;
        Request::from_parts(parts, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_the_handshake_needs_and_only_under_the_path() {
        let detach = detach_head::<()>("/ws/v1");
        let req = Request::builder()
            .uri("/ws/v1/?EIO=4&transport=polling&sid=abc")
            .header(header::HOST, "example")
            .header(header::COOKIE, "secret")
            .header(header::ORIGIN, "http://app")
            .extension(ConnectInfo(SocketAddr::from(([10, 0, 0, 7], 4321))))
            .extension(String::from("an axum extension"))
            .body(())
            .unwrap();
        let req = detach(req);
        // The peer address stays (the connection limits read it); nothing
        // else of the extensions.
        assert_eq!(
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
            Some(SocketAddr::from(([10, 0, 0, 7], 4321)))
        );
        assert!(req.extensions().get::<String>().is_none());
        assert_eq!(req.uri(), "/ws/v1/?EIO=4&transport=polling&sid=abc");
        assert_eq!(req.headers().get(header::ORIGIN).unwrap(), "http://app");
        assert!(req.headers().get(header::COOKIE).is_none());
        let other = Request::builder()
            .uri("/v1/events")
            .header(header::COOKIE, "x")
            .body(())
            .unwrap();
        assert!(detach(other).headers().get(header::COOKIE).is_some());
    }
}
