//! Compact binary forms shared by the causal-metadata token and the packed storage format:
//! node identities (`4` or `6` and the IP octets, or `n`, the name's length and its bytes;
//! then the port, big-endian) and LEB128 varints;
//! and the constant-time comparison every secret-derived check uses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::identity::{NodeIdError, Source};
use crate::NodeId;

/// The tag of a name in [`put_addr`]'s form.
const NAME_TAG: u8 = b'n';

/// Whether `a` and `b` are equal, in a time that depends on their lengths only: a check of
/// a tag, proof or token must not reveal how much of a guess was right.
pub fn same_secret_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn put_addr(out: &mut Vec<u8>, node: &NodeId) {
    let addr = match node {
        NodeId::Addr(addr) => addr,
        NodeId::Name(name, port) => {
            // Names are at most 253 bytes (checked when parsed).
            out.push(NAME_TAG);
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&port.to_be_bytes());
            return;
        }
    };
    put_ip(out, addr.ip());
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// An IP address as `4` or `6` and its octets (chitchat's gossip writes the same form).
pub fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
}

/// Reads an identity at the start of `bytes` (from a vouched source: the data directory);
/// returns it and the bytes it took.
pub fn read_addr(bytes: &[u8]) -> Option<(NodeId, usize)> {
    match read_addr_from(bytes, Source::Vouched)? {
        (Some(node), used) => Some((node, used)),
        (None, _) => None,
    }
}

/// [`read_addr`] for a name from `source`: `None` when the bytes are not an identity;
/// `(None, used)` for a well-formed name that `source` may not intern.
pub fn read_addr_from(bytes: &[u8], source: Source) -> Option<(Option<NodeId>, usize)> {
    let (ip, at): (IpAddr, usize) = match bytes.first()? {
        &NAME_TAG => {
            let len = usize::from(*bytes.get(1)?);
            let name = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
            let port = u16::from_be_bytes(bytes.get(2 + len..4 + len)?.try_into().ok()?);
            return match NodeId::parse_from(&format!("{name}:{port}"), source) {
                Ok(node @ NodeId::Name(..)) => Some((Some(node), 4 + len)),
                Err(NodeIdError::Unknown(_) | NodeIdError::TooManyUnvouchedNames) => {
                    Some((None, 4 + len))
                }
                _ => None,
            };
        }
        4 => {
            let o: [u8; 4] = bytes.get(1..5)?.try_into().ok()?;
            (Ipv4Addr::from(o).into(), 5)
        }
        6 => {
            let o: [u8; 16] = bytes.get(1..17)?.try_into().ok()?;
            (Ipv6Addr::from(o).into(), 17)
        }
        _ => return None,
    };
    let port = u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?);
    Some((Some(NodeId::Addr(SocketAddr::new(ip, port))), at + 2))
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint at the start of `bytes`; returns it and the bytes it took.
pub fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = vec![];
            put_varint(&mut out, v);
            assert_eq!(read_varint(&out), Some((v, out.len())));
            assert_eq!(read_varint(&out[..out.len() - 1]), None);
        }
    }

    #[test]
    fn addresses_round_trip() {
        for text in [
            "10.10.0.2:8080",
            "[2001:db8::1]:9",
            "0.0.0.0:0",
            "kvs-0.kvs:8080",
        ] {
            let addr: NodeId = text.parse().unwrap();
            let mut out = vec![];
            put_addr(&mut out, &addr);
            assert_eq!(read_addr(&out), Some((addr, out.len())));
            assert_eq!(read_addr(&out[..out.len() - 1]), None);
        }
        assert_eq!(read_addr(&[5, 0, 0]), None);
    }
}
