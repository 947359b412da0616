//! One socket's [`Session`]: its commands in arrival order, its rate limit,
//! and the trackingIds it holds (bounded by `--max-subscriptions`).
//!
//! socketioxide runs each event handler in its own task, so a socket's
//! subscribe and unsubscribe could finish out of order. The part of a
//! handler that runs before that task is spawned runs in arrival order;
//! there each command is queued here, and one task at a time drains the
//! queue, in order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use governor::clock::QuantaClock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::Value;
use socketioxide::extract::{AckSender, SocketRef};
use tracing::Instrument;

use super::Realtime;
use super::protocol::{SubscribeRequest, refusal, reply, reply_error};
use crate::auth::Grant;
use crate::model::{Envelope, ErrorCode};
use crate::telemetry::{self, SocketTag};

/// Commands one socket may have waiting; beyond it they are refused with
/// `RATE_LIMITED`, so a socket cannot grow the server's memory by sending
/// faster than its commands are handled.
const MAX_QUEUED: usize = 1024;

/// Events replayed that cost as much of the rate limit as one event:
/// with the defaults (50 a second, bursts of 200), a socket replays up
/// to 5,000 events a second, and a burst of 20,000.
const REPLAYED_PER_EVENT: usize = 100;

#[derive(Debug, Clone, Copy)]
pub enum Op {
    Subscribe,
    Unsubscribe,
}

impl Op {
    pub fn event(self) -> &'static str {
        match self {
            Op::Subscribe => "subscribe",
            Op::Unsubscribe => "unsubscribe",
        }
    }
}

pub struct Command {
    pub op: Op,
    /// The event's first argument; `None` when it had none or it did not
    /// parse.
    pub payload: Option<Value>,
    pub ack: AckSender,
}

/// One socket's protocol state.
pub struct Session {
    limiter: DefaultDirectRateLimiter,
    /// Token mode: what the socket's token covers.
    grant: Option<Grant>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Command>,
    /// A task is draining `queue`.
    draining: bool,
    /// TrackingIds this socket holds: a few (at most
    /// `--max-subscriptions`), so a list, which costs an idle socket with
    /// one subscription 24 bytes where a hash set costs ~300.
    subscriptions: Vec<String>,
    /// socketioxide has marked the socket connected: it can be emitted to.
    connected: bool,
    /// The socket is gone; nothing may be added.
    closed: bool,
}

impl Session {
    pub fn new(rate: Quota, clock: &QuantaClock, grant: Option<Grant>) -> Self {
        Session {
            limiter: RateLimiter::direct_with_clock(rate, clock.clone()),
            grant,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Each field is updated in one step, so a poisoned lock is still
        // consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a command, or refuses it when the socket is over its rate or
    /// has too many commands waiting.
    pub fn receive(self: &Arc<Self>, realtime: &Arc<Realtime>, socket: SocketRef, cmd: Command) {
        if self.limiter.check().is_err() {
            let refused = (
                ErrorCode::RateLimited,
                "Too many events; slow down".to_owned(),
            );
            return reply_error(&socket, cmd.ack, None, refused);
        }
        let start = {
            let mut state = self.state();
            if state.queue.len() >= MAX_QUEUED {
                drop(state);
                let refused = (
                    ErrorCode::RateLimited,
                    "Too many events waiting; slow down".to_owned(),
                );
                return reply_error(&socket, cmd.ack, None, refused);
            }
            state.queue.push_back(cmd);
            state.connected && !std::mem::replace(&mut state.draining, true)
        };
        if start {
            self.start_draining(realtime, socket);
        }
    }

    /// The socket can now be emitted to: handle what waited.
    pub fn connected(self: &Arc<Self>, realtime: &Arc<Realtime>, socket: SocketRef) {
        let start = {
            let mut state = self.state();
            state.connected = true;
            !state.queue.is_empty() && !std::mem::replace(&mut state.draining, true)
        };
        if start {
            self.start_draining(realtime, socket);
        }
    }

    fn start_draining(self: &Arc<Self>, realtime: &Arc<Realtime>, socket: SocketRef) {
        let span = tracing::info_span!("socket", sock = %SocketTag::of(socket.id));
        realtime.tasks.spawn(
            self.clone()
                .drain(realtime.clone(), socket)
                .instrument(span),
        );
    }

    async fn drain(self: Arc<Self>, realtime: Arc<Realtime>, socket: SocketRef) {
        loop {
            let cmd = {
                let mut state = self.state();
                match state.queue.pop_front() {
                    Some(cmd) => cmd,
                    None => {
                        state.draining = false;
                        // An idle socket keeps no queue buffer (~250 bytes
                        // each, on tens of thousands of sockets).
                        state.queue = VecDeque::new();
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
        let req = match SubscribeRequest::parse(cmd.payload.as_ref(), true, realtime.streams) {
            Ok(req) => req,
            Err(refused) => return reply_error(socket, cmd.ack, None, refused),
        };
        let tid = req.tracking_id;
        if self.grant.as_ref().is_some_and(|g| !g.covers(&tid)) {
            let refused = (
                ErrorCode::Forbidden,
                "The token does not cover this trackingId".to_owned(),
            );
            return reply_error(socket, cmd.ack, Some(&tid), refused);
        }
        {
            let state = self.state();
            if !state.subscriptions.contains(&tid)
                && state.subscriptions.len() >= realtime.max_subscriptions
            {
                drop(state);
                let refused = (
                    ErrorCode::TooManySubscriptions,
                    format!(
                        "A socket may hold at most {} subscriptions",
                        realtime.max_subscriptions
                    ),
                );
                return reply_error(socket, cmd.ack, Some(&tid), refused);
            }
        }
        let span = tracing::info_span!("subscribe", tracking_id = %tid);
        // The hub answers with the ack only once the subscription took
        // effect; on failure the sender is still here for the error.
        let ack = Mutex::new(Some(cmd.ack));
        let take = || ack.lock().unwrap_or_else(|e| e.into_inner()).take();
        let acked = |position| {
            if let Some(ack) = take() {
                reply(socket, ack, "ack", &Envelope::subscribed(&tid, position));
            }
        };
        let result = realtime
            .hub
            .subscribe_filtered(socket, &tid, req.since, req.filter, acked)
            .instrument(span)
            .await;
        let replayed = match result {
            Ok(replayed) => replayed,
            Err(err) => {
                if let Some(ack) = take() {
                    reply_error(socket, ack, Some(&tid), refusal(&tid, &err));
                }
                return;
            }
        };
        self.charge(replayed);
        let added = {
            let mut state = self.state();
            let fresh = !state.closed && !state.subscriptions.contains(&tid);
            if fresh {
                if state.subscriptions.capacity() == 0 {
                    state.subscriptions.reserve_exact(1);
                }
                state.subscriptions.push(tid.clone());
            }
            fresh
        };
        if added {
            metrics::gauge!(telemetry::SUBSCRIPTIONS).increment(1.0);
        } else if self.state().closed {
            // The socket disconnected meanwhile and released what it held;
            // release this one too.
            realtime.hub.unsubscribe(socket.id, &tid).await;
        }
    }

    async fn unsubscribe(&self, realtime: &Realtime, socket: &SocketRef, cmd: Command) {
        let req = match SubscribeRequest::parse(cmd.payload.as_ref(), false, realtime.streams) {
            Ok(req) => req,
            Err(refused) => return reply_error(socket, cmd.ack, None, refused),
        };
        let tid = req.tracking_id;
        let held = {
            let mut state = self.state();
            let at = state.subscriptions.iter().position(|t| *t == tid);
            at.map(|i| state.subscriptions.swap_remove(i)).is_some()
        };
        if held {
            realtime.hub.unsubscribe(socket.id, &tid).await;
            metrics::gauge!(telemetry::SUBSCRIPTIONS).decrement(1.0);
        }
        reply(socket, cmd.ack, "ack", &Envelope::unsubscribed(&tid));
    }

    /// A replay costs the socket's rate limit by its size: one event of the
    /// rate per [`REPLAYED_PER_EVENT`] events replayed, taken from what is
    /// left (so the next events are refused `RATE_LIMITED` sooner).
    fn charge(&self, replayed: usize) {
        for _ in 0..replayed / REPLAYED_PER_EVENT {
            if self.limiter.check().is_err() {
                break;
            }
        }
    }

    /// Forgets every subscription (the socket is gone) and returns them.
    pub fn close(&self) -> Vec<String> {
        let mut state = self.state();
        state.queue.clear();
        state.closed = true;
        std::mem::take(&mut state.subscriptions)
    }
}
