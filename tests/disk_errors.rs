//! A disk that refuses a write for a reason a look at its free space cannot see (issue 23):
//! a quota (EDQUOT) or a failing device (EIO). This kernel has no quotas to fill and no
//! device to break, so the node meets the error through `POST /kvs/fault/disk`
//! (`KVS_FAULT_INJECTION=1`), at the engine's seam: every write, sync and probe of its
//! disk fails with it until told otherwise. Before, the node exited (exit 3) on the first
//! such write, and a restarted one again on its first write.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const FMT: &str = "2019";

async fn put_key(c: &Cluster, node: usize, key: &str, cm: &str) -> (u16, serde_json::Value) {
    let body = json!({"value": format!("value of {key}"), "causal-metadata": cm});
    put(&c.kv_url(node, key), body).await
}

/// A node whose disk refuses a write with EDQUOT or EIO stays up: it answers clients'
/// writes 507, serves reads (those that carry the metadata of the latest writes too),
/// says so (`/kvs/health/ready`, `/kvs/status`, `/metrics`), while its shard peer goes on
/// taking writes; once the disk takes writes again it restarts itself in place (the same
/// process id) and catches up. No acknowledged write is lost.
#[tokio::test]
async fn a_disk_that_refuses_writes_fails_the_disk_not_the_node() {
    for error in ["EDQUOT", "EIO"] {
        println!("the disk refuses writes with {error}");
        refused_and_survived(error).await;
    }
}

async fn refused_and_survived(error: &str) {
    let c = Cluster::start_with_env(2, Some(1), FMT, &[("KVS_FAULT_INJECTION", "1")]).await;
    let mut acked = Vec::new();
    let mut cm = String::new();
    for i in 0..20 {
        let key = format!("k{i}");
        let (status, body) = put_key(&c, i % 2, &key, &cm).await;
        assert!(status == 201 || status == 200, "{status} {body}");
        cm = body["causal-metadata"].as_str().unwrap().to_owned();
        acked.push(key);
    }
    let (status, body) = post(&c.url(0, "/kvs/fault/disk"), json!({ "error": error })).await;
    assert_eq!(status, 200, "{body}");

    // No metadata: with the last write's, node 0 could hand the write to its issuer.
    let (status, refused) = put_key(&c, 0, "refused", "").await;
    assert_eq!(status, 507, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("Insufficient storage")),
        "{refused}"
    );
    c.assert_running();

    // Reads are served, with the latest metadata too, and the node says why it takes none.
    for key in &acked {
        let (status, body) = c.kv_get(0, key, Some(&cm)).await;
        assert_eq!(status, 200, "{key}: {body}");
        assert_eq!(body["value"], format!("value of {key}"));
    }
    let (status, body) = get(&c.url(0, "/kvs/health/ready"), None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["waiting_for"].to_string().contains("disk"), "{body}");
    assert_eq!(metric(&c, 0, "kvs_storage_disk_full").await, 3);
    let (_, page) = get(&c.url(0, "/kvs/status"), None).await;
    let node0 = c.addr(0).to_string();
    let own = page["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["address"] == node0.as_str()))
        .cloned()
        .unwrap_or_default();
    assert!(
        own["disk"]
            .as_str()
            .is_some_and(|d| d.starts_with("failed")),
        "{page}"
    );

    // The shard's other member takes writes meanwhile; they wait for node 0 at its peer.
    for i in 100..105 {
        let key = format!("k{i}");
        let (status, body) = put_key(&c, 1, &key, &cm).await;
        assert!(status == 201 || status == 200, "{status} {body}");
        cm = body["causal-metadata"].as_str().unwrap().to_owned();
        acked.push(key);
    }

    let (status, body) = post(&c.url(0, "/kvs/fault/disk"), json!({ "error": null })).await;
    assert_eq!(status, 200, "{body}");
    // No metadata: node 0 itself must take it (see above).
    let resumed = poll_until(READY_TIMEOUT, Duration::from_millis(250), || async {
        let body = json!({"value": "value of after", "causal-metadata": ""});
        let answer = try_request(
            reqwest::Method::PUT,
            &c.kv_url(0, "after"),
            Body::Json(&body),
        )
        .await;
        matches!(answer, Ok((201, _))).then_some(())
    })
    .await;
    assert!(
        resumed.is_some(),
        "node 0 never took writes again\n{}",
        c.log_tails(20)
    );
    acked.push("after".to_owned());
    assert!(
        c.nodes[0].exited().is_none(),
        "node 0 exited rather than restart in place"
    );
    let log = std::fs::read_to_string(&c.nodes[0].log_path).unwrap_or_default();
    assert!(
        log.contains("restarting to open the storage engine again"),
        "{}",
        c.log_tails(20)
    );
    // Node 0 holds every write: its own from before, and its peer's, caught up.
    for key in &acked {
        let read = c
            .poll_get(0, key, None, READY_TIMEOUT, |status, body| {
                status == 200 && body["value"] == format!("value of {key}")
            })
            .await;
        assert!(read.is_ok(), "node 0 lost {key}: {read:?}");
    }
    let (status, body) = get(&c.url(0, "/kvs/health/ready"), None).await;
    assert_eq!(status, 200, "{body}");
    c.assert_running();
}
