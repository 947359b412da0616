//! Connection limits: how many Engine.IO sessions this node holds, in all
//! and per client address, and the HTTP layer that refuses a handshake
//! beyond them before the Socket.IO layer sees it.
//!
//! A *session* is what an Engine.IO handshake opens: a request to the
//! Socket.IO path without `sid` (a polling `GET`, or a websocket upgrade
//! that starts a session). Requests with `sid` (polls, posts, the upgrade
//! of a polling session) belong to a session already counted and pass.
//!
//! The slot a handshake takes is a [`Slot`] put in the request's
//! extensions. engineioxide keeps the request head of every session for the
//! session's whole life and drops it with the session, so the slot is
//! released exactly when the session is gone, however it ends: a client
//! disconnect, a heartbeat timeout, a handshake that never joined the
//! namespace (closed by socketioxide's connect timeout), a refused or failed
//! upgrade (the request is dropped with its response). A socket refused at
//! its Socket.IO connect gives its slot back at once ([`Slot::release`]),
//! before its transport is closed: a client that cannot connect must not
//! hold a place another could use.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::client::ClientAddr;
use super::error::ApiError;
use crate::telemetry;

/// The limits and the sessions holding a slot.
pub struct ConnectionLimits {
    path: &'static str,
    max_total: usize,
    /// `None`: no limit per address.
    max_per_ip: Option<usize>,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this node holds its maximum of connections")]
    NodeFull,
    #[error("too many connections from this address")]
    AddressFull,
}

impl Refusal {
    /// The `reason` label of `tidings_connections_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NodeFull => "node_limit",
            Refusal::AddressFull => "ip_limit",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            // The node is full, not the client wrong: 503 with Retry-After,
            // so a load balancer or the client's reconnection tries again
            // (another node, or this one once a slot is free).
            Refusal::NodeFull => ApiError::unavailable(
                "This node holds its maximum of connections; retry later or on another node",
            ),
            Refusal::AddressFull => ApiError::RateLimited(
                "Too many connections from this address; close one before opening another".into(),
            ),
        }
        .into_response()
    }
}

/// One session's slot, released when the last clone is dropped (the
/// request head is cloned by engineioxide for a websocket upgrade).
#[derive(Clone)]
pub struct Slot {
    _release: Arc<Release>,
}

impl Slot {
    /// Gives the slot back now (the session is being refused); dropping
    /// it later gives nothing back twice.
    pub fn release(&self) {
        self._release.give_back();
    }

    /// Whether [`Slot::release`] was called: the session was refused, and
    /// may not connect later on the slot it gave back.
    pub fn is_released(&self) -> bool {
        self._release
            .given_back
            .load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Gives the slot back on drop, or before.
struct Release {
    limits: Arc<ConnectionLimits>,
    ip: Option<IpAddr>,
    given_back: std::sync::atomic::AtomicBool,
}

impl Release {
    fn give_back(&self) {
        if !self
            .given_back
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.limits.release(self.ip);
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl ConnectionLimits {
    /// Limits for sessions on `path`: `max_total` on this node and, if set,
    /// `max_per_ip` per client address.
    pub fn new(path: &'static str, max_total: usize, max_per_ip: Option<usize>) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            path,
            max_total,
            max_per_ip,
            held: Mutex::default(),
        })
    }

    /// Sessions holding a slot now.
    pub fn held(&self) -> usize {
        self.lock().total
    }

    /// Takes a slot for a new session from `ip` (`None` when the address is
    /// unknown: only the node's limit applies).
    pub fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Slot, Refusal> {
        let mut held = self.lock();
        if held.total >= self.max_total {
            return Err(Refusal::NodeFull);
        }
        if let (Some(ip), Some(max)) = (ip, self.max_per_ip) {
            let n = held.per_ip.entry(ip).or_default();
            if *n >= max {
                return Err(Refusal::AddressFull);
            }
            *n += 1;
        }
        held.total += 1;
        // Moved, not set: several servers in one process (tests) add up.
        metrics::gauge!(telemetry::CONNECTIONS).increment(1.0);
        Ok(Slot {
            _release: Arc::new(Release {
                limits: self.clone(),
                ip: ip.filter(|_| self.max_per_ip.is_some()),
                given_back: Default::default(),
            }),
        })
    }

    fn release(&self, ip: Option<IpAddr>) {
        let mut held = self.lock();
        held.total = held.total.saturating_sub(1);
        if let Some(ip) = ip
            && let Some(n) = held.per_ip.get_mut(&ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // No entry per address that has gone: the map stays as
                // small as the set of connected addresses.
                held.per_ip.remove(&ip);
            }
        }
        metrics::gauge!(telemetry::CONNECTIONS).decrement(1.0);
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        // Counters are updated in one step; a poisoned lock is still whole.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `req` opens a new Engine.IO session: a `GET` on the
    /// Socket.IO path without `sid` (engineioxide's own test, so that no
    /// request it would treat as a handshake escapes the count).
    fn opens_session(&self, req: &Request) -> bool {
        let path = req.uri().path();
        let on_path = path
            .strip_prefix(self.path)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        on_path
            && req.method() == Method::GET
            && !req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p.starts_with("sid=")))
    }
}

/// The middleware: a handshake takes a slot or is refused; every other
/// request passes untouched.
pub async fn limit_connections(
    State(limits): State<Arc<ConnectionLimits>>,
    mut req: Request,
    next: Next,
) -> Response {
    if !limits.opens_session(&req) {
        return next.run(req).await;
    }
    // The peer, or the client a --trusted-proxy names.
    let ip = req.extensions().get::<ClientAddr>().map(|c| c.0);
    match limits.acquire(ip) {
        Ok(slot) => {
            req.extensions_mut().insert(slot);
            next.run(req).await
        }
        Err(refusal) => {
            metrics::counter!(telemetry::CONNECTIONS_REFUSED, "reason" => refusal.reason())
                .increment(1);
            tracing::debug!(?ip, reason = refusal.reason(), "connection refused");
            refusal.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn counts_per_node_and_per_address_and_releases_on_drop() {
        let limits = ConnectionLimits::new("/ws/v1", 3, Some(2));
        let a1 = limits.acquire(ip("10.0.0.1")).unwrap();
        let a2 = limits.acquire(ip("10.0.0.1")).unwrap();
        assert_eq!(
            limits.acquire(ip("10.0.0.1")).err(),
            Some(Refusal::AddressFull)
        );
        let b1 = limits.acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(
            limits.acquire(ip("10.0.0.3")).err(),
            Some(Refusal::NodeFull)
        );
        assert_eq!(limits.held(), 3);
        // A clone (engineioxide clones the head of a websocket upgrade)
        // holds the same slot.
        let a1_copy = a1.clone();
        drop(a1);
        assert_eq!(limits.held(), 3);
        drop(a1_copy);
        assert_eq!(limits.held(), 2);
        // Released early (a refused socket), then dropped: given back once.
        let early = limits.acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(limits.held(), 3);
        assert!(!early.is_released());
        early.release();
        early.clone().release();
        assert!(early.is_released());
        assert_eq!(limits.held(), 2);
        drop(early);
        assert_eq!(limits.held(), 2);
        limits.acquire(ip("10.0.0.1")).unwrap();
        drop((a2, b1));
        assert_eq!(limits.held(), 0);
        assert!(limits.lock().per_ip.is_empty());
    }

    #[test]
    fn without_a_per_address_limit_only_the_node_counts() {
        let limits = ConnectionLimits::new("/ws/v1", 2, None);
        let _a = limits.acquire(ip("10.0.0.1")).unwrap();
        let _b = limits.acquire(None).unwrap();
        assert_eq!(
            limits.acquire(ip("10.0.0.1")).err(),
            Some(Refusal::NodeFull)
        );
        assert!(limits.lock().per_ip.is_empty());
    }

    #[test]
    fn only_handshakes_open_sessions() {
        let limits = ConnectionLimits::new("/ws/v1", 1, None);
        let req = |method: Method, uri: &str| {
            Request::builder()
                .method(method)
                .uri(uri)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert!(limits.opens_session(&req(Method::GET, "/ws/v1/?EIO=4&transport=polling")));
        assert!(limits.opens_session(&req(Method::GET, "/ws/v1?EIO=4&transport=websocket")));
        assert!(!limits.opens_session(&req(
            Method::GET,
            "/ws/v1/?EIO=4&transport=websocket&sid=abc"
        )));
        assert!(!limits.opens_session(&req(Method::POST, "/ws/v1/?EIO=4&transport=polling")));
        assert!(!limits.opens_session(&req(Method::GET, "/ws/v10/?EIO=4")));
        assert!(!limits.opens_session(&req(Method::GET, "/v1/events?trackingId=x")));
        // engineioxide's test: a parameter merely ending in sid= is no sid.
        assert!(limits.opens_session(&req(Method::GET, "/ws/v1/?EIO=4&xsid=1")));
    }
}
