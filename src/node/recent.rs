//! The recent log: the writes of the current era a replica applied lately, in order, so that
//! a peer's pull is answered from a few thousand records instead of a scan of every key.
//!
//! The log is bounded. It remembers, for each origin, the highest sequence number it has
//! evicted: a peer that has seen at least that much of every origin can be answered from
//! the log alone (everything newer is still in it); any other pull falls back to a scan.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::causal::VectorClock;
use crate::storage::Record;

#[derive(Debug)]
pub struct RecentLog {
    era: u64,
    records: VecDeque<Arc<Record>>,
    capacity: usize,
    /// The most `records` may weigh ([`Record::weight`]), and what they weigh.
    max_bytes: usize,
    bytes: usize,
    evicted: VectorClock,
}

impl RecentLog {
    /// A log of at most `capacity` records weighing at most `max_bytes` together.
    pub fn new(era: u64, capacity: usize, max_bytes: usize) -> Self {
        Self {
            era,
            records: VecDeque::new(),
            capacity: capacity.max(1),
            max_bytes,
            bytes: 0,
            evicted: VectorClock::new(),
        }
    }

    /// Starts a new era: earlier writes are no deltas of it.
    pub fn reset(&mut self, era: u64) {
        self.era = era;
        self.records.clear();
        self.bytes = 0;
        self.evicted = VectorClock::new();
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Takes note that writes up to `clock` may be missing from the log (they were taken in
    /// without being logged), as if they had been evicted.
    pub fn forget_up_to(&mut self, clock: &VectorClock) {
        self.evicted.merge(clock);
    }

    /// Records a write just applied. Writes of other eras are ignored.
    pub fn push(&mut self, record: Arc<Record>) {
        if record.entry.stamp.era != self.era {
            return;
        }
        self.bytes += record.weight();
        self.records.push_back(record);
        while self.records.len() > self.capacity || self.bytes > self.max_bytes {
            let Some(old) = self.records.pop_front() else {
                break;
            };
            self.bytes -= old.weight();
            let stamp = old.entry.stamp.clone();
            if stamp.seq > self.evicted.get(&stamp.origin) {
                self.evicted.set(stamp.origin, stamp.seq);
            }
        }
    }

    /// What the records it holds weigh.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What a peer that has applied `seen` in `era` lacks, if the log still holds all of it.
    pub fn delta(&self, era: u64, seen: &VectorClock) -> Option<Vec<Record>> {
        if era != self.era || !seen.dominates(&self.evicted) {
            return None;
        }
        Some(
            self.records
                .iter()
                .filter(|r| r.entry.stamp.seq > seen.get(&r.entry.stamp.origin))
                .map(|r| (**r).clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::Stamp;
    use crate::storage::Entry;
    use crate::NodeId;

    fn n(i: u8) -> NodeId {
        format!("10.0.0.{i}:1").parse().unwrap()
    }

    fn rec(origin: u8, seq: u64, era: u64) -> Arc<Record> {
        Arc::new(Record {
            key: format!("k{origin}-{seq}"),
            entry: Entry {
                value: Some("v".into()),
                stamp: Stamp {
                    era,
                    lamport: seq,
                    origin: n(origin),
                    seq,
                },
                metadata: String::new(),
            },
        })
    }

    fn keys(records: Vec<Record>) -> Vec<String> {
        records.into_iter().map(|r| r.key).collect()
    }

    #[test]
    fn a_delta_lists_what_the_peer_has_not_seen() {
        let mut log = RecentLog::new(0, 10, usize::MAX);
        for (o, s) in [(1, 1), (2, 1), (1, 2)] {
            log.push(rec(o, s, 0));
        }
        let seen: VectorClock = [(n(1), 1)].into_iter().collect();
        assert_eq!(keys(log.delta(0, &seen).unwrap()), ["k2-1", "k1-2"]);
        assert!(log.delta(1, &seen).is_none(), "another era");
    }

    #[test]
    fn a_peer_behind_what_was_evicted_needs_a_scan() {
        let mut log = RecentLog::new(0, 2, usize::MAX);
        for s in 1..=3 {
            log.push(rec(1, s, 0));
        }
        assert!(log.delta(0, &VectorClock::new()).is_none());
        let seen: VectorClock = [(n(1), 1)].into_iter().collect();
        assert_eq!(keys(log.delta(0, &seen).unwrap()), ["k1-2", "k1-3"]);
    }

    /// Past its bytes, the log evicts as past its count: a pull behind the evicted writes
    /// is sent to a scan.
    #[test]
    fn the_log_is_bounded_in_bytes() {
        let weight = rec(1, 1, 0).weight();
        let mut log = RecentLog::new(0, 16_384, 2 * weight);
        for s in 1..=5 {
            log.push(rec(1, s, 0));
        }
        assert_eq!(log.bytes(), 2 * weight);
        assert!(log.delta(0, &[(n(1), 2)].into_iter().collect()).is_none());
        let seen: VectorClock = [(n(1), 3)].into_iter().collect();
        assert_eq!(keys(log.delta(0, &seen).unwrap()), ["k1-4", "k1-5"]);
    }

    #[test]
    fn writes_taken_in_unlogged_count_as_evicted() {
        let mut log = RecentLog::new(0, 4, usize::MAX);
        log.forget_up_to(&[(n(1), 5)].into_iter().collect());
        log.push(rec(1, 6, 0));
        assert!(log.delta(0, &[(n(1), 4)].into_iter().collect()).is_none());
        let seen: VectorClock = [(n(1), 5)].into_iter().collect();
        assert_eq!(keys(log.delta(0, &seen).unwrap()), ["k1-6"]);
    }

    #[test]
    fn writes_of_other_eras_are_not_logged_and_a_new_era_starts_empty() {
        let mut log = RecentLog::new(1, 4, usize::MAX);
        log.push(rec(1, 1, 0));
        assert!(log.delta(1, &VectorClock::new()).unwrap().is_empty());
        log.push(rec(1, 1, 1));
        log.reset(2);
        assert!(log.delta(2, &VectorClock::new()).unwrap().is_empty());
    }
}
