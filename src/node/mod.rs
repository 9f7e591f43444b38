//! A node: its parts, and the operations that take more than one of them.
//!
//! - [`local::LocalReplica`]: the store, the causal replica state, the log of recent writes
//!   and the outbox, behind one lock order;
//! - [`routing::Routing`]: the shard map and where each key's requests go;
//! - [`reshard::ReshardState`]: the write gate, a prepared reshard, the coordinator's lock;
//! - [`crate::quorum::Acks`]: how far each peer holds this node's writes;
//! - [`crate::membership::Membership`] (who is up) and [`crate::peer::Internode`] (the
//!   messages to other nodes).
//!
//! `Node` itself serves the requests of its own shard (waiting for their dependencies,
//! their quorum, a map change), and applies what peers send it. The background work that
//! keeps replicas together lives in `replication`, the administrative changes in `admin`,
//! and the HTTP surface in `http`.

pub mod held;
pub mod local;
pub mod outbox;
pub mod purge;
pub mod recent;
pub mod reshard;
pub mod routing;
pub mod stats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::budget::Deadline;
use crate::causal::{CausalMetadata, Readiness};
use crate::config::Config;
use crate::error::{KvsError, Result};
use crate::fault::FaultSwitch;
use crate::membership::Membership;
use crate::node::purge::Barrier;
use crate::peer::messages::{
    ListPage, ListRequest, ReplicateAck, ReplicateBatch, SyncRequest, SyncResponse,
};
use crate::peer::{Internode, RelayPeers};
use crate::quorum::{Acks, WriteQuorum};
use crate::recovery::Recovered;
use crate::shard::{ShardId, ShardMap};
use crate::storage::{Entry, Record, StorageError};
use crate::NodeId;

pub use local::{CopyPart, LocalReplica, MapRule};
pub use reshard::{PendingReshard, ReshardState};
pub use routing::{Route, Routing};

/// How long a write waits while a reshard has writes frozen.
pub const FREEZE_WAIT: Duration = Duration::from_secs(30);
/// How long a quorum write waits for the other members to hold it.
pub const QUORUM_WAIT: Duration = Duration::from_secs(5);
/// How long after its start a node waits for its shard peers to say how far they hold its
/// writes before it coordinates writes without hearing from them all.
const COUNTER_CHECK_WAIT: Duration = Duration::from_secs(3);
/// How long a push whose next write waits on a third node's write is held by its receiver
/// (see [`Node::receive_push`]); the pusher's own timeout is 5 s.
const BLOCKED_HOLD: Duration = Duration::from_millis(20);

/// The result of a write applied here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    pub created: bool,
    /// The write's era and sequence number at this node.
    pub dot: (u64, u64),
    pub metadata: String,
    pub shard: ShardId,
}

pub struct Node {
    pub config: Config,
    pub me: NodeId,
    pub local: LocalReplica,
    pub routing: Routing,
    pub reshard: ReshardState,
    /// For each peer, how far it has acknowledged this node's writes.
    pub acks: Acks,
    pub membership: Membership,
    /// The messages this node sends other nodes.
    pub peers: Arc<dyn Internode>,
    /// Carries forwarded client requests, and the calls of `peers`, to other nodes.
    pub relay: Arc<crate::relay::Client>,
    /// Wakes the anti-entropy loop for an immediate pull.
    pub(crate) pull_wanted: Notify,
    /// Held while this node copies its whole shard, so that the anti-entropy loop and an
    /// add-member's catch-up never run two copies at once.
    pub(crate) copying: tokio::sync::Mutex<()>,
    /// Whether this node's own sequence counter has been checked against its shard peers
    /// since it started (see [`Node::await_counter_checked`]).
    counter_checked: AtomicBool,
    started: Instant,
    /// An injected failure ([`crate::fault`]), when `KVS_FAULT_INJECTION` allows one.
    pub fault: Arc<FaultSwitch>,
    /// Linearizable writes' `lin-store`s to each peer, combined into batches.
    pub lin_stores: crate::peer::combine::StoreCombiner,
}

/// A node that cannot write to its disk stops rather than go on with state it cannot keep
/// (an acknowledged write must be on disk, and a sequence number once issued must stay
/// issued); one that cannot read it back stops rather than answer from damaged data. Its
/// peers and its restart take over from there, as after a crash (a damaged directory then
/// refuses to open, see `recovery`).
pub(crate) fn storage_failed(error: StorageError) -> ! {
    log::error!("storage failed, stopping: {error}");
    std::process::exit(3)
}

/// How often a node whose disk failed a write probes it (see `storage::space`).
const DISK_PROBE_EVERY: Duration = Duration::from_secs(2);

/// Restarts this process in place once the disk under `space` takes writes again (see
/// `storage::space`): the engine refuses every write after a failed one until it is opened
/// again, and a new process opens it with the same recovery as after a crash, taking its
/// state from what is on disk. On its own thread: the node's runtime goes on serving
/// reads meanwhile.
pub(crate) fn restart_when_the_disk_takes_writes(space: Arc<crate::storage::space::DiskSpace>) {
    let probing = std::thread::Builder::new()
        .name("disk-probe".into())
        .spawn(move || {
            let mut last_reason = String::new();
            loop {
                std::thread::sleep(DISK_PROBE_EVERY);
                match space.takes_writes_again() {
                    Ok(()) => restart_in_place(),
                    Err(reason) if reason != last_reason => {
                        log::warn!("the disk does not take writes yet: {reason}");
                        last_reason = reason;
                    }
                    Err(_) => {}
                }
            }
        });
    if let Err(e) = probing {
        log::error!("cannot watch the disk ({e}): stopping");
        std::process::exit(3);
    }
}

/// Replaces this process with a new run of the same program, arguments and environment
/// (its process id, and so its container, stay). Every descriptor is closed on exec.
fn restart_in_place() -> ! {
    use std::os::unix::process::CommandExt;
    log::warn!("the disk takes writes again: restarting to open the storage engine again");
    let error = match std::env::current_exe() {
        Ok(program) => std::process::Command::new(program)
            .args(std::env::args_os().skip(1))
            .exec(),
        Err(e) => e,
    };
    log::error!("cannot restart in place ({error}): stopping");
    std::process::exit(3)
}

/// Whether a relay connection's source address is one of the store's nodes: an address in
/// the view or the shard map (nodes named by DNS are not told apart by address).
pub fn known_peers(node: &Arc<Node>) -> crate::relay::admission::KnownPeers {
    let node = Arc::downgrade(node);
    Arc::new(move |source| {
        let Some(node) = node.upgrade() else {
            return false;
        };
        let map = node.routing.map();
        let in_map = map.nodes().any(|n| n.ip() == Some(source));
        in_map
            || node
                .membership
                .view()
                .iter()
                .any(|n| n.ip() == Some(source))
    })
}

impl Node {
    pub fn new(
        config: Config,
        membership: Membership,
        start: Recovered,
        fault: Arc<FaultSwitch>,
    ) -> Self {
        let me = config.socket_address.clone();
        // A node that will copy its shard anyway (new, emptied, or unsynced) learns its
        // counter from the copy; one that issued nothing has nothing to reuse.
        let counter_checked = !start.synced || start.replica.own_seq() == 0;
        let relay = Arc::new(
            crate::relay::Client::with_key(config.relay_key())
                .cut_off_by(fault.subscribe())
                .from_address(config.bind_address.ip()),
        );
        let sync = config.storage.sync;
        let node = Self {
            me: me.clone(),
            local: LocalReplica::new(
                start.store,
                start.replica,
                start.synced,
                sync,
                &config.memory,
            ),
            routing: Routing::new(me, start.map),
            reshard: ReshardState::default(),
            acks: Acks::default(),
            peers: Arc::new(RelayPeers::new(relay.clone(), membership.relay_addresses())),
            membership,
            relay,
            pull_wanted: Notify::new(),
            copying: tokio::sync::Mutex::new(()),
            counter_checked: AtomicBool::new(counter_checked),
            started: Instant::now(),
            fault,
            lin_stores: Default::default(),
            config,
        };
        node.local.count_owned_now(node.routing.owner());
        node
    }

    /// Whether `node` is up, as gossip and the administrator's view say.
    fn is_up(&self, node: &NodeId) -> bool {
        self.membership.is_up(node)
    }

    /// The keys this node owns under `map`, as a predicate.
    fn owned<'a>(&self, map: &'a ShardMap) -> impl Fn(&str) -> bool + 'a {
        Routing::owned_filter(map, &self.me)
    }

    /// One round of tombstone purging ([`crate::node::purge`]): the members' applied
    /// clocks (this node's and, from gossip, its shard peers') advance the barrier, and the
    /// tombstones it clears are dropped. Returns how many.
    pub fn purge_round(&self, barrier: &mut Barrier) -> usize {
        let mine = self.local.applied_summary();
        let live = self.membership.live_set();
        let mut members = vec![Some((mine.era, mine.clock))];
        for peer in self.routing.shard_peers() {
            members.push(live.applied_of(&peer).map(|m| (m.era, m.clock)));
        }
        match barrier.advance(mine.era, &members) {
            Some(upto) => self.local.purge_tombstones(mine.era, &upto),
            None => 0,
        }
    }

    /// Records that `peer` has applied this node's writes of `era` up to `applied`.
    pub fn note_ack(&self, peer: NodeId, era: u64, applied: u64) {
        if !self.counter_checked.load(Ordering::Acquire)
            && self
                .local
                .distrust_counter_if_behind(peer.clone(), era, applied)
        {
            // A peer holds more of this node's writes than its journal kept (a damaged or
            // truncated journal, which fjall reads up to the damage): issuing the next
            // sequence numbers again would give two writes one dot, and peers would drop
            // the new ones as duplicates. The copy brings those writes and the counter back.
            self.pull_wanted.notify_one();
        }
        self.acks.note(peer, era, applied);
    }

    /// Waits (bounded by [`COUNTER_CHECK_WAIT`] after start) until every shard peer has
    /// said how far it holds this node's writes, so that a restarted node whose journal
    /// lost writes notices before it issues their sequence numbers again (see
    /// [`Node::note_ack`]). Peers that stay silent that long are not waited for: a store
    /// whose other members are all down still takes writes, at the (documented) risk that
    /// a damaged journal then reuses dots.
    async fn await_counter_checked(&self) {
        if self.counter_checked.load(Ordering::Acquire) {
            return;
        }
        let mut acked = self.acks.subscribe();
        let until = self.started + COUNTER_CHECK_WAIT;
        loop {
            // Every peer, not only those gossip says are up: right after a start gossip
            // has seen none of them yet.
            let era = self.local.era();
            let answered = self
                .routing
                .shard_peers()
                .iter()
                .all(|p| self.acks.get(p).is_some_and(|a| a.0 == era));
            if answered
                || tokio::time::timeout_at(until, acked.changed())
                    .await
                    .is_err()
            {
                self.counter_checked.store(true, Ordering::Release);
                return;
            }
        }
    }

    /// Members of this node's shard that a write must reach for `quorum`, this node
    /// included; a request's own quorum larger than the shard is an error.
    pub fn quorum_needed(&self, quorum: Option<WriteQuorum>) -> Result<usize> {
        let members = self.routing.shard_peers().len() + 1;
        quorum
            .unwrap_or(self.config.write_quorum)
            .needed(members, quorum.is_some())
            .map_err(|e| KvsError::BadRequest(e.to_string()))
    }

    /// Waits until `needed` members of this node's shard, this one included, hold its write
    /// `dot`; [`QUORUM_WAIT`] (or the request's deadline) at most, and then the write's
    /// fate is unknown to the client: it is in this node's journal, and reaches the others
    /// when they return.
    pub async fn await_quorum(
        &self,
        dot: (u64, u64),
        needed: usize,
        deadline: Deadline,
    ) -> Result<()> {
        let until = deadline.within(QUORUM_WAIT);
        let peers = || self.routing.shard_peers();
        self.acks.await_quorum(peers, dot, needed, until).await
    }

    /// Decides where requests for `key` go under the current map.
    pub fn route(&self, key: &str) -> Result<Route> {
        self.routing.route(key, |n| self.is_up(n))
    }

    /// The members of a shard in the order this node tries them (see
    /// [`Routing::forwarding_order`]).
    pub fn forwarding_order(
        &self,
        map: &ShardMap,
        members: &std::collections::BTreeSet<NodeId>,
    ) -> Vec<NodeId> {
        self.routing
            .forwarding_order(map, members, |n| self.is_up(n))
    }

    /// The node to send a request to instead of waiting here: the issuer of the client's
    /// token, when this node has not applied everything the token depends on, and the
    /// issuer is a live member of this node's shard (so it has).
    ///
    /// Clients that spread their requests over the nodes (a load balancer, a Kubernetes
    /// Service) otherwise wait at almost every request for their previous one to be
    /// replicated: measured with round-robin sessions on three nodes, that wait cut PUT
    /// throughput to 0.35-0.44× that of sessions that stay on one node.
    pub fn better_placed(&self, deps: &CausalMetadata) -> Option<NodeId> {
        let issuer = deps.issuer.clone().filter(|n| *n != self.me)?;
        let map = self.routing.map();
        let in_shard = Routing::shard_filter(&map, &self.me);
        if !in_shard(&issuer) || !self.is_up(&issuer) {
            return None;
        }
        let ready = self.local.readiness(deps, in_shard) == Readiness::Ready;
        (!ready).then_some(issuer)
    }

    /// Waits (bounded, and no later than the request's `deadline`) until this node has
    /// applied every write of its shard that `deps` covers, fetching what it lacks from
    /// its peers.
    pub async fn await_dependencies(
        &self,
        deps: &CausalMetadata,
        deadline: Deadline,
    ) -> Result<()> {
        let deadline = deadline.within(self.config.dependency_timeout);
        let mut progress = self.local.subscribe_progress();
        loop {
            let readiness = {
                let map = self.routing.map();
                let in_shard = Routing::shard_filter(&map, &self.me);
                self.local.readiness(deps, in_shard)
            };
            if readiness == Readiness::Ready {
                return Ok(());
            }
            // Pull at once rather than wait for the batched push: peers answer from their
            // logs of recent writes, and waiting requests share one anti-entropy round.
            self.pull_wanted.notify_one();
            if tokio::time::timeout_at(deadline, progress.changed())
                .await
                .is_err()
            {
                return Err(KvsError::DependenciesMissing);
            }
        }
    }

    /// Waits (bounded) until a restarted or newly added node holds its shard's data.
    pub(crate) async fn await_synced(&self, deadline: Deadline) -> Result<()> {
        if self.local.is_synced() {
            return Ok(());
        }
        let deadline = deadline.within(self.config.dependency_timeout);
        let mut progress = self.local.subscribe_progress();
        while !self.local.is_synced() {
            self.pull_wanted.notify_one();
            if tokio::time::timeout_at(deadline, progress.changed())
                .await
                .is_err()
            {
                return Err(KvsError::Unavailable);
            }
        }
        Ok(())
    }

    pub async fn read(
        &self,
        key: &str,
        deps: &CausalMetadata,
        deadline: Deadline,
    ) -> Result<Entry> {
        self.await_dependencies(deps, deadline).await?;
        self.await_synced(deadline).await?;
        if let Route::Remote(shard, _) = self.route(key)? {
            return Err(KvsError::NotOwner(shard));
        }
        match self
            .local
            .store
            .get(key)
            .unwrap_or_else(|e| storage_failed(e))
        {
            Some(entry) if entry.is_live() => Ok(entry),
            _ => Err(KvsError::KeyNotFound),
        }
    }

    /// One page of this node's shard's keys for a listing: under the asker's map or a newer
    /// one, and once every write of the shard the client's token depends on is applied here
    /// (as a read waits for them).
    pub async fn list_page(&self, request: &ListRequest) -> Result<ListPage> {
        let deadline = Deadline::from_budget_ms(request.budget_ms);
        let deps = match request.deps.as_str() {
            "" => CausalMetadata::default(),
            token => CausalMetadata::decode(token).map_err(|_| KvsError::InvalidMetadata)?,
        };
        if request.epoch > self.routing.map().epoch {
            self.routing.await_epoch(request.epoch, deadline).await;
        }
        self.await_dependencies(&deps, deadline).await?;
        self.await_synced(deadline).await?;
        let map = self.routing.map();
        if map.shard_of(&self.me).is_none() {
            return Err(KvsError::NotAMember);
        }
        let limit = request.limit.min(crate::peer::messages::MAX_LIST_LIMIT);
        let page = self
            .local
            .store
            .live_keys_after(
                &request.prefix,
                request.after.as_deref(),
                limit,
                self.owned(&map),
            )
            .unwrap_or_else(|e| storage_failed(e));
        Ok(ListPage {
            epoch: map.epoch,
            keys: page.keys,
            stop: page.stop,
        })
    }

    /// This node's version of `key`, a tombstone included (`None`: it has none).
    pub fn local_version(&self, key: &str) -> Option<Entry> {
        self.local
            .store
            .get(key)
            .unwrap_or_else(|e| storage_failed(e))
    }

    /// Holds `record` if it is newer than this node's version (a linearizable operation's
    /// write-back, outside the causal streams: the same write arrives by them later, and is
    /// then a no-op), and moves this node's Lamport time past it, so that a write here
    /// afterwards is stamped after it.
    pub fn take_version(&self, record: Record) -> Result<()> {
        self.take_versions(vec![record])
    }

    /// [`Node::take_version`] for many records, in one batch (one journal write).
    pub fn take_versions(&self, records: Vec<Record>) -> Result<()> {
        if let Some(lamport) = records.iter().map(|r| r.entry.stamp.lamport).max() {
            self.local.observe_lamport(lamport);
        }
        self.local.absorb_if_newer(records)
    }

    /// Applies a client's PUT (`Some(value)`) or DELETE (`None`) coordinated here.
    pub async fn write(
        &self,
        key: &str,
        value: Option<String>,
        deps: &CausalMetadata,
        deadline: Deadline,
    ) -> Result<WriteOutcome> {
        self.await_dependencies(deps, deadline).await?;
        self.await_counter_checked().await;
        self.await_synced(deadline).await?;
        let _gate = self
            .reshard
            .admit_write(deadline.within(FREEZE_WAIT))
            .await?;
        let shard = match self.route(key)? {
            Route::Local(shard) => shard,
            Route::Remote(shard, _) => return Err(KvsError::NotOwner(shard)),
        };
        let written = self.local.write(key, value, deps)?;
        // No progress to announce: a write of this node's own satisfies no one's wait.
        self.local.sync_if_always().await?;
        Ok(WriteOutcome {
            created: written.created,
            dot: (written.stamp.era, written.stamp.seq),
            metadata: written.metadata,
            shard,
        })
    }

    /// Receives a peer's push: applies it as far as causality allows and, when a write in it
    /// waits on a write from a third node, holds the push up to `BLOCKED_HOLD` (20 ms) and goes on
    /// as soon as that write arrives, so the pusher hears how far it got without polling.
    ///
    /// Sessions that spread their writes over the nodes make such waits common: each write
    /// depends on the session's previous one, coordinated elsewhere. The pusher used to
    /// sleep 20 ms after a blocked answer, and every request that then landed on this node
    /// waited on the writes stuck behind it (round-robin PUT p99.9 54 ms).
    pub async fn receive_push(&self, batch: ReplicateBatch) -> ReplicateAck {
        let progress = self.local.subscribe_progress();
        held::apply_held(batch, |b| self.apply_batch(b), progress, BLOCKED_HOLD).await
    }

    /// Applies a peer's push, in order, as far as causality allows, and says how far it got.
    pub fn apply_batch(&self, batch: &ReplicateBatch) -> ReplicateAck {
        let map = self.routing.map();
        self.local
            .apply_batch(batch, Routing::shard_filter(&map, &self.me))
    }

    /// Answers a peer's pull.
    pub fn snapshot_for(&self, request: &SyncRequest) -> SyncResponse {
        let map = self.routing.map();
        self.local.snapshot(request, &map, self.owned(&map))
    }

    /// Takes in a peer's answer to a pull (see [`LocalReplica::absorb_snapshot`]).
    pub fn absorb_snapshot(&self, response: SyncResponse, part: CopyPart) -> bool {
        let map = self.routing.map();
        self.local.absorb_snapshot(response, part, self.owned(&map))
    }

    /// Installs `next` if it supersedes the current map. `transferred` says the keys this node
    /// owns under `next` are already here (a reshard commit); otherwise a change of shard or
    /// era means this node must take in a full copy of its new shard.
    pub fn install_map(&self, next: ShardMap, transferred: bool) -> bool {
        self.install(next, transferred, MapRule::Supersedes)
    }

    fn install(&self, next: ShardMap, transferred: bool, rule: MapRule) -> bool {
        let Some(change) = self
            .local
            .install_map(&self.routing, &self.me, next, transferred, rule)
        else {
            return false;
        };
        if change.moved {
            self.acks.clear();
        }
        self.pull_wanted.notify_one();
        true
    }

    /// Installs `next`, a map of another store than the current one's: for a node that
    /// holds no key and whose peers moved on to another store (see `replication::pull`).
    pub fn install_map_of_another_store(&self, next: ShardMap) -> bool {
        self.install(next, false, MapRule::AnyStore)
    }

    /// Keys this node holds but does not own under the current map.
    pub fn foreign_records(&self) -> Vec<Record> {
        let map = self.routing.map();
        self.local.foreign_records(self.owned(&map))
    }

    /// Drops the keys this node does not own under the current map.
    pub fn drop_foreign_keys(&self) {
        let map = self.routing.map();
        self.local.drop_foreign_keys(self.owned(&map));
    }

    /// The live keys of this node's shard held here (kept as they change: no scan).
    pub fn live_key_count(&self) -> usize {
        self.local.live_key_count()
    }

    /// For each peer of this node's shard, how many of the writes this node coordinated it
    /// has not acknowledged yet.
    pub fn replication_lag(&self) -> Vec<(NodeId, u64)> {
        let (era, own_seq) = self.local.own_last_seq();
        self.routing
            .shard_peers()
            .into_iter()
            .map(|peer| {
                let lag = stats::lag(era, own_seq, self.acks.get(&peer));
                (peer, lag)
            })
            .collect()
    }
}

/// Closes relay connections to peers the failure detector no longer sees (or that came
/// back on another port), so that requests waiting on them fail over at once.
pub async fn drop_relays_to_lost_peers(node: Arc<Node>) {
    let mut live = node.membership.subscribe();
    let mut known: HashMap<NodeId, NodeId> = HashMap::new();
    loop {
        let current: HashMap<NodeId, NodeId> = live
            .borrow_and_update()
            .nodes
            .iter()
            .filter_map(|(n, state)| Some((n.clone(), state.relay_address(n)?)))
            .collect();
        for (peer, relay) in &known {
            if current.get(peer) != Some(relay) {
                node.relay.disconnect(relay.clone());
            }
        }
        known = current;
        if live.changed().await.is_err() {
            return;
        }
    }
}

/// Purges tombstones every [`crate::node::purge::PURGE_INTERVAL`], starting the
/// barrier over whenever the shard map changes (its members may have).
pub async fn purge_tombstones(node: Arc<Node>) {
    let mut barrier = Barrier::default();
    let mut epoch = node.routing.map().epoch;
    loop {
        tokio::time::sleep(crate::node::purge::PURGE_INTERVAL).await;
        let current = node.routing.map().epoch;
        if current != epoch {
            barrier = Barrier::default();
            epoch = current;
        }
        let purged = node.purge_round(&mut barrier);
        if purged > 0 {
            log::info!("purged {purged} tombstones every member of the shard has applied");
        }
    }
}
