//! The replicated store without shards (the course's assignment before the sharded one):
//! nodes started with only `SOCKET_ADDRESS` and `VIEW` form one shard of every node of the
//! view, and serve as one causally consistent, replicated store; a node of the view that
//! never starts does not keep the others from serving.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Polls until node i says it is a member of shard "0".
async fn wait_formed(c: &Cluster, i: usize) -> Duration {
    let url = c.url(i, "/key-value-store-shard/node-shard-id");
    let started = std::time::Instant::now();
    let formed = poll_until(READY_TIMEOUT, POLL_INTERVAL, || {
        let url = url.clone();
        async move {
            match try_get(&url, None).await {
                Ok((200, body)) if body["shard-id"] == "0" => Some(()),
                _ => None,
            }
        }
    })
    .await;
    assert!(formed.is_some(), "node {i} did not form a shard map");
    started.elapsed()
}

async fn must_put(c: &Cluster, i: usize, key: &str, value: &str, cm: &str) -> String {
    let (s, b) = c.kv_put(i, key, value, cm).await;
    assert!(s == 200 || s == 201, "PUT {key} on node {i}: {s} {b}");
    b["causal-metadata"].as_str().expect("metadata").to_owned()
}

#[tokio::test]
async fn nodes_without_shard_count_form_one_replicated_store() {
    for format in ["2019", "2020"] {
        let c = Cluster::start(3, None, format).await;
        for i in 0..3 {
            println!(
                "node {i} formed its map after {:?}",
                wait_formed(&c, i).await
            );
        }
        let (s, b) = get(&c.url(1, "/key-value-store-shard/shard-id-members/0"), None).await;
        assert_eq!(s, 200, "{b}");
        let members: Vec<String> = match &b["shard-id-members"] {
            Value::String(s) => s.split(',').map(str::to_owned).collect(),
            Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
            other => panic!("members: {other}"),
        };
        assert_eq!(members.len(), 3, "one shard of every node: {b}");
        // The course's causal scenario across the replicas.
        let m1 = must_put(&c, 0, "x", "1", "").await;
        let (s, b) = c.kv_get(1, "x", Some(&m1)).await;
        expect_read(s, &b, "1", &m1, format);
        let m2 = must_put(&c, 1, "y", "2", &m1).await;
        let (s, b) = c.kv_get(2, "y", Some(&m2)).await;
        expect_read(s, &b, "2", &m2, format);
        let (s, b) = c.kv_get(2, "x", Some(&m2)).await;
        assert_eq!((s, b["value"].clone()), (200, Value::from("1")), "{b}");
    }
}

#[tokio::test]
async fn a_view_node_that_never_starts_does_not_keep_the_others_from_serving() {
    let c = Cluster::spawn_some(3, 2, None, "2019");
    for i in 0..2 {
        c.wait_http(i, READY_TIMEOUT).await;
        wait_formed(&c, i).await;
    }
    let cm = must_put(&c, 0, "k", "v", "").await;
    let (s, b) = c.kv_get(1, "k", Some(&cm)).await;
    expect_read(s, &b, "v", &cm, "2019");
    // The third node starts late, takes the map its peers formed, and copies the shard.
    c.restart(2);
    wait_formed(&c, 2).await;
    let (s, b, _) = c
        .poll_get(2, "k", Some(&cm), CONVERGE_TIMEOUT, |s, _| s == 200)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    expect_read(s, &b, "v", &cm, "2019");
}

#[tokio::test]
async fn a_node_alone_waits_with_503() {
    let c = Cluster::spawn_some(3, 1, None, "2019");
    c.wait_http(0, READY_TIMEOUT).await;
    let (s, b) = c.kv_put(0, "k", "v", "").await;
    assert_eq!(
        s, 503,
        "a node that has heard from no majority of VIEW serves no keys: {b}"
    );
}

/// A node that starts while the only other member of its shard is paused has nobody to copy
/// from: it gives the copy up once that member is down and serves with what it has within
/// seconds (not after the copy's minute-long timeout), then catches up once the member is
/// back. The paused member's listener still accepts connections, so the copy's request
/// hangs rather than fails.
#[tokio::test]
async fn a_node_whose_only_shard_peer_is_paused_serves_within_seconds() {
    let c = Cluster::spawn_some(2, 1, Some(1), "2019");
    c.wait_http(0, READY_TIMEOUT).await;
    let written = poll_until(CONVERGE_TIMEOUT, POLL_INTERVAL, || async {
        let (s, _) = c.kv_put(0, "k", "v", "").await;
        (s == 201).then_some(())
    })
    .await;
    assert!(written.is_some(), "node 0 alone never took a write");
    c.pause(0);
    c.restart(1);
    c.wait_http(1, READY_TIMEOUT).await;
    let started = std::time::Instant::now();
    let answer = try_request_timeout(
        reqwest::Method::PUT,
        &c.kv_url(1, "other"),
        Body::Json(&serde_json::json!({"value": "w", "causal-metadata": ""})),
        Duration::from_secs(30),
    )
    .await;
    let took = started.elapsed();
    println!("node 1, its peer paused, answered {answer:?} after {took:?}");
    let (s, b) = answer.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s, 201, "{b}");
    assert!(took < Duration::from_secs(8), "answered after {took:?}");
    c.resume(0);
    let (s, b, _) = c
        .poll_get(1, "k", None, CONVERGE_TIMEOUT, |s, _| s == 200)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((s, b["value"].clone()), (200, Value::from("v")), "{b}");
}
