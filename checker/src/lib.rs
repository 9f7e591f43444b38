//! Checks a recorded kvs client history for violations of causal consistency.
//!
//! # What it decides
//!
//! A [`History`] is what the clients of a test observed: sessions issuing puts, deletes and gets
//! one at a time, each passing the metadata of every answer on to its next request, plus reads of
//! every key on every node once faults were healed ([`FinalRead`]). Every written value is unique.
//! [`check`] decides whether some causally consistent store could have produced what the clients
//! saw, and if not, reports each [`Anomaly`] with the ops involved:
//!
//! - `never_written`: a read returned a value no put of its key wrote;
//! - `duplicate_value`: two puts wrote the same value (the history is invalid; checking goes on);
//! - `cycle`: happens-before is not a partial order;
//! - `future_read`: a get returned a value whose put was sent after the get's answer arrived;
//! - `stale_read`: a read missed a write in its causal past (read-your-writes, monotonic reads
//!   and writes-follow-reads are all instances);
//! - `divergence`: final reads of a key disagree across nodes;
//! - `lost_write`: a final read shows that an acknowledged write was lost.
//!
//! # Happens-before
//!
//! past(o) holds o, the ops of o's session before it that were answered (status Ok or NotFound:
//! only those hand the client metadata), the put each get read from, and, transitively, their
//! pasts. A failed op has no effect, and an Unknown write constrains nothing unless some read
//! returned its value; an Unknown delete cannot be seen by a read, so it only ever explains an
//! absence.
//!
//! # How
//!
//! 1. Index the history: sessions and positions, keys, the put behind each value read, the
//!    Unknown puts that were observed, and per key and session the writes in session order.
//! 2. Give every op a vector clock (per session, the longest prefix of its answered ops in the
//!    past) in a topological order of the session and reads-from edges. If there is none, report
//!    one cycle and leave the ops on or after it unchecked. An observed Unknown put is in an op's
//!    past exactly when one of the gets that returned it is, so the clocks of those gets answer
//!    for it and it needs no entry of its own.
//! 3. For each read, the maximal writes of its key in its past are among, per session, the last
//!    write of the key in the past (a binary search) and the observed Unknown puts read since.
//!    A value is stale when one of those writes follows the put it returned; an absence is stale
//!    when no source of absence is admissible: the initial state (only if no write of the key is
//!    in the past), or a delete that is not after the read and that no write in its past follows.
//!    That is O(sessions × log n) per read, plus a scan of the key's deletes for a read of absence
//!    that no delete in its past explains.
//! 4. Final reads are reads whose past holds every acknowledged write and observed Unknown put:
//!    stale there means a write was lost. They must also agree across nodes.

mod check;
mod hb;
mod history;
mod index;
pub mod linear;
mod report;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use check::check;
pub use history::{load, FinalRead, History, Kind, LoadError, Op, Status};
pub use report::{Anomaly, AnomalyKind, Report, Stats};
