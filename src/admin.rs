//! Administrative changes of the shard map: adding a member to a shard, and resharding the
//! whole store, each coordinated by whichever node received the request.
//!
//! Add-member changes no key's shard: the new map (next epoch) goes to every node, and the
//! new member copies its shard from every live member before the request returns.
//!
//! Reshard moves keys, in three phases over every live node:
//! 1. *prepare*: each node freezes client writes (they wait, bounded) and flushes its pushes,
//!    so all replicas of each old shard hold the same data;
//! 2. *transfer*: each node sends the keys it is designated for to the members of their new
//!    shard that did not hold them (one sender per key, spread by key hash);
//! 3. *commit*: each node installs the new map (next era), drops keys it no longer owns and
//!    resumes writes, which re-route under the new map.
//!
//! A failure before commit aborts everywhere and nothing changes; a node that misses the
//! commit learns the map by gossip, hands off the keys it no longer owns and copies its new
//! shard. A frozen node that hears nothing more aborts by itself after [`FREEZE_LIMIT`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;

use crate::budget::Deadline;
use crate::error::{KvsError, Result};
use crate::node::{Node, PendingReshard};
use crate::replication::protocol::{
    Absorb, Done as OkReply, EpochMessage, KeyCount, MapMessage, Rpc,
};
use crate::replication::{pull, push};
use crate::shard::{key_hash, MapError, ShardId, ShardMap};
use crate::storage::Record;
use crate::NodeId;

/// A prepared node aborts a reshard it has heard nothing more of after this long.
pub const FREEZE_LIMIT: Duration = Duration::from_secs(60);
const PREPARE_TIMEOUT: Duration = Duration::from_secs(20);
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
const NOTICE_TIMEOUT: Duration = Duration::from_secs(5);
const TRANSFER_CHUNK: usize = 2000;
/// Records read from the engine per page of a reshard transfer, then sent before the next.
const TRANSFER_PAGE_RECORDS: usize = 20_000;
/// Attempts to deliver one chunk of transferred records.
const TRANSFER_ATTEMPTS: u32 = 4;
/// How long a new member waits for the copies of its shard beyond the first.
const CATCH_UP_GRACE: Duration = Duration::from_secs(3);

fn map_error(e: MapError) -> KvsError {
    match e {
        MapError::NotEnoughNodes => KvsError::NotEnoughNodes,
        MapError::UnknownShard => KvsError::UnknownShard,
        MapError::AlreadyMember(s) => {
            KvsError::BadRequest(format!("Node is already a member of shard {s}"))
        }
    }
}

async fn lock_admin(node: &Node) -> Result<tokio::sync::MutexGuard<'_, ()>> {
    tokio::time::timeout(Duration::from_secs(30), node.admin.lock())
        .await
        .map_err(|_| KvsError::Conflict("Another shard change is in progress".into()))
}

/// Sends `body` to every node in `to` and returns the nodes that failed.
async fn broadcast<T: serde::Serialize>(
    node: &Node,
    to: &[NodeId],
    rpc: Rpc,
    body: &T,
    timeout: Duration,
) -> Vec<NodeId> {
    let calls = to.iter().map(|&p| async move {
        (
            p,
            node.peers.call::<_, OkReply>(p, rpc, body, timeout).await,
        )
    });
    join_all(calls)
        .await
        .into_iter()
        .filter_map(|(p, r)| match r {
            Ok(_) => None,
            Err(e) => {
                log::warn!("{rpc} at {p} failed: {e}");
                Some(p)
            }
        })
        .collect()
}

/// `PUT /key-value-store-shard/add-member/<shard>`.
pub async fn add_member(node: &Arc<Node>, shard: ShardId, member: NodeId) -> Result<()> {
    let _admin = lock_admin(node).await?;
    if node.has_pending_reshard() {
        return Err(KvsError::Conflict("A reshard is in progress".into()));
    }
    let map = node.map();
    if map.members(shard).is_none() {
        return Err(KvsError::UnknownShard);
    }
    if !node.membership.is_up(&member) {
        return Err(KvsError::BadRequest(format!("Node {member} is not up")));
    }
    if map.shard_of(&member) != Some(shard) {
        let next = map.with_member(shard, member).map_err(map_error)?;
        node.install_map(next.clone(), false);
        let everyone: Vec<NodeId> = node
            .membership
            .up_nodes()
            .into_iter()
            .filter(|n| *n != node.me)
            .collect();
        let failed = broadcast(
            node,
            &everyone,
            Rpc::Map,
            &MapMessage { map: next },
            NOTICE_TIMEOUT,
        )
        .await;
        if failed.contains(&member) {
            return Err(KvsError::Unavailable);
        }
    }
    let epoch = node.map().epoch;
    let message = EpochMessage {
        epoch,
        participants: Vec::new(),
    };
    let copy = node
        .peers
        .call::<_, KeyCount>(member, Rpc::CatchUp, &message, TRANSFER_TIMEOUT);
    match copy.await {
        Ok(count) => {
            log::info!("{member} joined shard {shard} holding {} keys", count.count);
            Ok(())
        }
        Err(e) => {
            log::warn!("{member} could not copy shard {shard}: {e}");
            Err(KvsError::Unavailable)
        }
    }
}

/// On a new member: copy the shard from every live member, then report the key count.
pub async fn catch_up(node: &Arc<Node>, epoch: u64) -> Result<KeyCount> {
    if !node.await_epoch(epoch, Deadline::for_client()).await {
        return Err(KvsError::Unavailable);
    }
    let shard = node.my_shard().ok_or(KvsError::NotAMember)?;
    if !pull::full_pull(node, CATCH_UP_GRACE).await {
        return Err(KvsError::Unavailable);
    }
    node.mark_synced();
    Ok(KeyCount {
        shard,
        count: node.live_key_count(),
    })
}

/// `PUT /key-value-store-shard/reshard`.
pub async fn reshard(node: &Arc<Node>, count: u32) -> Result<()> {
    let _admin = lock_admin(node).await?;
    let map = node.map();
    let up = node.membership.up_nodes();
    let next = map.resharded(&up, count).map_err(map_error)?;
    if next.shards == map.shards {
        return Ok(());
    }
    let participants: Vec<NodeId> = up.into_iter().collect();
    log::info!(
        "resharding into {count} shards over {} nodes",
        participants.len()
    );
    let epoch = next.epoch;
    let abort = |node: &Arc<Node>, participants: Vec<NodeId>| {
        let node = node.clone();
        async move {
            let message = EpochMessage {
                epoch,
                participants: Vec::new(),
            };
            broadcast(&node, &participants, Rpc::Abort, &message, NOTICE_TIMEOUT).await;
        }
    };
    let prepare = MapMessage { map: next };
    if !broadcast(node, &participants, Rpc::Prepare, &prepare, PREPARE_TIMEOUT)
        .await
        .is_empty()
    {
        abort(node, participants).await;
        return Err(KvsError::Unavailable);
    }
    let transfer = EpochMessage {
        epoch,
        participants: participants.clone(),
    };
    if !broadcast(
        node,
        &participants,
        Rpc::Transfer,
        &transfer,
        TRANSFER_TIMEOUT,
    )
    .await
    .is_empty()
    {
        abort(node, participants).await;
        return Err(KvsError::Unavailable);
    }
    let commit = EpochMessage {
        epoch,
        participants: Vec::new(),
    };
    let missed = broadcast(node, &participants, Rpc::Commit, &commit, NOTICE_TIMEOUT).await;
    if !missed.is_empty() {
        log::warn!("{missed:?} missed the commit; they will learn the map by gossip");
    }
    Ok(())
}

/// Phase 1 on a participant: freeze writes, flush pushes.
pub async fn prepare(node: &Arc<Node>, map: ShardMap) -> Result<()> {
    if !map.supersedes(&node.map()) {
        return Err(KvsError::Conflict(
            "A newer shard map is already in place".into(),
        ));
    }
    if let Some(pending) = node.pending_map() {
        if pending == map {
            return Ok(());
        }
        return Err(KvsError::Conflict("Another reshard is in progress".into()));
    }
    let guard = node
        .freeze_writes(PREPARE_TIMEOUT)
        .await
        .ok_or(KvsError::Unavailable)?;
    node.set_pending(Some(PendingReshard {
        map,
        since: Instant::now(),
        _writes_frozen: guard,
    }));
    let up = node.membership.up_nodes();
    let peers: Vec<NodeId> = node
        .shard_peers()
        .into_iter()
        .filter(|p| up.contains(p))
        .collect();
    if !push::flush(node, &peers, FLUSH_TIMEOUT).await {
        node.set_pending(None);
        return Err(KvsError::Unavailable);
    }
    Ok(())
}

/// Phase 2 on a participant: send each key this node is designated for to the members of its
/// new shard that do not hold it yet.
pub async fn transfer(node: &Arc<Node>, epoch: u64, participants: &[NodeId]) -> Result<()> {
    let next = node
        .pending_map()
        .filter(|m| m.epoch == epoch)
        .ok_or_else(|| KvsError::Conflict("No such reshard is prepared here".into()))?;
    let current = node.map();
    let senders: BTreeSet<NodeId> = participants.iter().copied().collect();
    // Select while scanning: only the keys this node must send are copied out of the store,
    // a page of them at a time from an engine, so that a node never holds more than one
    // page of its shard in memory for a transfer (half a million records, about 150 MB,
    // when it gathered everything first).
    let mine = |key: &str| !transfer_targets(node.me, &current, &next, &senders, key).is_empty();
    let mut after: Option<String> = None;
    loop {
        let (records, next_page) =
            match node
                .store
                .page_after(after.as_deref(), TRANSFER_PAGE_RECORDS, mine)
            {
                Some(Ok(page)) => (page.records, page.next),
                Some(Err(e)) => crate::node::storage_failed(e),
                // In memory: no order to page in, the store is small enough to take whole.
                None => (
                    node.store
                        .records_where(|key, _| mine(key))
                        .unwrap_or_else(|e| crate::node::storage_failed(e)),
                    None,
                ),
            };
        let plan = plan_transfer(node.me, &current, &next, participants, records);
        let sends = plan.into_iter().map(|(target, records)| {
            let node = node.clone();
            async move { send_records(&node, target, &records).await }
        });
        if !join_all(sends).await.into_iter().all(|delivered| delivered) {
            return Err(KvsError::Unavailable);
        }
        match next_page {
            Some(key) => after = Some(key),
            None => return Ok(()),
        }
    }
}

/// Sends records to `target` in chunks, retrying each chunk a few times (a receiver busy
/// with other transfers may time out; merging a chunk twice is harmless). Returns whether
/// every chunk was delivered.
async fn send_records(node: &Node, target: NodeId, records: &[Record]) -> bool {
    for chunk in records.chunks(TRANSFER_CHUNK) {
        let body = Absorb {
            records: chunk.to_vec(),
        };
        let mut delivered = false;
        for attempt in 0..TRANSFER_ATTEMPTS {
            match node
                .peers
                .call::<_, OkReply>(target, Rpc::Absorb, &body, TRANSFER_TIMEOUT)
                .await
            {
                Ok(_) => {
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

/// The members of `key`'s next shard that this node must send it to when `current` becomes
/// `next`: none unless this node is the key's designated sender.
///
/// A key is sent by one member of its current shard (chosen by key hash among the
/// participants, so the work spreads), to each member of its next shard that is not a member
/// of its current shard.
pub fn transfer_targets(
    me: NodeId,
    current: &ShardMap,
    next: &ShardMap,
    participants: &BTreeSet<NodeId>,
    key: &str,
) -> Vec<NodeId> {
    let (Some(from), Some(to)) = (current.shard_for_key(key), next.shard_for_key(key)) else {
        return Vec::new();
    };
    let (Some(holders), Some(receivers)) = (current.members(from), next.members(to)) else {
        return Vec::new();
    };
    let senders: Vec<&NodeId> = holders
        .iter()
        .filter(|n| participants.contains(n))
        .collect();
    if senders.is_empty() || *senders[(key_hash(key) % senders.len() as u64) as usize] != me {
        return Vec::new();
    }
    receivers
        .iter()
        .filter(|n| !holders.contains(n))
        .copied()
        .collect()
}

/// Which records this node sends to whom when `current` becomes `next` (see
/// [`transfer_targets`]).
pub fn plan_transfer(
    me: NodeId,
    current: &ShardMap,
    next: &ShardMap,
    participants: &[NodeId],
    records: Vec<Record>,
) -> BTreeMap<NodeId, Vec<Record>> {
    let participants: BTreeSet<NodeId> = participants.iter().copied().collect();
    let mut plan: BTreeMap<NodeId, Vec<Record>> = BTreeMap::new();
    for record in records {
        for target in transfer_targets(me, current, next, &participants, &record.key) {
            plan.entry(target).or_default().push(record.clone());
        }
    }
    plan
}

/// Phase 3 on a participant: switch to the new map and resume writes.
pub fn commit(node: &Arc<Node>, epoch: u64) -> Result<()> {
    match node.take_pending() {
        Some(pending) if pending.map.epoch == epoch => {
            if node.install_map(pending.map, true) {
                node.drop_foreign_keys();
            }
            Ok(())
        }
        Some(other) => {
            node.set_pending(Some(other));
            Err(KvsError::Conflict(
                "Another reshard is prepared here".into(),
            ))
        }
        None if node.map().epoch >= epoch => Ok(()),
        None => Err(KvsError::Conflict(
            "No such reshard is prepared here".into(),
        )),
    }
}

/// Abandons a prepared reshard: writes resume under the current map.
///
/// Keys received for the abandoned map stay, unowned (never served or counted): if the
/// coordinator failed half-way through its commit, other nodes may already have switched and
/// dropped their copies, and this node will adopt that map by gossip and need them.
pub fn abort(node: &Arc<Node>, epoch: u64) {
    if let Some(pending) = node.take_pending() {
        if pending.map.epoch != epoch {
            node.set_pending(Some(pending));
        }
    }
}

/// Aborts a prepared reshard whose coordinator went quiet.
pub async fn expire_stale_freezes(node: Arc<Node>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(epoch) = node.pending_since(FREEZE_LIMIT) {
            log::warn!("reshard to epoch {epoch} heard nothing for {FREEZE_LIMIT:?}; aborting");
            abort(&node, epoch);
        }
    }
}

/// After learning a map by gossip: give the keys this node no longer owns to their owners,
/// then drop them. Keys stay here if no owner can take them (they are never served or
/// counted, since this node does not own them).
pub async fn hand_off_foreign_keys(node: Arc<Node>) {
    let records = node.foreign_records();
    if records.is_empty() {
        return;
    }
    let map = node.map();
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
            .map(|m| m.iter().copied().collect())
            .unwrap_or_default();
        let delivered = join_all(members.iter().map(|&m| {
            let node = node.clone();
            let records = &records;
            async move { send_records(&node, m, records).await }
        }))
        .await;
        all_delivered &= delivered.into_iter().any(|ok| ok);
    }
    if all_delivered && node.map().epoch == map.epoch {
        node.drop_foreign_keys();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::Stamp;
    use crate::storage::Entry;

    fn nodes(range: std::ops::RangeInclusive<u8>) -> BTreeSet<NodeId> {
        range
            .map(|i| format!("10.10.0.{i}:8080").parse().unwrap())
            .collect()
    }

    fn record(key: &str) -> Record {
        Record {
            key: key.into(),
            entry: Entry {
                value: Some("v".into()),
                stamp: Stamp {
                    era: 0,
                    lamport: 1,
                    origin: "10.10.0.2:8080".parse().unwrap(),
                    seq: 1,
                },
                metadata: String::new(),
            },
        }
    }

    /// Every key reaches every member of its new shard exactly once, from one sender, and
    /// nothing is sent to a node that already held it.
    #[test]
    fn a_transfer_plan_covers_every_new_holder_once() {
        let all = nodes(2..=8);
        let current = ShardMap::initial(&nodes(2..=7), 2)
            .unwrap()
            .with_member(1, "10.10.0.8:8080".parse().unwrap())
            .unwrap();
        let next = current.resharded(&all, 3).unwrap();
        let participants: Vec<NodeId> = all.iter().copied().collect();
        let keys: Vec<String> = (0..600).map(|i| format!("key{i}")).collect();
        let mut received: BTreeMap<(NodeId, String), usize> = BTreeMap::new();
        for &sender in &participants {
            let mine: Vec<Record> = keys
                .iter()
                .filter(|k| {
                    current
                        .members(current.shard_for_key(k).unwrap())
                        .unwrap()
                        .contains(&sender)
                })
                .map(|k| record(k))
                .collect();
            for (target, records) in plan_transfer(sender, &current, &next, &participants, mine) {
                for r in records {
                    *received.entry((target, r.key)).or_default() += 1;
                }
            }
        }
        for key in &keys {
            let old = current
                .members(current.shard_for_key(key).unwrap())
                .unwrap();
            for member in next.members(next.shard_for_key(key).unwrap()).unwrap() {
                let times = received.get(&(*member, key.clone())).copied().unwrap_or(0);
                let expected = usize::from(!old.contains(member));
                assert_eq!(times, expected, "{key} to {member}");
            }
        }
    }
}
