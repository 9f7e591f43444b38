//! What a node starts from: its data, its replica state and its shard map, read back from
//! its data directory, or new.
//!
//! The rules, and why:
//! - A stored map wins over the one `SHARD_COUNT` and `VIEW` describe: after add-member or a
//!   reshard the stored map is the store's, and the start-up settings only describe the
//!   first one (as etcd's data directory wins over its `--initial-cluster`). A node that
//!   stored no map yet (it was waiting for add-member) takes the configured one.
//! - The applied clock is the persisted one, with this node's own entry raised to the
//!   highest sequence number found among its own writes on disk. A node's own writes are
//!   journaled without the state (writing it with each of them cost 9% of the CPU); every
//!   other change that could replace or remove one of them (replicated batches, pulled
//!   copies, reshard transfers, dropping moved keys) is journaled together with the state,
//!   whose own entry is then at least that write's. Either way the last dot issued is
//!   found, and never issued again. Other peers' entries may come back lower than they
//!   were; the node then pulls those writes again, and merging them is idempotent.
//! - A node whose state says it held its whole shard serves at once: everything it
//!   acknowledged is on its disk, and anti-entropy brings what its peers wrote meanwhile.
//!   If the map's era is newer than the state's (a crash between the two while starting a
//!   new era), the node starts that era empty and copies its shard, as after a reshard.

use std::sync::Arc;

use crate::causal::Replica;
use crate::shard::ShardMap;
use crate::storage::{Backend, ReplicaState, StorageError, Store};
use crate::NodeId;

/// Names of the metadata blobs beside the data.
pub const META_STATE: &str = "replica";
pub const META_MAP: &str = "map";
pub const META_STAMP: &str = "stamp";

/// Which store a data directory belongs to: the store's identity (`ShardMap::store`, a
/// digest of its first map) and a fingerprint of the cluster secret it was written under.
/// Written at every start; a node refuses to start on a directory stamped under another
/// secret, which is another store's (or a rotation, named by `KVS_CLUSTER_SECRET_PREVIOUS`).
/// A directory of a store formed from other settings is found by gossip instead: most
/// nodes of its stored map then gossip another store (`replication::pull`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirStamp {
    pub store: String,
    pub secret: String,
}

impl DirStamp {
    pub fn new(map: &ShardMap, secret: Option<&[u8]>) -> Self {
        Self {
            store: map.store.clone(),
            secret: secret_fingerprint(secret),
        }
    }

    /// Stamps `backend` for `map`'s store and `secret`, after checking that it is not
    /// stamped for another secret (other than `previous`, a secret being rotated away).
    pub fn check_and_stamp(
        backend: &dyn Backend,
        map: &ShardMap,
        secret: Option<&[u8]>,
        previous: Option<&[u8]>,
    ) -> Result<(), StorageError> {
        let now = Self::new(map, secret);
        let mut unchanged = false;
        if let Some(bytes) = backend.get_meta(META_STAMP)? {
            let stamped: DirStamp = serde_json::from_slice(&bytes).map_err(|e| {
                StorageError::Damaged(format!("the directory's stamp does not decode: {e}"))
            })?;
            let rotating = previous.is_some_and(|p| secret_fingerprint(Some(p)) == stamped.secret);
            // A first map from VIEW and SHARD_COUNT (none was stored) of another store than
            // the one this directory was last started in.
            let configured = map.epoch == 0 && !map.formed && !map.store.is_empty();
            if configured && !stamped.store.is_empty() && stamped.store != map.store {
                return Err(StorageError::OtherStore(format!(
                    "this data directory belongs to another store: it was stamped for store {}, \
                     and VIEW and SHARD_COUNT make this node start store {}; start it on an \
                     empty directory, or with the VIEW and SHARD_COUNT its store first had",
                    stamped.store, map.store
                )));
            }
            if stamped.secret != now.secret && !rotating {
                return Err(StorageError::OtherStore(format!(
                    "this data directory belongs to another store: it was stamped for store \
                     {} under {}, and this node runs {}; start it on an empty directory, or \
                     set KVS_CLUSTER_SECRET_PREVIOUS to the old secret when rotating it",
                    shown(&stamped.store),
                    described(&stamped.secret),
                    described(&now.secret)
                )));
            }
            // A start like the last one writes nothing.
            unchanged = stamped == now;
        }
        if unchanged {
            return Ok(());
        }
        let json = serde_json::to_vec(&now).unwrap_or_default();
        backend.put_meta(META_STAMP, &json)
    }
}

/// 64 bits of a keyed digest of the secret, in hex (`open` without one): enough to tell
/// secrets apart, too little to test guesses of a 16-byte secret against.
fn secret_fingerprint(secret: Option<&[u8]>) -> String {
    let Some(secret) = secret else {
        return "open".to_owned();
    };
    blake3::derive_key("kvs data directory stamp v1", secret)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn shown(store: &str) -> &str {
    if store.is_empty() {
        "(none yet)"
    } else {
        store
    }
}

fn described(fingerprint: &str) -> String {
    match fingerprint {
        "open" => "no cluster secret".to_owned(),
        f => format!("a cluster secret with fingerprint {f}"),
    }
}

pub struct Recovered {
    pub store: Store,
    pub map: ShardMap,
    pub replica: Replica,
    /// Whether the node holds its whole shard (see `Node::is_synced`).
    pub synced: bool,
    /// How many keys came back from disk.
    pub keys: usize,
}

impl Recovered {
    /// A node with nothing stored, in memory only.
    pub fn in_memory(me: NodeId, map: ShardMap) -> Self {
        Self {
            store: Store::new(),
            replica: Replica::new(me, map.era),
            map,
            synced: false,
            keys: 0,
        }
    }

    /// Reads back what `backend` holds. A fresh backend gives the same as a new node.
    pub fn from_backend(
        backend: Arc<dyn Backend>,
        me: NodeId,
        initial: ShardMap,
    ) -> Result<Self, StorageError> {
        let map = match backend.get_meta(META_MAP)? {
            None => initial,
            Some(bytes) => {
                let stored: ShardMap = serde_json::from_slice(&bytes).map_err(|e| {
                    StorageError::Damaged(format!("the stored shard map does not decode: {e}"))
                })?;
                if stored.shards.is_empty() {
                    initial
                } else {
                    stored
                }
            }
        };
        let state = match backend.get_meta(META_STATE)? {
            None => None,
            Some(bytes) => Some(ReplicaState::decode(&bytes).ok_or_else(|| {
                StorageError::Damaged("the stored replica state does not decode".into())
            })?),
        };
        let era = state.as_ref().map_or(map.era, |s| s.era);
        let (mut own_seq, mut lamport, mut keys) = (0, 0, 0);
        let store = Store::recover(backend, |stamp| {
            keys += 1;
            lamport = lamport.max(stamp.lamport);
            if stamp.origin == me && stamp.era == era {
                own_seq = own_seq.max(stamp.seq);
            }
        })?;
        let lamport = lamport.max(state.as_ref().map_or(0, |s| s.lamport));
        let replica_and_synced = state.filter(|s| s.era == map.era).map(|s| {
            let mut applied = s.applied;
            applied.set(me.clone(), applied.get(&me).max(own_seq));
            let replica = Replica::restore(me.clone(), s.era, applied, lamport);
            (replica, s.synced)
        });
        let (replica, synced) = replica_and_synced.unwrap_or_else(|| {
            let mut replica = Replica::new(me, map.era);
            // Lamport time carries on whatever the era, so later writes win over stored ones.
            replica.absorb(&Default::default(), lamport);
            (replica, false)
        });
        Ok(Self {
            store,
            map,
            replica,
            synced,
            keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::{CausalMetadata, Stamp};
    use crate::storage::{Entry, MemoryBackend};

    fn n(i: u8) -> NodeId {
        format!("10.0.0.{i}:8080").parse().unwrap()
    }

    fn map() -> ShardMap {
        ShardMap::initial(&[n(1), n(2)].into_iter().collect(), 1).unwrap()
    }

    fn entry(origin: NodeId, seq: u64, lamport: u64) -> Entry {
        Entry {
            value: Some(format!("v{seq}")),
            stamp: Stamp {
                era: 0,
                lamport,
                origin: origin.clone(),
                seq,
            },
            metadata: CausalMetadata::new(0, [(origin, seq)].into_iter().collect()).encode(),
        }
    }

    #[test]
    fn a_directory_stamped_under_another_secret_is_refused_unless_rotating() {
        let backend = MemoryBackend::default();
        let (one, two) = (
            b"secret one 0123456789".as_slice(),
            b"secret two 0123456789".as_slice(),
        );
        DirStamp::check_and_stamp(&backend, &map(), Some(one), None).unwrap();
        DirStamp::check_and_stamp(&backend, &map(), Some(one), None).unwrap();
        for (secret, previous) in [(Some(two), None), (None, None), (Some(two), Some(two))] {
            let refused = DirStamp::check_and_stamp(&backend, &map(), secret, previous);
            assert!(
                matches!(&refused, Err(StorageError::OtherStore(m)) if m.contains("another store") && !m.contains('\n')),
                "{refused:?}"
            );
        }
        DirStamp::check_and_stamp(&backend, &map(), Some(two), Some(one)).unwrap();
        DirStamp::check_and_stamp(&backend, &map(), Some(two), None).expect("stamped again");
        let stamp: DirStamp =
            serde_json::from_slice(&backend.get_meta(META_STAMP).unwrap().unwrap()).unwrap();
        assert_eq!(stamp.store, map().store);
        assert!(
            !stamp.secret.contains("secret"),
            "the secret is not written"
        );
    }

    #[test]
    fn a_fresh_backend_starts_like_a_new_node() {
        let backend = Arc::new(MemoryBackend::default());
        let r = Recovered::from_backend(backend, n(1), map()).unwrap();
        assert_eq!((r.keys, r.synced, r.replica.own_seq()), (0, false, 0));
        assert_eq!(r.map, map());
    }

    #[test]
    fn own_writes_on_disk_count_even_when_the_state_missed_them() {
        let backend = Arc::new(MemoryBackend::default());
        let state = ReplicaState {
            era: 0,
            lamport: 5,
            applied: [(n(1), 3), (n(2), 7)].into_iter().collect(),
            synced: true,
        };
        backend.put_meta(META_STATE, &state.encode()).unwrap();
        backend
            .put_meta(META_MAP, &serde_json::to_vec(&map()).unwrap())
            .unwrap();
        // Write 4 reached the disk; the state counting it did not.
        let store = Store::recover(backend.clone(), |_| {}).unwrap();
        let (a, b) = (entry(n(1), 4, 9), entry(n(2), 7, 6));
        store.write([("a", &a), ("b", &b)], &[]).unwrap();
        let r = Recovered::from_backend(backend, n(1), map()).unwrap();
        assert_eq!(r.replica.own_seq(), 4, "dot 4 is never issued again");
        assert_eq!(r.replica.applied().get(&n(2)), 7);
        assert_eq!(r.replica.lamport(), 9);
        assert!(r.synced);
        assert_eq!(r.keys, 2);
        assert_eq!(r.store.get("a").unwrap(), Some(entry(n(1), 4, 9)));
    }

    #[test]
    fn a_stored_map_wins_over_the_configured_one() {
        let backend = Arc::new(MemoryBackend::default());
        let later = map().with_member(0, n(3)).unwrap();
        backend
            .put_meta(META_MAP, &serde_json::to_vec(&later).unwrap())
            .unwrap();
        let r = Recovered::from_backend(backend.clone(), n(1), map()).unwrap();
        assert_eq!(r.map, later);
        // Even over a first map of other settings: the data directory is the store's.
        let other = ShardMap::initial(&[n(1), n(2), n(4), n(5)].into_iter().collect(), 2).unwrap();
        let r = Recovered::from_backend(backend, n(1), other).unwrap();
        assert_eq!(r.map, later);
    }

    #[test]
    fn a_node_that_stored_no_map_takes_the_configured_one() {
        let backend = Arc::new(MemoryBackend::default());
        backend
            .put_meta(META_MAP, &serde_json::to_vec(&ShardMap::none()).unwrap())
            .unwrap();
        let r = Recovered::from_backend(backend, n(1), map()).unwrap();
        assert_eq!(r.map, map());
    }

    #[test]
    fn a_state_of_an_older_era_than_the_map_starts_the_era_unsynced() {
        let backend = Arc::new(MemoryBackend::default());
        let mut newer = map();
        newer.era = 1;
        newer.epoch += 1;
        backend
            .put_meta(META_MAP, &serde_json::to_vec(&newer).unwrap())
            .unwrap();
        let state = ReplicaState {
            era: 0,
            lamport: 5,
            applied: [(n(1), 3)].into_iter().collect(),
            synced: true,
        };
        backend.put_meta(META_STATE, &state.encode()).unwrap();
        let r = Recovered::from_backend(backend, n(1), map()).unwrap();
        assert_eq!(
            (r.replica.era(), r.replica.own_seq(), r.synced),
            (1, 0, false)
        );
        assert_eq!(r.replica.lamport(), 5, "Lamport time carries on");
    }

    #[test]
    fn damaged_data_is_refused() {
        let backend = Arc::new(MemoryBackend::default());
        backend.put("k", b"\xff\x00garbage").unwrap();
        assert!(matches!(
            Recovered::from_backend(backend.clone(), n(1), map()),
            Err(StorageError::Damaged(_))
        ));
        let backend = Arc::new(MemoryBackend::default());
        backend.put_meta(META_STATE, b"\x09").unwrap();
        assert!(matches!(
            Recovered::from_backend(backend, n(1), map()),
            Err(StorageError::Damaged(_))
        ));
    }
}
