//! Tidings: a Socket.IO-compatible payment notification server.
//!
//! A browser emits `subscribe` with a `trackingId` over Socket.IO; a payment
//! backend posts executions to `POST /v1/payments`; every socket subscribed
//! to that trackingId receives a `payment` event. The wire contract is
//! `docs/protocol.md`.
//!
//! # Map of the crate
//!
//! A payment's path, in order:
//!
//! - [`http::ingest`]: where a payment **enters**: `POST /v1/payments`,
//!   authentication, validation of every item, one append per trackingId.
//! - [`store`]: where it is **kept** and **published**: the
//!   [`store::HistoryStore`] trait (bounded history, contiguous seqs,
//!   epochs, dedupe, atomic store-and-publish) with its memory and Redis
//!   implementations, and the [`store::Publications`] queue that brings
//!   publications to this node.
//! - [`hub`]: where it **leaves** this node: per trackingId, the
//!   subscribers here (the one membership), the store listen (first
//!   subscriber in, last out), the replay-to-live handover and the node's
//!   own catch-up. It hands envelopes out only through
//!   [`hub::Subscriber`], so it is tested alone; `hub/socket.rs` is its
//!   one module that names socketioxide.
//! - [`realtime`]: the Socket.IO protocol handlers (`subscribe`,
//!   `unsubscribe`), per-socket ordering and limits, on top of the hub.
//!
//! Around it:
//!
//! - [`model`]: the wire types: trackingIds, event ids, positions,
//!   envelopes, codes.
//! - [`http`]: the router, connection limits (in front of Socket.IO),
//!   backfill (`GET /v1/events`), health, readiness, metrics, the one
//!   bearer-key check and the HTTP error enum ([`http::error::ApiError`]:
//!   each variant fixes its status and code); the connection loop that
//!   bounds slow clients ([`http::serve`]), bounded body reads and strict
//!   query strings.
//! - [`auth`]: bearer keys, socket tokens and grants (token mode).
//! - [`config`]: flags and `TIDINGS_*` variables.
//! - [`memory_limit`]: the memory store's bound, `--memory-limit`, and its
//!   default from the machine's memory.
//! - [`telemetry`]: logging, the Prometheus metric names and their
//!   exporter (which counts sockets by transport), and the figures the
//!   admin report reads from the same handles.
//! - [`tasks`]: background tasks owned by a set that ends them.
//! - [`admin`]: what the admin page shows: every node's heartbeat report
//!   through the store's node directory, and the trackingId inspector.
//! - [`detach`]: frees hyper's read buffer of Socket.IO requests (memory
//!   per connection).
//! - [`server`]: assembles the parts from a [`config::Config`] and runs them
//!   with graceful shutdown.
//!
//! Dependencies point one way: `server` → `http`, `realtime` → `hub` →
//! `store` → `model`, `telemetry`. `config` names no part it configures:
//! `server` turns it into parts.

pub mod admin;
pub mod auth;
pub mod config;
pub mod detach;
pub mod http;
pub mod hub;
pub mod memory_limit;
pub mod model;
pub mod realtime;
pub mod server;
pub mod store;
pub mod tasks;
pub mod telemetry;

pub use config::Config;
pub use server::Server;
