//! Gossip as a hostile or broken peer speaks it, for the attack tests and the soak: a
//! peer of the test's own (sealing with the secret, as a member would, or not, as an
//! outsider), and the datagrams found to break chitchat 0.13 (issue 22), built with the
//! store's own encoder (`kvs::membership::wire`).

use std::net::SocketAddr;
use std::time::Duration;

use kvs::membership::auth::{DatagramKey, Stamp};
use kvs::membership::wire::{self, DigestEntry, Envelope, Id, Message, Op};
use tokio::net::UdpSocket;

/// How long a test waits for an answer that should come (a gossip round is 200 ms).
pub const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// A gossip peer of the test's own: a UDP socket, sealing what it sends if it holds the
/// secret (a member of the store would), or sending bytes as they are (an outsider).
pub struct Peer {
    pub socket: UdpSocket,
    key: Option<DatagramKey>,
    session: u64,
    counter: u64,
}

impl Peer {
    pub async fn new(secret: Option<&str>) -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.expect("a UDP socket"),
            key: secret.map(|s| DatagramKey::new(s.as_bytes())),
            session: rand::random(),
            counter: 0,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("bound")
    }

    pub async fn send(&mut self, bytes: &[u8], to: SocketAddr) -> Vec<u8> {
        let datagram = match &self.key {
            Some(key) => {
                self.counter += 1;
                let stamp = Stamp {
                    session: self.session,
                    counter: self.counter,
                    sent_ms: now_ms(),
                };
                key.seal(stamp, bytes, to)
            }
            None => bytes.to_vec(),
        };
        self.socket.send_to(&datagram, to).await.expect("sent");
        datagram
    }

    /// The next datagram that arrives within `wait`, opened if this peer holds the secret.
    pub async fn answer(&self, wait: Duration) -> Option<Envelope> {
        let (_, payload) = self.answer_raw(wait).await?;
        wire::decode(&payload).ok()
    }

    /// The next datagram that arrives within `wait`: as it came, and chitchat's bytes in
    /// it (those whose tag holds, if this peer holds the secret).
    pub async fn answer_raw(&self, wait: Duration) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut buf = vec![0u8; 65_536];
        let (n, _) = tokio::time::timeout(wait, self.socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        let raw = buf[..n].to_vec();
        let payload = match &self.key {
            Some(key) => key.open(&raw, &[self.addr()]).ok()?.1.to_vec(),
            None => raw.clone(),
        };
        Some((raw, payload))
    }

    /// Drops whatever arrived so far.
    pub async fn drain(&self) {
        while self.answer(Duration::from_millis(50)).await.is_some() {}
    }

    /// The incarnations node `to` holds state for, with their max versions: what an
    /// empty `SynAck` makes it send back. (Against a build before issue 22, which answers
    /// anyone, an unsealed one is tried too: the attack is then aimed as an outsider
    /// would aim it.)
    pub async fn learn(&mut self, to: SocketAddr) -> Vec<(Id, u64)> {
        for attempt in 0..10 {
            if attempt < 5 || self.key.is_none() {
                self.send(&empty_syn_ack(), to).await;
            } else {
                self.socket
                    .send_to(&empty_syn_ack(), to)
                    .await
                    .expect("sent");
            }
            let heard = match attempt < 5 || self.key.is_none() {
                true => self.answer(ANSWER_WAIT).await,
                false => self.answer_unsealed(ANSWER_WAIT).await,
            };
            if let Some(Envelope {
                message: Message::Ack { delta },
                ..
            }) = heard
            {
                return node_versions(&delta);
            }
        }
        panic!("node {to} never answered an empty SynAck");
    }

    async fn answer_unsealed(&self, wait: Duration) -> Option<Envelope> {
        let mut buf = vec![0u8; 65_536];
        let (n, _) = tokio::time::timeout(wait, self.socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        wire::decode(&buf[..n]).ok()
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn node_versions(delta: &[Op]) -> Vec<(Id, u64)> {
    let mut out: Vec<(Id, u64)> = Vec::new();
    for op in delta {
        match op {
            Op::Node { id, .. } => out.push((id.clone(), 0)),
            Op::KeyValue { version, .. } | Op::SetMaxVersion(version) => {
                if let Some(last) = out.last_mut() {
                    last.1 = last.1.max(*version);
                }
            }
        }
    }
    out
}

pub fn syn_ack(digest: Vec<DigestEntry>, delta: Vec<Op>) -> Vec<u8> {
    wire::encode(&Envelope {
        version: 0,
        message: Message::SynAck { digest, delta },
    })
}

/// 7 bytes: answered with every node's state.
pub fn empty_syn_ack() -> Vec<u8> {
    syn_ack(vec![], vec![])
}

pub fn fake_entry(name: &str, gossip_addr: SocketAddr) -> DigestEntry {
    DigestEntry {
        id: Id {
            node_id: name.to_owned(),
            generation: 1,
            gossip_addr,
        },
        heartbeat: 1,
        last_gc_version: 0,
        max_version: 0,
    }
}

/// A fake node whose gossip address is the sender's: a node then opens gossip rounds
/// with it, `Syn`s carrying the cluster id.
pub fn planted_fake(sender: SocketAddr) -> Vec<u8> {
    syn_ack(vec![fake_entry("10.99.0.1:8080", sender)], vec![])
}

/// A delta for `victim` with a key above its declared max version: panicked the receiver
/// (`node_delta.max_version >= self.max_version`).
pub fn max_version_below_a_key(victim: &Id, max: u64) -> Vec<u8> {
    let delta = vec![
        Op::Node {
            id: victim.clone(),
            last_gc_version: 0,
            from_version_excluded: 0,
        },
        Op::KeyValue {
            key: "stats".into(),
            value: "{}".into(),
            version: max + 1_000,
            status: 0,
        },
        Op::SetMaxVersion(max + 999),
    ];
    syn_ack(vec![], delta)
}

/// `count` fake nodes in one digest.
pub fn fake_nodes(count: usize, from: usize) -> Vec<u8> {
    let digest = (from..from + count)
        .map(|i| {
            // On loopback: a node may open gossip rounds with the fakes it holds.
            let addr = SocketAddr::from(([127, 98, (i / 250) as u8, (i % 250) as u8], 8080));
            fake_entry(&addr.to_string(), addr)
        })
        .collect();
    syn_ack(digest, vec![])
}

/// One fake node with a 65,000-byte id.
pub fn huge_id() -> Vec<u8> {
    let name = format!("{}:8080", "a".repeat(65_000));
    syn_ack(
        vec![fake_entry(&name, "127.97.0.1:8080".parse().unwrap())],
        vec![],
    )
}

/// A delta that makes receivers reset `victim`'s state: a huge garbage-collection version
/// and `from_version_excluded` 0. Dropped the victim from the other nodes' views for good.
pub fn reset(victim: &Id) -> Vec<u8> {
    let delta = vec![
        Op::Node {
            id: victim.clone(),
            last_gc_version: 1 << 40,
            from_version_excluded: 0,
        },
        Op::SetMaxVersion(1 << 40),
    ];
    syn_ack(vec![], delta)
}
