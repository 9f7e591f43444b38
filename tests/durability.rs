//! Durable storage, from outside: acknowledged writes survive kill -9 of their coordinator
//! (also when no peer had received them), and a whole store killed at once comes back with
//! every key under the same shard ids.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const FMT: &str = "2019";

async fn must_put(c: &Cluster, i: usize, key: &str, value: &str, cm: &str) -> String {
    let (s, b) = c.kv_put(i, key, value, cm).await;
    assert!(s == 200 || s == 201, "PUT {key} on node {i}: {s} {b}");
    b["causal-metadata"].as_str().expect("metadata").to_owned()
}

async fn shard_of_node(c: &Cluster, i: usize) -> String {
    let (s, b) = get(&c.url(i, "/key-value-store-shard/node-shard-id"), None).await;
    assert_eq!(s, 200, "{b}");
    b["shard-id"].as_str().expect("shard-id").to_owned()
}

/// Kills every node at once, starts them all again, and checks each is back in the shard
/// it was in.
async fn kill_all_and_restart(c: &Cluster) {
    let mut before = Vec::new();
    for i in 0..c.len() {
        before.push(shard_of_node(c, i).await);
    }
    for i in 0..c.len() {
        c.kill(i);
    }
    for i in 0..c.len() {
        c.restart(i);
    }
    for (i, shard) in before.iter().enumerate() {
        c.wait_http(i, READY_TIMEOUT).await;
        assert_eq!(&shard_of_node(c, i).await, shard, "node {i} changed shard");
    }
}

/// Node 0 acknowledges a write while both its peers are paused (so nothing was pushed),
/// and is killed at once. It comes back with the write from its disk, and its peers get
/// it from there: a client reading through a peer with the write's metadata sees it.
#[tokio::test]
async fn an_acknowledged_write_survives_kill_9_before_any_peer_has_it() {
    let c = Cluster::start(3, Some(1), FMT).await;
    let mut cm = must_put(&c, 0, "warm-up", "w", "").await;
    for round in 0..5 {
        let key = format!("k{round}");
        let value = format!("v{round}");
        c.pause(1);
        c.pause(2);
        cm = must_put(&c, 0, &key, &value, &cm).await;
        c.kill(0);
        c.resume(1);
        c.resume(2);
        c.restart(0);
        c.wait_http(0, READY_TIMEOUT).await;
        let reader = 1 + round % 2;
        let (s, b, took) = c
            .poll_get(reader, &key, Some(&cm), CONVERGE_TIMEOUT, |s, _| s == 200)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        println!("round {round}: node {reader} serves {key} after {took:?}");
        expect_read(s, &b, &value, &cm, FMT);
        let (s, b) = c.kv_get(0, &key, None).await;
        assert_eq!((s, b["value"].clone()), (200, Value::from(value)), "{b}");
    }
    // A restarted node continues its own sequence: its next write is not mistaken by the
    // peers for one they already have.
    let cm = must_put(&c, 0, "after", "restarts", &cm).await;
    for i in 1..3 {
        let (s, b, _) = c
            .poll_get(i, "after", Some(&cm), CONVERGE_TIMEOUT, |s, _| s == 200)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        expect_read(s, &b, "restarts", &cm, FMT);
    }
}

/// Every node of a six-node, two-shard store killed at once and started again: every
/// acknowledged key reads back whole, from any node, under the same shard ids.
#[tokio::test]
async fn a_whole_store_killed_at_once_comes_back_whole() {
    let c = Cluster::start(6, Some(2), FMT).await;
    let keys = 600;
    let mut cm = String::new();
    for k in 0..keys {
        cm = must_put(
            &c,
            k % c.len(),
            &format!("once-{k}"),
            &format!("value-{k}"),
            &cm,
        )
        .await;
    }
    kill_all_and_restart(&c).await;
    for k in 0..keys {
        let (s, b, _) = c
            .poll_get(
                (k * 7) % c.len(),
                &format!("once-{k}"),
                Some(&cm),
                Duration::from_secs(20),
                |s, _| s == 200,
            )
            .await
            .unwrap_or_else(|e| panic!("key once-{k}: {e}"));
        assert_eq!(s, 200);
        assert_eq!(b["value"], format!("value-{k}"));
    }
}

/// The same after the store changed shape: a node added with add-member, then a reshard
/// (a new era). Killed at once and started again, every node keeps its shard, and every key
/// written before and after the changes reads back.
#[tokio::test]
async fn a_store_restarted_after_add_member_and_reshard_keeps_its_shape_and_keys() {
    let mut c = Cluster::start(4, Some(2), FMT).await;
    let mut cm = String::new();
    for k in 0..100 {
        cm = must_put(&c, k % 4, &format!("before-{k}"), &format!("b{k}"), &cm).await;
    }
    let all = c.addrs();
    let fifth = c.start_extra_node(&all);
    for i in 0..c.len() {
        c.wait_view(i, &c.addrs(), CONVERGE_TIMEOUT).await;
    }
    let added = put(
        &c.url(0, "/key-value-store-shard/add-member/1"),
        json!({"socket-address": c.addr(fifth).to_string()}),
    )
    .await;
    assert_eq!(added.0, 200, "add-member: {}", added.1);
    let resharded = put(
        &c.url(1, "/key-value-store-shard/reshard"),
        json!({"shard-count": 2}),
    )
    .await;
    assert_eq!(resharded.0, 200, "reshard: {}", resharded.1);
    for k in 0..100 {
        cm = must_put(&c, k % 5, &format!("after-{k}"), &format!("a{k}"), &cm).await;
    }
    kill_all_and_restart(&c).await;
    for k in 0..100 {
        for (key, value) in [
            (format!("before-{k}"), format!("b{k}")),
            (format!("after-{k}"), format!("a{k}")),
        ] {
            let (_, b, _) = c
                .poll_get(k % 5, &key, Some(&cm), Duration::from_secs(20), |s, _| {
                    s == 200
                })
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(b["value"], value.as_str(), "{key}");
        }
    }
}

/// A damaged data directory stops the node at start with one line naming the directory
/// (never a node serving from data it cannot read back).
#[tokio::test]
async fn a_damaged_data_directory_stops_the_node_with_one_line_naming_it() {
    let c = Cluster::start(2, Some(1), FMT).await;
    must_put(&c, 0, "k", "v", "").await;
    c.kill(0);
    let dir = c.log_dir.join("node0-data");
    // The engine's format marker, overwritten: what a disk that returns garbage looks like.
    std::fs::write(dir.join("version"), b"garbage").expect("damage the directory");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kvs"))
        .env("SOCKET_ADDRESS", c.addr(0).to_string())
        .env("BIND_ADDRESS", c.addr(0).to_string())
        .env("VIEW", c.view_string())
        .env("SHARD_COUNT", "1")
        .env("KVS_DATA_DIR", &dir)
        .env("RUST_LOG", "off")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run a node on the damaged directory");
    // Bounded: a node that starts after all is killed, and the test fails.
    let exited = poll_until(Duration::from_secs(20), POLL_INTERVAL, || {
        let status = child.try_wait().ok().flatten();
        async move { status }
    })
    .await;
    if exited.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("collect its output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        exited.is_some(),
        "a node on a damaged directory must not start: {stderr}"
    );
    assert!(!output.status.success(), "must not start: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].contains(&dir.display().to_string()),
        "names the directory: {stderr}"
    );
}

/// A replica that lost its disk copies its shard again, in pages read from a peer's engine
/// (`COPY_PAGE_RECORDS` records each) rather than in one body, and holds every key after.
#[tokio::test]
async fn a_wiped_replica_copies_its_shard_in_pages() {
    let c = Cluster::start(3, Some(1), FMT).await;
    let keys = kvs::peer::messages::COPY_PAGE_RECORDS * 2 + 500;
    // Independent writes from 16 tasks: the copy's size is what matters here, not causality.
    let client = reqwest::Client::new();
    let writers: Vec<_> = (0..16)
        .map(|t| {
            let client = client.clone();
            let urls: Vec<String> = (t..keys)
                .step_by(16)
                .map(|k| c.kv_url(t % 2, &format!("page-key-{k:06}")))
                .collect();
            tokio::spawn(async move {
                for url in urls {
                    let r = client
                        .put(&url)
                        .json(&json!({"value": "v", "causal-metadata": ""}))
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success(), "{url}: {}", r.status());
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let stats = |i| {
        let url = c.url(i, "/kvs/storage");
        async move {
            match try_get(&url, None).await {
                Ok((200, b)) => b["live"].as_u64(),
                _ => None,
            }
        }
    };
    let all = poll_until(
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async { (stats(2).await == Some(keys as u64)).then_some(()) },
    )
    .await;
    assert!(all.is_some(), "node 2 holds {:?} of {keys}", stats(2).await);

    c.kill(2);
    let data = c.log_dir.join("node2-data");
    std::fs::remove_dir_all(&data).unwrap();
    c.restart(2);
    c.wait_http(2, READY_TIMEOUT).await;
    let copied = poll_until(
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async { (stats(2).await == Some(keys as u64)).then_some(()) },
    )
    .await;
    assert!(
        copied.is_some(),
        "node 2 holds {:?} of {keys}",
        stats(2).await
    );
    let log = std::fs::read_to_string(c.log_dir.join("node2.log")).unwrap();
    assert!(
        log.contains("full copy from") && log.contains(" pages"),
        "no paged copy in node 2's log"
    );
    for k in (0..keys).step_by(997) {
        let (s, b) = c.kv_get(2, &format!("page-key-{k:06}"), None).await;
        assert_eq!((s, b["value"].as_str()), (200, Some("v")), "{b}");
    }
}

/// A node restarted on its data directory has written before but has nothing in its push
/// queue; a reshard's flush waits for its peers to acknowledge all its writes, which they
/// now do when it asks (an empty push), instead of the reshard failing after 10 s.
#[tokio::test]
async fn a_reshard_right_after_a_restart_succeeds() {
    let c = Cluster::start(4, Some(2), FMT).await;
    let mut cm = String::new();
    for i in 0..4 {
        for k in 0..5 {
            cm = must_put(&c, i, &format!("r{i}-{k}"), "v", &cm).await;
        }
    }
    c.kill(1);
    c.restart(1);
    c.wait_http(1, READY_TIMEOUT).await;
    // Every node sees the restarted one up again, so that it takes part in the reshard.
    let all = c.addrs();
    for i in 0..c.len() {
        c.wait_view(i, &all, READY_TIMEOUT).await;
    }
    let started = std::time::Instant::now();
    let (s, b) = try_request_timeout(
        reqwest::Method::PUT,
        &c.url(0, "/key-value-store-shard/reshard"),
        Body::Json(&json!({"shard-count": 1})),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    println!(
        "reshard after a restart: {s} in {:?}: {b}",
        started.elapsed()
    );
    assert_eq!(s, 200, "{b}\n{}", c.log_tails(20));
    for i in 0..4 {
        for k in 0..5 {
            let (s, b) = c.kv_get(3, &format!("r{i}-{k}"), Some(&cm)).await;
            assert_eq!(s, 200, "{b}");
        }
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// A node whose data directory lost its last writes (put back to an older copy, as a
/// journal cut short by damage would leave it) must not issue their sequence numbers again:
/// its peers hold those dots and would drop the new writes as duplicates. It notices from
/// their answers, copies its shard back, and its next write reaches every replica.
#[tokio::test]
async fn a_node_whose_journal_lost_writes_never_reuses_their_dots() {
    let c = Cluster::start(3, Some(1), FMT).await;
    let mut cm = must_put(&c, 0, "early", "kept", "").await;
    let data = c.log_dir.join("node0-data");
    let older = c.log_dir.join("node0-older");
    c.kill(0);
    copy_dir(&data, &older);
    c.restart(0);
    c.wait_http(0, READY_TIMEOUT).await;
    for k in 0..5 {
        cm = must_put(&c, 0, &format!("lost-{k}"), "written", &cm).await;
    }
    // Every peer has them (asked without metadata: a read with it may be served by node 0
    // itself, as the token's issuer), then node 0 loses them.
    for i in 1..3 {
        c.poll_get(i, "lost-4", None, CONVERGE_TIMEOUT, |s, _| s == 200)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    c.kill(0);
    copy_dir(&older, &data);
    c.restart(0);
    c.wait_http(0, READY_TIMEOUT).await;
    // A new client's write through node 0: under a reused dot the peers would never apply
    // it, and would answer 404 for ever.
    let (s, b) = c.kv_put(0, "after", "new", "").await;
    assert!(s == 200 || s == 201, "{s} {b}");
    for i in 1..3 {
        let (s, b, _) = c
            .poll_get(i, "after", None, CONVERGE_TIMEOUT, |s, _| s == 200)
            .await
            .unwrap_or_else(|e| panic!("node {i}: {e}\n{}", c.log_tails(20)));
        assert_eq!((s, b["value"].as_str()), (200, Some("new")), "{b}");
    }
    // And node 0 has the writes its journal lost back.
    let (s, b, _) = c
        .poll_get(0, "lost-4", None, CONVERGE_TIMEOUT, |s, _| s == 200)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((s, b["value"].as_str()), (200, Some("written")), "{b}");
}

/// Syncs of node i's journal to the device so far.
async fn syncs(c: &Cluster, i: usize) -> u64 {
    metric(c, i, "kvs_storage_syncs_total").await
}

/// With `KVS_SYNC=always` a write was synced only on the node that took it: a peer
/// acknowledged a push (counted towards `KVS_WRITE_QUORUM`) with the write in its journal
/// but not on its device. Now every acknowledging path syncs first: writes one after
/// another with `KVS_WRITE_QUORUM=all` make each peer sync at least once per write (there
/// is no periodic sync in this mode to do it for them).
#[tokio::test]
async fn peers_sync_what_they_acknowledge_with_sync_always() {
    let env = [("KVS_SYNC", "always"), ("KVS_WRITE_QUORUM", "all")];
    let c = Cluster::start_with_env(3, Some(1), FMT, &env).await;
    let before = [syncs(&c, 1).await, syncs(&c, 2).await];
    let mut cm = String::new();
    for i in 0..5 {
        cm = must_put(&c, 0, &format!("synced{i}"), "v", &cm).await;
    }
    let after = [syncs(&c, 1).await, syncs(&c, 2).await];
    for peer in 0..2 {
        assert!(
            after[peer] >= before[peer] + 5,
            "peer {}: {} syncs before 5 writes, {} after",
            peer + 1,
            before[peer],
            after[peer]
        );
    }
    assert!(syncs(&c, 0).await >= 5, "the coordinator syncs too");
}

/// A node restarted with another cluster secret on its data directory refuses to start,
/// with one line saying why; a rotation (every node restarted with the new secret and
/// `KVS_CLUSTER_SECRET_PREVIOUS`) keeps the data, and the directory is stamped anew.
#[tokio::test]
async fn a_data_directory_of_another_secret_is_refused_at_start() {
    let (old, new) = (
        "the first secret, 0123456789",
        "the second secret, 0123456789",
    );
    let mut c = Cluster::start_with_env(2, Some(1), FMT, &[("KVS_CLUSTER_SECRET", old)]).await;
    must_put(&c, 0, "kept", "v", "").await;
    c.kill(1);
    c.set_env(1, &[("KVS_CLUSTER_SECRET", new)]);
    c.restart(1);
    let status = c.wait_exit(1, Duration::from_secs(30)).await;
    assert!(
        status.is_some(),
        "node 1 started on a directory of another secret"
    );
    let line = c.last_log_line(1);
    assert!(line.contains("belongs to another store"), "{line}");
    for i in 0..2 {
        c.kill(i);
        c.set_env(
            i,
            &[
                ("KVS_CLUSTER_SECRET", new),
                ("KVS_CLUSTER_SECRET_PREVIOUS", old),
            ],
        );
        c.restart(i);
    }
    for i in 0..2 {
        c.wait_http(i, READY_TIMEOUT).await;
    }
    // Stamped under the new secret now: it starts without the old one too.
    c.set_env(1, &[("KVS_CLUSTER_SECRET_PREVIOUS", "")]);
    c.restart(1);
    c.wait_http(1, READY_TIMEOUT).await;
    let read = c
        .poll_get(1, "kept", None, READY_TIMEOUT, |s, b| {
            s == 200 && b["value"] == "v"
        })
        .await;
    assert!(read.is_ok(), "{read:?}\n{}", c.log_tails(20));
    c.assert_running();
}

/// Starts the first `n` nodes of `c` as a store of their own (VIEW of those, one shard),
/// writes a key to it, and with `reshard_to`, reshards it (so that each node stores the
/// store's map, which then wins over VIEW and SHARD_COUNT). Then kills them all and
/// empties every directory but node 0's.
async fn start_old_store(c: &mut Cluster, n: usize, reshard_to: Option<u32>) {
    let members: Vec<_> = (0..n).map(|i| c.addr(i)).collect();
    let old_view = view_string(&members);
    for i in 0..n {
        c.set_env(i, &[("VIEW", old_view.as_str())]);
        c.restart(i);
    }
    for i in 0..n {
        c.wait_view(i, &members, READY_TIMEOUT).await;
    }
    must_put(c, 0, "old", "v", "").await;
    if let Some(count) = reshard_to {
        let url = c.url(0, "/key-value-store-shard/reshard");
        let (status, body) = put(&url, json!({"shard-count": count})).await;
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..n {
        c.kill(i);
    }
    for i in 1..n {
        std::fs::remove_dir_all(c.data_dir(i)).expect("remove a node's directory");
    }
}

/// Starts all four nodes of `c` as a new store of two shards.
fn start_new_store(c: &mut Cluster) {
    let new_view = c.view_string();
    for i in 0..4 {
        c.set_env(i, &[("VIEW", new_view.as_str()), ("SHARD_COUNT", "2")]);
        c.restart(i);
    }
}

/// Node 0, on the old store's directory, stops within `wait` with one line saying why, and
/// the new store of [`start_new_store`] serves on nodes 1 to 3, without the old store's key.
async fn node_0_stops_and_the_new_store_serves(c: &Cluster, wait: Duration) {
    let status = c.wait_exit(0, wait).await;
    assert!(
        status.is_some(),
        "node 0 serves an old store's data in the new one"
    );
    let line = c.last_log_line(0);
    println!("node 0 stopped: {line}");
    assert!(line.contains("belongs to another store"), "{line}");
    for i in 1..4 {
        let url = c.url(i, "/key-value-store-shard/shard-ids");
        let two_shards = poll_until(READY_TIMEOUT, Duration::from_millis(200), || async {
            let (_, body) = try_get(&url, None).await.ok()?;
            let ids = body["shard-ids"].to_string();
            (ids.contains('0') && ids.contains('1')).then_some(())
        })
        .await;
        assert!(two_shards.is_some(), "node {i}: {}", c.log_tails(20));
    }
    for i in 1..4 {
        let (status, body) = c.kv_get(i, "old", None).await;
        assert_eq!(status, 404, "node {i} serves the old store's key: {body}");
    }
    assert!(c.nodes[1..].iter().all(|n| n.exited().is_none()));
}

/// A node started on the data directory of an old store, with the VIEW and SHARD_COUNT of
/// a new one at the same addresses, refuses to start, with one line saying why.
#[tokio::test]
async fn a_node_started_as_a_new_store_on_an_old_store_s_directory_refuses() {
    let mut c = Cluster::spawn_some(4, 0, Some(1), FMT);
    start_old_store(&mut c, 2, None).await;
    start_new_store(&mut c);
    node_0_stops_and_the_new_store_serves(&c, Duration::from_secs(30)).await;
}

/// A node whose old store's map is on its directory (a store of one shard resharded to two:
/// its map wins over VIEW and SHARD_COUNT) starts, and stops with one line saying why once gossip shows
/// most of its map's nodes in another store; the new store neither adopts the old map nor
/// stops.
#[tokio::test]
async fn a_node_holding_an_old_store_s_map_stops_and_the_new_store_goes_on() {
    let mut c = Cluster::spawn_some(4, 0, Some(1), FMT);
    start_old_store(&mut c, 4, Some(2)).await;
    start_new_store(&mut c);
    node_0_stops_and_the_new_store_serves(&c, Duration::from_secs(60)).await;
}
