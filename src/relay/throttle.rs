//! Warnings that repeat at the pace of a retry loop (a peer with the wrong secret tries again
//! every 250 ms) are logged once per [`WARN_INTERVAL`] per address, with a count of those
//! left out, so that they neither flood the log nor vanish.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one warning per address this often.
pub const WARN_INTERVAL: Duration = Duration::from_secs(30);
/// Addresses remembered at most; past that the memory starts over (a flood of addresses is
/// logged at most once per address per interval all the same, give or take a restart).
const MAX_ADDRESSES: usize = 1024;

/// Warnings about peers, per `K`: an IP address (connections accepted) or a node identity
/// (connections opened to a name).
pub struct Throttle<K = IpAddr> {
    /// Per address: when it was last logged, and how many were left out since.
    seen: Mutex<HashMap<K, (Instant, u64)>>,
}

impl<K> Default for Throttle<K> {
    fn default() -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq> Throttle<K> {
    /// Whether to log a warning about `address` at `now`: `Some(left_out)` with the number
    /// of warnings about it left out since the last one logged, or `None` to leave this
    /// one out.
    pub fn admit(&self, address: K, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_ADDRESSES && !seen.contains_key(&address) {
            seen.clear();
        }
        match seen.get_mut(&address) {
            Some((last, left_out)) if now.duration_since(*last) < WARN_INTERVAL => {
                *left_out += 1;
                None
            }
            Some((last, left_out)) => {
                let admitted = *left_out;
                (*last, *left_out) = (now, 0);
                Some(admitted)
            }
            None => {
                seen.insert(address, (now, 0));
                Some(0)
            }
        }
    }

    /// Logs `message` about `address` as a warning, unless one was logged lately.
    pub fn warn(&self, address: K, message: std::fmt::Arguments<'_>) {
        match self.admit(address, Instant::now()) {
            Some(0) => log::warn!("{message}"),
            Some(n) => log::warn!("{message} ({n} more like it in the last {WARN_INTERVAL:?})"),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_address_per_interval_with_a_count_of_the_rest() {
        let throttle = Throttle::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let start = Instant::now();
        assert_eq!(throttle.admit(a, start), Some(0));
        assert_eq!(throttle.admit(b, start), Some(0), "addresses apart");
        for i in 1..=119 {
            let now = start + Duration::from_millis(250 * i);
            assert_eq!(throttle.admit(a, now), None);
        }
        assert_eq!(throttle.admit(a, start + WARN_INTERVAL), Some(119));
        assert_eq!(throttle.admit(a, start + WARN_INTERVAL * 3), Some(0));
    }
}
