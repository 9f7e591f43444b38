//! A soak of the gossip port: a 6-node store with a cluster secret, under a steady writer,
//! while a hostile sender loops over every attack datagram of `gossip_attacks.rs`, random
//! mutations of real gossip captured from the store (sealed and unsealed), replays (to the
//! node a datagram was sealed for, and to others), and junk. Passes when no node ever leaves any view, every acknowledged write reads back,
//! and the nodes' gossip traffic stays within twice its quiet rate.
//!
//! `SOAK_SECONDS` (default 300) is the attack's length, `SOAK_SEED` replays a run (the seed
//! is printed). `./test.sh` runs it for 30 s; issue 22 asked for 5 minutes, run by hand:
//!
//! ```sh
//! SOAK_SECONDS=300 cargo test --test gossip_soak -- --ignored --nocapture
//! ```

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::gossip::*;
use common::*;
use kvs::membership::wire::Id;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FMT: &str = "2019";
const SECRET: &str = "the-secret-of-the-gossip-soak-store";
const NODES: usize = 6;
/// The writer's pace: about the course's graders' (tens of requests a second).
const WRITE_EVERY: Duration = Duration::from_millis(20);
/// How long gossip is measured before the attack, for its quiet rate.
const QUIET: Duration = Duration::from_secs(10);
/// The hostile sender sends a burst of this many datagrams, then waits [`BURST_GAP`]:
/// about 1,000 a second.
const BURST: usize = 10;
const BURST_GAP: Duration = Duration::from_millis(10);

/// Gossip datagrams and bytes all nodes sent, summed.
async fn gossip_sent(c: &Cluster) -> (u64, u64) {
    let mut datagrams = 0;
    let mut bytes = 0;
    for i in 0..c.len() {
        datagrams += metric(
            c,
            i,
            r#"kvs_gossip_datagrams_total{direction="out",outcome="sent"}"#,
        )
        .await;
        bytes += metric(c, i, r#"kvs_gossip_bytes_total{direction="out"}"#).await;
    }
    (datagrams, bytes)
}

/// What every node's gossip port did with what it heard, summed, by outcome.
async fn heard(c: &Cluster) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    for outcome in [
        "accepted",
        "unauthenticated",
        "replayed",
        "malformed",
        "refused",
        "cut",
    ] {
        let series = format!(r#"kvs_gossip_datagrams_total{{direction="in",outcome="{outcome}"}}"#);
        let mut sum = 0;
        for i in 0..c.len() {
            sum += metric(c, i, &series).await;
        }
        out.insert(outcome, sum);
    }
    out
}

/// Writes `soak-<n>` through random nodes at the course's pace, one causal session,
/// until told to stop: the acknowledged keys, and the session's last metadata.
async fn write_steadily(
    c: Arc<Cluster>,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> (Vec<String>, String, u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5717e);
    let mut acked = Vec::new();
    let mut cm = String::new();
    let mut failed = 0;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("soak-{n}");
        n += 1;
        let body = serde_json::json!({"value": key, "causal-metadata": cm});
        let url = c.kv_url(rng.gen_range(0..c.len()), &key);
        match try_request(reqwest::Method::PUT, &url, Body::Json(&body)).await {
            Ok((200 | 201, answer)) => {
                cm = answer["causal-metadata"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                acked.push(key);
            }
            _ => failed += 1,
        }
        tokio::time::sleep(WRITE_EVERY).await;
    }
    (acked, cm, failed)
}

/// Polls every node's view every 500 ms until told to stop: how many observations lacked
/// a node, and the first of them.
async fn watch_views(c: Arc<Cluster>, stop: Arc<AtomicBool>) -> (u64, Option<String>) {
    let mut want: Vec<String> = c.addrs().iter().map(|a| a.to_string()).collect();
    want.sort();
    let mut lacking = 0;
    let mut first = None;
    while !stop.load(Ordering::Relaxed) {
        for i in 0..c.len() {
            match c.view_of(i).await {
                Ok(view) if view == want => {}
                other => {
                    lacking += 1;
                    first.get_or_insert_with(|| format!("node {i}: {other:?}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (lacking, first)
}

/// Real gossip, as the store sends it: the raw (sealed) answers to a member's empty
/// `SynAck`, and chitchat's bytes in them.
struct Captured {
    datagrams: Vec<(Vec<u8>, Vec<u8>)>,
    ids: Vec<(Id, u64)>,
    /// The member's own sealed requests, with the node each was sealed for: sent there
    /// again, each is a replay.
    requests: Vec<(Vec<u8>, SocketAddr)>,
}

async fn capture(c: &Cluster, member: &mut Peer) -> Captured {
    let mut datagrams = Vec::new();
    let mut ids = Vec::new();
    let mut requests = Vec::new();
    for i in 0..c.len() {
        let to = SocketAddr::V4(c.addr(i));
        member.drain().await;
        requests.push((member.send(&empty_syn_ack(), to).await, to));
        if let Some((raw, payload)) = member.answer_raw(ANSWER_WAIT).await {
            if let Ok(envelope) = kvs::membership::wire::decode(&payload) {
                ids.extend(node_versions(envelope.message.delta()));
            }
            datagrams.push((raw, payload));
        }
    }
    assert!(!datagrams.is_empty(), "no node answered a member");
    Captured {
        datagrams,
        ids,
        requests,
    }
}

/// `bytes` with a few random bits flipped, cut short, or with junk after it.
fn mutate(bytes: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match rng.gen_range(0..3) {
        0 if !out.is_empty() => {
            for _ in 0..rng.gen_range(1..=8) {
                let at = rng.gen_range(0..out.len());
                out[at] ^= 1 << rng.gen_range(0..8);
            }
        }
        1 if !out.is_empty() => out.truncate(rng.gen_range(0..out.len())),
        _ => out.extend((0..rng.gen_range(1..64)).map(|_| rng.gen::<u8>())),
    }
    out
}

/// One hostile datagram, chosen at random, and where to send it (`None`: any node).
fn hostile(captured: &Captured, rng: &mut StdRng, me: SocketAddr) -> (Vec<u8>, Option<SocketAddr>) {
    if rng.gen_range(0..13) == 0 {
        let (request, to) = &captured.requests[rng.gen_range(0..captured.requests.len())];
        return (request.clone(), Some(*to));
    }
    (hostile_anywhere(captured, rng, me), None)
}

fn hostile_anywhere(captured: &Captured, rng: &mut StdRng, me: SocketAddr) -> Vec<u8> {
    let (victim, max) = &captured.ids[rng.gen_range(0..captured.ids.len())];
    let (raw, payload) = &captured.datagrams[rng.gen_range(0..captured.datagrams.len())];
    match rng.gen_range(0..12) {
        0 => empty_syn_ack(),
        1 => planted_fake(me),
        2 => max_version_below_a_key(victim, *max),
        3 => fake_nodes(400, 0),
        4 => fake_nodes(100, rng.gen_range(0..1000)),
        5 => huge_id(),
        6 => reset(victim),
        // Real gossip sent again elsewhere (a replay, and for another receiver).
        7 => raw.clone(),
        8 => mutate(raw, rng),
        // Real chitchat bytes, unsealed and mutated.
        9 => payload.clone(),
        10 => mutate(payload, rng),
        _ => {
            let len = if rng.gen_bool(0.05) {
                65_507
            } else {
                rng.gen_range(0..512)
            };
            (0..len).map(|_| rng.gen::<u8>()).collect()
        }
    }
}

/// Sends hostile datagrams to random nodes until `until`, capturing fresh real gossip
/// every 2 s. Returns how many it sent.
async fn attack(c: Arc<Cluster>, seed: u64, until: Instant, sent: Arc<AtomicU64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut member = Peer::new(Some(SECRET)).await;
    let outsider = Peer::new(None).await;
    let me = outsider.addr();
    let mut captured = capture(&c, &mut member).await;
    let mut captured_at = Instant::now();
    while Instant::now() < until {
        if captured_at.elapsed() > Duration::from_secs(2) {
            captured = capture(&c, &mut member).await;
            captured_at = Instant::now();
        }
        for _ in 0..BURST {
            let (datagram, to) = hostile(&captured, &mut rng, me);
            let to = to.unwrap_or_else(|| SocketAddr::V4(c.addr(rng.gen_range(0..c.len()))));
            let _ = outsider.socket.send_to(&datagram, to).await;
            sent.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(BURST_GAP).await;
    }
}

/// Reads every acknowledged key back, through every node in turn, with the writer's last
/// metadata: the keys that do not read back as written.
async fn lost(c: &Cluster, acked: &[String], cm: &str) -> Vec<String> {
    let lost = Arc::new(Mutex::new(Vec::new()));
    let chunks: Vec<Vec<(usize, String)>> = acked
        .iter()
        .cloned()
        .enumerate()
        .collect::<Vec<_>>()
        .chunks(acked.len().div_ceil(8).max(1))
        .map(<[_]>::to_vec)
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let urls: Vec<(String, String)> = chunk
            .iter()
            .map(|(n, key)| (c.kv_url(n % c.len(), key), key.clone()))
            .collect();
        let (cm, lost) = (cm.to_owned(), lost.clone());
        tasks.push(tokio::spawn(async move {
            for (url, key) in urls {
                let body = serde_json::json!({"causal-metadata": cm});
                let answer = try_request(reqwest::Method::GET, &url, Body::Json(&body)).await;
                let ok = matches!(&answer, Ok((200, b)) if b["value"] == key.as_str());
                if !ok {
                    lost.lock().unwrap().push(format!("{key}: {answer:?}"));
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("a reader");
    }
    let lost = lost.lock().unwrap().clone();
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of minutes: ./test.sh runs it with SOAK_SECONDS=30"]
async fn gossip_holds_under_a_hostile_sender() {
    let (seconds, seed) = soak_settings(300);
    println!("gossip soak: seed {seed} (SOAK_SEED replays it), attack for {seconds} s");
    let c = Arc::new(
        Cluster::start_with_env(NODES, Some(2), FMT, &[("KVS_CLUSTER_SECRET", SECRET)]).await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_steadily(c.clone(), seed, stop.clone()));
    let views = tokio::spawn(watch_views(c.clone(), stop.clone()));

    let quiet_start = gossip_sent(&c).await;
    tokio::time::sleep(QUIET).await;
    let quiet_end = gossip_sent(&c).await;
    let heard_before = heard(&c).await;
    // Before the attack the nodes heard only each other (and the test's member): the guard
    // must have let every datagram of real gossip through.
    for outcome in ["unauthenticated", "replayed", "malformed", "refused", "cut"] {
        assert_eq!(
            heard_before[outcome], 0,
            "real gossip {outcome}: {heard_before:?}"
        );
    }

    let sent = Arc::new(AtomicU64::new(0));
    let attacked = Instant::now();
    let until = attacked + Duration::from_secs(seconds);
    attack(c.clone(), seed, until, sent.clone()).await;
    let attack_secs = attacked.elapsed().as_secs_f64();
    let attack_end = gossip_sent(&c).await;
    let heard_after = heard(&c).await;

    stop.store(true, Ordering::Relaxed);
    let (acked, cm, failed) = writer.await.expect("the writer");
    let (lacking, first_lacking) = views.await.expect("the view watcher");
    let lost = lost(&c, &acked, &cm).await;

    let quiet_secs = QUIET.as_secs_f64();
    let rate = |a: (u64, u64), b: (u64, u64), secs: f64| {
        ((b.0 - a.0) as f64 / secs, (b.1 - a.1) as f64 / secs)
    };
    let quiet = rate(quiet_start, quiet_end, quiet_secs);
    let loud = rate(quiet_end, attack_end, attack_secs);
    let heard: BTreeMap<_, _> = heard_after
        .iter()
        .map(|(k, v)| (*k, v - heard_before[k]))
        .collect();
    println!(
        "gossip soak, seed {seed}: {} hostile datagrams in {attack_secs:.0} s; the nodes heard {heard:?}",
        sent.load(Ordering::Relaxed)
    );
    println!(
        "gossip sent by all nodes: quiet {:.0} datagrams/s, {:.0} B/s; under attack {:.0} datagrams/s, {:.0} B/s ({:.2}x bytes)",
        quiet.0, quiet.1, loud.0, loud.1, loud.1 / quiet.1
    );
    println!(
        "writer: {} acknowledged, {failed} not, {} lost; view observations lacking a node: {lacking}",
        acked.len(),
        lost.len()
    );
    assert_eq!(
        lacking,
        0,
        "a node left a view: {first_lacking:?}\n{}",
        c.log_tails(30)
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes lost: {:?}",
        &lost[..lost.len().min(10)]
    );
    assert!(
        loud.1 <= 2.0 * quiet.1,
        "gossip traffic rose from {:.0} to {:.0} B/s",
        quiet.1,
        loud.1
    );
    assert!(acked.len() > 10, "the writer hardly wrote: {}", acked.len());
    assert!(
        heard["replayed"] > 0,
        "the control: replays reached the nodes: {heard:?}"
    );
    c.assert_running();
}
