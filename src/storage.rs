//! In-memory storage: the latest version of every key this node holds, tombstones included.
//!
//! Writes are merged last-writer-wins by [`Stamp`], which is commutative and idempotent: a
//! replica can take the same write from a push, a pull and a reshard transfer in any order
//! and end up in the same state.

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::causal::{Stamp, VectorClock};

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

/// A key with its entry, as replicated and transferred between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    #[serde(flatten)]
    pub entry: Entry,
}

#[derive(Debug, Default)]
pub struct Store {
    entries: DashMap<String, Entry>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.entries.get(key).map(|e| e.clone())
    }

    pub fn is_live(&self, key: &str) -> bool {
        self.entries.get(key).is_some_and(|e| e.is_live())
    }

    /// Keeps whichever of the stored and the given entry has the larger stamp.
    /// Returns true when `entry` was stored.
    pub fn merge(&self, key: &str, entry: Entry) -> bool {
        match self.entries.get_mut(key) {
            Some(mut current) => {
                if entry.stamp > current.stamp {
                    *current = entry;
                    true
                } else {
                    false
                }
            }
            None => {
                // Another thread may have inserted meanwhile: settle it in the entry API.
                let mut slot = self.entries.entry(key.to_owned()).or_insert(entry.clone());
                if entry.stamp > slot.stamp {
                    *slot = entry;
                }
                true
            }
        }
    }

    /// The number of live (not deleted) keys among those `owned` says belong here.
    pub fn live_count(&self, owned: impl Fn(&str) -> bool) -> usize {
        self.entries
            .iter()
            .filter(|e| e.is_live() && owned(e.key()))
            .count()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every record `select` accepts.
    pub fn records_where(&self, select: impl Fn(&str, &Entry) -> bool) -> Vec<Record> {
        self.entries
            .iter()
            .filter(|e| select(e.key(), e.value()))
            .map(|e| Record {
                key: e.key().clone(),
                entry: e.value().clone(),
            })
            .collect()
    }

    /// The records written in `era` that `seen` does not cover: what a peer that has applied
    /// `seen` lacks of this node's data.
    pub fn delta(&self, era: u64, seen: &VectorClock) -> Vec<Record> {
        self.records_where(|_, e| e.stamp.era == era && e.stamp.seq > seen.get(&e.stamp.origin))
    }

    /// Drops every key `keep` refuses (keys that moved to another shard).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.entries.retain(|k, _| keep(k));
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
        assert_eq!(s1.get("k"), Some(b.clone()));
        assert_eq!(s2.get("k"), Some(b));
    }

    #[test]
    fn tombstones_win_over_older_values_and_do_not_count() {
        let s = Store::new();
        s.merge("k", entry(Some("v"), 1, 1, 1));
        s.merge("k", entry(None, 2, 1, 2));
        s.merge("k", entry(Some("v"), 1, 1, 1));
        assert!(!s.is_live("k"));
        assert_eq!(s.live_count(|_| true), 0);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn delta_lists_what_a_peer_has_not_seen() {
        let s = Store::new();
        s.merge("a", entry(Some("1"), 1, 1, 1));
        s.merge("b", entry(Some("2"), 2, 1, 2));
        s.merge("c", entry(Some("3"), 3, 2, 1));
        let seen: VectorClock = [("10.0.0.1:8080".parse().unwrap(), 1)]
            .into_iter()
            .collect();
        let mut keys: Vec<_> = s.delta(0, &seen).into_iter().map(|r| r.key).collect();
        keys.sort();
        assert_eq!(keys, ["b", "c"]);
        assert!(s.delta(1, &seen).is_empty(), "other eras are not deltas");
    }

    #[test]
    fn record_wire_form_is_flat() {
        let r = Record {
            key: "k".into(),
            entry: entry(Some("v"), 1, 1, 1),
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["key"], "k");
        assert_eq!(json["value"], "v");
        assert_eq!(serde_json::from_value::<Record>(json).unwrap(), r);
    }
}
