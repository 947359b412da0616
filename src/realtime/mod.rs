//! The Socket.IO protocol (contract section 1): `subscribe` and
//! `unsubscribe` in, `ack` and `error` out; payments go out through the
//! [`Hub`].
//!
//! - [`protocol`]: payload checks and replies.
//! - [`session`]: one socket's commands, in order, with its limits.
//!
//! socketioxide answers the client's connect before the connect handler
//! runs, so event handlers registered there could miss an event sent right
//! after connecting. Ours are registered in a connect *middleware*, which
//! runs before the answer.

pub mod protocol;
mod session;

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::Quota;
use governor::clock::QuantaClock;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;

use crate::auth::slowdown::{Slowdown, retry_after_secs};
use crate::auth::{Access, Grant, TokenError};
use crate::http::client::ClientAddr;
use crate::http::connections::Slot;
use crate::http::serve::Hangup;
use crate::hub::SocketHub;
use crate::model::Streams;
use crate::tasks::TaskSet;
use crate::telemetry::{self, SocketTag};
use session::{Command, Op, Session};

/// What the protocol handlers share, for every socket.
pub struct Realtime {
    pub hub: Arc<SocketHub>,
    /// Who may connect and what they may watch (contract section 5).
    pub access: Access,
    /// Addresses slowed down for failed credentials (shared with REST).
    pub slowdown: Arc<Slowdown>,
    pub max_subscriptions: usize,
    /// Which names ending in `*` are streams (contract section 8).
    pub streams: Streams,
    pub rate: Quota,
    /// One clock for every socket's rate limiter: creating a clock per
    /// socket reads the CPU's identification each time, a measurable cost
    /// in a connect storm.
    clock: QuantaClock,
    /// Each socket's command queue is drained by a task of this set: they
    /// end when the server stops ([`Realtime::stop`]).
    tasks: TaskSet,
}

impl Realtime {
    pub fn new(
        hub: Arc<SocketHub>,
        access: Access,
        slowdown: Arc<Slowdown>,
        max_subscriptions: usize,
        streams: Streams,
        per_second: u32,
        burst: u32,
    ) -> Self {
        let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Realtime {
            hub,
            access,
            slowdown,
            max_subscriptions,
            streams,
            rate: Quota::per_second(per_second).allow_burst(burst),
            clock: QuantaClock::default(),
            tasks: TaskSet::default(),
        }
    }

    /// Ends the sockets' command tasks (the server is stopping).
    pub fn stop(&self) {
        self.tasks.abort_all();
    }
}

/// This node's connected sockets by current transport: (polling, websocket).
pub fn sockets_by_transport(io: &SocketIo) -> (u64, u64) {
    let (mut polling, mut websocket) = (0, 0);
    for socket in io.sockets() {
        match socket.transport_type() {
            socketioxide::TransportType::Polling => polling += 1,
            socketioxide::TransportType::Websocket => websocket += 1,
        }
    }
    (polling, websocket)
}

/// Registers the namespace `/` and its handlers on `io`.
pub fn register(io: &SocketIo, realtime: Arc<Realtime>) {
    let attaching = realtime.clone();
    let middleware = move |socket: SocketRef, TryData(auth): TryData<Value>| {
        let admitted = match attaching.admit(&socket, auth.ok().as_ref()) {
            Ok(grant) => {
                attach(&socket, attaching.clone(), grant);
                Ok(())
            }
            Err(refused) => {
                metrics::counter!(telemetry::CONNECTS_UNAUTHORIZED).increment(1);
                tracing::debug!(sock = %SocketTag::of(socket.id), "connection refused: {refused}");
                turn_away(&socket);
                Err(refused)
            }
        };
        std::future::ready(admitted)
    };
    // socketioxide sends the connect answer, then marks the socket
    // connected, then calls this: a command that arrived in between waited
    // in the session, since nothing can be emitted to the socket before.
    let on_connect = move |socket: SocketRef| {
        tracing::debug!(sock = %SocketTag::of(socket.id), transport = ?socket.transport_type(), "socket connected");
        if let Some(session) = socket.extensions.get::<Arc<Session>>() {
            session.connected(&realtime, socket);
        }
        std::future::ready(())
    };
    io.ns("/", on_connect.with(middleware));
}

/// A refused connection; socket.io-client's `connect_error` gets this
/// message (it carries nothing else), so it starts with the code.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("UNAUTHORIZED: {0}")]
    Unauthorized(TokenError),
    #[error("RATE_LIMITED: too many failed credentials from this address; retry in {0} s")]
    SlowedDown(u64),
    #[error("UNAUTHORIZED: this connection was refused; open a new one")]
    Again,
}

impl Realtime {
    /// Whether `socket` may connect, and what it may watch (token mode):
    /// its address must not be slowed down for failed credentials, and
    /// its token must be valid (a wrong one counts as a failure).
    fn admit(&self, socket: &SocketRef, auth: Option<&Value>) -> Result<Option<Grant>, Refused> {
        // A session refused once gave its slot back: it may not connect
        // now outside the connection limits (a polling session lives on
        // until the connect timeout).
        let head = socket.req_parts();
        if head.extensions.get::<Slot>().is_some_and(Slot::is_released) {
            return Err(Refused::Again);
        }
        if matches!(self.access, Access::Open) {
            return Ok(None);
        }
        let client = socket
            .req_parts()
            .extensions
            .get::<ClientAddr>()
            .map(|c| c.0);
        if let Err(wait) = self.slowdown.check(client) {
            return Err(Refused::SlowedDown(retry_after_secs(wait)));
        }
        let token = handshake_token(socket, auth);
        self.access.grant(token.as_deref()).map_err(|err| {
            // A missing (or empty) token is no guess: it does not count.
            if token.as_deref().is_some_and(|t| !t.is_empty()) {
                self.slowdown.failed(client);
            }
            Refused::Unauthorized(err)
        })
    }
}

/// After a refused connect: the connection slot is given back at once,
/// and a websocket is closed as soon as the refusal has been written (a
/// polling session ends at the connect timeout: it holds no connection
/// between requests). A client that may not connect holds nothing.
fn turn_away(socket: &SocketRef) {
    let head = socket.req_parts();
    if let Some(slot) = head.extensions.get::<Slot>() {
        slot.release();
    }
    if socket.transport_type() == socketioxide::TransportType::Websocket
        && let Some(hangup) = head.extensions.get::<Hangup>()
    {
        hangup.after_next_answer();
    }
}

/// The token a connecting socket presents: handshake auth `{ token }`
/// first, else the `token` query parameter of its handshake request.
fn handshake_token(socket: &SocketRef, auth: Option<&Value>) -> Option<String> {
    if let Some(token) = auth.and_then(|a| a.get("token")).and_then(Value::as_str) {
        return Some(token.to_owned());
    }
    let query = socket.req_parts().uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
}

/// Sets up one socket: its session and event handlers. `grant` bounds what
/// it may subscribe to (token mode) for the life of the connection.
fn attach(socket: &SocketRef, realtime: Arc<Realtime>, grant: Option<Grant>) {
    metrics::gauge!(telemetry::SOCKETS).increment(1.0);
    let session = Arc::new(Session::new(realtime.rate, &realtime.clock, grant));
    socket.extensions.insert(session.clone());
    for op in [Op::Subscribe, Op::Unsubscribe] {
        let (session, realtime) = (session.clone(), realtime.clone());
        socket.on(
            op.event(),
            move |s: SocketRef, TryData(payload): TryData<Value>, ack: AckSender| {
                // Runs in arrival order, before socketioxide spawns a task.
                session.receive(
                    &realtime,
                    s,
                    Command {
                        op,
                        payload: payload.ok(),
                        ack,
                    },
                );
                std::future::ready(())
            },
        );
    }
    socket.on_disconnect(move |s: SocketRef| {
        let held = session.close();
        metrics::gauge!(telemetry::SOCKETS).decrement(1.0);
        metrics::gauge!(telemetry::SUBSCRIPTIONS).decrement(held.len() as f64);
        tracing::debug!(sock = %SocketTag::of(s.id), "socket disconnected");
        let hub = realtime.hub.clone();
        async move {
            for tid in held {
                hub.unsubscribe(s.id, &tid).await;
            }
        }
    });
}
