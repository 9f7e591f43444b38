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
