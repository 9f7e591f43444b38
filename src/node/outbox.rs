//! The outbox: this node's own recent writes, in sequence order, waiting to be pushed to the
//! other members of its shard.
//!
//! One ring of bounded size serves every peer: each peer's pusher keeps a cursor into it. A
//! peer whose cursor falls behind the ring's start (it was down for long) gets a gap, notices
//! it and pulls a delta instead, so the outbox never grows without bound. The ring is
//! bounded in records and in bytes ([`Record::weight`]): 1,500 writes of 1 MiB values
//! took a node past 10 GB when only the count was bounded (issue 23); past the byte bound
//! the oldest writes leave the ring, and peers that still lacked them pull them from the
//! engine.

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
    /// The weight of `records`.
    bytes: usize,
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
    max_bytes: usize,
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
    /// A ring of at most `capacity` records weighing at most `max_bytes` together (the
    /// newest record is kept whatever it weighs).
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            ring: Mutex::new(Ring {
                era: 0,
                first_seq: 1,
                records: VecDeque::new(),
                bytes: 0,
            }),
            capacity: capacity.max(1),
            max_bytes,
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
            ring.bytes = 0;
        }
        ring.bytes += record.weight();
        ring.records.push_back(record);
        while ring.records.len() > self.capacity
            || (ring.bytes > self.max_bytes && ring.records.len() > 1)
        {
            let Some(old) = ring.records.pop_front() else {
                break;
            };
            ring.bytes -= old.weight();
            ring.first_seq += 1;
        }
        debug_assert_eq!(
            ring.bytes,
            ring.records.iter().map(|r| r.weight()).sum::<usize>()
        );
        drop(ring);
        self.added.notify_waiters();
    }

    /// Up to `max` records weighing up to `max_bytes` together (at least one), from
    /// sequence number `from` on (or from the ring's start, if `from` fell out of it).
    /// `None` when there is nothing at or after `from` in `era`.
    pub fn batch(&self, era: u64, from: u64, max: usize, max_bytes: usize) -> Option<Batch> {
        let ring = self.ring();
        if ring.era != era || from >= ring.next_seq() {
            return None;
        }
        let start = from.max(ring.first_seq);
        let offset = (start - ring.first_seq) as usize;
        let mut weight = 0;
        let records: Vec<_> = ring
            .records
            .range(offset..)
            .take(max)
            .take_while(|r| {
                let first = weight == 0;
                weight += r.weight();
                first || weight <= max_bytes
            })
            .cloned()
            .collect();
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

    /// What the writes it holds weigh ([`Record::weight`]).
    pub fn held_bytes(&self) -> usize {
        self.ring().bytes
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
        let o = Outbox::new(10, usize::MAX);
        for s in 1..=5 {
            o.push(0, s, rec(s));
        }
        let b = o.batch(0, 2, 2, usize::MAX).unwrap();
        assert_eq!(b.first_seq, 2);
        assert_eq!(
            b.records.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["k2", "k3"]
        );
        assert!(o.batch(0, 6, 10, usize::MAX).is_none());
        assert!(o.batch(1, 1, 10, usize::MAX).is_none(), "other era");
        assert_eq!(o.last(), (0, 5));
    }

    #[test]
    fn the_ring_is_bounded_and_late_cursors_restart_at_its_start() {
        let o = Outbox::new(3, usize::MAX);
        for s in 1..=10 {
            o.push(0, s, rec(s));
        }
        let b = o.batch(0, 1, 100, usize::MAX).unwrap();
        assert_eq!(b.first_seq, 8);
        assert_eq!(b.records.len(), 3);
        assert_eq!(o.held(), 3);
    }

    /// Records of 1 MiB: the ring keeps what fits its bytes, and batches what fits theirs.
    #[test]
    fn the_ring_and_its_batches_are_bounded_in_bytes() {
        let big = |seq: u64| {
            let mut r = (*rec(seq)).clone();
            r.entry.value = Some("x".repeat(1 << 20));
            Arc::new(r)
        };
        // Keys differ in length by a byte or two: a few bytes of slack.
        let weight = big(1).weight();
        let o = Outbox::new(20_000, 3 * weight + 8);
        for s in 1..=10 {
            o.push(0, s, big(s));
        }
        assert_eq!(o.held(), 3);
        let held: usize = (8..=10).map(|s| big(s).weight()).sum();
        assert_eq!(o.held_bytes(), held);
        let b = o.batch(0, 1, 512, 2 * weight + 8).unwrap();
        assert_eq!((b.first_seq, b.records.len()), (8, 2));
        let b = o.batch(0, 8, 512, 1).unwrap();
        assert_eq!(
            b.records.len(),
            1,
            "at least one record, whatever it weighs"
        );
        let tiny = Outbox::new(20_000, 1);
        tiny.push(0, 1, big(1));
        assert_eq!(tiny.held(), 1, "the newest is kept whatever it weighs");
    }

    #[test]
    fn a_jump_in_sequence_or_era_restarts_the_ring() {
        let o = Outbox::new(10, usize::MAX);
        o.push(0, 1, rec(1));
        o.push(0, 7, rec(7));
        assert_eq!(o.batch(0, 1, 10, usize::MAX).unwrap().first_seq, 7);
        o.push(1, 1, rec(1));
        assert_eq!(o.last(), (1, 1));
        assert!(o.batch(0, 1, 10, usize::MAX).is_none());
    }
}
