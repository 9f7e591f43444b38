//! Tombstone purging (`src/replication/purge.rs`): delete churn leaves no tombstones once
//! every member of the shard has applied the deletes, a member that is away holds purging
//! back, and no deleted key comes back: not on the member that was away, not after a
//! restart.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const FMT: &str = "2019";
/// Two purge rounds (5 s each) and gossip, with room for a loaded machine.
const PURGE_TIMEOUT: Duration = Duration::from_secs(40);

async fn stats(c: &Cluster, i: usize) -> Option<Value> {
    match try_get(&c.url(i, "/kvs/storage"), None).await {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

async fn tombstones(c: &Cluster, i: usize) -> u64 {
    stats(c, i)
        .await
        .and_then(|s| s["tombstones"].as_u64())
        .unwrap_or(u64::MAX)
}

/// Writes `keys` and deletes them again through node `through`, metadata chained.
async fn churn(c: &Cluster, through: usize, keys: &[String], cm: &str) -> String {
    let mut cm = cm.to_owned();
    for key in keys {
        let (s, b) = c.kv_put(through, key, "v", &cm).await;
        assert!(s == 200 || s == 201, "{s} {b}");
        cm = b["causal-metadata"].as_str().unwrap().to_owned();
    }
    for key in keys {
        let (s, b) = c.kv_delete(through, key, &cm).await;
        assert_eq!(s, 200, "{b}");
        cm = b["causal-metadata"].as_str().unwrap().to_owned();
    }
    cm
}

async fn assert_all_gone(c: &Cluster, keys: &[String], cm: &str) {
    for i in 0..c.len() {
        for key in keys {
            let (s, b) = c.kv_get(i, key, Some(cm)).await;
            assert_eq!(s, 404, "node {i} key {key}: {b}");
        }
    }
}

async fn wait_purged(c: &Cluster) {
    for i in 0..c.len() {
        let purged = poll_until(PURGE_TIMEOUT, Duration::from_millis(250), || async {
            (tombstones(c, i).await == 0).then_some(())
        })
        .await;
        assert!(
            purged.is_some(),
            "node {i} still keeps tombstones: {:?}\n{}",
            stats(c, i).await,
            c.log_tails(20)
        );
    }
}

#[tokio::test]
async fn delete_churn_leaves_no_tombstones_and_no_key_comes_back() {
    let c = Cluster::start(3, Some(1), FMT).await;
    let keys: Vec<String> = (0..200).map(|i| format!("churn{i}")).collect();
    let cm = churn(&c, 0, &keys, "").await;
    assert!(tombstones(&c, 0).await > 0);
    wait_purged(&c).await;
    for i in 0..c.len() {
        let s = stats(&c, i).await.unwrap();
        assert_eq!(s["keys"], 0, "node {i}: {s}");
    }
    assert_all_gone(&c, &keys, &cm).await;

    // A member away holds purging back, and learns the deletes when it returns.
    let (s, b) = c.kv_put(0, "x", "before", &cm).await;
    assert_eq!(s, 201, "{b}");
    let cm = b["causal-metadata"].as_str().unwrap().to_owned();
    let (s, _) = c.kv_get(2, "x", Some(&cm)).await;
    assert_eq!(s, 200);
    c.pause(2);
    let away: Vec<String> = (0..50)
        .map(|i| format!("away{i}"))
        .chain(["x".into()])
        .collect();
    let cm = churn(&c, 0, &away[..50], &cm).await;
    let (s, b) = c.kv_delete(0, "x", &cm).await;
    assert_eq!(s, 200, "{b}");
    let cm = b["causal-metadata"].as_str().unwrap().to_owned();
    // Three purge rounds with node 2 away: nothing purged.
    tokio::time::sleep(kvs::node::purge::PURGE_INTERVAL * 3).await;
    let kept = tombstones(&c, 0).await;
    c.resume(2);
    assert_eq!(kept, away.len() as u64, "purged while a member was away");
    wait_purged(&c).await;
    assert_all_gone(&c, &away, &cm).await;

    // Purged from disk too: a restarted node does not bring them back.
    c.kill(1);
    c.restart(1);
    c.wait_http(1, Duration::from_secs(30)).await;
    let s = poll_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async { stats(&c, 1).await },
    )
    .await
    .unwrap();
    assert_eq!(s["keys"], 0, "{s}");
    assert_all_gone(&c, &away, &cm).await;
}
