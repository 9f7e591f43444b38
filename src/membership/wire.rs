//! Chitchat's gossip datagrams (chitchat 0.13, protocol versions 0 and 1), decoded and
//! encoded by code of our own.
//!
//! Chitchat keeps its envelope encoding private to the crate and trusts what it decodes: a
//! delta whose declared max version is below one of its own key versions trips an
//! assertion in the gossip task, a digest of hundreds of nodes another. So every datagram
//! is decoded here first, with bounds on what decoding may allocate, and checked by
//! [`super::guard`] before chitchat sees its bytes. The encoder writes what the decoder
//! reads; tests and the fuzz targets build datagrams with it, and a unit test holds both
//! against chitchat's own codec through a socket.
//!
//! The format, all integers little-endian: a header (magic `45139` as u16, the protocol
//! version, the message type), then
//! - `Syn`: a digest, then the cluster id;
//! - `SynAck`: a digest, then a delta;
//! - `Ack`: a delta;
//! - `BadCluster`: nothing.
//!
//! A digest is, in version 0, a u16 count of `(id, heartbeat, last_gc_version,
//! max_version)` entries; in version 1 the same entries in a block stream. A delta is a
//! block stream of operations: `0` a node (its id, `last_gc_version`,
//! `from_version_excluded`), `1` a key-value of the node before it (key, value, version,
//! status), `2` the node's max version. A block stream is blocks tagged `1` (zstd, u16
//! length), `2` (plain, u16 length) or `0` (the end); items may straddle blocks. A string
//! is a u16 length and UTF-8 bytes; an id is the node's name, its generation (u64) and its
//! gossip address (`4` or `6`, the octets, the port as u16).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The largest UDP payload over IPv4, and so the largest datagram chitchat sends.
pub const MAX_DATAGRAM_BYTES: usize = 65_507;
/// The most bytes a datagram's block streams may decompress to, together. Chitchat fills a
/// datagram to at most [`MAX_DATAGRAM_BYTES`] compressed; kvs's gossip state (JSON maps and
/// clocks) compresses about 3 to 1, so a real datagram stays far below this, while a
/// "zip bomb" of many small blocks that each expand to 64 KiB (which would make chitchat's
/// own decoder allocate hundreds of megabytes) is refused past it.
pub const MAX_DECOMPRESSED_BYTES: usize = 1 << 20;
/// The most one block of a stream holds once decompressed (its length is a u16).
const MAX_BLOCK_BYTES: usize = u16::MAX as usize;

const MAGIC: u16 = 45_139;
const SYN: u8 = 0;
const SYN_ACK: u8 = 1;
const ACK: u8 = 2;
const BAD_CLUSTER: u8 = 3;

const BLOCK_END: u8 = 0;
const BLOCK_ZSTD: u8 = 1;
const BLOCK_PLAIN: u8 = 2;
/// Plain blocks the encoder writes: chitchat's own threshold.
const ENCODE_BLOCK_BYTES: usize = 16_384;

const OP_NODE: u8 = 0;
const OP_KEY_VALUE: u8 = 1;
const OP_SET_MAX_VERSION: u8 = 2;

/// Why a datagram could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the datagram ends early")]
    Truncated,
    #[error("not a chitchat datagram (magic number)")]
    Magic,
    #[error("unknown protocol version {0}")]
    Version(u8),
    #[error("unknown message type {0}")]
    MessageType(u8),
    #[error("unknown {what} tag {tag}")]
    Tag { what: &'static str, tag: u8 },
    #[error("a string is not UTF-8")]
    Utf8,
    #[error("a compressed block does not decompress")]
    Zstd,
    #[error("the block streams decompress to more than {MAX_DECOMPRESSED_BYTES} bytes")]
    TooLarge,
    #[error("{0} bytes follow the message")]
    Trailing(usize),
    #[error("a key-value before any node")]
    OrphanOp,
}

/// A node incarnation as chitchat names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id {
    pub node_id: String,
    pub generation: u64,
    pub gossip_addr: SocketAddr,
}

/// What a digest says of one node incarnation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestEntry {
    pub id: Id,
    pub heartbeat: u64,
    pub last_gc_version: u64,
    pub max_version: u64,
}

/// One operation of a delta, as it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Node {
        id: Id,
        last_gc_version: u64,
        from_version_excluded: u64,
    },
    KeyValue {
        key: String,
        value: String,
        version: u64,
        /// 0 set, 1 deleted, 2 deleted after a TTL.
        status: u8,
    },
    SetMaxVersion(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Syn {
        digest: Vec<DigestEntry>,
        cluster_id: String,
    },
    SynAck {
        digest: Vec<DigestEntry>,
        delta: Vec<Op>,
    },
    Ack {
        delta: Vec<Op>,
    },
    BadCluster,
}

/// A message with the protocol version it is encoded in (0 or 1: the digest's form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub version: u8,
    pub message: Message,
}

impl Message {
    pub fn digest(&self) -> &[DigestEntry] {
        match self {
            Message::Syn { digest, .. } | Message::SynAck { digest, .. } => digest,
            Message::Ack { .. } | Message::BadCluster => &[],
        }
    }

    pub fn delta(&self) -> &[Op] {
        match self {
            Message::SynAck { delta, .. } | Message::Ack { delta } => delta,
            Message::Syn { .. } | Message::BadCluster => &[],
        }
    }
}

/// Decodes one datagram, all of it: bytes after the message are an error.
pub fn decode(bytes: &[u8]) -> Result<Envelope, WireError> {
    decode_split(bytes).map(|(envelope, _)| envelope)
}

/// Where a datagram's digest ends: what follows it (a delta, or a cluster id) can be kept
/// byte for byte when the digest is replaced ([`with_digest`]).
pub type DigestEnd = usize;

/// [`decode`], and where the digest ends (0 for a message without one).
pub fn decode_split(bytes: &[u8]) -> Result<(Envelope, DigestEnd), WireError> {
    let mut r = Reader { buf: bytes };
    let mut digest_end = 0;
    if r.u16()? != MAGIC {
        return Err(WireError::Magic);
    }
    let version = r.u8()?;
    if version > 1 {
        return Err(WireError::Version(version));
    }
    let mut budget = MAX_DECOMPRESSED_BYTES;
    let message = match r.u8()? {
        SYN => {
            let digest = read_digest(&mut r, version, &mut budget)?;
            digest_end = bytes.len() - r.buf.len();
            let cluster_id = r.string()?;
            Message::Syn { digest, cluster_id }
        }
        SYN_ACK => {
            let digest = read_digest(&mut r, version, &mut budget)?;
            digest_end = bytes.len() - r.buf.len();
            let delta = read_delta(&mut r, &mut budget)?;
            Message::SynAck { digest, delta }
        }
        ACK => Message::Ack {
            delta: read_delta(&mut r, &mut budget)?,
        },
        BAD_CLUSTER => Message::BadCluster,
        other => return Err(WireError::MessageType(other)),
    };
    match r.buf.len() {
        0 => Ok((Envelope { version, message }, digest_end)),
        n => Err(WireError::Trailing(n)),
    }
}

/// The datagram `bytes` (a `Syn` or `SynAck` whose digest ends at `digest_end`) with
/// `digest` in place of its own, and the rest of it unchanged.
pub fn with_digest(bytes: &[u8], digest_end: DigestEnd, digest: &[DigestEntry]) -> Vec<u8> {
    const HEADER: usize = 4;
    let mut out = bytes[..HEADER].to_vec();
    write_digest(&mut out, bytes[2], digest);
    out.extend_from_slice(&bytes[digest_end..]);
    out
}

/// Encodes a message as chitchat would read it (block streams as plain blocks).
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(envelope.version);
    match &envelope.message {
        Message::Syn { digest, cluster_id } => {
            out.push(SYN);
            write_digest(&mut out, envelope.version, digest);
            put_str(&mut out, cluster_id);
        }
        Message::SynAck { digest, delta } => {
            out.push(SYN_ACK);
            write_digest(&mut out, envelope.version, digest);
            write_delta(&mut out, delta);
        }
        Message::Ack { delta } => {
            out.push(ACK);
            write_delta(&mut out, delta);
        }
        Message::BadCluster => out.push(BAD_CLUSTER),
    }
    out
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let (head, rest) = self.buf.split_at_checked(n).ok_or(WireError::Truncated)?;
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn string(&mut self) -> Result<String, WireError> {
        let len = usize::from(self.u16()?);
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| WireError::Utf8)
    }

    fn addr(&mut self) -> Result<SocketAddr, WireError> {
        let ip = match self.u8()? {
            4 => {
                let o: [u8; 4] = self.take(4)?.try_into().map_err(|_| WireError::Truncated)?;
                IpAddr::V4(Ipv4Addr::from(o))
            }
            6 => {
                let o: [u8; 16] = self
                    .take(16)?
                    .try_into()
                    .map_err(|_| WireError::Truncated)?;
                IpAddr::V6(Ipv6Addr::from(o))
            }
            tag => return Err(WireError::Tag { what: "IP", tag }),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    fn id(&mut self) -> Result<Id, WireError> {
        Ok(Id {
            node_id: self.string()?,
            generation: self.u64()?,
            gossip_addr: self.addr()?,
        })
    }

    fn digest_entry(&mut self) -> Result<DigestEntry, WireError> {
        Ok(DigestEntry {
            id: self.id()?,
            heartbeat: self.u64()?,
            last_gc_version: self.u64()?,
            max_version: self.u64()?,
        })
    }

    fn op(&mut self) -> Result<Op, WireError> {
        Ok(match self.u8()? {
            OP_NODE => Op::Node {
                id: self.id()?,
                last_gc_version: self.u64()?,
                from_version_excluded: self.u64()?,
            },
            OP_KEY_VALUE => Op::KeyValue {
                key: self.string()?,
                value: self.string()?,
                version: self.u64()?,
                status: match self.u8()? {
                    s @ 0..=2 => s,
                    tag => {
                        return Err(WireError::Tag {
                            what: "status",
                            tag,
                        })
                    }
                },
            },
            OP_SET_MAX_VERSION => Op::SetMaxVersion(self.u64()?),
            tag => return Err(WireError::Tag { what: "op", tag }),
        })
    }
}

/// The bytes of a block stream, decompressed, charged to `budget`.
fn read_stream(r: &mut Reader, budget: &mut usize) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    let mut block = vec![0u8; MAX_BLOCK_BYTES];
    loop {
        let data: &[u8] = match r.u8()? {
            BLOCK_END => return Ok(out),
            BLOCK_ZSTD => {
                let len = usize::from(r.u16()?);
                let compressed = r.take(len)?;
                let n = zstd::bulk::decompress_to_buffer(compressed, &mut block[..])
                    .map_err(|_| WireError::Zstd)?;
                &block[..n]
            }
            BLOCK_PLAIN => {
                let len = usize::from(r.u16()?);
                r.take(len)?
            }
            tag => return Err(WireError::Tag { what: "block", tag }),
        };
        *budget = budget.checked_sub(data.len()).ok_or(WireError::TooLarge)?;
        out.extend_from_slice(data);
    }
}

fn read_digest(
    r: &mut Reader,
    version: u8,
    budget: &mut usize,
) -> Result<Vec<DigestEntry>, WireError> {
    if version == 0 {
        let count = r.u16()?;
        return (0..count).map(|_| r.digest_entry()).collect();
    }
    let bytes = read_stream(r, budget)?;
    let mut items = Reader { buf: &bytes };
    let mut digest = Vec::new();
    while !items.buf.is_empty() {
        digest.push(items.digest_entry()?);
    }
    Ok(digest)
}

fn read_delta(r: &mut Reader, budget: &mut usize) -> Result<Vec<Op>, WireError> {
    let bytes = read_stream(r, budget)?;
    let mut items = Reader { buf: &bytes };
    let mut ops = Vec::new();
    while !items.buf.is_empty() {
        ops.push(items.op()?);
    }
    Ok(ops)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Chitchat's strings are at most u16::MAX bytes; a longer one is cut (tests only).
    let bytes = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_id(out: &mut Vec<u8>, id: &Id) {
    put_str(out, &id.node_id);
    out.extend_from_slice(&id.generation.to_le_bytes());
    crate::codec::put_ip(out, id.gossip_addr.ip());
    out.extend_from_slice(&id.gossip_addr.port().to_le_bytes());
}

fn put_digest_entry(out: &mut Vec<u8>, entry: &DigestEntry) {
    put_id(out, &entry.id);
    for n in [entry.heartbeat, entry.last_gc_version, entry.max_version] {
        out.extend_from_slice(&n.to_le_bytes());
    }
}

fn put_op(out: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Node {
            id,
            last_gc_version,
            from_version_excluded,
        } => {
            out.push(OP_NODE);
            put_id(out, id);
            out.extend_from_slice(&last_gc_version.to_le_bytes());
            out.extend_from_slice(&from_version_excluded.to_le_bytes());
        }
        Op::KeyValue {
            key,
            value,
            version,
            status,
        } => {
            out.push(OP_KEY_VALUE);
            put_str(out, key);
            put_str(out, value);
            out.extend_from_slice(&version.to_le_bytes());
            out.push(*status);
        }
        Op::SetMaxVersion(version) => {
            out.push(OP_SET_MAX_VERSION);
            out.extend_from_slice(&version.to_le_bytes());
        }
    }
}

/// `items` as a stream of plain blocks.
fn put_stream(out: &mut Vec<u8>, items: &[u8]) {
    for chunk in items.chunks(ENCODE_BLOCK_BYTES) {
        out.push(BLOCK_PLAIN);
        out.extend_from_slice(&(chunk.len() as u16).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.push(BLOCK_END);
}

fn write_digest(out: &mut Vec<u8>, version: u8, digest: &[DigestEntry]) {
    if version == 0 {
        out.extend_from_slice(&(digest.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
        for entry in digest.iter().take(usize::from(u16::MAX)) {
            put_digest_entry(out, entry);
        }
        return;
    }
    let mut items = Vec::new();
    for entry in digest {
        put_digest_entry(&mut items, entry);
    }
    put_stream(out, &items);
}

fn write_delta(out: &mut Vec<u8>, delta: &[Op]) {
    let mut items = Vec::new();
    for op in delta {
        put_op(&mut items, op);
    }
    put_stream(out, &items);
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn id(name: &str, generation: u64) -> Id {
        Id {
            node_id: name.to_owned(),
            generation,
            gossip_addr: "127.0.0.2:8080".parse().unwrap(),
        }
    }

    fn sample() -> Vec<Envelope> {
        let digest = vec![DigestEntry {
            id: id("10.0.0.2:8080", 7),
            heartbeat: 3,
            last_gc_version: 0,
            max_version: 9,
        }];
        let delta = vec![
            Op::Node {
                id: id("10.0.0.2:8080", 7),
                last_gc_version: 0,
                from_version_excluded: 2,
            },
            Op::KeyValue {
                key: "map".into(),
                value: "{}".into(),
                version: 3,
                status: 0,
            },
            Op::Node {
                id: Id {
                    gossip_addr: "[::1]:9".parse().unwrap(),
                    ..id("kvs-0.kvs:8080", 1)
                },
                last_gc_version: 0,
                from_version_excluded: 0,
            },
            Op::SetMaxVersion(4),
        ];
        let mut out = Vec::new();
        for version in [0, 1] {
            out.push(Envelope {
                version,
                message: Message::Syn {
                    digest: digest.clone(),
                    cluster_id: "kvs".into(),
                },
            });
            out.push(Envelope {
                version,
                message: Message::SynAck {
                    digest: digest.clone(),
                    delta: delta.clone(),
                },
            });
        }
        out.push(Envelope {
            version: 0,
            message: Message::Ack { delta },
        });
        out.push(Envelope {
            version: 0,
            message: Message::BadCluster,
        });
        out
    }

    #[test]
    fn encoded_messages_decode_unchanged() {
        for envelope in sample() {
            assert_eq!(decode(&encode(&envelope)), Ok(envelope));
        }
    }

    #[test]
    fn a_digest_is_replaced_and_the_rest_kept() {
        for envelope in sample() {
            let bytes = encode(&envelope);
            let (decoded, end) = decode_split(&bytes).unwrap();
            let digest = decoded.message.digest();
            if digest.is_empty() {
                continue;
            }
            let shorter = with_digest(&bytes, end, &[]);
            let mut expected = envelope.clone();
            match &mut expected.message {
                Message::Syn { digest, .. } | Message::SynAck { digest, .. } => digest.clear(),
                _ => unreachable!(),
            }
            assert_eq!(decode(&shorter), Ok(expected));
            assert_eq!(with_digest(&bytes, end, digest), bytes);
        }
    }

    #[test]
    fn an_empty_syn_ack_is_seven_bytes() {
        let bytes = encode(&Envelope {
            version: 0,
            message: Message::SynAck {
                digest: vec![],
                delta: vec![],
            },
        });
        assert_eq!(bytes.len(), 7);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for envelope in sample() {
            let bytes = encode(&envelope);
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "{envelope:?} cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(decode(&longer), Err(WireError::Trailing(1)));
        }
    }

    /// Blocks that each decompress to 64 KiB: chitchat's decoder would hold them all.
    #[test]
    fn a_decompression_bomb_is_refused() {
        let block = zstd::bulk::compress(&vec![0u8; MAX_BLOCK_BYTES], 3).unwrap();
        let mut bytes = MAGIC.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0, ACK]);
        for _ in 0..(MAX_DECOMPRESSED_BYTES / MAX_BLOCK_BYTES + 2) {
            bytes.push(BLOCK_ZSTD);
            bytes.extend_from_slice(&(block.len() as u16).to_le_bytes());
            bytes.extend_from_slice(&block);
        }
        bytes.push(BLOCK_END);
        assert!(bytes.len() < MAX_DATAGRAM_BYTES, "{}", bytes.len());
        assert_eq!(decode(&bytes), Err(WireError::TooLarge));
    }

    #[test]
    fn compressed_blocks_are_read() {
        let envelope = &sample()[4];
        let Message::Ack { delta } = &envelope.message else {
            panic!("an ack")
        };
        let mut items = Vec::new();
        for op in delta {
            put_op(&mut items, op);
        }
        let block = zstd::bulk::compress(&items, 3).unwrap();
        let mut bytes = MAGIC.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0, ACK, BLOCK_ZSTD]);
        bytes.extend_from_slice(&(block.len() as u16).to_le_bytes());
        bytes.extend_from_slice(&block);
        bytes.push(BLOCK_END);
        assert_eq!(decode(&bytes).as_ref(), Ok(envelope));
    }
}
