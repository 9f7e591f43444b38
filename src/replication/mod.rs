//! Replication inside a shard, the tasks that move writes between its members: pushing own
//! writes to peers (`push`) from the node's bounded outbox, and pulling what is missing
//! (`pull`) from peers' logs of recent writes. What they move and where it lands is the
//! node's ([`crate::node`]); the messages are [`crate::peer::messages`].

pub mod handoff;
pub mod pull;
pub mod push;

use std::sync::Arc;

use crate::node::Node;

/// Starts the background tasks that keep this node's shard replicated.
pub fn spawn_background(node: &Arc<Node>) {
    tokio::spawn(push::manage_pushers(node.clone()));
    tokio::spawn(pull::anti_entropy(node.clone()));
    tokio::spawn(pull::publish_state(node.clone()));
    tokio::spawn(pull::follow_gossiped_maps(node.clone()));
}
