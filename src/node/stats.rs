//! What a node tells operators about itself (`/kvs/status`, `/metrics`): how many live keys
//! it holds, and how far each shard peer lags behind the writes it coordinated.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How old a key count may be before a reader counts again. Counting scans the store
/// (1,000,000 keys take a few hundred milliseconds on the engine), so the dashboard's poll
/// every 2 s and a Prometheus scrape every 15 s share one scan per interval instead of each
/// paying for its own.
pub const KEY_COUNT_MAX_AGE: Duration = Duration::from_secs(5);

/// A key count, recounted at most once per [`KEY_COUNT_MAX_AGE`].
#[derive(Debug, Default)]
pub struct CachedCount {
    value: AtomicU64,
    counted_at: Mutex<Option<Instant>>,
}

impl CachedCount {
    /// The count, from `count` when the cached one is older than `max_age` (or missing).
    /// Concurrent readers of a stale count wait for one recount rather than each scanning.
    pub fn get(&self, max_age: Duration, count: impl FnOnce() -> usize) -> u64 {
        let mut counted_at = self
            .counted_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let fresh = counted_at.is_some_and(|at| at.elapsed() < max_age);
        if !fresh {
            self.value.store(count() as u64, Ordering::Relaxed);
            *counted_at = Some(Instant::now());
        }
        self.value.load(Ordering::Relaxed)
    }

    /// Forgets the count: the next reader counts (after a map change, say).
    pub fn invalidate(&self) {
        *self
            .counted_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }
}

/// How many of this node's writes of era `era`, up to `own_seq`, a peer that acknowledged
/// `acked` (an era and a sequence number) has yet to apply. A peer that has acknowledged
/// nothing of this era lags by all of them.
pub fn lag(era: u64, own_seq: u64, acked: Option<(u64, u64)>) -> u64 {
    match acked {
        Some((acked_era, applied)) if acked_era == era => own_seq.saturating_sub(applied),
        _ => own_seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_lags_by_the_writes_it_has_not_acknowledged() {
        assert_eq!(lag(1, 10, Some((1, 10))), 0);
        assert_eq!(lag(1, 10, Some((1, 7))), 3);
        assert_eq!(
            lag(2, 4, Some((1, 100))),
            4,
            "an old era's acks count for nothing"
        );
        assert_eq!(lag(1, 5, None), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_count_is_reused_until_it_is_too_old() {
        let cache = CachedCount::default();
        let max_age = Duration::from_secs(5);
        assert_eq!(cache.get(max_age, || 3), 3);
        assert_eq!(cache.get(max_age, || 4), 3);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(cache.get(max_age, || 4), 4);
        cache.invalidate();
        assert_eq!(cache.get(max_age, || 5), 5);
    }
}
