//! Quorum writes: `"write-quorum"` in a write's body makes it wait until that many members
//! of its shard hold it, and answer 503 (the write may have been applied) when they cannot.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const FMT: &str = "2019";

async fn put_with(
    c: &Cluster,
    i: usize,
    key: &str,
    quorum: serde_json::Value,
) -> (u16, serde_json::Value, Duration) {
    let started = Instant::now();
    let body = json!({"value": format!("{key}-v"), "causal-metadata": "", "write-quorum": quorum});
    let (s, b) = try_request_timeout(
        reqwest::Method::PUT,
        &c.kv_url(i, key),
        Body::Json(&body),
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    (s, b, started.elapsed())
}

#[tokio::test]
async fn a_quorum_write_waits_for_the_members_it_asks_for() {
    let c = Cluster::start(3, Some(1), FMT).await;

    // Every member holds a write answered with "all": each serves it without metadata.
    let (s, b, took) = put_with(&c, 0, "q-all", json!("all")).await;
    assert_eq!(s, 201, "{b}");
    println!("write-quorum all, every member up: {took:?}");
    for i in 1..3 {
        let (s, b) = c.kv_get(i, "q-all", None).await;
        assert_eq!(
            (s, b["value"].as_str()),
            (200, Some("q-all-v")),
            "node {i}: {b}"
        );
    }

    // More members than the shard has: refused before anything is written.
    let (s, b, _) = put_with(&c, 0, "q-too-many", json!(4)).await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]
            .as_str()
            .unwrap_or_default()
            .contains("write-quorum"),
        "{b}"
    );
    let (s, _) = c.kv_get(0, "q-too-many", None).await;
    assert_eq!(s, 404);

    // One member paused: a majority is still reached, all is not.
    c.pause(2);
    let (s, b, took) = put_with(&c, 0, "q-majority", json!("majority")).await;
    println!("write-quorum majority, one member paused: {s} after {took:?}");
    assert_eq!(s, 201, "{b}");
    let (s, b, took) = put_with(&c, 0, "q-all-paused", json!(3)).await;
    println!("write-quorum 3, one member paused: {s} after {took:?}: {b}");
    assert_eq!(s, 503, "{b}");
    assert!(
        b["error"]
            .as_str()
            .unwrap_or_default()
            .contains("may have been applied"),
        "{b}"
    );
    assert!(
        took < kvs::node::QUORUM_WAIT + Duration::from_secs(2),
        "{took:?}"
    );
    c.resume(2);

    // The write was applied on the coordinator, and reaches the resumed member.
    let reached = poll_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let (s, b) = c.kv_get(2, "q-all-paused", None).await;
            (s == 200 && b["value"] == "q-all-paused-v").then_some(())
        },
    )
    .await;
    assert!(reached.is_some(), "{}", c.log_tails(20));
}
