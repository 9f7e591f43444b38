//! Records handed over outside the causal streams: a reshard's transfers, and the keys a
//! node no longer owns after it learnt a new map, sent to their owners. Merging a record
//! twice is harmless (the newer version wins), so every call may be retried.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use crate::node::Node;
use crate::peer::messages::Absorb;
use crate::peer::Internode;
use crate::shard::ShardId;
use crate::storage::Record;
use crate::NodeId;

/// Records per call: about 600 KB of JSON with three-node tokens.
pub const RECORDS_PER_CALL: usize = 2000;
/// Attempts to deliver one call's records, pausing 250 ms, 500 ms, 1 s and 2 s after each failure.
const ATTEMPTS: u32 = 4;
/// A receiver busy merging other transfers may take long over one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Sends records to `target` in chunks, retrying each chunk a few times (a receiver busy
/// with other transfers may time out; merging a chunk twice is harmless). Returns whether
/// every chunk was delivered.
pub async fn send_records(peers: &dyn Internode, target: NodeId, records: &[Record]) -> bool {
    for chunk in records.chunks(RECORDS_PER_CALL) {
        let body = Absorb {
            records: chunk.to_vec(),
        };
        let mut delivered = false;
        for attempt in 0..ATTEMPTS {
            match peers.absorb(target.clone(), &body, CALL_TIMEOUT).await {
                Ok(()) => {
                    delivered = true;
                    break;
                }
                Err(e) => {
                    log::warn!(
                        "sending records to {target} failed (attempt {}): {e}",
                        attempt + 1
                    );
                    tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                }
            }
        }
        if !delivered {
            return false;
        }
    }
    true
}

/// After learning a map by gossip: give the keys this node no longer owns to their owners,
/// then drop them. Keys stay here if no owner can take them (they are never served or
/// counted, since this node does not own them).
pub async fn hand_off_foreign_keys(node: Arc<Node>) {
    let records = node.foreign_records();
    if records.is_empty() {
        return;
    }
    let map = node.routing.map();
    let mut by_shard: BTreeMap<ShardId, Vec<Record>> = BTreeMap::new();
    for record in records {
        if let Some(shard) = map.shard_for_key(&record.key) {
            by_shard.entry(shard).or_default().push(record);
        }
    }
    let mut all_delivered = true;
    for (shard, records) in by_shard {
        let members: Vec<NodeId> = map
            .members(shard)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default();
        let peers = node.peers.as_ref();
        let records = &records;
        let delivered = join_all(
            members
                .iter()
                .map(|m| send_records(peers, m.clone(), records)),
        )
        .await;
        all_delivered &= delivered.into_iter().any(|ok| ok);
    }
    if all_delivered && node.routing.map().epoch == map.epoch {
        node.drop_foreign_keys();
    }
}
