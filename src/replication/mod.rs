//! Replication inside a shard: pushing own writes to peers (`push`) from a bounded outbox,
//! pulling what is missing (`pull`) from peers' logs of recent writes (`recent`), and the
//! messages on the wire (`protocol`).

pub mod outbox;
pub mod protocol;
pub mod pull;
pub mod purge;
pub mod push;
pub mod quorum;
pub mod recent;

use std::sync::Arc;

use crate::node::Node;

/// Starts the background tasks that keep this node's shard replicated.
pub fn spawn_background(node: &Arc<Node>) {
    tokio::spawn(push::manage_pushers(node.clone()));
    tokio::spawn(pull::anti_entropy(node.clone()));
    tokio::spawn(pull::publish_state(node.clone()));
    tokio::spawn(pull::follow_gossiped_maps(node.clone()));
}
