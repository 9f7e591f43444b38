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
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;

use crate::budget::Deadline;
use crate::error::{KvsError, Result};
use crate::metrics::AdminChange;
use crate::node::{Node, PendingReshard};
use crate::peer::messages::KeyCount;
use crate::peer::{Internode, PeerError};
use crate::replication::{handoff, pull, push};
use crate::shard::{key_hash, MapError, ShardId, ShardMap};
use crate::storage::Record;
use crate::NodeId;

/// A prepared node aborts a reshard it has heard nothing more of after this long.
pub const FREEZE_LIMIT: Duration = Duration::from_secs(60);
const PREPARE_TIMEOUT: Duration = Duration::from_secs(20);
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
const NOTICE_TIMEOUT: Duration = Duration::from_secs(5);
/// Records read from the engine per page of a reshard transfer, then sent before the next.
const TRANSFER_PAGE_RECORDS: usize = 20_000;
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

/// Makes `call` to every node in `to` at once and returns the nodes it failed at.
async fn each<F, Fut>(to: &[NodeId], what: &str, call: F) -> Vec<NodeId>
where
    F: Fn(NodeId) -> Fut,
    Fut: Future<Output = std::result::Result<(), PeerError>>,
{
    let calls = to.iter().cloned().map(|p| {
        let call = call(p.clone());
        async move { (p, call.await) }
    });
    join_all(calls)
        .await
        .into_iter()
        .filter_map(|(p, r)| match r {
            Ok(()) => None,
            Err(e) => {
                log::warn!("{what} at {p} failed: {e}");
                Some(p)
            }
        })
        .collect()
}

/// `PUT /key-value-store-shard/add-member/<shard>`.
pub async fn add_member(node: &Arc<Node>, shard: ShardId, member: NodeId) -> Result<()> {
    let _admin = node.reshard.coordinate().await?;
    if node.reshard.is_pending() {
        return Err(KvsError::Conflict("A reshard is in progress".into()));
    }
    let map = node.routing.map();
    if map.members(shard).is_none() {
        return Err(KvsError::UnknownShard);
    }
    if !node.membership.is_up(&member) {
        return Err(KvsError::BadRequest(format!("Node {member} is not up")));
    }
    let next = match map.shard_of(&member) {
        Some(s) if s == shard => None,
        _ => {
            let next = map.with_member(shard, member.clone()).map_err(map_error)?;
            node.install_map(next.clone(), false);
            Some(next)
        }
    };
    let everyone: Vec<NodeId> = node
        .membership
        .up_nodes()
        .into_iter()
        .filter(|n| *n != node.me)
        .collect();
    let epoch = node.routing.map().epoch;
    let count = drive_add_member(
        node.peers.as_ref(),
        &everyone,
        member.clone(),
        next.as_ref(),
        epoch,
    );
    let count = crate::metrics::timed(AdminChange::AddMember, count).await?;
    log::info!("{member} joined shard {shard} holding {} keys", count.count);
    Ok(())
}

/// The coordinator's messages of an add-member, once it has installed `next` (none when the
/// member is in the shard already, and only its copy is retried): the map to every other
/// live node, then the new member's copy of its shard, whose key count it answers.
pub async fn drive_add_member(
    peers: &dyn Internode,
    everyone: &[NodeId],
    member: NodeId,
    next: Option<&ShardMap>,
    epoch: u64,
) -> Result<KeyCount> {
    if let Some(next) = next {
        let failed = each(everyone, "map", |p| {
            peers.install_map(p, next, NOTICE_TIMEOUT)
        })
        .await;
        if failed.contains(&member) {
            return Err(KvsError::Unavailable);
        }
    }
    peers
        .catch_up(member.clone(), epoch, TRANSFER_TIMEOUT)
        .await
        .map_err(|e| {
            log::warn!("{member} could not copy its shard: {e}");
            KvsError::Unavailable
        })
}

/// On a new member: copy the shard from every live member, then report the key count.
pub async fn catch_up(node: &Arc<Node>, epoch: u64) -> Result<KeyCount> {
    if !node
        .routing
        .await_epoch(epoch, Deadline::for_client())
        .await
    {
        return Err(KvsError::Unavailable);
    }
    let shard = node.routing.my_shard().ok_or(KvsError::NotAMember)?;
    if !pull::full_pull(node, CATCH_UP_GRACE).await {
        return Err(KvsError::Unavailable);
    }
    node.local.mark_synced();
    Ok(KeyCount {
        shard,
        count: node.live_key_count(),
    })
}

/// `PUT /key-value-store-shard/reshard`.
pub async fn reshard(node: &Arc<Node>, count: u32) -> Result<()> {
    let _admin = node.reshard.coordinate().await?;
    let map = node.routing.map();
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
    let resharded = drive_reshard(node.peers.as_ref(), &participants, &next);
    crate::metrics::timed(AdminChange::Reshard, resharded).await
}

/// The coordinator's three phases of a reshard to `next` over `participants`: prepare
/// everywhere, then transfer everywhere, then commit everywhere. A failed prepare or
/// transfer aborts everywhere and answers 503; a missed commit does not fail the reshard
/// (the map is decided once every participant has transferred, and a node that missed the
/// commit learns it by gossip).
pub async fn drive_reshard(
    peers: &dyn Internode,
    participants: &[NodeId],
    next: &ShardMap,
) -> Result<()> {
    let epoch = next.epoch;
    let abort = || {
        each(participants, "abort", |p| {
            peers.abort(p, epoch, NOTICE_TIMEOUT)
        })
    };
    let prepare = |p| peers.prepare(p, next, PREPARE_TIMEOUT);
    if !each(participants, "prepare", prepare).await.is_empty() {
        abort().await;
        return Err(KvsError::Unavailable);
    }
    let transfer = |p| peers.transfer(p, epoch, participants, TRANSFER_TIMEOUT);
    if !each(participants, "transfer", transfer).await.is_empty() {
        abort().await;
        return Err(KvsError::Unavailable);
    }
    let commit = |p| peers.commit(p, epoch, NOTICE_TIMEOUT);
    let missed = each(participants, "commit", commit).await;
    if !missed.is_empty() {
        log::warn!("{missed:?} missed the commit; they will learn the map by gossip");
    }
    Ok(())
}

/// Phase 1 on a participant: freeze writes, flush pushes.
pub async fn prepare(node: &Arc<Node>, map: ShardMap) -> Result<()> {
    if !map.supersedes(&node.routing.map()) {
        return Err(KvsError::Conflict(
            "A newer shard map is already in place".into(),
        ));
    }
    if let Some(pending) = node.reshard.pending_map() {
        if pending == map {
            return Ok(());
        }
        return Err(KvsError::Conflict("Another reshard is in progress".into()));
    }
    let guard = node
        .reshard
        .freeze_writes(PREPARE_TIMEOUT)
        .await
        .ok_or(KvsError::Unavailable)?;
    node.reshard.set_pending(Some(PendingReshard {
        map,
        since: Instant::now(),
        _writes_frozen: guard,
    }));
    let up = node.membership.up_nodes();
    let peers: Vec<NodeId> = node
        .routing
        .shard_peers()
        .into_iter()
        .filter(|p| up.contains(p))
        .collect();
    if !push::flush(node, &peers, FLUSH_TIMEOUT).await {
        node.reshard.set_pending(None);
        return Err(KvsError::Unavailable);
    }
    Ok(())
}

/// Phase 2 on a participant: send each key this node is designated for to the members of its
/// new shard that do not hold it yet.
pub async fn transfer(node: &Arc<Node>, epoch: u64, participants: &[NodeId]) -> Result<()> {
    let next = node
        .reshard
        .pending_map()
        .filter(|m| m.epoch == epoch)
        .ok_or_else(|| KvsError::Conflict("No such reshard is prepared here".into()))?;
    let current = node.routing.map();
    let senders: BTreeSet<NodeId> = participants.iter().cloned().collect();
    // Select while scanning: only the keys this node must send are copied out of the store,
    // a page of them at a time from an engine, so that a node never holds more than one
    // page of its shard in memory for a transfer (half a million records, about 150 MB,
    // when it gathered everything first).
    let mine =
        |key: &str| !transfer_targets(node.me.clone(), &current, &next, &senders, key).is_empty();
    let mut after: Option<String> = None;
    loop {
        let (records, next_page) =
            match node
                .local
                .store
                .page_after(after.as_deref(), TRANSFER_PAGE_RECORDS, mine)
            {
                Some(Ok(page)) => (page.records, page.next),
                Some(Err(e)) => crate::node::storage_failed(e),
                // In memory: no order to page in, the store is small enough to take whole.
                None => (
                    node.local
                        .store
                        .records_where(|key, _| mine(key))
                        .unwrap_or_else(|e| crate::node::storage_failed(e)),
                    None,
                ),
            };
        let plan = plan_transfer(node.me.clone(), &current, &next, participants, records);
        let peers = node.peers.as_ref();
        let sends = plan.into_iter().map(|(target, records)| async move {
            handoff::send_records(peers, target, &records).await
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
        .cloned()
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
    let participants: BTreeSet<NodeId> = participants.iter().cloned().collect();
    let mut plan: BTreeMap<NodeId, Vec<Record>> = BTreeMap::new();
    for record in records {
        for target in transfer_targets(me.clone(), current, next, &participants, &record.key) {
            plan.entry(target).or_default().push(record.clone());
        }
    }
    plan
}

/// Phase 3 on a participant: switch to the new map and resume writes.
pub fn commit(node: &Arc<Node>, epoch: u64) -> Result<()> {
    match node.reshard.take_pending() {
        Some(pending) if pending.map.epoch == epoch => {
            if node.install_map(pending.map, true) {
                node.drop_foreign_keys();
            }
            Ok(())
        }
        Some(other) => {
            node.reshard.set_pending(Some(other));
            Err(KvsError::Conflict(
                "Another reshard is prepared here".into(),
            ))
        }
        None if node.routing.map().epoch >= epoch => Ok(()),
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
    if let Some(pending) = node.reshard.take_pending() {
        if pending.map.epoch != epoch {
            node.reshard.set_pending(Some(pending));
        }
    }
}

/// Aborts a prepared reshard whose coordinator went quiet.
pub async fn expire_stale_freezes(node: Arc<Node>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(epoch) = node.reshard.pending_since(FREEZE_LIMIT) {
            log::warn!("reshard to epoch {epoch} heard nothing for {FREEZE_LIMIT:?}; aborting");
            abort(&node, epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::Stamp;
    use crate::peer::memory::{Fault, Handler, MemoryNetwork};
    use crate::peer::messages::{Absorb, EpochMessage, MapMessage, Rpc};
    use crate::storage::Entry;
    use bytes::Bytes;
    use std::sync::Mutex;

    fn nodes(range: std::ops::RangeInclusive<u8>) -> BTreeSet<NodeId> {
        range
            .map(|i| format!("10.10.0.{i}:8080").parse().unwrap())
            .collect()
    }

    fn id(i: u8) -> NodeId {
        format!("10.10.0.{i}:8080").parse().unwrap()
    }

    /// What a scripted participant went through.
    #[derive(Debug, Default, Clone, PartialEq, Eq)]
    struct Phases {
        /// The epoch prepared and not yet committed or aborted (writes frozen).
        frozen: Option<u64>,
        transferred: bool,
        committed: Option<u64>,
        aborted: bool,
        absorbed: usize,
        maps: Vec<u64>,
        catch_ups: usize,
    }

    /// A node's side of the coordinators' messages, as the participant functions above keep
    /// it, reduced to what a coordinator can observe; `refuse` answers 503 to one call.
    #[derive(Default)]
    struct Participant {
        phases: Mutex<Phases>,
        refuse: Option<Rpc>,
        /// Refuse this many calls of any kind before serving (a busy receiver).
        busy_calls: Mutex<usize>,
    }

    impl Participant {
        fn refusing(rpc: Rpc) -> Self {
            Self {
                refuse: Some(rpc),
                ..Self::default()
            }
        }

        fn phases(&self) -> Phases {
            self.phases.lock().unwrap().clone()
        }
    }

    #[async_trait::async_trait]
    impl Handler for Participant {
        async fn handle(&self, rpc: Rpc, body: Bytes) -> (u16, Bytes) {
            let ok = (200, Bytes::from_static(br#"{"ok":true}"#));
            let refused = (503, Bytes::from_static(br#"{"error":"Unavailable"}"#));
            {
                let mut busy = self.busy_calls.lock().unwrap();
                if *busy > 0 {
                    *busy -= 1;
                    return refused;
                }
            }
            if self.refuse == Some(rpc) {
                return refused;
            }
            let mut phases = self.phases.lock().unwrap();
            let epoch = || serde_json::from_slice::<EpochMessage>(&body).unwrap().epoch;
            match rpc {
                Rpc::Prepare => {
                    let message: MapMessage = serde_json::from_slice(&body).unwrap();
                    phases.frozen = Some(message.map.epoch);
                }
                Rpc::Transfer if phases.frozen == Some(epoch()) => phases.transferred = true,
                Rpc::Commit if phases.frozen == Some(epoch()) => {
                    phases.frozen = None;
                    phases.committed = Some(epoch());
                }
                Rpc::Abort => {
                    phases.frozen = None;
                    phases.aborted = true;
                }
                Rpc::Map => {
                    let message: MapMessage = serde_json::from_slice(&body).unwrap();
                    phases.maps.push(message.map.epoch);
                }
                Rpc::CatchUp => {
                    phases.catch_ups += 1;
                    return (200, Bytes::from_static(br#"{"shard":1,"count":42}"#));
                }
                Rpc::Absorb => {
                    let absorb: Absorb = serde_json::from_slice(&body).unwrap();
                    phases.absorbed += absorb.records.len();
                }
                _ => return (409, Bytes::from_static(br#"{"error":"not prepared"}"#)),
            }
            ok
        }
    }

    /// A network of scripted participants 2..=`last`; node `refusing` refuses `rpc`.
    fn network(last: u8, refusing: Option<(u8, Rpc)>) -> (MemoryNetwork, Vec<Arc<Participant>>) {
        let net = MemoryNetwork::new();
        let mut participants = Vec::new();
        for i in 2..=last {
            let participant = match refusing {
                Some((n, rpc)) if n == i => Participant::refusing(rpc),
                _ => Participant::default(),
            };
            let participant = Arc::new(participant);
            net.attach(id(i), participant.clone());
            participants.push(participant);
        }
        (net, participants)
    }

    fn resharded(last: u8) -> (Vec<NodeId>, ShardMap) {
        let all = nodes(2..=last);
        let next = ShardMap::initial(&all, 2)
            .unwrap()
            .resharded(&all, 3)
            .unwrap();
        (all.into_iter().collect(), next)
    }

    #[tokio::test(start_paused = true)]
    async fn a_reshard_prepares_transfers_and_commits_everywhere_in_that_order() {
        let (net, participants) = network(7, None);
        let (everyone, next) = resharded(7);
        drive_reshard(&net, &everyone, &next).await.unwrap();
        for p in &participants {
            let phases = p.phases();
            assert_eq!(phases.committed, Some(next.epoch));
            assert!(phases.transferred && phases.frozen.is_none() && !phases.aborted);
        }
        let order: Vec<Rpc> = net.delivered().into_iter().map(|(_, rpc)| rpc).collect();
        let phase = |rpc| order.iter().position(|r| *r == rpc).unwrap();
        let last = |rpc| order.iter().rposition(|r| *r == rpc).unwrap();
        assert!(last(Rpc::Prepare) < phase(Rpc::Transfer));
        assert!(last(Rpc::Transfer) < phase(Rpc::Commit));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_prepare_aborts_everywhere_and_nothing_moves() {
        let (net, participants) = network(7, Some((4, Rpc::Prepare)));
        let (everyone, next) = resharded(7);
        let result = drive_reshard(&net, &everyone, &next).await;
        assert!(matches!(result, Err(KvsError::Unavailable)), "{result:?}");
        assert!(net.delivered_to(Rpc::Transfer).is_empty());
        assert!(net.delivered_to(Rpc::Commit).is_empty());
        assert_eq!(net.delivered_to(Rpc::Abort).len(), everyone.len());
        for p in &participants {
            let phases = p.phases();
            assert!(phases.aborted && phases.frozen.is_none() && phases.committed.is_none());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_participant_that_dies_after_preparing_fails_the_transfer_and_aborts_the_rest() {
        let (net, participants) = network(7, None);
        net.fail_after(id(5), 1, Fault::Down);
        let (everyone, next) = resharded(7);
        let result = drive_reshard(&net, &everyone, &next).await;
        assert!(matches!(result, Err(KvsError::Unavailable)), "{result:?}");
        assert!(net.delivered_to(Rpc::Commit).is_empty());
        for (i, p) in participants.iter().enumerate() {
            let phases = p.phases();
            assert_eq!(phases.committed, None);
            // The dead one stays frozen until FREEZE_LIMIT; everyone else resumes now.
            assert_eq!(
                phases.frozen.is_some(),
                i == 3,
                "participant {i}: {phases:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_participant_costs_the_prepare_timeout_then_aborts() {
        let (net, participants) = network(7, None);
        net.set_fault(id(3), Some(Fault::Silent));
        let (everyone, next) = resharded(7);
        let started = Instant::now();
        let result = drive_reshard(&net, &everyone, &next).await;
        assert!(result.is_err());
        // The aborts go out at once; the paused one's abort waits out its own timeout.
        assert_eq!(started.elapsed(), PREPARE_TIMEOUT + NOTICE_TIMEOUT);
        assert!(participants.iter().all(|p| p.phases().frozen.is_none()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_commit_answer_still_completes_the_reshard() {
        let (net, participants) = network(7, None);
        // Serves prepare and transfer, then its commit is applied but the answer is lost.
        net.fail_after(id(6), 2, Fault::AnswerLost);
        let (everyone, next) = resharded(7);
        drive_reshard(&net, &everyone, &next).await.unwrap();
        assert!(participants
            .iter()
            .all(|p| p.phases().committed == Some(next.epoch)));
        assert!(net.delivered_to(Rpc::Abort).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_missed_commit_leaves_that_node_frozen_for_gossip_or_its_limit() {
        let (net, participants) = network(7, None);
        net.fail_after(id(3), 2, Fault::Down);
        let (everyone, next) = resharded(7);
        drive_reshard(&net, &everyone, &next).await.unwrap();
        let phases: Vec<Phases> = participants.iter().map(|p| p.phases()).collect();
        assert_eq!(phases[1].frozen, Some(next.epoch), "{phases:?}");
        assert!(phases
            .iter()
            .enumerate()
            .all(|(i, p)| i == 1 || p.committed == Some(next.epoch)));
    }

    fn added(member: NodeId) -> ShardMap {
        ShardMap::initial(&nodes(2..=5), 2)
            .unwrap()
            .with_member(1, member)
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn add_member_tells_everyone_then_has_the_member_copy() {
        let (net, participants) = network(6, None);
        let next = added(id(6));
        let everyone: Vec<NodeId> = nodes(3..=6).into_iter().collect();
        let count = drive_add_member(&net, &everyone, id(6), Some(&next), next.epoch)
            .await
            .unwrap();
        assert_eq!(count.count, 42);
        for p in &participants[1..] {
            assert_eq!(p.phases().maps, vec![next.epoch]);
        }
        assert_eq!(participants[4].phases().catch_ups, 1);
        let order = net.delivered();
        assert_eq!(
            order.last(),
            Some(&(id(6), Rpc::CatchUp)),
            "the copy comes last"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn add_member_fails_when_the_member_misses_the_map_but_not_when_another_does() {
        let next = added(id(6));
        let everyone: Vec<NodeId> = nodes(3..=6).into_iter().collect();

        let (net, _) = network(6, None);
        net.set_fault(id(6), Some(Fault::Down));
        let result = drive_add_member(&net, &everyone, id(6), Some(&next), next.epoch).await;
        assert!(matches!(result, Err(KvsError::Unavailable)));
        assert!(net.delivered_to(Rpc::CatchUp).is_empty());

        let (net, _) = network(6, None);
        net.set_fault(id(4), Some(Fault::Down));
        let result = drive_add_member(&net, &everyone, id(6), Some(&next), next.epoch).await;
        assert!(
            result.is_ok(),
            "a node that missed the map learns it by gossip"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn add_member_answers_503_when_the_copy_fails_and_retries_only_the_copy() {
        let next = added(id(6));
        let everyone: Vec<NodeId> = nodes(3..=6).into_iter().collect();
        let (net, participants) = network(6, Some((6, Rpc::CatchUp)));
        let result = drive_add_member(&net, &everyone, id(6), Some(&next), next.epoch).await;
        assert!(matches!(result, Err(KvsError::Unavailable)));

        // Asked again once the member is in the map: no second round of maps.
        let (net, _) = network(6, None);
        drive_add_member(&net, &everyone, id(6), None, next.epoch)
            .await
            .unwrap();
        assert_eq!(net.delivered(), vec![(id(6), Rpc::CatchUp)]);
        assert_eq!(participants[4].phases().catch_ups, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn transferred_records_reach_a_busy_receiver_after_retries_and_not_a_dead_one() {
        let (net, participants) = network(3, None);
        *participants[0].busy_calls.lock().unwrap() = 2;
        let records: Vec<Record> = (0..(handoff::RECORDS_PER_CALL + 5))
            .map(|i| record(&format!("k{i}")))
            .collect();
        assert!(handoff::send_records(&net, id(2), &records).await);
        assert_eq!(participants[0].phases().absorbed, records.len());

        net.set_fault(id(3), Some(Fault::Down));
        let started = Instant::now();
        assert!(!handoff::send_records(&net, id(3), &records).await);
        // 250 + 500 + 1000 + 2000 ms of backoff, then given up.
        assert_eq!(started.elapsed(), Duration::from_millis(3750));
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
        let participants: Vec<NodeId> = all.iter().cloned().collect();
        let keys: Vec<String> = (0..600).map(|i| format!("key{i}")).collect();
        let mut received: BTreeMap<(NodeId, String), usize> = BTreeMap::new();
        for sender in participants.iter().cloned() {
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
                    *received.entry((target.clone(), r.key)).or_default() += 1;
                }
            }
        }
        for key in &keys {
            let old = current
                .members(current.shard_for_key(key).unwrap())
                .unwrap();
            for member in next.members(next.shard_for_key(key).unwrap()).unwrap() {
                let times = received
                    .get(&(member.clone(), key.clone()))
                    .copied()
                    .unwrap_or(0);
                let expected = usize::from(!old.contains(member));
                assert_eq!(times, expected, "{key} to {member}");
            }
        }
    }
}
