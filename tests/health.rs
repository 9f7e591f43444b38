//! Liveness and readiness as an orchestrator sees them: the two endpoints, and
//! `kvs healthcheck`, the probe a Docker `HEALTHCHECK` or a Kubernetes probe runs.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

const FMT: &str = "2019";

/// `kvs healthcheck` against `address`: its exit code and its one line of error.
fn healthcheck(address: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvs"))
        .args(["healthcheck", "--address", address, "--timeout-ms", "2000"])
        .args(extra)
        .output()
        .expect("kvs healthcheck runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// A node of a two-node `VIEW` without `SHARD_COUNT` cannot form a map alone (it needs to
/// hear from a majority): it is live but not ready, and says what it waits for. Once its
/// peer starts, both form the map and are ready.
#[tokio::test]
async fn a_node_is_ready_once_it_has_a_map_and_its_shards_data() {
    let c = Cluster::spawn_some(2, 1, None, FMT);
    let first = c.addr(0).to_string();
    c.wait_http(0, READY_TIMEOUT).await;
    let (s, b) = get(&c.url(0, "/kvs/health/live"), None).await;
    assert_eq!((s, b), (200, json!({"live": true})));
    let (s, b) = get(&c.url(0, "/kvs/health/ready"), None).await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["ready"], json!(false), "{b}");
    assert!(
        b["waiting_for"]
            .as_str()
            .unwrap_or_default()
            .contains("shard map"),
        "{b}"
    );
    let (code, why) = healthcheck(&first, &[]);
    assert_eq!(code, 1, "{why}");
    assert!(
        why.starts_with("kvs healthcheck: ") && why.contains("503"),
        "{why}"
    );
    assert!(!why.contains('\n'), "one line: {why}");
    assert_eq!(healthcheck(&first, &["--live"]).0, 0);

    c.restart(1);
    for i in 0..2 {
        let ready = poll_until(READY_TIMEOUT, POLL_INTERVAL, || async {
            let (s, b) = get(&c.url(i, "/kvs/health/ready"), None).await;
            (s == 200).then_some(b)
        })
        .await;
        let ready = ready.unwrap_or_else(|| panic!("node {i} never became ready"));
        assert_eq!(ready["ready"], json!(true), "{ready}");
        assert!(ready["shard-id"].is_string(), "{ready}");
        let (code, why) = healthcheck(&c.addr(i).to_string(), &[]);
        assert_eq!(code, 0, "node {i}: {why}");
    }
    let (s, b) = c.kv_put(1, "k", "v", "").await;
    assert_eq!(s, 201, "{b}");
}

/// A probe of a node that is not there fails at once with a reason, and so does one with
/// no address to probe.
#[test]
fn a_probe_of_no_node_fails_with_a_reason() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let (code, why) = healthcheck(&closed, &[]);
    assert_eq!(code, 1);
    assert!(why.contains("refused"), "{why}");
    let out = Command::new(env!("CARGO_BIN_EXE_kvs"))
        .arg("healthcheck")
        .env_remove("BIND_ADDRESS")
        .env_remove("SOCKET_ADDRESS")
        .output()
        .expect("kvs healthcheck runs");
    assert_eq!(out.status.code(), Some(2));
}

/// `KVS_LOG_FORMAT=json`: every line a node logs is one JSON object with a timestamp, a
/// level, a target and a message, for log collectors.
#[tokio::test]
async fn logs_are_json_lines_when_asked_for() {
    let c = Cluster::start_with_env(2, Some(1), FMT, &[("KVS_LOG_FORMAT", "json")]).await;
    let (s, b) = c.kv_put(0, "k", "v", "").await;
    assert_eq!(s, 201, "{b}");
    let log = std::fs::read_to_string(&c.nodes[0].log_path).expect("the node's log");
    // The harness writes a header line of its own before the node's.
    let lines: Vec<&str> = log.lines().filter(|l| !l.starts_with("====")).collect();
    assert!(lines.len() >= 2, "{log}");
    for line in &lines {
        let record: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["ts", "level", "target", "msg"] {
            assert!(record[field].is_string(), "{field} in {line}");
        }
    }
    assert!(
        lines.iter().any(|l| l.contains("listening on")),
        "the start line: {log}"
    );
}
