//! Quorum writes: a write answered only once `w` members of its shard hold it.
//!
//! `w` is 1 by default (the coordinator's journal; the others get it by push within
//! milliseconds), `KVS_WRITE_QUORUM` sets a node's default, and a request can ask for its
//! own with a `"write-quorum"` field in its JSON body, next to `"causal-metadata"`: a body
//! field because the contract's requests carry everything else there and a forwarding node
//! relays the body unchanged to the owner, which decides. Each value is a number of members
//! or `"majority"` or `"all"` (of the shard's members at the time of the write).
//!
//! The coordinator counts itself and every peer whose push acknowledgement covers the
//! write. If `w` are not reached by the request's deadline, the answer is 503 saying the
//! write may have been applied: it is in the coordinator's journal and will reach the
//! others when they come back.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

/// How many members of a shard must hold a write before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteQuorum {
    Count(usize),
    Majority,
    All,
}

impl Default for WriteQuorum {
    fn default() -> Self {
        Self::Count(1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    #[error("write-quorum must be a positive number of members, \"majority\" or \"all\"")]
    Invalid,
    #[error("write-quorum {asked} exceeds the {members} members of the key's shard")]
    TooLarge { asked: usize, members: usize },
}

impl FromStr for WriteQuorum {
    type Err = QuorumError;

    fn from_str(text: &str) -> Result<Self, QuorumError> {
        match text.trim() {
            "majority" => Ok(Self::Majority),
            "all" => Ok(Self::All),
            n => match n.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Self::Count(n)),
                _ => Err(QuorumError::Invalid),
            },
        }
    }
}

impl fmt::Display for WriteQuorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Majority => f.write_str("majority"),
            Self::All => f.write_str("all"),
        }
    }
}

impl WriteQuorum {
    /// The `"write-quorum"` field of a request body: absent or null is `None`.
    pub fn from_json(value: Option<&Value>) -> Result<Option<Self>, QuorumError> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(n) if n >= 1 => Ok(Some(Self::Count(n as usize))),
                _ => Err(QuorumError::Invalid),
            },
            Some(Value::String(text)) => text.parse().map(Some),
            Some(_) => Err(QuorumError::Invalid),
        }
    }

    /// Members that must hold the write in a shard of `members`, the coordinator included.
    /// A node's default larger than a shard counts as all of it; a request's is an error.
    pub fn needed(self, members: usize, requested: bool) -> Result<usize, QuorumError> {
        let members = members.max(1);
        match self {
            Self::Count(asked) if asked > members && requested => {
                Err(QuorumError::TooLarge { asked, members })
            }
            Self::Count(asked) => Ok(asked.min(members)),
            Self::Majority => Ok(members / 2 + 1),
            Self::All => Ok(members),
        }
    }
}

/// Whether `needed` members hold write `seq` of era `era`: this node, plus every peer whose
/// acknowledgement (`(era, applied)` of this node's writes) covers it.
pub fn reached(
    acks: impl IntoIterator<Item = (u64, u64)>,
    era: u64,
    seq: u64,
    needed: usize,
) -> bool {
    let holders = 1 + acks
        .into_iter()
        .filter(|&(ack_era, applied)| ack_era == era && applied >= seq)
        .count();
    holders >= needed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_numbers_and_words() {
        assert_eq!("2".parse(), Ok(WriteQuorum::Count(2)));
        assert_eq!("majority".parse(), Ok(WriteQuorum::Majority));
        assert_eq!("all".parse(), Ok(WriteQuorum::All));
        assert_eq!("0".parse::<WriteQuorum>(), Err(QuorumError::Invalid));
        assert_eq!("two".parse::<WriteQuorum>(), Err(QuorumError::Invalid));
        assert_eq!(WriteQuorum::from_json(None), Ok(None));
        assert_eq!(
            WriteQuorum::from_json(Some(&json!(3))),
            Ok(Some(WriteQuorum::Count(3)))
        );
        assert_eq!(
            WriteQuorum::from_json(Some(&json!("all"))),
            Ok(Some(WriteQuorum::All))
        );
        for bad in [json!(0), json!(-1), json!(1.5), json!(true), json!([2])] {
            assert_eq!(
                WriteQuorum::from_json(Some(&bad)),
                Err(QuorumError::Invalid),
                "{bad}"
            );
        }
    }

    #[test]
    fn members_needed_per_shard_size() {
        assert_eq!(WriteQuorum::Majority.needed(3, true), Ok(2));
        assert_eq!(WriteQuorum::Majority.needed(4, true), Ok(3));
        assert_eq!(WriteQuorum::All.needed(3, true), Ok(3));
        assert_eq!(WriteQuorum::Count(2).needed(3, true), Ok(2));
        assert_eq!(
            WriteQuorum::Count(4).needed(3, true),
            Err(QuorumError::TooLarge {
                asked: 4,
                members: 3
            })
        );
        // A node's default is for shards of every size.
        assert_eq!(WriteQuorum::Count(4).needed(3, false), Ok(3));
    }

    #[test]
    fn counts_this_node_and_the_peers_that_acknowledged() {
        let acks = [(1, 10), (1, 4), (0, 99)];
        assert!(reached(acks, 1, 4, 3));
        assert!(!reached(acks, 1, 5, 3));
        assert!(reached(acks, 1, 5, 2));
        assert!(reached([], 1, 5, 1));
        // An acknowledgement of another era says nothing of this one's writes.
        assert!(!reached([(0, 99)], 1, 1, 2));
    }
}
