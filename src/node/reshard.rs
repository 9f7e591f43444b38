//! A node's side of administrative changes: the gate that freezes client writes while a
//! reshard is prepared, the prepared reshard itself, and the lock that lets this node
//! coordinate one change at a time. The phases that use them are in [`crate::admin`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedRwLockWriteGuard, RwLock, RwLockReadGuard};
use tokio::time::Instant;

use crate::error::{KvsError, Result};
use crate::shard::ShardMap;

/// How long an administrative change waits for another coordinated here to finish.
const COORDINATE_WAIT: Duration = Duration::from_secs(30);

/// A reshard this node has prepared for: writes are frozen until commit or abort.
pub struct PendingReshard {
    pub map: ShardMap,
    pub since: Instant,
    pub _writes_frozen: OwnedRwLockWriteGuard<()>,
}

#[derive(Default)]
pub struct ReshardState {
    /// Client writes hold it shared; a prepared reshard holds it exclusively.
    write_gate: Arc<RwLock<()>>,
    pending: Mutex<Option<PendingReshard>>,
    /// Serializes administrative changes coordinated by this node.
    coordinating: tokio::sync::Mutex<()>,
}

impl ReshardState {
    fn pending(&self) -> MutexGuard<'_, Option<PendingReshard>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets a client write through unless a reshard has writes frozen, waiting until
    /// `until` at most; held for the write's duration.
    pub async fn admit_write(&self, until: Instant) -> Result<RwLockReadGuard<'_, ()>> {
        tokio::time::timeout_at(until, self.write_gate.read())
            .await
            .map_err(|_| KvsError::Unavailable)
    }

    /// Freezes client writes for a reshard; held until commit or abort.
    pub async fn freeze_writes(&self, timeout: Duration) -> Option<OwnedRwLockWriteGuard<()>> {
        tokio::time::timeout(timeout, self.write_gate.clone().write_owned())
            .await
            .ok()
    }

    /// Taken by the coordinator of an add-member or a reshard, for its whole course.
    pub async fn coordinate(&self) -> Result<tokio::sync::MutexGuard<'_, ()>> {
        tokio::time::timeout(COORDINATE_WAIT, self.coordinating.lock())
            .await
            .map_err(|_| KvsError::Conflict("Another shard change is in progress".into()))
    }

    pub fn pending_map(&self) -> Option<ShardMap> {
        self.pending().as_ref().map(|p| p.map.clone())
    }

    pub fn is_pending(&self) -> bool {
        self.pending().is_some()
    }

    pub fn set_pending(&self, pending: Option<PendingReshard>) {
        *self.pending() = pending;
    }

    pub fn take_pending(&self) -> Option<PendingReshard> {
        self.pending().take()
    }

    /// The epoch of a reshard prepared here longer than `limit` ago.
    pub fn pending_since(&self, limit: Duration) -> Option<u64> {
        self.pending()
            .as_ref()
            .filter(|p| p.since.elapsed() > limit)
            .map(|p| p.map.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_prepared_reshard_holds_writes_until_it_ends() {
        let state = ReshardState::default();
        let frozen = state.freeze_writes(Duration::from_secs(1)).await.unwrap();
        state.set_pending(Some(PendingReshard {
            map: ShardMap::none(),
            since: Instant::now(),
            _writes_frozen: frozen,
        }));
        let until = Instant::now() + Duration::from_secs(2);
        assert!(state.admit_write(until).await.is_err(), "frozen");
        assert_eq!(Instant::now(), until);
        assert!(state.pending_since(Duration::from_secs(1)).is_some());
        state.take_pending();
        let until = Instant::now() + Duration::from_secs(2);
        assert!(state.admit_write(until).await.is_ok(), "thawed");
    }
}
