//! A node's shared state and its local operations: serving keys of its own shard, applying
//! replicated writes, answering pulls, and installing new shard maps.
//!
//! The background work that keeps replicas together lives in `replication`, the
//! administrative changes in `admin`, and the HTTP surface in `http`; all of them act through
//! the methods here.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{watch, Notify, OwnedRwLockWriteGuard, RwLock};
use tokio::time::Instant;

use crate::budget::Deadline;
use crate::causal::{Admission, CausalMetadata, Readiness, Replica};
use crate::config::Config;
use crate::config::SyncMode;
use crate::error::{KvsError, Result};
use crate::membership::{Membership, KEY_MAP};
use crate::peer::{Internode, RelayPeers};
use crate::recovery::{Recovered, META_MAP, META_STATE};
use crate::replication::outbox::Outbox;
use crate::replication::protocol::{
    ReplicateAck, ReplicateBatch, StorageStats, SyncRequest, SyncResponse, COPY_PAGE_RECORDS,
};
use crate::replication::purge::Barrier;
use crate::replication::push;
use crate::replication::quorum::{self, WriteQuorum};
use crate::replication::recent::RecentLog;
use crate::shard::{ShardId, ShardMap};
use crate::storage::{Entry, Record, ReplicaState, StorageError, Store};
use crate::NodeId;

/// Own writes kept for pushing to peers; a peer further behind pulls a delta instead.
const OUTBOX_CAPACITY: usize = 20_000;
/// Recently applied writes kept to answer pulls without scanning the store.
const RECENT_CAPACITY: usize = 16_384;
/// How long a write waits while a reshard has writes frozen.
pub const FREEZE_WAIT: Duration = Duration::from_secs(30);
/// How long a quorum write waits for the other members to hold it.
pub const QUORUM_WAIT: Duration = Duration::from_secs(5);
/// How long a request waits for this node to learn a shard map it was told exists.
const MAP_WAIT: Duration = Duration::from_secs(5);
/// How long after its start a node waits for its shard peers to say how far they hold its
/// writes before it coordinates writes without hearing from them all.
const COUNTER_CHECK_WAIT: Duration = Duration::from_secs(3);
/// How long a push whose next write waits on a third node's write is held by its receiver
/// (see [`Node::receive_push`]); the pusher's own timeout is 5 s.
const BLOCKED_HOLD: Duration = Duration::from_millis(20);

/// Where a key's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node is a member of the key's shard.
    Local(ShardId),
    /// Forward to one of these members, in this order.
    Remote(ShardId, Vec<NodeId>),
}

/// The result of a write applied here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    pub created: bool,
    /// The write's era and sequence number at this node.
    pub dot: (u64, u64),
    pub metadata: String,
    pub shard: ShardId,
}

/// What part of a pull an answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyPart {
    /// A delta, or a full copy in one piece: records and the clock they cover.
    Whole,
    /// A page of a full copy, not the last: records only.
    Page,
    /// The last page of a full copy, with the clock read before its first page (every
    /// page holds each of its keys at least as new as that clock).
    Last,
}

/// A reshard this node has prepared for: writes are frozen until commit or abort.
pub struct PendingReshard {
    pub map: ShardMap,
    pub since: Instant,
    pub _writes_frozen: OwnedRwLockWriteGuard<()>,
}

pub struct Node {
    pub config: Config,
    pub me: NodeId,
    pub store: Store,
    replica: Mutex<Replica>,
    /// Locked only while `replica` is held, so that it lists writes in the order applied.
    recent: Mutex<RecentLog>,
    /// Bumped whenever `applied` or the map changes: what dependency waits wait on.
    progress: watch::Sender<u64>,
    map: watch::Sender<Arc<ShardMap>>,
    /// Whether this node has taken in a full copy of its shard since it joined it (or since
    /// it started): until then it does not coordinate writes.
    synced: AtomicBool,
    pub outbox: Outbox,
    pub membership: Membership,
    /// The messages this node sends other nodes.
    pub peers: Arc<dyn Internode>,
    /// Carries forwarded client requests, and the calls of `peers`, to other nodes.
    pub relay: Arc<crate::relay::Client>,
    write_gate: Arc<RwLock<()>>,
    pub(crate) pending: Mutex<Option<PendingReshard>>,
    /// Wakes the anti-entropy loop for an immediate pull.
    pub(crate) pull_wanted: Notify,
    /// Serializes administrative changes coordinated by this node.
    pub(crate) admin: tokio::sync::Mutex<()>,
    /// Held while this node copies its whole shard, so that the anti-entropy loop and an
    /// add-member's catch-up never run two copies at once.
    pub(crate) copying: tokio::sync::Mutex<()>,
    /// For each peer, how far it has acknowledged this node's writes: (era, seq).
    pub(crate) acks: DashMap<NodeId, (u64, u64)>,
    /// Bumped at every acknowledgement in `acks`: what quorum writes wait on.
    acked: watch::Sender<u64>,
    /// Whether this node's own sequence counter has been checked against its shard peers
    /// since it started (see [`Node::await_counter_checked`]).
    counter_checked: AtomicBool,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

impl Node {
    pub fn new(config: Config, membership: Membership, start: Recovered) -> Self {
        let me = config.socket_address;
        let era = start.replica.era();
        // A node that will copy its shard anyway (new, emptied, or unsynced) learns its
        // counter from the copy; one that issued nothing has nothing to reuse.
        let counter_checked = !start.synced || start.replica.own_seq() == 0;
        let mut recent = RecentLog::new(era, RECENT_CAPACITY);
        // What came back from disk is not in the log: peers that lack any of it are sent to
        // a scan, as if it had been evicted.
        recent.forget_up_to(start.replica.applied());
        let relay = Arc::new(crate::relay::Client::with_key(config.relay_key()));
        Self {
            me,
            store: start.store,
            replica: Mutex::new(start.replica),
            recent: Mutex::new(recent),
            progress: watch::channel(0).0,
            map: watch::channel(Arc::new(start.map)).0,
            synced: AtomicBool::new(start.synced),
            outbox: Outbox::new(OUTBOX_CAPACITY),
            peers: Arc::new(RelayPeers::new(relay.clone(), membership.relay_addresses())),
            membership,
            relay,
            write_gate: Arc::new(RwLock::new(())),
            pending: Mutex::new(None),
            pull_wanted: Notify::new(),
            copying: tokio::sync::Mutex::new(()),
            admin: tokio::sync::Mutex::new(()),
            acks: DashMap::new(),
            acked: watch::channel(0).0,
            counter_checked: AtomicBool::new(counter_checked),
            started: Instant::now(),
            config,
        }
    }

    pub fn map(&self) -> Arc<ShardMap> {
        self.map.borrow().clone()
    }

    pub fn subscribe_map(&self) -> watch::Receiver<Arc<ShardMap>> {
        self.map.subscribe()
    }

    pub fn my_shard(&self) -> Option<ShardId> {
        self.map().shard_of(&self.me)
    }

    /// The members of this node's shard other than itself.
    pub fn shard_peers(&self) -> BTreeSet<NodeId> {
        let map = self.map();
        map.shard_of(&self.me)
            .and_then(|s| map.members(s))
            .map(|m| m.iter().filter(|n| **n != self.me).copied().collect())
            .unwrap_or_default()
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn mark_synced(&self) {
        if !self.synced.swap(true, Ordering::AcqRel) {
            self.persist_state(&lock(&self.replica));
            self.bump_progress();
        }
    }

    /// Stores `versions` (those that win) together with the replica's state after them: on
    /// disk in one journal write, then in memory. Called with the replica locked, so that
    /// states reach the disk in the order they were reached and no reader sees a version
    /// before it is on disk.
    fn persist<'a>(
        &self,
        versions: impl IntoIterator<Item = (&'a str, &'a Entry)>,
        replica: &Replica,
    ) {
        let state = self.store.is_durable().then(|| {
            ReplicaState {
                era: replica.era(),
                lamport: replica.lamport(),
                applied: replica.applied().clone(),
                synced: self.is_synced(),
            }
            .encode()
        });
        let meta: Vec<(&str, &[u8])> = state.iter().map(|s| (META_STATE, s.as_slice())).collect();
        if let Err(e) = self.store.write(versions, &meta) {
            storage_failed(e);
        }
    }

    /// Writes the replica's state alone (it changed without new data).
    fn persist_state(&self, replica: &Replica) {
        self.persist([], replica);
    }

    /// With `KVS_SYNC=always`, waits until everything written so far is on the device;
    /// concurrent writers share one sync.
    async fn sync_if_always(&self) -> Result<()> {
        let (SyncMode::Always, Some(backend)) = (self.config.storage.sync, self.store.backend())
        else {
            return Ok(());
        };
        let backend = backend.clone();
        match tokio::task::spawn_blocking(move || backend.sync()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => storage_failed(e),
            Err(_) => Err(KvsError::Unavailable),
        }
    }

    /// One round of tombstone purging ([`crate::replication::purge`]): the members' applied
    /// clocks (this node's and, from gossip, its shard peers') advance the barrier, and the
    /// tombstones it clears are dropped. Returns how many.
    pub fn purge_round(&self, barrier: &mut Barrier) -> usize {
        let mine = self.applied_summary();
        let live = self.membership.live_set();
        let mut members = vec![Some((mine.era, mine.clock))];
        for peer in self.shard_peers() {
            members.push(live.applied_of(&peer).map(|m| (m.era, m.clock)));
        }
        let Some(upto) = barrier.advance(mine.era, &members) else {
            return 0;
        };
        let keys = self
            .store
            .purgeable_tombstones(mine.era, &upto)
            .unwrap_or_else(|e| storage_failed(e));
        if keys.is_empty() {
            return 0;
        }
        let _replica = lock(&self.replica);
        match self.store.purge_tombstones(&keys, mine.era, &upto) {
            Ok(purged) => purged,
            Err(e) => storage_failed(e),
        }
    }

    /// Records that `peer` has applied this node's writes of `era` up to `applied`.
    pub fn note_ack(&self, peer: NodeId, era: u64, applied: u64) {
        if !self.counter_checked.load(Ordering::Acquire) {
            self.check_counter(peer, era, applied);
        }
        self.acks.insert(peer, (era, applied));
        self.acked.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A peer that holds more of this node's writes than this node does after a restart
    /// means its journal lost its last writes (a damaged or truncated journal, which fjall
    /// reads up to the damage): issuing the next sequence numbers again would give two
    /// writes one dot, and peers would drop the new ones as duplicates. The node copies its
    /// shard again instead, which brings those writes and the counter back, and coordinates
    /// no write until then.
    fn check_counter(&self, peer: NodeId, era: u64, applied: u64) {
        let replica = lock(&self.replica);
        if era != replica.era() || applied <= replica.own_seq() {
            return;
        }
        log::warn!(
            "{peer} holds my writes up to {applied}, my data only up to {}: my journal lost \
             writes; copying my shard again before coordinating any write",
            replica.own_seq()
        );
        self.synced.store(false, Ordering::Release);
        self.persist_state(&replica);
        drop(replica);
        self.pull_wanted.notify_one();
    }

    /// Waits (bounded by [`COUNTER_CHECK_WAIT`] after start) until every shard peer has
    /// said how far it holds this node's writes, so that a restarted node whose journal
    /// lost writes notices before it issues their sequence numbers again (see
    /// `check_counter`). Peers that stay silent that long are not waited for: a store whose
    /// other members are all down still takes writes, at the (documented) risk that a
    /// damaged journal then reuses dots.
    async fn await_counter_checked(&self) {
        if self.counter_checked.load(Ordering::Acquire) {
            return;
        }
        let mut acked = self.acked.subscribe();
        let until = self.started + COUNTER_CHECK_WAIT;
        loop {
            // Every peer, not only those gossip says are up: right after a start gossip
            // has seen none of them yet.
            let era = lock(&self.replica).era();
            let answered = self
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
        let members = self.shard_peers().len() + 1;
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
        let mut acked = self.acked.subscribe();
        let until = deadline.within(QUORUM_WAIT);
        loop {
            let peers = self.shard_peers();
            let acks = peers.iter().filter_map(|p| self.acks.get(p).map(|a| *a));
            if quorum::reached(acks, dot.0, dot.1, needed) {
                return Ok(());
            }
            if tokio::time::timeout_at(until, acked.changed())
                .await
                .is_err()
            {
                return Err(KvsError::WriteFateUnknown);
            }
        }
    }

    fn bump_progress(&self) {
        self.progress.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// (era, applied clock) as this node advertises it by gossip.
    pub fn applied_summary(&self) -> CausalMetadata {
        let replica = lock(&self.replica);
        CausalMetadata::new(replica.era(), replica.applied().clone())
    }

    pub fn own_last_seq(&self) -> (u64, u64) {
        let replica = lock(&self.replica);
        (replica.era(), replica.own_seq())
    }

    /// Decides where requests for `key` go under the current map.
    pub fn route(&self, key: &str) -> Result<Route> {
        let map = self.map();
        let shard = map.shard_for_key(key).ok_or(KvsError::Unavailable)?;
        let members = map.members(shard).ok_or(KvsError::Unavailable)?;
        if members.contains(&self.me) {
            return Ok(Route::Local(shard));
        }
        Ok(Route::Remote(shard, self.forwarding_order(&map, members)))
    }

    /// Live members first, each node preferring its own member of every shard. A client's
    /// chained requests through one node thus reach one replica, which never waits for its
    /// own earlier writes to arrive from another. The i-th member of a shard starts at the
    /// i-th member of the other (rotating from there), so that forwarders spread their load
    /// evenly over the shard's members rather than by chance.
    pub fn forwarding_order(&self, map: &ShardMap, members: &BTreeSet<NodeId>) -> Vec<NodeId> {
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
            .copied()
            .collect();
        // Stable: live members keep their rotation order.
        order.sort_by_key(|m| !self.membership.is_up(m));
        order
    }

    /// Whether a node is a member of `me`'s shard under `map`, as a predicate.
    fn shard_filter<'a>(map: &'a ShardMap, me: &NodeId) -> impl Fn(&NodeId) -> bool + 'a {
        let members = map.shard_of(me).and_then(|s| map.members(s));
        move |n| members.is_some_and(|m| m.contains(n))
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
        let issuer = deps.issuer.filter(|n| *n != self.me)?;
        let map = self.map();
        let in_shard = Self::shard_filter(&map, &self.me);
        if !in_shard(&issuer) || !self.membership.is_up(&issuer) {
            return None;
        }
        let ready = lock(&self.replica).readiness(deps, in_shard) == Readiness::Ready;
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
        let mut progress = self.progress.subscribe();
        loop {
            let readiness = {
                let map = self.map();
                let in_shard = Self::shard_filter(&map, &self.me);
                let ready = lock(&self.replica).readiness(deps, in_shard);
                ready
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
    async fn await_synced(&self, deadline: Deadline) -> Result<()> {
        if self.is_synced() {
            return Ok(());
        }
        let deadline = deadline.within(self.config.dependency_timeout);
        let mut progress = self.progress.subscribe();
        while !self.is_synced() {
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

    /// Waits (bounded) until this node knows a map of at least `epoch`.
    pub async fn await_epoch(&self, epoch: u64, deadline: Deadline) -> bool {
        let mut maps = self.map.subscribe();
        let until = deadline.within(MAP_WAIT);
        tokio::time::timeout_at(until, maps.wait_for(|m| m.epoch >= epoch))
            .await
            .is_ok_and(|r| r.is_ok())
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
        match self.store.get(key).unwrap_or_else(|e| storage_failed(e)) {
            Some(entry) if entry.is_live() => Ok(entry),
            _ => Err(KvsError::KeyNotFound),
        }
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
        let _gate = tokio::time::timeout_at(deadline.within(FREEZE_WAIT), self.write_gate.read())
            .await
            .map_err(|_| KvsError::Unavailable)?;
        let shard = match self.route(key)? {
            Route::Local(shard) => shard,
            Route::Remote(shard, _) => return Err(KvsError::NotOwner(shard)),
        };
        let outcome = {
            let mut replica = lock(&self.replica);
            let existed = self
                .store
                .is_live(key)
                .unwrap_or_else(|e| storage_failed(e));
            if value.is_none() && !existed {
                return Err(KvsError::KeyNotFound);
            }
            let (stamp, metadata) = replica.stamp_local_write(deps);
            let token = metadata.encode();
            let entry = Entry {
                value,
                stamp,
                metadata: token.clone(),
            };
            // In the journal before anyone can see it or its client is answered, so that no
            // crash loses it. The state is not written with it: a restarted node takes its
            // own sequence number from its writes on disk, and every batch that could
            // overwrite one of them carries the state (see `recovery`). Writing the state
            // with every write kept every version of it in the engine's memtable: 9% of a
            // node's CPU went to searching that skip list.
            if let Err(e) = self.store.write([(key, &entry)], &[]) {
                storage_failed(e);
            }
            let record = Arc::new(Record {
                key: key.to_owned(),
                entry,
            });
            lock(&self.recent).push(record.clone());
            self.outbox.push(stamp.era, stamp.seq, record);
            WriteOutcome {
                created: !existed,
                dot: (stamp.era, stamp.seq),
                metadata: token,
                shard,
            }
        };
        // No progress to announce: a write of this node's own satisfies no one's wait.
        self.sync_if_always().await?;
        Ok(outcome)
    }

    /// Receives a peer's push: applies it as far as causality allows and, when a write in it
    /// waits on a write from a third node, holds the push up to [`BLOCKED_HOLD`] and goes on
    /// as soon as that write arrives, so the pusher hears how far it got without polling.
    ///
    /// Sessions that spread their writes over the nodes make such waits common: each write
    /// depends on the session's previous one, coordinated elsewhere. The pusher used to
    /// sleep 20 ms after a blocked answer, and every request that then landed on this node
    /// waited on the writes stuck behind it (round-robin PUT p99.9 54 ms).
    pub async fn receive_push(&self, batch: ReplicateBatch) -> ReplicateAck {
        let progress = self.progress.subscribe();
        push::apply_held(batch, |b| self.apply_batch(b), progress, BLOCKED_HOLD).await
    }

    /// Applies a peer's push, in order, as far as causality allows, and says how far it got.
    pub fn apply_batch(&self, batch: &ReplicateBatch) -> ReplicateAck {
        let map = self.map();
        let in_shard = Self::shard_filter(&map, &self.me);
        let mut replica = lock(&self.replica);
        let before = replica.applied().get(&batch.origin);
        let mut blocked = false;
        let mut applied = Vec::new();
        if batch.era == replica.era() {
            for record in &batch.records {
                let Ok(metadata) = CausalMetadata::decode_stored(&record.entry.metadata) else {
                    log::warn!("dropping a record from {} with bad metadata", batch.origin);
                    continue;
                };
                match replica.admit(&record.entry.stamp, &metadata.clock, &in_shard) {
                    Admission::Apply => {
                        replica.record_applied(&record.entry.stamp);
                        applied.push(record.clone());
                    }
                    Admission::Duplicate | Admission::Stale => {}
                    Admission::Blocked => {
                        blocked = true;
                        break;
                    }
                }
            }
        } else {
            blocked = batch.era > replica.era();
        }
        if !applied.is_empty() {
            // One journal write for the whole batch and the state after it.
            self.persist(applied.iter().map(|r| (r.key.as_str(), &r.entry)), &replica);
            let mut recent = lock(&self.recent);
            for record in applied {
                recent.push(record);
            }
        }
        let ack = ReplicateAck {
            era: replica.era(),
            applied: replica.applied().get(&batch.origin),
            blocked,
        };
        drop(replica);
        if ack.applied != before {
            self.bump_progress();
        }
        // A blocked push is not a reason to pull: the missing write is almost always a push
        // from a third node that is milliseconds away, and the pusher retries. Gaps that
        // last are closed by the periodic, gossip-driven anti-entropy round.
        ack
    }

    /// Answers a peer's pull. The applied clock is read before the records are collected, so
    /// the records cover at least what the clock claims.
    pub fn snapshot_for(&self, request: &SyncRequest) -> SyncResponse {
        let map = self.map();
        let wants_delta = !request.full;
        let (era, applied, lamport, logged) = {
            let replica = lock(&self.replica);
            let logged = (wants_delta && request.era == replica.era())
                .then(|| lock(&self.recent).delta(replica.era(), &request.applied))
                .flatten();
            (
                replica.era(),
                replica.applied().clone(),
                replica.lamport(),
                logged,
            )
        };
        let mine = map.shard_of(&self.me);
        let in_shard = |key: &str| mine.is_some() && map.shard_for_key(key) == mine;
        let mut next = None;
        let records = match logged {
            Some(records) => records,
            None if wants_delta && request.era == era => self
                .store
                .delta(era, &request.applied)
                .unwrap_or_else(|e| storage_failed(e)),
            None => {
                match self
                    .store
                    .page_after(request.after.as_deref(), COPY_PAGE_RECORDS, in_shard)
                {
                    Some(Ok(page)) => {
                        next = page.next;
                        page.records
                    }
                    Some(Err(e)) => storage_failed(e),
                    None => self
                        .store
                        .records_where(|key, _| in_shard(key))
                        .unwrap_or_else(|e| storage_failed(e)),
                }
            }
        };
        SyncResponse {
            epoch: map.epoch,
            era,
            applied,
            lamport,
            records,
            next,
        }
    }

    /// Takes in a peer's answer to a pull. Returns false if it belongs to another era.
    /// `part` says whether it is a whole answer or a page of a full copy (see
    /// [`CopyPart`]).
    pub fn absorb_snapshot(&self, response: SyncResponse, part: CopyPart) -> bool {
        let mut replica = lock(&self.replica);
        if response.era != replica.era() {
            return false;
        }
        let map = self.map();
        let mine = map.shard_of(&self.me);
        let mut recent = lock(&self.recent);
        // A copy larger than the log would only churn through it: the log instead records
        // that it lacks everything up to the copy's clock, which sends peers that know less
        // to a scan, as eviction would have.
        let log_records = part == CopyPart::Whole && response.records.len() <= recent.capacity();
        if !log_records && part != CopyPart::Page {
            recent.forget_up_to(&response.applied);
        }
        let records: Vec<Record> = response
            .records
            .into_iter()
            .filter(|r| mine.is_some() && map.shard_for_key(&r.key) == mine)
            .collect();
        // A page's records are in; the copy's clock is adopted with the last page only.
        if part != CopyPart::Page {
            replica.absorb(&response.applied, response.lamport);
        }
        self.persist(records.iter().map(|r| (r.key.as_str(), &r.entry)), &replica);
        if log_records {
            for record in records {
                recent.push(Arc::new(record));
            }
        }
        drop(recent);
        drop(replica);
        self.bump_progress();
        true
    }

    /// Takes in records handed over outside the causal streams (reshard, hand-off).
    pub fn absorb_records(&self, records: Vec<Record>) {
        // Under the replica lock: the store's writers take turns (see `Store::write`).
        let replica = lock(&self.replica);
        self.persist(records.iter().map(|r| (r.key.as_str(), &r.entry)), &replica);
    }

    pub fn pull_request(&self, full: bool) -> SyncRequest {
        let summary = self.applied_summary();
        SyncRequest {
            era: summary.era,
            applied: summary.clock,
            full: full || !self.is_synced(),
            after: None,
        }
    }

    /// Installs `next` if it supersedes the current map. `transferred` says the keys this node
    /// owns under `next` are already here (a reshard commit); otherwise a change of shard or
    /// era means this node must take in a full copy of its new shard.
    pub fn install_map(&self, next: ShardMap, transferred: bool) -> bool {
        // Decided and installed under the replica lock, so that two maps installed at once
        // (gossip and an administrator) cannot end in the older one, in memory or on disk.
        let mut replica = lock(&self.replica);
        let current = self.map();
        if !next.supersedes(&current) {
            return false;
        }
        let era_changed = next.era != current.era;
        let shard_changed = next.shard_of(&self.me) != current.shard_of(&self.me);
        log::info!(
            "shard map epoch {} -> {} (era {}), my shard {:?}",
            current.epoch,
            next.epoch,
            next.era,
            next.shard_of(&self.me)
        );
        // The map reaches the disk before the state of its era: a crash between the two
        // leaves a map newer than the state, which recovery reads as "start that era".
        if let Some(backend) = self.store.backend() {
            let json = serde_json::to_vec(&next).unwrap_or_default();
            if let Err(e) = backend.put_meta(META_MAP, &json) {
                storage_failed(e);
            }
        }
        if era_changed {
            replica.start_era(next.era);
            lock(&self.recent).reset(next.era);
        }
        self.map.send_replace(Arc::new(next));
        if era_changed || shard_changed {
            self.synced.store(transferred, Ordering::Release);
            self.acks.clear();
        }
        self.persist_state(&replica);
        drop(replica);
        self.outbox.wake_all();
        self.bump_progress();
        self.pull_wanted.notify_one();
        true
    }

    /// The map as published by gossip.
    pub fn map_gossip(&self) -> (String, String) {
        (
            KEY_MAP.to_owned(),
            serde_json::to_string(&*self.map()).unwrap_or_default(),
        )
    }

    /// Freezes client writes for a reshard; held until commit or abort.
    pub async fn freeze_writes(&self, timeout: Duration) -> Option<OwnedRwLockWriteGuard<()>> {
        tokio::time::timeout(timeout, self.write_gate.clone().write_owned())
            .await
            .ok()
    }

    pub fn pending_map(&self) -> Option<ShardMap> {
        lock(&self.pending).as_ref().map(|p| p.map.clone())
    }

    pub fn has_pending_reshard(&self) -> bool {
        lock(&self.pending).is_some()
    }

    pub fn set_pending(&self, pending: Option<PendingReshard>) {
        *lock(&self.pending) = pending;
    }

    pub fn take_pending(&self) -> Option<PendingReshard> {
        lock(&self.pending).take()
    }

    /// The epoch of a reshard prepared here longer than `limit` ago.
    pub fn pending_since(&self, limit: Duration) -> Option<u64> {
        lock(&self.pending)
            .as_ref()
            .filter(|p| p.since.elapsed() > limit)
            .map(|p| p.map.epoch)
    }

    /// Keys this node holds but does not own under the current map.
    pub fn foreign_records(&self) -> Vec<Record> {
        let map = self.map();
        let mine = map.shard_of(&self.me);
        self.store
            .records_where(|key, _| mine.is_none() || map.shard_for_key(key) != mine)
            .unwrap_or_else(|e| storage_failed(e))
    }

    /// Drops the keys this node does not own under the current map.
    pub fn drop_foreign_keys(&self) {
        let map = self.map();
        let mine = map.shard_of(&self.me);
        // A dropped key may hold this node's latest write: the state keeps its sequence.
        self.persist_state(&lock(&self.replica));
        let owned = |key: &str| mine.is_some() && map.shard_for_key(key) == mine;
        if let Err(e) = self.store.retain(owned) {
            storage_failed(e);
        }
    }

    pub fn storage_stats(&self) -> StorageStats {
        let (keys, tombstones) = self.store.counts().unwrap_or_else(|e| storage_failed(e));
        StorageStats {
            keys,
            live: keys.saturating_sub(tombstones),
            tombstones,
        }
    }

    pub fn live_key_count(&self) -> usize {
        let map = self.map();
        let mine = map.shard_of(&self.me);
        self.store
            .live_count(|key| mine.is_some() && map.shard_for_key(key) == mine)
            .unwrap_or_else(|e| storage_failed(e))
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
            .filter_map(|(n, state)| Some((*n, state.relay_address(n)?)))
            .collect();
        for (peer, relay) in &known {
            if current.get(peer) != Some(relay) {
                node.relay.disconnect(*relay);
            }
        }
        known = current;
        if live.changed().await.is_err() {
            return;
        }
    }
}

/// Spreads nodes that belong to no shard over a shard's members.
fn address_hash(node: &NodeId) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    node.hash(&mut hasher);
    hasher.finish()
}

/// Purges tombstones every [`crate::replication::purge::PURGE_INTERVAL`], starting the
/// barrier over whenever the shard map changes (its members may have).
pub async fn purge_tombstones(node: Arc<Node>) {
    let mut barrier = Barrier::default();
    let mut epoch = node.map().epoch;
    loop {
        tokio::time::sleep(crate::replication::purge::PURGE_INTERVAL).await;
        let current = node.map().epoch;
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
