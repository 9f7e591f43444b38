//! Vector clocks over node addresses.

use std::collections::BTreeMap;

use crate::NodeId;

/// A vector clock: for every node, how many of its writes (in the current era) are covered.
///
/// Entries are kept sorted by node so that encoding is canonical, and zero entries are never
/// stored, so two equal clocks always have equal representations.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VectorClock(BTreeMap<NodeId, u64>);

impl VectorClock {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, node: &NodeId) -> u64 {
        self.0.get(node).copied().unwrap_or(0)
    }

    /// Sets `node`'s entry; a zero removes it.
    pub fn set(&mut self, node: NodeId, value: u64) {
        if value == 0 {
            self.0.remove(&node);
        } else {
            self.0.insert(node, value);
        }
    }

    /// Raises every entry to at least `other`'s (the least upper bound).
    pub fn merge(&mut self, other: &VectorClock) {
        for (node, &value) in &other.0 {
            let entry = self.0.entry(node.clone()).or_insert(0);
            *entry = (*entry).max(value);
        }
    }

    /// True when every entry of `self` is at least `other`'s.
    pub fn dominates(&self, other: &VectorClock) -> bool {
        other.0.iter().all(|(node, &v)| self.get(node) >= v)
    }

    /// The entries of `self` that are ahead of `have`, restricted to `nodes`.
    pub fn ahead_of<'a>(
        &'a self,
        have: &'a VectorClock,
        nodes: impl Fn(&NodeId) -> bool + 'a,
    ) -> impl Iterator<Item = (NodeId, u64)> + 'a {
        self.0
            .iter()
            .filter(move |(node, &v)| nodes(node) && have.get(node) < v)
            .map(|(node, &v)| (node.clone(), v))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &u64)> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(NodeId, u64)> for VectorClock {
    fn from_iter<T: IntoIterator<Item = (NodeId, u64)>>(iter: T) -> Self {
        let mut clock = VectorClock::new();
        for (node, value) in iter {
            clock.set(node, value);
        }
        clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(i: u8) -> NodeId {
        format!("10.0.0.{i}:8080").parse().unwrap()
    }

    fn clock(entries: &[(u8, u64)]) -> VectorClock {
        entries.iter().map(|&(i, v)| (n(i), v)).collect()
    }

    #[test]
    fn zero_entries_are_not_stored() {
        let mut c = clock(&[(1, 3)]);
        c.set(n(1), 0);
        assert!(c.is_empty());
        assert_eq!(c, VectorClock::new());
    }

    #[test]
    fn dominance_is_pointwise() {
        let a = clock(&[(1, 2), (2, 1)]);
        let b = clock(&[(1, 2)]);
        assert!(a.dominates(&b));
        assert!(!b.dominates(&a));
        assert!(a.dominates(&a));
        let c = clock(&[(3, 1)]);
        assert!(!a.dominates(&c) && !c.dominates(&a), "concurrent clocks");
    }

    #[test]
    fn ahead_of_lists_only_missing_entries_of_chosen_nodes() {
        let want = clock(&[(1, 5), (2, 2), (3, 9)]);
        let have = clock(&[(1, 5), (2, 1)]);
        let missing: Vec<_> = want.ahead_of(&have, |node| *node != n(3)).collect();
        assert_eq!(missing, vec![(n(2), 2)]);
    }

    fn arb_clock() -> impl Strategy<Value = VectorClock> {
        proptest::collection::vec((1u8..6, 0u64..20), 0..6).prop_map(|v| clock(&v))
    }

    proptest! {
        #[test]
        fn merge_is_the_least_upper_bound(a in arb_clock(), b in arb_clock()) {
            let mut m = a.clone();
            m.merge(&b);
            prop_assert!(m.dominates(&a) && m.dominates(&b));
            for (node, v) in m.iter() {
                prop_assert_eq!(*v, a.get(node).max(b.get(node)));
            }
            let mut m2 = b.clone();
            m2.merge(&a);
            prop_assert_eq!(m, m2);
        }
    }
}
