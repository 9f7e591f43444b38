//! Anti-entropy: pulling what this node lacks from the members of its shard.
//!
//! Pushes carry almost every write, but a node that was down, paused or cut off, a push that
//! failed, or a client whose metadata names writes not yet here all need a pull. Every node
//! gossips its applied clock; a node that sees a peer ahead of it pulls the difference. A
//! node that restarted or joined a shard pulls everything once before it coordinates writes.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::task::JoinSet;

use crate::causal::{CausalMetadata, VectorClock};
use crate::membership::{KEY_APPLIED, KEY_MAP};
use crate::node::{CopyPart, Node};
use crate::peer::messages::{SyncRequest, SyncResponse};
use crate::peer::Internode;
use crate::shard::{PeerMap, ShardMap};
use crate::NodeId;

const PULL_TIMEOUT: Duration = Duration::from_secs(60);
const PERIOD: Duration = Duration::from_millis(500);
/// A node that finds no shard peer to copy from after this long serves with what it has
/// (the first node of a new store has nobody to copy from).
const ALONE_GRACE: Duration = Duration::from_secs(2);

/// Pages of one full copy at most: a billion keys.
const MAX_COPY_PAGES: usize = 100_000;

/// Pulls from one peer and takes in the answer: a delta, or a full copy page by page.
pub async fn pull_from(node: &Arc<Node>, peer: NodeId, full: bool) -> bool {
    let request = node.local.pull_request(full);
    let take = |response, part| absorb(node.clone(), response, part);
    copy_from(node.peers.as_ref(), peer, request, take).await
}

/// Sends pull `request` to `peer` and hands each answer to `take`: one for a delta, each
/// page in order for a full copy. Stops, returning false, when a call fails, `take` refuses
/// an answer, or a page comes from another era (a reshard came between).
pub async fn copy_from<F, Fut>(
    peers: &dyn Internode,
    peer: NodeId,
    mut request: SyncRequest,
    mut take: F,
) -> bool
where
    F: FnMut(SyncResponse, CopyPart) -> Fut,
    Fut: Future<Output = bool>,
{
    // The era, clock and Lamport time read before the first page: what the whole copy
    // covers.
    let mut first: Option<(u64, VectorClock, u64)> = None;
    for page in 0..MAX_COPY_PAGES {
        let mut response = match peers.pull(peer.clone(), &request, PULL_TIMEOUT).await {
            Ok(response) => response,
            Err(e) => {
                log::debug!("pull from {peer} failed: {e}");
                return false;
            }
        };
        let (era, clock, lamport) = first
            .get_or_insert_with(|| (response.era, response.applied.clone(), response.lamport))
            .clone();
        if response.era != era {
            return false;
        }
        let part = match (&response.next, page) {
            (None, 0) => CopyPart::Whole,
            (None, _) => CopyPart::Last,
            (Some(_), _) => CopyPart::Page,
        };
        if part == CopyPart::Last {
            (response.applied, response.lamport) = (clock, lamport);
        }
        let next = response.next.take();
        if !take(response, part).await {
            return false;
        }
        match next {
            Some(after) => request.after = Some(after),
            None => {
                if page > 0 {
                    log::info!("full copy from {peer} in {} pages", page + 1);
                }
                return true;
            }
        }
    }
    log::warn!("full copy from {peer}: more than {MAX_COPY_PAGES} pages; giving up");
    false
}

/// Takes in one answer off the runtime: merging thousands of records is CPU.
async fn absorb(node: Arc<Node>, response: SyncResponse, part: CopyPart) -> bool {
    tokio::task::spawn_blocking(move || node.absorb_snapshot(response, part))
        .await
        .unwrap_or(false)
}

/// How often a node copying its shard checks that the members it copies from are still up.
const COPY_CHECK: Duration = Duration::from_secs(1);
/// A copy is given up when, with no member left to try, every source has been down at this
/// many checks in a row. Two, not one: a peer this node has not heard from yet (the first
/// second after a start) counts as down too, and a slow copy from it must not be dropped.
const COPY_GIVE_UP_CHECKS: u32 = 2;

/// Makes this node whole: a full copy of its shard from one member (live members first; when
/// every member a copy is coming from stops being up, as a paused or cut-off member soon
/// does, a copy from the next member starts beside it), then a delta pull from every other
/// member, which their logs of recent writes answer cheaply. A large copy that is merely slow
/// is never duplicated. `grace` bounds the wait for those deltas; they go
/// on in the background. Returns whether a full copy arrived.
pub async fn full_pull(node: &Arc<Node>, grace: Duration) -> bool {
    let _copying = node.copying.lock().await;
    if node.local.is_synced() {
        // Another copy finished while this one waited (a map change unmarks it).
        return true;
    }
    let map = node.routing.map();
    let Some(members) = node.routing.my_shard().and_then(|s| map.members(s)) else {
        return false;
    };
    let peers: Vec<NodeId> = node
        .forwarding_order(&map, members)
        .into_iter()
        .filter(|p| *p != node.me)
        .collect();
    let mut next = peers.iter().cloned();
    let mut copies = JoinSet::new();
    let spawn_copy = |copies: &mut JoinSet<(NodeId, bool)>, peer: NodeId| {
        let node = node.clone();
        copies.spawn(async move { (peer.clone(), pull_from(&node, peer, true).await) });
    };
    let Some(first) = next.next() else {
        return false;
    };
    spawn_copy(&mut copies, first.clone());
    let mut copying_from = vec![first];
    let mut source = None;
    let mut down_checks = 0;
    while source.is_none() {
        let hedge = match tokio::time::timeout(COPY_CHECK, copies.join_next()).await {
            Ok(Some(Ok((peer, true)))) => {
                source = Some(peer);
                false
            }
            Ok(None) => break,
            // A copy failed: try the next member.
            Ok(Some(_)) => true,
            // Still copying: hedge only if every source has stopped being up.
            Err(_) => {
                let all_down = copying_from.iter().all(|p| !node.membership.is_up(p));
                down_checks = if all_down { down_checks + 1 } else { 0 };
                all_down
            }
        };
        if hedge {
            match next.next() {
                Some(peer) => {
                    spawn_copy(&mut copies, peer.clone());
                    copying_from.push(peer);
                    down_checks = 0;
                }
                None if copies.is_empty() => break,
                // No member left to try and every source down: a paused source would hold
                // the copy, and this node's service, until PULL_TIMEOUT. The caller decides
                // instead (serve alone, or copy again next round once a member is back).
                None if down_checks >= COPY_GIVE_UP_CHECKS => break,
                None => {}
            }
        }
    }
    copies.abort_all();
    let Some(source) = source else {
        return false;
    };
    // Whole now: what follows are deltas, not more full copies.
    node.local.mark_synced();
    let mut deltas = JoinSet::new();
    for peer in peers.into_iter().filter(|p| *p != source) {
        let node = node.clone();
        deltas.spawn(async move { pull_from(&node, peer, false).await });
    }
    let _ =
        tokio::time::timeout(grace, async { while deltas.join_next().await.is_some() {} }).await;
    deltas.detach_all();
    true
}

/// One anti-entropy round. `eager` pulls from every live peer (a request is waiting for
/// something). Otherwise it pulls only from peers whose clock, as gossiped a round earlier,
/// this node still does not cover: writes in flight are the pushers' business, and a gap
/// that outlasts a round is not.
pub async fn catch_up_once(
    node: &Arc<Node>,
    eager: bool,
    started: Instant,
    previous: &mut HashMap<NodeId, CausalMetadata>,
) {
    if !node.local.is_synced() {
        if node.routing.my_shard().is_none() {
            return;
        }
        if node.routing.shard_peers().is_empty() || full_pull(node, Duration::ZERO).await {
            node.local.mark_synced();
        } else if started.elapsed() > ALONE_GRACE
            // Asked afresh: the copy may have taken seconds, and its source gone meanwhile.
            && node.routing.shard_peers().iter().all(|p| !node.membership.is_up(p))
        {
            log::warn!("no member of my shard is reachable; serving with the data I have");
            node.local.mark_synced();
        }
        return;
    }
    let mine = node.local.applied_summary();
    let live = node.membership.live_set();
    let up = node.membership.up_nodes();
    let peers: Vec<NodeId> = node
        .routing
        .shard_peers()
        .into_iter()
        .filter(|p| up.contains(p))
        .collect();
    let candidates: Vec<NodeId> = peers
        .iter()
        .filter(|p| {
            eager
                || previous
                    .get(*p)
                    .is_some_and(|theirs| is_ahead(theirs, &mine))
        })
        .cloned()
        .collect();
    if !eager {
        previous.clear();
        for peer in peers {
            let advertised = live.applied_of(&peer);
            if let Some(clock) = advertised {
                previous.insert(peer, clock);
            }
        }
    }
    join_all(candidates.iter().map(|p| pull_from(node, p.clone(), false))).await;
}

fn is_ahead(theirs: &CausalMetadata, mine: &CausalMetadata) -> bool {
    theirs.era == mine.era
        && theirs
            .clock
            .ahead_of(&mine.clock, |_| true)
            .next()
            .is_some()
}

/// Runs anti-entropy rounds periodically and whenever something asks for one.
pub async fn anti_entropy(node: Arc<Node>) {
    let started = Instant::now();
    let mut previous = HashMap::new();
    // A node that must copy its shard starts at once: it serves nothing until it has.
    if !node.local.is_synced() {
        catch_up_once(&node, true, started, &mut previous).await;
    }
    loop {
        let eager = tokio::select! {
            _ = node.pull_wanted.notified() => true,
            _ = tokio::time::sleep(PERIOD) => false,
        };
        catch_up_once(&node, eager, started, &mut previous).await;
    }
}

/// Advertises this node's map and applied clock by gossip when they change.
pub async fn publish_state(node: Arc<Node>) {
    let mut last_applied = String::new();
    let mut last_map = String::new();
    loop {
        let applied = node.local.applied_summary().encode();
        if applied != last_applied {
            node.membership.publish(KEY_APPLIED, applied.clone()).await;
            last_applied = applied;
        }
        let map = serde_json::to_string(&*node.routing.map()).unwrap_or_default();
        if map != last_map {
            node.membership.publish(KEY_MAP, map.clone()).await;
            last_map = map;
        }
        tokio::time::sleep(node.config.gossip_interval).await;
    }
}

/// Adopts any newer shard map a peer gossips, then hands off keys this node no longer owns;
/// a node started without `SHARD_COUNT` whose peers have no map either forms one with them
/// ([`ShardMap::formed`]). Maps are tiny, so every round re-reads them all: a map skipped
/// while a reshard was pending here is adopted once the pending reshard ends.
pub async fn follow_gossiped_maps(node: Arc<Node>) {
    let mut live = node.membership.subscribe();
    loop {
        let peers: Vec<(NodeId, ShardMap)> = live
            .borrow_and_update()
            .nodes
            .iter()
            .filter(|(n, _)| **n != node.me)
            .filter_map(|(n, state)| {
                Some((
                    n.clone(),
                    serde_json::from_str::<ShardMap>(state.map.as_ref()?).ok()?,
                ))
            })
            .collect();
        let current = node.routing.map();
        if let Some(theirs) = another_store(&current, &node.me, &peers) {
            join_the_majority_s_store(&node, &current, theirs);
        }
        let best = peers
            .iter()
            .map(|(_, m)| m)
            .filter(|m| m.supersedes(&current))
            .reduce(|a, b| if b.supersedes(a) { b } else { a });
        if let Some(map) = best {
            if !node.reshard.is_pending() && node.install_map(map.clone(), false) {
                tokio::spawn(super::handoff::hand_off_foreign_keys(node.clone()));
            }
        }
        form_map_if_none(&node, &peers);
        tokio::select! {
            changed = live.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Most other nodes of this node's map run another store. A node that holds no key takes
/// that store's map (it was started with a first map of its own while the others had moved
/// on: a node given `SHARD_COUNT` in a store its peers formed without, say). One that holds
/// keys stops: its data directory belongs to a store that no longer runs at these addresses,
/// and serving it (or handing its keys to their owners) would mix two stores.
fn join_the_majority_s_store(node: &Arc<Node>, current: &ShardMap, theirs: ShardMap) {
    if node.local.storage_stats().keys == 0 {
        log::warn!(
            "most nodes of this node's shard map run store {}, not {}: this node holds no \
             key, and joins it",
            theirs.store,
            current.store
        );
        if node.install_map_of_another_store(theirs) {
            tokio::spawn(super::handoff::hand_off_foreign_keys(node.clone()));
        }
        return;
    }
    log::error!(
        "this node holds a shard map of store {}, but most of that map's nodes gossip store \
         {}: its data directory belongs to another store; start it on an empty KVS_DATA_DIR \
         to join store {}",
        current.store,
        theirs.store,
        theirs.store
    );
    std::process::exit(2);
}

/// The newest map of another store, if most other nodes of `mine` gossip maps of it: the
/// sign of a node started on an old data directory at addresses a new store now uses. Its
/// peers each see only this one node gossip the other store, a minority, so the new store
/// goes on. A formed first map yields to any (see [`ShardMap::supersedes`]) and is no sign.
fn another_store(mine: &ShardMap, me: &NodeId, peers: &[(NodeId, ShardMap)]) -> Option<ShardMap> {
    if mine.store.is_empty() || mine.is_formed_first() {
        return None;
    }
    let others: BTreeSet<&NodeId> = mine.nodes().filter(|n| *n != me).collect();
    let foreign: Vec<&ShardMap> = peers
        .iter()
        .filter(|(n, _)| others.contains(n))
        .map(|(_, m)| m)
        .filter(|m| !(m.shards.is_empty() || m.same_store(mine) || m.is_formed_first()))
        .collect();
    let newest = foreign
        .into_iter()
        .reduce(|a, b| if b.supersedes(a) { b } else { a })?;
    let of_it = peers
        .iter()
        .filter(|(n, m)| others.contains(n) && m.store == newest.store)
        .count();
    (of_it * 2 > others.len()).then(|| newest.clone())
}

fn form_map_if_none(node: &Node, peers: &[(NodeId, ShardMap)]) {
    if node.config.shard_count.is_some() || !node.routing.map().shards.is_empty() {
        return;
    }
    let view = &node.config.view;
    let heard: Vec<PeerMap> = peers
        .iter()
        .filter(|(n, _)| view.contains(n))
        .map(|(_, m)| match m.shards.is_empty() {
            true => PeerMap::Waiting,
            false => PeerMap::WithShards,
        })
        .chain([PeerMap::Waiting])
        .collect();
    if let Some(map) = ShardMap::formed(view, &heard) {
        log::info!(
            "no node of VIEW has a shard map: forming one shard of all {} nodes",
            view.len()
        );
        node.install_map(map, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node stops when most other nodes of its map gossip another store's map; the nodes
    /// of that store, which hear only it gossip its own, go on.
    #[test]
    fn a_node_on_another_store_s_directory_is_found_by_a_majority() {
        let n = |i: u8| -> NodeId { format!("10.0.0.{i}:8080").parse().unwrap() };
        let old = ShardMap::initial(&[n(1), n(2), n(3)].into_iter().collect(), 1).unwrap();
        let new = ShardMap::initial(&(1..=4).map(n).collect(), 2).unwrap();
        let gossiping = |maps: &[(u8, &ShardMap)]| -> Vec<(NodeId, ShardMap)> {
            maps.iter().map(|(i, m)| (n(*i), (*m).clone())).collect()
        };
        let heard = gossiping(&[(2, &new), (3, &new), (4, &new)]);
        assert_eq!(another_store(&old, &n(1), &heard), Some(new.clone()));
        let heard = gossiping(&[(2, &new), (3, &old), (4, &new)]);
        assert_eq!(
            another_store(&old, &n(1), &heard),
            None,
            "one of two is no majority"
        );
        let heard = gossiping(&[(1, &old), (3, &new), (4, &new)]);
        assert_eq!(
            another_store(&new, &n(2), &heard),
            None,
            "the new store goes on"
        );
        let configured = ShardMap::initial(&(1..=4).map(n).collect(), 1).unwrap();
        let formed = ShardMap::formed(&(1..=4).map(n).collect(), &[PeerMap::Waiting; 3]).unwrap();
        let grown = formed.with_member(0, n(5)).unwrap();
        let heard = gossiping(&[(2, &grown), (3, &grown), (4, &configured)]);
        assert_eq!(
            another_store(&configured, &n(1), &heard),
            Some(grown),
            "a store its peers formed and grew"
        );
        let formed = ShardMap::formed(&(1..=3).map(n).collect(), &[PeerMap::Waiting; 2]).unwrap();
        let heard = gossiping(&[(2, &new), (3, &new)]);
        assert_eq!(
            another_store(&formed, &n(1), &heard),
            None,
            "formed maps yield"
        );
    }

    use crate::causal::Stamp;
    use crate::peer::memory::{Fault, Handler, MemoryNetwork};
    use crate::peer::messages::Rpc;
    use crate::storage::{Entry, Record};
    use bytes::Bytes;
    use std::sync::Mutex;

    fn id(i: u8) -> NodeId {
        format!("10.20.0.{i}:8080").parse().unwrap()
    }

    fn record(key: &str) -> Record {
        Record {
            key: key.into(),
            entry: Entry {
                value: Some(format!("v-{key}")),
                stamp: Stamp {
                    era: 1,
                    lamport: 1,
                    origin: id(2),
                    seq: 1,
                },
                metadata: String::new(),
            },
        }
    }

    /// A shard member answering full copies in pages of two records, its clock moving on
    /// between pages as writes keep arriving; from `new_era_at` on, its pages are of era 2.
    struct Source {
        keys: Vec<String>,
        pages_served: Mutex<u64>,
        new_era_at: Option<u64>,
    }

    impl Source {
        fn new(count: usize) -> Self {
            Self {
                keys: (0..count).map(|i| format!("k{i:02}")).collect(),
                pages_served: Mutex::new(0),
                new_era_at: None,
            }
        }
    }

    #[async_trait::async_trait]
    impl Handler for Source {
        async fn handle(&self, rpc: Rpc, body: Bytes) -> (u16, Bytes) {
            assert_eq!(rpc, Rpc::Sync);
            let request: SyncRequest = serde_json::from_slice(&body).unwrap();
            let start = match &request.after {
                Some(after) => self.keys.iter().position(|k| k == after).unwrap() + 1,
                None => 0,
            };
            let end = (start + 2).min(self.keys.len());
            let page = {
                let mut served = self.pages_served.lock().unwrap();
                *served += 1;
                *served
            };
            let response = SyncResponse {
                epoch: 1,
                era: if self.new_era_at.is_some_and(|at| page >= at) {
                    2
                } else {
                    1
                },
                applied: [(id(2), page * 10)].into_iter().collect(),
                lamport: page,
                records: self.keys[start..end].iter().map(|k| record(k)).collect(),
                next: (end < self.keys.len()).then(|| self.keys[end - 1].clone()),
            };
            (200, Bytes::from(serde_json::to_vec(&response).unwrap()))
        }
    }

    fn full_request() -> SyncRequest {
        SyncRequest {
            era: 1,
            applied: VectorClock::default(),
            full: true,
            after: None,
        }
    }

    type Taken = Arc<Mutex<Vec<(CopyPart, Vec<String>, u64)>>>;

    /// A sink that keeps what it is handed: each part, its keys and its clock's entry.
    fn sink(taken: &Taken) -> impl FnMut(SyncResponse, CopyPart) -> futures::future::Ready<bool> {
        let taken = taken.clone();
        move |response: SyncResponse, part| {
            let keys = response.records.iter().map(|r| r.key.clone()).collect();
            let clock = response.applied.get(&id(2));
            taken.lock().unwrap().push((part, keys, clock));
            futures::future::ready(true)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_copy_takes_every_page_in_order_and_ends_with_the_first_pages_clock() {
        let net = MemoryNetwork::new();
        net.attach(id(2), Arc::new(Source::new(5)));
        let taken = Taken::default();
        assert!(copy_from(&net, id(2), full_request(), sink(&taken)).await);
        let taken = taken.lock().unwrap();
        let parts: Vec<CopyPart> = taken.iter().map(|t| t.0).collect();
        assert_eq!(parts, [CopyPart::Page, CopyPart::Page, CopyPart::Last]);
        let keys: Vec<String> = taken.iter().flat_map(|t| t.1.clone()).collect();
        assert_eq!(keys, ["k00", "k01", "k02", "k03", "k04"]);
        // Every page holds its keys at least as new as the clock read before the first; a
        // later page's clock may cover writes to keys already copied, so it is not claimed.
        assert_eq!(taken[2].2, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_that_dies_mid_copy_ends_the_copy_at_once_and_unfinished() {
        let net = MemoryNetwork::new();
        net.attach(id(2), Arc::new(Source::new(9)));
        net.fail_after(id(2), 2, Fault::Down);
        let taken = Taken::default();
        let started = tokio::time::Instant::now();
        assert!(!copy_from(&net, id(2), full_request(), sink(&taken)).await);
        assert_eq!(started.elapsed(), Duration::ZERO);
        let parts: Vec<CopyPart> = taken.lock().unwrap().iter().map(|t| t.0).collect();
        assert_eq!(
            parts,
            [CopyPart::Page, CopyPart::Page],
            "no Last: the copy is unfinished"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_source_costs_one_pull_timeout_and_a_copy_from_another_member_completes() {
        let net = MemoryNetwork::new();
        net.attach(id(2), Arc::new(Source::new(9)));
        net.attach(id(3), Arc::new(Source::new(9)));
        net.fail_after(id(2), 1, Fault::Silent);
        let started = tokio::time::Instant::now();
        let taken = Taken::default();
        assert!(!copy_from(&net, id(2), full_request(), sink(&taken)).await);
        assert_eq!(started.elapsed(), PULL_TIMEOUT);
        let taken = Taken::default();
        assert!(copy_from(&net, id(3), full_request(), sink(&taken)).await);
        assert_eq!(taken.lock().unwrap().len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_page_of_another_era_ends_the_copy_unfinished() {
        let net = MemoryNetwork::new();
        let mut source = Source::new(9);
        source.new_era_at = Some(3);
        net.attach(id(2), Arc::new(source));
        let taken = Taken::default();
        assert!(!copy_from(&net, id(2), full_request(), sink(&taken)).await);
        assert_eq!(
            taken.lock().unwrap().len(),
            2,
            "the era-2 page is not taken in"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_page_the_replica_cannot_take_ends_the_copy() {
        let net = MemoryNetwork::new();
        net.attach(id(2), Arc::new(Source::new(9)));
        let mut pages = 0;
        let refuse_second = |_: SyncResponse, _: CopyPart| {
            pages += 1;
            futures::future::ready(pages < 2)
        };
        assert!(!copy_from(&net, id(2), full_request(), refuse_second).await);
        assert_eq!(net.delivered_to(Rpc::Sync).len(), 2);
    }
}
