//! Who the client is: its address, for every per-address rule (connection
//! limits, failed-credential slowdown; contract section 6).
//!
//! It is the TCP peer's address, unless the peer is one of the
//! `--trusted-proxy` ranges: then `X-Forwarded-For` is read from the right
//! (each proxy appends the address it received from), skipping trusted
//! proxies, and the first address not trusted is the client. From any other
//! peer the header is ignored: anyone can send it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

/// The client's address, in every request's extensions (and so in every
/// socket's request head) once [`find_client`] has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// `--trusted-proxy`.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<[IpNet]>);

impl TrustedProxies {
    pub fn new(ranges: &[IpNet]) -> Self {
        TrustedProxies(ranges.into())
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`, as described in the module doc.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.to_str().unwrap_or_default().split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let mut client = peer;
        for hop in hops.iter().rev() {
            // What does not parse is not trusted to name anyone: the
            // nearest hop that named it is the client.
            let Ok(ip) = hop.parse::<IpAddr>().map(|ip| ip.to_canonical()) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// The middleware: puts the request's [`ClientAddr`] in its extensions.
/// A request without a peer address (driven in-process, as the fuzz
/// targets do) gets none.
pub async fn find_client(
    State(trusted): State<TrustedProxies>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    if let Some(peer) = peer {
        let client = trusted.client(peer, req.headers());
        req.extensions_mut().insert(ClientAddr(client));
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_trusted_peers_name_the_client() {
        let trusted =
            TrustedProxies::new(&["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
        let h = xff(&["203.0.113.9"]);
        // An untrusted peer's header is ignored.
        assert_eq!(trusted.client(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), &h),
            ip("10.0.0.1")
        );
        // A trusted one names the client.
        assert_eq!(trusted.client(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        assert_eq!(trusted.client(ip("::1"), &h), ip("203.0.113.9"));
        // Without the header, the proxy itself.
        assert_eq!(
            trusted.client(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn read_from_the_right_skipping_trusted_hops() {
        let trusted = TrustedProxies::new(&["10.0.0.0/8".parse().unwrap()]);
        // A client that sends its own header cannot choose its address:
        // the rightmost untrusted hop is what our proxies saw.
        let h = xff(&["1.1.1.1, 203.0.113.9, 10.0.0.2"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // Several headers are one list.
        let h = xff(&["1.1.1.1", "203.0.113.9", "10.0.0.2"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // Every hop trusted: the leftmost.
        let h = xff(&["10.0.0.3, 10.0.0.2"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &h), ip("10.0.0.3"));
        // Garbage stops the walk at the hop that wrote it.
        let h = xff(&["203.0.113.9, not-an-ip, 10.0.0.2"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &h), ip("10.0.0.2"));
        // IPv4-mapped IPv6 peers are the IPv4 address.
        assert_eq!(
            trusted.client(ip("::ffff:10.0.0.1"), &xff(&["203.0.113.9"])),
            ip("203.0.113.9")
        );
    }
}

/// The extractor of a handler that needs the client's address (`None`
/// when the request came in-process).
#[derive(Debug, Clone, Copy)]
pub struct Client(pub Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Client(parts.extensions.get::<ClientAddr>().map(|c| c.0)))
    }
}
