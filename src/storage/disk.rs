//! The durable backend: an embedded fjall database (an LSM tree) in the node's data directory.
//!
//! Why fjall: every write the store adopts is appended to fjall's journal and handed to the
//! operating system before the insert returns, so a write is on its way to disk before it is
//! acknowledged and a killed process (kill -9) loses nothing; syncing to the device is a
//! separate, explicit step, which is exactly the periodic-or-always choice a store wants to
//! offer (etcd always syncs, Cassandra syncs periodically). An LSM tree takes the stream of
//! small replicated writes as sequential appends. It is pure Rust and builds in seconds
//! (rocksdb takes 20 minutes here; sled is pre-1.0).
//!
//! Measured against redb (a B-tree with ACID commits) on kvs's write pattern with
//! `kvs-bench engines` (200,000 crash-safe writes of 200-byte versions over 100,000 keys,
//! 16 writers): fjall with a periodic sync 196,888 writes/s, fjall with a group sync before
//! every answer 25,646/s, redb with a group commit 9,154/s. redb has no crash-safe mode
//! without an fsync per commit (a `Durability::None` commit may be lost with the process),
//! so it cannot offer the periodic mode at all. redb reads every key back faster after a
//! restart (0.05 s against 1.6-1.8 s, most of it fjall replaying its journal) and is 30 MB
//! on disk against 53 MB.
//!
//! Layout: keyspace `data` maps each key to its packed version (the same bytes the memory
//! table holds); keyspace `meta` holds the replica state and the shard map.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::backend::{Backend, Batch, StorageError};

pub struct Disk {
    path: PathBuf,
    db: Database,
    data: Keyspace,
    meta: Keyspace,
    /// Writes handed to the journal so far, and how many of them the last sync covered:
    /// a sync that started after a write covers it, so concurrent writers share one sync.
    written: AtomicU64,
    synced: Mutex<u64>,
    /// Syncs that went to the device.
    syncs: AtomicU64,
}

fn engine(path: &Path) -> impl Fn(fjall::Error) -> StorageError + '_ {
    move |e| StorageError::Engine(format!("{}: {e}", path.display()))
}

impl Disk {
    /// Opens (or creates) the database in `path`. `cache_bytes` bounds the engine's block
    /// cache, and `memtable_bytes` the latest writes it keeps in memory before writing them
    /// out as a table.
    pub fn open(path: &Path, cache_bytes: u64, memtable_bytes: u64) -> Result<Self, StorageError> {
        std::fs::create_dir_all(path)
            .map_err(|e| StorageError::Engine(format!("cannot create {}: {e}", path.display())))?;
        let db = Database::builder(path)
            .cache_size(cache_bytes)
            .open()
            .map_err(|e| match e {
                fjall::Error::Io(e) => StorageError::Engine(format!("{}: {e}", path.display())),
                other => StorageError::Damaged(format!("{}: {other}", path.display())),
            })?;
        let data = db
            .keyspace("data", || {
                KeyspaceCreateOptions::default().max_memtable_size(memtable_bytes)
            })
            .map_err(engine(path))?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .map_err(engine(path))?;
        Ok(Self {
            path: path.to_owned(),
            db,
            data,
            meta,
            written: AtomicU64::new(0),
            synced: Mutex::new(0),
            syncs: AtomicU64::new(0),
        })
    }

    fn wrote(&self) {
        self.written.fetch_add(1, Ordering::AcqRel);
    }
}

impl Backend for Disk {
    fn write(&self, batch: &Batch<'_>) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut write = self.db.batch();
        for (key, version) in &batch.puts {
            write.insert(&self.data, key.as_bytes(), *version);
        }
        for key in &batch.removes {
            write.remove(&self.data, key.as_bytes());
        }
        for (name, value) in &batch.meta {
            write.insert(&self.meta, name.as_bytes(), *value);
        }
        write.commit().map_err(engine(&self.path))?;
        self.wrote();
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let value = self.data.get(key.as_bytes()).map_err(|e| {
            StorageError::Damaged(format!("{}: reading {key:?}: {e}", self.path.display()))
        })?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let value = self.meta.get(name.as_bytes()).map_err(engine(&self.path))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn scan(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StorageError> {
        for item in self.data.iter() {
            let (key, version) = item
                .into_inner()
                .map_err(|e| StorageError::Damaged(format!("{}: {e}", self.path.display())))?;
            visit(&key, &version);
        }
        Ok(())
    }

    fn scan_from(
        &self,
        start: std::ops::Bound<&str>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        use std::ops::Bound;
        let start: Bound<&[u8]> = start.map(str::as_bytes);
        for item in self.data.range::<&[u8], _>((start, Bound::Unbounded)) {
            let (key, version) = item
                .into_inner()
                .map_err(|e| StorageError::Damaged(format!("{}: {e}", self.path.display())))?;
            if !visit(&key, &version) {
                break;
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        let mine = self.written.load(Ordering::Acquire);
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if *synced >= mine {
            return Ok(());
        }
        // Everything written before this load is in the journal: one sync covers it all.
        let upto = self.written.load(Ordering::Acquire);
        self.db
            .persist(PersistMode::SyncData)
            .map_err(engine(&self.path))?;
        *synced = upto;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kvs-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn what_was_written_is_read_back_after_reopening() {
        let dir = temp_dir("reopen");
        {
            let disk = Disk::open(&dir, 1 << 20, 1 << 20).unwrap();
            disk.put("a", b"1").unwrap();
            disk.put("b", b"2").unwrap();
            let batch = Batch {
                removes: vec!["a"],
                meta: vec![("state", b"s")],
                ..Batch::default()
            };
            disk.write(&batch).unwrap();
            disk.sync().unwrap();
        }
        let disk = Disk::open(&dir, 1 << 20, 1 << 20).unwrap();
        let mut seen = Vec::new();
        disk.scan(&mut |k, v| seen.push((k.to_vec(), v.to_vec())))
            .unwrap();
        assert_eq!(seen, vec![(b"b".to_vec(), b"2".to_vec())]);
        assert_eq!(disk.get_meta("state").unwrap(), Some(b"s".to_vec()));
        assert_eq!(disk.get_meta("other").unwrap(), None);
        drop(disk);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
