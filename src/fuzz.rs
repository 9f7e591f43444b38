//! Fuzz targets for every parser that reads bytes from outside the node, as property tests
//! on stable Rust (cargo-fuzz needs nightly): each feeds arbitrary input and asserts only
//! that the parser answers, with a value or a typed error, and never panics; where an
//! encoder exists, what it writes parses back unchanged. `PROPTEST_CASES` sets how many
//! inputs each gets (256 by default; `.ci/run` runs them with the other unit tests).
//!
//! | input | from | parser |
//! |---|---|---|
//! | key-value request bodies and paths | clients | `http::kv::KvRequest::parse`, `key_from_path` |
//! | view and shard bodies | clients | `http::view::socket_address`, `http::shard::shard_count` |
//! | causal-metadata tokens | clients | `CausalMetadata::decode` |
//! | relay frames | peers (after the handshake) | `relay::frame::decode_call`, `decode_answer` |
//! | relay handshakes | anyone reaching the relay port | `relay::handshake::reply`, `answer` |
//! | internal messages | peers | the `Rpc` bodies' `serde_json` decoders |
//! | gossip datagrams | anyone reaching the UDP port | `membership::auth` (open), `membership::wire::decode`, `membership::guard` |
//!
//! Beside the parsers, the state machines get hostile *sequences* of well-formed messages
//! (counters up to `u64::MAX`, eras from the future, clocks that jump, members that vanish),
//! with their invariants checked after every step: `causal::Replica`, the purge barrier
//! (`node::purge::Barrier`) and the order of shard maps (`ShardMap::supersedes`). A
//! sequence that breaks one is shrunk by proptest and kept as a unit test
//! (`replica::tests::local_writes_go_on_past_a_lamport_time_taken_in_at_the_bound`).

use bytes::BytesMut;
use proptest::prelude::*;

use crate::causal::CausalMetadata;
use crate::error::Op;
use crate::http::kv::{key_from_path, KvRequest};
use crate::membership::auth::{DatagramKey, Sessions};
use crate::membership::guard::{self, Known};
use crate::membership::wire::{self, Envelope, Id, Message};
use crate::peer::messages::*;
use crate::relay::frame::{decode_answer, decode_call, encode_call, Call, Incoming, Kind};
use crate::relay::handshake::{self, RelayKey};

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![Just(Op::Get), Just(Op::Put), Just(Op::Delete)]
}

/// Bytes that are JSON-ish half of the time: the interesting inputs are near-valid ones.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        "\\{(\"(value|causal-metadata|write-quorum|socket-address|shard-count)\": ?(\"[^\"]{0,40}\"|[0-9-]{1,12}|null|true|\\[\\]|\\{\\}),? ?){0,4}\\}?"
            .prop_map(String::into_bytes),
    ]
}

proptest! {
    #[test]
    fn key_value_requests(op in any_op(), key in "\\PC{0,80}", body in body()) {
        let _ = KvRequest::parse(op, key, &body);
    }

    #[test]
    fn key_value_paths(path in "(/key-value-store/)?[^#]{0,120}") {
        let _ = key_from_path(&path);
    }

    #[test]
    fn view_and_shard_bodies(body in body()) {
        let _ = crate::http::view::socket_address(&body);
        let _ = crate::http::shard::shard_count(&body);
    }

    #[test]
    fn metadata_tokens(token in "\\PC{0,200}", raw in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = CausalMetadata::decode(&token);
        let _ = CausalMetadata::decode_stored(&token);
        use base64::Engine;
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        let _ = CausalMetadata::decode(&encoded);
        let _ = CausalMetadata::decode_stored(&encoded);
    }

    #[test]
    fn relay_frames(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut calls = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode_call(&mut calls) {}
        let mut answers = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode_answer(&mut answers) {}
    }

    #[test]
    fn relay_calls_round_trip(
        id in any::<u64>(),
        origin in any::<u64>(),
        attempt in any::<u8>(),
        code in 0u8..4,
        hops in 0u32..=255,
        epoch in any::<u64>(),
        budget_ms in any::<u32>(),
        path in "\\PC{0,60}",
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let op = match code {
            0 => Kind::Kv(Op::Get),
            1 => Kind::Kv(Op::Put),
            2 => Kind::Kv(Op::Delete),
            _ => Kind::Internal,
        };
        let call = Call { id, origin, attempt, op, hops, epoch, budget_ms, path, body: body.into() };
        let mut buf = BytesMut::new();
        encode_call(&call, &mut buf).unwrap();
        prop_assert_eq!(decode_call(&mut buf), Ok(Some(Incoming::Call(call))));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn relay_handshakes(hello in any::<[u8; 21]>(), reply in proptest::collection::vec(any::<u8>(), 53)) {
        let key = RelayKey::from_secret(b"a secret");
        let _ = handshake::reply(&key, &hello, [7; 16]);
        let reply: [u8; 53] = reply.try_into().unwrap();
        prop_assert!(handshake::answer(&key, &[1; 16], &reply).is_err());
    }

    #[test]
    fn internal_messages(body in body()) {
        let _ = serde_json::from_slice::<ReplicateBatch>(&body);
        let _ = serde_json::from_slice::<SyncRequest>(&body);
        let _ = serde_json::from_slice::<Absorb>(&body);
        let _ = serde_json::from_slice::<MapMessage>(&body);
        let _ = serde_json::from_slice::<EpochMessage>(&body);
        let _ = serde_json::from_slice::<ViewChange>(&body);
        let _ = serde_json::from_slice::<serde_json::Value>(&body);
    }

    #[test]
    fn gossip_datagrams(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let key = DatagramKey::new(b"0123456789abcdef-fuzz");
        let me: std::net::SocketAddr = "10.0.0.1:8080".parse().unwrap();
        if let Ok((stamp, _)) = key.open(&bytes, &[me]) {
            let _ = Sessions::default().admit(stamp, 0);
        }
        if let Ok(envelope) = wire::decode(&bytes) {
            prop_assert_eq!(wire::decode(&wire::encode(&envelope)), Ok(envelope.clone()));
            let _ = Known::new(gossip_id("10.0.0.1:8080", 1)).admit(&envelope);
        }
    }

    /// Well-formed but hostile deltas (versions anywhere from 0 to `u64::MAX`, ids of any
    /// shape, repeated nodes): whatever the guard lets through keeps the rules chitchat
    /// asserts (a node's declared max version at or above each of its key versions, no
    /// garbage-collection reset), and survives a trip through the codec.
    #[test]
    fn hostile_gossip_deltas(delta in proptest::collection::vec(gossip_op(), 0..12)) {
        let envelope = Envelope { version: 0, message: Message::Ack { delta: delta.clone() } };
        let bytes = wire::encode(&envelope);
        prop_assert_eq!(wire::decode(&bytes), Ok(envelope.clone()));
        if guard::check(&envelope, &gossip_id("10.0.0.1:8080", 1)).is_ok() {
            let mut max = 0u64;
            let mut highest = 0u64;
            for op in &delta {
                match op {
                    wire::Op::Node { last_gc_version, .. } => {
                        prop_assert!(max >= highest);
                        prop_assert_eq!(*last_gc_version, 0);
                        max = 0;
                        highest = 0;
                    }
                    wire::Op::KeyValue { version, .. } => {
                        prop_assert!(*version > max);
                        max = *version;
                        highest = *version;
                    }
                    wire::Op::SetMaxVersion(v) => max = *v,
                }
            }
            prop_assert!(max >= highest);
        }
    }
}

fn gossip_id(name: &str, generation: u64) -> Id {
    Id {
        node_id: name.to_owned(),
        generation,
        gossip_addr: "127.0.0.2:8080".parse().unwrap(),
    }
}

fn gossip_version() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..20u64,
        Just(guard::MAX_VERSION),
        Just(guard::MAX_VERSION + 1),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

fn gossip_op() -> impl Strategy<Value = wire::Op> {
    let name = prop_oneof![
        Just("10.0.0.2:8080".to_string()),
        Just("10.0.0.1:8080".to_string()),
        "[a-z0-9.:]{0,12}",
    ];
    let key = prop_oneof![
        Just("map".to_string()),
        Just("stats".to_string()),
        "[a-z]{0,5}"
    ];
    prop_oneof![
        (name, 0..3u64, gossip_version(), gossip_version()).prop_map(|(n, g, gc, from)| {
            wire::Op::Node {
                id: gossip_id(&n, g),
                last_gc_version: gc % 3,
                from_version_excluded: from,
            }
        }),
        (key, "[a-z]{0,8}", gossip_version(), 0..3u8).prop_map(|(key, value, version, status)| {
            wire::Op::KeyValue {
                key,
                value,
                version,
                status,
            }
        }),
        gossip_version().prop_map(wire::Op::SetMaxVersion),
    ]
}

// --- State machines under hostile sequences ---------------------------------------------
//
// Well-formed but hostile messages, driven through the state machines with their
// invariants checked after every step: counters up to `u64::MAX`, eras from the future,
// clocks that jump. A failure here is a sequence proptest shrinks to its shortest form.

use crate::causal::{Admission, Replica, Stamp, VectorClock, MAX_COUNTER};
use crate::node::purge::Barrier;
use crate::shard::ShardMap;

fn fuzz_node(i: u8) -> crate::NodeId {
    crate::NodeId::from(std::net::SocketAddr::from(([10, 0, 0, i], 8080)))
}

fn hostile_counter() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..8u64,
        Just(MAX_COUNTER),
        Just(MAX_COUNTER + 1),
        Just(u64::MAX - 1),
        Just(u64::MAX),
    ]
}

fn hostile_clock() -> impl Strategy<Value = VectorClock> {
    proptest::collection::vec((1..4u8, hostile_counter()), 0..4).prop_map(|entries| {
        entries
            .into_iter()
            .map(|(n, v)| (fuzz_node(n), v))
            .collect()
    })
}

/// What a replica can be made to do, by its clients and its peers.
#[derive(Debug, Clone)]
enum ReplicaStep {
    /// A client's write here, with a token of these dependencies.
    Write(u64, VectorClock),
    /// A peer's write: its stamp and clock.
    Push(Stamp, VectorClock),
    /// A peer's state taken in (a full copy).
    Absorb(VectorClock, u64),
    /// A reshard's new era.
    Era(u64),
}

fn replica_step() -> impl Strategy<Value = ReplicaStep> {
    let stamp = (
        hostile_counter(),
        hostile_counter(),
        2..4u8,
        hostile_counter(),
    )
        .prop_map(|(era, lamport, origin, seq)| Stamp {
            era,
            lamport,
            origin: fuzz_node(origin),
            seq,
        });
    prop_oneof![
        (hostile_counter(), hostile_clock()).prop_map(|(e, c)| ReplicaStep::Write(e, c)),
        (stamp, hostile_clock()).prop_map(|(s, c)| ReplicaStep::Push(s, c)),
        (hostile_clock(), hostile_counter()).prop_map(|(c, l)| ReplicaStep::Absorb(c, l)),
        (0..3u64).prop_map(ReplicaStep::Era),
    ]
}

/// Applies one step, checking what it must keep: a local write's sequence number follows
/// the last, its Lamport time exceeds every one the replica had, and no counter passes
/// [`MAX_COUNTER`] but by the replica's own writes (`writes` so far), so none can wrap.
fn replica_apply(
    r: &mut Replica,
    step: ReplicaStep,
    writes: &mut u64,
) -> Result<(), TestCaseError> {
    let (seq_before, lamport_before) = (r.own_seq(), r.lamport());
    match step {
        ReplicaStep::Write(era, clock) => {
            let deps = crate::causal::CausalMetadata::new(era, clock);
            let (stamp, _) = r.stamp_local_write(&deps);
            *writes += 1;
            prop_assert_eq!(stamp.seq, seq_before + 1);
            prop_assert!(stamp.lamport > lamport_before);
        }
        ReplicaStep::Push(stamp, clock) => {
            if r.admit(&stamp, &clock, |_| true) == Admission::Apply {
                prop_assert!(stamp.lamport <= MAX_COUNTER && stamp.seq <= MAX_COUNTER);
                r.record_applied(&stamp);
            }
        }
        ReplicaStep::Absorb(clock, lamport) => r.absorb(&clock, lamport),
        ReplicaStep::Era(era) if era > r.era() => r.start_era(era),
        ReplicaStep::Era(_) => {}
    }
    let bound = MAX_COUNTER + *writes;
    prop_assert!(r.lamport() <= bound && r.lamport() >= lamport_before);
    prop_assert!(r.applied().iter().all(|(_, v)| *v <= bound));
    Ok(())
}

/// A shard of three members' applied clocks as they grow: each step raises one member's
/// clock (or hides it, or moves it to another era), then runs a purge round.
#[derive(Debug, Clone)]
enum PurgeStep {
    Apply {
        member: usize,
        origin: u8,
        upto: u64,
    },
    Unknown(usize),
    Era(usize, u64),
}

fn purge_step() -> impl Strategy<Value = PurgeStep> {
    prop_oneof![
        4 => (0..3usize, 1..4u8, 1..20u64)
            .prop_map(|(member, origin, upto)| PurgeStep::Apply { member, origin, upto }),
        1 => (0..3usize).prop_map(PurgeStep::Unknown),
        1 => (0..3usize, 0..2u64).prop_map(|(m, e)| PurgeStep::Era(m, e)),
    ]
}

proptest! {
    #[test]
    fn replicas_under_hostile_sequences(steps in proptest::collection::vec(replica_step(), 0..40)) {
        let mut r = Replica::new(fuzz_node(1), 0);
        let mut writes = 0;
        for step in steps {
            replica_apply(&mut r, step, &mut writes)?;
        }
    }

    /// The barrier's safety: what it lets be purged, every member has applied, in the
    /// era asked about; with a member unknown or in another era, nothing.
    #[test]
    fn the_purge_barrier_under_any_member_clocks(steps in proptest::collection::vec(purge_step(), 0..60)) {
        let mut barrier = Barrier::default();
        let mut members: Vec<Option<(u64, VectorClock)>> = vec![Some((0, VectorClock::new())); 3];
        for step in steps {
            match step {
                PurgeStep::Apply { member, origin, upto } => {
                    let entry = members[member].get_or_insert((0, VectorClock::new()));
                    if entry.1.get(&fuzz_node(origin)) < upto {
                        entry.1.set(fuzz_node(origin), upto);
                    }
                }
                PurgeStep::Unknown(member) => members[member] = None,
                PurgeStep::Era(member, era) => members[member] = Some((era, VectorClock::new())),
            }
            if let Some(floor) = barrier.advance(0, &members) {
                for member in &members {
                    let (era, clock) = member.as_ref().expect("a purge with a member unknown");
                    prop_assert_eq!(*era, 0);
                    prop_assert!(clock.dominates(&floor), "{clock:?} lacks {floor:?}");
                }
            }
        }
    }

    /// Maps from anywhere (epochs up to `u64::MAX`, any shards, of two stores or none):
    /// `supersedes` never holds both ways, and nodes that hear the same maps of one store
    /// in any order end on the same one.
    #[test]
    fn shard_maps_order_strictly(
        maps in proptest::collection::vec(
            (hostile_counter(), 0..3u64, any::<bool>(), proptest::collection::btree_map(0..3u32, proptest::collection::btree_set(1..6u8, 1..3), 0..3), 0..3usize),
            1..6,
        )
    ) {
        let maps: Vec<ShardMap> = maps
            .into_iter()
            .map(|(epoch, era, formed, shards, store)| ShardMap {
                epoch,
                era,
                formed,
                shards: shards
                    .into_iter()
                    .map(|(id, nodes)| (id, nodes.into_iter().map(fuzz_node).collect()))
                    .collect(),
                store: ["", "one store", "another"][store].to_owned(),
            })
            .collect();
        let stores: std::collections::BTreeSet<&str> =
            maps.iter().map(|m| m.store.as_str()).filter(|s| !s.is_empty()).collect();
        for a in &maps {
            prop_assert!(!a.supersedes(a));
            for b in &maps {
                prop_assert!(!(a.supersedes(b) && b.supersedes(a)), "{a:?} and {b:?}");
            }
        }
        let winner = |order: &mut dyn Iterator<Item = &ShardMap>| {
            order.fold(ShardMap::none(), |held, m| if m.supersedes(&held) { m.clone() } else { held })
        };
        if stores.len() > 1 {
            // Which store a node follows is the first it heard; each keeps to it.
            return Ok(());
        }
        let forward = winner(&mut maps.iter());
        let backward = winner(&mut maps.iter().rev());
        prop_assert_eq!(forward.digest(), backward.digest());
        prop_assert_eq!(forward.epoch, backward.epoch);
    }
}
