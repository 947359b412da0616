//! The Socket.IO protocol (contract section 1): `subscribe` and
//! `unsubscribe` in, `ack`, `error` and replayed `payment` events out.
//!
//! Two socketioxide behaviours shape this module:
//! - It answers the client's connect before the connect handler runs, so
//!   event handlers registered there can miss an event sent right after
//!   connecting. Ours are registered in a connect *middleware*, which runs
//!   before the answer.
//! - It runs each event in its own task, so a socket's subscribe and
//!   unsubscribe could finish out of order. The part of a handler that runs
//!   before that task is spawned runs in arrival order; there each command
//!   is queued on the socket's [`Session`], and one task at a time drains
//!   the queue, in order.

use std::collections::{HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::clock::QuantaClock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use tracing::Instrument;

use crate::fanout::Fanout;
use crate::model::{Envelope, ErrorCode, EventId, PAYMENT_EVENT, check_tracking_id, room_of};
use crate::store::{HistoryPage, HistoryStore, StoreError};
use crate::telemetry;

/// Commands one socket may have waiting; beyond it they are refused with
/// `RATE_LIMITED`, so a socket cannot grow the server's memory by sending
/// faster than its commands are handled.
const MAX_QUEUED: usize = 1024;

/// What the protocol handlers need, shared by every socket.
pub struct Realtime {
    pub fanout: Arc<Fanout>,
    pub store: Arc<dyn HistoryStore>,
    pub max_subscriptions: usize,
    /// Most events replayed on one subscribe (the history limit).
    pub replay_limit: usize,
    pub rate: Quota,
    /// One clock for every socket's rate limiter: creating a clock per
    /// socket reads the CPU's identification each time, a measurable cost
    /// in a connect storm.
    clock: QuantaClock,
}

impl Realtime {
    pub fn new(
        fanout: Arc<Fanout>,
        store: Arc<dyn HistoryStore>,
        max_subscriptions: usize,
        replay_limit: usize,
        per_second: u32,
        burst: u32,
    ) -> Self {
        let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Realtime {
            fanout,
            store,
            max_subscriptions,
            replay_limit,
            rate: Quota::per_second(per_second).allow_burst(burst),
            clock: QuantaClock::default(),
        }
    }
}

/// Registers the namespace `/` and its handlers on `io`.
pub fn register(io: &SocketIo, realtime: Arc<Realtime>) {
    let middleware = move |socket: SocketRef| {
        attach(&socket, realtime.clone());
        std::future::ready(Ok::<(), std::convert::Infallible>(()))
    };
    let on_connect = |socket: SocketRef| {
        tracing::debug!(socket_id = %socket.id, transport = ?socket.transport_type(), "socket connected");
        std::future::ready(())
    };
    io.ns("/", on_connect.with(middleware));
}

/// Sets up one socket: its session and event handlers.
fn attach(socket: &SocketRef, realtime: Arc<Realtime>) {
    metrics::gauge!(telemetry::SOCKETS).increment(1.0);
    let session = Arc::new(Session::new(realtime.rate, &realtime.clock));
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
        let held = session.clear();
        metrics::gauge!(telemetry::SOCKETS).decrement(1.0);
        metrics::gauge!(telemetry::SUBSCRIPTIONS).decrement(held.len() as f64);
        tracing::debug!(socket_id = %s.id, "socket disconnected");
        let realtime = realtime.clone();
        async move {
            for tid in held {
                let _turn = realtime.fanout.turn(&tid).await;
                realtime.store.unlisten(&tid).await;
            }
        }
    });
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Subscribe,
    Unsubscribe,
}

impl Op {
    fn event(self) -> &'static str {
        match self {
            Op::Subscribe => "subscribe",
            Op::Unsubscribe => "unsubscribe",
        }
    }
}

struct Command {
    op: Op,
    /// The event's first argument; `None` when it had none or it did not
    /// parse.
    payload: Option<Value>,
    ack: AckSender,
}

/// One socket's protocol state.
struct Session {
    limiter: DefaultDirectRateLimiter,
    state: Mutex<SessionState>,
}

#[derive(Default)]
struct SessionState {
    queue: VecDeque<Command>,
    /// A task is draining `queue`.
    draining: bool,
    /// TrackingIds this socket is subscribed to.
    subscriptions: HashSet<String>,
    /// The socket is gone; nothing may be added.
    closed: bool,
}

impl Session {
    fn new(rate: Quota, clock: &QuantaClock) -> Self {
        Session {
            limiter: RateLimiter::direct_with_clock(rate, clock.clone()),
            state: Mutex::new(SessionState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SessionState> {
        // The state stays consistent across a panic in a drain (each field is
        // updated in one step), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a command, or refuses it when the socket is over its rate or
    /// has too many commands waiting.
    fn receive(self: &Arc<Self>, realtime: &Arc<Realtime>, socket: SocketRef, cmd: Command) {
        if self.limiter.check().is_err() {
            reply_error(
                &socket,
                cmd.ack,
                ErrorCode::RateLimited,
                "Too many events; slow down",
            );
            return;
        }
        let start = {
            let mut state = self.state();
            if state.queue.len() >= MAX_QUEUED {
                drop(state);
                let message = "Too many events waiting; slow down";
                reply_error(&socket, cmd.ack, ErrorCode::RateLimited, message);
                return;
            }
            state.queue.push_back(cmd);
            !std::mem::replace(&mut state.draining, true)
        };
        if start {
            let span = tracing::info_span!("socket", socket_id = %socket.id);
            tokio::spawn(
                self.clone()
                    .drain(realtime.clone(), socket)
                    .instrument(span),
            );
        }
    }

    async fn drain(self: Arc<Self>, realtime: Arc<Realtime>, socket: SocketRef) {
        loop {
            let cmd = {
                let mut state = self.state();
                match state.queue.pop_front() {
                    Some(cmd) => cmd,
                    None => {
                        state.draining = false;
                        return;
                    }
                }
            };
            match cmd.op {
                Op::Subscribe => self.subscribe(&realtime, &socket, cmd).await,
                Op::Unsubscribe => self.unsubscribe(&realtime, &socket, cmd).await,
            }
        }
    }

    async fn subscribe(&self, realtime: &Realtime, socket: &SocketRef, cmd: Command) {
        let req = match SubscribeRequest::parse(cmd.payload.as_ref(), true) {
            Ok(req) => req,
            Err((code, message)) => return reply_error(socket, cmd.ack, code, message),
        };
        let tid = req.tracking_id;
        let held = {
            let state = self.state();
            let held = state.subscriptions.contains(&tid);
            if !held && state.subscriptions.len() >= realtime.max_subscriptions {
                drop(state);
                let message = format!(
                    "A socket may hold at most {} subscriptions",
                    realtime.max_subscriptions
                );
                return reply_error(socket, cmd.ack, ErrorCode::TooManySubscriptions, message);
            }
            held
        };

        // Listen, join, then read: a payment stored meanwhile is either in
        // the history read or delivered to the room after our turn ends.
        let _turn = realtime.fanout.turn(&tid).await;
        let page = match self.enter(realtime, socket, &tid, held, req.since).await {
            Ok(page) => page,
            Err((code, message)) => return reply_error(socket, cmd.ack, code, message),
        };
        if !held {
            let added = {
                let mut state = self.state();
                !state.closed && state.subscriptions.insert(tid.clone())
            };
            if !added {
                // The socket disconnected meanwhile; its subscriptions were
                // already released, so release this one too.
                realtime.store.unlisten(&tid).await;
                return;
            }
            metrics::gauge!(telemetry::SUBSCRIPTIONS).increment(1.0);
        }
        reply(
            socket,
            cmd.ack,
            "ack",
            &Envelope::ack(format!("Subscribed to trackingId: {tid}")),
        );
        let Some(page) = page else { return };
        if page.truncated {
            let warning = Envelope::error(
                ErrorCode::HistoryTruncated,
                format!(
                    "Some payments of trackingId {tid} after the given since are no longer retained; replay starts at the oldest retained one"
                ),
            );
            emit(socket, "error", &warning);
            metrics::counter!(telemetry::SOCKET_ERRORS, "code" => ErrorCode::HistoryTruncated.as_str()).increment(1);
        }
        metrics::counter!(telemetry::REPLAYED).increment(page.events.len() as u64);
        for event in &page.events {
            if !emit(socket, PAYMENT_EVENT, &event.envelope) {
                break;
            }
        }
    }

    /// Makes this node listen to `tid` (unless the socket already held it),
    /// joins its room, and reads the history after `since`. Undoes what it
    /// did on failure. The caller holds the trackingId's turn.
    async fn enter(
        &self,
        realtime: &Realtime,
        socket: &SocketRef,
        tid: &str,
        held: bool,
        since: Option<EventId>,
    ) -> Result<Option<HistoryPage>, (ErrorCode, String)> {
        let unavailable = |err: StoreError| {
            tracing::warn!(tracking_id = %tid, error = %err, "subscribe failed: storage unavailable");
            (
                ErrorCode::ConnectionError,
                "Storage is unavailable; try again".to_owned(),
            )
        };
        if !held {
            realtime.store.listen(tid).await.map_err(unavailable)?;
        }
        let room = room_of(tid);
        socket.join(room.clone());
        let Some(since) = since else { return Ok(None) };
        match realtime
            .store
            .read(tid, Some(since), realtime.replay_limit)
            .await
        {
            Ok(page) => Ok(Some(page)),
            Err(err) => {
                if !held {
                    socket.leave(room);
                    realtime.store.unlisten(tid).await;
                }
                Err(match err {
                    StoreError::InvalidSince => (ErrorCode::InvalidSince, err.to_string()),
                    StoreError::Unavailable(_) => unavailable(err),
                })
            }
        }
    }

    async fn unsubscribe(&self, realtime: &Realtime, socket: &SocketRef, cmd: Command) {
        let req = match SubscribeRequest::parse(cmd.payload.as_ref(), false) {
            Ok(req) => req,
            Err((code, message)) => return reply_error(socket, cmd.ack, code, message),
        };
        let tid = req.tracking_id;
        if self.state().subscriptions.contains(&tid) {
            let _turn = realtime.fanout.turn(&tid).await;
            socket.leave(room_of(&tid));
            self.state().subscriptions.remove(&tid);
            realtime.store.unlisten(&tid).await;
            metrics::gauge!(telemetry::SUBSCRIPTIONS).decrement(1.0);
        }
        reply(
            socket,
            cmd.ack,
            "ack",
            &Envelope::ack(format!("Unsubscribed from trackingId: {tid}")),
        );
    }

    /// Forgets every subscription (the socket is gone) and returns them.
    fn clear(&self) -> HashSet<String> {
        let mut state = self.state();
        state.queue.clear();
        state.closed = true;
        std::mem::take(&mut state.subscriptions)
    }
}

/// A parsed `subscribe` / `unsubscribe` payload.
#[derive(Debug, PartialEq, Eq)]
struct SubscribeRequest {
    tracking_id: String,
    since: Option<EventId>,
}

impl SubscribeRequest {
    /// Checks a payload against the contract; `with_since` reads `since`
    /// (unsubscribe ignores it).
    fn parse(payload: Option<&Value>, with_since: bool) -> Result<Self, (ErrorCode, String)> {
        let Some(Value::Object(map)) = payload else {
            return Err((
                ErrorCode::InvalidPayload,
                "Payload must be an object like { \"trackingId\": \"...\" }".to_owned(),
            ));
        };
        let tracking_id = match map.get("trackingId") {
            Some(Value::String(s)) => s,
            _ => {
                return Err((
                    ErrorCode::InvalidTrackingId,
                    "Tracking ID is required and must be a string".to_owned(),
                ));
            }
        };
        check_tracking_id(tracking_id).map_err(|m| (ErrorCode::InvalidTrackingId, m.to_owned()))?;
        let since = match map.get("since") {
            _ if !with_since => None,
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => {
                return Err((
                    ErrorCode::InvalidSince,
                    "since must not be empty".to_owned(),
                ));
            }
            Some(Value::String(s)) => Some(s.parse::<EventId>().map_err(|_| {
                (
                    ErrorCode::InvalidSince,
                    "since is not an event id this server could have issued".to_owned(),
                )
            })?),
            Some(_) => {
                return Err((
                    ErrorCode::InvalidSince,
                    "since must be an event id string".to_owned(),
                ));
            }
        };
        Ok(SubscribeRequest {
            tracking_id: tracking_id.clone(),
            since,
        })
    }
}

/// Emits `event` and answers the acknowledgement callback, if the client
/// passed one, with the same envelope.
fn reply<T: Serialize>(socket: &SocketRef, ack: AckSender, event: &str, envelope: &T) {
    emit(socket, event, envelope);
    if let Err(err) = ack.send(envelope) {
        tracing::debug!(socket_id = %socket.id, error = %err, "ack callback not sent");
    }
}

fn reply_error(socket: &SocketRef, ack: AckSender, code: ErrorCode, message: impl Into<String>) {
    metrics::counter!(telemetry::SOCKET_ERRORS, "code" => code.as_str()).increment(1);
    reply(socket, ack, "error", &Envelope::error(code, message));
}

/// Emits to one socket; false when the socket cannot take more (closed, or
/// its buffer is full: the client then sees a seq gap and recovers).
fn emit<T: Serialize + ?Sized>(socket: &SocketRef, event: &str, data: &T) -> bool {
    match socket.emit(event, data) {
        Ok(()) => true,
        Err(err) => {
            metrics::counter!(telemetry::DELIVERIES_DROPPED).increment(1);
            tracing::debug!(socket_id = %socket.id, event, error = %err, "emit failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<SubscribeRequest, ErrorCode> {
        SubscribeRequest::parse(Some(&v), true).map_err(|(c, _)| c)
    }

    #[test]
    fn payloads_map_to_the_contract_codes() {
        assert_eq!(
            SubscribeRequest::parse(None, true).map_err(|(c, _)| c),
            Err(ErrorCode::InvalidPayload)
        );
        assert_eq!(parse(json!("sub-1")), Err(ErrorCode::InvalidPayload));
        assert_eq!(parse(json!(["sub-1"])), Err(ErrorCode::InvalidPayload));
        assert_eq!(parse(json!(null)), Err(ErrorCode::InvalidPayload));
        assert_eq!(parse(json!({})), Err(ErrorCode::InvalidTrackingId));
        assert_eq!(
            parse(json!({"trackingId": 5})),
            Err(ErrorCode::InvalidTrackingId)
        );
        assert_eq!(
            parse(json!({"trackingId": ""})),
            Err(ErrorCode::InvalidTrackingId)
        );
        assert_eq!(
            parse(json!({"trackingId": "a", "since": ""})),
            Err(ErrorCode::InvalidSince)
        );
        assert_eq!(
            parse(json!({"trackingId": "a", "since": 5})),
            Err(ErrorCode::InvalidSince)
        );
        assert_eq!(
            parse(json!({"trackingId": "a", "since": "x"})),
            Err(ErrorCode::InvalidSince)
        );
        assert_eq!(
            parse(json!({"trackingId": "a", "since": null})),
            Ok(SubscribeRequest {
                tracking_id: "a".into(),
                since: None
            })
        );
        assert_eq!(
            parse(json!({"trackingId": "a", "since": "3-2"})),
            Ok(SubscribeRequest {
                tracking_id: "a".into(),
                since: Some(EventId { epoch: 3, seq: 2 })
            })
        );
    }
}
