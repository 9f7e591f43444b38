//! Messages between nodes: JSON bodies of relay-channel calls ([`crate::internal`]), each
//! named by its [`Rpc`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::causal::VectorClock;
use crate::shard::ShardMap;
use crate::storage::Record;
use crate::NodeId;

/// The calls nodes make to each other; the name travels in the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// A push of an origin's writes ([`ReplicateBatch`] -> [`ReplicateAck`]).
    Replicate,
    /// A pull or a page of a full copy ([`SyncRequest`] -> [`SyncResponse`]).
    Sync,
    /// Records handed over outside the causal streams ([`Absorb`] -> [`Done`]).
    Absorb,
    /// A newer shard map ([`MapMessage`] -> [`Done`]).
    Map,
    /// Catch up with the shard before an add-member commits ([`EpochMessage`] -> [`KeyCount`]).
    CatchUp,
    /// The reshard phases ([`MapMessage`] or [`EpochMessage`] -> [`Done`]).
    Prepare,
    Transfer,
    Commit,
    Abort,
    /// A shard's live key count (`{"shard": id}` -> [`KeyCount`]).
    KeyCount,
    /// An administrative view change ([`ViewChange`] -> [`Done`]).
    View,
    /// One shard's page of a key listing ([`ListRequest`] -> [`ListPage`]).
    ListKeys,
    /// A linearizable operation's query of a member's version ([`LinQuery`] -> [`LinVersion`]).
    LinQuery,
    /// A linearizable operation's store of a version ([`LinStore`] -> [`LinVersion`]).
    LinStore,
}

impl Rpc {
    pub const ALL: [Rpc; 14] = [
        Rpc::Replicate,
        Rpc::Sync,
        Rpc::Absorb,
        Rpc::Map,
        Rpc::CatchUp,
        Rpc::Prepare,
        Rpc::Transfer,
        Rpc::Commit,
        Rpc::Abort,
        Rpc::KeyCount,
        Rpc::View,
        Rpc::ListKeys,
        Rpc::LinQuery,
        Rpc::LinStore,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rpc::Replicate => "replicate",
            Rpc::Sync => "sync",
            Rpc::Absorb => "absorb",
            Rpc::Map => "map",
            Rpc::CatchUp => "catch-up",
            Rpc::Prepare => "reshard/prepare",
            Rpc::Transfer => "reshard/transfer",
            Rpc::Commit => "reshard/commit",
            Rpc::Abort => "reshard/abort",
            Rpc::KeyCount => "key-count",
            Rpc::View => "view",
            Rpc::ListKeys => "list-keys",
            Rpc::LinQuery => "lin-query",
            Rpc::LinStore => "lin-store",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl std::fmt::Display for Rpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a node holds: every key it stores, those alive, and the deleted ones it still keeps
/// as tombstones (answered by `GET /kvs/storage`, for operators and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageStats {
    pub keys: usize,
    pub live: usize,
    pub tombstones: usize,
}

/// A push of an origin's consecutive writes.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplicateBatch {
    pub origin: NodeId,
    pub era: u64,
    pub records: Vec<Arc<Record>>,
}

/// How far the receiver has applied the origin's writes; the pusher resumes from there.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplicateAck {
    pub era: u64,
    pub applied: u64,
    /// Some write could not be applied yet (a gap or a missing dependency).
    pub blocked: bool,
}

/// A pull: "send me what I lack". `full` asks for every key of the shard: in pages of at
/// most [`COPY_PAGE_RECORDS`] read from the engine in key order, the first after none and
/// each next one `after` the last key of the one before; a node without an engine (in
/// memory) answers the whole shard at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncRequest {
    pub era: u64,
    pub applied: VectorClock,
    pub full: bool,
    #[serde(default)]
    pub after: Option<String>,
}

/// Records in one page of a full copy: about 3 MB of JSON with three-node tokens, against
/// about 250 MB for a million keys in one body.
pub const COPY_PAGE_RECORDS: usize = 10_000;

/// The answer to a pull. `applied` was read before `records` were collected, so the records
/// include at least every write `applied` covers.
#[derive(Debug, Serialize, Deserialize)]
pub struct SyncResponse {
    pub epoch: u64,
    pub era: u64,
    pub applied: VectorClock,
    pub lamport: u64,
    pub records: Vec<Record>,
    /// Where the next page of a full copy starts; `None` on the last (or only) one.
    #[serde(default)]
    pub next: Option<String>,
}

/// Records handed over outside the causal streams (reshard transfers, hand-offs).
#[derive(Debug, Serialize, Deserialize)]
pub struct Absorb {
    pub records: Vec<Record>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MapMessage {
    pub map: ShardMap,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EpochMessage {
    pub epoch: u64,
    /// The nodes taking part in a reshard (which of them hold what).
    #[serde(default)]
    pub participants: Vec<NodeId>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KeyCount {
    pub shard: u32,
    pub count: usize,
}

/// The most keys one page of a listing holds, whatever the client asks for.
pub const MAX_LIST_LIMIT: usize = 1000;

/// A page of the keys of the receiver's shard, for a listing gathered from every shard
/// (`GET /key-value-store?prefix&after&limit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    /// The asking node's map epoch: the receiver answers under this map or a newer one.
    pub epoch: u64,
    /// The client's causal-metadata token ("" for none): the page includes every write of
    /// the receiver's shard it depends on.
    pub deps: String,
    pub prefix: String,
    pub after: Option<String>,
    pub limit: usize,
    /// How long the asking node waits, in milliseconds.
    pub budget_ms: u32,
}

/// One shard's page: its keys in order, and where its scan stopped (`None`: no more keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPage {
    /// The map epoch the page was gathered under.
    pub epoch: u64,
    pub keys: Vec<String>,
    pub stop: Option<String>,
}

/// A linearizable operation asks a member of the key's shard for its version of the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinQuery {
    /// The coordinator's map epoch: the member answers under it or says its own.
    pub epoch: u64,
    pub key: String,
    pub budget_ms: u32,
}

/// Linearizable operations ask a member to hold versions (a newer one stays): one or many
/// writes' (see `peer::combine`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinStore {
    pub epoch: u64,
    pub records: Vec<Record>,
    pub budget_ms: u32,
}

/// A member's answer: the epoch it answered under (another than asked: not counted), and
/// its version of the key for a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinVersion {
    pub epoch: u64,
    pub entry: Option<crate::storage::Entry>,
}

/// An administrative view change relayed to the other nodes.
#[derive(Debug, Serialize, Deserialize)]
pub struct ViewChange {
    pub add: bool,
    /// Unvouched at the receiver too (see `identity::Source`): a client's view change must
    /// not vouch for a name at the nodes it reaches through this one.
    #[serde(deserialize_with = "crate::identity::unvouched")]
    pub node: NodeId,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Done {
    pub ok: bool,
}

impl Done {
    pub fn yes() -> Self {
        Self { ok: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_has_a_name_of_its_own() {
        for rpc in Rpc::ALL {
            assert_eq!(Rpc::from_name(rpc.name()), Some(rpc));
        }
        assert_eq!(Rpc::from_name("/internal/absorb"), None);
    }

    #[test]
    fn clocks_travel_as_json_objects_keyed_by_address() {
        let req = SyncRequest {
            era: 1,
            applied: [("127.0.0.2:9000".parse().unwrap(), 3)]
                .into_iter()
                .collect(),
            full: false,
            after: None,
        };
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains("\"127.0.0.2:9000\":3"), "{json}");
        let back: SyncRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back.applied, req.applied);
    }
}
