//! `GET /kvs/status`: what a node knows of every node of its store, for `kvsctl status` and
//! the dashboard, answered from gossip without a round of calls (see `docs/tools.md`).
//!
//! Each node advertises its own [`NodeStats`] under [`KEY_STATS`] every
//! [`STATS_INTERVAL`] when they change; any node then answers for all of them, with the
//! failure detector's verdict on who is up. Counts are a few seconds old at most, which is
//! what a status page needs, and no request fans out to nodes that may be down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::health::Readiness;
use crate::membership::KEY_STATS;
use crate::node::Node;
use crate::NodeId;

/// How often a node advertises its stats (when they changed): a status page polled every
/// 2 s is then at most about 3 s behind, the failure detector's own pace.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// What a node reports of itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// Live keys of its shard it holds.
    pub keys: u64,
    /// For each peer of its shard, the writes it coordinated that the peer has not
    /// acknowledged.
    pub lag: BTreeMap<String, u64>,
    pub ready: bool,
    /// In an injected failure ([`crate::fault`]).
    pub failed: bool,
    /// Room on its disk (`storage::space`): `ok`, `low` (clients' writes refused, 507),
    /// `full` (nothing written) or `failed: <why>` (a write failed; nothing written until
    /// the node restarts itself); empty for a node in memory or one that does not say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub disk: String,
}

/// See [`NodeStats::disk`].
fn disk_state(node: &Node) -> String {
    let store = &node.local.store;
    let failure = store.disk_space().and_then(|space| space.failure());
    match (store.space(), failure) {
        (_, Some(why)) => format!("failed: {why}"),
        (Some((_, _, room)), None) => room.name().to_owned(),
        (None, None) => String::new(),
    }
}

impl NodeStats {
    pub fn of(node: &Node) -> Self {
        Self {
            keys: node.live_key_count() as u64,
            lag: node
                .replication_lag()
                .into_iter()
                .map(|(peer, lag)| (peer.to_string(), lag))
                .collect(),
            ready: Readiness::of(node).ready,
            failed: node.fault.is_failed(),
            disk: disk_state(node),
        }
    }
}

/// Advertises this node's stats by gossip whenever they change; runs for the node's life.
pub async fn publish_stats(node: Arc<Node>) {
    let mut last = String::new();
    loop {
        let stats = NodeStats::of(&node);
        let text = serde_json::to_string(&stats).unwrap_or_default();
        if text != last {
            node.membership.publish(KEY_STATS, text.clone()).await;
            last = text;
        }
        tokio::time::sleep(STATS_INTERVAL).await;
    }
}

/// One shard and its members, as the status lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStatus {
    #[serde(rename = "shard-id")]
    pub shard_id: String,
    pub members: Vec<String>,
}

/// One node, as the answering node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub address: String,
    pub up: bool,
    #[serde(rename = "shard-id")]
    pub shard_id: Option<String>,
    /// `None` until the node has advertised its stats; a down node's are its last.
    pub keys: Option<u64>,
    pub lag: Option<BTreeMap<String, u64>>,
    pub ready: Option<bool>,
    pub failed: Option<bool>,
    /// See [`NodeStats::disk`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
}

/// The answer of `GET /kvs/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: String,
    /// Its shard map's epoch.
    pub epoch: u64,
    pub shards: Vec<ShardStatus>,
    pub nodes: Vec<NodeStatus>,
}

impl ClusterStatus {
    /// Every node of the view, of the shard map and of gossip, with what it last advertised
    /// (this node's own stats fresh).
    pub async fn of(node: &Node) -> Self {
        let map = node.routing.map();
        let mut advertised: BTreeMap<NodeId, NodeStats> = node
            .membership
            .gossiped(KEY_STATS)
            .await
            .into_iter()
            .filter_map(|(n, text)| Some((n, serde_json::from_str(&text).ok()?)))
            .collect();
        advertised.insert(node.me.clone(), NodeStats::of(node));
        let mut everyone: BTreeSet<NodeId> = node.membership.view();
        everyone.extend(map.shards.values().flatten().cloned());
        everyone.extend(advertised.keys().cloned());
        let nodes = everyone
            .into_iter()
            .map(|n| {
                let stats = advertised.remove(&n);
                NodeStatus {
                    address: n.to_string(),
                    up: node.membership.is_up(&n),
                    shard_id: map.shard_of(&n).map(|s| s.to_string()),
                    keys: stats.as_ref().map(|s| s.keys),
                    ready: stats.as_ref().map(|s| s.ready),
                    failed: stats.as_ref().map(|s| s.failed),
                    disk: stats
                        .as_ref()
                        .map(|s| s.disk.clone())
                        .filter(|d| !d.is_empty()),
                    lag: stats.map(|s| s.lag),
                }
            })
            .collect();
        let shards = map
            .shards
            .iter()
            .map(|(id, members)| ShardStatus {
                shard_id: id.to_string(),
                members: members.iter().map(ToString::to_string).collect(),
            })
            .collect();
        Self {
            node: node.me.to_string(),
            epoch: map.epoch,
            shards,
            nodes,
        }
    }
}
