//! The Redis keys and channel of one trackingId, and the Redis Cluster slot
//! of a key.

/// Keys and channel of one trackingId.
pub(super) struct Keys {
    base: String,
}

const KEY_PREFIX: &str = "tidings:{";
const CHANNEL_SUFFIX: &str = "}:p";

impl Keys {
    pub(super) fn new(tracking_id: &str) -> Self {
        let mut base = String::with_capacity(KEY_PREFIX.len() + tracking_id.len() + 1);
        base.push_str(KEY_PREFIX);
        for c in tracking_id.chars() {
            match c {
                '%' => base.push_str("%25"),
                '{' => base.push_str("%7B"),
                '}' => base.push_str("%7D"),
                c => base.push(c),
            }
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

    /// The trackingId whose [`Keys::channel`] this is.
    pub(super) fn tracking_id_of_channel(channel: &str) -> Option<String> {
        let escaped = channel
            .strip_prefix(KEY_PREFIX)?
            .strip_suffix(CHANNEL_SUFFIX)?;
        let mut out = String::with_capacity(escaped.len());
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
        let k = Keys::new("a}b{c%");
        assert_eq!(k.meta(), "tidings:{a%7Db%7Bc%25}:meta");
        assert_eq!(k.channel(), "tidings:{a%7Db%7Bc%25}:p");
        // A trackingId cannot end its hash tag early and reach into another
        // trackingId's keys.
        let sneaky = Keys::new("x}:d:s:sig");
        assert_ne!(
            sneaky.meta(),
            Keys::new("x").dedupe(&crate::model::DedupeKey::Signature("sig}:meta".into()))
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
    fn a_channel_tells_its_tracking_id() {
        for tid in ["sub-1", "a}b{c%", "%7B", "€ x:p", "}:p"] {
            let channel = Keys::new(tid).channel();
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
