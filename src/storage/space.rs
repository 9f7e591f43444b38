//! Room on the data directory's filesystem, checked before a write reaches the engine.
//!
//! Why before: the engine (fjall) treats a failed journal or flush write as a hardware
//! failure and refuses every write after it until the database is reopened, so a node that
//! let a write meet a full disk could only stop (as kvs did: a 48 MB tmpfs stopped a node
//! after 33-36 PUTs of 1 MiB, and its replicas, which took the same writes, at the same
//! moment). So a node keeps a reserve free: below it, clients' writes are answered 507 and
//! only writes other nodes already acknowledged (replication, copies, transfers) are
//! stored; below half of it, nothing is written, and peers keep those writes until it has
//! room. The reserve must hold the engine's next memtable flush (a table as large as the
//! memtable) and its journal, so it is at least twice the memtable plus 16 MiB.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// What may be written now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Room {
    /// Below half the reserve: nothing.
    None,
    /// Below the reserve: only writes other nodes have acknowledged.
    Replication,
    /// Any write.
    Any,
}

impl Room {
    pub fn name(self) -> &'static str {
        match self {
            Room::None => "full",
            Room::Replication => "low",
            Room::Any => "ok",
        }
    }
}

/// The smallest reserve a node keeps, whatever it is configured with.
pub const MIN_RESERVE_BYTES: u64 = 16 << 20;

/// The reserve for an engine whose memtable holds `memtable_bytes`, at least `configured`.
pub fn reserve_for(memtable_bytes: u64, configured: u64) -> u64 {
    configured.max(2 * memtable_bytes + MIN_RESERVE_BYTES)
}

pub struct DiskSpace {
    path: PathBuf,
    reserve: u64,
    /// The free bytes the last check found, and the room it gave.
    free: AtomicU64,
    room: AtomicU8,
}

impl DiskSpace {
    pub fn new(path: &Path, reserve_bytes: u64) -> Self {
        let space = Self {
            path: path.to_owned(),
            reserve: reserve_bytes,
            free: AtomicU64::new(u64::MAX),
            room: AtomicU8::new(Room::Any as u8),
        };
        space.check();
        space
    }

    /// Looks at the filesystem now (one `statvfs`, about a microsecond) and says what may
    /// be written. A filesystem that cannot be asked counts as having room: the write
    /// itself then tells.
    pub fn check(&self) -> Room {
        let free = rustix::fs::statvfs(&self.path)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .unwrap_or(u64::MAX);
        let room = room_for(free, self.reserve);
        self.free.store(free, Ordering::Relaxed);
        let before = self.room.swap(room as u8, Ordering::AcqRel);
        if before != room as u8 {
            log::warn!(
                "data directory {}: {} MiB free, reserve {} MiB: {}",
                self.path.display(),
                free >> 20,
                self.reserve >> 20,
                match room {
                    Room::Any => "writes are taken again",
                    Room::Replication => "clients' writes are refused (507), replication goes on",
                    Room::None => "nothing is written until space is freed",
                }
            );
        }
        room
    }

    /// What the last check found: (free bytes, reserve bytes, room).
    pub fn last(&self) -> (u64, u64, Room) {
        let room = match self.room.load(Ordering::Acquire) {
            0 => Room::None,
            1 => Room::Replication,
            _ => Room::Any,
        };
        (self.free.load(Ordering::Relaxed), self.reserve, room)
    }
}

fn room_for(free: u64, reserve: u64) -> Room {
    if free >= reserve {
        Room::Any
    } else if free >= reserve / 2 {
        Room::Replication
    } else {
        Room::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_decides_who_may_write() {
        let reserve = 100 << 20;
        assert_eq!(room_for(200 << 20, reserve), Room::Any);
        assert_eq!(room_for(100 << 20, reserve), Room::Any);
        assert_eq!(room_for(99 << 20, reserve), Room::Replication);
        assert_eq!(room_for(50 << 20, reserve), Room::Replication);
        assert_eq!(room_for(49 << 20, reserve), Room::None);
        assert_eq!(reserve_for(32 << 20, 0), 80 << 20);
        assert_eq!(reserve_for(8 << 20, 256 << 20), 256 << 20);
    }

    #[test]
    fn a_real_directory_has_room() {
        let space = DiskSpace::new(&std::env::temp_dir(), 0);
        assert_eq!(space.check(), Room::Any);
        assert!(space.last().0 > 0);
    }
}
