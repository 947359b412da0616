//! Failed credentials are slowed down (contract section 5): an address
//! that presents wrong ingest tokens, API keys or socket tokens again and
//! again is refused for a while (`429 RATE_LIMITED` with `Retry-After`, or a
//! socket refused with `RATE_LIMITED`) without its credentials being
//! checked; other addresses are not affected.
//!
//! Each address may fail [`BURST`] times at once, then [`PER_MINUTE`] times
//! a minute (governor's GCRA, one cell per failure). The failure that finds
//! no cell left slows the address until the next cell is due. Successes
//! cost nothing, so a busy backend with the right token is never slowed;
//! guessing a 32-byte secret at 10 a minute is hopeless, and a client with
//! a stale token sees its own mistake well before it is slowed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// What a slowed-down address is told.
pub const SLOWED_DOWN: &str =
    "Too many failed credentials from this address; retry after the time in Retry-After";

/// Failures an address may make at once.
pub const BURST: u32 = 20;
/// Failures an address may make each minute after the burst.
pub const PER_MINUTE: u32 = 10;

/// Addresses tracked before the upkeep forgets the quiet ones.
const FORGET_ABOVE: usize = 10_000;

/// The failures of every address, and the addresses slowed now.
pub struct Slowdown {
    failures: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    slowed: Mutex<HashMap<IpAddr, Instant>>,
}

impl Default for Slowdown {
    fn default() -> Self {
        Self::new(BURST, PER_MINUTE)
    }
}

impl Slowdown {
    pub fn new(burst: u32, per_minute: u32) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        let clock = DefaultClock::default();
        Slowdown {
            failures: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            clock,
            slowed: Mutex::default(),
        }
    }

    /// Before checking a credential from `ip`: how long it must wait, if it
    /// is slowed now. `None` (the address is unknown) is never slowed.
    pub fn check(&self, ip: Option<IpAddr>) -> Result<(), Duration> {
        let Some(ip) = ip else { return Ok(()) };
        let mut slowed = self.lock();
        match slowed.get(&ip) {
            Some(until) => {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    slowed.remove(&ip);
                    Ok(())
                } else {
                    Err(left)
                }
            }
            None => Ok(()),
        }
    }

    /// After a credential from `ip` failed.
    pub fn failed(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        if let Err(not_until) = self.failures.check_key(&ip) {
            let wait = not_until.wait_time_from(self.clock.now());
            tracing::warn!(%ip, seconds = wait.as_secs_f64(), "failed credentials from this address: slowed down");
            let mut slowed = self.lock();
            if slowed.len() >= FORGET_ABOVE {
                let now = Instant::now();
                slowed.retain(|_, until| *until > now);
            }
            slowed.insert(ip, Instant::now() + wait);
        }
    }

    /// Forgets addresses that have not failed for a while (call now and
    /// then): memory follows the addresses failing now, not all that ever did.
    pub fn forget_quiet(&self) {
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
        let now = Instant::now();
        self.lock().retain(|_, until| *until > now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        self.slowed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whole seconds to put in `Retry-After` for `wait` (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn a_burst_of_failures_slows_that_address_only() {
        let slow = Slowdown::new(3, 1);
        for _ in 0..3 {
            assert!(slow.check(ip("10.0.0.1")).is_ok());
            slow.failed(ip("10.0.0.1"));
        }
        // The burst is spent; the next failure slows it.
        assert!(slow.check(ip("10.0.0.1")).is_ok());
        slow.failed(ip("10.0.0.1"));
        let wait = slow.check(ip("10.0.0.1")).unwrap_err();
        assert!(
            wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert_eq!(retry_after_secs(wait), wait.as_secs() + 1);
        // Others are not affected; an unknown address never is.
        assert!(slow.check(ip("10.0.0.2")).is_ok());
        slow.failed(None);
        assert!(slow.check(None).is_ok());
        slow.forget_quiet();
        assert!(
            slow.check(ip("10.0.0.1")).is_err(),
            "still slowed after upkeep"
        );
    }
}
