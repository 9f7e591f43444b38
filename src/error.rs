//! The library's error type. The HTTP edge (`http::reply`) maps each variant to the contract's
//! status code and JSON body.

use crate::shard::ShardId;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KvsError {
    #[error("Key does not exist")]
    KeyNotFound,
    #[error("Key is too long")]
    KeyTooLong,
    #[error("Value is missing")]
    ValueMissing,
    #[error("Invalid causal metadata")]
    InvalidMetadata,
    /// A malformed request; the text says what is wrong.
    #[error("{0}")]
    BadRequest(String),
    #[error("Unable to satisfy request")]
    Unavailable,
    /// A forwarded write reached a member, whose answer was lost: it may have been applied.
    #[error(
        "Unable to satisfy request: the write may have been applied; read the key before retrying"
    )]
    WriteFateUnknown,
    #[error("Causal dependencies not satisfied")]
    DependenciesMissing,
    #[error("Shard ID does not exist")]
    UnknownShard,
    #[error("Node is not a member of any shard")]
    NotAMember,
    #[error("Not enough nodes to provide fault-tolerance with the given shard count!")]
    NotEnoughNodes,
    #[error("Socket address already exists in the view")]
    AlreadyInView,
    #[error("Socket address does not exist in the view")]
    NotInView,
    /// Another administrative change is under way, or won a race with this one.
    #[error("{0}")]
    Conflict(String),
    /// An administrative change without the store's admin token (`KVS_ADMIN_TOKEN`).
    #[error("Admin token required: send Authorization: Bearer <token>")]
    AdminTokenRequired,
    /// The node's disk is below its reserve (`storage::space`): it takes no client writes.
    #[error(
        "Insufficient storage: this node's disk is full; reads are served, and writes are taken again once space is freed"
    )]
    InsufficientStorage,
    /// The key belongs to another shard under this node's map: forward the request there.
    #[error("Key belongs to shard {0}")]
    NotOwner(ShardId),
}

pub type Result<T, E = KvsError> = std::result::Result<T, E>;

/// The operation a request performs, named in error bodies ("Error in PUT").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Put,
    Delete,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "GET",
            Op::Put => "PUT",
            Op::Delete => "DELETE",
        }
    }

    /// The operation of an HTTP method, by its name.
    pub fn from_method(method: &str) -> Option<Self> {
        match method {
            "GET" => Some(Op::Get),
            "PUT" => Some(Op::Put),
            "DELETE" => Some(Op::Delete),
            _ => None,
        }
    }
}
