//! The gossip port, guarded: every datagram is authenticated ([`super::auth`], with a
//! cluster secret), decoded by code of our own ([`super::wire`]) and checked
//! ([`super::guard`]) before chitchat hears it.
//!
//! Chitchat hands a transport decoded envelopes and cannot be given bytes, and its
//! encoding is private to the crate. So the transport keeps chitchat's own UDP socket, bound
//! to an ephemeral loopback port, as its codec, and relays between it and the public port:
//!
//! ```text
//!  peer P  <--- sealed datagrams --->  public port  <--- relay socket of P --->  chitchat's socket
//!                                       (this transport)      (127.0.0.1:x)         (127.0.0.1:y)
//! ```
//!
//! Each peer has a relay socket of its own on loopback, so that what chitchat's socket
//! hears from it, and what chitchat sends to it, is known to be P's with no bookkeeping
//! that a cancelled receive could put out of step (chitchat's loop cancels `recv` on every
//! tick). The relay sockets are bounded ([`MAX_PEERS`]; the least recently used goes).
//! Anything chitchat's socket hears from another loopback port is dropped.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chitchat::transport::{
    RecvOutcome, SendOutcome, Socket, Transport, UdpSocket as ChitchatSocket,
};
use chitchat::ChitchatEnvelope;
use tokio::net::UdpSocket;

use super::auth::{AuthError, DatagramKey, Sessions, Stamp};
use super::guard::{Known, Refusal};
use super::wire::{self, MAX_DATAGRAM_BYTES};

/// The most peers with a relay socket at once: a store's nodes, and the addresses it
/// gossiped with lately. A datagram from one more closes the least recently used.
pub const MAX_PEERS: usize = 256;
/// How long a datagram may take over loopback from chitchat's socket to a relay socket
/// (it is there at once; the bound only keeps a lost one from stalling gossip).
const LOOPBACK_WAIT: Duration = Duration::from_millis(500);

/// What happened to the datagrams of one node's gossip port, for `/metrics`.
#[derive(Debug, Default)]
pub struct GossipCounters {
    pub accepted: AtomicU64,
    /// Without a tag that holds (no secret, another secret, altered, another receiver).
    pub unauthenticated: AtomicU64,
    /// A tag that holds, but seen before or sent outside the time horizon.
    pub replayed: AtomicU64,
    /// Not a chitchat datagram chitchat would decode.
    pub malformed: AtomicU64,
    /// Decoded, but against [`super::guard`]'s rules.
    pub refused: AtomicU64,
    /// Heard with the digest entries of unknown nodes cut (the node holds its bound).
    pub cut: AtomicU64,
    pub sent: AtomicU64,
    /// Chitchat's datagram plus the seal would not fit in one UDP datagram.
    pub too_large: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Times the gossip task stopped and was started again.
    pub restarts: AtomicU64,
    /// Node incarnations chitchat holds state for (a gauge, set every gossip round).
    pub node_states: AtomicU64,
}

/// The counters' values at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GossipStats {
    pub accepted: u64,
    pub unauthenticated: u64,
    pub replayed: u64,
    pub malformed: u64,
    pub refused: u64,
    pub cut: u64,
    pub sent: u64,
    pub too_large: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub restarts: u64,
    pub node_states: u64,
}

impl GossipCounters {
    pub fn snapshot(&self) -> GossipStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GossipStats {
            accepted: get(&self.accepted),
            unauthenticated: get(&self.unauthenticated),
            replayed: get(&self.replayed),
            malformed: get(&self.malformed),
            refused: get(&self.refused),
            cut: get(&self.cut),
            sent: get(&self.sent),
            too_large: get(&self.too_large),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            restarts: get(&self.restarts),
            node_states: get(&self.node_states),
        }
    }
}

/// Counts one more, and says whether that is worth a log line: the 1st, 2nd, 4th, 8th...
/// of its kind, so that a flood of bad datagrams logs a few dozen lines, not millions.
fn count(counter: &AtomicU64) -> bool {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    n.is_power_of_two()
}

/// The transport chitchat is spawned with (see the module's documentation).
pub struct GuardedTransport {
    /// With a cluster secret: seal what is sent, open what is heard.
    pub key: Option<DatagramKey>,
    /// Where peers send this node's gossip (the advertised address).
    pub advertised: SocketAddr,
    pub known: Arc<Mutex<Known>>,
    pub counters: Arc<GossipCounters>,
}

#[async_trait]
impl Transport for GuardedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let public = UdpSocket::bind(listen_addr)
            .await
            .map_err(|e| anyhow::anyhow!("failed to bind to {listen_addr}/UDP for gossip: {e}"))?;
        let loopback = loopback_of(listen_addr);
        let chitchat = ChitchatSocket::open(SocketAddr::new(loopback, 0)).await?;
        let chitchat_addr = chitchat.local_addr()?;
        let mut me = vec![self.advertised];
        let bound = public.local_addr()?;
        if !bound.ip().is_unspecified() && bound != self.advertised {
            me.push(bound);
        }
        Ok(Box::new(GuardedSocket {
            public,
            chitchat,
            chitchat_addr,
            relays: Relays::new(loopback),
            key: self.key.clone(),
            me,
            sessions: Sessions::default(),
            session: rand::random(),
            counter: 0,
            known: self.known.clone(),
            counters: self.counters.clone(),
            buf: vec![0u8; MAX_DATAGRAM_BYTES + 1].into_boxed_slice(),
        }))
    }
}

fn loopback_of(addr: SocketAddr) -> IpAddr {
    match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Relay {
    socket: UdpSocket,
    /// The socket's own loopback address, where chitchat's socket sends to this peer.
    addr: SocketAddr,
    used: Instant,
}

/// A relay socket per peer, and the peer of each relay socket.
struct Relays {
    loopback: IpAddr,
    by_peer: HashMap<SocketAddr, Relay>,
    peer_of: HashMap<SocketAddr, SocketAddr>,
}

impl Relays {
    fn new(loopback: IpAddr) -> Self {
        Self {
            loopback,
            by_peer: HashMap::new(),
            peer_of: HashMap::new(),
        }
    }

    async fn of(&mut self, peer: SocketAddr) -> std::io::Result<&Relay> {
        if !self.by_peer.contains_key(&peer) {
            if self.by_peer.len() >= MAX_PEERS {
                self.close_least_recent();
            }
            let socket = UdpSocket::bind(SocketAddr::new(self.loopback, 0)).await?;
            let addr = socket.local_addr()?;
            self.peer_of.insert(addr, peer);
            let used = Instant::now();
            self.by_peer.insert(peer, Relay { socket, addr, used });
        }
        let relay = self.by_peer.get_mut(&peer).expect("inserted above");
        relay.used = Instant::now();
        Ok(relay)
    }

    fn close_least_recent(&mut self) {
        let oldest = self
            .by_peer
            .iter()
            .min_by_key(|(_, r)| r.used)
            .map(|(peer, _)| *peer);
        if let Some(relay) = oldest.and_then(|peer| self.by_peer.remove(&peer)) {
            self.peer_of.remove(&relay.addr);
        }
    }
}

struct GuardedSocket {
    public: UdpSocket,
    chitchat: ChitchatSocket,
    chitchat_addr: SocketAddr,
    relays: Relays,
    key: Option<DatagramKey>,
    /// The addresses a sealed datagram for this node may have been sent to.
    me: Vec<SocketAddr>,
    sessions: Sessions,
    session: u64,
    counter: u64,
    known: Arc<Mutex<Known>>,
    counters: Arc<GossipCounters>,
    buf: Box<[u8]>,
}

enum Heard {
    Public(std::io::Result<(usize, SocketAddr)>),
    Chitchat(anyhow::Result<RecvOutcome>),
}

#[async_trait]
impl Socket for GuardedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.public.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let relay_addr = self.relays.of(to).await?.addr;
        self.chitchat.send(relay_addr, envelope).await?;
        let Some(n) = self.take_from_chitchat(to).await? else {
            return Ok(SendOutcome { num_bytes_sent: 0 });
        };
        let stamp = self.next_stamp();
        let datagram = match &self.key {
            Some(key) => key.seal(stamp, &self.buf[..n], to),
            None => self.buf[..n].to_vec(),
        };
        if datagram.len() > MAX_DATAGRAM_BYTES {
            if count(&self.counters.too_large) {
                log::warn!(
                    "a gossip datagram of {} bytes does not fit once sealed; dropped",
                    n
                );
            }
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        self.public.send_to(&datagram, to).await?;
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_out
            .fetch_add(datagram.len() as u64, Ordering::Relaxed);
        Ok(SendOutcome {
            num_bytes_sent: datagram.len(),
        })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let heard = tokio::select! {
                r = self.public.recv_from(&mut self.buf[..]) => Heard::Public(r),
                r = self.chitchat.recv() => Heard::Chitchat(r),
            };
            match heard {
                Heard::Public(Ok((n, from))) => self.admit(n, from).await,
                Heard::Public(Err(e)) if is_transient(&e) => {}
                Heard::Public(Err(e)) => anyhow::bail!("gossip port: {e}"),
                Heard::Chitchat(Ok(outcome)) => {
                    if let Some(peer) = self.relays.peer_of.get(&outcome.from_addr) {
                        return Ok(RecvOutcome {
                            from_addr: *peer,
                            ..outcome
                        });
                    }
                }
                Heard::Chitchat(Err(e)) => return Err(e),
            }
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), OutOfMemory | ConnectionReset | ConnectionRefused)
}

impl GuardedSocket {
    /// Reads what chitchat's socket sent to `to`'s relay socket into the buffer.
    async fn take_from_chitchat(&mut self, to: SocketAddr) -> anyhow::Result<Option<usize>> {
        let relay = self.relays.of(to).await?;
        let until = tokio::time::Instant::now() + LOOPBACK_WAIT;
        loop {
            let heard = tokio::time::timeout_at(until, relay.socket.recv_from(&mut self.buf[..]));
            match heard.await {
                Err(_) => return Ok(None),
                Ok(Ok((n, from))) if from == self.chitchat_addr => return Ok(Some(n)),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    fn next_stamp(&mut self) -> Stamp {
        self.counter += 1;
        Stamp {
            session: self.session,
            counter: self.counter,
            sent_ms: now_ms(),
        }
    }

    /// Checks the datagram of `n` bytes in the buffer from `from`, and hands it to
    /// chitchat if it passes.
    async fn admit(&mut self, n: usize, from: SocketAddr) {
        self.counters
            .bytes_in
            .fetch_add(n as u64, Ordering::Relaxed);
        let payload = match self.open(n) {
            Ok(payload) => payload,
            Err(e) => {
                let counter = match e {
                    AuthError::Unsealed | AuthError::Tag => &self.counters.unauthenticated,
                    AuthError::Stale | AuthError::Replayed | AuthError::Full => {
                        &self.counters.replayed
                    }
                };
                if count(counter) {
                    log::warn!("gossip datagram from {from} refused: {e}");
                }
                return;
            }
        };
        let payload = match self.check(payload) {
            Ok(payload) => payload,
            Err(e) => {
                let counter = match e {
                    Checked::Malformed(_) => &self.counters.malformed,
                    Checked::Refused(_) => &self.counters.refused,
                };
                if count(counter) {
                    log::warn!("gossip datagram from {from} refused: {e}");
                }
                return;
            }
        };
        let relay = match self.relays.of(from).await {
            Ok(relay) => relay,
            Err(e) => {
                log::warn!("gossip: no relay socket for {from}: {e}");
                return;
            }
        };
        if relay
            .socket
            .send_to(&payload, self.chitchat_addr)
            .await
            .is_ok()
        {
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Chitchat's bytes of the datagram in the buffer, if it is authentic and fresh.
    fn open(&mut self, n: usize) -> Result<Vec<u8>, AuthError> {
        let datagram = &self.buf[..n];
        let Some(key) = &self.key else {
            return Ok(datagram.to_vec());
        };
        let (stamp, payload) = key.open(datagram, &self.me)?;
        self.sessions.admit(stamp, now_ms())?;
        Ok(payload.to_vec())
    }

    /// The datagram chitchat is to hear: `payload` if it passes as it is, or with the
    /// digest entries cut that would take the node past its bound.
    fn check(&self, payload: Vec<u8>) -> Result<Vec<u8>, Checked> {
        let (envelope, digest_end) = wire::decode_split(&payload).map_err(Checked::Malformed)?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        match known.admit(&envelope).map_err(Checked::Refused)? {
            None => Ok(payload),
            Some(kept) => {
                if count(&self.counters.cut) {
                    log::warn!(
                        "gossip holds {} node states, its bound: unknown nodes cut from a digest",
                        known.held()
                    );
                }
                Ok(wire::with_digest(&payload, digest_end, &kept))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Checked {
    #[error("{0}")]
    Malformed(wire::WireError),
    #[error("{0}")]
    Refused(Refusal),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::wire::{DigestEntry, Envelope, Id, Message, Op};

    /// What our encoder writes, chitchat's own decoder reads: sent to chitchat's socket,
    /// each datagram comes out as an envelope (a datagram it cannot decode, it skips).
    #[tokio::test]
    async fn chitchat_decodes_what_we_encode() {
        let mut chitchat = ChitchatSocket::open("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let to = chitchat.local_addr().unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let id = Id {
            node_id: "kvs-0.kvs:8080".into(),
            generation: 1_796_000_000_000,
            gossip_addr: "127.0.0.9:8080".parse().unwrap(),
        };
        let digest = vec![DigestEntry {
            id: id.clone(),
            heartbeat: 40,
            last_gc_version: 0,
            max_version: 12,
        }];
        let delta = vec![
            Op::Node {
                id,
                last_gc_version: 0,
                from_version_excluded: 3,
            },
            Op::KeyValue {
                key: "map".into(),
                value: "{\"epoch\":4}".into(),
                version: 12,
                status: 0,
            },
        ];
        for version in [0, 1] {
            let envelopes = [
                Message::Syn {
                    digest: digest.clone(),
                    cluster_id: "kvs".into(),
                },
                Message::SynAck {
                    digest: digest.clone(),
                    delta: delta.clone(),
                },
                Message::Ack {
                    delta: delta.clone(),
                },
                Message::BadCluster,
            ];
            for message in envelopes {
                let bytes = wire::encode(&Envelope { version, message });
                sender.send_to(&bytes, to).await.unwrap();
                let heard = tokio::time::timeout(Duration::from_secs(5), chitchat.recv())
                    .await
                    .expect("chitchat decoded the datagram")
                    .unwrap();
                assert_eq!(heard.num_bytes_received, bytes.len());
                let seen = format!("{:?}", heard.envelope);
                for part in ["kvs-0.kvs:8080", "1796000000000", "127.0.0.9:8080"] {
                    let has_digest = !matches!(
                        heard.envelope.message,
                        chitchat::ChitchatMessage::BadCluster
                    );
                    assert!(!has_digest || seen.contains(part), "{part} not in {seen}");
                }
            }
        }
    }
}
