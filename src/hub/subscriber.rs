//! [`Subscriber`]: the one interface through which the hub hands envelopes
//! to whoever subscribed (a socket). The hub never names the transport:
//! the Socket.IO implementation is [`super::socket`]; the hub's unit tests
//! implement it with a recorder.

use std::fmt;
use std::hash::Hash;

use serde_json::value::RawValue;

use crate::model::{Envelope, ErrorData};

/// One subscriber as the hub sees it. Sends never wait: they hand the
/// envelope to the subscriber's outgoing buffer, or fail at once.
pub trait Subscriber: Clone + Send + Sync + 'static {
    /// What tells subscribers apart, stable for a subscriber's life.
    type Id: Copy + Eq + Hash + fmt::Debug + Send + Sync + 'static;

    fn id(&self) -> Self::Id;

    /// Hands a `payment` envelope over. False when the subscriber cannot
    /// take it (closed, or its buffer is full): it then sees the `seq` jump
    /// with its next payment and recovers with `since`.
    fn send_payment(&self, envelope: &RawValue) -> bool;

    /// Hands an `error` envelope over (a `HISTORY_TRUNCATED` warning);
    /// false as for [`Subscriber::send_payment`].
    fn send_error(&self, envelope: &Envelope<ErrorData>) -> bool;

    /// Still connected: a replay stops retrying for one that left.
    fn is_connected(&self) -> bool;
}
