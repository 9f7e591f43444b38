//! The operator endpoints beside the contract (docs/tools.md), on stores of processes:
//! listing keys across shards (also while a reshard runs), the cluster status, and fault
//! injection.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const FMT: &str = "2019";

/// One page of a listing through node `i`.
async fn list_page(
    c: &Cluster,
    i: usize,
    query: &str,
    cm: Option<&str>,
) -> Result<(u16, Value), String> {
    let body = cm.map(|cm| json!({ "causal-metadata": cm }));
    try_get(&c.url(i, &format!("/key-value-store?{query}")), body).await
}

/// Every key with `prefix`, paging `limit` at a time through node `i`; panics on an error
/// answer, and on a key listed twice or out of order.
async fn list_all(
    c: &Cluster,
    i: usize,
    prefix: &str,
    limit: usize,
    cm: Option<&str>,
) -> Vec<String> {
    let mut listed: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10_000 {
        let mut query = format!("prefix={prefix}&limit={limit}");
        if let Some(a) = &after {
            query.push_str(&format!("&after={}", urlencode(a)));
        }
        let (status, body) = list_page(c, i, &query, cm).await.expect("listing answers");
        assert_eq!(status, 200, "{body}");
        let keys = body["keys"].as_array().expect("keys is an array");
        assert!(keys.len() <= limit, "{body}");
        for key in keys {
            let key = key.as_str().expect("keys are strings").to_owned();
            if let Some(last) = listed.last() {
                assert!(*last < key, "{key} listed after {last}");
            }
            listed.push(key);
        }
        match &body["next"] {
            Value::Null => return listed,
            Value::String(next) => after = Some(next.clone()),
            other => panic!("next must be a string or null: {other}"),
        }
    }
    panic!("the listing never ended");
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn put_keys(c: &Cluster, keys: impl Iterator<Item = String>) -> String {
    let mut cm = String::new();
    for (n, key) in keys.enumerate() {
        let (status, body) = c.kv_put(n % c.len(), &key, "v", &cm).await;
        assert!(status == 200 || status == 201, "{key}: {status} {body}");
        cm = body["causal-metadata"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    cm
}

/// Keys of both shards, with another prefix and deleted keys mixed in, page by page with a
/// small limit: every live key of the prefix exactly once, in order. A client's own last
/// write is listed at once through another node when it passes its metadata.
#[tokio::test]
async fn listing_pages_through_every_shard_once() {
    let c = Cluster::start(4, Some(2), FMT).await;
    let keys: Vec<String> = (0..120).map(|n| format!("user/{n:04}")).collect();
    put_keys(&c, keys.iter().cloned()).await;
    let mut cm = put_keys(&c, (0..15).map(|n| format!("other/{n}"))).await;
    let mut expected: BTreeSet<String> = keys.iter().cloned().collect();
    for key in keys.iter().step_by(7) {
        let (status, body) = c.kv_delete(1, key, &cm).await;
        assert_eq!(status, 200, "{body}");
        cm = body["causal-metadata"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        expected.remove(key);
    }
    let (status, body) = c.kv_put(2, "user/zzzz", "last", &cm).await;
    assert_eq!(status, 201, "{body}");
    let cm = body["causal-metadata"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    expected.insert("user/zzzz".into());

    // Through another node, with the client's metadata: its own writes are all there.
    let listed = list_all(&c, 3, "user%2F", 7, Some(&cm)).await;
    assert_eq!(listed, expected.iter().cloned().collect::<Vec<_>>());
    // Every key, one large page.
    let (status, body) = list_page(&c, 0, "limit=1000", Some(&cm)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["keys"].as_array().map(Vec::len),
        Some(expected.len() + 15)
    );
    assert_eq!(body["next"], Value::Null);
    assert_eq!(body["causal-metadata"], json!(cm));

    let (status, body) = list_page(&c, 0, "limit=0", None).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["message"], "Error in GET");
    let (status, body) = list_page(&c, 0, "", Some("forged")).await.unwrap();
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error": "Invalid causal metadata", "message": "Error in GET"})
        )
    );
}

/// Full passes over the keys, page by page, while the store reshards 2 -> 3 and back: each
/// pass lists every key exactly once, whichever shard holds it when its page is gathered.
#[tokio::test]
async fn listing_while_resharding_lists_every_key_once() {
    let c = Cluster::start(6, Some(2), FMT).await;
    let keys: Vec<String> = (0..300).map(|n| format!("r{n:04}")).collect();
    let cm = put_keys(&c, keys.iter().cloned()).await;
    let c = std::sync::Arc::new(c);
    let mut passes = 0;
    for count in [3u32, 2] {
        let resharding = {
            let c = c.clone();
            tokio::spawn(async move {
                put(
                    &c.url(count as usize, "/key-value-store-shard/reshard"),
                    json!({"shard-count": count}),
                )
                .await
            })
        };
        loop {
            let done = resharding.is_finished();
            let listed = list_all(&c, passes % 6, "r", 9, Some(&cm)).await;
            assert_eq!(listed, keys, "pass {passes}, reshard to {count}");
            passes += 1;
            if done {
                break;
            }
        }
        let (status, body) = resharding.await.expect("reshard task");
        assert_eq!(status, 200, "{body}");
    }
    println!("{passes} full passes while resharding");
}

async fn status_of(c: &Cluster, i: usize) -> Value {
    let (status, body) = get(&c.url(i, "/kvs/status"), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn node_entry<'a>(status: &'a Value, address: &str) -> &'a Value {
    status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["address"] == address))
        .unwrap_or_else(|| panic!("{address} missing from {status}"))
}

/// The status lists the shards and every node with its keys, and shows a killed node down
/// within seconds.
#[tokio::test]
async fn status_shows_every_node_and_a_killed_one_down() {
    let c = Cluster::start(4, Some(2), FMT).await;
    put_keys(&c, (0..40).map(|n| format!("s{n}"))).await;
    let status = status_of(&c, 0).await;
    assert_eq!(status["node"], c.addr(0).to_string());
    assert_eq!(
        status["shards"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(4),
        "{status}"
    );
    // Each shard's members hold its keys: the two shards' counts add up to 40.
    let counted = poll_until(CONVERGE_TIMEOUT, POLL_INTERVAL, || async {
        let status = status_of(&c, 1).await;
        let nodes = status["nodes"].as_array()?.clone();
        let shards = status["shards"].as_array()?.clone();
        let total: u64 = shards
            .iter()
            .filter_map(|s| s["members"][0].as_str())
            .filter_map(|m| nodes.iter().find(|n| n["address"] == m)?["keys"].as_u64())
            .sum();
        let all_up = nodes.iter().all(|n| n["up"] == true && n["ready"] == true);
        (total == 40 && all_up).then_some(status)
    })
    .await;
    assert!(
        counted.is_some(),
        "keys never added up: {}",
        status_of(&c, 1).await
    );

    c.kill(3);
    let dead = c.addr(3).to_string();
    let seen_down = poll_until(Duration::from_secs(15), POLL_INTERVAL, || async {
        (node_entry(&status_of(&c, 0).await, &dead)["up"] == false).then_some(())
    })
    .await;
    assert!(seen_down.is_some(), "{}", status_of(&c, 0).await);
}

/// A failed node answers no client and no peer, and its peers see it down; the store goes
/// on without it; once recovered it is up again and catches up. Off by default.
#[tokio::test]
async fn an_injected_failure_cuts_a_node_off_until_it_recovers() {
    let c = Cluster::start_with_env(3, Some(1), FMT, &[("KVS_FAULT_INJECTION", "1")]).await;
    let failed = c.addr(2).to_string();
    let (status, body) = raw(
        reqwest::Method::POST,
        &c.url(2, "/kvs/fault/fail"),
        r#"{"seconds": 120}"#,
        Some("application/json"),
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"message": "Node failed", "seconds": 120}))
    );
    let seen_down = poll_until(Duration::from_secs(15), POLL_INTERVAL, || async {
        (node_entry(&status_of(&c, 0).await, &failed)["up"] == false).then_some(())
    })
    .await;
    assert!(seen_down.is_some(), "{}", status_of(&c, 0).await);
    // It answers its own status (it is failed, and sees nobody), but no client.
    let own = status_of(&c, 2).await;
    assert_eq!(node_entry(&own, &failed)["failed"], true, "{own}");
    let silent = try_request_timeout(
        reqwest::Method::GET,
        &c.kv_url(2, "during"),
        Body::None,
        Duration::from_secs(1),
    )
    .await;
    assert!(silent.is_err(), "a failed node answered: {silent:?}");
    let (status, body) = c.kv_put(0, "during", "the failure", "").await;
    assert_eq!(status, 201, "{body}");

    let (status, body) = raw(
        reqwest::Method::POST,
        &c.url(2, "/kvs/fault/recover"),
        "",
        Some("application/json"),
    )
    .await;
    assert_eq!((status, body), (200, json!({"message": "Node recovered"})));
    let back = poll_until(Duration::from_secs(15), POLL_INTERVAL, || async {
        (node_entry(&status_of(&c, 0).await, &failed)["up"] == true).then_some(())
    })
    .await;
    assert!(back.is_some(), "{}", status_of(&c, 0).await);
    let caught_up = c
        .poll_get(2, "during", None, CONVERGE_TIMEOUT, |s, b| {
            s == 200 && b["value"] == "the failure"
        })
        .await;
    if let Err(e) = caught_up {
        panic!("the recovered node never caught up: {e}");
    }
}

#[tokio::test]
async fn fault_injection_is_off_unless_enabled() {
    let c = Cluster::start(2, Some(1), FMT).await;
    let (status, body) = raw(
        reqwest::Method::POST,
        &c.url(0, "/kvs/fault/fail"),
        "",
        Some("application/json"),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            404,
            json!({"error": "Fault injection is disabled", "message": "Error in POST"})
        )
    );
    let (status, _) = c.kv_put(0, "k", "v", "").await;
    assert_eq!(status, 201);
}

/// A browser cannot send a GET with a body: a GET (of a key, or a listing) may carry its
/// metadata in a `Causal-Metadata` header instead, with the same effect.
#[tokio::test]
async fn a_get_may_carry_its_metadata_in_a_header() {
    let c = Cluster::start(3, Some(1), FMT).await;
    let (status, body) = c.kv_put(0, "h", "header", "").await;
    assert_eq!(status, 201, "{body}");
    let cm = body["causal-metadata"].as_str().unwrap().to_owned();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for path in ["/key-value-store/h", "/key-value-store?prefix=h"] {
        let answer = client
            .get(c.url(2, path))
            .header("Causal-Metadata", &cm)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        let body: Value = answer.json().await.unwrap();
        assert!(
            body["value"] == "header" || body["keys"] == json!(["h"]),
            "{path}: {body}"
        );
        assert_eq!(body["causal-metadata"], json!(cm), "{path}");
    }
    let forged = client
        .get(c.url(1, "/key-value-store/h"))
        .header("Causal-Metadata", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
}
