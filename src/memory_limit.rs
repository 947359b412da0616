//! The memory store's global bound (`--memory-limit`): parsing the flag's
//! value, and the default read from the machine's memory when it is not
//! given.
//!
//! The default is a quarter of the memory this process may use: the cgroup's
//! limit when one is set (a container), else the machine's `MemTotal`, else
//! a fixed 1 GiB when neither can be read. A quarter leaves room for the
//! sockets, their buffers, the allocator's slack and everything else on the
//! machine; the store's accounting is an estimate, not an exact count.

use std::fmt;
use std::str::FromStr;

use bytesize::ByteSize;

/// Smallest bound accepted: below it, one full ingest request (1 MiB of
/// body by default) could evict most of what it just stored.
pub const MIN_MEMORY_LIMIT: u64 = 1024 * 1024;

/// The bound used when the machine's memory cannot be read.
pub const FALLBACK_MEMORY_LIMIT: u64 = 1024 * 1024 * 1024;

/// A byte count for `--memory-limit`: a plain integer (bytes) or a number
/// with a unit (`512MiB`, `2GiB`, `1.5 GB`), at least [`MIN_MEMORY_LIMIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit(u64);

impl MemoryLimit {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// Why a `--memory-limit` value was refused; the message is what the
/// operator sees.
#[derive(Debug, thiserror::Error)]
pub enum MemoryLimitError {
    #[error("expected bytes, e.g. 1073741824, 512MiB or 2GiB: {0}")]
    Unparsable(String),
    #[error("must be at least 1MiB ({MIN_MEMORY_LIMIT} bytes), got {0} bytes")]
    TooSmall(u64),
}

impl FromStr for MemoryLimit {
    type Err = MemoryLimitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s
            .trim()
            .parse::<ByteSize>()
            .map_err(MemoryLimitError::Unparsable)?
            .as_u64();
        if bytes < MIN_MEMORY_LIMIT {
            return Err(MemoryLimitError::TooSmall(bytes));
        }
        Ok(MemoryLimit(bytes))
    }
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

/// Where the default bound came from, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    Flag,
    Cgroup,
    MemTotal,
    Fallback,
}

/// The bound to use: `configured` when given, else a quarter of the
/// memory available to this process.
pub fn resolve(configured: Option<MemoryLimit>) -> (u64, LimitSource) {
    if let Some(limit) = configured {
        return (limit.bytes(), LimitSource::Flag);
    }
    let cgroup = cgroup_limit();
    let total = mem_total();
    let (available, source) = match (cgroup, total) {
        (Some(c), Some(t)) if c < t => (c, LimitSource::Cgroup),
        (Some(c), None) => (c, LimitSource::Cgroup),
        (_, Some(t)) => (t, LimitSource::MemTotal),
        (None, None) => return (FALLBACK_MEMORY_LIMIT, LimitSource::Fallback),
    };
    ((available / 4).max(MIN_MEMORY_LIMIT), source)
}

/// The memory limit of this process's cgroup: v2 `memory.max`, else v1
/// `memory.limit_in_bytes`, as seen from inside the container (its cgroup
/// is mounted at the root). `None` when unset (`max`, or v1's huge value,
/// which the caller's `MemTotal` comparison discards) or unreadable.
fn cgroup_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| std::fs::read_to_string(path).ok())
    .and_then(|text| text.trim().parse::<u64>().ok())
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&text)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_bytes_and_units() {
        let bytes = |s: &str| s.parse::<MemoryLimit>().map(MemoryLimit::bytes).ok();
        assert_eq!(bytes("8388608"), Some(8 << 20));
        assert_eq!(bytes("8MiB"), Some(8 << 20));
        assert_eq!(bytes("2GiB"), Some(2 << 30));
        assert_eq!(bytes("512 MiB"), Some(512 << 20));
        assert_eq!(bytes("2GB"), Some(2_000_000_000));
    }

    #[test]
    fn refuses_garbage_and_tiny_bounds() {
        for bad in ["", "lots", "-5", "12 parsecs", "0", "1000", "1KiB"] {
            assert!(bad.parse::<MemoryLimit>().is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            "1000".parse::<MemoryLimit>(),
            Err(MemoryLimitError::TooSmall(1000))
        ));
    }

    #[test]
    fn reads_mem_total() {
        let meminfo = "MemTotal:       24684092 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(24_684_092 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn the_flag_wins_and_the_default_is_sane() {
        let flag = MemoryLimit(5 << 20);
        assert_eq!(resolve(Some(flag)), (5 << 20, LimitSource::Flag));
        let (bytes, _) = resolve(None);
        assert!(bytes >= MIN_MEMORY_LIMIT);
    }
}
