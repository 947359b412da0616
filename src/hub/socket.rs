//! The Socket.IO side of [`Subscriber`]: a socketioxide socket. The only
//! module of the hub that names socketioxide.

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;

use super::Subscriber;
use crate::model::{Envelope, ErrorData, PAYMENT_EVENT};
use crate::telemetry::SocketTag;

impl Subscriber for SocketRef {
    type Id = Sid;

    fn id(&self) -> Sid {
        self.id
    }

    fn send_payment(&self, envelope: &RawValue) -> bool {
        emit(self, PAYMENT_EVENT, envelope)
    }

    fn send_error(&self, envelope: &Envelope<ErrorData>) -> bool {
        emit(self, "error", envelope)
    }

    fn is_connected(&self) -> bool {
        self.connected()
    }
}

fn emit<T: Serialize + ?Sized>(socket: &SocketRef, event: &str, data: &T) -> bool {
    match socket.emit(event, data) {
        Ok(()) => true,
        Err(err) => {
            tracing::debug!(sock = %SocketTag::of(socket.id), event, error = %err, "emit failed");
            false
        }
    }
}
