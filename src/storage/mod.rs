//! Storage: the latest version of every key this node holds, tombstones included: in the
//! durable [`Backend`] (an engine that serves reads from its memtable and block cache), or
//! in a table in memory for `--in-memory` and tests.
//!
//! Writes are merged last-writer-wins by [`Stamp`], which is commutative and idempotent: a
//! replica can take the same write from a push, a pull and a reshard transfer in any order
//! and end up in the same state. A version reaches the engine's journal before anyone can
//! read it, so nothing a client saw is lost to a crash.

pub mod backend;
pub mod disk;
pub mod space;
pub mod stamps;
pub mod tally;

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

pub use backend::{Backend, Batch, MemoryBackend, StorageError};
use stamps::{StampCache, STAMP_CACHE_SLOTS};
use tally::{KeyState, Owner, Tally};

use crate::causal::{Stamp, VectorClock};
use crate::codec::{put_addr, put_varint, read_addr, read_varint};

/// One version of one key. `value: None` is a tombstone: deletes are kept so that a delete
/// replicated late can never be undone by the value it deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub value: Option<String>,
    pub stamp: Stamp,
    /// The causal-metadata token the write returned, handed out again by every read.
    pub metadata: String,
}

impl Entry {
    pub fn is_live(&self) -> bool {
        self.value.is_some()
    }
}

/// A key with its entry, as replicated and transferred between nodes. (Not
/// `#[serde(flatten)]`: flattening makes serde buffer every record on the way in and out,
/// which showed as 7-8% of a replica's CPU under writes.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    pub entry: Entry,
}

impl Record {
    /// What the record costs in memory, about: its strings and the structure around them.
    /// The queues that hold records are bounded by it, not only by count: a value may be
    /// 1 MiB.
    pub fn weight(&self) -> usize {
        const OVERHEAD: usize = 128;
        let value = self.entry.value.as_ref().map_or(0, String::len);
        OVERHEAD + self.key.len() + value + self.entry.metadata.len()
    }
}

/// Where the versions live: a table in memory (`--in-memory`, and tests), or the engine
/// alone, which serves reads from its memtable and block cache. A durable node keeps nothing
/// per key in memory: a million keys in memory cost 228 bytes each (466 MB of resident
/// memory for a node holding them), and the engine's caches are bounded
/// (`KVS_CACHE_MB`).
enum Table {
    /// Each key and its version packed into one heap block (see [`Slot`]): a million keys
    /// then cost a 16-byte table slot and one allocation each, instead of a 128-byte slot
    /// and four allocations.
    Memory(DashMap<Slot, ()>),
    Engine(Arc<dyn Backend>, StampCache),
}

#[derive(Default)]
pub struct Store {
    table: Table,
    /// How many keys, tombstones and owned live keys are stored, exactly. The purge round
    /// skips its scan at 0 tombstones: a scan of an engine walks every version still in
    /// its memtable, and scanning every 5 s with no tombstones at all took 4.5% of a node's
    /// CPU under PUTs.
    tally: Tally,
    /// Scans of every stored key, for the metric that shows no request pays for one.
    scans: AtomicU64,
    /// Room on the data directory's filesystem (a durable node's).
    space: Option<Arc<space::DiskSpace>>,
}

impl Default for Table {
    fn default() -> Self {
        Table::Memory(DashMap::new())
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("durable", &self.is_durable())
            .finish()
    }
}

impl Store {
    /// A store in memory only (`--in-memory`, and tests).
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads back every version `backend` holds, calling `visit` with each one's stamp, and
    /// serves and writes everything from then on through it. A version this node could not
    /// have written means the data is damaged: the node must not serve from it.
    pub fn recover(
        backend: Arc<dyn Backend>,
        mut visit: impl FnMut(&Stamp),
    ) -> Result<Self, StorageError> {
        let (mut damaged, mut keys, mut tombstones) = (None, 0, 0);
        backend.scan(&mut |key, version| {
            let key_ok = std::str::from_utf8(key).is_ok_and(|k| k.len() <= usize::from(u8::MAX));
            match packed::stamp(version) {
                Some(stamp) if key_ok && packed::is_well_formed(version) => visit(&stamp),
                _ => damaged = Some(String::from_utf8_lossy(key).into_owned()),
            }
            keys += 1;
            tombstones += usize::from(!packed::is_live(version));
        })?;
        if let Some(key) = damaged {
            return Err(StorageError::Damaged(format!(
                "the stored version of key {key:?} does not decode"
            )));
        }
        Ok(Self {
            table: Table::Engine(backend, StampCache::new(STAMP_CACHE_SLOTS)),
            tally: Tally::new(keys, tombstones),
            scans: AtomicU64::new(1),
            space: None,
        })
    }

    /// Checks `space` before every write from now on (see [`space`]).
    pub fn with_space(mut self, space: space::DiskSpace) -> Self {
        self.space = Some(Arc::new(space));
        self
    }

    /// What may be written now (a `statvfs`); any write without a disk to watch.
    pub fn room(&self) -> space::Room {
        self.space.as_ref().map_or(space::Room::Any, |s| s.check())
    }

    /// The disk under this store, if it watches one.
    pub fn disk_space(&self) -> Option<Arc<space::DiskSpace>> {
        self.space.clone()
    }

    /// What the last look at the disk found: (free bytes, reserve bytes, room).
    pub fn space(&self) -> Option<(u64, u64, space::Room)> {
        self.space.as_ref().map(|s| s.last())
    }

    pub fn backend(&self) -> Option<&Arc<dyn Backend>> {
        match &self.table {
            Table::Engine(backend, _) => Some(backend),
            Table::Memory(_) => None,
        }
    }

    /// Whether writes go to a disk as well as memory.
    pub fn is_durable(&self) -> bool {
        self.backend().is_some()
    }

    /// Calls `with` with the packed version of `key`, if there is one.
    fn version<T>(
        &self,
        key: &str,
        with: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>, StorageError> {
        match &self.table {
            Table::Memory(entries) => Ok(entries.get(key).map(|e| with(e.key().version()))),
            Table::Engine(backend, _) => Ok(backend.get(key)?.map(|v| with(&v))),
        }
    }

    pub fn get(&self, key: &str) -> Result<Option<Entry>, StorageError> {
        Ok(self.version(key, packed::unpack)?.flatten())
    }

    pub fn is_live(&self, key: &str) -> Result<bool, StorageError> {
        Ok(self.stored_stamp(key)?.is_some_and(|(_, live)| live))
    }

    /// The stamp of `key`'s stored version and whether it is live: from the stamp cache
    /// when it knows the key, else read (and then cached).
    fn stored_stamp(&self, key: &str) -> Result<Option<(Stamp, bool)>, StorageError> {
        if let Table::Engine(_, stamps) = &self.table {
            if let Some(known) = stamps.get(key) {
                return Ok(Some(known));
            }
        }
        let read = self
            .version(key, |v| packed::stamp(v).map(|s| (s, packed::is_live(v))))?
            .flatten();
        if let (Table::Engine(_, stamps), Some((stamp, live))) = (&self.table, &read) {
            stamps.put(key, stamp.clone(), *live);
        }
        Ok(read)
    }

    /// Keeps whichever of the stored and the given entry has the larger stamp, in memory
    /// only (tests). Returns true when `entry` was stored.
    #[cfg(test)]
    pub fn merge(&self, key: &str, entry: Entry) -> bool {
        let Table::Memory(entries) = &self.table else {
            return false;
        };
        let before = entries
            .get(key)
            .map(|slot| packed::is_live(slot.key().version()));
        let installed = install(entries, Slot::new(key, &entry));
        if installed {
            self.tally.change(key, before, Some(entry.is_live()));
        }
        installed
    }

    /// Stores the versions that win over what is stored (the larger stamp wins, also among
    /// `versions`): with an engine, in one atomic batch together with `meta`, in its journal
    /// before anyone can read them. Callers serialize their calls (the node holds its
    /// replica lock), so what was compared here is still what is stored when the winners
    /// are written.
    pub fn write<'a>(
        &self,
        versions: impl IntoIterator<Item = (&'a str, &'a Entry)>,
        meta: &[(&str, &[u8])],
    ) -> Result<(), StorageError> {
        // Each winner with its key's state before this write (the same for every version
        // of one key: nothing is stored until the end).
        let mut winners: Vec<(Slot, KeyState)> = Vec::new();
        for (key, entry) in versions {
            let stored = self.stored_stamp(key)?;
            if stored.as_ref().is_none_or(|(s, _)| entry.stamp > *s) {
                winners.push((Slot::new(key, entry), stored.map(|(_, live)| live)));
            }
        }
        if winners.len() > 1 {
            // One version per key, the largest: sort by key, then stamp, keep each key's last.
            winners.sort_by(|(a, _), (b, _)| {
                (a.key(), packed::stamp(a.version())).cmp(&(b.key(), packed::stamp(b.version())))
            });
            let mut kept: Vec<(Slot, KeyState)> = Vec::with_capacity(winners.len());
            for winner in winners {
                match kept.last_mut() {
                    Some(last) if last.0.key() == winner.0.key() => *last = winner,
                    _ => kept.push(winner),
                }
            }
            winners = kept;
        }
        match &self.table {
            Table::Engine(backend, stamps) => {
                let written = backend.write(&Batch {
                    puts: winners
                        .iter()
                        .map(|(s, _)| (s.key(), s.version()))
                        .collect(),
                    removes: Vec::new(),
                    meta: meta.to_vec(),
                });
                for (slot, _) in &winners {
                    // Every slot was packed from a stamped entry; a failed write leaves the
                    // keys unknown, to be read again.
                    match packed::stamp(slot.version()).filter(|_| written.is_ok()) {
                        Some(stamp) => {
                            stamps.put(slot.key(), stamp, packed::is_live(slot.version()))
                        }
                        None => stamps.forget(slot.key()),
                    }
                }
                written?;
                for (slot, before) in &winners {
                    let after = Some(packed::is_live(slot.version()));
                    self.tally.change(slot.key(), *before, after);
                }
                Ok(())
            }
            Table::Memory(entries) => {
                for (slot, before) in winners {
                    let (key, after) = (slot.key().to_owned(), packed::is_live(slot.version()));
                    if install(entries, slot) {
                        self.tally.change(&key, before, Some(after));
                    }
                }
                Ok(())
            }
        }
    }

    /// Whether a version stamped `stamp` would replace `key`'s stored one. Callers hold the
    /// node's replica lock, as writers do: the stamp cache is filled by this read.
    pub fn would_win(&self, key: &str, stamp: &Stamp) -> Result<bool, StorageError> {
        self.beats_stored(key, stamp)
    }

    fn beats_stored(&self, key: &str, stamp: &Stamp) -> Result<bool, StorageError> {
        let stored = self.stored_stamp(key)?;
        Ok(stored.is_none_or(|(s, _)| *stamp > s))
    }

    /// Calls `visit` with every key and packed version, in no particular order.
    fn scan(&self, visit: &mut dyn FnMut(&str, &[u8])) -> Result<(), StorageError> {
        self.scans.fetch_add(1, Ordering::Relaxed);
        match &self.table {
            Table::Memory(entries) => {
                for e in entries.iter() {
                    visit(e.key().key(), e.key().version());
                }
                Ok(())
            }
            Table::Engine(backend, _) => backend.scan(&mut |key, version| {
                if let Ok(key) = std::str::from_utf8(key) {
                    visit(key, version);
                }
            }),
        }
    }

    /// How many keys are stored, and how many of them are tombstones (kept as they change).
    pub fn counts(&self) -> (usize, usize) {
        (self.tally.keys(), self.tally.tombstones())
    }

    /// The number of live (not deleted) keys that the owner last given to
    /// [`Store::own`] accepts (kept as they change).
    pub fn owned_live(&self) -> usize {
        self.tally.owned_live()
    }

    /// Takes `owner` as the rule for [`Store::owned_live`] from now on, counting the live
    /// keys it accepts (a scan, made when the shard map changes). Callers hold the replica
    /// lock, so no write lands between the count and the change of rule.
    pub fn own(&self, owner: Owner) -> Result<(), StorageError> {
        let mut live = 0;
        self.scan(&mut |key, version| {
            live += usize::from(packed::is_live(version) && owner(key));
        })?;
        self.tally.own(owner, live);
        Ok(())
    }

    /// How many times every stored key has been scanned since the node started.
    pub fn scans(&self) -> u64 {
        self.scans.load(Ordering::Relaxed)
    }

    /// The counts as a scan finds them: what the kept ones must equal (tests and fuzzing).
    #[cfg(test)]
    pub fn counted(&self) -> (usize, usize, usize) {
        let owner = self.tally.owner();
        let (mut keys, mut tombstones, mut owned_live) = (0, 0, 0);
        self.scan(&mut |key, version| {
            keys += 1;
            tombstones += usize::from(!packed::is_live(version));
            owned_live += usize::from(packed::is_live(version) && owner(key));
        })
        .unwrap_or_default();
        (keys, tombstones, owned_live)
    }

    /// Every record whose key and stamp `select` accepts.
    pub fn records_where(
        &self,
        select: impl Fn(&str, &Stamp) -> bool,
    ) -> Result<Vec<Record>, StorageError> {
        let mut records = Vec::new();
        self.scan(&mut |key, version| {
            let chosen = packed::stamp(version).is_some_and(|stamp| select(key, &stamp));
            if let Some(entry) = chosen.then(|| packed::unpack(version)).flatten() {
                records.push(Record {
                    key: key.to_owned(),
                    entry,
                });
            }
        })?;
        Ok(records)
    }

    /// The records written in `era` that `seen` does not cover: what a peer that has applied
    /// `seen` lacks of this node's data.
    pub fn delta(&self, era: u64, seen: &VectorClock) -> Result<Vec<Record>, StorageError> {
        self.records_where(|_, s| s.era == era && s.seq > seen.get(&s.origin))
    }

    /// One page of a full copy, read from the engine in key order: the records of keys
    /// `select` accepts after `after`, `max_records` at most, and the key to go on after
    /// (`None` once the scan has reached the end). `None` for a store without an engine.
    pub fn page_after(
        &self,
        after: Option<&str>,
        max_records: usize,
        select: impl Fn(&str) -> bool,
    ) -> Option<Result<Page, StorageError>> {
        let backend = self.backend()?;
        let mut records = Vec::new();
        let mut last: Option<String> = None;
        let mut full = false;
        // Keys of other shards (a reshard's leftovers) count too, so a page is bounded in
        // time as well as in size.
        let mut scanned = 0usize;
        let scanned_at_most = max_records.saturating_mul(4);
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let scan = backend.scan_from(start, &mut |key, version| {
            if records.len() >= max_records || scanned >= scanned_at_most {
                full = true;
                return false;
            }
            scanned += 1;
            let Ok(key) = std::str::from_utf8(key) else {
                return true;
            };
            last = Some(key.to_owned());
            if select(key) {
                if let Some(entry) = packed::unpack(version) {
                    records.push(Record {
                        key: key.to_owned(),
                        entry,
                    });
                }
            }
            true
        });
        Some(scan.map(|()| Page {
            records,
            next: if full { last } else { None },
        }))
    }

    /// One page of a listing: up to `limit` live keys that start with `prefix`, come after
    /// `after`, and that `select` accepts, in key order; and where the scan stopped if it
    /// may have more (`None` once no such key is left). An engine scans in key order from
    /// the first candidate, at most [`LIST_SCAN_KEYS_PER_KEY`] keys per key asked for (so
    /// that a run of tombstones or foreign keys bounds a page's time, not only its size);
    /// a store in memory only scans and sorts every key, which is what `--in-memory` trades
    /// for its speed.
    pub fn live_keys_after(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        select: impl Fn(&str) -> bool,
    ) -> Result<KeyPage, StorageError> {
        let wanted = |key: &str, version: &[u8]| {
            key.starts_with(prefix)
                && after.is_none_or(|a| key > a)
                && packed::is_live(version)
                && select(key)
        };
        let Some(backend) = self.backend() else {
            let mut keys: Vec<String> = Vec::new();
            self.scan(&mut |key, version| {
                if wanted(key, version) {
                    keys.push(key.to_owned());
                }
            })?;
            keys.sort_unstable();
            let more = keys.len() > limit;
            keys.truncate(limit);
            let stop = if more { keys.last().cloned() } else { None };
            return Ok(KeyPage { keys, stop });
        };
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let scan_at_most = limit.max(1).saturating_mul(LIST_SCAN_KEYS_PER_KEY);
        let (mut keys, mut scanned, mut last, mut exhausted) = (Vec::new(), 0usize, None, true);
        backend.scan_from(start, &mut |key, version| {
            let Ok(key) = std::str::from_utf8(key) else {
                return true;
            };
            if !key.starts_with(prefix) {
                // Keys are in order: past the prefix's range, nothing more can match.
                return false;
            }
            if keys.len() >= limit || scanned >= scan_at_most {
                exhausted = false;
                return false;
            }
            scanned += 1;
            last = Some(key.to_owned());
            if wanted(key, version) {
                keys.push(key.to_owned());
            }
            true
        })?;
        Ok(KeyPage {
            keys,
            stop: if exhausted { None } else { last },
        })
    }

    /// Drops every key `keep` refuses (keys that moved to another shard), in batches. A key
    /// whose removal from disk is lost to a crash comes back after the restart as a key of
    /// another shard, which a node hands to its owners.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> Result<(), StorageError> {
        match &self.table {
            Table::Memory(entries) => {
                entries.retain(|slot, _| {
                    let kept = keep(slot.key());
                    if !kept {
                        let live = packed::is_live(slot.version());
                        self.tally.change(slot.key(), Some(live), None);
                    }
                    kept
                });
                Ok(())
            }
            Table::Engine(backend, stamps) => {
                let mut removed: Vec<(String, bool)> = Vec::new();
                self.scan(&mut |key, version| {
                    if !keep(key) {
                        removed.push((key.to_owned(), packed::is_live(version)));
                    }
                })?;
                removed.iter().for_each(|(key, _)| stamps.forget(key));
                self.remove_in_batches(backend.as_ref(), &removed)
            }
        }
    }

    /// The keys whose tombstones are of `era` and covered by `upto`: a scan, without the
    /// replica lock; [`Store::purge_tombstones`] removes them under it.
    pub fn purgeable_tombstones(
        &self,
        era: u64,
        upto: &VectorClock,
    ) -> Result<Vec<String>, StorageError> {
        if self.tally.tombstones() == 0 {
            return Ok(Vec::new());
        }
        let mut keys = Vec::new();
        self.scan(&mut |key, version| {
            if purgeable(version, era, upto) {
                keys.push(key.to_owned());
            }
        })?;
        Ok(keys)
    }

    /// Removes the tombstones of `keys` that are still of `era` and covered by `upto`, in
    /// batches; returns how many. Callers hold the replica lock, as for [`Store::write`]: a
    /// key rewritten since it was chosen keeps its new version.
    pub fn purge_tombstones(
        &self,
        keys: &[String],
        era: u64,
        upto: &VectorClock,
    ) -> Result<usize, StorageError> {
        match &self.table {
            Table::Memory(entries) => {
                let removed = keys
                    .iter()
                    .filter(|key| {
                        entries
                            .remove_if(key.as_str(), |slot, _| purgeable(slot.version(), era, upto))
                            .inspect(|_| self.tally.change(key, Some(false), None))
                            .is_some()
                    })
                    .count();
                Ok(removed)
            }
            Table::Engine(backend, stamps) => {
                let mut removed = Vec::new();
                for key in keys {
                    if self
                        .version(key, |v| purgeable(v, era, upto))?
                        .unwrap_or(false)
                    {
                        removed.push((key.clone(), false));
                    }
                }
                removed.iter().for_each(|(key, _)| stamps.forget(key));
                self.remove_in_batches(backend.as_ref(), &removed)?;
                Ok(removed.len())
            }
        }
    }

    /// Removes `keys` (each with whether it is live) from `backend` in batches, counting
    /// each batch once it is written.
    fn remove_in_batches(
        &self,
        backend: &dyn Backend,
        keys: &[(String, bool)],
    ) -> Result<(), StorageError> {
        for chunk in keys.chunks(REMOVE_BATCH_KEYS) {
            backend.write(&Batch {
                removes: chunk.iter().map(|(key, _)| key.as_str()).collect(),
                ..Batch::default()
            })?;
            for (key, live) in chunk {
                self.tally.change(key, Some(*live), None);
            }
        }
        Ok(())
    }
}

/// Puts `slot` in the table unless what is stored has a larger stamp.
fn install(entries: &DashMap<Slot, ()>, slot: Slot) -> bool {
    let Some(stamp) = packed::stamp(slot.version()) else {
        return false;
    };
    match entries.entry(slot) {
        dashmap::Entry::Occupied(current) => {
            if packed::stamp(current.key().version()).is_some_and(|s| s >= stamp) {
                return false;
            }
            // Replaces the stored key too: it carries the version.
            current.replace_entry(());
        }
        dashmap::Entry::Vacant(vacant) => {
            vacant.insert(());
        }
    }
    true
}

fn purgeable(version: &[u8], era: u64, upto: &VectorClock) -> bool {
    !packed::is_live(version)
        && packed::stamp(version).is_some_and(|s| s.era == era && s.seq <= upto.get(&s.origin))
}

/// Keys removed from disk per journal write when a node drops the keys it no longer owns.
const REMOVE_BATCH_KEYS: usize = 10_000;

/// How many keys a listing's page may scan per key it asks for.
pub const LIST_SCAN_KEYS_PER_KEY: usize = 8;

/// One page of a listing (see [`Store::live_keys_after`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPage {
    /// In key order.
    pub keys: Vec<String>,
    /// The last key scanned when the scan stopped before the end: every key of this store
    /// up to it is in `keys` or was not wanted. `None`: nothing wanted is left.
    pub stop: Option<String>,
}

/// One page of a full copy: its records, and the key the next page starts after (`None`
/// on the last).
#[derive(Debug)]
pub struct Page {
    pub records: Vec<Record>,
    pub next: Option<String>,
}

/// The replica's state as persisted beside the data: what a restarted node needs to go on
/// exactly where it stopped (and never issue a sequence number twice).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaState {
    pub era: u64,
    pub lamport: u64,
    pub applied: VectorClock,
    /// Whether the node held its whole shard (see `Node::is_synced`).
    pub synced: bool,
}

const STATE_VERSION: u8 = 1;

impl ReplicaState {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.applied.len() * 10);
        out.push(STATE_VERSION);
        put_varint(&mut out, self.era);
        put_varint(&mut out, self.lamport);
        out.push(u8::from(self.synced));
        put_varint(&mut out, self.applied.len() as u64);
        for (addr, &counter) in self.applied.iter() {
            put_addr(&mut out, addr);
            put_varint(&mut out, counter);
        }
        out
    }

    pub fn decode(mut bytes: &[u8]) -> Option<Self> {
        let varint = |bytes: &mut &[u8]| {
            let (v, used) = read_varint(bytes)?;
            *bytes = &bytes[used..];
            Some(v)
        };
        let (&version, rest) = bytes.split_first()?;
        bytes = rest;
        if version != STATE_VERSION {
            return None;
        }
        let era = varint(&mut bytes)?;
        let lamport = varint(&mut bytes)?;
        let (&synced, rest) = bytes.split_first()?;
        bytes = rest;
        let count = varint(&mut bytes)?;
        let mut applied = VectorClock::new();
        for _ in 0..count {
            let (addr, used) = read_addr(bytes)?;
            bytes = &bytes[used..];
            applied.set(addr, varint(&mut bytes)?);
        }
        bytes.is_empty().then_some(Self {
            era,
            lamport,
            applied,
            synced: synced != 0,
        })
    }
}

/// Past this size a slot keeps the block it was packed in (see [`Slot::new`]).
const LARGE_SLOT_BYTES: usize = 16 << 10;

/// A key and its current version in one allocation: `[key len u8][key][packed version]`.
/// The table looks slots up by their key alone (`Hash`, `Eq` and `Borrow<str>` all see only
/// the key), so a slot is both the table's key and its value.
#[derive(Debug)]
struct Slot(Box<[u8]>);

impl Slot {
    fn new(key: &str, entry: &Entry) -> Self {
        // Keys are at most 50 characters (200 bytes); a longer one is cut at a character
        // boundary rather than mis-stored.
        let mut end = key.len().min(usize::from(u8::MAX));
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        let key = &key[..end];
        let mut bytes = Vec::with_capacity(1 + key.len() + packed::size(entry));
        bytes.push(key.len() as u8);
        bytes.extend_from_slice(key.as_bytes());
        packed::pack_into(entry, &mut bytes);
        if bytes.len() > LARGE_SLOT_BYTES {
            // A large value (a transient slot on its way to the engine, mostly) is not
            // copied again: a copy of 1 MiB costs a fresh block's page faults.
            return Self(bytes.into_boxed_slice());
        }
        // Copied into a block of the exact size: shrinking the estimate in place would leave
        // a small free fragment behind every one of a million entries.
        Self(Box::from(bytes.as_slice()))
    }

    fn key_len(&self) -> usize {
        usize::from(self.0.first().copied().unwrap_or(0))
    }

    fn key(&self) -> &str {
        let bytes = self.0.get(1..1 + self.key_len()).unwrap_or_default();
        // Built from a `&str` cut at a character boundary: always valid.
        std::str::from_utf8(bytes).unwrap_or_default()
    }

    fn version(&self) -> &[u8] {
        self.0.get(1 + self.key_len()..).unwrap_or_default()
    }
}

impl std::hash::Hash for Slot {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Must hash exactly as `str` does, for lookups by `&str`.
        self.key().hash(state)
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Slot {}

impl std::borrow::Borrow<str> for Slot {
    fn borrow(&self) -> &str {
        self.key()
    }
}

/// One version of a key, packed:
/// `[flags u8][era][lamport][seq][origin][metadata len][metadata][value]`, numbers as
/// varints, origin in the shared compact form (`codec`). Flag bit 0: live; bit 1: the
/// metadata is the token's raw bytes (the base64 text is rebuilt on reads: a quarter less
/// memory for the largest part of an entry but the value).
mod packed {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    use super::Entry;
    use crate::causal::Stamp;
    use crate::codec::{put_addr, put_varint, read_addr, read_varint};

    const LIVE: u8 = 1;
    const RAW_TOKEN: u8 = 2;

    /// The packed size of `entry`, at most.
    pub fn size(entry: &Entry) -> usize {
        48 + entry.metadata.len() + entry.value.as_deref().map_or(0, str::len)
    }

    #[cfg(test)]
    pub fn pack(entry: &Entry) -> Box<[u8]> {
        let mut out = Vec::with_capacity(size(entry));
        pack_into(entry, &mut out);
        out.into_boxed_slice()
    }

    pub fn pack_into(entry: &Entry, out: &mut Vec<u8>) {
        // Tokens this store issued are canonical base64, so they decode and re-encode to
        // the same text; anything else is kept as text.
        let raw = URL_SAFE_NO_PAD.decode(&entry.metadata).ok();
        let mut flags = 0;
        if entry.value.is_some() {
            flags |= LIVE;
        }
        if raw.is_some() {
            flags |= RAW_TOKEN;
        }
        out.push(flags);
        put_varint(out, entry.stamp.era);
        put_varint(out, entry.stamp.lamport);
        put_varint(out, entry.stamp.seq);
        put_addr(out, &entry.stamp.origin);
        let meta = raw.as_deref().unwrap_or(entry.metadata.as_bytes());
        put_varint(out, meta.len() as u64);
        out.extend_from_slice(meta);
        out.extend_from_slice(entry.value.as_deref().unwrap_or_default().as_bytes());
    }

    pub fn is_live(bytes: &[u8]) -> bool {
        bytes.first().is_some_and(|f| f & LIVE != 0)
    }

    /// Reads consecutive fields from the front of a packed entry.
    struct Cursor<'a>(&'a [u8]);

    impl<'a> Cursor<'a> {
        fn varint(&mut self) -> Option<u64> {
            let (v, used) = read_varint(self.0)?;
            self.0 = &self.0[used..];
            Some(v)
        }

        fn stamp(&mut self) -> Option<Stamp> {
            let (era, lamport, seq) = (self.varint()?, self.varint()?, self.varint()?);
            let (origin, used) = read_addr(self.0)?;
            self.0 = &self.0[used..];
            Some(Stamp {
                era,
                lamport,
                origin,
                seq,
            })
        }

        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let head = self.0.get(..n)?;
            self.0 = &self.0[n..];
            Some(head)
        }
    }

    pub fn stamp(bytes: &[u8]) -> Option<Stamp> {
        Cursor(bytes.get(1..)?).stamp()
    }

    /// Whether `bytes` is a version [`unpack`] decodes, without building the entry: what
    /// recovery checks of every key (decoding a million entries, token re-encoded and all,
    /// only to drop them was a good part of a restart).
    pub fn is_well_formed(bytes: &[u8]) -> bool {
        let Some(&flags) = bytes.first() else {
            return false;
        };
        let mut cursor = Cursor(&bytes[1..]);
        if cursor.stamp().is_none() {
            return false;
        }
        let Some(meta_len) = cursor.varint().and_then(|l| usize::try_from(l).ok()) else {
            return false;
        };
        let Some(meta) = cursor.take(meta_len) else {
            return false;
        };
        (flags & RAW_TOKEN != 0 || std::str::from_utf8(meta).is_ok())
            && std::str::from_utf8(cursor.0).is_ok()
    }

    pub fn unpack(bytes: &[u8]) -> Option<Entry> {
        let flags = *bytes.first()?;
        let mut cursor = Cursor(&bytes[1..]);
        let stamp = cursor.stamp()?;
        let meta_len = usize::try_from(cursor.varint()?).ok()?;
        let meta = cursor.take(meta_len)?;
        let metadata = if flags & RAW_TOKEN != 0 {
            URL_SAFE_NO_PAD.encode(meta)
        } else {
            std::str::from_utf8(meta).ok()?.to_owned()
        };
        let value = std::str::from_utf8(cursor.0).ok()?.to_owned();
        Some(Entry {
            value: (flags & LIVE != 0).then_some(value),
            stamp,
            metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: Option<&str>, lamport: u64, origin: u8, seq: u64) -> Entry {
        Entry {
            value: value.map(str::to_owned),
            stamp: Stamp {
                era: 0,
                lamport,
                origin: format!("10.0.0.{origin}:8080").parse().unwrap(),
                seq,
            },
            metadata: format!("m{lamport}"),
        }
    }

    #[test]
    fn merge_keeps_the_larger_stamp_in_any_order() {
        let a = entry(Some("a"), 1, 1, 1);
        let b = entry(Some("b"), 2, 2, 1);
        let s1 = Store::new();
        s1.merge("k", a.clone());
        s1.merge("k", b.clone());
        let s2 = Store::new();
        s2.merge("k", b.clone());
        assert!(!s2.merge("k", a));
        assert_eq!(s1.get("k").unwrap(), Some(b.clone()));
        assert_eq!(s2.get("k").unwrap(), Some(b));
    }

    #[test]
    fn keys_of_any_characters_are_found_by_their_text() {
        let store = Store::new();
        let keys = [
            "ключ/with spaces",
            "k",
            "日本語のキー",
            "x".repeat(50).as_str(),
        ]
        .map(String::from);
        for (i, key) in keys.iter().enumerate() {
            assert!(store.merge(key, entry(Some(key), i as u64 + 1, 1, i as u64 + 1)));
        }
        for key in &keys {
            assert_eq!(
                store.get(key).unwrap().unwrap().value.as_deref(),
                Some(key.as_str())
            );
        }
        assert!(store.get("ключ").unwrap().is_none());
        // A newer version replaces the stored slot, key included, and the key still resolves.
        assert!(store.merge("k", entry(Some("v2"), 99, 1, 99)));
        assert_eq!(
            store.get("k").unwrap().unwrap().value.as_deref(),
            Some("v2")
        );
        assert_eq!(store.counts(), (keys.len(), 0));
    }

    #[test]
    fn written_versions_reach_the_backend_before_memory_and_only_winners() {
        let backend = Arc::new(MemoryBackend::default());
        let store = Store::recover(backend.clone(), |_| {}).unwrap();
        let (old, new, newest) = (
            entry(Some("old"), 1, 1, 1),
            entry(Some("new"), 5, 1, 2),
            entry(Some("newest"), 9, 2, 1),
        );
        store.write([("k", &new)], &[("state", b"s1")]).unwrap();
        // An older version, and two versions of one key in one batch: the larger wins.
        store
            .write(
                [("k", &old), ("j", &newest), ("j", &old)],
                &[("state", b"s2")],
            )
            .unwrap();
        let again = Store::recover(backend.clone(), |_| {}).unwrap();
        for s in [&store, &again] {
            assert_eq!(s.get("k").unwrap(), Some(new.clone()));
            assert_eq!(s.get("j").unwrap(), Some(newest.clone()));
        }
        assert_eq!(backend.get_meta("state").unwrap(), Some(b"s2".to_vec()));
    }

    /// Both tables list the same pages: live keys of the prefix after the cursor, in order,
    /// and a stop only while keys may be left.
    #[test]
    fn listing_pages_are_the_same_in_memory_and_on_an_engine() {
        let engine = Store::recover(Arc::new(MemoryBackend::default()), |_| {}).unwrap();
        let memory = Store::new();
        for store in [&engine, &memory] {
            for (n, key) in ["a1", "b1", "b2", "b3", "b4", "c1"].iter().enumerate() {
                let e = entry(Some("v"), n as u64 + 1, 1, n as u64 + 1);
                store.write([(*key, &e)], &[]).unwrap();
            }
            store.write([("b2", &entry(None, 20, 1, 20))], &[]).unwrap();
            store
                .write([("b5", &entry(Some("v"), 21, 1, 21))], &[])
                .unwrap();
        }
        let odd = |key: &str| key != "b5";
        for store in [&engine, &memory] {
            let page = store.live_keys_after("b", None, 2, odd).unwrap();
            assert_eq!(page.keys, ["b1", "b3"]);
            let after = page.stop.expect("more b keys may follow");
            let page = store.live_keys_after("b", Some(&after), 2, odd).unwrap();
            assert_eq!((page.keys, page.stop), (vec!["b4".to_owned()], None));
            let page = store.live_keys_after("", Some("b4"), 10, odd).unwrap();
            assert_eq!((page.keys, page.stop), (vec!["c1".to_owned()], None));
        }
    }

    #[test]
    fn tombstones_win_over_older_values_and_do_not_count() {
        for s in every_table() {
            for e in [
                entry(Some("v"), 1, 1, 1),
                entry(None, 2, 1, 2),
                entry(Some("v"), 1, 1, 1),
            ] {
                s.write([("k", &e)], &[]).unwrap();
            }
            assert!(!s.is_live("k").unwrap());
            s.own(Arc::new(|_| true)).unwrap();
            assert_eq!(s.owned_live(), 0);
            assert_eq!(s.counts(), (1, 1));
        }
    }

    /// A store in memory, one in an engine (a durable node's), and one in an engine whose
    /// stamp cache has a single slot (every other key misses it), to run a test on all.
    fn every_table() -> [Store; 3] {
        let engine = Store::recover(Arc::new(MemoryBackend::default()), |_| {}).unwrap();
        let tiny_cache = Store {
            table: Table::Engine(Arc::new(MemoryBackend::default()), StampCache::new(1)),
            tally: Tally::default(),
            scans: AtomicU64::new(0),
            space: None,
        };
        [Store::new(), engine, tiny_cache]
    }

    /// The kept counts equal what a scan finds after every step of a random run of
    /// writes (batches with repeated keys, tombstones, stale versions), purges, drops of
    /// foreign keys and changes of owner, on every kind of table; and reading them scans
    /// nothing.
    #[test]
    fn kept_counts_equal_a_scan_after_every_change() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = std::env::var("KVS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        println!("seed {seed} (KVS_TEST_SEED={seed} repeats this run)");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for s in every_table() {
            let mut lamport = 0;
            for step in 0..400 {
                match rng.gen_range(0..10) {
                    0 => {
                        let shard = rng.gen_range(0..3u8);
                        let owner: Owner = Arc::new(move |key| key.as_bytes()[1] % 3 == shard);
                        s.own(owner).unwrap();
                    }
                    1 => {
                        let dropped = rng.gen_range(0..3u8);
                        s.retain(|key| key.as_bytes()[1] % 3 != dropped).unwrap();
                    }
                    2 => {
                        let upto: VectorClock = [("10.0.0.1:8080".parse().unwrap(), lamport)]
                            .into_iter()
                            .collect();
                        let keys = s.purgeable_tombstones(0, &upto).unwrap();
                        s.purge_tombstones(&keys, 0, &upto).unwrap();
                    }
                    _ => {
                        let batch: Vec<(String, Entry)> = (0..rng.gen_range(1..5))
                            .map(|_| {
                                lamport += 1;
                                let key = format!("k{}", rng.gen_range(0..20u8));
                                let value = rng.gen_bool(0.7).then_some("v");
                                let stamp = lamport.saturating_sub(rng.gen_range(0..3));
                                (key, entry(value, stamp, 1, lamport))
                            })
                            .collect();
                        s.write(batch.iter().map(|(k, e)| (k.as_str(), e)), &[])
                            .unwrap();
                    }
                }
                let scans = s.scans();
                let kept = (s.counts(), s.owned_live());
                assert_eq!(s.scans(), scans, "counting scanned (seed {seed})");
                let (keys, tombstones, owned_live) = s.counted();
                assert_eq!(
                    kept,
                    ((keys, tombstones), owned_live),
                    "step {step}, seed {seed}"
                );
            }
        }
    }

    #[test]
    fn purge_scans_only_while_there_may_be_tombstones() {
        for s in every_table() {
            let upto: VectorClock = [("10.0.0.1:8080".parse().unwrap(), 9)]
                .into_iter()
                .collect();
            s.write([("k", &entry(Some("v"), 1, 1, 1))], &[]).unwrap();
            let scans = s.scans();
            assert!(s.purgeable_tombstones(0, &upto).unwrap().is_empty());
            assert_eq!(s.scans(), scans, "nothing to scan for");
            s.write([("k", &entry(None, 2, 1, 2))], &[]).unwrap();
            let found = s.purgeable_tombstones(0, &upto).unwrap();
            assert_eq!(found, ["k"]);
            assert_eq!(s.purge_tombstones(&found, 0, &upto).unwrap(), 1);
            assert_eq!(s.counts(), (0, 0));
        }
    }

    #[test]
    fn the_stamp_cache_never_lets_an_older_version_win() {
        for s in every_table() {
            let keys = ["a", "b", "c"];
            let newer: Vec<Entry> = (0..3)
                .map(|i| entry(Some("new"), 10 + i, 1, 10 + i))
                .collect();
            let older: Vec<Entry> = (0..3)
                .map(|i| entry(Some("old"), 1 + i, 2, 1 + i))
                .collect();
            for (key, e) in keys.iter().zip(&newer) {
                s.write([(*key, e)], &[]).unwrap();
            }
            for (key, e) in keys.iter().zip(&older) {
                s.write([(*key, e)], &[]).unwrap();
            }
            for (key, e) in keys.iter().zip(&newer) {
                assert_eq!(s.get(key).unwrap().as_ref(), Some(e));
                assert!(s.is_live(key).unwrap());
            }
            // A purged tombstone is forgotten: the key is new again, any version wins.
            let dead = entry(None, 20, 1, 20);
            s.write([("a", &dead)], &[]).unwrap();
            assert!(!s.is_live("a").unwrap());
            let upto: VectorClock = [("10.0.0.1:8080".parse().unwrap(), 20)]
                .into_iter()
                .collect();
            assert_eq!(s.purge_tombstones(&["a".to_owned()], 0, &upto).unwrap(), 1);
            assert!(!s.is_live("a").unwrap());
            s.write([("a", &older[0])], &[]).unwrap();
            assert_eq!(s.get("a").unwrap(), Some(older[0].clone()));
        }
    }

    #[test]
    fn purged_tombstones_leave_memory_and_disk_and_nothing_else_does() {
        let backend = Arc::new(MemoryBackend::default());
        let store = Store::recover(backend.clone(), |_| {}).unwrap();
        let dead = entry(None, 3, 1, 3);
        let later_dead = entry(None, 4, 1, 4);
        let live = entry(Some("v"), 2, 2, 1);
        store
            .write(
                [("gone", &dead), ("kept", &later_dead), ("live", &live)],
                &[],
            )
            .unwrap();
        assert_eq!(store.counts(), (3, 2));
        let upto: VectorClock = [
            ("10.0.0.1:8080".parse().unwrap(), 3),
            ("10.0.0.2:8080".parse().unwrap(), 9),
        ]
        .into_iter()
        .collect();
        assert!(
            store.purgeable_tombstones(1, &upto).unwrap().is_empty(),
            "another era"
        );
        let chosen = store.purgeable_tombstones(0, &upto).unwrap();
        assert_eq!(chosen, ["gone"]);
        // Rewritten after it was chosen: kept.
        let revived = entry(Some("back"), 5, 2, 2);
        for other in every_table() {
            other.write([("gone", &dead)], &[]).unwrap();
            other.write([("gone", &revived)], &[]).unwrap();
            assert_eq!(other.purge_tombstones(&chosen, 0, &upto).unwrap(), 0);
            assert_eq!(other.get("gone").unwrap(), Some(revived.clone()));
        }
        assert_eq!(store.purge_tombstones(&chosen, 0, &upto).unwrap(), 1);
        let again = Store::recover(backend, |_| {}).unwrap();
        for s in [&store, &again] {
            assert!(s.get("gone").unwrap().is_none());
            assert_eq!(s.get("kept").unwrap(), Some(later_dead.clone()));
            assert_eq!(s.get("live").unwrap(), Some(live.clone()));
        }
    }

    #[test]
    fn a_full_copy_reads_the_engine_in_bounded_pages_in_key_order() {
        let backend = Arc::new(MemoryBackend::default());
        let store = Store::recover(backend, |_| {}).unwrap();
        let entries: Vec<(String, Entry)> = (0..25)
            .map(|i| (format!("k{i:02}"), entry(Some("v"), i + 1, 1, i + 1)))
            .collect();
        store
            .write(entries.iter().map(|(k, e)| (k.as_str(), e)), &[])
            .unwrap();
        // Every third key is another shard's: skipped, but scanned.
        let mine = |key: &str| !key.ends_with(['0', '3', '6', '9']);
        let mut after = None;
        let mut copied = Vec::new();
        let mut pages = 0;
        loop {
            let Page { records, next } = store
                .page_after(after.as_deref(), 4, mine)
                .unwrap()
                .unwrap();
            assert!(records.len() <= 4);
            copied.extend(records.into_iter().map(|r| r.key));
            pages += 1;
            match next {
                Some(key) => after = Some(key),
                None => break,
            }
        }
        let expected: Vec<String> = entries
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| mine(k))
            .collect();
        assert_eq!(copied, expected);
        assert!(pages >= expected.len() / 4, "{pages} pages");
        assert!(
            Store::new().page_after(None, 4, mine).is_none(),
            "in memory: one piece"
        );
    }

    #[test]
    fn delta_lists_what_a_peer_has_not_seen() {
        for s in every_table() {
            let (a, b, c) = (
                entry(Some("1"), 1, 1, 1),
                entry(Some("2"), 2, 1, 2),
                entry(Some("3"), 3, 2, 1),
            );
            s.write([("a", &a), ("b", &b), ("c", &c)], &[]).unwrap();
            let seen: VectorClock = [("10.0.0.1:8080".parse().unwrap(), 1)]
                .into_iter()
                .collect();
            let delta = s.delta(0, &seen).unwrap();
            let mut keys: Vec<_> = delta.into_iter().map(|r| r.key).collect();
            keys.sort();
            assert_eq!(keys, ["b", "c"]);
            assert!(
                s.delta(1, &seen).unwrap().is_empty(),
                "other eras are not deltas"
            );
        }
    }

    #[test]
    fn moved_keys_are_dropped_from_every_table() {
        for s in every_table() {
            let (a, b) = (entry(Some("1"), 1, 1, 1), entry(Some("2"), 2, 1, 2));
            s.write([("stay", &a), ("move", &b)], &[]).unwrap();
            s.retain(|key| key == "stay").unwrap();
            assert_eq!(s.counts(), (1, 0));
            assert!(s.get("move").unwrap().is_none());
            assert_eq!(s.get("stay").unwrap(), Some(a));
        }
    }

    #[test]
    fn packing_round_trips_values_tombstones_and_both_address_kinds() {
        let mut e = entry(Some("välue"), 7, 3, 9);
        assert_eq!(packed::unpack(&packed::pack(&e)), Some(e.clone()));
        e.value = None;
        e.stamp.origin = "[2001:db8::1]:8080".parse().unwrap();
        e.metadata = "x".repeat(300);
        assert_eq!(packed::unpack(&packed::pack(&e)), Some(e.clone()));
        e.value = Some(String::new());
        assert_eq!(packed::unpack(&packed::pack(&e)), Some(e.clone()));
        // Metadata that is not canonical base64 is kept as text.
        e.metadata = "not a token!".into();
        e.stamp.lamport = u64::MAX;
        assert_eq!(packed::unpack(&packed::pack(&e)), Some(e));
    }

    #[test]
    fn the_well_formed_check_agrees_with_unpacking() {
        let mut e = entry(Some("välue"), 7, 3, 9);
        e.metadata = "not a token!".into();
        let packed = packed::pack(&e);
        assert!(packed::is_well_formed(&packed));
        // Every truncation, and a value cut inside a UTF-8 sequence, is refused by both.
        for cut in 0..packed.len() {
            let part = &packed[..cut];
            assert_eq!(
                packed::is_well_formed(part),
                packed::unpack(part).is_some(),
                "cut {cut}"
            );
        }
        let mut bad = packed.to_vec();
        *bad.last_mut().unwrap() = 0xff;
        assert!(!packed::is_well_formed(&bad));
        assert!(packed::unpack(&bad).is_none());
    }

    #[test]
    fn tokens_are_stored_as_their_raw_bytes() {
        let token = crate::causal::CausalMetadata::new(
            3,
            [("10.10.0.2:8080".parse().unwrap(), 123_456)]
                .into_iter()
                .collect(),
        )
        .encode();
        let mut e = entry(Some("v"), 1, 1, 1);
        e.metadata = token.clone();
        let packed = packed::pack(&e);
        assert!(packed.len() < token.len() + 20, "{} bytes", packed.len());
        assert_eq!(packed::unpack(&packed).unwrap().metadata, token);
    }

    #[test]
    fn records_round_trip_through_json() {
        let r = Record {
            key: "k".into(),
            entry: entry(Some("v"), 1, 1, 1),
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["key"], "k");
        assert_eq!(json["entry"]["value"], "v");
        assert_eq!(serde_json::from_value::<Record>(json).unwrap(), r);
    }
}

#[cfg(test)]
mod footprint {
    use super::*;

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// `cargo test --release --lib footprint -- --ignored --nocapture`: bytes per key for
    /// 16-byte keys and 100-byte values with a three-node token.
    #[test]
    #[ignore]
    fn memory_of_a_million_keys() {
        let before = rss_kib();
        let store = Store::new();
        let origin: crate::NodeId = "10.10.0.2:8080".parse().unwrap();
        let token = crate::causal::CausalMetadata::new(
            0,
            ["10.10.0.2:8080", "10.10.0.4:8080", "10.10.0.6:8080"]
                .iter()
                .map(|a| (a.parse().unwrap(), 123_456))
                .collect(),
        )
        .encode();
        for i in 0..1_000_000u64 {
            let entry = Entry {
                value: Some(format!("{i:0>100}")),
                stamp: Stamp {
                    era: 0,
                    lamport: i,
                    origin: origin.clone(),
                    seq: i + 1,
                },
                metadata: token.clone(),
            };
            store.merge(&format!("{i:0>16}"), entry);
        }
        let used = rss_kib() - before;
        println!(
            "1,000,000 keys: {} MiB, {} bytes a key",
            used / 1024,
            used * 1024 / 1_000_000
        );
    }
}
