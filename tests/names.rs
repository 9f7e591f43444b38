//! Nodes named by DNS names, not addresses (as a Kubernetes StatefulSet names its pods):
//! `localhost:<port>` identities on one host. The Docker suite covers names that move to
//! another IP (tests/e2e/test_names.py).

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::json;

/// Node processes, killed when the test ends, however it ends.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_local_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts node `i` named `name`, listening on 127.0.0.1:`port`, in memory, with `env`.
fn spawn_named(
    log_dir: &std::path::Path,
    i: usize,
    name: &str,
    port: u16,
    env: &[(&str, String)],
) -> Child {
    let log = std::fs::File::create(log_dir.join(format!("node{i}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_kvs"))
        .env("SOCKET_ADDRESS", name)
        .env("BIND_ADDRESS", format!("127.0.0.1:{port}"))
        .env("KVS_IN_MEMORY", "true")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start kvs")
}

#[tokio::test]
async fn a_store_forms_and_serves_under_names() {
    let ports: Vec<u16> = (0..2).map(|_| free_local_port()).collect();
    let view: Vec<String> = ports.iter().map(|p| format!("localhost:{p}")).collect();
    let log_dir = std::env::temp_dir().join(format!("kvs-names-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut nodes = Processes(Vec::new());
    for (i, port) in ports.iter().enumerate() {
        let env = [("VIEW", view.join(",")), ("SHARD_COUNT", "1".into())];
        nodes
            .0
            .push(spawn_named(&log_dir, i, &view[i], *port, &env));
    }
    let url = |i: usize, path: &str| format!("http://127.0.0.1:{}{path}", ports[i]);
    // The view answers the names as configured.
    let mut expected = view.clone();
    expected.sort();
    let formed = poll_until(READY_TIMEOUT, POLL_INTERVAL, || async {
        let (s, b) = try_get(&url(1, "/key-value-store-view"), None).await.ok()?;
        (s == 200 && b["view"] == expected.join(",")).then_some(())
    })
    .await;
    assert!(formed.is_some(), "logs in {}", log_dir.display());
    let (s, b) = put(
        &url(0, "/key-value-store/named"),
        json!({"value": "by name", "causal-metadata": ""}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let cm = b["causal-metadata"].as_str().unwrap().to_owned();
    let (s, b) = get(
        &url(1, "/key-value-store/named"),
        Some(json!({ "causal-metadata": cm })),
    )
    .await;
    assert_eq!((s, &b["value"]), (200, &json!("by name")), "{b}");
    let (s, b) = get(&url(0, "/key-value-store-shard/shard-id-members/0"), None).await;
    assert_eq!(s, 200);
    assert_eq!(b["shard-id-members"], expected.join(","));
    // Replicated to the other node by name: it holds the key without being asked through
    // the token's issuer.
    let held = poll_until(CONVERGE_TIMEOUT, POLL_INTERVAL, || async {
        let (s, b) = try_get(&url(1, "/key-value-store/named"), None)
            .await
            .ok()?;
        (s == 200 && b["value"] == "by name").then_some(())
    })
    .await;
    assert!(held.is_some());

    // A third node, named too, joins by add-member: the admin request names it.
    let port = free_local_port();
    let name = format!("localhost:{port}");
    let env = [("VIEW", format!("{},{name}", view.join(",")))];
    nodes.0.push(spawn_named(&log_dir, 2, &name, port, &env));
    let joined = poll_until(READY_TIMEOUT, POLL_INTERVAL, || async {
        let (s, _) = try_request(
            reqwest::Method::PUT,
            &url(0, "/key-value-store-shard/add-member/0"),
            Body::Json(&json!({ "socket-address": name })),
        )
        .await
        .ok()?;
        (s == 200).then_some(())
    })
    .await;
    assert!(
        joined.is_some(),
        "add-member by name; logs in {}",
        log_dir.display()
    );
    let (s, b) = get(&url(1, "/key-value-store-shard/shard-id-members/0"), None).await;
    assert_eq!(s, 200);
    let members = b["shard-id-members"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(members.split(',').any(|m| m == name), "{members}");
    let third = format!("http://127.0.0.1:{port}/key-value-store/named");
    let (s, b) = get(&third, Some(json!({ "causal-metadata": cm }))).await;
    assert_eq!((s, &b["value"]), (200, &json!("by name")), "{b}");
    let _ = std::fs::remove_dir_all(&log_dir);
    drop(nodes);
}
