//! Reading Redis's answers: the one mapping from a Redis error to a
//! [`StoreError`], and the small parsers of replies (strings, integers,
//! `CLIENT INFO`, `CLUSTER SLOTS`). An answer of an unexpected shape is
//! [`StoreError::Malformed`].

use redis::Value;

use crate::store::StoreError;

/// A count field (`sub=3`, `ssub=3`) of a `CLIENT INFO` line.
pub(super) fn client_info_count(info: &str, field: &str) -> Option<usize> {
    info.split_whitespace()
        .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('=')?.parse().ok())
}

/// A range of slots and its master: (first slot, last slot, (host, port)).
pub(super) type SlotRange = (u16, u16, (String, u16));

/// `CLUSTER SLOTS` as ranges with their masters.
pub(super) fn slot_owners(reply: Value) -> Option<Vec<SlotRange>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    ranges
        .into_iter()
        .map(|range| {
            let Value::Array(fields) = range else {
                return None;
            };
            let mut fields = fields.into_iter();
            let start = u16::try_from(int(&fields.next()?)?).ok()?;
            let end = u16::try_from(int(&fields.next()?)?).ok()?;
            let Value::Array(master) = fields.next()? else {
                return None;
            };
            let mut master = master.into_iter();
            let host = bulk_string(master.next()?)?;
            let port = u16::try_from(int(&master.next()?)?).ok()?;
            Some((start, end, (host, port)))
        })
        .collect()
}

pub(super) fn bulk_string(v: Value) -> Option<String> {
    match v {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        // RESP3 answers CLIENT INFO with a verbatim string.
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

pub(super) fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

pub(super) fn malformed(what: &str) -> StoreError {
    StoreError::malformed(format!("unexpected reply from Redis ({what})"))
}

/// The one mapping from a Redis error to a [`StoreError`]: an answer of the
/// wrong type (a key holding something else, a script's reply of another
/// shape) is [`StoreError::Malformed`] and is not retried; everything else
/// (connection refused or dropped, timeouts, a cluster resharding, a
/// replica that is loading or read-only) is [`StoreError::Unavailable`].
pub(super) fn store_error(err: redis::RedisError) -> StoreError {
    use redis::{ErrorKind, ServerErrorKind};
    let unreadable = matches!(
        err.kind(),
        ErrorKind::UnexpectedReturnType | ErrorKind::Server(ServerErrorKind::CrossSlot)
    ) || err.code() == Some("WRONGTYPE");
    if unreadable {
        StoreError::malformed(format!("Redis: {err}"))
    } else {
        StoreError::Unavailable(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_info_counts() {
        let info = "id=5 addr=127.0.0.1:53036 laddr=127.0.0.1:6379 fd=8 name= age=0 idle=0 flags=P db=0 sub=12 psub=0 ssub=3 multi=-1";
        assert_eq!(client_info_count(info, "sub"), Some(12));
        assert_eq!(client_info_count(info, "ssub"), Some(3));
        assert_eq!(client_info_count(info, "nope"), None);
    }
}
