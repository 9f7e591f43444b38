//! The seam between the store and the disk: what a node persists, behind a small trait.
//!
//! A durable store reads and writes every version through a [`Backend`]; a restarted node
//! scans it once for the stamps it needs (its own last sequence number) and serves from it.
//! [`Disk`](super::disk::Disk) is the durable implementation; [`MemoryBackend`] keeps the
//! same data in maps that outlive a `Node`, so unit tests can "restart" a node without disk.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

/// A failure of the storage engine. The node answers 503 rather than acknowledge a write
/// it could not persist.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage engine: {0}")]
    Engine(String),
    /// What was read back is not what this node writes: the data directory is damaged.
    #[error("damaged data: {0}")]
    Damaged(String),
    /// A write or sync the filesystem refused (it is full, over a quota, or the device
    /// failed), or any write after one: the engine takes no write until it is opened again
    /// (see `storage::space`). `unwritten` says the refused write is certainly not on disk
    /// (refused before its journal entry was whole); a failed sync may have left it there.
    #[error("writing to the disk failed: {reason}")]
    WriteFailed { reason: String, unwritten: bool },
    /// The data directory is stamped for another store (`recovery::DirStamp`).
    #[error("{0}")]
    OtherStore(String),
}

/// Changes that reach the disk together, atomically, in one journal write.
#[derive(Debug, Default)]
pub struct Batch<'a> {
    /// Keys and their packed versions.
    pub puts: Vec<(&'a str, &'a [u8])>,
    pub removes: Vec<&'a str>,
    /// Named metadata blobs (the replica state, the shard map).
    pub meta: Vec<(&'a str, &'a [u8])>,
}

impl Batch<'_> {
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.removes.is_empty() && self.meta.is_empty()
    }
}

/// Durable key-value storage as the store needs it: one version per key, a few named
/// metadata blobs, and a scan at start.
pub trait Backend: Send + Sync {
    /// Applies every change of `batch`, or none; the batch is in the journal (handed to the
    /// operating system) when this returns.
    fn write(&self, batch: &Batch<'_>) -> Result<(), StorageError>;
    /// The packed version stored for `key`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Calls `visit` with every stored key and version.
    fn scan(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StorageError>;
    /// Calls `visit` with the stored keys and versions from `start` on, in key order, until
    /// `visit` returns false: one page of a full copy or of a listing.
    fn scan_from(
        &self,
        start: Bound<&str>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError>;
    /// Makes everything written so far survive a power cut (not only a crash).
    fn sync(&self) -> Result<(), StorageError>;

    /// How many times [`Backend::sync`] has gone to the device (a sync that found
    /// everything already synced does not count).
    fn syncs(&self) -> u64 {
        0
    }

    fn put(&self, key: &str, version: &[u8]) -> Result<(), StorageError> {
        self.write(&Batch {
            puts: vec![(key, version)],
            ..Batch::default()
        })
    }

    fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        self.write(&Batch {
            meta: vec![(name, value)],
            ..Batch::default()
        })
    }
}

/// A backend in maps: for tests that restart a node without a disk.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    data: Mutex<BTreeMap<String, Vec<u8>>>,
    meta: Mutex<BTreeMap<String, Vec<u8>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Backend for MemoryBackend {
    fn write(&self, batch: &Batch<'_>) -> Result<(), StorageError> {
        let mut data = lock(&self.data);
        for (key, version) in &batch.puts {
            data.insert((*key).to_owned(), version.to_vec());
        }
        for key in &batch.removes {
            data.remove(*key);
        }
        let mut meta = lock(&self.meta);
        for (name, value) in &batch.meta {
            meta.insert((*name).to_owned(), value.to_vec());
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(lock(&self.data).get(key).cloned())
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(lock(&self.meta).get(name).cloned())
    }

    fn scan(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StorageError> {
        for (key, version) in lock(&self.data).iter() {
            visit(key.as_bytes(), version);
        }
        Ok(())
    }

    fn scan_from(
        &self,
        start: Bound<&str>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let data = lock(&self.data);
        let start = start.map(str::to_owned);
        for (key, version) in data.range((start, Bound::Unbounded)) {
            if !visit(key.as_bytes(), version) {
                break;
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }
}
