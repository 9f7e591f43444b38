//! Causality: vector clocks, the client-visible metadata token, and the replica state machine
//! that decides when a write or read may proceed.

mod clock;
mod metadata;
mod replica;

pub use clock::VectorClock;
pub use metadata::{key_tokens_with, CausalMetadata, InvalidMetadata, TokenKey};
pub use replica::{Admission, Readiness, Replica, Stamp, MAX_COUNTER};
