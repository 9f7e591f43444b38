//! Purging tombstones: a delete is kept as a tombstone until no member of its shard can
//! ever need it again, then dropped from memory and disk, so delete churn does not grow the
//! store.
//!
//! The rule is Riak's "keep until every replica has it" rather than Cassandra's `gc_grace`
//! timer: a tombstone goes only once every member of the shard has applied it, and no write
//! that could lose to it is still on its way. A member that is away holds purging back, so it
//! can never bring a deleted key back, however long it was away; the price is that
//! tombstones accumulate while a member is down (until it returns or leaves the shard).
//!
//! Why "every member applied the delete" is not enough on its own: a write concurrent with
//! the delete and ordered before it (a smaller Lamport time) may still be on its way to
//! some member; applied after the tombstone is gone, it would bring the key back there. So
//! purging is a barrier in two rounds: when every member has applied everything up to
//! `floor` (the pointwise minimum of their applied clocks), remember `top` (the pointwise
//! maximum: every write any member had issued or applied by then); once every member has
//! applied `top` as well, no write from before that moment is in flight, and the tombstones
//! up to `floor` can go. Every write issued later by a member that had applied a delete
//! has a larger Lamport time than the delete, and wins over it anyway.
//!
//! A plain state machine, driven by [`Barrier::advance`] with the members' applied clocks
//! (from gossip), tested without nodes.

use crate::causal::VectorClock;

/// How often a node looks for tombstones to purge.
pub const PURGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The two-round barrier of one node's shard.
#[derive(Debug, Default)]
pub struct Barrier {
    /// The era, `floor` and `top` of the round waiting for every member to reach `top`.
    pending: Option<(u64, VectorClock, VectorClock)>,
}

impl Barrier {
    /// One round, with the applied clock of every member of the shard (`None` for a member
    /// whose clock is not known: it holds purging back). Returns the clock up to which the
    /// tombstones of `era` may be purged now.
    pub fn advance(
        &mut self,
        era: u64,
        members: &[Option<(u64, VectorClock)>],
    ) -> Option<VectorClock> {
        let mut clocks = Vec::with_capacity(members.len());
        for member in members {
            match member {
                Some((e, clock)) if *e == era => clocks.push(clock),
                // A member unknown, or in another era: no member's clock can be trusted
                // against it; start again once it is back.
                _ => {
                    self.pending = None;
                    return None;
                }
            }
        }
        let (floor, top) = (min_of(&clocks), max_of(&clocks));
        match self.pending.take() {
            Some((e, pending_floor, pending_top)) if e == era => {
                if floor.dominates(&pending_top) {
                    self.pending = Some((era, floor, top));
                    Some(pending_floor).filter(|f| !f.is_empty())
                } else {
                    self.pending = Some((e, pending_floor, pending_top));
                    None
                }
            }
            _ => {
                self.pending = Some((era, floor, top));
                None
            }
        }
    }
}

fn max_of(clocks: &[&VectorClock]) -> VectorClock {
    let mut top = VectorClock::new();
    for clock in clocks {
        top.merge(clock);
    }
    top
}

fn min_of(clocks: &[&VectorClock]) -> VectorClock {
    // A node missing from any clock is at 0 there, so the first clock's nodes are all.
    let Some(first) = clocks.first() else {
        return VectorClock::new();
    };
    first
        .iter()
        .map(|(node, _)| {
            (
                node.clone(),
                clocks.iter().map(|c| c.get(node)).min().unwrap_or(0),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;

    fn n(i: u8) -> NodeId {
        format!("10.0.0.{i}:8080").parse().unwrap()
    }

    fn clock(entries: &[(u8, u64)]) -> VectorClock {
        entries.iter().map(|&(i, v)| (n(i), v)).collect()
    }

    fn members(clocks: &[&[(u8, u64)]]) -> Vec<Option<(u64, VectorClock)>> {
        clocks.iter().map(|c| Some((1, clock(c)))).collect()
    }

    #[test]
    fn tombstones_go_once_every_member_has_applied_what_was_in_flight() {
        let mut barrier = Barrier::default();
        // Round 1: every member has applied n1's first 5 writes; n2 has issued 9.
        let round1 = members(&[&[(1, 5), (2, 9)], &[(1, 7), (2, 3)], &[(1, 5), (2, 4)]]);
        assert_eq!(barrier.advance(1, &round1), None);
        // Round 2: not every member has applied n2's 9th write yet.
        let round2 = members(&[&[(1, 7), (2, 9)], &[(1, 7), (2, 8)], &[(1, 7), (2, 9)]]);
        assert_eq!(barrier.advance(1, &round2), None);
        // Round 3: all have applied round 1's top: round 1's floor may go.
        let round3 = members(&[&[(1, 7), (2, 9)], &[(1, 7), (2, 9)], &[(1, 8), (2, 9)]]);
        assert_eq!(barrier.advance(1, &round3), Some(clock(&[(1, 5), (2, 3)])));
        // And the next round starts from round 3.
        let round4 = members(&[&[(1, 8), (2, 9)], &[(1, 8), (2, 9)], &[(1, 8), (2, 9)]]);
        assert_eq!(barrier.advance(1, &round4), Some(clock(&[(1, 7), (2, 9)])));
    }

    #[test]
    fn a_member_away_or_in_another_era_holds_purging_back() {
        let mut barrier = Barrier::default();
        let all = members(&[&[(1, 5)], &[(1, 5)]]);
        assert_eq!(barrier.advance(1, &all), None);
        let away = vec![Some((1, clock(&[(1, 5)]))), None];
        assert_eq!(barrier.advance(1, &away), None);
        // Back: the barrier starts over, two rounds again.
        assert_eq!(barrier.advance(1, &all), None);
        assert_eq!(barrier.advance(1, &all), Some(clock(&[(1, 5)])));
        let other_era = vec![Some((1, clock(&[(1, 5)]))), Some((2, clock(&[])))];
        assert_eq!(barrier.advance(1, &other_era), None);
        assert_eq!(barrier.advance(1, &all), None);
    }

    #[test]
    fn a_write_only_one_member_has_is_not_in_the_floor() {
        let mut barrier = Barrier::default();
        let round = members(&[&[(1, 5), (3, 2)], &[(1, 5)]]);
        assert_eq!(barrier.advance(1, &round), None);
        let purged = barrier.advance(1, &members(&[&[(1, 5), (3, 2)], &[(1, 5), (3, 2)]]));
        assert_eq!(purged, Some(clock(&[(1, 5)])));
    }
}
