//! The receiving side of a push held while a write in it waits on a third node's write
//! (see `Node::receive_push`).

use std::time::Duration;

use tokio::sync::watch;

use crate::peer::messages::{ReplicateAck, ReplicateBatch};

/// The receiving side of a push: applies `batch` with `apply` and, while a write in it
/// waits on one from a third node (the ack says blocked), again each time `progress` moves,
/// for at most `hold`. Returns the last ack.
pub async fn apply_held(
    mut batch: ReplicateBatch,
    mut apply: impl FnMut(&ReplicateBatch) -> ReplicateAck,
    mut progress: watch::Receiver<u64>,
    hold: Duration,
) -> ReplicateAck {
    let deadline = tokio::time::Instant::now() + hold;
    loop {
        progress.borrow_and_update();
        let ack = apply(&batch);
        if !ack.blocked || ack.era != batch.era {
            return ack;
        }
        batch.records.retain(|r| r.entry.stamp.seq > ack.applied);
        let moved = tokio::time::timeout_at(deadline, progress.changed()).await;
        if !matches!(moved, Ok(Ok(()))) {
            return ack;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use std::sync::Arc;

    fn batch(seqs: std::ops::RangeInclusive<u64>) -> ReplicateBatch {
        ReplicateBatch {
            origin: "10.0.0.1:1".parse().unwrap(),
            era: 0,
            records: seqs.map(crate::node::outbox::tests::rec).collect(),
        }
    }

    /// A receiver that applies writes up to `limit` (what the third node's writes allow).
    fn receiver<'a>(
        limit: &'a AtomicU64,
        seen: &'a std::sync::Mutex<Vec<u64>>,
    ) -> impl FnMut(&ReplicateBatch) -> ReplicateAck + 'a {
        move |b| {
            let first = b.records.first().map_or(0, |r| r.entry.stamp.seq);
            seen.lock().unwrap().push(first);
            let last = b.records.last().map_or(0, |r| r.entry.stamp.seq);
            let applied = last.min(limit.load(Ordering::SeqCst));
            ReplicateAck {
                era: 0,
                applied,
                blocked: applied < last,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_push_goes_on_as_soon_as_its_dependency_arrives() {
        let limit = Arc::new(AtomicU64::new(3));
        let seen = std::sync::Mutex::new(Vec::new());
        let (progress, watcher) = watch::channel(0u64);
        let arrives = {
            let limit = limit.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                limit.store(10, Ordering::SeqCst);
                progress.send_modify(|v| *v += 1);
                progress
            })
        };
        let started = tokio::time::Instant::now();
        let ack = apply_held(
            batch(1..=6),
            receiver(&limit, &seen),
            watcher,
            Duration::from_millis(20),
        )
        .await;
        assert!(!ack.blocked);
        assert_eq!(ack.applied, 6);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(5),
            "no later than the dependency"
        );
        // The second attempt starts after what the first applied.
        assert_eq!(*seen.lock().unwrap(), [1, 4]);
        drop(arrives.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_push_is_held_no_longer_than_its_bound() {
        let limit = AtomicU64::new(2);
        let seen = std::sync::Mutex::new(Vec::new());
        let (_progress, watcher) = watch::channel(0u64);
        let started = tokio::time::Instant::now();
        let ack = apply_held(
            batch(1..=4),
            receiver(&limit, &seen),
            watcher,
            Duration::from_millis(20),
        )
        .await;
        assert!(ack.blocked);
        assert_eq!(ack.applied, 2);
        assert_eq!(started.elapsed(), Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_push_from_another_era_is_answered_at_once() {
        let (_progress, watcher) = watch::channel(0u64);
        let mut calls = 0;
        let ack = apply_held(
            batch(1..=2),
            |_| {
                calls += 1;
                ReplicateAck {
                    era: 1,
                    applied: 0,
                    blocked: true,
                }
            },
            watcher,
            Duration::from_millis(20),
        )
        .await;
        assert_eq!((ack.era, calls), (1, 1));
    }
}
