//! The Redis keys and channel of one trackingId or stream, and the Redis
//! Cluster slot of a key.
//!
//! A trackingId of no account keeps `tidings:{<id>}:...`: its own hash
//! tag. With streams on, a trackingId of account `A` (and `A`'s stream
//! `A*`) uses `tidings:{<A>}<rest>}:...`: the account is the hash tag, so a
//! payment's two histories share one Redis Cluster slot and one script can
//! write both. Both parts are escaped (no raw `}` in either), so the layouts
//! cannot collide and a channel tells its name back.

use crate::model::Streams;

/// Keys and channel of one trackingId or stream.
pub(super) struct Keys {
    base: String,
}

const KEY_PREFIX: &str = "tidings:{";
const CHANNEL_SUFFIX: &str = "}:p";

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
}

fn unescape_into(out: &mut String, escaped: &str) -> Option<()> {
    let mut rest = escaped;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let code = rest.get(at..at + 3)?;
        out.push(match code {
            "%25" => '%',
            "%7B" => '{',
            "%7D" => '}',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(())
}

impl Keys {
    /// The keys of `name` (a trackingId, or a stream `<account>*`).
    pub(super) fn new(name: &str, streams: Streams) -> Self {
        let account = match name.strip_suffix('*') {
            Some(account) if streams.enabled() => Some(account),
            _ => streams.account_of(name),
        };
        let mut base = String::with_capacity(KEY_PREFIX.len() + name.len() + 2);
        base.push_str(KEY_PREFIX);
        match account {
            Some(account) => {
                escape_into(&mut base, account);
                base.push('}');
                escape_into(&mut base, &name[account.len()..]);
            }
            None => escape_into(&mut base, name),
        }
        base.push('}');
        Keys { base }
    }
    pub(super) fn meta(&self) -> String {
        format!("{}:meta", self.base)
    }
    pub(super) fn events(&self) -> String {
        format!("{}:events", self.base)
    }
    pub(super) fn dedupe(&self, key: &crate::model::DedupeKey) -> String {
        format!("{}:d:{}", self.base, key.as_key())
    }
    pub(super) fn channel(&self) -> String {
        format!("{}:p", self.base)
    }

    /// The trackingId or stream whose [`Keys::channel`] this is (in
    /// either layout).
    pub(super) fn tracking_id_of_channel(channel: &str) -> Option<String> {
        let escaped = channel
            .strip_prefix(KEY_PREFIX)?
            .strip_suffix(CHANNEL_SUFFIX)?;
        let mut out = String::with_capacity(escaped.len());
        match escaped.split_once('}') {
            Some((account, rest)) => {
                unescape_into(&mut out, account)?;
                unescape_into(&mut out, rest)?;
            }
            None => unescape_into(&mut out, escaped)?,
        }
        Some(out)
    }
}

/// The Redis Cluster slot of a key (CRC16/XMODEM of its hash tag).
pub(super) fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in tagged {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag_and_cannot_collide() {
        let k = Keys::new("a}b{c%", Streams::OFF);
        assert_eq!(k.meta(), "tidings:{a%7Db%7Bc%25}:meta");
        assert_eq!(k.channel(), "tidings:{a%7Db%7Bc%25}:p");
        // A trackingId cannot end its hash tag early and reach into another
        // trackingId's keys.
        let sneaky = Keys::new("x}:d:s:sig", Streams::OFF);
        assert_ne!(
            sneaky.meta(),
            Keys::new("x", Streams::OFF)
                .dedupe(&crate::model::DedupeKey::Signature("sig}:meta".into()))
        );
    }

    #[test]
    fn slots_are_redis_clusters() {
        // Values from `redis-cli CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"tidings:{sub-1}:p"), key_slot(b"sub-1"));
    }

    #[test]
    fn an_account_shares_one_slot_and_cannot_collide() {
        let on = Streams::with_separator(':').unwrap();
        let sub = Keys::new("m-42:sub-7", on);
        let stream = Keys::new("m-42:*", on);
        assert_eq!(sub.meta(), "tidings:{m-42:}sub-7}:meta");
        assert_eq!(stream.meta(), "tidings:{m-42:}*}:meta");
        assert_eq!(
            key_slot(sub.meta().as_bytes()),
            key_slot(stream.events().as_bytes())
        );
        // Of no account: the layout of before.
        assert_eq!(
            Keys::new("sub-7", on).meta(),
            Keys::new("sub-7", Streams::OFF).meta()
        );
        assert_eq!(Keys::new(":x", on).meta(), "tidings:{:x}:meta");
        // The same trackingId in the two layouts: other keys (a history
        // afresh after the separator changes, never another's keys).
        assert_ne!(sub.meta(), Keys::new("m-42:sub-7", Streams::OFF).meta());
        let tricky = Keys::new("m-42:}*", on);
        assert_ne!(tricky.meta(), stream.meta());
        for name in ["m-42:sub-7", "m-42:*", "a%:{}:b", "a:", "plain"] {
            let channel = Keys::new(name, on).channel();
            assert_eq!(
                Keys::tracking_id_of_channel(&channel).as_deref(),
                Some(name),
                "{channel}"
            );
        }
    }

    #[test]
    fn a_channel_tells_its_tracking_id() {
        for tid in ["sub-1", "a}b{c%", "%7B", "€ x:p", "}:p"] {
            let channel = Keys::new(tid, Streams::OFF).channel();
            assert_eq!(
                Keys::tracking_id_of_channel(&channel).as_deref(),
                Some(tid),
                "{channel}"
            );
        }
        for bad in [
            "tidings:{a}:meta",
            "other:{a}:p",
            "tidings:{a%7}:p",
            "tidings:{%zz}:p",
        ] {
            assert_eq!(Keys::tracking_id_of_channel(bad), None, "{bad}");
        }
    }
}
