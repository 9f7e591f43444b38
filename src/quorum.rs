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

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use dashmap::DashMap;
use serde_json::Value;
use tokio::sync::watch;

use crate::error::KvsError;
use crate::NodeId;

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

/// How far each peer has acknowledged this node's writes, `(era, seq)`, and a signal at
/// every acknowledgement: what quorum writes, reshard flushes and the counter check wait on.
pub struct Acks {
    acks: DashMap<NodeId, (u64, u64)>,
    acked: watch::Sender<u64>,
}

impl Default for Acks {
    fn default() -> Self {
        Self {
            acks: DashMap::new(),
            acked: watch::channel(0).0,
        }
    }
}

impl Acks {
    /// Records that `peer` has applied this node's writes of `era` up to `applied`.
    pub fn note(&self, peer: NodeId, era: u64, applied: u64) {
        self.acks.insert(peer, (era, applied));
        self.acked.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn get(&self, peer: &NodeId) -> Option<(u64, u64)> {
        self.acks.get(peer).map(|a| *a)
    }

    /// Forgets every acknowledgement (a new era, or another shard).
    pub fn clear(&self) {
        self.acks.clear();
    }

    /// Changes at every acknowledgement.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.acked.subscribe()
    }

    /// Waits until `needed` members, this node and those of `peers()`, hold write `dot`, or
    /// until `until`.
    pub async fn await_quorum(
        &self,
        peers: impl Fn() -> BTreeSet<NodeId>,
        dot: (u64, u64),
        needed: usize,
        until: tokio::time::Instant,
    ) -> Result<(), KvsError> {
        let mut acked = self.subscribe();
        loop {
            let acks = peers()
                .iter()
                .filter_map(|p| self.get(p))
                .collect::<Vec<_>>();
            if reached(acks, dot.0, dot.1, needed) {
                return Ok(());
            }
            if tokio::time::timeout_at(until, acked.changed())
                .await
                .is_err()
            {
                return Err(KvsError::WriteFateUnknown);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test(start_paused = true)]
    async fn a_quorum_write_waits_for_acknowledgements_then_gives_up_at_its_deadline() {
        let acks = std::sync::Arc::new(Acks::default());
        let peers = || -> BTreeSet<NodeId> {
            ["10.0.0.2:8080", "10.0.0.3:8080"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect()
        };
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let noting = acks.clone();
        tokio::spawn(async move {
            noting.note("10.0.0.2:8080".parse().unwrap(), 1, 7);
        });
        assert!(acks.await_quorum(peers, (1, 7), 2, until).await.is_ok());
        let result = acks.await_quorum(peers, (1, 7), 3, until).await;
        assert!(matches!(result, Err(KvsError::WriteFateUnknown)));
        assert_eq!(tokio::time::Instant::now(), until);
    }

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
