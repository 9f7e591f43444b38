//! The outbox: this node's own recent writes, in sequence order, waiting to be pushed to the
//! other members of its shard.
//!
//! One ring of bounded size serves every peer: each peer's pusher keeps a cursor into it. A
//! peer whose cursor falls behind the ring's start (it was down for long) gets a gap, notices
//! it and pulls a delta instead, so the outbox never grows without bound.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::storage::Record;

#[derive(Debug)]
struct Ring {
    era: u64,
    /// Sequence number of `records[0]`.
    first_seq: u64,
    records: VecDeque<Arc<Record>>,
}

impl Ring {
    fn next_seq(&self) -> u64 {
        self.first_seq + self.records.len() as u64
    }
}

#[derive(Debug)]
pub struct Outbox {
    ring: Mutex<Ring>,
    capacity: usize,
    added: Notify,
}

/// Records to push, starting at `first_seq`.
#[derive(Debug)]
pub struct Batch {
    pub era: u64,
    pub first_seq: u64,
    pub records: Vec<Arc<Record>>,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            ring: Mutex::new(Ring {
                era: 0,
                first_seq: 1,
                records: VecDeque::new(),
            }),
            capacity: capacity.max(1),
            added: Notify::new(),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends this node's write number `seq` of `era`. Callers push in sequence order; a jump
    /// (a new era, or counters learned from peers after a restart) starts the ring afresh.
    pub fn push(&self, era: u64, seq: u64, record: Arc<Record>) {
        let mut ring = self.ring();
        if ring.era != era || ring.next_seq() != seq {
            ring.era = era;
            ring.first_seq = seq;
            ring.records.clear();
        }
        ring.records.push_back(record);
        if ring.records.len() > self.capacity {
            ring.records.pop_front();
            ring.first_seq += 1;
        }
        drop(ring);
        self.added.notify_waiters();
    }

    /// Up to `max` records from sequence number `from` on (or from the ring's start, if `from`
    /// fell out of it). `None` when there is nothing at or after `from` in `era`.
    pub fn batch(&self, era: u64, from: u64, max: usize) -> Option<Batch> {
        let ring = self.ring();
        if ring.era != era || from >= ring.next_seq() {
            return None;
        }
        let start = from.max(ring.first_seq);
        let offset = (start - ring.first_seq) as usize;
        let records: Vec<_> = ring.records.range(offset..).take(max).cloned().collect();
        Some(Batch {
            era,
            first_seq: start,
            records,
        })
    }

    /// The era and sequence number of the last write pushed.
    pub fn last(&self) -> (u64, u64) {
        let ring = self.ring();
        (ring.era, ring.next_seq() - 1)
    }

    /// How many writes the ring holds (at most its capacity). A peer that lags by more
    /// than this has fallen out of it and pulls instead (see `/metrics`' outbox depth).
    pub fn held(&self) -> usize {
        self.ring().records.len()
    }

    /// Resolves when a record is pushed (or spuriously; callers re-check). Enable it before
    /// checking for records, so that a push in between is not missed.
    pub fn added(&self) -> tokio::sync::futures::Notified<'_> {
        self.added.notified()
    }

    pub fn wake_all(&self) {
        self.added.notify_waiters();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::causal::Stamp;
    use crate::storage::Entry;

    /// A record of this node's write number `seq` (for the tests of other modules too).
    pub(crate) fn rec(seq: u64) -> Arc<Record> {
        Arc::new(Record {
            key: format!("k{seq}"),
            entry: Entry {
                value: Some("v".into()),
                stamp: Stamp {
                    era: 0,
                    lamport: seq,
                    origin: "10.0.0.1:1".parse().unwrap(),
                    seq,
                },
                metadata: String::new(),
            },
        })
    }

    #[test]
    fn batches_follow_the_cursor() {
        let o = Outbox::new(10);
        for s in 1..=5 {
            o.push(0, s, rec(s));
        }
        let b = o.batch(0, 2, 2).unwrap();
        assert_eq!(b.first_seq, 2);
        assert_eq!(
            b.records.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["k2", "k3"]
        );
        assert!(o.batch(0, 6, 10).is_none());
        assert!(o.batch(1, 1, 10).is_none(), "other era");
        assert_eq!(o.last(), (0, 5));
    }

    #[test]
    fn the_ring_is_bounded_and_late_cursors_restart_at_its_start() {
        let o = Outbox::new(3);
        for s in 1..=10 {
            o.push(0, s, rec(s));
        }
        let b = o.batch(0, 1, 100).unwrap();
        assert_eq!(b.first_seq, 8);
        assert_eq!(b.records.len(), 3);
        assert_eq!(o.held(), 3);
    }

    #[test]
    fn a_jump_in_sequence_or_era_restarts_the_ring() {
        let o = Outbox::new(10);
        o.push(0, 1, rec(1));
        o.push(0, 7, rec(7));
        assert_eq!(o.batch(0, 1, 10).unwrap().first_seq, 7);
        o.push(1, 1, rec(1));
        assert_eq!(o.last(), (1, 1));
        assert!(o.batch(0, 1, 10).is_none());
    }
}
