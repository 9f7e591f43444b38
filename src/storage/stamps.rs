//! A bounded cache of the stamps of recently written keys, in front of the engine.
//!
//! Every write compares its stamp with the stored version's (last writer wins), and a
//! client's write also asks whether the key is live (201 or 200). With the versions only in
//! the engine, those were point reads of fjall's memtable: 16.7% of a node's CPU under PUTs,
//! more than the inserts themselves (11.6%; `bench/profile.sh kvs3-put 6`). Writes go to the
//! same keys again and again, so a small cache answers almost all of them.
//!
//! The cache is direct-mapped (a key has one slot, chosen by its hash; a colliding key
//! replaces it) and written through: every change of a stored version passes through
//! [`StampCache::put`] or [`StampCache::forget`], so a key the cache holds is stored with
//! exactly that stamp. Callers serialize the changes (the node's replica lock), as they
//! must for the comparison anyway.

use std::hash::BuildHasher;
use std::sync::Mutex;

use crate::causal::Stamp;

/// Slots of the cache: about 64 bytes each plus the key, 5-8 MB in all.
pub const STAMP_CACHE_SLOTS: usize = 1 << 16;

#[derive(Debug, Clone)]
struct Known {
    key: Box<str>,
    stamp: Stamp,
    live: bool,
}

pub struct StampCache {
    slots: Mutex<Vec<Option<Known>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for StampCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StampCache").finish_non_exhaustive()
    }
}

impl StampCache {
    pub fn new(slots: usize) -> Self {
        Self {
            slots: Mutex::new(vec![None; slots.max(1)]),
            hasher: Default::default(),
        }
    }

    fn slot(&self, key: &str, len: usize) -> usize {
        (self.hasher.hash_one(key) % len as u64) as usize
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Option<Known>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored stamp of `key` and whether it is live, if the cache knows them.
    pub fn get(&self, key: &str) -> Option<(Stamp, bool)> {
        let slots = self.slots();
        let known = slots[self.slot(key, slots.len())].as_ref()?;
        (*known.key == *key).then_some((known.stamp.clone(), known.live))
    }

    /// Records that `key` is now stored with `stamp`.
    pub fn put(&self, key: &str, stamp: Stamp, live: bool) {
        let mut slots = self.slots();
        let i = self.slot(key, slots.len());
        slots[i] = Some(Known {
            key: key.into(),
            stamp,
            live,
        });
    }

    /// Records that `key` is no longer stored (or that its version is unknown).
    pub fn forget(&self, key: &str) {
        let mut slots = self.slots();
        let i = self.slot(key, slots.len());
        if slots[i].as_ref().is_some_and(|k| *k.key == *key) {
            slots[i] = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(lamport: u64) -> Stamp {
        Stamp {
            era: 0,
            lamport,
            origin: "10.0.0.1:8080".parse().unwrap(),
            seq: lamport,
        }
    }

    #[test]
    fn a_key_is_known_until_replaced_by_a_colliding_one_or_forgotten() {
        let cache = StampCache::new(1);
        assert_eq!(cache.get("a"), None);
        cache.put("a", stamp(1), true);
        assert_eq!(cache.get("a"), Some((stamp(1), true)));
        cache.put("a", stamp(2), false);
        assert_eq!(cache.get("a"), Some((stamp(2), false)));
        // One slot: "b" takes it, and "a" is unknown again (not wrongly known).
        cache.put("b", stamp(3), true);
        assert_eq!(cache.get("a"), None);
        cache.forget("a");
        assert_eq!(
            cache.get("b"),
            Some((stamp(3), true)),
            "forgetting another key"
        );
        cache.forget("b");
        assert_eq!(cache.get("b"), None);
    }
}
