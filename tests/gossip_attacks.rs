//! Hand-made gossip datagrams from a socket of the test's own against running stores: each
//! attack found against chitchat 0.13 (issue 22), named for it.
//!
//! With `KVS_CLUSTER_SECRET`, no datagram without a tag made with the secret is processed
//! or answered. Without a secret, gossip is open by design, but no datagram may panic a
//! node's gossip, drop a node from a view, or make a node hold unbounded state.
//!
//! The datagrams are built with `kvs::membership::wire`, the store's own encoder of
//! chitchat's format; each test checks, as a control, that a well-formed datagram built the
//! same way *is* answered where it should be, so a test cannot pass because its datagrams
//! were junk nobody read.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::gossip::*;
use common::*;

const FMT: &str = "2019";
const SECRET: &str = "the-secret-of-the-gossip-attack-tests";
/// How long a store is watched after an attack: chitchat's task panicked at once, and a
/// node whose gossip died left every view within 2 s.
const WATCH: Duration = Duration::from_secs(3);

fn gossip_addr(c: &Cluster, i: usize) -> SocketAddr {
    SocketAddr::V4(c.addr(i))
}

async fn store(secret: bool) -> Cluster {
    let env: &[(&str, &str)] = if secret {
        &[("KVS_CLUSTER_SECRET", SECRET)]
    } else {
        &[]
    };
    Cluster::start_with_env(3, Some(1), FMT, env).await
}

/// For `WATCH`, every node stays live and in every node's view.
async fn every_node_stays(c: &Cluster) {
    let all = c.addrs();
    let mut want: Vec<String> = all.iter().map(|a| a.to_string()).collect();
    want.sort();
    let watched = std::time::Instant::now();
    while watched.elapsed() < WATCH {
        c.assert_running();
        for i in 0..c.len() {
            let view = c
                .view_of(i)
                .await
                .unwrap_or_else(|e| panic!("node {i}: {e}"));
            assert_eq!(view, want, "node {i}'s view\n{}", c.log_tails(20));
            let (status, body) = get(&c.url(i, "/kvs/health/live"), None).await;
            assert_eq!(status, 200, "node {i} not live: {body}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    for node in &c.nodes {
        let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
        assert!(!log.contains("panicked"), "{} panicked:\n{log}", node.addr);
    }
}

const UNAUTHENTICATED: &str =
    r#"kvs_gossip_datagrams_total{direction="in",outcome="unauthenticated"}"#;
const REFUSED: &str = r#"kvs_gossip_datagrams_total{direction="in",outcome="refused"}"#;

/// Sends `datagram` unsealed to node `i` of a store with a secret: it is counted as
/// unauthenticated, nothing answers, and every node stays.
async fn unanswered(c: &Cluster, i: usize, outsider: &mut Peer, datagram: &[u8]) {
    let before = metric(c, i, UNAUTHENTICATED).await;
    outsider.send(datagram, gossip_addr(c, i)).await;
    let answer = outsider.answer(ANSWER_WAIT).await;
    assert!(
        answer.is_none(),
        "node {i} answered an outsider: {answer:?}"
    );
    let counted = poll_until(ANSWER_WAIT, POLL_INTERVAL, || async {
        (metric(c, i, UNAUTHENTICATED).await > before).then_some(())
    })
    .await;
    assert!(counted.is_some(), "node {i} never counted the datagram");
    every_node_stays(c).await;
}

/// Sends `datagram` to node `i` of a store without a secret: it is refused by the guard,
/// and every node stays.
async fn refused(c: &Cluster, i: usize, peer: &mut Peer, datagram: &[u8]) {
    let before = metric(c, i, REFUSED).await;
    peer.send(datagram, gossip_addr(c, i)).await;
    every_node_stays(c).await;
    assert!(
        metric(c, i, REFUSED).await > before,
        "node {i} did not refuse the datagram"
    );
}

/// With a secret, the 7-byte empty `SynAck` that made a node send every node's state
/// (ids, shard maps, relay ports, clocks) to anyone is not answered. The same datagram
/// sealed by a member is (the control), and sealed for another node it is not.
#[tokio::test]
async fn an_empty_syn_ack_is_not_answered_without_the_secret() {
    let c = store(true).await;
    let mut outsider = Peer::new(None).await;
    unanswered(&c, 0, &mut outsider, &empty_syn_ack()).await;

    let mut member = Peer::new(Some(SECRET)).await;
    assert!(!member.learn(gossip_addr(&c, 0)).await.is_empty());
    member.drain().await;
    // Sealed for node 1, sent to node 0: the tag names the receiver.
    let sealed_for_1 = {
        let mut other = Peer::new(Some(SECRET)).await;
        other.send(&empty_syn_ack(), gossip_addr(&c, 1)).await
    };
    member
        .socket
        .send_to(&sealed_for_1, gossip_addr(&c, 0))
        .await
        .unwrap();
    assert!(
        member.answer(ANSWER_WAIT).await.is_none(),
        "answered a datagram for node 1"
    );
}

/// A member's datagram sent again is not processed again: replay gets no answer.
#[tokio::test]
async fn a_replayed_datagram_is_not_answered() {
    let c = store(true).await;
    let mut member = Peer::new(Some(SECRET)).await;
    member.learn(gossip_addr(&c, 0)).await;
    member.drain().await;
    let datagram = member.send(&empty_syn_ack(), gossip_addr(&c, 0)).await;
    assert!(
        member.answer(ANSWER_WAIT).await.is_some(),
        "the first copy is answered"
    );
    member.drain().await;
    member
        .socket
        .send_to(&datagram, gossip_addr(&c, 0))
        .await
        .unwrap();
    assert!(
        member.answer(ANSWER_WAIT).await.is_none(),
        "the replay was answered"
    );
}

/// The 51-byte `SynAck` that plants a fake node with the sender's address made the node
/// open gossip rounds with the sender, handing it the cluster id. With a secret nothing
/// comes to the sender; without one the node stays well (gossip is open then).
#[tokio::test]
async fn a_planted_fake_node_gets_no_gossip_round() {
    let c = store(true).await;
    let mut outsider = Peer::new(None).await;
    let datagram = planted_fake(outsider.addr());
    for _ in 0..3 {
        outsider.send(&datagram, gossip_addr(&c, 0)).await;
    }
    let round = outsider.answer(Duration::from_secs(3)).await;
    assert!(
        round.is_none(),
        "the node gossiped with the fake: {round:?}"
    );
    every_node_stays(&c).await;

    // Without a secret the fake is taken in (gossip is open), and harms no node; the
    // empty SynAck of the test above is answered there, and harms none either.
    let open = store(false).await;
    let mut peer = Peer::new(None).await;
    for datagram in [planted_fake(peer.addr()), empty_syn_ack()] {
        peer.send(&datagram, gossip_addr(&open, 0)).await;
    }
    every_node_stays(&open).await;
}

/// The 118-byte `SynAck` whose key version exceeds its declared max version panicked the
/// receiver's gossip task: the node left every view for good while its health checks
/// stayed green.
#[tokio::test]
async fn a_max_version_below_a_key_version_panics_no_node() {
    let c = store(true).await;
    let mut member = Peer::new(Some(SECRET)).await;
    let (victim, max) = member
        .learn(gossip_addr(&c, 0))
        .await
        .into_iter()
        .find(|(id, _)| id.node_id == c.addr(1).to_string())
        .expect("node 0 holds node 1's state");
    let datagram = max_version_below_a_key(&victim, max);
    let mut outsider = Peer::new(None).await;
    unanswered(&c, 0, &mut outsider, &datagram).await;

    let open = store(false).await;
    let mut peer = Peer::new(None).await;
    let (victim, max) = peer
        .learn(gossip_addr(&open, 0))
        .await
        .into_iter()
        .find(|(id, _)| id.node_id == open.addr(1).to_string())
        .expect("node 0 holds node 1's state");
    refused(&open, 0, &mut peer, &max_version_below_a_key(&victim, max)).await;
}

/// 800 fake node ids in two datagrams spread to every node's digest and panicked a node
/// (`mtu >= 100`); so did one 65 KB id. With a secret they are never heard; without, the
/// digests are refused, a node holds at most 128 node states, and none panics.
#[tokio::test]
async fn fake_nodes_by_the_hundred_fill_no_digest() {
    let c = store(true).await;
    let mut outsider = Peer::new(None).await;
    unanswered(&c, 0, &mut outsider, &fake_nodes(400, 0)).await;
    unanswered(&c, 1, &mut outsider, &huge_id()).await;

    let open = store(false).await;
    let mut peer = Peer::new(None).await;
    refused(&open, 0, &mut peer, &fake_nodes(400, 0)).await;
    refused(&open, 0, &mut peer, &fake_nodes(400, 400)).await;
    refused(&open, 1, &mut peer, &huge_id()).await;
    // In digests small enough to pass one by one, only up to the bound is taken: past
    // it, the unknown entries are cut from the digest and the rest is heard.
    for from in (0..800).step_by(100) {
        peer.send(&fake_nodes(100, from), gossip_addr(&open, 2))
            .await;
    }
    every_node_stays(&open).await;
    for i in 0..3 {
        let held = metric(&open, i, "kvs_gossip_node_states").await;
        assert!(held <= 128, "node {i} holds {held} node states");
    }
    let held = metric(&open, 2, "kvs_gossip_node_states").await;
    assert!(
        held > 3,
        "the control: fakes within the bound are held ({held})"
    );
}

/// The 68-byte reset (a huge `last_gc_version`, `from_version_excluded` 0) dropped its
/// node from the other nodes' views until it restarted, and made a node wipe its own
/// state when it was about that node.
#[tokio::test]
async fn a_reset_delta_drops_no_node() {
    let c = store(true).await;
    let mut member = Peer::new(Some(SECRET)).await;
    let known = member.learn(gossip_addr(&c, 0)).await;
    let mut outsider = Peer::new(None).await;
    for (victim, _) in &known {
        unanswered(&c, 0, &mut outsider, &reset(victim)).await;
    }

    let open = store(false).await;
    let mut peer = Peer::new(None).await;
    for (victim, _) in peer.learn(gossip_addr(&open, 0)).await {
        refused(&open, 0, &mut peer, &reset(&victim)).await;
    }
}

/// A node whose gossip task stops (here by an injected fault, as a fatal socket error
/// would) is not live until a new incarnation of its gossip runs, and is then back in
/// every view. The test holds the node's UDP port for a while, so that the new
/// incarnation cannot start and the 503 can be seen.
#[tokio::test]
async fn a_stopped_gossip_task_is_started_again() {
    let c = Cluster::start_with_env(3, Some(1), FMT, &[("KVS_FAULT_INJECTION", "1")]).await;
    let port = gossip_addr(&c, 0);
    let crash = c.url(0, "/kvs/fault/gossip-crash");
    let mut holder = None;
    for _ in 0..20 {
        let (status, body) = post(&crash, serde_json::json!({})).await;
        assert_eq!(status, 200, "{body}");
        // The old socket closes as the task ends; its successor binds 200 ms later.
        holder = poll_until(
            Duration::from_millis(150),
            Duration::from_millis(2),
            || async { std::net::UdpSocket::bind(port).ok() },
        )
        .await;
        if holder.is_some() {
            break;
        }
    }
    let holder = holder.expect("the test took the stopped node's gossip port");
    let not_live = poll_until(Duration::from_secs(5), POLL_INTERVAL, || async {
        let (status, body) = get(&c.url(0, "/kvs/health/live"), None).await;
        (status == 503 && body["live"] == false).then_some(())
    })
    .await;
    assert!(not_live.is_some(), "a node without gossip answered live");
    let (status, body) = get(&c.url(0, "/kvs/health/ready"), None).await;
    assert_eq!(status, 503, "a node without gossip answered ready: {body}");
    assert!(metric(&c, 0, "kvs_gossip_restarts_total").await >= 1);
    drop(holder);
    let live = poll_until(Duration::from_secs(40), POLL_INTERVAL, || async {
        (get(&c.url(0, "/kvs/health/live"), None).await.0 == 200).then_some(())
    })
    .await;
    assert!(
        live.is_some(),
        "gossip never started again\n{}",
        c.log_tails(30)
    );
    let all = c.addrs();
    for i in 0..3 {
        c.wait_view(i, &all, READY_TIMEOUT).await;
    }
    let (status, body) = c.kv_put(0, "after", "the restart", "").await;
    assert!(status == 200 || status == 201, "{body}");
    let cm = body["causal-metadata"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (status, body) = c.kv_get(2, "after", Some(&cm)).await;
    assert_eq!(
        (status, body["value"].as_str()),
        (200, Some("the restart")),
        "{body}"
    );
}
