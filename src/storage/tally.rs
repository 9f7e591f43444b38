//! Exact counts of what a store holds, kept as versions are written and removed, so that no
//! count anyone asks for (a shard's key count, `/kvs/storage`, `/kvs/status`, a metrics
//! scrape) costs a scan. Counting 1,000,000 keys by a scan of the engine took a few hundred
//! milliseconds of a core; a client asking for a shard's key count in a loop made every
//! node of the shard scan flat out.
//!
//! Every change is made by a caller that holds the node's replica lock (writes, purges,
//! drops of foreign keys) or that owns the store alone (recovery, tests), so the counts
//! move in the order the changes reach the store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// Whether this node's shard owns a key (under the map it holds now).
pub type Owner = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A key's state: absent (`None`), or stored live (`Some(true)`) or as a tombstone.
pub type KeyState = Option<bool>;

pub struct Tally {
    keys: AtomicUsize,
    tombstones: AtomicUsize,
    /// Live keys that `owner` accepts.
    owned_live: AtomicUsize,
    owner: RwLock<Owner>,
}

impl Default for Tally {
    fn default() -> Self {
        Self::new(0, 0)
    }
}

impl Tally {
    /// Counts for a store that holds `keys` keys, `tombstones` of them tombstones, and owns
    /// none of them until [`Tally::own`] says which.
    pub fn new(keys: usize, tombstones: usize) -> Self {
        debug_assert!(tombstones <= keys);
        Self {
            keys: AtomicUsize::new(keys),
            tombstones: AtomicUsize::new(tombstones),
            owned_live: AtomicUsize::new(0),
            owner: RwLock::new(Arc::new(|_| false)),
        }
    }

    pub fn keys(&self) -> usize {
        self.keys.load(Ordering::Acquire)
    }

    pub fn tombstones(&self) -> usize {
        self.tombstones.load(Ordering::Acquire)
    }

    pub fn owned_live(&self) -> usize {
        self.owned_live.load(Ordering::Acquire)
    }

    /// Takes `owner` as the ownership rule from now on, with `owned_live` live keys that it
    /// accepts (counted by the caller, which holds the replica lock so that no write lands
    /// between its count and this).
    pub fn own(&self, owner: Owner, owned_live: usize) {
        *self.owner.write().unwrap_or_else(|p| p.into_inner()) = owner;
        self.owned_live.store(owned_live, Ordering::Release);
    }

    pub fn owner(&self) -> Owner {
        self.owner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts one key's change from `before` to `after`.
    pub fn change(&self, key: &str, before: KeyState, after: KeyState) {
        if before == after {
            return;
        }
        let owned = (before == Some(true) || after == Some(true)) && self.owner()(key);
        adjust(&self.keys, before.is_some(), after.is_some());
        adjust(
            &self.tombstones,
            before == Some(false),
            after == Some(false),
        );
        if owned {
            adjust(&self.owned_live, before == Some(true), after == Some(true));
        }
    }
}

/// Lowers `count` by one when a state counted by it (`was`) is gone, raises it when one
/// (`is`) appears.
fn adjust(count: &AtomicUsize, was: bool, is: bool) {
    match (was, is) {
        (true, false) => {
            let before = count.fetch_sub(1, Ordering::AcqRel);
            debug_assert!(before > 0, "a count went below zero");
        }
        (false, true) => {
            count.fetch_add(1, Ordering::AcqRel);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_s_changes_move_each_count_once() {
        let tally = Tally::new(0, 0);
        tally.own(Arc::new(|key| key.starts_with('m')), 0);
        tally.change("mine", None, Some(true));
        tally.change("other", None, Some(true));
        assert_eq!(
            (tally.keys(), tally.tombstones(), tally.owned_live()),
            (2, 0, 1)
        );
        tally.change("mine", Some(true), Some(false));
        assert_eq!(
            (tally.keys(), tally.tombstones(), tally.owned_live()),
            (2, 1, 0)
        );
        tally.change("mine", Some(false), None);
        tally.change("other", Some(true), None);
        assert_eq!(
            (tally.keys(), tally.tombstones(), tally.owned_live()),
            (0, 0, 0)
        );
    }
}
