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

/// A key with its entry, as replicated and transferred between nodes. (Not
/// `#[serde(flatten)]`: flattening makes serde buffer every record on the way in and out,
/// which showed as 7-8% of a replica's CPU under writes.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    pub entry: Entry,
}

/// The store keeps each version packed into one heap block (see [`packed`]): a million keys
/// then cost one small table slot and two allocations each, instead of a 128-byte slot and
/// four allocations.
#[derive(Debug, Default)]
pub struct Store {
    entries: DashMap<Box<str>, Box<[u8]>>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.entries
            .get(key)
            .and_then(|e| packed::unpack(e.value()))
    }

    pub fn is_live(&self, key: &str) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| packed::is_live(e.value()))
    }

    /// Keeps whichever of the stored and the given entry has the larger stamp.
    /// Returns true when `entry` was stored.
    pub fn merge(&self, key: &str, entry: Entry) -> bool {
        let newer = |current: &[u8]| packed::stamp(current).is_none_or(|s| entry.stamp > s);
        if let Some(mut current) = self.entries.get_mut(key) {
            if !newer(current.value()) {
                return false;
            }
            *current = packed::pack(&entry);
            return true;
        }
        // Another thread may have inserted meanwhile: settle it under the entry's lock.
        match self.entries.entry(key.into()) {
            dashmap::Entry::Occupied(mut slot) => {
                if !newer(slot.get()) {
                    return false;
                }
                slot.insert(packed::pack(&entry));
            }
            dashmap::Entry::Vacant(slot) => {
                slot.insert(packed::pack(&entry));
            }
        }
        true
    }

    /// The number of live (not deleted) keys among those `owned` says belong here.
    pub fn live_count(&self, owned: impl Fn(&str) -> bool) -> usize {
        self.entries
            .iter()
            .filter(|e| packed::is_live(e.value()) && owned(e.key()))
            .count()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every record whose key and stamp `select` accepts.
    pub fn records_where(&self, select: impl Fn(&str, &Stamp) -> bool) -> Vec<Record> {
        self.entries
            .iter()
            .filter(|e| packed::stamp(e.value()).is_some_and(|s| select(e.key(), &s)))
            .filter_map(|e| {
                Some(Record {
                    key: e.key().to_string(),
                    entry: packed::unpack(e.value())?,
                })
            })
            .collect()
    }

    /// The records written in `era` that `seen` does not cover: what a peer that has applied
    /// `seen` lacks of this node's data.
    pub fn delta(&self, era: u64, seen: &VectorClock) -> Vec<Record> {
        self.records_where(|_, s| s.era == era && s.seq > seen.get(&s.origin))
    }

    /// Drops every key `keep` refuses (keys that moved to another shard).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }
}

/// One version of a key in a single allocation:
/// `[live u8][era u64][lamport u64][seq u64][origin][metadata len u16][metadata][value]`,
/// integers little-endian, origin in the shared compact form (`codec`).
mod packed {
    use super::Entry;
    use crate::causal::Stamp;
    use crate::codec::{put_addr, read_addr};

    pub fn pack(entry: &Entry) -> Box<[u8]> {
        let value = entry.value.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(48 + entry.metadata.len() + value.len());
        out.push(u8::from(entry.value.is_some()));
        out.extend_from_slice(&entry.stamp.era.to_le_bytes());
        out.extend_from_slice(&entry.stamp.lamport.to_le_bytes());
        out.extend_from_slice(&entry.stamp.seq.to_le_bytes());
        put_addr(&mut out, &entry.stamp.origin);
        // Tokens name at most a few thousand nodes, far below 64 KiB.
        let meta = entry.metadata.as_bytes();
        let meta = &meta[..meta.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(meta.len() as u16).to_le_bytes());
        out.extend_from_slice(meta);
        out.extend_from_slice(value.as_bytes());
        out.into_boxed_slice()
    }

    pub fn is_live(bytes: &[u8]) -> bool {
        bytes.first() == Some(&1)
    }

    fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    }

    /// The stamp, and where the metadata length starts.
    fn header(bytes: &[u8]) -> Option<(Stamp, usize)> {
        let (era, lamport, seq) = (u64_at(bytes, 1)?, u64_at(bytes, 9)?, u64_at(bytes, 17)?);
        let (origin, used) = read_addr(bytes.get(25..)?)?;
        let stamp = Stamp {
            era,
            lamport,
            origin,
            seq,
        };
        Some((stamp, 25 + used))
    }

    pub fn stamp(bytes: &[u8]) -> Option<Stamp> {
        header(bytes).map(|(stamp, _)| stamp)
    }

    pub fn unpack(bytes: &[u8]) -> Option<Entry> {
        let (stamp, at) = header(bytes)?;
        let meta_len = usize::from(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
        let meta_end = at + 2 + meta_len;
        let metadata = std::str::from_utf8(bytes.get(at + 2..meta_end)?)
            .ok()?
            .to_owned();
        let value = std::str::from_utf8(bytes.get(meta_end..)?).ok()?.to_owned();
        Some(Entry {
            value: is_live(bytes).then_some(value),
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
    fn packing_round_trips_values_tombstones_and_both_address_kinds() {
        let mut e = entry(Some("välue"), 7, 3, 9);
        assert_eq!(packed::unpack(&packed::pack(&e)), Some(e.clone()));
        e.value = None;
        e.stamp.origin = "[2001:db8::1]:8080".parse().unwrap();
        e.metadata = "x".repeat(300);
        assert_eq!(packed::unpack(&packed::pack(&e)), Some(e.clone()));
        e.value = Some(String::new());
        assert_eq!(packed::unpack(&packed::pack(&e)), Some(e));
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
        let origin = "10.10.0.2:8080".parse().unwrap();
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
                    origin,
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
