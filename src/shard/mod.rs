//! Sharding: the shard map (which nodes form which shard, by epoch) and key placement.

mod hashing;
mod map;

pub use hashing::{key_hash, shard_for_key};
pub use map::{MapError, PeerMap, ShardMap, MIN_REPLICAS};

/// Shard ids are small integers, shown to clients as strings.
pub type ShardId = u32;
