//! Budgets that nest (`src/budget.rs`): an owner answers before its forwarder's limit, a
//! forwarder before a client's usual timeout, also when the owner is paused.

mod common;

use common::*;
use kvs::causal::CausalMetadata;
use kvs::http::reply::Op;
use kvs::relay::{Call, Kind};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const FMT: &str = "2019";
/// The node a client reached answers within this ([`kvs::budget::CLIENT_BUDGET`]) ...
const CLIENT_BUDGET: Duration = kvs::budget::CLIENT_BUDGET;
/// ... well before the timeout clients commonly use.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The shard id and members of `key`'s shard, from a write through node 0.
async fn place(c: &Cluster, key: &str) -> (String, Vec<usize>, String) {
    let (s, b) = c.kv_put(0, key, "v1", "").await;
    assert!(s == 200 || s == 201, "{s} {b}");
    let shard = b["shard-id"].as_str().unwrap().to_owned();
    let cm = b["causal-metadata"].as_str().unwrap().to_owned();
    let (s, m) = get(
        &c.url(
            0,
            &format!("/key-value-store-shard/shard-id-members/{shard}"),
        ),
        None,
    )
    .await;
    assert_eq!(s, 200, "{m}");
    let members: Vec<String> = m["shard-id-members"]
        .as_str()
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    let indexes = (0..c.len())
        .filter(|&i| members.contains(&c.addr(i).to_string()))
        .collect();
    (shard, indexes, cm)
}

async fn timed(
    method: reqwest::Method,
    url: &str,
    body: Value,
) -> (Duration, Result<(u16, Value), String>) {
    let started = Instant::now();
    let r = try_request_timeout(method, url, Body::Json(&body), CLIENT_TIMEOUT).await;
    (started.elapsed(), r)
}

/// Both members of a key's shard paused: a node of the other shard answers a read and a
/// write 503 within its budget, the write saying it may have been applied (or, once the
/// failure detector has given up on the owners, that none can be reached); nothing waits
/// for the client's timeout.
#[tokio::test]
async fn a_paused_owner_makes_the_forwarder_answer_within_its_budget() {
    let c = Cluster::start(4, Some(2), FMT).await;
    let (_, owners, cm) = place(&c, "budget-key").await;
    let forwarder = (0..c.len()).find(|i| !owners.contains(i)).unwrap();
    // The forwarder's relay connections to the owners are open and warm.
    let (s, b) = c.kv_get(forwarder, "budget-key", Some(&cm)).await;
    assert_eq!(s, 200, "{b}");
    for &o in &owners {
        c.pause(o);
    }
    let url = c.kv_url(forwarder, "budget-key");
    let (read, write) = tokio::join!(
        timed(reqwest::Method::GET, &url, json!({"causal-metadata": cm})),
        timed(
            reqwest::Method::PUT,
            &url,
            json!({"value": "v2", "causal-metadata": cm})
        ),
    );
    for &o in &owners {
        c.resume(o);
    }
    println!("with both owners paused: GET {read:?}, PUT {write:?}");
    for (what, (took, answer)) in [("GET", read), ("PUT", write)] {
        let (status, body) = answer.unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        assert_eq!(status, 503, "{what}: {body}");
        assert!(
            took < CLIENT_BUDGET + Duration::from_secs(2),
            "{what} answered after {took:?}"
        );
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("Unable to satisfy request"),
            "{what}: {body}"
        );
    }
    // Resumed, the owners serve again through the same forwarder.
    let answered = poll_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            let (s, _) = c.kv_get(forwarder, "budget-key", Some(&cm)).await;
            (s == 200).then_some(())
        },
    )
    .await;
    assert!(answered.is_some(), "{}", c.log_tails(30));
}

/// One owner paused: reads fail over to the other member as soon as the heartbeat gives the
/// paused one up, and writes are answered, never lost to the client's timeout.
#[tokio::test]
async fn one_paused_owner_costs_seconds_not_the_request() {
    let c = Cluster::start(4, Some(2), FMT).await;
    let (_, owners, cm) = place(&c, "failover-key").await;
    let forwarder = (0..c.len()).find(|i| !owners.contains(i)).unwrap();
    for _ in 0..3 {
        let (s, b) = c.kv_get(forwarder, "failover-key", Some(&cm)).await;
        assert_eq!(s, 200, "{b}");
    }
    c.pause(owners[0]);
    let url = c.kv_url(forwarder, "failover-key");
    let (took, read) = timed(reqwest::Method::GET, &url, json!({"causal-metadata": cm})).await;
    let (write_took, write) = timed(
        reqwest::Method::PUT,
        &url,
        json!({"value": "v2", "causal-metadata": cm}),
    )
    .await;
    c.resume(owners[0]);
    println!("one owner paused: GET after {took:?}: {read:?}; PUT after {write_took:?}: {write:?}");
    let (s, b) = read.unwrap();
    assert_eq!(s, 200, "{b}");
    assert!(
        took < Duration::from_secs(8),
        "the read failed over after {took:?}"
    );
    let (s, b) = write.unwrap();
    assert!(
        s == 200
            || (s == 503
                && b["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("may have been applied")),
        "{s} {b}"
    );
    assert!(write_took < CLIENT_BUDGET + Duration::from_secs(2));
}

/// An owner given a small budget by its forwarder answers its own 503 within it, though its
/// own wait for dependencies is longer. The budget travels on the relay channel (nodes
/// forward nothing over HTTP), so the test speaks it as a forwarding node would.
#[tokio::test]
async fn an_owner_answers_its_own_503_within_the_budget_it_was_given() {
    let (c, relay_port) = start_with_relay_port(2, 1, FMT).await;
    let (s, b) = c.kv_put(0, "k", "v", "").await;
    assert_eq!(s, 201, "{b}");
    // A dependency no node will ever have: node 1's write number one million.
    let mut deps = CausalMetadata::decode(b["causal-metadata"].as_str().unwrap()).unwrap();
    deps.clock
        .set(std::net::SocketAddr::V4(c.addr(1)).into(), 1_000_000);
    deps.issuer = None;
    let body = json!({"causal-metadata": deps.encode()}).to_string();
    let call = Call {
        id: 0,
        origin: 0,
        attempt: 0,
        op: Kind::Kv(Op::Get),
        hops: 1,
        epoch: 0,
        budget_ms: 1500,
        path: "/key-value-store/k".into(),
        body: body.into(),
    };
    let relay = std::net::SocketAddr::new((*c.addr(0).ip()).into(), relay_port);
    let started = Instant::now();
    let answer = kvs::relay::Client::new()
        .call(relay.into(), call, CLIENT_TIMEOUT)
        .await
        .unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer.body);
    println!(
        "owner with a 1.5 s budget answered {} after {took:?}: {text}",
        answer.status
    );
    assert_eq!(answer.status, 503, "{text}");
    assert!(text.contains("Causal dependencies not satisfied"), "{text}");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(3000),
        "answered after {took:?}"
    );
}

/// The headers nodes once forwarded with over HTTP mean nothing from a client: a read that
/// claims nine hops, a one-millisecond budget and a far future map is forwarded and
/// answered like any other, neither refused nor held.
#[tokio::test]
async fn node_headers_from_a_client_change_nothing() {
    let c = Cluster::start(4, Some(2), FMT).await;
    let (_, owners, cm) = place(&c, "header-key").await;
    let forwarder = (0..c.len()).find(|i| !owners.contains(i)).unwrap();
    let started = Instant::now();
    let answer = reqwest::Client::new()
        .get(c.kv_url(forwarder, "header-key"))
        .header("x-kvs-hops", "9")
        .header("x-kvs-budget-ms", "1")
        .header("x-kvs-epoch", "999999")
        .header("content-type", "application/json")
        .body(json!({"causal-metadata": cm}).to_string())
        .timeout(CLIENT_TIMEOUT)
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    let status = answer.status().as_u16();
    let body: Value = answer.json().await.unwrap();
    println!("a read with forged node headers: {status} after {took:?}: {body}");
    assert_eq!(
        (status, body["value"].clone()),
        (200, json!("v1")),
        "{body}"
    );
    assert!(took < Duration::from_secs(3), "held for {took:?}");
}
