//! Tidings: a Socket.IO-compatible payment notification server.
//!
//! A browser emits `subscribe` with a `trackingId` over Socket.IO; a payment
//! backend posts executions to `POST /v1/payments`; every socket subscribed
//! to that trackingId receives a `payment` event. The wire contract is
//! `shared/spec/protocol.md`.
//!
//! # Map of the crate
//!
//! A payment's path, in order:
//!
//! - [`ingest`]: where a payment **enters**: `POST /v1/payments`,
//!   authentication, validation of every item, idempotency outcome.
//! - [`fanout`]: stores a trackingId's payments, then broadcasts them to its
//!   room, one trackingId at a time so subscribers see `seq` order.
//! - [`store`]: where it is **kept**: the [`store::HistoryStore`] trait
//!   (bounded history, contiguous seqs, epochs, dedupe) and its in-memory
//!   implementation.
//! - [`realtime`]: where it **leaves**: the Socket.IO protocol handlers
//!   (`subscribe`, `unsubscribe`, replay with `since`), per-socket ordering
//!   and limits.
//!
//! Around it:
//!
//! - [`model`]: the wire types: trackingIds, event ids, envelopes, codes.
//! - [`api`]: backfill (`GET /v1/events`), health, readiness, metrics, and
//!   the HTTP error body.
//! - [`config`]: flags and `TIDINGS_*` variables.
//! - [`telemetry`]: logging and the Prometheus metric names.
//! - [`detach`]: frees hyper's read buffer of Socket.IO requests (memory
//!   per connection).
//! - [`server`]: assembles the parts from a [`config::Config`] and runs them
//!   with graceful shutdown.

pub mod api;
pub mod config;
pub mod detach;
pub mod fanout;
pub mod ingest;
pub mod model;
pub mod realtime;
pub mod server;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use server::Server;
