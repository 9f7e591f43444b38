//! The causal replica state machine: which writes a node has applied, how it stamps new ones,
//! and when a remote write or a client's dependencies are satisfied. No I/O happens here.
//!
//! Every write is identified by `(era, origin, seq)` in its [`Stamp`]: it is the `seq`-th
//! write its origin coordinated in the current reshard era. A replica applies each origin's writes in `seq`
//! order and only after the writes they depend on inside the shard, so its `applied` clock
//! always describes a causally closed set of writes. A client's token is satisfied when
//! `applied` covers the token's entries for nodes of this shard; entries for other shards
//! never block.

use serde::{Deserialize, Serialize};

use super::{CausalMetadata, VectorClock};
use crate::NodeId;

/// The last-writer-wins order of writes to one key.
///
/// Field order matters: the derived `Ord` compares era, then Lamport time, then origin and
/// sequence number. A write stamped after another was applied at its origin has a larger
/// Lamport time, so the order never contradicts causality, and replicas that have applied the
/// same writes agree on the winner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp {
    pub era: u64,
    pub lamport: u64,
    pub origin: NodeId,
    pub seq: u64,
}

/// Whether a request with some dependencies can proceed here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// These entries (node, counter) of this shard are not applied yet.
    Missing(VectorClock),
    /// The token comes from a later era: this node has not seen the latest reshard.
    FutureEra(u64),
}

/// The highest Lamport time, sequence number or era a replica takes from anyone else. A
/// node stamps at most a few hundred thousand writes a second, so 2^62 is millennia away;
/// a stamp or clock beyond it comes from a faulty or malicious peer (or disk), and taking
/// it in would make the next local write's counter wrap. Such a write is refused, such a
/// clock entry ignored.
pub const MAX_COUNTER: u64 = 1 << 62;

/// What to do with a write replicated from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Apply,
    /// Already applied.
    Duplicate,
    /// From an earlier era: the reshard that ended that era already moved its data.
    Stale,
    /// An earlier write of the same origin, or a dependency, is missing.
    Blocked,
    /// A counter beyond [`MAX_COUNTER`]: never applied.
    Refused,
}

#[derive(Debug, Clone)]
pub struct Replica {
    me: NodeId,
    era: u64,
    applied: VectorClock,
    lamport: u64,
}

impl Replica {
    pub fn new(me: NodeId, era: u64) -> Self {
        Self {
            me,
            era,
            applied: VectorClock::new(),
            lamport: 0,
        }
    }

    /// The replica as a restarted node recovers it from disk. `applied` must include this
    /// node's own last sequence number: reissuing one would name two writes with one dot.
    pub fn restore(me: NodeId, era: u64, applied: VectorClock, lamport: u64) -> Self {
        Self {
            me,
            era,
            applied,
            lamport,
        }
    }

    pub fn era(&self) -> u64 {
        self.era
    }

    pub fn applied(&self) -> &VectorClock {
        &self.applied
    }

    pub fn lamport(&self) -> u64 {
        self.lamport
    }

    /// The last sequence number this node issued in the current era.
    pub fn own_seq(&self) -> u64 {
        self.applied.get(&self.me)
    }

    pub fn readiness(
        &self,
        deps: &CausalMetadata,
        in_shard: impl Fn(&NodeId) -> bool,
    ) -> Readiness {
        if deps.era < self.era {
            return Readiness::Ready;
        }
        if deps.era > self.era {
            return Readiness::FutureEra(deps.era);
        }
        let missing: VectorClock = deps.clock.ahead_of(&self.applied, in_shard).collect();
        if missing.is_empty() {
            Readiness::Ready
        } else {
            Readiness::Missing(missing)
        }
    }

    /// Stamps a write coordinated here. The caller has checked that `deps` are ready.
    ///
    /// The write's metadata is the client's dependencies plus the write itself (which, as
    /// origins' writes apply in order, implies this node's earlier writes), and no more: what
    /// this node merely applied from other clients is not in the write's causal past, and
    /// making every write depend on it made replicas wait on each other's pushes (writes
    /// from three origins blocked each other round after round) and clients wait on writes
    /// they never saw. A later write here still supersedes an earlier one: the Lamport time
    /// in the stamp orders them.
    pub fn stamp_local_write(&mut self, deps: &CausalMetadata) -> (Stamp, CausalMetadata) {
        // What came from others is at most MAX_COUNTER; from there, 2^62 local writes are
        // left before a counter could wrap.
        debug_assert!(self.own_seq() < u64::MAX && self.lamport < u64::MAX);
        let seq = self.own_seq() + 1;
        self.applied.set(self.me.clone(), seq);
        self.lamport += 1;
        let mut clock = VectorClock::new();
        if deps.era == self.era {
            clock.merge(&deps.clock);
        }
        clock.set(self.me.clone(), seq);
        let stamp = Stamp {
            era: self.era,
            lamport: self.lamport,
            origin: self.me.clone(),
            seq,
        };
        (
            stamp,
            CausalMetadata::new(self.era, clock).issued_by(self.me.clone()),
        )
    }

    /// Decides whether a replicated write with this stamp and causal clock can be applied now.
    pub fn admit(
        &self,
        stamp: &Stamp,
        clock: &VectorClock,
        in_shard: impl Fn(&NodeId) -> bool,
    ) -> Admission {
        if stamp.lamport > MAX_COUNTER || stamp.seq > MAX_COUNTER || stamp.era > MAX_COUNTER {
            return Admission::Refused;
        }
        if stamp.era < self.era {
            return Admission::Stale;
        }
        if stamp.era > self.era {
            return Admission::Blocked;
        }
        let have = self.applied.get(&stamp.origin);
        if stamp.seq <= have {
            return Admission::Duplicate;
        }
        if stamp.seq != have + 1 {
            return Admission::Blocked;
        }
        let deps_ready = clock
            .iter()
            .filter(|(node, _)| **node != stamp.origin && in_shard(node))
            .all(|(node, &v)| self.applied.get(node) >= v);
        if deps_ready {
            Admission::Apply
        } else {
            Admission::Blocked
        }
    }

    /// Records a write admitted with [`Admission::Apply`].
    pub fn record_applied(&mut self, stamp: &Stamp) {
        debug_assert_eq!(stamp.seq, self.applied.get(&stamp.origin) + 1, "in order");
        debug_assert!(stamp.lamport <= MAX_COUNTER);
        self.applied.set(stamp.origin.clone(), stamp.seq);
        self.lamport = self.lamport.max(stamp.lamport);
    }

    /// Takes in a peer's state after merging a snapshot of its data taken no earlier than
    /// `applied` was read: the union of two causally closed sets is causally closed.
    /// Entries and a Lamport time beyond [`MAX_COUNTER`] are ignored (logged).
    pub fn absorb(&mut self, applied: &VectorClock, lamport: u64) {
        let sane = applied.iter().all(|(_, &v)| v <= MAX_COUNTER);
        if sane {
            self.applied.merge(applied);
        } else {
            log::warn!("ignored a clock with a counter beyond {MAX_COUNTER}: {applied:?}");
            for (node, &v) in applied.iter().filter(|(_, &v)| v <= MAX_COUNTER) {
                if v > self.applied.get(node) {
                    self.applied.set(node.clone(), v);
                }
            }
        }
        if lamport <= MAX_COUNTER {
            self.lamport = self.lamport.max(lamport);
        } else {
            log::warn!("ignored a Lamport time beyond {MAX_COUNTER}: {lamport}");
        }
    }

    /// Enters a new era after a reshard: counters restart, Lamport time carries on.
    pub fn start_era(&mut self, era: u64) {
        self.era = era;
        self.applied = VectorClock::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u8) -> NodeId {
        format!("10.0.0.{i}:8080").parse().unwrap()
    }

    fn shard(node: &NodeId) -> bool {
        [n(1), n(2), n(3)].contains(node)
    }

    #[test]
    fn local_writes_count_up_and_cover_what_was_applied() {
        let mut a = Replica::new(n(1), 0);
        let (s1, m1) = a.stamp_local_write(&CausalMetadata::default());
        let (s2, m2) = a.stamp_local_write(&CausalMetadata::default());
        assert_eq!((s1.seq, s2.seq), (1, 2));
        assert!(s2 > s1);
        assert!(m2.clock.dominates(&m1.clock));
    }

    #[test]
    fn writes_apply_in_origin_order_only() {
        let mut a = Replica::new(n(1), 0);
        let (s1, m1) = a.stamp_local_write(&CausalMetadata::default());
        let (s2, m2) = a.stamp_local_write(&CausalMetadata::default());
        let mut b = Replica::new(n(2), 0);
        assert_eq!(b.admit(&s2, &m2.clock, shard), Admission::Blocked);
        assert_eq!(b.admit(&s1, &m1.clock, shard), Admission::Apply);
        b.record_applied(&s1);
        assert_eq!(b.admit(&s1, &m1.clock, shard), Admission::Duplicate);
        assert_eq!(b.admit(&s2, &m2.clock, shard), Admission::Apply);
    }

    #[test]
    fn a_write_waits_for_its_dependencies_from_other_origins() {
        // The course scenario: foo written on A, bar on B with foo's metadata; C sees bar first.
        let mut a = Replica::new(n(1), 0);
        let (foo, foo_meta) = a.stamp_local_write(&CausalMetadata::default());
        let mut b = Replica::new(n(2), 0);
        assert_eq!(
            b.readiness(&foo_meta, shard),
            Readiness::Missing([(n(1), 1)].into_iter().collect())
        );
        b.record_applied(&foo);
        assert_eq!(b.readiness(&foo_meta, shard), Readiness::Ready);
        let (bar, bar_meta) = b.stamp_local_write(&foo_meta);
        assert!(bar > foo, "bar supersedes foo");
        let mut c = Replica::new(n(3), 0);
        assert_eq!(c.admit(&bar, &bar_meta.clock, shard), Admission::Blocked);
        c.record_applied(&foo);
        assert_eq!(c.admit(&bar, &bar_meta.clock, shard), Admission::Apply);
    }

    #[test]
    fn a_write_depends_on_its_client_and_its_origin_only() {
        let mut b = Replica::new(n(2), 0);
        let (from_b, _) = b.stamp_local_write(&CausalMetadata::default());
        let mut a = Replica::new(n(1), 0);
        a.record_applied(&from_b);
        // Another client's write that A merely applied is not in this write's past.
        let (_, meta) = a.stamp_local_write(&CausalMetadata::default());
        assert_eq!(meta.clock, [(n(1), 1)].into_iter().collect());
        let deps = CausalMetadata::new(0, [(n(2), 1)].into_iter().collect());
        let (_, meta) = a.stamp_local_write(&deps);
        assert_eq!(meta.clock, [(n(1), 2), (n(2), 1)].into_iter().collect());
    }

    #[test]
    fn dependencies_on_other_shards_never_block() {
        let mut r = Replica::new(n(1), 0);
        let deps = CausalMetadata::new(0, [(n(9), 40)].into_iter().collect());
        assert_eq!(r.readiness(&deps, shard), Readiness::Ready);
        let (_, meta) = r.stamp_local_write(&deps);
        assert_eq!(meta.clock.get(&n(9)), 40, "carried on for the client");
    }

    #[test]
    fn eras_order_tokens_and_writes() {
        let mut r = Replica::new(n(1), 1);
        let old = CausalMetadata::new(0, [(n(2), 5)].into_iter().collect());
        assert_eq!(r.readiness(&old, shard), Readiness::Ready);
        let new = CausalMetadata::new(2, VectorClock::new());
        assert_eq!(r.readiness(&new, shard), Readiness::FutureEra(2));
        let (s, m) = r.stamp_local_write(&old);
        assert!(m.clock.get(&n(2)) == 0, "old-era entries are dropped");
        let stale = Stamp {
            era: 0,
            ..s.clone()
        };
        assert_eq!(r.admit(&stale, &m.clock, shard), Admission::Stale);
        r.start_era(2);
        assert_eq!(r.own_seq(), 0);
        let (s2, _) = r.stamp_local_write(&CausalMetadata::default());
        assert!(s2 > s, "later eras win and Lamport time carries on");
    }

    #[test]
    fn absorbing_a_snapshot_moves_counters_forward_only() {
        let mut r = Replica::new(n(1), 0);
        r.absorb(&[(n(2), 4), (n(1), 2)].into_iter().collect(), 9);
        r.absorb(&[(n(2), 1)].into_iter().collect(), 3);
        assert_eq!(r.applied().get(&n(2)), 4);
        assert_eq!(r.own_seq(), 2);
        assert_eq!(r.lamport(), 9);
    }

    /// A faulty or malicious peer's counters near `u64::MAX`: the write is refused, the
    /// clock entry and Lamport time ignored, and the next local write stamps without a
    /// wrap (before, `stamp_local_write` overflowed).
    #[test]
    fn counters_near_u64_max_are_refused() {
        let me: NodeId = "10.0.0.1:8080".parse().unwrap();
        let peer: NodeId = "10.0.0.2:8080".parse().unwrap();
        let mut r = Replica::new(me.clone(), 0);
        let huge = Stamp {
            era: 0,
            lamport: u64::MAX,
            origin: peer.clone(),
            seq: 1,
        };
        assert_eq!(
            r.admit(&huge, &VectorClock::new(), |_| true),
            Admission::Refused
        );
        let seq_huge = Stamp {
            lamport: 1,
            seq: u64::MAX,
            ..huge
        };
        assert_eq!(
            r.admit(&seq_huge, &VectorClock::new(), |_| true),
            Admission::Refused
        );
        let mut clock = VectorClock::new();
        clock.set(me, u64::MAX);
        clock.set(peer.clone(), 7);
        r.absorb(&clock, u64::MAX);
        assert_eq!(r.applied().get(&peer), 7, "the sane entry is taken");
        assert_eq!(r.own_seq(), 0);
        assert_eq!(r.lamport(), 0);
        let (stamp, _) = r.stamp_local_write(&CausalMetadata::default());
        assert_eq!((stamp.seq, stamp.lamport), (1, 1));
    }

    /// Found by `fuzz::replicas_under_hostile_sequences`: a peer's Lamport time of exactly
    /// `MAX_COUNTER` is taken in, and the local writes after it must stamp on (an assertion
    /// that the local time stayed at or below the bound stopped the second one).
    #[test]
    fn local_writes_go_on_past_a_lamport_time_taken_in_at_the_bound() {
        let mut r = Replica::new("10.0.0.1:8080".parse().unwrap(), 0);
        r.absorb(&VectorClock::new(), MAX_COUNTER);
        let (first, _) = r.stamp_local_write(&CausalMetadata::default());
        let (second, _) = r.stamp_local_write(&CausalMetadata::default());
        assert_eq!(
            (first.lamport, second.lamport),
            (MAX_COUNTER + 1, MAX_COUNTER + 2)
        );
    }
}
