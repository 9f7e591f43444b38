//! Where keys live: the node's current shard map, and the order in which it tries the
//! members of a shard. Owns the map; knows nothing of the data.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::budget::Deadline;
use crate::error::{KvsError, Result};
use crate::shard::{ShardId, ShardMap};
use crate::storage::tally::Owner;
use crate::NodeId;

/// How long a request waits for this node to learn a shard map it was told exists.
const MAP_WAIT: Duration = Duration::from_secs(5);

/// Where a key's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node is a member of the key's shard.
    Local(ShardId),
    /// Forward to one of these members, in this order.
    Remote(ShardId, Vec<NodeId>),
}

pub struct Routing {
    me: NodeId,
    map: watch::Sender<Arc<ShardMap>>,
}

impl Routing {
    pub fn new(me: NodeId, map: ShardMap) -> Self {
        Self {
            me,
            map: watch::channel(Arc::new(map)).0,
        }
    }

    pub fn map(&self) -> Arc<ShardMap> {
        self.map.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ShardMap>> {
        self.map.subscribe()
    }

    /// Makes `next` the current map. Callers decide whether it supersedes the current one
    /// (see `Node::install_map`, which decides and installs under the replica lock).
    pub(super) fn replace(&self, next: ShardMap) {
        self.map.send_replace(Arc::new(next));
    }

    pub fn my_shard(&self) -> Option<ShardId> {
        self.map().shard_of(&self.me)
    }

    /// The members of this node's shard other than itself.
    pub fn shard_peers(&self) -> BTreeSet<NodeId> {
        let map = self.map();
        map.shard_of(&self.me)
            .and_then(|s| map.members(s))
            .map(|m| m.iter().filter(|n| **n != self.me).cloned().collect())
            .unwrap_or_default()
    }

    /// Whether a node is a member of `me`'s shard under `map`, as a predicate.
    pub fn shard_filter<'a>(map: &'a ShardMap, me: &NodeId) -> impl Fn(&NodeId) -> bool + 'a {
        let members = map.shard_of(me).and_then(|s| map.members(s));
        move |n| members.is_some_and(|m| m.contains(n))
    }

    /// Whether this node owns a key under the current map, as a predicate that keeps the map.
    pub fn owner(&self) -> Owner {
        let map = self.map();
        let mine = map.shard_of(&self.me);
        Arc::new(move |key| mine.is_some() && map.shard_for_key(key) == mine)
    }

    /// Whether `me` owns a key under `map`, as a predicate.
    pub fn owned_filter<'a>(map: &'a ShardMap, me: &NodeId) -> impl Fn(&str) -> bool + 'a {
        let mine = map.shard_of(me);
        move |key| mine.is_some() && map.shard_for_key(key) == mine
    }

    /// Decides where requests for `key` go under the current map; `is_up` says which nodes
    /// gossip sees alive.
    pub fn route(&self, key: &str, is_up: impl Fn(&NodeId) -> bool) -> Result<Route> {
        let map = self.map();
        let shard = map.shard_for_key(key).ok_or(KvsError::Unavailable)?;
        let members = map.members(shard).ok_or(KvsError::Unavailable)?;
        if members.contains(&self.me) {
            return Ok(Route::Local(shard));
        }
        Ok(Route::Remote(
            shard,
            self.forwarding_order(&map, members, is_up),
        ))
    }

    /// Live members first, each node preferring its own member of every shard. A client's
    /// chained requests through one node thus reach one replica, which never waits for its
    /// own earlier writes to arrive from another. The i-th member of a shard starts at the
    /// i-th member of the other (rotating from there), so that forwarders spread their load
    /// evenly over the shard's members rather than by chance.
    pub fn forwarding_order(
        &self,
        map: &ShardMap,
        members: &BTreeSet<NodeId>,
        is_up: impl Fn(&NodeId) -> bool,
    ) -> Vec<NodeId> {
        if members.is_empty() {
            return Vec::new();
        }
        let start = map
            .shard_of(&self.me)
            .and_then(|s| map.members(s))
            .and_then(|mine| mine.iter().position(|n| *n == self.me))
            .unwrap_or_else(|| address_hash(&self.me) as usize);
        let mut order: Vec<NodeId> = members
            .iter()
            .cycle()
            .skip(start % members.len())
            .take(members.len())
            .cloned()
            .collect();
        // Stable: live members keep their rotation order.
        order.sort_by_key(|m| !is_up(m));
        order
    }

    /// Waits (bounded) until this node knows a map of at least `epoch`.
    pub async fn await_epoch(&self, epoch: u64, deadline: Deadline) -> bool {
        let mut maps = self.map.subscribe();
        let until = deadline.within(MAP_WAIT);
        tokio::time::timeout_at(until, maps.wait_for(|m| m.epoch >= epoch))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Spreads nodes that belong to no shard over a shard's members.
fn address_hash(node: &NodeId) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    node.hash(&mut hasher);
    hasher.finish()
}
