//! Authenticated gossip values.
//!
//! Chitchat's datagrams carry no tag of ours (its message encoding is private to the crate),
//! and the cluster id that keeps other stores out travels in the clear, so anyone who can
//! read the gossip port's traffic could send datagrams a node accepts. What such a forger
//! could abuse is the values nodes publish: a shard map of a higher epoch would be installed
//! everywhere, a relay port would send internal calls elsewhere, an applied clock would let
//! tombstones be purged early. So every value is sealed by the node that publishes it: a
//! keyed BLAKE3 tag, with a key derived from the cluster secret, over the publishing node's
//! id, the value's key and the value. A node takes in only values whose seal holds, and
//! counts a node state only if its relay port's does, so a forged incarnation of a node is
//! not even seen as that node.
//!
//! What a forger with the cluster id can still do is what any packet injector can: make
//! nodes gossip with it, and delay or drop datagrams (liveness). A replayed value is one its
//! node published earlier: an older map never replaces a newer one, an older applied clock
//! only holds purges back, and an older relay port fails the relay channel's handshake.

use crate::codec::same_secret_bytes;

/// Hex characters of the tag in front of a sealed value: 128 bits.
const TAG_HEX: usize = 32;

/// Seals and opens gossip values; without a cluster secret, values travel as they are.
#[derive(Clone)]
pub struct GossipSeal {
    key: Option<[u8; 32]>,
}

impl GossipSeal {
    /// From the cluster secret's bytes (see [`crate::config::ClusterSecret`]).
    pub fn new(secret: Option<&[u8]>) -> Self {
        let key = secret.map(|s| blake3::derive_key("kvs 2026-12-01 gossip values", s));
        Self { key }
    }

    fn tag(key: &[u8; 32], node: &str, name: &str, value: &str) -> String {
        let mut hasher = blake3::Hasher::new_keyed(key);
        for part in [node, name, value] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        let tag = hasher.finalize();
        tag.as_bytes()[..TAG_HEX / 2]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// `value` as node `node` publishes it under `name`.
    pub fn seal(&self, node: &str, name: &str, value: &str) -> String {
        match &self.key {
            Some(key) => format!("{}.{value}", Self::tag(key, node, name, value)),
            None => value.to_owned(),
        }
    }

    /// The value node `node` published under `name`, if its seal holds.
    pub fn open<'a>(&self, node: &str, name: &str, sealed: &'a str) -> Option<&'a str> {
        let Some(key) = &self.key else {
            return Some(sealed);
        };
        let (tag, value) = sealed.split_at_checked(TAG_HEX)?;
        let value = value.strip_prefix('.')?;
        let expected = Self::tag(key, node, name, value);
        same_secret_bytes(tag.as_bytes(), expected.as_bytes()).then_some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(secret: &str) -> GossipSeal {
        GossipSeal::new(Some(secret.as_bytes()))
    }

    #[test]
    fn a_sealed_value_opens_only_as_the_node_and_key_it_was_published_under() {
        let seal = seal("0123456789abcdef-one");
        let sealed = seal.seal("10.0.0.2:8080", "map", r#"{"epoch":3}"#);
        assert_eq!(
            seal.open("10.0.0.2:8080", "map", &sealed),
            Some(r#"{"epoch":3}"#)
        );
        assert_eq!(
            seal.open("10.0.0.3:8080", "map", &sealed),
            None,
            "another node's"
        );
        assert_eq!(
            seal.open("10.0.0.2:8080", "relay", &sealed),
            None,
            "another key's"
        );
        let forged = sealed.replace('3', "9");
        assert_eq!(seal.open("10.0.0.2:8080", "map", &forged), None, "changed");
    }

    #[test]
    fn values_unsealed_or_sealed_by_another_store_are_refused() {
        let ours = seal("0123456789abcdef-one");
        let theirs = seal("0123456789abcdef-two");
        let sealed = theirs.seal("10.0.0.2:8080", "relay", "9000");
        assert_eq!(ours.open("10.0.0.2:8080", "relay", &sealed), None);
        assert_eq!(ours.open("10.0.0.2:8080", "relay", "9000"), None);
        assert_eq!(ours.open("10.0.0.2:8080", "relay", ""), None);
        assert_eq!(ours.open("10.0.0.2:8080", "relay", "é"), None);
    }

    #[test]
    fn without_a_secret_values_travel_as_they_are() {
        let open = GossipSeal::new(None);
        assert_eq!(open.seal("n", "relay", "9000"), "9000");
        assert_eq!(open.open("n", "relay", "9000"), Some("9000"));
    }
}
