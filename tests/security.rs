//! Who may do what: the admin token guards administrative changes, and the cluster secret
//! keys the causal-metadata tokens so that nobody outside the store can mint one.

mod common;

use common::*;
use kvs::causal::{CausalMetadata, VectorClock};
use serde_json::{json, Value};

const FMT: &str = "2019";
const TOKEN: &str = "an-admin-token-for-tests";

async fn send(
    method: reqwest::Method,
    url: &str,
    body: Value,
    authorization: Option<&str>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(HTTP_TIMEOUT);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let answer = request.send().await.expect("node answers");
    let status = answer.status().as_u16();
    (
        status,
        parse_body(&answer.bytes().await.unwrap_or_default()),
    )
}

/// With `KVS_ADMIN_TOKEN` set, view changes, add-member and reshard without the token (or
/// with a wrong one) are refused 401 and change nothing; with it they go through. Reads of
/// the view and the shards, and the key-value operations, stay open.
#[tokio::test]
async fn administrative_changes_need_the_admin_token_when_one_is_set() {
    let c = Cluster::start_with_env(4, Some(2), FMT, &[("KVS_ADMIN_TOKEN", TOKEN)]).await;
    let outsider = "10.99.0.1:8080";
    let bearer = format!("Bearer {TOKEN}");
    let attempts = [
        (
            reqwest::Method::PUT,
            c.view_url(0),
            json!({"socket-address": outsider}),
        ),
        (
            reqwest::Method::DELETE,
            c.view_url(1),
            json!({"socket-address": c.addr(2).to_string()}),
        ),
        (
            reqwest::Method::PUT,
            c.url(2, "/key-value-store-shard/add-member/0"),
            json!({"socket-address": outsider}),
        ),
        (
            reqwest::Method::PUT,
            c.url(3, "/key-value-store-shard/reshard"),
            json!({"shard-count": 1}),
        ),
    ];
    for (method, url, body) in &attempts {
        for authorization in [None, Some("Bearer wrong-token"), Some(TOKEN)] {
            let (s, b) = send(method.clone(), url, body.clone(), authorization).await;
            assert_eq!(s, 401, "{method} {url} with {authorization:?}: {b}");
            assert!(
                b["error"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("Admin token required"),
                "{b}"
            );
        }
    }
    // Nothing changed.
    let mut view: Vec<String> = c.view_of(0).await.unwrap();
    view.sort();
    let mut all: Vec<String> = c.addrs().iter().map(ToString::to_string).collect();
    all.sort();
    assert_eq!(view, all);
    let (s, b) = get(&c.url(0, "/key-value-store-shard/shard-ids"), None).await;
    assert_eq!((s, b["shard-ids"].clone()), (200, json!("0,1")), "{b}");
    // The key-value operations need no token.
    let (s, b) = c.kv_put(1, "k", "v", "").await;
    assert_eq!(s, 201, "{b}");
    // With the token, the change is made (here: the removal of an address not in the view,
    // answered as the contract says).
    let (s, b) = send(
        reqwest::Method::DELETE,
        &c.view_url(0),
        json!({"socket-address": outsider}),
        Some(&bearer),
    )
    .await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(
        b["error"], "Socket address does not exist in the view",
        "{b}"
    );
}

/// With a cluster secret, tokens are keyed with it: a token another store issued, or one
/// minted by anyone who knows the format (as this test does), is answered 400 "Invalid
/// causal metadata"; the store's own tokens work as before.
#[tokio::test]
async fn tokens_are_keyed_with_the_cluster_secret() {
    let one = Cluster::start_with_env(
        2,
        Some(1),
        FMT,
        &[("KVS_CLUSTER_SECRET", "the-first-store-secret-0123456789")],
    )
    .await;
    let two = Cluster::start_with_env(
        2,
        Some(1),
        FMT,
        &[("KVS_CLUSTER_SECRET", "the-second-store-secret-987654321")],
    )
    .await;
    let (s, b) = one.kv_put(0, "k", "v", "").await;
    assert_eq!(s, 201, "{b}");
    let token = b["causal-metadata"].as_str().unwrap().to_owned();
    // Its own token, through the other member.
    let (s, b, _) = one
        .poll_get(1, "k", Some(&token), CONVERGE_TIMEOUT, |s, _| s == 200)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((s, b["value"].clone()), (200, json!("v")), "{b}");
    let invalid = |s: u16, b: &Value| {
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["error"], "Invalid causal metadata", "{b}");
    };
    // The first store's token at the second.
    let (s, b) = two.kv_put(0, "k", "w", &token).await;
    invalid(s, &b);
    let (s, b) = two.kv_get(1, "k", Some(&token)).await;
    invalid(s, &b);
    // A token minted outside the store, naming the first store's node.
    let clock: VectorClock = [(kvs::NodeId::from(one.addr(0)), 1)].into_iter().collect();
    let forged = CausalMetadata::new(0, clock).encode();
    let (s, b) = one.kv_put(1, "k", "hijacked", &forged).await;
    invalid(s, &b);
    let (s, b) = one.kv_get(0, "k", None).await;
    assert_eq!((s, b["value"].clone()), (200, json!("v")), "{b}");
}

/// A node refuses to start with a secret too short to protect anything, naming the
/// variable.
#[test]
fn a_short_cluster_secret_is_refused_at_start() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kvs"))
        .env_clear()
        .env("SOCKET_ADDRESS", "127.0.0.1:1")
        .env("VIEW", "127.0.0.1:1")
        .env("KVS_CLUSTER_SECRET", "tiny-secret")
        .output()
        .expect("run kvs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("KVS_CLUSTER_SECRET") && stderr.contains("too short"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("tiny-secret"),
        "the secret was printed: {stderr}"
    );
}

/// A store restarted with another secret (a rotation: `KVS_CLUSTER_SECRET_PREVIOUS` names
/// the old one, or the data directories are refused) keeps every value and still copies
/// them between its nodes (stored tokens are read without their tag); only the tokens
/// clients hold from before are refused.
#[tokio::test]
async fn a_changed_secret_loses_no_data() {
    let mut c = Cluster::start_with_env(
        2,
        Some(1),
        FMT,
        &[("KVS_CLUSTER_SECRET", "the-old-secret-of-this-store-0123")],
    )
    .await;
    let (s, b) = c.kv_put(1, "k", "v", "").await;
    assert_eq!(s, 201, "{b}");
    let old = b["causal-metadata"].as_str().unwrap().to_owned();
    // Node 0 holds it (asked without metadata, which node 1 could have served instead).
    c.poll_get(0, "k", None, CONVERGE_TIMEOUT, |s, _| s == 200)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..2 {
        c.set_env(
            i,
            &[
                ("KVS_CLUSTER_SECRET", "the-new-secret-of-this-store-9876"),
                (
                    "KVS_CLUSTER_SECRET_PREVIOUS",
                    "the-old-secret-of-this-store-0123",
                ),
            ],
        );
    }
    c.kill(1);
    c.restart(0);
    // Node 1 comes back empty and copies its shard from node 0.
    let data = c.log_dir.join("node1-data");
    std::fs::remove_dir_all(&data).expect("remove node 1's data");
    c.restart(1);
    let (s, b, _) = c
        .poll_get(1, "k", None, CONVERGE_TIMEOUT, |s, _| s == 200)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(b["value"], "v", "{s} {b}");
    let (s, b) = c.kv_get(0, "k", Some(&old)).await;
    assert_eq!(
        (s, b["error"].clone()),
        (400, json!("Invalid causal metadata")),
        "{b}"
    );
    // A client that starts over depends, once it reads "k", on the write of "k" made
    // under the old secret (node 1's first write), not only on its own.
    let (s, b) = c.kv_put(0, "j", "x", "").await;
    assert_eq!(s, 201, "{b}");
    let own = b["causal-metadata"].as_str().unwrap().to_owned();
    let (s, b) = c.kv_get(0, "k", Some(&own)).await;
    assert_eq!(s, 200, "{b}");
    let read = b["causal-metadata"].as_str().unwrap().to_owned();
    assert_ne!(read, own, "the read dropped the value's dependencies");
    let (s, b) = c.kv_put(0, "k", "w", &read).await;
    assert_eq!(s, 200, "{b}");
    let fresh = b["causal-metadata"].as_str().unwrap().to_owned();
    c.poll_get(1, "k", Some(&fresh), CONVERGE_TIMEOUT, |s, b| {
        s == 200 && b["value"] == "w"
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// An outsider gets nowhere as a node: the client port serves no internal path (the crafted
/// record of the bug report, POSTed to `/internal/absorb`, is a 404 and changes nothing),
/// and the relay port refuses a connection without the store's secret before any call.
#[tokio::test]
async fn an_outsider_cannot_act_as_a_node_on_any_port() {
    let secret = "the-secret-of-the-outsider-test-store";
    let mut c = Cluster::spawn_some(2, 0, Some(1), FMT);
    let relay_port = c.free_port_of(0);
    c.set_env(0, &[("KVS_RELAY_PORT", &relay_port.to_string())]);
    for i in 0..2 {
        c.set_env(i, &[("KVS_CLUSTER_SECRET", secret)]);
        c.restart(i);
    }
    let all = c.addrs();
    for i in 0..2 {
        c.wait_view(i, &all, READY_TIMEOUT).await;
    }
    let (s, b) = c.kv_put(0, "k", "mine", "").await;
    assert_eq!(s, 201, "{b}");
    let crafted = json!({"records": [{"key": "k", "entry": {"value": "hijacked"}}]});
    for path in [
        "/internal/absorb",
        "/internal/replicate",
        "/internal/map",
        "/internal/reshard/commit",
        "/internal/sync",
    ] {
        let (s, b) = send(
            reqwest::Method::POST,
            &c.url(0, path),
            crafted.clone(),
            None,
        )
        .await;
        assert_eq!(s, 404, "{path}: {b}");
    }
    // The relay port: the handshake fails without the secret, with a wrong one, and the
    // call is never made.
    let relay = std::net::SocketAddr::new((*c.addr(0).ip()).into(), relay_port);
    for key in [
        kvs::relay::RelayKey::open(),
        kvs::relay::RelayKey::from_secret(b"a guess at the store's secret"),
    ] {
        let call = kvs::relay::Call {
            id: 0,
            origin: 0,
            attempt: 0,
            op: kvs::relay::Kind::Internal,
            hops: 0,
            epoch: 0,
            budget_ms: 1000,
            path: "absorb".into(),
            body: crafted.to_string().into(),
        };
        let err = kvs::relay::Client::with_key(key)
            .call(relay.into(), call, std::time::Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, kvs::relay::RelayError::NotSent(..)), "{err}");
    }
    for i in 0..2 {
        let (s, b) = c.kv_get(i, "k", None).await;
        assert_eq!(
            (s, b["value"].clone()),
            (200, json!("mine")),
            "node {i}: {b}"
        );
    }
}

/// A node started with another store's secret, though every node's `VIEW` names it, never
/// joins: gossip refuses its cluster id, so no node ever lists it, nor it them.
#[tokio::test]
async fn a_node_with_another_secret_cannot_join() {
    let mut c = Cluster::spawn_some(4, 0, Some(1), FMT);
    for i in 0..4 {
        let secret = if i < 3 {
            "the-secret-of-the-three-node-store"
        } else {
            "the-secret-of-some-other-store-42"
        };
        c.set_env(i, &[("KVS_CLUSTER_SECRET", secret)]);
        c.restart(i);
    }
    let store: Vec<_> = c.addrs()[..3].to_vec();
    for i in 0..3 {
        c.wait_view(i, &store, READY_TIMEOUT).await;
    }
    // Watched for a while (gossip rounds are 200 ms): the stranger never appears.
    let stranger = c.addr(3).to_string();
    let watched = std::time::Instant::now();
    while watched.elapsed() < std::time::Duration::from_secs(3) {
        for i in 0..3 {
            let view = c.view_of(i).await.unwrap();
            assert!(
                !view.contains(&stranger),
                "node {i} lists the stranger: {view:?}"
            );
        }
        let view = c.view_of(3).await.unwrap();
        assert_eq!(view, vec![stranger.clone()], "the stranger's view");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A gossip participant of our own in this test process, claiming to be node `victim` (a
/// newer incarnation of it), with `values` in its state. With `secret`, its datagrams are
/// sealed as a node's are (an insider's); without, it speaks plain chitchat (an outsider
/// who read the cluster id off the wire).
async fn rogue_gossip(
    cluster_id: String,
    victim: std::net::SocketAddrV4,
    seed: std::net::SocketAddrV4,
    values: Vec<(String, String)>,
    secret: Option<&str>,
) -> chitchat::ChitchatHandle {
    let listen = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port");
    let generation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        * 2;
    let config = chitchat::ChitchatConfig {
        chitchat_id: chitchat::ChitchatId::new(victim.to_string(), generation, listen),
        cluster_id,
        gossip_interval: std::time::Duration::from_millis(100),
        listen_addr: listen,
        seed_nodes: vec![seed.to_string()],
        failure_detector_config: chitchat::FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: std::time::Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V0,
    };
    let Some(secret) = secret else {
        return chitchat::spawn_chitchat(config, values, &chitchat::transport::UdpTransport)
            .await
            .expect("the rogue gossips");
    };
    use kvs::membership::{auth::DatagramKey, guard::Known, transport::GuardedTransport, wire};
    let me = wire::Id {
        node_id: victim.to_string(),
        generation,
        gossip_addr: listen,
    };
    let transport = GuardedTransport {
        key: Some(DatagramKey::new(secret.as_bytes())),
        advertised: listen,
        known: std::sync::Arc::new(std::sync::Mutex::new(Known::new(me))),
        counters: Default::default(),
    };
    chitchat::spawn_chitchat(config, values, &transport)
        .await
        .expect("the rogue gossips")
}

async fn shard_ids(c: &Cluster, i: usize) -> Value {
    let (s, b) = get(&c.url(i, "/key-value-store-shard/shard-ids"), None).await;
    assert_eq!(s, 200, "{b}");
    b["shard-ids"].clone()
}

/// Whether `rogue` sees node 0 of `c` alive within `wait`: whether the node answers it.
async fn heard_by_node_0(
    rogue: &chitchat::ChitchatHandle,
    c: &Cluster,
    wait: std::time::Duration,
) -> bool {
    let node_0 = c.addr(0).to_string();
    poll_until(wait, POLL_INTERVAL, || async {
        let live = rogue
            .with_chitchat(|ch| ch.live_nodes().any(|n| *n.node_id == *node_0))
            .await;
        live.then_some(())
    })
    .await
    .is_some()
}

/// Watches the store for 3 s (gossip rounds are 200 ms) while it takes writes: no node's
/// shard ids change from `before`.
async fn shards_stay(c: &Cluster, before: &Value) {
    let watched = std::time::Instant::now();
    while watched.elapsed() < std::time::Duration::from_secs(3) {
        for i in 0..2 {
            assert_eq!(&shard_ids(c, i).await, before, "node {i}");
        }
        let (s, b) = c.kv_put(0, "k", "v", "").await;
        assert!(s == 200 || s == 201, "{b}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Gossip's two locks, each shown to hold with the other open.
/// - Someone who reads the gossip port's traffic knows the cluster id, but without the
///   secret its datagrams carry no tag that holds: no node answers it, and its claim to be
///   a newer incarnation of a node, with a shard map of a far higher epoch, changes nothing.
/// - Datagrams sealed with the secret are heard, but values not sealed by their node are
///   still ignored (the values' own seals, `membership::seal`).
/// - The control: the same claim with sealed values is taken in, which shows the forged
///   ones reached the nodes too.
#[tokio::test]
async fn forged_gossip_values_are_ignored() {
    let secret = "the-secret-of-the-gossip-test-store";
    let c = Cluster::start_with_env(2, Some(1), FMT, &[("KVS_CLUSTER_SECRET", secret)]).await;
    let all = c.addrs();
    let before = shard_ids(&c, 0).await;
    let forged = kvs::shard::ShardMap {
        epoch: 1_000,
        era: 0,
        shards: [(77, all.iter().map(|a| (*a).into()).collect())].into(),
        formed: false,
        store: String::new(),
    };
    let forged = serde_json::to_string(&forged).unwrap();
    let cluster_id = kvs::membership::gossip_cluster_id(Some(secret.as_bytes()));
    let victim = c.addr(1);
    let unsealed = vec![
        ("relay".to_string(), "1".to_string()),
        ("map".to_string(), forged.clone()),
    ];

    let outsider = rogue_gossip(
        cluster_id.clone(),
        victim,
        c.addr(0),
        unsealed.clone(),
        None,
    )
    .await;
    assert!(
        !heard_by_node_0(&outsider, &c, std::time::Duration::from_secs(3)).await,
        "a node answered gossip without the secret"
    );
    shards_stay(&c, &before).await;
    outsider.shutdown().await.ok();

    let insider = rogue_gossip(
        cluster_id.clone(),
        victim,
        c.addr(0),
        unsealed,
        Some(secret),
    )
    .await;
    assert!(
        heard_by_node_0(&insider, &c, READY_TIMEOUT).await,
        "sealed datagrams were never answered"
    );
    shards_stay(&c, &before).await;
    insider.shutdown().await.ok();

    let seal = kvs::membership::GossipSeal::new(Some(secret.as_bytes()));
    let id = victim.to_string();
    let sealed = vec![
        ("relay".to_string(), seal.seal(&id, "relay", "1")),
        ("map".to_string(), seal.seal(&id, "map", &forged)),
    ];
    let _rogue = rogue_gossip(cluster_id, victim, c.addr(0), sealed, Some(secret)).await;
    let adopted = poll_until(READY_TIMEOUT, POLL_INTERVAL, || async {
        (shard_ids(&c, 0).await == json!("77")).then_some(())
    })
    .await;
    assert!(adopted.is_some(), "the sealed claim was never taken in");
}
