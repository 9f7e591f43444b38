//! Authenticated gossip datagrams: with a cluster secret, every datagram a node sends
//! carries a MAC, and a node processes (and so answers) only datagrams whose MAC holds,
//! that were meant for it, and that it has not seen before.
//!
//! A sealed datagram is chitchat's own bytes between a header and a tag:
//!
//! ```text
//! "kG" | format (1) | session (u64) | counter (u64) | sent at, Unix ms (u64) | chitchat's datagram | tag (16)
//! ```
//!
//! The tag is a keyed BLAKE3 MAC (128 bits; the key derived from the secret with a context
//! of its own) over the header, the datagram and the address it was sent to. The
//! address is not sent: the receiver puts its own in, so a datagram captured on its way
//! to one node is worthless at another. The session is random for each start of a node's
//! gossip and the counter rises with every datagram, so a receiver keeps, per session, the
//! highest counter and which of the [`WINDOW`] before it it has seen, as IPsec and
//! WireGuard do; a replay is refused. A datagram sent more than [`HORIZON`] before or
//! after the receiver's clock is refused too, so that a receiver that restarted (and so
//! forgot its windows) cannot be fed a session's old datagrams, and a window can be
//! forgotten once its session has been quiet for longer than that.
//!
//! Only a datagram whose tag holds can open a session, so the table of sessions grows
//! only with the store's own nodes' starts.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::codec::same_secret_bytes;

/// What comes before chitchat's bytes.
pub const HEADER_BYTES: usize = 2 + 1 + 8 + 8 + 8;
/// The MAC after them.
pub const TAG_BYTES: usize = 16;
/// What sealing adds to a datagram.
pub const OVERHEAD_BYTES: usize = HEADER_BYTES + TAG_BYTES;

const MAGIC: &[u8; 2] = b"kG";
const FORMAT: u8 = 1;
/// How far a datagram's send time may be from the receiver's clock, either way. Hosts of
/// one store keep their clocks within milliseconds of each other (NTP); a minute leaves
/// room for a host whose clock is off, and bounds how long a window must be kept.
pub const HORIZON_MS: u64 = 60_000;
/// Counters before the highest seen that a receiver still tells apart: gossip datagrams
/// arrive nearly in order (a node sends a few per 100 ms round), so 128 behind is plenty.
pub const WINDOW: u64 = 128;
/// The most sessions a node keeps windows for: each is one start of one node's gossip
/// within the last two [`HORIZON_MS`]; 1,024 is far beyond a store's nodes.
pub const MAX_SESSIONS: usize = 1024;

/// Why a sealed datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("not a sealed gossip datagram")]
    Unsealed,
    #[error("its tag does not hold (another secret, another receiver, or altered)")]
    Tag,
    #[error("sent too long before or after this node's clock")]
    Stale,
    #[error("seen before")]
    Replayed,
    #[error("too many sessions")]
    Full,
}

/// The key every datagram's tag is made with.
#[derive(Clone)]
pub struct DatagramKey {
    key: [u8; 32],
}

/// A sealed datagram's header, once its tag holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub session: u64,
    pub counter: u64,
    pub sent_ms: u64,
}

impl DatagramKey {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: blake3::derive_key("kvs 2026-12-07 gossip datagrams", secret),
        }
    }

    fn tag(&self, sealed: &[u8], to: SocketAddr) -> [u8; TAG_BYTES] {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(sealed);
        match to.ip() {
            IpAddr::V4(ip) => hasher.update(&ip.to_ipv6_mapped().octets()),
            IpAddr::V6(ip) => hasher.update(&ip.octets()),
        };
        hasher.update(&to.port().to_le_bytes());
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&hasher.finalize().as_bytes()[..TAG_BYTES]);
        tag
    }

    /// `payload` sealed for the node at `to`.
    pub fn seal(&self, stamp: Stamp, payload: &[u8], to: SocketAddr) -> Vec<u8> {
        let mut out = Vec::with_capacity(OVERHEAD_BYTES + payload.len());
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        for n in [stamp.session, stamp.counter, stamp.sent_ms] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(payload);
        let tag = self.tag(&out, to);
        out.extend_from_slice(&tag);
        out
    }

    /// The stamp and chitchat's bytes of a datagram sealed for one of `me` (the addresses
    /// this node is reached at), if its tag holds. Freshness is [`Sessions::admit`]'s.
    pub fn open<'a>(
        &self,
        datagram: &'a [u8],
        me: &[SocketAddr],
    ) -> Result<(Stamp, &'a [u8]), AuthError> {
        if datagram.len() < OVERHEAD_BYTES || &datagram[..2] != MAGIC || datagram[2] != FORMAT {
            return Err(AuthError::Unsealed);
        }
        let (sealed, tag) = datagram.split_at(datagram.len() - TAG_BYTES);
        if !me
            .iter()
            .any(|to| same_secret_bytes(&self.tag(sealed, *to), tag))
        {
            return Err(AuthError::Tag);
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&sealed[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let stamp = Stamp {
            session: word(3),
            counter: word(11),
            sent_ms: word(19),
        };
        Ok((stamp, &sealed[HEADER_BYTES..]))
    }
}

/// One sender session's replay window.
#[derive(Debug, Clone, Copy)]
struct Window {
    highest: u64,
    /// Bit `i`: counter `highest - i` was seen.
    seen: u128,
    last_ms: u64,
}

impl Window {
    fn admit(&mut self, counter: u64, now_ms: u64) -> Result<(), AuthError> {
        if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = counter;
        } else {
            let behind = self.highest - counter;
            if behind >= WINDOW || self.seen & (1u128 << behind) != 0 {
                return Err(AuthError::Replayed);
            }
            self.seen |= 1u128 << behind;
        }
        self.last_ms = now_ms;
        Ok(())
    }
}

/// The replay windows of every sender session heard from lately.
#[derive(Debug, Default)]
pub struct Sessions {
    windows: HashMap<u64, Window>,
}

impl Sessions {
    /// Whether a datagram with a tag that holds is fresh: sent within the horizon of
    /// `now_ms`, and not seen before. Records it.
    pub fn admit(&mut self, stamp: Stamp, now_ms: u64) -> Result<(), AuthError> {
        if stamp.sent_ms.abs_diff(now_ms) > HORIZON_MS {
            return Err(AuthError::Stale);
        }
        if let Some(window) = self.windows.get_mut(&stamp.session) {
            return window.admit(stamp.counter, now_ms);
        }
        if self.windows.len() >= MAX_SESSIONS {
            self.forget_quiet(now_ms);
            if self.windows.len() >= MAX_SESSIONS {
                return Err(AuthError::Full);
            }
        }
        let window = Window {
            highest: stamp.counter,
            seen: 1,
            last_ms: now_ms,
        };
        self.windows.insert(stamp.session, window);
        Ok(())
    }

    /// Forgets sessions quiet for two horizons: any datagram of theirs not yet seen is
    /// stale by now.
    fn forget_quiet(&mut self, now_ms: u64) {
        self.windows
            .retain(|_, w| now_ms.saturating_sub(w.last_ms) <= 2 * HORIZON_MS);
    }

    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DatagramKey {
        DatagramKey::new(b"0123456789abcdef-one")
    }

    fn to() -> SocketAddr {
        "10.0.0.3:8080".parse().unwrap()
    }

    fn stamp(counter: u64) -> Stamp {
        Stamp {
            session: 7,
            counter,
            sent_ms: 1_000_000,
        }
    }

    #[test]
    fn a_sealed_datagram_opens_only_at_its_receiver_with_the_secret() {
        let sealed = key().seal(stamp(1), b"chitchat bytes", to());
        assert_eq!(sealed.len(), 14 + OVERHEAD_BYTES);
        assert_eq!(
            key().open(&sealed, &["10.0.0.9:1".parse().unwrap(), to()]),
            Ok((stamp(1), &b"chitchat bytes"[..]))
        );
        let elsewhere: SocketAddr = "10.0.0.4:8080".parse().unwrap();
        assert_eq!(key().open(&sealed, &[elsewhere]), Err(AuthError::Tag));
        let other = DatagramKey::new(b"0123456789abcdef-two");
        assert_eq!(other.open(&sealed, &[to()]), Err(AuthError::Tag));
        for at in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[at] ^= 1;
            assert!(key().open(&flipped, &[to()]).is_err(), "byte {at}");
        }
        assert_eq!(
            key().open(b"\xd3\xb0\x00\x01", &[to()]),
            Err(AuthError::Unsealed)
        );
    }

    #[test]
    fn a_datagram_is_taken_once() {
        let mut sessions = Sessions::default();
        let now = 1_000_000;
        assert_eq!(sessions.admit(stamp(5), now), Ok(()));
        assert_eq!(sessions.admit(stamp(5), now), Err(AuthError::Replayed));
        assert_eq!(sessions.admit(stamp(3), now), Ok(()), "late, not seen");
        assert_eq!(sessions.admit(stamp(3), now), Err(AuthError::Replayed));
        assert_eq!(sessions.admit(stamp(5 + WINDOW), now), Ok(()));
        assert_eq!(
            sessions.admit(stamp(4), now),
            Err(AuthError::Replayed),
            "out of the window"
        );
        assert_eq!(sessions.admit(stamp(6), now), Ok(()), "within it, not seen");
        assert_eq!(sessions.admit(stamp(7 + WINDOW), now), Ok(()));
    }

    #[test]
    fn stale_datagrams_are_refused_and_quiet_sessions_forgotten() {
        let mut sessions = Sessions::default();
        let now = 1_000_000;
        let old = Stamp {
            sent_ms: now - HORIZON_MS - 1,
            ..stamp(1)
        };
        assert_eq!(sessions.admit(old, now), Err(AuthError::Stale));
        let future = Stamp {
            sent_ms: now + HORIZON_MS + 1,
            ..stamp(1)
        };
        assert_eq!(sessions.admit(future, now), Err(AuthError::Stale));
        for session in 0..MAX_SESSIONS as u64 {
            let s = Stamp {
                session,
                ..stamp(1)
            };
            assert_eq!(sessions.admit(s, now), Ok(()));
        }
        let newcomer = Stamp {
            session: u64::MAX,
            ..stamp(1)
        };
        assert_eq!(sessions.admit(newcomer, now), Err(AuthError::Full));
        let later = now + 2 * HORIZON_MS + 1;
        let newcomer = Stamp {
            sent_ms: later,
            ..newcomer
        };
        assert_eq!(sessions.admit(newcomer, later), Ok(()));
        assert_eq!(sessions.len(), 1);
    }
}
