//! Cluster harness for the `kvs` integration tests.
//!
//! Every cluster gets its own loopback addresses: the second octet comes from
//! the test binary's process id, the third from a per-process cluster counter
//! and the fourth from a fixed, deliberately unsorted list (so that numeric
//! address sorting is exercised: `.9` < `.10` < `.100`). Ports are derived
//! from (process id, counter), kept below the kernel's ephemeral range, and
//! checked to be free for both TCP and UDP before use.
//!
//! Node logs go to `$TMPDIR/kvs-tests/<test>/<pid>-<cluster>/node<i>.log`.
//! They are removed when a cluster is dropped after a passing test (set
//! `KVS_KEEP_LOGS=1` to keep them) and kept, with their tails printed, when a
//! test panics.

#![allow(dead_code)]

pub mod gossip;
pub mod netns;

use serde_json::{json, Value};
use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Timeout of every HTTP request the tests send.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fresh cluster may take until every node sees every node.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Generous timeout for convergence polls (slow CI machines).
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);
/// Interval between two attempts of a poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

static CLUSTER_COUNTER: AtomicU32 = AtomicU32::new(0);
static PORT_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Last octet of node i's IP. Not sorted on purpose.
const NODE_LAST_OCTETS: [u8; 16] = [
    100, 9, 10, 2, 20, 200, 30, 3, 11, 101, 12, 4, 201, 5, 50, 99,
];
/// Ports are taken from [PORT_BASE, PORT_BASE + PORT_SPAN): inside 20000..60000
/// and below Linux's default ephemeral range (32768..).
const PORT_BASE: u32 = 20_000;
const PORT_SPAN: u32 = 12_700;

// ---------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------

/// Sorts addresses by IP (numerically, octet by octet), then port.
pub fn sort_addrs(addrs: &mut [SocketAddrV4]) {
    addrs.sort_by_key(|a| (a.ip().octets(), a.port()));
}

/// The `view` string the API must return for these addresses: sorted, joined by `,`.
pub fn view_string(addrs: &[SocketAddrV4]) -> String {
    let mut sorted = addrs.to_vec();
    sort_addrs(&mut sorted);
    sorted
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn port_is_free(ip: Ipv4Addr, port: u16) -> bool {
    let tcp = TcpListener::bind((ip, port));
    let udp = UdpSocket::bind((ip, port));
    tcp.is_ok() && udp.is_ok()
}

fn free_port(ip: Ipv4Addr) -> u16 {
    let pid = std::process::id();
    for _ in 0..2_000 {
        let n = PORT_COUNTER.fetch_add(1, Ordering::SeqCst);
        let mix = pid
            .wrapping_mul(7_919)
            .wrapping_add(n.wrapping_mul(104_729));
        let port = (PORT_BASE + mix % PORT_SPAN) as u16;
        if port_is_free(ip, port) {
            return port;
        }
    }
    panic!("no free port found on {ip}");
}

/// (second, third) octet of a fresh cluster's IPs.
fn cluster_subnet(cluster_id: u32) -> (u8, u8) {
    let pid = std::process::id();
    let second = 1 + (pid % 250) as u8;
    let third = 1 + ((cluster_id + pid / 250) % 250) as u8;
    (second, third)
}

// ---------------------------------------------------------------------------
// Nodes and clusters
// ---------------------------------------------------------------------------

pub struct Node {
    pub addr: SocketAddrV4,
    pub log_path: PathBuf,
    env: Vec<(String, String)>,
    child: Mutex<Option<Child>>,
}

impl Node {
    fn spawn(&self) {
        let mut guard = self.child.lock().unwrap();
        assert!(guard.is_none(), "node {} is already running", self.addr);
        *guard = Some(spawn_process(&self.env, &self.log_path));
    }

    fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(|c| c.id())
    }

    /// The process's peak resident memory so far, in bytes (`VmHWM`), if it runs.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    fn kill_quiet(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `Some(exit status)` if the process was started and has exited.
    pub fn exited(&self) -> Option<String> {
        let mut guard = self.child.lock().unwrap();
        match guard.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Some(status.to_string()),
            _ => None,
        }
    }
}

fn spawn_process(env: &[(String, String)], log_path: &Path) -> Child {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap_or_else(|e| panic!("cannot open log {}: {e}", log_path.display()));
    let _ = writeln!(
        log,
        "==== kvs test harness: starting node, env {env:?} ===="
    );
    let err = log.try_clone().expect("clone log file handle");
    let binary = node_binary();
    let mut cmd = Command::new(&binary);
    for var in [
        "SOCKET_ADDRESS",
        "BIND_ADDRESS",
        "VIEW",
        "SHARD_COUNT",
        "API_FORMAT",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err));
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"))
}

/// The node binary the tests start: this build's, or `KVS_TEST_BINARY` (to run a test
/// against another build, an earlier commit's say, and see it fail there).
pub fn node_binary() -> String {
    std::env::var("KVS_TEST_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kvs").to_string())
}

fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

fn current_test_name() -> String {
    let name = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_string();
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub api_format: String,
    pub log_dir: PathBuf,
    subnet: (u8, u8),
}

impl Cluster {
    /// Starts `n` nodes with `VIEW` naming all of them and waits until every
    /// node's view lists every node.
    pub async fn start(n: usize, shard_count: Option<u32>, api_format: &str) -> Cluster {
        let started = Instant::now();
        let cluster = Cluster::spawn(n, shard_count, api_format);
        let all = cluster.addrs();
        for i in 0..n {
            cluster.wait_view(i, &all, READY_TIMEOUT).await;
        }
        println!(
            "cluster of {n} ({}) ready in {:?}; logs in {}",
            cluster.view_string(),
            started.elapsed(),
            cluster.log_dir.display()
        );
        cluster
    }

    /// [`Cluster::start`] with `env` added to every node's environment.
    pub async fn start_with_env(
        n: usize,
        shard_count: Option<u32>,
        api_format: &str,
        env: &[(&str, &str)],
    ) -> Cluster {
        let mut cluster = Cluster::spawn_some(n, 0, shard_count, api_format);
        for i in 0..n {
            cluster.set_env(i, env);
            cluster.nodes[i].spawn();
        }
        let all = cluster.addrs();
        for i in 0..n {
            cluster.wait_view(i, &all, READY_TIMEOUT).await;
        }
        cluster
    }

    /// Adds (or replaces) variables of node i's environment, used from its next start.
    pub fn set_env(&mut self, i: usize, env: &[(&str, &str)]) {
        let vars = &mut self.nodes[i].env;
        for (name, value) in env {
            vars.retain(|(n, _)| n != name);
            vars.push((name.to_string(), value.to_string()));
        }
    }

    /// A port free on node i's address (each node has an address of its own).
    pub fn free_port_of(&self, i: usize) -> u16 {
        free_port(*self.addr(i).ip())
    }

    /// Starts the processes without waiting for readiness.
    pub fn spawn(n: usize, shard_count: Option<u32>, api_format: &str) -> Cluster {
        Self::spawn_some(n, n, shard_count, api_format)
    }

    /// Allocates `n` nodes whose `VIEW` names all of them, and starts only the first
    /// `started` (the others can be started later with `restart`).
    pub fn spawn_some(
        n: usize,
        started: usize,
        shard_count: Option<u32>,
        api_format: &str,
    ) -> Cluster {
        assert!(n <= NODE_LAST_OCTETS.len());
        let cluster_id = CLUSTER_COUNTER.fetch_add(1, Ordering::SeqCst);
        let subnet = cluster_subnet(cluster_id);
        let log_dir = std::env::temp_dir()
            .join("kvs-tests")
            .join(current_test_name())
            .join(format!("{}-{cluster_id}", std::process::id()));
        let _ = fs::remove_dir_all(&log_dir);
        fs::create_dir_all(&log_dir).expect("create log dir");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            api_format: api_format.to_string(),
            log_dir,
            subnet,
        };
        let addrs: Vec<SocketAddrV4> = (0..n).map(|i| cluster.alloc_addr(i)).collect();
        let view = addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        for (i, addr) in addrs.into_iter().enumerate() {
            cluster.add_node(addr, &view, shard_count, i < started);
        }
        cluster
    }

    fn alloc_addr(&self, i: usize) -> SocketAddrV4 {
        let ip = Ipv4Addr::new(127, self.subnet.0, self.subnet.1, NODE_LAST_OCTETS[i]);
        SocketAddrV4::new(ip, free_port(ip))
    }

    fn add_node(
        &mut self,
        addr: SocketAddrV4,
        view: &str,
        shard_count: Option<u32>,
        start: bool,
    ) -> usize {
        let i = self.nodes.len();
        let rust_log = std::env::var("KVS_TEST_RUST_LOG").unwrap_or_else(|_| "info".to_string());
        let data_dir = self.log_dir.join(format!("node{i}-data"));
        let mut env = vec![
            ("SOCKET_ADDRESS".to_string(), addr.to_string()),
            ("BIND_ADDRESS".to_string(), addr.to_string()),
            ("KVS_DATA_DIR".to_string(), data_dir.display().to_string()),
            ("VIEW".to_string(), view.to_string()),
            ("API_FORMAT".to_string(), self.api_format.clone()),
            ("RUST_LOG".to_string(), rust_log),
        ];
        if let Some(count) = shard_count {
            env.push(("SHARD_COUNT".to_string(), count.to_string()));
        }
        let node = Node {
            addr,
            log_path: self.log_dir.join(format!("node{i}.log")),
            env,
            child: Mutex::new(None),
        };
        if start {
            node.spawn();
        }
        self.nodes.push(node);
        i
    }

    /// Starts one more node (no `SHARD_COUNT`) whose `VIEW` is `view` plus
    /// itself. Returns its index. Does not wait for anything.
    pub fn start_extra_node(&mut self, view: &[SocketAddrV4]) -> usize {
        let addr = self.alloc_addr(self.nodes.len());
        let mut all = view.to_vec();
        all.push(addr);
        let view = all
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        self.add_node(addr, &view, None, true)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn addr(&self, i: usize) -> SocketAddrV4 {
        self.nodes[i].addr
    }

    pub fn addrs(&self) -> Vec<SocketAddrV4> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// The expected `view` string of the whole cluster.
    pub fn view_string(&self) -> String {
        view_string(&self.addrs())
    }

    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{}", self.addr(i), path)
    }

    pub fn view_url(&self, i: usize) -> String {
        self.url(i, "/key-value-store-view")
    }

    /// URL of `key` on node i. `key` is put in the path as given (the URL
    /// parser percent-encodes non-ASCII characters, and leaves `%2F` alone).
    pub fn kv_url(&self, i: usize, key: &str) -> String {
        self.url(i, &format!("/key-value-store/{key}"))
    }

    /// SIGKILL node i and reap it.
    pub fn kill(&self, i: usize) {
        self.nodes[i].kill_quiet();
        println!("killed node {i} ({})", self.addr(i));
    }

    /// Starts node i again with the same address and environment (kills it
    /// first if it is still running).
    pub fn restart(&self, i: usize) {
        self.nodes[i].kill_quiet();
        self.nodes[i].spawn();
        println!("restarted node {i} ({})", self.addr(i));
    }

    /// SIGSTOP node i.
    pub fn pause(&self, i: usize) {
        let pid = self.nodes[i].pid().expect("pause: node not running");
        send_signal(pid, "STOP");
        println!("paused node {i} ({})", self.addr(i));
    }

    /// SIGCONT node i.
    pub fn resume(&self, i: usize) {
        let pid = self.nodes[i].pid().expect("resume: node not running");
        send_signal(pid, "CONT");
        println!("resumed node {i} ({})", self.addr(i));
    }

    /// Waits up to `timeout` for node i to exit; its exit status, or `None` if it still runs.
    pub async fn wait_exit(&self, i: usize, timeout: Duration) -> Option<String> {
        poll_until(timeout, Duration::from_millis(100), || async {
            self.nodes[i].exited()
        })
        .await
    }

    /// The last line node i logged.
    pub fn last_log_line(&self, i: usize) -> String {
        tail(&self.nodes[i].log_path, 1)
    }

    /// Node i's data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.log_dir.join(format!("node{i}-data"))
    }

    /// Panics (with log tails) if a started node has exited.
    pub fn assert_running(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(status) = node.exited() {
                panic!(
                    "node {i} ({}) exited: {status} (node log tails follow)",
                    node.addr
                );
            }
        }
    }

    /// The last `lines` lines of every node's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            out.push_str(&format!(
                "----- node {i} ({}) log {} (last {lines} lines) -----\n{}\n",
                node.addr,
                node.log_path.display(),
                tail(&node.log_path, lines)
            ));
        }
        out
    }

    /// The view node i reports, as a sorted list of addresses.
    pub async fn view_of(&self, i: usize) -> Result<Vec<String>, String> {
        let (status, body) =
            try_request(reqwest::Method::GET, &self.view_url(i), Body::None).await?;
        if status != 200 {
            return Err(format!("status {status}, body {body}"));
        }
        let view = body
            .get("view")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no string `view` in {body}"))?;
        let mut list: Vec<String> = view
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        list.sort();
        Ok(list)
    }

    /// Polls until node i answers GET /key-value-store-view with 200 (any
    /// view). Returns the time it took; panics on timeout.
    pub async fn wait_http(&self, i: usize, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if let Some(status) = self.nodes[i].exited() {
                panic!("node {i} ({}) exited: {status}", self.addr(i));
            }
            match self.view_of(i).await {
                Ok(_) => return start.elapsed(),
                Err(e) if start.elapsed() >= timeout => {
                    panic!(
                        "node {i} ({}) not answering after {timeout:?}: {e}",
                        self.addr(i)
                    )
                }
                Err(_) => tokio::time::sleep(POLL_INTERVAL / 4).await,
            }
        }
    }

    /// Polls until node i's view is exactly `expected` (as a set). Returns
    /// the time it took; panics with the last observation and the log tails
    /// on timeout.
    pub async fn wait_view(
        &self,
        i: usize,
        expected: &[SocketAddrV4],
        timeout: Duration,
    ) -> Duration {
        match self.try_wait_view(i, expected, timeout).await {
            Ok(elapsed) => elapsed,
            Err(last) => panic!(
                "node {i} ({}): view did not become {} within {timeout:?}; last: {last} \
                 (node log tails follow)",
                self.addr(i),
                view_string(expected),
            ),
        }
    }

    /// Like `wait_view`, but returns the last observation on timeout.
    pub async fn try_wait_view(
        &self,
        i: usize,
        expected: &[SocketAddrV4],
        timeout: Duration,
    ) -> Result<Duration, String> {
        let mut want: Vec<String> = expected.iter().map(|a| a.to_string()).collect();
        want.sort();
        let start = Instant::now();
        let mut last = String::from("<no answer yet>");
        loop {
            if let Some(status) = self.nodes[i].exited() {
                return Err(format!("node process exited: {status}; last: {last}"));
            }
            match self.view_of(i).await {
                Ok(view) if view == want => return Ok(start.elapsed()),
                Ok(view) => last = format!("view {}", view.join(",")),
                Err(e) => last = e,
            }
            if start.elapsed() >= timeout {
                return Err(last);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    // --- key-value shortcuts ------------------------------------------------

    pub async fn kv_put(&self, i: usize, key: &str, value: &str, cm: &str) -> (u16, Value) {
        put(
            &self.kv_url(i, key),
            json!({"value": value, "causal-metadata": cm}),
        )
        .await
    }

    pub async fn kv_get(&self, i: usize, key: &str, cm: Option<&str>) -> (u16, Value) {
        get(
            &self.kv_url(i, key),
            cm.map(|cm| json!({"causal-metadata": cm})),
        )
        .await
    }

    pub async fn kv_delete(&self, i: usize, key: &str, cm: &str) -> (u16, Value) {
        delete(&self.kv_url(i, key), json!({"causal-metadata": cm})).await
    }

    /// Polls GET `key` on node i (with optional metadata) until `pred`
    /// holds. Ok: the matching response and the time it took; Err: the last
    /// observation (with log tails).
    pub async fn poll_get(
        &self,
        i: usize,
        key: &str,
        cm: Option<&str>,
        timeout: Duration,
        pred: impl Fn(u16, &Value) -> bool,
    ) -> Result<(u16, Value, Duration), String> {
        let url = self.kv_url(i, key);
        let body = cm.map(|cm| json!({"causal-metadata": cm}));
        let start = Instant::now();
        let mut last = String::from("<no answer yet>");
        loop {
            if let Some(status) = self.nodes[i].exited() {
                return Err(format!(
                    "GET {url}: node {i} exited ({status}); last: {last}"
                ));
            }
            let attempt = match &body {
                Some(b) => try_request(reqwest::Method::GET, &url, Body::Json(b)).await,
                None => try_request(reqwest::Method::GET, &url, Body::None).await,
            };
            match attempt {
                Ok((status, value)) if pred(status, &value) => {
                    return Ok((status, value, start.elapsed()))
                }
                Ok((status, value)) => last = format!("{status} {value}"),
                Err(e) => last = e,
            }
            if start.elapsed() >= timeout {
                return Err(format!(
                    "GET {url} (node {i}) not as expected within {timeout:?}; last: {last}"
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for node in &self.nodes {
            node.kill_quiet();
        }
        if panicking {
            eprintln!(
                "test failed; node logs kept in {}\n{}",
                self.log_dir.display(),
                self.log_tails(60)
            );
        } else if std::env::var_os("KVS_KEEP_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.log_dir);
        }
    }
}

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Calls `f` until it returns `Some`, sleeping `interval` between attempts,
/// for at most `timeout` (an attempt in flight at the deadline is finished).
/// Use it as `poll_until(t, i, || async move { ... })`, capturing references.
pub async fn poll_until<T, F, Fut>(timeout: Duration, interval: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(interval).await;
    }
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

pub enum Body<'a> {
    None,
    Json(&'a Value),
    /// Raw bytes with an optional Content-Type.
    Raw(Vec<u8>, Option<&'a str>),
}

fn client(timeout: Duration) -> reqwest::Client {
    // A fresh client per request: no pooled connection survives a killed or
    // restarted node, and no client outlives the runtime of its test.
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("build HTTP client")
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Parses a response body: JSON if it is JSON, `Null` if empty, otherwise a
/// `Value::String` holding `<non-JSON body> ...` (so asserting an object fails
/// with the text visible).
pub fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes).unwrap_or_else(|_| {
        Value::String(format!(
            "<non-JSON body> {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(2_000)])
        ))
    })
}

/// Sends one request; Err on a transport error (refused, timeout, reset).
pub async fn try_request(
    method: reqwest::Method,
    url: &str,
    body: Body<'_>,
) -> Result<(u16, Value), String> {
    try_request_timeout(method, url, body, HTTP_TIMEOUT).await
}

/// `try_request` with a client timeout other than `HTTP_TIMEOUT`.
pub async fn try_request_timeout(
    method: reqwest::Method,
    url: &str,
    body: Body<'_>,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let mut req = client(timeout).request(method.clone(), url);
    req = match body {
        Body::None => req,
        Body::Json(v) => req.json(v),
        Body::Raw(bytes, content_type) => {
            if let Some(ct) = content_type {
                req = req.header(reqwest::header::CONTENT_TYPE, ct);
            }
            req.body(bytes)
        }
    };
    let resp = req
        .send()
        .await
        .map_err(|e| format!("{method} {url}: {}", error_chain(&e)))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| format!("{method} {url}: reading body: {}", error_chain(&e)))?;
    Ok((status, parse_body(&bytes)))
}

/// Sends one request; panics on a transport error.
pub async fn request(method: reqwest::Method, url: &str, body: Body<'_>) -> (u16, Value) {
    try_request(method, url, body)
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}"))
}

pub async fn try_get(url: &str, body: Option<Value>) -> Result<(u16, Value), String> {
    match body {
        Some(b) => try_request(reqwest::Method::GET, url, Body::Json(&b)).await,
        None => try_request(reqwest::Method::GET, url, Body::None).await,
    }
}

pub async fn get(url: &str, body: Option<Value>) -> (u16, Value) {
    try_get(url, body)
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}"))
}

pub async fn put(url: &str, body: Value) -> (u16, Value) {
    request(reqwest::Method::PUT, url, Body::Json(&body)).await
}

pub async fn post(url: &str, body: Value) -> (u16, Value) {
    request(reqwest::Method::POST, url, Body::Json(&body)).await
}

pub async fn delete(url: &str, body: Value) -> (u16, Value) {
    request(reqwest::Method::DELETE, url, Body::Json(&body)).await
}

/// A request with a raw (possibly non-JSON) body.
pub async fn raw(
    method: reqwest::Method,
    url: &str,
    body: impl Into<Vec<u8>>,
    content_type: Option<&str>,
) -> (u16, Value) {
    request(method, url, Body::Raw(body.into(), content_type)).await
}

// ---------------------------------------------------------------------------
// Contract assertions
// ---------------------------------------------------------------------------

/// Asserts a PUT/DELETE success body exactly:
/// `{"message":msg,"version":V,"causal-metadata":V,"shard-id":shard}`
/// (`version` required in 2019, optional but equal in 2020). Returns V.
pub fn expect_write(
    status: u16,
    body: &Value,
    want_status: u16,
    msg: &str,
    fmt: &str,
    shard: &str,
) -> String {
    assert_eq!(
        status, want_status,
        "status of a write expecting {msg:?}; body {body}"
    );
    let cm = body
        .get("causal-metadata")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("`causal-metadata` must be a string: {body}"))
        .to_string();
    let mut expected = json!({"message": msg, "causal-metadata": cm, "shard-id": shard});
    if fmt == "2019" || body.get("version").is_some() {
        expected["version"] = json!(cm);
    }
    assert_eq!(body, &expected, "write response body (format {fmt})");
    cm
}

/// Asserts a GET success body exactly:
/// `{"message":"Retrieved successfully","version":V,"causal-metadata":V,"value":value}`
/// with V == `cm`.
pub fn expect_read(status: u16, body: &Value, value: &str, cm: &str, fmt: &str) {
    assert_eq!(status, 200, "GET status; body {body}");
    let mut expected =
        json!({"message": "Retrieved successfully", "causal-metadata": cm, "value": value});
    if fmt == "2019" || body.get("version").is_some() {
        expected["version"] = json!(cm);
    }
    assert_eq!(body, &expected, "GET response body (format {fmt})");
}

/// The exact 404 body for an absent key.
pub fn absent_body(op: &str) -> Value {
    json!({"doesExist": false, "error": "Key does not exist", "message": format!("Error in {op}")})
}

pub fn expect_absent(status: u16, body: &Value, op: &str) {
    assert_eq!(
        (status, body),
        (404, &absent_body(op)),
        "absent key on {op}"
    );
}

/// Asserts `{"error":<non-empty string>,"message":"Error in <op>"}` and nothing else.
pub fn expect_error_shape(status: u16, body: &Value, want_status: u16, op: &str) {
    assert_eq!(status, want_status, "status; body {body}");
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("error body must be a JSON object: {body}"));
    let error = obj
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("`error` must be a string: {body}"));
    assert!(!error.is_empty(), "`error` must not be empty: {body}");
    assert_eq!(
        obj.get("message"),
        Some(&json!(format!("Error in {op}"))),
        "message of {body}"
    );
    assert_eq!(obj.len(), 2, "only `error` and `message` expected: {body}");
}

/// A sample of node i's `/metrics`, 0 if absent.
pub async fn metric(c: &Cluster, i: usize, series: &str) -> u64 {
    metric_if_shown(c, i, series).await.unwrap_or(0)
}

/// A series of node i's `/metrics`, `None` when the page does not show it.
pub async fn metric_if_shown(c: &Cluster, i: usize, series: &str) -> Option<u64> {
    let page = reqwest::get(c.url(i, "/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("a page");
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Writes `count` keys `k0`.. through node i, each after the last (passing the metadata
/// on); the last write's metadata.
pub async fn write_keys(c: &Cluster, i: usize, count: usize) -> String {
    let mut cm = String::new();
    for k in 0..count {
        let (status, body) = c.kv_put(i, &format!("k{k}"), "v", &cm).await;
        assert_eq!(status, 201, "{body}");
        cm = body["causal-metadata"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    cm
}

/// Starts `n` nodes in `shard_count` shards, node 0's relay listener on a port chosen here
/// (returned), and waits for every view to list every node.
pub async fn start_with_relay_port(n: usize, shard_count: u32, fmt: &str) -> (Cluster, u16) {
    let mut c = Cluster::spawn_some(n, 0, Some(shard_count), fmt);
    let relay_port = c.free_port_of(0);
    c.set_env(0, &[("KVS_RELAY_PORT", &relay_port.to_string())]);
    for i in 0..n {
        c.restart(i);
    }
    let all = c.addrs();
    for i in 0..n {
        c.wait_view(i, &all, READY_TIMEOUT).await;
    }
    (c, relay_port)
}

/// `SOAK_SECONDS` (or `default`) and `SOAK_SEED` (or a random seed) of a soak test.
pub fn soak_settings(default_seconds: u64) -> (u64, u64) {
    let seconds = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_seconds);
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    (seconds, seed)
}
