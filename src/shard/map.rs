//! The shard map: which nodes form which shard, versioned by epoch.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::hashing::shard_for_key;
use super::ShardId;
use crate::NodeId;

/// Every shard keeps at least this many replicas.
pub const MIN_REPLICAS: usize = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("Not enough nodes to provide fault-tolerance with the given shard count!")]
    NotEnoughNodes,
    #[error("Shard ID does not exist")]
    UnknownShard,
    #[error("Node is already a member of shard {0}")]
    AlreadyMember(ShardId),
}

/// Which nodes hold which keys.
///
/// `epoch` grows with every change of the map; `era` grows only with a reshard, the one change
/// that moves keys between shards (and so restarts the causal counters, see `causal`).
/// A node adopts a map only if it [`supersedes`](ShardMap::supersedes) its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    pub epoch: u64,
    pub era: u64,
    pub shards: BTreeMap<ShardId, BTreeSet<NodeId>>,
    /// Formed by nodes started without `SHARD_COUNT` (see [`ShardMap::formed`]): it never
    /// wins over a map of the same epoch made with `SHARD_COUNT`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub formed: bool,
    /// The store's identity: a digest of the first map it formed with, carried by every map
    /// after it ([`ShardMap::origin`]). A map of another store never supersedes this one.
    /// Empty in maps written before it existed, which then match any store.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub store: String,
}

/// What a node started without `SHARD_COUNT` knows of one live node of its `VIEW`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMap {
    /// It gossips a map with shards: the store exists; wait for add-member.
    WithShards,
    /// It gossips a map without shards: it waits, as this node does.
    Waiting,
}

impl ShardMap {
    /// The first map, a function of the start-up `VIEW` and `SHARD_COUNT` alone, so that nodes
    /// started minutes apart agree on it without talking: sorted nodes are dealt round-robin.
    pub fn initial(view: &BTreeSet<NodeId>, shard_count: u32) -> Result<Self, MapError> {
        if shard_count == 0 || view.len() < MIN_REPLICAS * shard_count as usize {
            return Err(MapError::NotEnoughNodes);
        }
        let mut shards: BTreeMap<ShardId, BTreeSet<NodeId>> = BTreeMap::new();
        for (i, node) in view.iter().enumerate() {
            shards
                .entry(i as ShardId % shard_count)
                .or_default()
                .insert(node.clone());
        }
        Ok(Self::first(shards, false))
    }

    /// A store's first map, with the identity it gives the store.
    fn first(shards: BTreeMap<ShardId, BTreeSet<NodeId>>, formed: bool) -> Self {
        let store = Self::origin(&shards, formed);
        Self {
            epoch: 0,
            era: 0,
            shards,
            formed,
            store,
        }
    }

    /// The identity of a store whose first map had `shards` (formed or configured): 64 bits
    /// of a BLAKE3 digest, in hex. Two stores formed from the same VIEW and `SHARD_COUNT`
    /// share it; the data directory's stamp tells them apart by their secret
    /// (`recovery::DirStamp`).
    pub fn origin(shards: &BTreeMap<ShardId, BTreeSet<NodeId>>, formed: bool) -> String {
        let mut hasher = blake3::Hasher::new_derive_key("kvs store identity v1");
        hasher.update(&serde_json::to_vec(shards).unwrap_or_default());
        hasher.update(&[u8::from(formed)]);
        let digest = hasher.finalize();
        digest.as_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A first map formed by nodes started without `SHARD_COUNT`: it yields to any map.
    pub fn is_formed_first(&self) -> bool {
        self.formed && self.epoch == 0
    }

    /// Whether `other` may be a map of this map's store: the same identity, or one of the
    /// two has none (a map without shards, or written before identities existed).
    pub fn same_store(&self, other: &ShardMap) -> bool {
        self.store.is_empty() || other.store.is_empty() || self.store == other.store
    }

    /// The map that nodes started without `SHARD_COUNT` form when none of them has one (the
    /// replicated store without shards of the course's earlier assignment): one shard of
    /// every node of `VIEW`, a function of `VIEW` alone, so that every node computes it the
    /// same way.
    ///
    /// A node forms it once it has heard, by gossip, from a majority of `VIEW` (itself
    /// included), all waiting for a map as it is, and from no node that has one: nodes start
    /// seconds apart, and a node of `VIEW` that never starts must not keep the others from
    /// serving. A node that joins a sharded store (its peers gossip maps with shards) waits
    /// for add-member instead, and one whose peers are all unreachable hears from no
    /// majority, so it forms nothing. A formed map loses to any map made with `SHARD_COUNT`
    /// or by an administrator.
    pub fn formed(view: &BTreeSet<NodeId>, heard: &[PeerMap]) -> Option<Self> {
        let waiting = heard.iter().filter(|p| **p == PeerMap::Waiting).count();
        let anyone_has_one = heard.contains(&PeerMap::WithShards);
        if anyone_has_one || view.len() < MIN_REPLICAS || waiting < view.len() / 2 + 1 {
            return None;
        }
        Some(Self::first(BTreeMap::from([(0, view.clone())]), true))
    }

    pub fn shard_ids(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.shards.keys().copied()
    }

    pub fn shard_for_key(&self, key: &str) -> Option<ShardId> {
        shard_for_key(key, self.shard_ids())
    }

    pub fn members(&self, shard: ShardId) -> Option<&BTreeSet<NodeId>> {
        self.shards.get(&shard)
    }

    pub fn shard_of(&self, node: &NodeId) -> Option<ShardId> {
        self.shards
            .iter()
            .find(|(_, members)| members.contains(node))
            .map(|(&id, _)| id)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.shards.values().flatten()
    }

    /// A content hash that breaks ties between different maps of the same epoch, which only
    /// concurrent administrators can create.
    pub fn digest(&self) -> u64 {
        let bytes = serde_json::to_vec(&self.shards).unwrap_or_default();
        xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, self.era)
    }

    /// Whether a node holding `other` should switch to `self`. Any map beats having none;
    /// a map of another store beats only a formed first map (which yields to any map made
    /// with `SHARD_COUNT`, whose identity differs).
    pub fn supersedes(&self, other: &ShardMap) -> bool {
        if self.shards.is_empty() {
            return false;
        }
        if other.shards.is_empty() {
            return true;
        }
        if !(self.same_store(other) || other.is_formed_first()) {
            return false;
        }
        let rank = |m: &ShardMap| (m.epoch, !m.formed, m.digest());
        rank(self) > rank(other)
    }

    /// The map of a node that joins an existing store: no shards until it learns the store's.
    pub fn none() -> Self {
        Self {
            epoch: 0,
            era: 0,
            shards: BTreeMap::new(),
            formed: false,
            store: String::new(),
        }
    }

    /// This map with `node` added to `shard`: the next epoch, same era (no key moves).
    pub fn with_member(&self, shard: ShardId, node: NodeId) -> Result<Self, MapError> {
        if !self.shards.contains_key(&shard) {
            return Err(MapError::UnknownShard);
        }
        if let Some(current) = self.shard_of(&node) {
            return Err(MapError::AlreadyMember(current));
        }
        let mut next = self.clone();
        next.epoch += 1;
        next.formed = false;
        next.shards.entry(shard).or_default().insert(node);
        Ok(next)
    }

    /// A map of `count` shards over the `live` nodes, the next epoch and era.
    ///
    /// Nodes stay in their shard where they can, so that as little data as possible moves:
    /// shards beyond `count` are dissolved, shards over their share give up their highest
    /// addresses, and shards under it take the lowest free addresses.
    pub fn resharded(&self, live: &BTreeSet<NodeId>, count: u32) -> Result<Self, MapError> {
        let count_usize = count as usize;
        if count == 0 || live.len() < MIN_REPLICAS * count_usize {
            return Err(MapError::NotEnoughNodes);
        }
        let mut kept: BTreeMap<ShardId, BTreeSet<NodeId>> = (0..count)
            .map(|id| {
                let members = self.members(id).cloned().unwrap_or_default();
                (id, members.intersection(live).cloned().collect())
            })
            .collect();
        let targets = share_targets(&kept, live.len());
        let mut pool: BTreeSet<NodeId> = live
            .iter()
            .filter(|n| !kept.values().any(|m| m.contains(n)))
            .cloned()
            .collect();
        for (id, members) in kept.iter_mut() {
            while members.len() > targets[id] {
                if let Some(last) = members.pop_last() {
                    pool.insert(last);
                }
            }
        }
        for (id, members) in kept.iter_mut() {
            while members.len() < targets[id] {
                match pool.pop_first() {
                    Some(node) => members.insert(node),
                    None => break,
                };
            }
        }
        Ok(Self {
            epoch: self.epoch + 1,
            era: self.era + 1,
            shards: kept,
            formed: false,
            store: self.store.clone(),
        })
    }
}

/// Even shard sizes; the remainder goes to the shards that already hold the most nodes.
fn share_targets(
    kept: &BTreeMap<ShardId, BTreeSet<NodeId>>,
    nodes: usize,
) -> BTreeMap<ShardId, usize> {
    let base = nodes / kept.len();
    let extra = nodes % kept.len();
    let mut by_size: Vec<(&ShardId, usize)> = kept.iter().map(|(id, m)| (id, m.len())).collect();
    by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    by_size
        .into_iter()
        .enumerate()
        .map(|(rank, (&id, _))| (id, base + usize::from(rank < extra)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(range: std::ops::RangeInclusive<u8>) -> BTreeSet<NodeId> {
        range
            .map(|i| format!("10.10.0.{i}:8080").parse().unwrap())
            .collect()
    }

    #[test]
    fn nodes_without_shard_count_form_one_shard_once_a_majority_waits() {
        use PeerMap::{Waiting, WithShards};
        let view = nodes(2..=4);
        assert_eq!(ShardMap::formed(&view, &[Waiting]), None, "alone: wait");
        let map = ShardMap::formed(&view, &[Waiting, Waiting]).expect("a majority");
        assert_eq!(map.shards, BTreeMap::from([(0, view.clone())]));
        assert_eq!(
            ShardMap::formed(&view, &[Waiting, Waiting]),
            Some(map.clone()),
            "every node computes the same map"
        );
        assert_eq!(
            ShardMap::formed(&view, &[Waiting, Waiting, WithShards]),
            None,
            "a node that joins a store with shards waits for add-member"
        );
        assert_eq!(ShardMap::formed(&nodes(2..=2), &[Waiting]), None);
    }

    /// A store's identity comes from its first map and stays with every map after it; a
    /// map of another store never replaces one, however new, except a formed first map.
    #[test]
    fn a_map_of_another_store_never_supersedes() {
        let ours = ShardMap::initial(&nodes(2..=5), 2).unwrap();
        assert_eq!(ours.store.len(), 16);
        assert_eq!(ours, ShardMap::initial(&nodes(2..=5), 2).unwrap());
        let grown = ours
            .with_member(0, nodes(6..=6).pop_first().unwrap())
            .unwrap();
        let resharded = grown.resharded(&nodes(2..=6), 2).unwrap();
        assert_eq!((&grown.store, &resharded.store), (&ours.store, &ours.store));
        assert!(resharded.supersedes(&ours));
        let theirs = ShardMap::initial(&nodes(2..=5), 1).unwrap();
        let theirs_later = theirs.resharded(&nodes(2..=7), 3).unwrap();
        assert_ne!(theirs.store, ours.store);
        assert!(
            !theirs_later.supersedes(&ours),
            "a newer map of another store"
        );
        assert!(!ours.supersedes(&theirs_later));
        let formed = ShardMap::formed(&nodes(2..=5), &[PeerMap::Waiting; 3]).unwrap();
        assert!(ours.supersedes(&formed), "a formed first map yields to any");
        let mut old_format = theirs_later.clone();
        old_format.store.clear();
        assert!(
            old_format.supersedes(&ours),
            "maps without an identity match any"
        );
    }

    #[test]
    fn a_formed_map_never_wins_over_one_made_with_shard_count_or_by_an_administrator() {
        let view = nodes(2..=5);
        let formed = ShardMap::formed(&view, &[PeerMap::Waiting; 3]).unwrap();
        let configured = ShardMap::initial(&view, 2).unwrap();
        assert!(configured.supersedes(&formed));
        assert!(!formed.supersedes(&configured));
        assert!(formed.supersedes(&ShardMap::none()));
        let added = formed
            .with_member(0, nodes(9..=9).into_iter().next().unwrap())
            .unwrap();
        assert!(!added.formed && added.supersedes(&formed));
        // Now two stores: a node holding the configured map joins the formed store's only
        // when most of its map's nodes run it and it holds no key (`replication::pull`).
        assert!(!added.supersedes(&configured) && !configured.supersedes(&added));
    }

    fn sizes(map: &ShardMap) -> Vec<usize> {
        map.shards.values().map(BTreeSet::len).collect()
    }

    #[test]
    fn initial_map_deals_sorted_nodes_round_robin() {
        let map = ShardMap::initial(&nodes(2..=7), 2).unwrap();
        assert_eq!(sizes(&map), vec![3, 3]);
        let shard0: Vec<String> = map.shards[&0].iter().map(|a| a.to_string()).collect();
        assert_eq!(
            shard0,
            ["10.10.0.2:8080", "10.10.0.4:8080", "10.10.0.6:8080"]
        );
        assert_eq!(map.shard_of(&"10.10.0.3:8080".parse().unwrap()), Some(1));
    }

    #[test]
    fn initial_map_needs_two_nodes_a_shard() {
        assert_eq!(
            ShardMap::initial(&nodes(2..=4), 2),
            Err(MapError::NotEnoughNodes)
        );
        assert_eq!(
            ShardMap::initial(&nodes(2..=4), 0),
            Err(MapError::NotEnoughNodes)
        );
        assert!(ShardMap::initial(&nodes(2..=3), 1).is_ok());
    }

    #[test]
    fn node_order_is_numeric_not_textual() {
        let map = ShardMap::initial(&nodes(2..=11), 1).unwrap();
        let first_two: Vec<String> = map.shards[&0]
            .iter()
            .take(2)
            .map(|a| a.to_string())
            .collect();
        assert_eq!(first_two, ["10.10.0.2:8080", "10.10.0.3:8080"]);
        assert_eq!(
            map.shards[&0].last().unwrap().to_string(),
            "10.10.0.11:8080"
        );
    }

    #[test]
    fn add_member_bumps_the_epoch_only() {
        let map = ShardMap::initial(&nodes(2..=7), 2).unwrap();
        let new: NodeId = "10.10.0.8:8080".parse().unwrap();
        let next = map.with_member(1, new.clone()).unwrap();
        assert_eq!((next.epoch, next.era), (1, 0));
        assert_eq!(next.shard_of(&new), Some(1));
        assert!(next.supersedes(&map));
        assert_eq!(
            next.with_member(0, new.clone()),
            Err(MapError::AlreadyMember(1))
        );
        assert_eq!(map.with_member(5, new), Err(MapError::UnknownShard));
    }

    #[test]
    fn reshard_of_seven_nodes_into_three_moves_few_nodes() {
        let mut map = ShardMap::initial(&nodes(2..=7), 2).unwrap();
        map = map
            .with_member(1, "10.10.0.8:8080".parse().unwrap())
            .unwrap();
        let next = map.resharded(&nodes(2..=8), 3).unwrap();
        assert_eq!((next.epoch, next.era), (2, 1));
        assert_eq!(sizes(&next), vec![2, 3, 2]);
        let stayed = next
            .nodes()
            .filter(|n| map.shard_of(n) == next.shard_of(n))
            .count();
        assert_eq!(stayed, 5, "only the nodes that fill the new shard move");
        assert_eq!(
            map.resharded(&nodes(2..=8), 4),
            Err(MapError::NotEnoughNodes)
        );
    }

    #[test]
    fn reshard_uses_only_live_nodes() {
        let map = ShardMap::initial(&nodes(2..=7), 2).unwrap();
        let live = nodes(2..=6);
        let next = map.resharded(&live, 2).unwrap();
        assert_eq!(next.nodes().count(), 5);
        assert!(next.nodes().all(|n| live.contains(n)));
    }

    proptest! {
        #[test]
        fn resharding_keeps_every_shard_fault_tolerant_and_balanced(
            start in 1u32..4, count in 1u32..6, extra in 0u8..6
        ) {
            let all = nodes(2..=(2 + 2 * 5 + extra));
            let map = ShardMap::initial(&all, start).unwrap();
            let next = map.resharded(&all, count).unwrap();
            let sizes = sizes(&next);
            prop_assert_eq!(sizes.len(), count as usize);
            prop_assert!(sizes.iter().all(|&s| s >= MIN_REPLICAS));
            prop_assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            prop_assert_eq!(next.nodes().collect::<BTreeSet<_>>(), all.iter().collect());
        }
    }
}
