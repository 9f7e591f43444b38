//! The local replica: the store, the causal replica state, the log of recent writes and the
//! outbox of this node's own writes, kept consistent with each other and with the disk.
//!
//! Lock order: `replica`, then `recent`. Every change of data or state happens with
//! `replica` held, so that states reach the disk in the order they were reached, the store's
//! writers take turns (see `Store::write`), and `recent` lists writes in the order applied.
//! The routing of keys comes in as predicates (`owned`, `in_shard`); this module knows
//! nothing of the network.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::routing::Routing;
use super::storage_failed;
use crate::causal::{Admission, CausalMetadata, Readiness, Replica, Stamp};
use crate::config::SyncMode;
use crate::error::{KvsError, Result};
use crate::node::outbox::Outbox;
use crate::node::recent::RecentLog;
use crate::peer::messages::{
    ReplicateAck, ReplicateBatch, StorageStats, SyncRequest, SyncResponse, COPY_PAGE_RECORDS,
};
use crate::recovery::{META_MAP, META_STATE};
use crate::shard::ShardMap;
use crate::storage::space::Room;
use crate::storage::tally::Owner;
use crate::storage::{Entry, Record, ReplicaState, StorageError, Store};
use crate::NodeId;

/// Own writes kept for pushing to peers; a peer further behind pulls a delta instead.
const OUTBOX_CAPACITY: usize = 20_000;
/// Recently applied writes kept to answer pulls without scanning the store.
const RECENT_CAPACITY: usize = 16_384;

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

/// A client's write applied here.
pub struct LocalWrite {
    pub created: bool,
    pub stamp: Stamp,
    pub metadata: String,
}

/// How a new map changed this node's place.
pub struct MapChange {
    /// A new era, or another shard: the node must take in its new shard.
    pub moved: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which maps [`LocalReplica::install_map`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapRule {
    /// One that supersedes the current map ([`ShardMap::supersedes`]).
    Supersedes,
    /// Any map with shards of another store than the current map's.
    AnyStore,
}

pub struct LocalReplica {
    pub store: Store,
    replica: Mutex<Replica>,
    recent: Mutex<RecentLog>,
    pub outbox: Outbox,
    /// Bumped whenever `applied` or the map changes: what dependency waits wait on.
    progress: watch::Sender<u64>,
    /// Whether this node has taken in a full copy of its shard since it joined it (or since
    /// it started): until then it does not coordinate writes.
    synced: AtomicBool,
    sync: SyncMode,
}

impl LocalReplica {
    pub fn new(
        store: Store,
        replica: Replica,
        synced: bool,
        sync: SyncMode,
        memory: &crate::config::MemoryBudget,
    ) -> Self {
        let mut recent = RecentLog::new(replica.era(), RECENT_CAPACITY, memory.recent_bytes);
        // What came back from disk is not in the log: peers that lack any of it are sent to
        // a scan, as if it had been evicted.
        recent.forget_up_to(replica.applied());
        Self {
            store,
            replica: Mutex::new(replica),
            recent: Mutex::new(recent),
            outbox: Outbox::new(OUTBOX_CAPACITY, memory.outbox_bytes),
            progress: watch::channel(0).0,
            synced: AtomicBool::new(synced),
            sync,
        }
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

    pub fn subscribe_progress(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    pub fn bump_progress(&self) {
        self.progress.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Stores `versions` (those that win) together with the replica's state after them: on
    /// disk in one journal write, then in memory. Called with the replica locked, so that
    /// states reach the disk in the order they were reached and no reader sees a version
    /// before it is on disk.
    fn persist<'a>(
        &self,
        versions: impl IntoIterator<Item = (&'a str, &'a Entry)>,
        replica: &Replica,
    ) -> Result<()> {
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
        self.store
            .write(versions, &meta)
            .map_err(|e| self.disk_failed(e))
    }

    /// Writes the replica's state alone (it changed without new data). A failure leaves
    /// the disk failed (see [`LocalReplica::disk_failed`]): the node restarts before it
    /// writes anything again, and takes its state from what is on disk then.
    fn persist_state(&self, replica: &Replica) {
        let _ = self.persist([], replica);
    }

    /// What a failed write means: a disk that refused it (full, over a quota, a failing
    /// device) fails the store's disk (`storage::space`): nothing more is written, clients'
    /// writes are answered 507 (or 503 when the refused write may be on disk after all),
    /// reads go on, and the node restarts itself once the disk takes writes again. Any other
    /// storage error stops the node.
    pub fn disk_failed(&self, error: StorageError) -> KvsError {
        let StorageError::WriteFailed { reason, unwritten } = error else {
            storage_failed(error)
        };
        let Some(space) = self.store.disk_space() else {
            storage_failed(StorageError::WriteFailed { reason, unwritten })
        };
        if space.fail(&reason) {
            super::restart_when_the_disk_takes_writes(space);
        }
        if unwritten {
            KvsError::InsufficientStorage
        } else {
            KvsError::Unavailable
        }
    }

    /// With `KVS_SYNC=always`, waits until everything written so far is on the device;
    /// concurrent writers share one sync.
    pub async fn sync_if_always(&self) -> Result<()> {
        let (SyncMode::Always, Some(backend)) = (self.sync, self.store.backend()) else {
            return Ok(());
        };
        let backend = backend.clone();
        match tokio::task::spawn_blocking(move || backend.sync()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.disk_failed(e)),
            Err(_) => Err(KvsError::Unavailable),
        }
    }

    /// (era, applied clock) as this node advertises it by gossip.
    pub fn applied_summary(&self) -> CausalMetadata {
        let replica = lock(&self.replica);
        CausalMetadata::new(replica.era(), replica.applied().clone())
    }

    /// (era, the sequence number of this node's last write in it).
    pub fn own_last_seq(&self) -> (u64, u64) {
        let replica = lock(&self.replica);
        (replica.era(), replica.own_seq())
    }

    pub fn era(&self) -> u64 {
        lock(&self.replica).era()
    }

    pub fn readiness(
        &self,
        deps: &CausalMetadata,
        in_shard: impl Fn(&NodeId) -> bool,
    ) -> Readiness {
        lock(&self.replica).readiness(deps, in_shard)
    }

    /// A peer that holds more of this node's writes of `era` (up to `applied`) than this
    /// node does means its journal lost its last writes; if so, the node stops counting as
    /// synced (it copies its shard again before it coordinates a write). Returns whether it
    /// did.
    pub fn distrust_counter_if_behind(&self, peer: NodeId, era: u64, applied: u64) -> bool {
        let replica = lock(&self.replica);
        if era != replica.era() || applied <= replica.own_seq() {
            return false;
        }
        log::warn!(
            "{peer} holds my writes up to {applied}, my data only up to {}: my journal lost \
             writes; copying my shard again before coordinating any write",
            replica.own_seq()
        );
        self.synced.store(false, Ordering::Release);
        self.persist_state(&replica);
        true
    }

    /// Applies a client's PUT (`Some(value)`) or DELETE (`None`) coordinated here, after
    /// `deps`: stamped, in the journal, in the log of recent writes and in the outbox.
    pub fn write(
        &self,
        key: &str,
        value: Option<String>,
        deps: &CausalMetadata,
    ) -> Result<LocalWrite> {
        // Before a sequence number is issued: a write refused here leaves no trace.
        if self.store.room() < Room::Any {
            return Err(KvsError::InsufficientStorage);
        }
        let mut replica = lock(&self.replica);
        let existed = self
            .store
            .is_live(key)
            .unwrap_or_else(|e| storage_failed(e));
        if value.is_none() && !existed {
            return Err(KvsError::KeyNotFound);
        }
        // What the replica was before this write: restored if the disk refuses it, so that
        // memory never claims more than the disk holds (reads go on from both).
        let unstamped = replica.clone();
        let (stamp, metadata) = replica.stamp_local_write(deps);
        let token = metadata.encode();
        let entry = Entry {
            value,
            stamp: stamp.clone(),
            metadata: token.clone(),
        };
        // In the journal before anyone can see it or its client is answered, so that no
        // crash loses it. The state is not written with it: a restarted node takes its own
        // sequence number from its writes on disk, and every batch that could overwrite one
        // of them carries the state (see `recovery`). Writing the state with every write
        // kept every version of it in the engine's memtable: 9% of a node's CPU went to
        // searching that skip list.
        if let Err(e) = self.store.write([(key, &entry)], &[]) {
            *replica = unstamped;
            return Err(self.disk_failed(e));
        }
        let record = Arc::new(Record {
            key: key.to_owned(),
            entry,
        });
        lock(&self.recent).push(record.clone());
        self.outbox.push(stamp.era, stamp.seq, record);
        Ok(LocalWrite {
            created: !existed,
            stamp,
            metadata: token,
        })
    }

    /// Applies a peer's push, in order, as far as causality allows, and says how far it got.
    pub fn apply_batch(
        &self,
        batch: &ReplicateBatch,
        in_shard: impl Fn(&NodeId) -> bool,
    ) -> ReplicateAck {
        if self.is_full() {
            // Nothing applied: the pusher keeps the writes and tries again.
            let replica = lock(&self.replica);
            return ReplicateAck {
                era: replica.era(),
                applied: replica.applied().get(&batch.origin),
                blocked: true,
            };
        }
        let mut replica = lock(&self.replica);
        let before = replica.applied().get(&batch.origin);
        // Restored if the disk refuses the batch (see `write`).
        let unapplied = replica.clone();
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
                    // Its origin's later writes cannot apply without it: the stream from
                    // that origin stops here, and its lag shows in /metrics.
                    Admission::Refused => {
                        log::warn!(
                            "refused a write from {} with a counter beyond {}: {:?}",
                            batch.origin,
                            crate::causal::MAX_COUNTER,
                            record.entry.stamp
                        );
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
            let persisted =
                self.persist(applied.iter().map(|r| (r.key.as_str(), &r.entry)), &replica);
            if persisted.is_err() {
                // Nothing applied: the pusher keeps the writes.
                *replica = unapplied;
                return ReplicateAck {
                    era: replica.era(),
                    applied: before,
                    blocked: true,
                };
            }
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

    /// Answers a peer's pull under `map`, with the keys `owned` says are this node's. The
    /// applied clock is read before the records are collected, so the records cover at
    /// least what the clock claims.
    pub fn snapshot(
        &self,
        request: &SyncRequest,
        map: &ShardMap,
        owned: impl Fn(&str) -> bool,
    ) -> SyncResponse {
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
        let mut next = None;
        let records = match logged {
            Some(records) => records,
            None if wants_delta && request.era == era => self
                .store
                .delta(era, &request.applied)
                .unwrap_or_else(|e| storage_failed(e)),
            None => match self
                .store
                .page_after(request.after.as_deref(), COPY_PAGE_RECORDS, &owned)
            {
                Some(Ok(page)) => {
                    next = page.next;
                    page.records
                }
                Some(Err(e)) => storage_failed(e),
                None => self
                    .store
                    .records_where(|key, _| owned(key))
                    .unwrap_or_else(|e| storage_failed(e)),
            },
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

    /// Takes in a peer's answer to a pull, keeping the records `owned` says are this
    /// node's. Returns false if it belongs to another era. `part` says whether it is a whole
    /// answer or a page of a full copy (see [`CopyPart`]).
    pub fn absorb_snapshot(
        &self,
        response: SyncResponse,
        part: CopyPart,
        owned: impl Fn(&str) -> bool,
    ) -> bool {
        if self.is_full() {
            return false;
        }
        let mut replica = lock(&self.replica);
        if response.era != replica.era() {
            return false;
        }
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
            .filter(|r| owned(&r.key))
            .collect();
        // A page's records are in; the copy's clock is adopted with the last page only.
        let unabsorbed = replica.clone();
        if part != CopyPart::Page {
            replica.absorb(&response.applied, response.lamport);
        }
        if self
            .persist(records.iter().map(|r| (r.key.as_str(), &r.entry)), &replica)
            .is_err()
        {
            *replica = unabsorbed;
            return false;
        }
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
    /// Moves the Lamport time to at least `lamport` (a version this node saw elsewhere).
    pub fn observe_lamport(&self, lamport: u64) {
        lock(&self.replica).absorb(&crate::causal::VectorClock::new(), lamport);
    }

    pub fn absorb_records(&self, records: Vec<Record>) -> Result<()> {
        if self.is_full() {
            return Err(KvsError::InsufficientStorage);
        }
        // Under the replica lock: the store's writers take turns (see `Store::write`).
        let replica = lock(&self.replica);
        self.persist(records.iter().map(|r| (r.key.as_str(), &r.entry)), &replica)
    }

    /// [`LocalReplica::absorb_records`] for the records newer than the stored versions: a
    /// linearizable operation's coordinator usually holds the newest version already, and
    /// an absorb that changes nothing would still cost a journal write (the replica state
    /// goes with every batch).
    pub fn absorb_if_newer(&self, records: Vec<Record>) -> Result<()> {
        if self.is_full() {
            return Err(KvsError::InsufficientStorage);
        }
        let replica = lock(&self.replica);
        let newer: Vec<&Record> = records
            .iter()
            .filter(|r| {
                self.store
                    .would_win(&r.key, &r.entry.stamp)
                    .unwrap_or_else(|e| storage_failed(e))
            })
            .collect();
        if !newer.is_empty() {
            self.persist(newer.iter().map(|r| (r.key.as_str(), &r.entry)), &replica)?;
        }
        Ok(())
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

    /// Installs `next` in `routing` if it supersedes the current map. `transferred` says
    /// the keys `me` owns under `next` are already here (a reshard commit); otherwise a
    /// change of shard or era means this node must take in a full copy of its new shard.
    pub fn install_map(
        &self,
        routing: &Routing,
        me: &NodeId,
        next: ShardMap,
        transferred: bool,
        rule: MapRule,
    ) -> Option<MapChange> {
        // Decided and installed under the replica lock, so that two maps installed at once
        // (gossip and an administrator) cannot end in the older one, in memory or on disk.
        let mut replica = lock(&self.replica);
        let current = routing.map();
        let wins = match rule {
            MapRule::Supersedes => next.supersedes(&current),
            MapRule::AnyStore => !next.shards.is_empty() && !next.same_store(&current),
        };
        if !wins {
            return None;
        }
        let era_changed = next.era != current.era;
        let moved = era_changed || next.shard_of(me) != current.shard_of(me);
        // Which keys are this node's depends only on the shard ids and its own shard: an
        // add-member changes neither, and needs no recount (a scan under this lock).
        let owner_changed = moved || !next.shard_ids().eq(current.shard_ids());
        log::info!(
            "shard map epoch {} -> {} (era {}), my shard {:?}",
            current.epoch,
            next.epoch,
            next.era,
            next.shard_of(me)
        );
        // The map reaches the disk before the state of its era: a crash between the two
        // leaves a map newer than the state, which recovery reads as "start that era".
        if let Some(backend) = self.store.backend() {
            let json = serde_json::to_vec(&next).unwrap_or_default();
            if let Err(e) = backend.put_meta(META_MAP, &json) {
                // Not installed: the node takes the map again after its restart.
                self.disk_failed(e);
                return None;
            }
        }
        if era_changed {
            replica.start_era(next.era);
            lock(&self.recent).reset(next.era);
        }
        routing.replace(next);
        if owner_changed {
            self.count_owned(routing.owner(), &replica);
        }
        if moved {
            self.synced.store(transferred, Ordering::Release);
        }
        self.persist_state(&replica);
        drop(replica);
        self.outbox.wake_all();
        self.bump_progress();
        Some(MapChange { moved })
    }

    /// Drops the tombstones of `era` that every member has applied (`upto`); how many.
    pub fn purge_tombstones(&self, era: u64, upto: &crate::causal::VectorClock) -> usize {
        let keys = self
            .store
            .purgeable_tombstones(era, upto)
            .unwrap_or_else(|e| storage_failed(e));
        if keys.is_empty() {
            return 0;
        }
        let _replica = lock(&self.replica);
        match self.store.purge_tombstones(&keys, era, upto) {
            Ok(purged) => purged,
            Err(e) => {
                self.disk_failed(e);
                0
            }
        }
    }

    /// Keys held here that `owned` says are not this node's.
    pub fn foreign_records(&self, owned: impl Fn(&str) -> bool) -> Vec<Record> {
        self.store
            .records_where(|key, _| !owned(key))
            .unwrap_or_else(|e| storage_failed(e))
    }

    /// Drops the keys `owned` says are not this node's. Under the replica lock, as every
    /// change of the store is, so that the kept key counts stay exact.
    pub fn drop_foreign_keys(&self, owned: impl Fn(&str) -> bool) {
        let replica = lock(&self.replica);
        // A dropped key may hold this node's latest write: the state keeps its sequence.
        self.persist_state(&replica);
        if let Err(e) = self.store.retain(owned) {
            self.disk_failed(e);
        }
    }

    /// Whether nothing may be written, not even what other nodes acknowledged (see
    /// `storage::space`): replication is then left with its senders.
    fn is_full(&self) -> bool {
        self.store.room() <= Room::None
    }

    /// Counts the live keys `owner` accepts, and keeps counting them as they change (see
    /// [`crate::storage::tally`]): at start and whenever the shard map changes.
    pub fn count_owned(&self, owner: Owner, _replica: &Replica) {
        if let Err(e) = self.store.own(owner) {
            storage_failed(e);
        }
    }

    /// Like [`LocalReplica::count_owned`], taking the replica lock.
    pub fn count_owned_now(&self, owner: Owner) {
        self.count_owned(owner, &lock(&self.replica));
    }

    /// What the store holds, as kept while it changes: no scan.
    pub fn storage_stats(&self) -> StorageStats {
        let (keys, tombstones) = self.store.counts();
        StorageStats {
            keys,
            live: keys.saturating_sub(tombstones),
            tombstones,
        }
    }

    /// The live keys of this node's shard held here, as kept while they change: no scan.
    pub fn live_key_count(&self) -> usize {
        self.store.owned_live()
    }
}
