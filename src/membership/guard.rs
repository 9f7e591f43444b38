//! What a gossip datagram may say before chitchat hears it: the checks that keep a
//! malformed or hostile datagram from panicking the gossip task, and the bounds on what
//! any peer can make a node hold.
//!
//! Chitchat 0.13 asserts where it should refuse. Found by hand-made datagrams against a
//! running store (issue 22), each refused here:
//! - a node delta whose declared max version is below one of its key versions panics the
//!   receiver (`node_delta.max_version >= self.max_version`, chitchat `state.rs`);
//! - a digest grown past a datagram (800 fake nodes, or one 65 KB id) panics the next
//!   node that answers it (`mtu >= 100`, chitchat `delta.rs`);
//! - a delta with a huge `last_gc_version` and `from_version_excluded` 0 makes a receiver
//!   wipe that node's state, its own included.
//!
//! kvs's own gossip is narrow, which makes tight rules cheap: every node publishes a few
//! keys ([`super::PUBLISHED_KEYS`]), never deletes one (so no tombstone is ever collected,
//! and every `last_gc_version` is 0), and is named by a `host:port` identity. A datagram
//! that breaks a rule is dropped whole: a real node never sends one, and a partial
//! message could leave chitchat's version bookkeeping inconsistent.

use std::collections::HashSet;

use super::wire::{DigestEntry, Envelope, Id, Message, Op};

/// The most node incarnations a node holds gossip state for, live or dead (a restarted
/// node leaves its old incarnation behind for chitchat's dead-node grace period). Chosen
/// so that a digest of all of them fits one datagram with room for a delta: 128 entries
/// of the longest identity ([`MAX_NODE_ID_BYTES`]) take about 40 KB of the 65,507.
pub const MAX_NODE_STATES: usize = 128;
/// The longest node id: a 253-byte DNS name, a colon and a 5-digit port.
pub const MAX_NODE_ID_BYTES: usize = 253 + 6;
/// The longest cluster id a `Syn` may carry (kvs's are at most 36 bytes).
pub const MAX_CLUSTER_ID_BYTES: usize = 64;
/// The longest value a node may publish: a shard map of 128 nodes is about 4 KB as JSON,
/// an applied clock about 30 bytes a node, a node's stats about 300 bytes.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// The most key-values one node delta carries: each of the published keys, a few times
/// over (chitchat sends only the newest version of a key).
pub const MAX_KEY_VALUES_PER_NODE: usize = 16;
/// The highest version or heartbeat a real node reaches: a node sets a key at most a few
/// times a second and beats once a gossip round, so 2^48 is millennia away; a forged
/// value near `u64::MAX` is refused rather than let freeze a node's state.
pub const MAX_VERSION: u64 = 1 << 48;

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0} digest entries or node deltas (at most {MAX_NODE_STATES})")]
    TooManyNodes(usize),
    #[error("a node id that is not a host:port of at most {MAX_NODE_ID_BYTES} bytes")]
    NodeId,
    #[error("a cluster id of more than {MAX_CLUSTER_ID_BYTES} bytes")]
    ClusterId,
    #[error("a node id appears twice in one message")]
    Duplicate,
    #[error("a version, heartbeat or generation beyond {MAX_VERSION}")]
    Version,
    #[error("a garbage-collection version (kvs never deletes a gossip key)")]
    Collected,
    #[error("a key-value that is not a published key, or is deleted, or too long")]
    KeyValue,
    #[error("more than {MAX_KEY_VALUES_PER_NODE} key-values for one node")]
    TooManyKeyValues,
    #[error("key versions that do not rise within their node's declared max version")]
    VersionOrder,
    #[error("a delta for this node's own incarnation")]
    OwnState,
}

/// What the checks need to know of the node: who it is, and which incarnations it
/// already holds state for.
#[derive(Debug, Clone)]
pub struct Known {
    pub me: Id,
    /// Incarnations chitchat held at the last refresh, and those admitted since.
    held: HashSet<(String, u64)>,
    /// Those admitted since the last refresh: chitchat may not have heard them yet when
    /// the refresh reads its state, so they are held over once.
    recent: HashSet<(String, u64)>,
}

impl Known {
    pub fn new(me: Id) -> Self {
        Self {
            me,
            held: HashSet::new(),
            recent: HashSet::new(),
        }
    }

    /// Takes in the incarnations chitchat holds now (it forgets dead ones after a grace
    /// period, which makes room).
    pub fn refresh(&mut self, held: HashSet<(String, u64)>) {
        self.held = held;
        self.held.extend(self.recent.drain());
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Checks `envelope`, and records the incarnations it will make chitchat hold (a
    /// digest entry creates a node state; a delta's node does not). Past
    /// [`MAX_NODE_STATES`], the digest entries of incarnations not held are cut: `Ok(Some)`
    /// gives the digest to send on instead. (Refusing the whole datagram would refuse the
    /// peer's heartbeats too, and a peer that looks dead is worse than a node it cannot
    /// tell of.)
    pub fn admit(&mut self, envelope: &Envelope) -> Result<Option<Vec<DigestEntry>>, Refusal> {
        check(envelope, &self.me)?;
        let digest = envelope.message.digest();
        let key = |e: &DigestEntry| (e.id.node_id.clone(), e.id.generation);
        let new: HashSet<(String, u64)> = digest
            .iter()
            .map(key)
            .filter(|k| !self.held.contains(k))
            .collect();
        if self.held.len() + new.len() <= MAX_NODE_STATES {
            self.recent.extend(new.iter().cloned());
            self.held.extend(new);
            return Ok(None);
        }
        let kept = digest
            .iter()
            .filter(|e| self.held.contains(&key(e)))
            .cloned()
            .collect();
        Ok(Some(kept))
    }
}

/// The rules a datagram must keep, whatever the node holds.
pub fn check(envelope: &Envelope, me: &Id) -> Result<(), Refusal> {
    if let Message::Syn { cluster_id, .. } = &envelope.message {
        if cluster_id.len() > MAX_CLUSTER_ID_BYTES {
            return Err(Refusal::ClusterId);
        }
    }
    check_digest(envelope.message.digest())?;
    check_delta(envelope.message.delta(), me)
}

fn check_digest(digest: &[DigestEntry]) -> Result<(), Refusal> {
    if digest.len() > MAX_NODE_STATES {
        return Err(Refusal::TooManyNodes(digest.len()));
    }
    let mut seen = HashSet::new();
    for entry in digest {
        check_id(&entry.id)?;
        if !seen.insert(&entry.id) {
            return Err(Refusal::Duplicate);
        }
        if entry.last_gc_version != 0 {
            return Err(Refusal::Collected);
        }
        if entry.heartbeat > MAX_VERSION || entry.max_version > MAX_VERSION {
            return Err(Refusal::Version);
        }
    }
    Ok(())
}

/// A node's delta as chitchat assembles it from the operations.
struct NodeDelta<'a> {
    id: &'a Id,
    from_version_excluded: u64,
    key_values: usize,
    /// The last key version, then a `SetMaxVersion` may lower or raise it.
    max_version: u64,
    highest_key_version: u64,
}

fn check_delta(delta: &[Op], me: &Id) -> Result<(), Refusal> {
    let mut nodes: Vec<NodeDelta> = Vec::new();
    for op in delta {
        match op {
            Op::Node {
                id,
                last_gc_version,
                from_version_excluded,
            } => {
                check_id(id)?;
                if *last_gc_version != 0 {
                    return Err(Refusal::Collected);
                }
                if id == me {
                    return Err(Refusal::OwnState);
                }
                if nodes.iter().any(|n| n.id == id) {
                    return Err(Refusal::Duplicate);
                }
                if nodes.len() == MAX_NODE_STATES {
                    return Err(Refusal::TooManyNodes(nodes.len() + 1));
                }
                nodes.push(NodeDelta {
                    id,
                    from_version_excluded: *from_version_excluded,
                    key_values: 0,
                    max_version: 0,
                    highest_key_version: 0,
                });
            }
            Op::KeyValue {
                key,
                value,
                version,
                status,
            } => {
                let node = nodes.last_mut().ok_or(Refusal::VersionOrder)?;
                check_key_value(key, value, *status)?;
                node.key_values += 1;
                if node.key_values > MAX_KEY_VALUES_PER_NODE {
                    return Err(Refusal::TooManyKeyValues);
                }
                if *version <= node.max_version || *version <= node.from_version_excluded {
                    return Err(Refusal::VersionOrder);
                }
                node.max_version = *version;
                node.highest_key_version = *version;
            }
            Op::SetMaxVersion(version) => {
                let node = nodes.last_mut().ok_or(Refusal::VersionOrder)?;
                node.max_version = *version;
            }
        }
    }
    nodes.iter().try_for_each(check_versions)
}

fn check_versions(node: &NodeDelta) -> Result<(), Refusal> {
    if node.max_version > MAX_VERSION || node.from_version_excluded > MAX_VERSION {
        return Err(Refusal::Version);
    }
    if node.max_version < node.highest_key_version {
        return Err(Refusal::VersionOrder);
    }
    Ok(())
}

fn check_key_value(key: &str, value: &str, status: u8) -> Result<(), Refusal> {
    let published = super::PUBLISHED_KEYS.contains(&key);
    if !published || status != 0 || value.len() > MAX_VALUE_BYTES {
        return Err(Refusal::KeyValue);
    }
    Ok(())
}

/// A node id is a `host:port`: printable ASCII without spaces, at most
/// [`MAX_NODE_ID_BYTES`], a port after the last colon. (Parsing it as a
/// [`crate::NodeId`] would intern the name, which a datagram must not make a node do.)
fn check_id(id: &Id) -> Result<(), Refusal> {
    let name = id.node_id.as_str();
    let printable = name.bytes().all(|b| b.is_ascii_graphic());
    let port = name
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if name.len() > MAX_NODE_ID_BYTES || !printable || !port {
        return Err(Refusal::NodeId);
    }
    if id.generation > u64::MAX / 2 {
        return Err(Refusal::Version);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, generation: u64) -> Id {
        Id {
            node_id: name.to_owned(),
            generation,
            gossip_addr: "127.0.0.2:8080".parse().unwrap(),
        }
    }

    fn me() -> Id {
        id("10.0.0.1:8080", 5)
    }

    fn ack(delta: Vec<Op>) -> Envelope {
        Envelope {
            version: 0,
            message: Message::Ack { delta },
        }
    }

    fn node(name: &str, from: u64) -> Op {
        Op::Node {
            id: id(name, 1),
            last_gc_version: 0,
            from_version_excluded: from,
        }
    }

    fn kv(key: &str, version: u64) -> Op {
        Op::KeyValue {
            key: key.into(),
            value: "1".into(),
            version,
            status: 0,
        }
    }

    fn entry(name: &str) -> DigestEntry {
        DigestEntry {
            id: id(name, 1),
            heartbeat: 1,
            last_gc_version: 0,
            max_version: 1,
        }
    }

    fn syn_ack(digest: Vec<DigestEntry>) -> Envelope {
        Envelope {
            version: 0,
            message: Message::SynAck {
                digest,
                delta: vec![],
            },
        }
    }

    #[test]
    fn real_gossip_passes() {
        let delta = vec![
            node("10.0.0.2:8080", 0),
            kv("relay", 1),
            kv("map", 2),
            node("kvs-1.kvs.default.svc.cluster.local:8080", 3),
            Op::SetMaxVersion(3),
        ];
        assert_eq!(check(&ack(delta), &me()), Ok(()));
        let mut known = Known::new(me());
        assert_eq!(
            known.admit(&syn_ack(vec![entry("10.0.0.2:8080")])),
            Ok(None)
        );
    }

    /// The 118-byte datagram that panicked chitchat: a key at version 10, then a declared
    /// max version of 5.
    #[test]
    fn a_max_version_below_a_key_version_is_refused() {
        let delta = vec![
            node("10.0.0.2:8080", 0),
            kv("map", 10),
            Op::SetMaxVersion(5),
        ];
        assert_eq!(check(&ack(delta), &me()), Err(Refusal::VersionOrder));
    }

    #[test]
    fn versions_must_rise_and_stay_plausible() {
        let falling = vec![node("10.0.0.2:8080", 0), kv("map", 3), kv("stats", 3)];
        assert_eq!(check(&ack(falling), &me()), Err(Refusal::VersionOrder));
        let stale = vec![node("10.0.0.2:8080", 4), kv("map", 3)];
        assert_eq!(check(&ack(stale), &me()), Err(Refusal::VersionOrder));
        let huge = vec![node("10.0.0.2:8080", 0), Op::SetMaxVersion(u64::MAX)];
        assert_eq!(check(&ack(huge), &me()), Err(Refusal::Version));
        let orphan = vec![kv("map", 3)];
        assert_eq!(check(&ack(orphan), &me()), Err(Refusal::VersionOrder));
    }

    /// The 68-byte reset: a huge `last_gc_version` with `from_version_excluded` 0.
    #[test]
    fn a_reset_delta_is_refused() {
        let delta = vec![
            Op::Node {
                id: id("10.0.0.2:8080", 1),
                last_gc_version: 1 << 40,
                from_version_excluded: 0,
            },
            Op::SetMaxVersion(1 << 40),
        ];
        assert_eq!(check(&ack(delta), &me()), Err(Refusal::Collected));
    }

    #[test]
    fn a_delta_about_this_node_itself_is_refused() {
        let delta = vec![
            Op::Node {
                id: me(),
                last_gc_version: 0,
                from_version_excluded: 0,
            },
            kv("map", 100),
        ];
        assert_eq!(check(&ack(delta), &me()), Err(Refusal::OwnState));
    }

    #[test]
    fn ids_keys_and_values_are_bounded() {
        let long = format!("{}:8080", "a".repeat(MAX_NODE_ID_BYTES));
        assert_eq!(
            check(&syn_ack(vec![entry(&long)]), &me()),
            Err(Refusal::NodeId)
        );
        for bad in ["no-port", ":8080", "a b:8080", "host:99999", ""] {
            assert_eq!(
                check(&syn_ack(vec![entry(bad)]), &me()),
                Err(Refusal::NodeId),
                "{bad:?}"
            );
        }
        let unknown_key = vec![node("10.0.0.2:8080", 0), kv("anything", 1)];
        assert_eq!(check(&ack(unknown_key), &me()), Err(Refusal::KeyValue));
        let big_value = vec![
            node("10.0.0.2:8080", 0),
            Op::KeyValue {
                key: "map".into(),
                value: "x".repeat(MAX_VALUE_BYTES + 1),
                version: 1,
                status: 0,
            },
        ];
        assert_eq!(check(&ack(big_value), &me()), Err(Refusal::KeyValue));
        let many: Vec<Op> = std::iter::once(node("10.0.0.2:8080", 0))
            .chain((1..=17).map(|v| kv("map", v)))
            .collect();
        assert_eq!(check(&ack(many), &me()), Err(Refusal::TooManyKeyValues));
    }

    /// 800 fake nodes in two datagrams are refused; in datagrams of 64, the first 128 are
    /// held, and past them the unknown entries are cut from the digests.
    #[test]
    fn node_states_are_bounded_across_datagrams() {
        let fakes: Vec<DigestEntry> = (0..800)
            .map(|i| entry(&format!("10.1.{}.{}:8080", i / 250, i % 250)))
            .collect();
        assert_eq!(
            check(&syn_ack(fakes[..400].to_vec()), &me()),
            Err(Refusal::TooManyNodes(400))
        );
        let mut known = Known::new(me());
        for chunk in fakes[..MAX_NODE_STATES].chunks(64) {
            assert_eq!(known.admit(&syn_ack(chunk.to_vec())), Ok(None));
        }
        let mixed = vec![fakes[MAX_NODE_STATES].clone(), fakes[3].clone()];
        assert_eq!(
            known.admit(&syn_ack(mixed)),
            Ok(Some(vec![fakes[3].clone()])),
            "the unknown entry is cut, the known one kept"
        );
        // Nodes it holds already may still be spoken of.
        assert_eq!(known.admit(&syn_ack(fakes[..64].to_vec())), Ok(None));
        // Once chitchat has forgotten them, there is room again; what was admitted since
        // the last refresh is held over.
        known.refresh(HashSet::new());
        assert_eq!(known.held(), MAX_NODE_STATES);
        known.refresh(HashSet::new());
        assert_eq!(known.held(), 0);
        assert_eq!(
            known.admit(&syn_ack(fakes[MAX_NODE_STATES..][..1].to_vec())),
            Ok(None)
        );
    }
}
