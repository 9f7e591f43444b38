//! A store whose nodes run in network namespaces of their own, so that a test can cut the
//! network between groups of nodes (a node's outgoing TCP leaves from 127.0.0.1 whatever it
//! binds, so loopback rules cannot separate two local processes).
//!
//! Layout: a bridge `kvsnb<id>` in the root namespace holds `10.214.<id>.1/24`; node `i` runs
//! in namespace `kvsn<id>-<i>` behind a veth pair, at `10.214.<id>.<10 + i>:8080`. The test
//! (the clients) talks to every node through the bridge; nodes talk to each other through it
//! too, so `iptables` rules inside a node's namespace cut exactly the peers they name.
//! Everything is created by [`NetCluster::start`] and removed on drop, also when the test
//! panics; leftovers of a run that was killed are removed by the next one.
//!
//! Needs root (`ip netns`, `iptables`), as CI has.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// Every name this harness creates starts with this, so leftovers can be found.
const PREFIX: &str = "kvsn";
const PORT: u16 = 8080;

/// Runs a command and returns whether it succeeded; its output goes to the test's output
/// only on failure.
fn sh(args: &[&str]) -> bool {
    match Command::new(args[0]).args(&args[1..]).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "netns: `{}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("netns: cannot run `{}`: {e}", args.join(" "));
            false
        }
    }
}

fn must(args: &[&str]) {
    assert!(sh(args), "netns set-up step failed: {}", args.join(" "));
}

/// Removes namespaces and bridges an earlier, killed run left behind.
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(name) = line.split_whitespace().next() {
            if name.starts_with(PREFIX) {
                sh(&["ip", "netns", "del", name]);
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split(':').nth(1).map(str::trim).unwrap_or_default();
            let name = name.split('@').next().unwrap_or_default();
            if name.starts_with(&format!("{PREFIX}b")) {
                sh(&["ip", "link", "del", name]);
            }
        }
    }
}

pub struct NetNode {
    pub addr: SocketAddrV4,
    pub netns: String,
    pub log_path: PathBuf,
    env: Vec<(String, String)>,
    child: Mutex<Option<Child>>,
}

impl NetNode {
    fn spawn(&self) {
        let mut guard = self.child.lock().unwrap();
        assert!(guard.is_none(), "node {} is already running", self.addr);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open node log");
        let _ = writeln!(
            log,
            "==== nemesis harness: starting node {} ====",
            self.addr
        );
        let err = log.try_clone().expect("clone log handle");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, env!("CARGO_BIN_EXE_kvs")])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start a node in its namespace");
        *guard = Some(child);
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = self.child.lock().unwrap().as_ref() {
            sh(&["kill", &format!("-{signal}"), &child.id().to_string()]);
        }
    }

    fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `iptables` inside this node's namespace.
    fn iptables(&self, args: &[&str]) -> bool {
        let mut command = vec!["ip", "netns", "exec", &self.netns, "iptables"];
        command.extend_from_slice(args);
        sh(&command)
    }

    pub fn is_running(&self) -> bool {
        self.child.lock().unwrap().is_some()
    }
}

pub struct NetCluster {
    pub nodes: Vec<NetNode>,
    pub log_dir: PathBuf,
    bridge: String,
    forward_rule: bool,
}

impl NetCluster {
    /// Creates the bridge and one namespace per node, and starts `n` nodes forming
    /// `shard_count` shards. Does not wait for them.
    pub fn start(n: usize, shard_count: u32, log_dir: PathBuf) -> NetCluster {
        remove_leftovers();
        let id = std::process::id() % 250;
        let subnet = |host: usize| Ipv4Addr::new(10, 214, id as u8, host as u8);
        let bridge = format!("{PREFIX}b{id}");
        let mut cluster = NetCluster {
            nodes: Vec::new(),
            log_dir,
            bridge: bridge.clone(),
            forward_rule: false,
        };
        must(&["ip", "link", "add", &bridge, "type", "bridge"]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", subnet(1)),
            "dev",
            &bridge,
        ]);
        must(&["ip", "link", "set", &bridge, "up"]);
        // Docker sets the FORWARD policy to DROP; bridged frames pass through it when
        // br_netfilter is loaded.
        cluster.forward_rule = sh(&[
            "iptables", "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
        ]);
        let addrs: Vec<SocketAddrV4> = (0..n)
            .map(|i| SocketAddrV4::new(subnet(10 + i), PORT))
            .collect();
        let view = addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        fs::create_dir_all(&cluster.log_dir).expect("create log dir");
        for (i, addr) in addrs.into_iter().enumerate() {
            let netns = format!("{PREFIX}{id}-{i}");
            let host_if = format!("{PREFIX}{id}h{i}");
            must(&["ip", "netns", "add", &netns]);
            must(&[
                "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns",
                &netns,
            ]);
            must(&["ip", "link", "set", &host_if, "master", &bridge]);
            must(&["ip", "link", "set", &host_if, "up"]);
            let ip = format!("{}/24", addr.ip());
            must(&["ip", "-n", &netns, "addr", "add", &ip, "dev", "eth0"]);
            must(&["ip", "-n", &netns, "link", "set", "eth0", "up"]);
            must(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
            let rust_log = std::env::var("KVS_TEST_RUST_LOG").unwrap_or_else(|_| "info".into());
            let data_dir = cluster.log_dir.join(format!("node{i}-data"));
            let mut env = vec![
                ("KVS_DATA_DIR".to_string(), data_dir.display().to_string()),
                ("SOCKET_ADDRESS".to_string(), addr.to_string()),
                ("VIEW".to_string(), view.clone()),
                ("SHARD_COUNT".to_string(), shard_count.to_string()),
                ("RUST_LOG".to_string(), rust_log),
            ];
            // Shorter than the client's timeout, so that waits end in the store's own 503.
            if let Ok(ms) = std::env::var("KVS_DEPENDENCY_TIMEOUT_MS") {
                env.push(("KVS_DEPENDENCY_TIMEOUT_MS".to_string(), ms));
            }
            let node = NetNode {
                addr,
                netns,
                log_path: cluster.log_dir.join(format!("node{i}.log")),
                env,
                child: Mutex::new(None),
            };
            node.spawn();
            cluster.nodes.push(node);
        }
        cluster
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn addr(&self, i: usize) -> SocketAddrV4 {
        self.nodes[i].addr
    }

    /// SIGKILL: the process dies at once, with whatever it had not sent.
    pub fn kill(&self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts a killed node again, with the same address and environment.
    pub fn restart(&self, i: usize) {
        self.nodes[i].kill();
        self.nodes[i].spawn();
    }

    pub fn pause(&self, i: usize) {
        self.nodes[i].signal("STOP");
    }

    pub fn resume(&self, i: usize) {
        self.nodes[i].signal("CONT");
    }

    /// Cuts every link between a node of `side` and a node outside it, both ways, for every
    /// protocol (HTTP, the relay channel, gossip). Packets are dropped, not refused: the
    /// peers see silence, as across a real partition.
    pub fn partition(&self, side: &[usize]) {
        for (i, node) in self.nodes.iter().enumerate() {
            let mine = side.contains(&i);
            for (j, peer) in self.nodes.iter().enumerate() {
                if side.contains(&j) == mine {
                    continue;
                }
                let ip = peer.addr.ip().to_string();
                assert!(node.iptables(&["-A", "INPUT", "-s", &ip, "-j", "DROP"]));
                assert!(node.iptables(&["-A", "OUTPUT", "-d", &ip, "-j", "DROP"]));
            }
        }
    }

    /// Removes every cut.
    pub fn heal(&self) {
        for node in &self.nodes {
            node.iptables(&["-F", "INPUT"]);
            node.iptables(&["-F", "OUTPUT"]);
        }
    }

    /// Panics if a node that should be running has exited by itself.
    pub fn assert_running(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            let mut guard = node.child.lock().unwrap();
            if let Some(Ok(Some(status))) = guard.as_mut().map(|c| c.try_wait()) {
                panic!("node {i} ({}) exited by itself: {status}", node.addr);
            }
        }
    }

    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let text = fs::read_to_string(&node.log_path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "----- node {i} ({}) {} -----\n{}\n",
                node.addr,
                node.log_path.display(),
                all[all.len().saturating_sub(lines)..].join("\n")
            ));
        }
        out
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.signal("CONT");
            node.kill();
            sh(&["ip", "netns", "del", &node.netns]);
        }
        if self.forward_rule {
            sh(&[
                "iptables",
                "-D",
                "FORWARD",
                "-i",
                &self.bridge,
                "-o",
                &self.bridge,
                "-j",
                "ACCEPT",
            ]);
        }
        sh(&["ip", "link", "del", &self.bridge]);
    }
}
