//! Sharded stores on 127.0.0.x: the course scenario (six nodes, a seventh added, reshards),
//! resharding while clients keep writing and reading, and administrative errors.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A list field in either wire format, as a vector of strings.
fn list(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) if s.is_empty() => Vec::new(),
        Value::String(s) => s.split(',').map(str::to_owned).collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().expect("list items are strings").to_owned())
            .collect(),
        other => panic!("not a list: {other}"),
    }
}

fn expect_list_shape(value: &Value, format: &str) {
    match format {
        "2020" => assert!(value.is_array(), "2020 lists are arrays: {value}"),
        _ => assert!(value.is_string(), "2019 lists are strings: {value}"),
    }
}

async fn shard_ids(c: &Cluster, i: usize) -> Vec<String> {
    let (status, body) = get(&c.url(i, "/key-value-store-shard/shard-ids"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Shard IDs retrieved successfully");
    expect_list_shape(&body["shard-ids"], &c.api_format);
    list(&body["shard-ids"])
}

async fn members(c: &Cluster, i: usize, shard: &str) -> Vec<String> {
    let path = format!("/key-value-store-shard/shard-id-members/{shard}");
    let (status, body) = get(&c.url(i, &path), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["message"],
        "Members of shard ID retrieved successfully"
    );
    expect_list_shape(&body["shard-id-members"], &c.api_format);
    list(&body["shard-id-members"])
}

async fn key_count(c: &Cluster, i: usize, shard: &str) -> u64 {
    let path = format!("/key-value-store-shard/shard-id-key-count/{shard}");
    let (status, body) = get(&c.url(i, &path), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["message"],
        "Key count of shard ID retrieved successfully"
    );
    body["shard-id-key-count"]
        .as_u64()
        .unwrap_or_else(|| panic!("key count must be an integer: {body}"))
}

async fn node_shard(c: &Cluster, i: usize) -> Option<String> {
    let (status, body) = get(&c.url(i, "/key-value-store-shard/node-shard-id"), None).await;
    match status {
        200 => {
            assert_eq!(
                body["message"],
                "Shard ID of the node retrieved successfully"
            );
            Some(
                body["shard-id"]
                    .as_str()
                    .expect("shard-id is a string")
                    .to_owned(),
            )
        }
        404 => {
            assert_eq!(
                body,
                json!({"error": "Node is not a member of any shard", "message": "Error in GET"})
            );
            None
        }
        _ => panic!("node-shard-id: {status} {body}"),
    }
}

async fn reshard(c: &Cluster, i: usize, count: u32) -> (u16, Value) {
    put(
        &c.url(i, "/key-value-store-shard/reshard"),
        json!({"shard-count": count}),
    )
    .await
}

/// Every node agrees on the shard ids and members, and members cover the given nodes exactly
/// once. Returns the members of each shard.
async fn agreed_map(c: &Cluster, nodes: &[usize]) -> BTreeMap<String, Vec<String>> {
    let ids = shard_ids(c, nodes[0]).await;
    let mut map = BTreeMap::new();
    for id in &ids {
        map.insert(id.clone(), members(c, nodes[0], id).await);
    }
    for &i in nodes {
        assert_eq!(shard_ids(c, i).await, ids, "shard ids on node {i}");
        for (id, m) in &map {
            assert_eq!(&members(c, i, id).await, m, "members of {id} on node {i}");
        }
    }
    let mut covered: Vec<String> = map.values().flatten().cloned().collect();
    covered.sort();
    let mut want: Vec<String> = nodes.iter().map(|&i| c.addr(i).to_string()).collect();
    want.sort();
    assert_eq!(covered, want, "members cover every node once");
    for m in map.values() {
        assert!(m.len() >= 2, "every shard has two or more nodes: {map:?}");
        let mut sorted = m.clone();
        sort_addr_strings(&mut sorted);
        assert_eq!(&sorted, m, "members are listed in address order");
    }
    map
}

fn sort_addr_strings(addrs: &mut [String]) {
    let mut parsed: Vec<std::net::SocketAddrV4> =
        addrs.iter().map(|a| a.parse().expect("ip:port")).collect();
    sort_addrs(&mut parsed);
    for (slot, addr) in addrs.iter_mut().zip(parsed) {
        *slot = addr.to_string();
    }
}

async fn write_keys(c: &Cluster, through: &[usize], count: usize) -> String {
    let mut cm = String::new();
    for k in 0..count {
        let node = through[k % through.len()];
        let (status, body) = c
            .kv_put(node, &format!("key{k}"), &format!("value{k}"), &cm)
            .await;
        assert_eq!(status, 201, "PUT key{k} via node {node}: {body}");
        cm = body["causal-metadata"]
            .as_str()
            .expect("metadata")
            .to_owned();
    }
    cm
}

async fn read_all(c: &Cluster, through: &[usize], count: usize, cm: &str) {
    for k in 0..count {
        let node = through[(k + 1) % through.len()];
        let (status, body) = c.kv_get(node, &format!("key{k}"), Some(cm)).await;
        assert_eq!(status, 200, "GET key{k} via node {node}: {body}");
        assert_eq!(body["value"], format!("value{k}"), "key{k} via node {node}");
    }
}

async fn course_scenario(format: &str) {
    let mut c = Cluster::start(6, Some(2), format).await;
    let six: Vec<usize> = (0..6).collect();
    let map = agreed_map(&c, &six).await;
    assert_eq!(map.keys().collect::<Vec<_>>(), ["0", "1"]);
    for &i in &six {
        let shard = node_shard(&c, i)
            .await
            .expect("every starting node has a shard");
        assert!(map[&shard].contains(&c.addr(i).to_string()));
    }

    let started = Instant::now();
    let cm = write_keys(&c, &six, 600).await;
    println!("600 chained writes in {:?}", started.elapsed());
    read_all(&c, &six, 600, &cm).await;
    let counts = [key_count(&c, 0, "0").await, key_count(&c, 3, "1").await];
    println!("key counts {counts:?}");
    assert_eq!(counts.iter().sum::<u64>(), 600);
    for count in counts {
        assert!(
            (225..=375).contains(&count),
            "within ±25% of 300: {counts:?}"
        );
    }

    // A seventh node joins by gossip and is added to shard 1.
    let all = c.addrs();
    let seventh = c.start_extra_node(&all);
    let seven: Vec<usize> = (0..7).collect();
    for &i in &seven {
        c.wait_view(i, &c.addrs(), CONVERGE_TIMEOUT).await;
    }
    assert_eq!(node_shard(&c, seventh).await, None);
    let (status, body) = put(
        &c.url(2, "/key-value-store-shard/add-member/1"),
        json!({"socket-address": c.addr(seventh).to_string()}),
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"message": "Node added to shard successfully"}))
    );
    let peer = map["1"][0].clone();
    let peer_index = seven
        .iter()
        .copied()
        .find(|&i| c.addr(i).to_string() == peer)
        .unwrap();
    assert_eq!(
        key_count(&c, seventh, "1").await,
        key_count(&c, peer_index, "1").await,
        "the new member holds every key of its shard right after the 200"
    );
    assert_eq!(node_shard(&c, seventh).await.as_deref(), Some("1"));
    for &i in &seven {
        assert!(
            members(&c, i, "1")
                .await
                .contains(&c.addr(seventh).to_string()),
            "node {i} lists the new member"
        );
    }

    // Not enough nodes for 10 shards; then three shards.
    let (status, body) = reshard(&c, 4, 10).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"message": "Not enough nodes to provide fault-tolerance with the given shard count!"})
        )
    );
    let started = Instant::now();
    let (status, body) = reshard(&c, 1, 3).await;
    assert_eq!(
        (status, body),
        (200, json!({"message": "Resharding done successfully"}))
    );
    println!("reshard 2 -> 3 took {:?}", started.elapsed());
    let map = agreed_map(&c, &seven).await;
    assert_eq!(map.keys().collect::<Vec<_>>(), ["0", "1", "2"]);
    let mut total = 0;
    for (id, m) in &map {
        let counts: Vec<u64> = {
            let mut v = Vec::new();
            for addr in m {
                let i = seven
                    .iter()
                    .copied()
                    .find(|&i| c.addr(i).to_string() == *addr)
                    .unwrap();
                v.push(key_count(&c, i, id).await);
            }
            v
        };
        assert!(
            counts.windows(2).all(|w| w[0] == w[1]),
            "members of {id} agree: {counts:?}"
        );
        total += counts[0];
        assert!(
            (150..=250).contains(&counts[0]),
            "shard {id} within ±25% of 200: {counts:?}"
        );
    }
    assert_eq!(total, 600, "no key lost or duplicated");
    read_all(&c, &seven, 600, &cm).await;
    read_all(&c, &seven, 600, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn course_scenario_format_2019() {
    course_scenario("2019").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn course_scenario_format_2020() {
    course_scenario("2020").await;
}

/// An acknowledged write: key, value and the metadata the store returned.
type Acked = (String, String, String);

/// Writers keep writing unique keys (each with its own causal session) and readers keep
/// reading acknowledged keys with their metadata while the store reshards 2 -> 3 -> 2. Every
/// acknowledged write must be found afterwards, and no read of a written key may say 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_under_load_loses_nothing() {
    let c = Arc::new(Cluster::start(6, Some(2), "2019").await);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let reads = Arc::new(AtomicUsize::new(0));

    let mut tasks = Vec::new();
    for w in 0..3usize {
        let (c, stop, acked) = (c.clone(), stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut cm = String::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) && n < 5_000 {
                let key = format!("w{w}-{n}");
                let value = format!("v{w}-{n}");
                let node = (w + n) % c.len();
                let url = c.kv_url(node, &key);
                let body = json!({"value": value, "causal-metadata": cm});
                if let Ok((status, body)) =
                    try_request(reqwest::Method::PUT, &url, Body::Json(&body)).await
                {
                    if status == 201 {
                        cm = body["causal-metadata"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        acked.lock().unwrap().push((key, value, cm.clone()));
                    }
                }
                n += 1;
            }
        }));
    }
    for r in 0..2usize {
        let (c, stop, acked, failures, reads) = (
            c.clone(),
            stop.clone(),
            acked.clone(),
            failures.clone(),
            reads.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) && n < 10_000 {
                let pick = {
                    let acked = acked.lock().unwrap();
                    (!acked.is_empty()).then(|| acked[(n * 7919 + r) % acked.len()].clone())
                };
                n += 1;
                let Some((key, value, cm)) = pick else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let url = c.kv_url((n + r) % c.len(), &key);
                let body = json!({"causal-metadata": cm});
                if let Ok((status, body)) =
                    try_request(reqwest::Method::GET, &url, Body::Json(&body)).await
                {
                    reads.fetch_add(1, Ordering::Relaxed);
                    if status == 404 || (status == 200 && body["value"] != value.as_str()) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("GET {key}: {status} {body}"));
                    }
                }
            }
        }));
    }

    let wait_for_writes = |at_least: usize| {
        let acked = acked.clone();
        async move {
            poll_until(CONVERGE_TIMEOUT, POLL_INTERVAL, || {
                let acked = acked.clone();
                async move { (acked.lock().unwrap().len() >= at_least).then_some(()) }
            })
            .await
            .expect("writers make progress");
        }
    };
    wait_for_writes(100).await;
    for (count, via) in [(3u32, 1usize), (2, 4)] {
        let started = Instant::now();
        let (status, body) = reshard(&c, via, count).await;
        assert_eq!(status, 200, "reshard to {count}: {body}");
        println!("reshard to {count} under load took {:?}", started.elapsed());
        let before = acked.lock().unwrap().len();
        wait_for_writes(before + 100).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("client task");
    }

    let acked = acked.lock().unwrap().clone();
    println!(
        "{} acknowledged writes, {} reads during resharding",
        acked.len(),
        reads.load(Ordering::Relaxed)
    );
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} bad reads, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let all: Vec<usize> = (0..c.len()).collect();
    agreed_map(&c, &all).await;
    for (k, (key, value, cm)) in acked.iter().enumerate() {
        let (status, body) = c.kv_get(k % c.len(), key, Some(cm)).await;
        assert_eq!(
            (status, &body["value"]),
            (200, &json!(value)),
            "{key}: {body}"
        );
    }
    let mut total = 0;
    for id in shard_ids(&c, 0).await {
        total += key_count(&c, 0, &id).await;
    }
    assert_eq!(
        total as usize,
        acked.len(),
        "key counts equal the acknowledged writes"
    );
}

/// A node that is down during a reshard learns the new map when it returns, and serves every
/// key through forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_during_reshard_learns_the_new_map() {
    let c = Cluster::start(7, Some(2), "2019").await;
    let cm = write_keys(&c, &[0, 1, 2, 3], 60).await;
    c.kill(6);
    let six: Vec<usize> = (0..6).collect();
    for &i in &six {
        c.wait_view(i, &c.addrs()[..6], CONVERGE_TIMEOUT).await;
    }
    let (status, body) = reshard(&c, 0, 3).await;
    assert_eq!(status, 200, "{body}");
    let map = agreed_map(&c, &six).await;
    assert_eq!(map.len(), 3);

    c.restart(6);
    let learned = poll_until(CONVERGE_TIMEOUT, POLL_INTERVAL, || {
        let c = &c;
        async move {
            let (status, body) = try_get(&c.url(6, "/key-value-store-shard/shard-ids"), None)
                .await
                .ok()?;
            (status == 200 && list(&body["shard-ids"]).len() == 3).then_some(())
        }
    })
    .await;
    assert!(
        learned.is_some(),
        "the restarted node learns the 3-shard map"
    );
    assert_eq!(
        node_shard(&c, 6).await,
        None,
        "it is in no shard of the new map"
    );
    read_all(&c, &[6], 60, &cm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_shard_requests_get_clear_errors_and_change_nothing() {
    let c = Cluster::start(4, Some(2), "2019").await;
    let unknown =
        |op: &str| json!({"error": "Shard ID does not exist", "message": format!("Error in {op}")});
    for path in [
        "/key-value-store-shard/shard-id-members/7",
        "/key-value-store-shard/shard-id-key-count/7",
        "/key-value-store-shard/shard-id-members/x",
    ] {
        assert_eq!(
            get(&c.url(0, path), None).await,
            (404, unknown("GET")),
            "{path}"
        );
    }
    let add = |shard: &str| c.url(1, &format!("/key-value-store-shard/add-member/{shard}"));
    assert_eq!(
        put(&add("9"), json!({"socket-address": c.addr(0).to_string()})).await,
        (404, unknown("PUT"))
    );
    for body in [
        json!({}),
        json!({"socket-address": "nope"}),
        json!({"socket-address": 5}),
    ] {
        let (status, reply) = put(&add("0"), body.clone()).await;
        expect_error_shape(status, &reply, 400, "PUT");
        assert!(
            reply["error"].as_str().unwrap().contains("socket-address"),
            "{body}: {reply}"
        );
    }
    let (status, reply) = put(&add("0"), json!({"socket-address": "127.0.0.1:9"})).await;
    expect_error_shape(status, &reply, 400, "PUT");
    for body in [
        json!({}),
        json!({"shard-count": 0}),
        json!({"shard-count": "two"}),
        json!({"shard-count": -1}),
    ] {
        let (status, reply) = put(&c.url(2, "/key-value-store-shard/reshard"), body.clone()).await;
        expect_error_shape(status, &reply, 400, "PUT");
        assert!(
            reply["error"].as_str().unwrap().contains("shard-count"),
            "{body}: {reply}"
        );
    }
    let (status, reply) = reshard(&c, 3, 3).await;
    assert_eq!(
        (status, reply),
        (
            400,
            json!({"message": "Not enough nodes to provide fault-tolerance with the given shard count!"})
        )
    );
    let all: Vec<usize> = (0..4).collect();
    let map = agreed_map(&c, &all).await;
    assert_eq!(map.len(), 2, "nothing changed");
}
