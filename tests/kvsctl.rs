//! `kvsctl`, the command-line client, against stores of real processes: every command,
//! the session's causality across nodes, failover, and the exit codes scripts rely on.

mod common;

use std::io::Write;
use std::net::{SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

const FMT: &str = "2019";
const ADMIN_TOKEN: &str = "kvsctl-test-admin-token";

/// What one kvsctl run did.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    /// The standard output of a run that must have succeeded.
    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "kvsctl failed: {self:?}");
        &self.stdout
    }

    /// The JSON document of a successful `--json` run.
    fn json(&self) -> Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("not one JSON document ({e}): {self:?}"))
    }

    /// Asserts a failure with `code` and one line on stderr that contains `text`.
    fn fails(&self, code: i32, text: &str) {
        assert_eq!(self.code, code, "exit code: {self:?}");
        assert!(self.stdout.is_empty(), "nothing on stdout: {self:?}");
        let line = self.stderr.trim_end();
        assert!(!line.contains('\n'), "one line on stderr: {self:?}");
        assert!(line.starts_with("kvsctl: "), "{self:?}");
        assert!(line.contains(text), "stderr should say {text:?}: {self:?}");
    }
}

/// kvsctl with its own session file and home, and a list of nodes.
struct Kvsctl {
    dir: PathBuf,
    nodes: Vec<String>,
}

impl Kvsctl {
    /// A fresh scratch directory for `test` (its session file lives there).
    fn new(test: &str, nodes: &[SocketAddrV4]) -> Self {
        let dir = std::env::temp_dir()
            .join("kvsctl-tests")
            .join(format!("{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Kvsctl {
            dir,
            nodes: nodes.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// The same session, talking to other nodes.
    fn at(&self, nodes: &[String]) -> Kvsctl {
        Kvsctl {
            dir: self.dir.clone(),
            nodes: nodes.to_vec(),
        }
    }

    fn session_path(&self) -> PathBuf {
        self.dir.join("session.json")
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_with_stdin(args, b"")
    }

    fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Out {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvsctl"));
        for node in &self.nodes {
            cmd.args(["--node", node]);
        }
        // Nothing from the environment of the machine running the tests.
        for var in ["KVSCTL_NODES", "KVSCTL_SESSION", "KVS_ADMIN_TOKEN"] {
            cmd.env_remove(var);
        }
        let session = self.session_path();
        let mut child = cmd
            .arg("--session")
            .arg(&session)
            .args(["--timeout-ms", "10000"])
            .args(args)
            .env("HOME", &self.dir)
            .env("XDG_STATE_HOME", &self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kvsctl starts");
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(stdin).expect("write kvsctl's stdin");
        }
        let out = child.wait_with_output().expect("kvsctl runs");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn write_file(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, content).expect("write a scratch file");
        path
    }
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 scratch path")
}

/// An address where nothing listens (bound, then closed).
fn closed_address() -> String {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string()
}

/// The node entry of `address` in `kvsctl --json status`.
fn status_of(status: &Value, address: &str) -> Option<Value> {
    status["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["address"] == address)
        .cloned()
}

/// Polls `kvsctl --json status` until `pred` holds for the entry of `address`.
async fn poll_status(ctl: &Kvsctl, address: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let seen = poll_until(CONVERGE_TIMEOUT, POLL_INTERVAL, || async {
        let out = ctl.run(&["--json", "status"]);
        let status: Value = serde_json::from_str(&out.stdout).ok()?;
        status_of(&status, address).filter(|n| pred(n))
    })
    .await;
    seen.unwrap_or_else(|| {
        let last = ctl.run(&["status"]);
        panic!("status of {address} never as expected; last: {last:?}")
    })
}

/// get, put (argument, stdin, -, --file), del and their answers, in text and JSON; a
/// missing key is exit 1 with one line on stderr.
#[tokio::test]
async fn key_commands_read_write_and_delete() {
    let c = Cluster::start(2, Some(1), FMT).await;
    let ctl = Kvsctl::new("key_commands", &c.addrs());

    assert_eq!(ctl.run(&["put", "k", "v1"]).ok(), "added \"k\" (shard 0)\n");
    assert_eq!(
        ctl.run(&["put", "k", "v2"]).ok(),
        "updated \"k\" (shard 0)\n"
    );
    assert_eq!(ctl.run(&["get", "k"]).ok(), "v2\n");
    assert_eq!(ctl.run(&["get", "--no-newline", "k"]).ok(), "v2");

    let put = ctl.run_with_stdin(&["--json", "put", "piped"], b"line 1\nline 2\n");
    let put = put.json();
    assert_eq!(put["result"], "added", "{put}");
    assert_eq!(put["shard-id"], "0", "{put}");
    assert!(put["causal-metadata"].is_string(), "{put}");
    assert_eq!(ctl.run(&["get", "-n", "piped"]).ok(), "line 1\nline 2\n");
    ctl.run_with_stdin(&["put", "dash", "-"], b"from -").ok();
    assert_eq!(ctl.run(&["get", "dash"]).ok(), "from -\n");
    let file = ctl.write_file("value.txt", "é from a file".as_bytes());
    ctl.run(&["put", "filed", "--file", path_arg(&file)]).ok();
    let got = ctl.run(&["--json", "get", "filed"]).json();
    assert_eq!(got["key"], "filed");
    assert_eq!(got["value"], "é from a file");

    // Keys with characters a URL would take apart reach the store whole.
    ctl.run(&["put", "a/b?c#d e", "odd"]).ok();
    assert_eq!(ctl.run(&["get", "a/b?c#d e"]).ok(), "odd\n");
    let (s, b) = c.kv_get(1, "a%2Fb%3Fc%23d%20e", None).await;
    assert_eq!((s, &b["value"]), (200, &json!("odd")), "{b}");

    assert_eq!(ctl.run(&["del", "k"]).ok(), "deleted \"k\" (shard 0)\n");
    ctl.run(&["get", "k"])
        .fails(1, "Key does not exist (404 from ");
    ctl.run(&["del", "k"]).fails(1, "Key does not exist");
    ctl.run(&["put", &"x".repeat(51), "v"])
        .fails(1, "Key is too long (400 from ");
    ctl.run(&["put", "k", "--file", "/nonexistent/kvsctl-value"])
        .fails(5, "cannot read /nonexistent/kvsctl-value");
}

/// `iset` stores an image's metadata under its content's digest; `iget` finds it from
/// any copy of the file, and a picture never stored is exit 1.
#[tokio::test]
async fn iset_and_iget_round_trip_an_images_metadata() {
    let c = Cluster::start(2, Some(1), FMT).await;
    let ctl = Kvsctl::new("images", &c.addrs());
    let picture: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let original = ctl.write_file("cat.jpg", &picture);
    let copy = ctl.write_file("copy-of-cat.jpg", &picture);
    let other = ctl.write_file("dog.jpg", b"another picture");

    let key = ctl
        .run(&["iset", path_arg(&original), "a cat on a mat; 2024; Ana"])
        .ok()
        .trim_end()
        .to_owned();
    assert!(key.starts_with("img-") && key.len() == 50, "{key}");
    assert_eq!(
        ctl.run(&["iget", path_arg(&copy)]).ok(),
        "a cat on a mat; 2024; Ana\n"
    );
    let got = ctl.run(&["--json", "iget", path_arg(&original)]).json();
    assert_eq!(got["key"], json!(key), "{got}");
    assert_eq!(got["metadata"], "a cat on a mat; 2024; Ana", "{got}");
    // The metadata is a plain key of the store.
    assert_eq!(ctl.run(&["get", &key]).ok(), "a cat on a mat; 2024; Ana\n");

    let set = ctl
        .run_with_stdin(&["--json", "iset", path_arg(&other), "-"], b"a dog")
        .json();
    assert_ne!(set["key"], json!(key), "{set}");
    assert_eq!(ctl.run(&["iget", "-n", path_arg(&other)]).ok(), "a dog");
    let never = ctl.write_file("never.jpg", b"never stored");
    ctl.run(&["iget", path_arg(&never)])
        .fails(1, "Key does not exist");
}

/// view, shards, members and count describe the store; ls pages through keys of both
/// shards, in order, each once.
#[tokio::test]
async fn shape_commands_and_a_listing_across_two_shards() {
    let c = Cluster::start(4, Some(2), FMT).await;
    let ctl = Kvsctl::new("shape", &c.addrs());

    let mut all: Vec<String> = c.addrs().iter().map(|a| a.to_string()).collect();
    all.sort();
    let mut view: Vec<String> = ctl.run(&["view"]).ok().lines().map(str::to_owned).collect();
    view.sort();
    assert_eq!(view, all);
    assert_eq!(ctl.run(&["shards"]).ok(), "0\n1\n");
    assert_eq!(
        ctl.run(&["--json", "shards"]).json(),
        json!({"shard-ids": ["0", "1"]})
    );
    let mut members: Vec<String> = ["0", "1"]
        .iter()
        .flat_map(|s| {
            let out = ctl.run(&["members", s]);
            out.ok().lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .collect();
    members.sort();
    assert_eq!(members, all);
    ctl.run(&["members", "7"])
        .fails(1, "Shard ID does not exist");

    let mut keys: Vec<String> = (0..30).map(|i| format!("ls-{i:02}")).collect();
    let mut shards_used = std::collections::BTreeSet::new();
    for key in &keys {
        let (s, b) = c.kv_put(0, key, "v", "").await;
        assert_eq!(s, 201, "{b}");
        shards_used.insert(b["shard-id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(shards_used.len(), 2, "the keys should fall on both shards");
    let (s, b) = c.kv_put(1, "other", "v", "").await;
    assert_eq!(s, 201, "{b}");
    keys.sort();

    // Counts come from one member of each shard: poll until replication has caught up.
    let counted = poll_until(CONVERGE_TIMEOUT, POLL_INTERVAL, || async {
        let counts = ctl.run(&["--json", "count"]).json();
        (counts["total"] == 31).then_some(counts)
    })
    .await
    .unwrap_or_else(|| panic!("count never 31: {:?}", ctl.run(&["count"])));
    let by_shard = counted["counts"].as_object().expect("counts by shard");
    assert_eq!(by_shard.len(), 2, "{counted}");
    let zero = by_shard["0"].as_u64().expect("a count");
    assert_eq!(ctl.run(&["count", "0"]).ok(), format!("{zero}\n"));
    let table = ctl.run(&["count"]);
    assert!(table.ok().ends_with("total  31\n"), "{table:?}");

    let listed = ctl.run(&["ls", "--prefix", "ls-", "--all"]);
    assert_eq!(
        listed.ok(),
        keys.iter().map(|k| format!("{k}\n")).collect::<String>()
    );
    assert_eq!(listed.stderr, "", "no note after a whole listing");
    let everything = ctl.run(&["--json", "ls", "--all"]).json();
    assert_eq!(everything["keys"].as_array().map(Vec::len), Some(31));
    assert_eq!(everything["next"], Value::Null);

    let first = ctl.run(&["ls", "--prefix", "ls-", "--limit", "7"]);
    assert_eq!(
        first.ok(),
        keys[..7]
            .iter()
            .map(|k| format!("{k}\n"))
            .collect::<String>()
    );
    assert!(
        first.stderr.contains("kvsctl ls --after ls-06"),
        "{first:?}"
    );
    // Page by page with --after, as a script would.
    let mut paged: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut args = vec!["--json", "ls", "--prefix", "ls-", "--limit", "4"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let page = ctl.run(&args).json();
        let got = page["keys"].as_array().expect("keys").clone();
        assert!(got.len() <= 4, "{page}");
        paged.extend(got.iter().filter_map(|k| k.as_str().map(str::to_owned)));
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
        assert!(paged.len() <= keys.len(), "paging does not end: {paged:?}");
    }
    assert_eq!(paged, keys);
}

/// Writes through one node and reads through another, each command a process of its own:
/// the session file carries the causal metadata from one to the next, so every read sees
/// the write before it. Metadata another store issued is refused with a way out.
#[tokio::test]
async fn a_session_carries_causality_across_nodes() {
    let c = Cluster::start(3, Some(1), FMT).await;
    let ctl = Kvsctl::new("session", &c.addrs());
    let via_a = ctl.at(&[c.addr(0).to_string()]);
    let via_b = ctl.at(&[c.addr(1).to_string()]);

    for round in 0..15 {
        let value = format!("v{round}");
        let put = via_a.run(&["--json", "put", "counter", &value]).json();
        // The session file holds the metadata of the last answer.
        let saved: Value = serde_json::from_slice(
            &std::fs::read(ctl.session_path()).expect("the session file exists"),
        )
        .expect("the session file is JSON");
        assert_eq!(saved["causal-metadata"], put["causal-metadata"]);
        assert_eq!(
            via_b.run(&["get", "counter"]).ok(),
            format!("{value}\n"),
            "round {round}: the read through node 1 missed the write through node 0"
        );
    }
    let shown = ctl.run(&["--json", "session", "show"]).json();
    assert_eq!(shown["path"], json!(ctl.session_path()));
    assert!(
        !shown["causal-metadata"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{shown}"
    );

    // A token the store did not issue: said so, with the way out, and kept.
    std::fs::write(
        ctl.session_path(),
        br#"{"causal-metadata":"not-from-this-store"}"#,
    )
    .expect("write the session file");
    ctl.run(&["get", "counter"])
        .fails(1, "start a new session with `kvsctl session reset`");
    let kept = std::fs::read_to_string(ctl.session_path()).expect("the session file");
    assert!(kept.contains("not-from-this-store"), "{kept}");
    assert_eq!(ctl.run(&["--no-session", "get", "counter"]).ok(), "v14\n");
    assert!(ctl
        .run(&["session", "reset"])
        .ok()
        .starts_with("removed session file"));
    assert_eq!(ctl.run(&["get", "counter"]).ok(), "v14\n");
    assert!(
        ctl.session_path().exists(),
        "the read started a new session"
    );
}

/// A first node that is down is skipped, for reads and writes; `status` shows it down. A
/// write whose answer is lost is not sent to another node (exit 4), a read is; no node
/// at all is exit 3.
#[tokio::test]
async fn failover_skips_a_killed_node_and_status_shows_it_down() {
    let c = Cluster::start(3, Some(1), FMT).await;
    let ctl = Kvsctl::new("failover", &c.addrs());
    ctl.run(&["put", "k", "before"]).ok();
    // Node 0 coordinated the write: the others must hold it before node 0 dies, or the
    // session's reads would rightly wait for it in vain (503).
    for i in 1..3 {
        c.poll_get(i, "k", None, CONVERGE_TIMEOUT, |s, _| s == 200)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    c.kill(0);
    let first = c.addr(0).to_string();
    assert_eq!(ctl.run(&["get", "k"]).ok(), "before\n");
    ctl.run(&["put", "k", "after"]).ok();
    assert_eq!(ctl.run(&["get", "k"]).ok(), "after\n");
    let status = poll_status(&ctl, &first, |n| n["up"] == false).await;
    assert_eq!(status["shard-id"], "0", "{status}");
    let table = ctl.run(&["status"]);
    let row = table
        .ok()
        .lines()
        .find(|l| l.starts_with(&first))
        .unwrap_or_else(|| panic!("no row for {first}: {table:?}"));
    assert!(row.contains(" down "), "{row}");

    // A node that accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("a silent listener");
    let silent = silent.local_addr().expect("its address").to_string();
    let live = c.addr(1).to_string();
    let via_silent = ctl.at(&[silent.clone(), live.clone()]);
    let out = via_silent.run(&["--timeout-ms", "500", "put", "unsure", "v"]);
    out.fails(4, "the write may have been applied");
    assert!(out.stderr.contains(&silent), "{out:?}");
    let (s, b) = c.kv_get(1, "unsure", None).await;
    assert_eq!(s, 404, "the write must not reach another node: {b}");
    let read = via_silent.run(&["--timeout-ms", "500", "get", "k"]);
    assert_eq!(read.ok(), "after\n");

    ctl.run(&["fail", &live])
        .fails(1, "Fault injection is disabled (404 from ");

    let nowhere = ctl.at(&[first.clone(), closed_address()]);
    nowhere.run(&["get", "k"]).fails(3, "no node reachable: ");
    nowhere.run(&["put", "k", "v"]).fails(3, &first);
}

/// `fail` cuts a node off (it answers nothing, the others see it down) until `recover`;
/// both need the admin token. A node without fault injection refuses.
#[tokio::test]
async fn fail_and_recover_a_node() {
    let c = Cluster::start_with_env(
        3,
        Some(1),
        FMT,
        &[
            ("KVS_FAULT_INJECTION", "1"),
            ("KVS_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await;
    let ctl = Kvsctl::new("fault", &c.addrs());
    let target = c.addr(2).to_string();
    let watcher = ctl.at(&[c.addr(0).to_string()]);
    ctl.run(&["put", "k", "v"]).ok();

    ctl.run(&["fail", &target]).fails(1, "Admin token required");
    let failed = ctl
        .run(&[
            "--token",
            ADMIN_TOKEN,
            "--json",
            "fail",
            &target,
            "--seconds",
            "120",
        ])
        .json();
    assert_eq!(failed["seconds"], 120, "{failed}");
    poll_status(&watcher, &target, |n| n["up"] == false).await;
    // A read through the failed node gets no answer and goes on to the next node.
    let read =
        ctl.at(&[target.clone(), c.addr(1).to_string()])
            .run(&["--timeout-ms", "1000", "get", "k"]);
    assert_eq!(read.ok(), "v\n");

    let recovered = ctl.run(&["--token", ADMIN_TOKEN, "recover", &target]);
    assert_eq!(recovered.ok(), format!("{target} recovered\n"));
    poll_status(&watcher, &target, |n| {
        n["up"] == true && n["failed"] == false
    })
    .await;
    assert_eq!(
        ctl.at(std::slice::from_ref(&target))
            .run(&["get", "k"])
            .ok(),
        "v\n"
    );
}

/// reshard and add-member change the store with the admin token, and are refused (exit 1)
/// without it.
#[tokio::test]
async fn admin_commands_reshard_and_add_a_member_with_the_token() {
    let mut c = Cluster::start_with_env(4, Some(1), FMT, &[("KVS_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let ctl = Kvsctl::new("admin", &c.addrs());
    for i in 0..20 {
        ctl.run(&["put", &format!("key{i}"), "v"]).ok();
    }
    ctl.run(&["reshard", "2"]).fails(1, "Admin token required");
    ctl.run(&["--token", ADMIN_TOKEN, "reshard", "3"])
        .fails(1, "Not enough nodes to provide fault-tolerance");
    let done = ctl.run(&["--token", ADMIN_TOKEN, "reshard", "2"]);
    assert_eq!(done.ok(), "Resharding done successfully\n");
    assert_eq!(ctl.run(&["shards"]).ok(), "0\n1\n");
    let counts = ctl.run(&["--json", "count"]).json();
    assert_eq!(counts["total"], 20, "{counts}");
    // The session read every key back after the reshard.
    for i in 0..20 {
        assert_eq!(ctl.run(&["get", &format!("key{i}")]).ok(), "v\n");
    }

    // View changes are admin requests too.
    let member = c.addr(1).to_string();
    ctl.run(&["view", "add", &member])
        .fails(1, "Admin token required");
    ctl.run(&["--token", ADMIN_TOKEN, "view", "add", &member])
        .fails(1, "Socket address already exists in the view");

    let extra = c.start_extra_node(&c.addrs());
    // The node receiving add-member must see the new node up.
    c.wait_view(0, &c.addrs(), READY_TIMEOUT).await;
    let address = c.addr(extra).to_string();
    ctl.run(&["add-member", "0", &address])
        .fails(1, "Admin token required");
    let added = ctl.run(&["--token", ADMIN_TOKEN, "add-member", "0", &address]);
    assert_eq!(added.ok(), "Node added to shard successfully\n");
    let members = ctl.run(&["members", "0"]);
    assert!(members.ok().lines().any(|m| m == address), "{members:?}");
}

/// Without a store: usage errors are exit 2 (clap's), no reachable node exit 3.
#[test]
fn exit_codes_without_a_store() {
    let ctl = Kvsctl::new("no_store", &[]);
    let nowhere = ctl.at(&[closed_address(), closed_address()]);
    nowhere.run(&["get", "k"]).fails(3, "no node reachable");
    nowhere
        .run(&["--json", "status"])
        .fails(3, "connection refused");
    let usage = ctl.run(&["get"]);
    assert_eq!(usage.code, 2, "{usage:?}");
    assert_eq!(ctl.run(&["reshard", "0"]).code, 2);
    assert_eq!(ctl.run(&["--node", "no-port", "shards"]).code, 2);
    ctl.run(&["get", ".."]).fails(2, "cannot be sent");
    let help = ctl.run(&["--help"]);
    assert!(help.ok().contains("Exit codes:"), "{help:?}");
    for sub in ["get", "put", "ls", "status", "fail", "iset", "session"] {
        let help = ctl.run(&[sub, "--help"]);
        assert!(help.ok().contains("Examples:"), "{sub}: {help:?}");
    }
}
