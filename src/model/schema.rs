//! The JSON Schemas of the contract's scalar rules, for the OpenAPI
//! document (`GET /openapi.json`): each is built from the constants the
//! validation uses, so the document cannot drift from it.

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use super::{
    EventId, MAX_KEY_BYTES, MAX_SAFE_INTEGER, MAX_TIMESTAMP_SECONDS, MAX_TRACKING_ID_BYTES,
};

/// A string without control characters (Unicode category Cc, what
/// `char::is_control` tests), as an ECMA-262 pattern.
pub const NO_CONTROL_CHARACTERS: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// Declares a schema-only type: `$name` in the document, built by `$build`.
macro_rules! scalar {
    ($(#[$doc:meta])* $name:ident => $build:expr) => {
        $(#[$doc])*
        pub struct $name;
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                let build: fn() -> ObjectBuilder = $build;
                build().build().into()
            }
        }
        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

scalar!(
    /// A trackingId.
    TrackingId => || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_TRACKING_ID_BYTES))
            .pattern(Some(NO_CONTROL_CHARACTERS))
            .description(Some(format!(
                "A non-empty string of at most {MAX_TRACKING_ID_BYTES} bytes of UTF-8 \
                 (maxLength counts characters: the bound is in bytes) without control \
                 characters (Unicode category Cc: U+0000-U+001F, U+007F-U+009F). Where a \
                 stream may be named (backfill, with `--stream-separator`), a stream \
                 `<account><separator>*` may be one byte longer."
            )))
            .examples(["sub-1"])
    }
);

scalar!(
    /// An amount in the token's base units.
    Amount => || {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .maximum(Some(MAX_SAFE_INTEGER))
            .description(Some(
                "A non-negative integer in the token's base units, at most 2^53 - 1 \
                 (9007199254740991) so that JavaScript clients read it exactly: a larger \
                 amount is refused, never rounded.",
            ))
    }
);

scalar!(
    /// An on-chain execution time in seconds.
    ChainTimestamp => || {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .maximum(Some(MAX_TIMESTAMP_SECONDS))
            .description(Some(
                "The on-chain execution time in **seconds** since the Unix epoch, at most \
                 253402300799 (9999-12-31T23:59:59Z): milliseconds are refused.",
            ))
    }
);

scalar!(
    /// A server time in milliseconds.
    Millis => || {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .description(Some("Milliseconds since the Unix epoch."))
    }
);

scalar!(
    /// A `signature` or `idempotencyKey`.
    Key => || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_KEY_BYTES))
            .pattern(Some(NO_CONTROL_CHARACTERS))
            .description(Some(format!(
                "A non-empty string of at most {MAX_KEY_BYTES} bytes of UTF-8 without \
                 control characters."
            )))
    }
);

scalar!(
    /// The `type` of a payment envelope.
    PaymentNotification => || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["payment_notification"]))
    }
);

scalar!(
    /// The `since` query parameter of backfill. The epoch and the seq
    /// are written without signs or leading zeros, the seq at least 1;
    /// 19 digits each at most, which always fit the server's 64-bit
    /// integers (a longer number is `INVALID_SINCE`).
    Since => || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^$|^s?(0|[1-9][0-9]{0,18})-[1-9][0-9]{0,18}$"))
            .description(Some(
                "An event id this server issued (`<epoch>-<seq>`; a stream's \
                 `s<epoch>-<seq>`), or empty (the same as absent: from the oldest retained \
                 event). A well-formed id this server could not have issued (a seq beyond \
                 the history, an epoch in the future, an id of the other kind of history) \
                 is `INVALID_SINCE` too.",
            ))
    }
);

/// An event id as the server writes it. Clients treat it as opaque
/// (the contract's examples show other shapes).
impl PartialSchema for EventId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .description(Some(
                "The event id: opaque to clients, unique within its trackingId. Keep the \
                 last one seen and pass it as `since` to resume. This server writes \
                 `<epoch>-<seq>`.",
            ))
            .build()
            .into()
    }
}

impl ToSchema for EventId {}

scalar!(
    /// The `status` query parameter of backfill (contract section 8).
    StatusList => || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(
                "^(executed|failed|pending)(,(executed|failed|pending))*$",
            ))
            .description(Some(
                "Only payments of these statuses (comma-separated), each with `prevSeq`; \
                 `limit` and `hasMore` count matching payments. Anything else is \
                 `INVALID_PAYLOAD`.",
            ))
            .examples(["executed,failed"])
    }
);

/// A backfilled envelope: a trackingId's payment, or a stream's.
pub struct AnyPaymentEnvelope;

impl PartialSchema for AnyPaymentEnvelope {
    fn schema() -> RefOr<Schema> {
        let one_of = utoipa::openapi::schema::OneOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name("PaymentEnvelope"))
            .item(utoipa::openapi::Ref::from_schema_name(
                "StreamPaymentEnvelope",
            ))
            .description(Some(
                "A trackingId's payment envelope, or (for a stream) a stream's.",
            ))
            .build();
        RefOr::T(Schema::OneOf(one_of))
    }
}

impl ToSchema for AnyPaymentEnvelope {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        use super::{PaymentEnvelope, StreamEnvelope};
        schemas.push((PaymentEnvelope::name().into(), PaymentEnvelope::schema()));
        schemas.push((StreamEnvelope::name().into(), StreamEnvelope::schema()));
        <PaymentEnvelope as ToSchema>::schemas(schemas);
        <StreamEnvelope as ToSchema>::schemas(schemas);
    }
}
