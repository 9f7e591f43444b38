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
//!
//! What a look cannot see: a quota (EDQUOT) and a failing device (EIO), or a disk filled
//! by someone else between two looks. A write that meets one [`fails`](DiskSpace::fail) the
//! disk: from then on nothing is written (the engine would refuse it anyway), clients'
//! writes are answered 507, and reads go on from what is on disk. Once a probe of the
//! filesystem (`disk::probe`: the reserve allocated, a block written and synced) succeeds,
//! the node restarts itself in place and opens the engine again, as after a crash.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// How long a look at the filesystem stands for writes while there is room: a `statvfs`
/// per write would cost a node writing 30,000 keys a second a few percent of a core, and
/// what 10 ms of writes can add fits many times over in the reserve's upper half (at least
/// 8 MiB). Once below the reserve, every write looks again.
const RECHECK_AFTER: Duration = Duration::from_millis(10);

/// What may be written now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Room {
    /// A write failed (see the module's documentation): nothing, until the node restarts.
    Failed,
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
            Room::Failed => "failed",
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
    /// When the last check was made, in microseconds since `born`.
    checked_us: AtomicU64,
    born: Instant,
    /// Why a write failed, once one has (see the module's documentation).
    failure: std::sync::Mutex<Option<String>>,
}

impl DiskSpace {
    pub fn new(path: &Path, reserve_bytes: u64) -> Self {
        let space = Self {
            path: path.to_owned(),
            reserve: reserve_bytes,
            free: AtomicU64::new(u64::MAX),
            room: AtomicU8::new(Room::Any as u8),
            checked_us: AtomicU64::new(0),
            born: Instant::now(),
            failure: std::sync::Mutex::new(None),
        };
        space.look();
        space
    }

    /// What may be written now: the last look while it says there is room and is at most
    /// [`RECHECK_AFTER`] old, else a new look.
    pub fn check(&self) -> Room {
        let (_, _, room) = self.last();
        if room == Room::Failed {
            return room;
        }
        let now_us = self.born.elapsed().as_micros() as u64;
        let age = now_us.saturating_sub(self.checked_us.load(Ordering::Relaxed));
        if room == Room::Any && age < RECHECK_AFTER.as_micros() as u64 {
            return room;
        }
        self.look()
    }

    /// Looks at the filesystem now (one `statvfs`) and says what may be written. A
    /// filesystem that cannot be asked counts as having room: the write itself then tells.
    fn look(&self) -> Room {
        self.checked_us
            .store(self.born.elapsed().as_micros() as u64, Ordering::Relaxed);
        let free = free_bytes(&self.path).unwrap_or(u64::MAX);
        let room = room_for(free, self.reserve);
        self.free.store(free, Ordering::Relaxed);
        // A failed disk stays failed (a look that raced with the failure must not undo it).
        let swapped = self
            .room
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |before| {
                (before != Room::Failed as u8).then_some(room as u8)
            });
        let before = match swapped {
            Ok(before) => before,
            Err(_) => return Room::Failed,
        };
        if before != room as u8 {
            log::warn!(
                "data directory {}: {} MiB free, reserve {} MiB: {}",
                self.path.display(),
                free >> 20,
                self.reserve >> 20,
                match room {
                    Room::Any => "writes are taken again",
                    Room::Replication => "clients' writes are refused (507), replication goes on",
                    Room::None | Room::Failed => "nothing is written until space is freed",
                }
            );
        }
        room
    }

    /// Marks the disk failed by a write that met `reason`; true the first time.
    pub fn fail(&self, reason: &str) -> bool {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        self.room.store(Room::Failed as u8, Ordering::Release);
        if failure.is_some() {
            return false;
        }
        log::error!(
            "data directory {}: a write failed ({reason}): nothing is written, clients' writes \
             are refused (507) and reads served from disk until the disk takes writes again; \
             then this node restarts itself",
            self.path.display()
        );
        *failure = Some(reason.to_owned());
        true
    }

    /// Why a write failed, if one has.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the filesystem takes the reserve and a synced block now, and has the reserve
    /// free (see `disk::probe`).
    pub fn takes_writes_again(&self) -> Result<(), String> {
        super::disk::probe(&self.path, self.reserve)?;
        let free = free_bytes(&self.path).map_err(|e| e.to_string())?;
        match room_for(free, self.reserve) {
            Room::Any => Ok(()),
            _ => Err(format!("{} MiB free, below the reserve", free >> 20)),
        }
    }

    /// What the last check found: (free bytes, reserve bytes, room).
    pub fn last(&self) -> (u64, u64, Room) {
        let room = match self.room.load(Ordering::Acquire) {
            0 => Room::Failed,
            1 => Room::None,
            2 => Room::Replication,
            _ => Room::Any,
        };
        (self.free.load(Ordering::Relaxed), self.reserve, room)
    }
}

/// The bytes an unprivileged user may still write on the filesystem under `path`.
fn free_bytes(path: &Path) -> rustix::io::Result<u64> {
    rustix::fs::statvfs(path).map(|s| s.f_bavail.saturating_mul(s.f_frsize))
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

    /// While there is room, a look stands for 10 ms; below the reserve every check looks.
    #[test]
    fn a_look_stands_only_while_there_is_room() {
        let space = DiskSpace::new(&std::env::temp_dir(), 0);
        let first = space.checked_us.load(Ordering::Relaxed);
        space.check();
        assert_eq!(
            space.checked_us.load(Ordering::Relaxed),
            first,
            "looked again at once"
        );
        let full = DiskSpace::new(&std::env::temp_dir(), u64::MAX);
        assert_eq!(full.check(), Room::None);
        std::thread::sleep(Duration::from_millis(1));
        let before = full.checked_us.load(Ordering::Relaxed);
        full.check();
        assert!(
            full.checked_us.load(Ordering::Relaxed) > before,
            "a full disk is looked at again"
        );
    }

    #[test]
    fn a_real_directory_has_room() {
        let space = DiskSpace::new(&std::env::temp_dir(), 0);
        assert_eq!(space.check(), Room::Any);
        assert!(space.last().0 > 0);
    }
}
