//! The nemesis test: clients that follow the contract (each request carries the metadata of
//! the session's previous answer) work against a six-node, two-shard store while a nemesis
//! kills (-9) and restarts nodes, pauses and resumes them, and cuts the network between
//! groups of them. Every operation goes into a history, which `kvs-checker` then checks for
//! causal anomalies, divergent replicas and lost acknowledged writes.
//!
//! Needs root (network namespaces); ignored by a plain `cargo test`, run by `./test.sh`:
//!
//! ```sh
//! cargo test --test nemesis -- --ignored --nocapture
//! NEMESIS_SEED=42 NEMESIS_SECONDS=60 cargo test --release --test nemesis -- --ignored --nocapture
//! ```
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `NEMESIS_SEED` | seeds the sessions and the nemesis; printed either way | from the clock |
//! | `NEMESIS_SECONDS` | how long the clients and the nemesis run | 40 |
//! | `NEMESIS_SESSIONS` | concurrent sessions (half flat out, half one request a second) | 6 |
//! | `NEMESIS_FAULTS` | which faults, comma-separated: `kill,pause,partition` | all three |
//!
//! The history of every run is saved beside the node logs (`history.json`), so that a failing
//! run can be checked again with `cargo run -p kvs-checker --bin kvs-check -- history.json`.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netns::NetCluster;
use kvs_checker::linear::{check_linearizable, LinKind, LinOp};
use kvs_checker::{FinalRead, History, Kind, Op, Status};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const NODES: usize = 6;
const SHARDS: u32 = 2;
/// Keys the sessions share: few, so that reads often meet other sessions' writes.
const SHARED_KEYS: usize = 8;
/// A client's limit per request; longer than every bounded wait of the store, so that a
/// request normally ends in the store's own answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(12);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the store may take to agree again once every fault is healed.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

struct Settings {
    seed: u64,
    seconds: u64,
    sessions: u32,
    faults: Vec<Fault>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Pause,
    Partition,
}

impl Settings {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let seed = var("NEMESIS_SEED")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        let faults = var("NEMESIS_FAULTS")
            .unwrap_or_else(|| "kill,pause,partition".into())
            .split(',')
            .map(|f| match f.trim() {
                "kill" => Fault::Kill,
                "pause" => Fault::Pause,
                "partition" => Fault::Partition,
                other => panic!("NEMESIS_FAULTS: unknown fault {other:?}"),
            })
            .collect();
        Self {
            seed,
            seconds: var("NEMESIS_SECONDS")
                .and_then(|s| s.parse().ok())
                .unwrap_or(40),
            sessions: var("NEMESIS_SESSIONS")
                .and_then(|s| s.parse().ok())
                .unwrap_or(6),
            faults,
        }
    }
}

/// The history as it is recorded, shared by the sessions.
#[derive(Default)]
struct Recorder {
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    fn push(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }
}

/// One client: its metadata, its node choices, its values.
struct Session {
    id: u32,
    rng: StdRng,
    metadata: String,
    /// Paced sessions send one request a second, as the course's scripts do.
    paced: bool,
    /// A writer of keys written once each, checked at the end.
    write_once: bool,
    written: u64,
}

enum Answer {
    /// A status code and the JSON body.
    Status(u16, Value),
    /// No answer: refused, reset, or timed out.
    Lost,
}

async fn send(http: &reqwest::Client, method: reqwest::Method, url: &str, body: Value) -> Answer {
    match http.request(method, url).json(&body).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Ok(bytes) => Answer::Status(
                    status,
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                ),
                Err(_) => Answer::Lost,
            }
        }
        Err(_) => Answer::Lost,
    }
}

fn micros_since(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

impl Session {
    /// Issues one operation and records it.
    async fn step(
        &mut self,
        cluster: &[String],
        http: &reqwest::Client,
        t0: Instant,
        rec: &Recorder,
    ) {
        let node = self.rng.gen_range(0..cluster.len());
        let (kind, key) = if self.write_once {
            (Kind::Put, format!("once-{}-{}", self.id, self.written))
        } else {
            let key = format!("k{}", self.rng.gen_range(0..SHARED_KEYS));
            let kind = match self.rng.gen_range(0..10) {
                0..=4 => Kind::Get,
                5..=8 => Kind::Put,
                _ => Kind::Delete,
            };
            (kind, key)
        };
        let value = (kind == Kind::Put).then(|| format!("s{}-{}", self.id, self.written));
        if value.is_some() {
            self.written += 1;
        }
        let url = format!("http://{}/key-value-store/{key}", cluster[node]);
        let (method, body) = match kind {
            Kind::Get => (
                reqwest::Method::GET,
                json!({"causal-metadata": self.metadata}),
            ),
            Kind::Put => (
                reqwest::Method::PUT,
                json!({"value": value, "causal-metadata": self.metadata}),
            ),
            Kind::Delete => (
                reqwest::Method::DELETE,
                json!({"causal-metadata": self.metadata}),
            ),
        };
        let start_us = micros_since(t0);
        let answer = send(http, method, &url, body).await;
        let end_us = micros_since(t0);
        let (status, read) = self.interpret(kind, answer);
        rec.push(Op {
            session: self.id,
            kind,
            key,
            value: if kind == Kind::Get { read } else { value },
            status,
            start_us,
            end_us,
            node: Some(cluster[node].clone()),
        });
    }

    /// What an answer means for the history, and the session's metadata from now on.
    fn interpret(&mut self, kind: Kind, answer: Answer) -> (Status, Option<String>) {
        let write = kind != Kind::Get;
        match answer {
            Answer::Status(200 | 201, body) => {
                if let Some(meta) = body.get("causal-metadata").and_then(Value::as_str) {
                    self.metadata = meta.to_owned();
                }
                let read = body.get("value").and_then(Value::as_str).map(str::to_owned);
                (Status::Ok, read)
            }
            Answer::Status(404, _) => (Status::NotFound, None),
            // A write answered 503, or not answered at all, may still have been applied.
            Answer::Status(503, _) | Answer::Lost if write => (Status::Unknown, None),
            Answer::Status(..) | Answer::Lost => (Status::Fail, None),
        }
    }
}

/// A fault the nemesis applied, and when.
#[derive(Debug, Clone)]
struct FaultWindow {
    what: String,
    start_us: u64,
    end_us: u64,
}

/// Runs faults until `until`, one at a time: a fault for 1.5-4 s, then 1-3 s of quiet.
async fn nemesis(
    cluster: Arc<NetCluster>,
    settings_faults: Vec<Fault>,
    seed: u64,
    t0: Instant,
    until: Instant,
) -> Vec<FaultWindow> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973);
    let mut windows = Vec::new();
    // Let the sessions start on a healthy store.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while Instant::now() + Duration::from_secs(5) < until {
        let fault = *settings_faults
            .choose(&mut rng)
            .expect("at least one fault");
        let hold = Duration::from_millis(rng.gen_range(1_500..4_000));
        let start_us = micros_since(t0);
        let what = match fault {
            Fault::Kill => {
                let i = rng.gen_range(0..NODES);
                cluster.kill(i);
                tokio::time::sleep(hold).await;
                cluster.restart(i);
                format!(
                    "kill -9 node {i} ({}), restart after {hold:?}",
                    cluster.addr(i)
                )
            }
            Fault::Pause => {
                let i = rng.gen_range(0..NODES);
                cluster.pause(i);
                tokio::time::sleep(hold).await;
                cluster.resume(i);
                format!("pause node {i} ({}) for {hold:?}", cluster.addr(i))
            }
            Fault::Partition => {
                let mut nodes: Vec<usize> = (0..NODES).collect();
                nodes.shuffle(&mut rng);
                let side: Vec<usize> = nodes[..rng.gen_range(1..NODES / 2 + 1)].to_vec();
                cluster.partition(&side);
                tokio::time::sleep(hold).await;
                cluster.heal();
                format!("partition {side:?} from the rest for {hold:?}")
            }
        };
        println!("nemesis: {what}");
        windows.push(FaultWindow {
            what,
            start_us,
            end_us: micros_since(t0),
        });
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1_000..3_000))).await;
    }
    windows
}

/// Reads every key from every node without metadata until all nodes agree on every key (or
/// the time is up). Returns the last round's reads and how long agreement took.
async fn converge(
    cluster: &[String],
    keys: &BTreeSet<String>,
    http: &reqwest::Client,
) -> (Vec<FinalRead>, Option<Duration>) {
    let started = Instant::now();
    loop {
        let mut reads = Vec::new();
        let mut agreed = true;
        for key in keys {
            let mut values: Option<Option<String>> = None;
            for addr in cluster {
                let url = format!("http://{addr}/key-value-store/{key}");
                let value = match send(http, reqwest::Method::GET, &url, json!({})).await {
                    Answer::Status(200, body) => {
                        Some(body.get("value").and_then(Value::as_str).map(str::to_owned))
                    }
                    Answer::Status(404, _) => Some(None),
                    _ => None,
                };
                let Some(value) = value else {
                    agreed = false;
                    continue;
                };
                if values.as_ref().is_some_and(|v| *v != value) {
                    agreed = false;
                }
                values = Some(value.clone());
                reads.push(FinalRead {
                    node: addr.clone(),
                    key: key.clone(),
                    value,
                });
            }
        }
        if agreed {
            return (reads, Some(started.elapsed()));
        }
        if started.elapsed() > CONVERGE_TIMEOUT {
            return (reads, None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_ready(cluster: &[String], http: &reqwest::Client) {
    let started = Instant::now();
    let mut meta = String::new();
    // Ready when a write and a read with its metadata succeed through every node.
    for (i, addr) in cluster.iter().enumerate() {
        loop {
            let url = format!("http://{addr}/key-value-store/ready-{i}");
            let put = send(
                http,
                reqwest::Method::PUT,
                &url,
                json!({"value": "r", "causal-metadata": meta}),
            )
            .await;
            if let Answer::Status(200 | 201, body) = put {
                if let Some(m) = body.get("causal-metadata").and_then(Value::as_str) {
                    meta = m.to_owned();
                    break;
                }
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "store not ready after {READY_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Share of requests answered 503 or not at all, among those sent inside and outside faults.
fn unavailability(ops: &[Op], windows: &[FaultWindow]) -> (f64, f64, usize, usize) {
    let in_fault = |op: &Op| {
        windows
            .iter()
            .any(|w| op.start_us >= w.start_us && op.start_us <= w.end_us)
    };
    let failed = |op: &Op| matches!(op.status, Status::Unknown | Status::Fail);
    let (mut inside, mut inside_failed, mut outside, mut outside_failed) = (0, 0, 0, 0);
    for op in ops {
        if in_fault(op) {
            inside += 1;
            inside_failed += failed(op) as usize;
        } else {
            outside += 1;
            outside_failed += failed(op) as usize;
        }
    }
    let share = |f: usize, n: usize| if n == 0 { 0.0 } else { f as f64 / n as f64 };
    (
        share(inside_failed, inside),
        share(outside_failed, outside),
        inside,
        outside,
    )
}

/// A store of [`NODES`] nodes in network namespaces, ready for clients, with its log
/// directory under `kvs-tests/<dir>`, and an HTTP client for it.
struct Store {
    cluster: Arc<NetCluster>,
    addrs: Vec<String>,
    http: reqwest::Client,
    log_dir: std::path::PathBuf,
}

async fn start_store(dir: &str, seed: u64) -> Store {
    let log_dir = std::env::temp_dir()
        .join("kvs-tests")
        .join(dir)
        .join(format!("{}-{}", std::process::id(), seed));
    let _ = std::fs::remove_dir_all(&log_dir);
    let cluster = Arc::new(NetCluster::start(NODES, SHARDS, log_dir.clone()));
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.to_string()).collect();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("HTTP client");
    wait_ready(&addrs, &http).await;
    println!(
        "store of {NODES} nodes in {SHARDS} shards ready; logs in {}",
        log_dir.display()
    );
    Store {
        cluster,
        addrs,
        http,
        log_dir,
    }
}

/// What a failing run prints before it panics: the faults applied, and the nodes' logs.
fn print_faults_and_logs(windows: &[FaultWindow], cluster: &NetCluster) {
    for w in windows {
        println!(
            "fault at {:.1}-{:.1} s: {}",
            w.start_us as f64 / 1e6,
            w.end_us as f64 / 1e6,
            w.what
        );
    }
    println!("{}", cluster.log_tails(30));
}

/// Ends every fault the nemesis may have left: the network healed, every node running.
fn end_faults(cluster: &NetCluster) {
    cluster.heal();
    for i in 0..NODES {
        cluster.resume(i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root for network namespaces; ./test.sh runs it"]
async fn causal_sessions_survive_kill_pause_and_partition() {
    let settings = Settings::from_env();
    println!(
        "nemesis seed {} ({} s, {} sessions, faults {:?}); replay with NEMESIS_SEED={}",
        settings.seed, settings.seconds, settings.sessions, settings.faults, settings.seed
    );
    let Store {
        cluster,
        addrs,
        http,
        log_dir,
    } = start_store("nemesis", settings.seed).await;

    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(settings.seconds);
    let recorder = Arc::new(Recorder::default());
    let mut tasks = Vec::new();
    for id in 0..settings.sessions {
        let mut session = Session {
            id,
            rng: StdRng::seed_from_u64(settings.seed.wrapping_add(u64::from(id) * 7_919)),
            metadata: String::new(),
            paced: id % 2 == 1,
            write_once: id == 0,
            written: 0,
        };
        let (addrs, http, recorder) = (addrs.clone(), http.clone(), recorder.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let started = Instant::now();
                session.step(&addrs, &http, t0, &recorder).await;
                let pause = if session.paced {
                    Duration::from_secs(1)
                } else if session.write_once {
                    Duration::from_millis(50)
                } else {
                    Duration::from_millis(2)
                };
                tokio::time::sleep(pause.saturating_sub(started.elapsed())).await;
            }
        }));
    }
    let windows = nemesis(
        cluster.clone(),
        settings.faults.clone(),
        settings.seed,
        t0,
        until,
    )
    .await;
    for task in tasks {
        task.await.expect("session task");
    }
    let elapsed = t0.elapsed();
    end_faults(&cluster);
    cluster.assert_running();

    let ops = std::mem::take(&mut *recorder.ops.lock().unwrap());
    let keys: BTreeSet<String> = ops.iter().map(|op| op.key.clone()).collect();
    let (final_reads, converged) = converge(&addrs, &keys, &http).await;
    let history = History { ops, final_reads };
    let path = log_dir.join("history.json");
    std::fs::write(&path, serde_json::to_vec(&history).expect("encode history"))
        .expect("save history");

    let report = kvs_checker::check(&history);
    let ok = history
        .ops
        .iter()
        .filter(|op| matches!(op.status, Status::Ok | Status::NotFound))
        .count();
    let (in_fault, outside, n_in, n_out) = unavailability(&history.ops, &windows);
    println!("{report}");
    println!(
        "nemesis seed {}: {} operations in {:.1} s ({:.0}/s answered), {} faults; \
         unanswered or 503: {:.1}% of {} requests during faults, {:.1}% of {} outside; \
         converged {} after heal; history {}",
        settings.seed,
        history.ops.len(),
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64(),
        windows.len(),
        in_fault * 100.0,
        n_in,
        outside * 100.0,
        n_out,
        converged.map_or_else(
            || format!("NOT within {CONVERGE_TIMEOUT:?}"),
            |d| format!("in {d:.1?}")
        ),
        path.display()
    );
    if !report.is_clean() || converged.is_none() {
        print_faults_and_logs(&windows, &cluster);
        panic!(
            "nemesis seed {}: anomalies found (replay with NEMESIS_SEED={})",
            settings.seed, settings.seed
        );
    }
    assert!(ok > 0, "no operation succeeded");
}

/// Keys the linearizable clients share: few, so that their operations overlap.
const LINEAR_KEYS: usize = 3;

/// One client of linearizable requests: each operation on one of [`LINEAR_KEYS`] keys,
/// through a random node, without metadata (a linearizable operation needs none).
struct LinearClient {
    id: u32,
    rng: StdRng,
    written: u64,
}

impl LinearClient {
    async fn step(
        &mut self,
        cluster: &[String],
        http: &reqwest::Client,
        t0: Instant,
        ops: &Mutex<Vec<LinOp>>,
        attempts: &Mutex<Vec<(u64, bool)>>,
    ) {
        let node = &cluster[self.rng.gen_range(0..cluster.len())];
        let key = format!("lin{}", self.rng.gen_range(0..LINEAR_KEYS));
        let url = format!("http://{node}/key-value-store/{key}?consistency=linearizable");
        let choice = self.rng.gen_range(0..10);
        let value = format!("c{}-{}", self.id, self.written);
        let (method, body) = match choice {
            0..=4 => (reqwest::Method::GET, json!({})),
            5..=8 => {
                self.written += 1;
                (reqwest::Method::PUT, json!({ "value": value }))
            }
            _ => (reqwest::Method::DELETE, json!({})),
        };
        let call_us = micros_since(t0);
        let answer = send(http, method, &url, body).await;
        let return_us = micros_since(t0);
        let got_answer = matches!(answer, Answer::Status(200 | 201 | 404, _));
        attempts.lock().unwrap().push((call_us, got_answer));
        let answered = |status: u16| match &answer {
            Answer::Status(s, _) => *s == status,
            Answer::Lost => false,
        };
        let (kind, return_ns) = match choice {
            0..=4 => match &answer {
                Answer::Status(200, body) => (
                    LinKind::Get(body["value"].as_str().map(str::to_owned)),
                    Some(return_us * 1000),
                ),
                Answer::Status(404, _) => (LinKind::Get(None), Some(return_us * 1000)),
                // A read without an answer says nothing.
                _ => return,
            },
            5..=8 => {
                let done = answered(200) || answered(201);
                (LinKind::Put(value), done.then_some(return_us * 1000))
            }
            // A delete's 200 or 404 is what its query saw (ABD gives a register, not a
            // compare-and-set: two concurrent deletes may both find the key): checked as
            // a blind delete, answered or not.
            _ => {
                let done = answered(200) || answered(404);
                (
                    LinKind::Delete { found: None },
                    done.then_some(return_us * 1000),
                )
            }
        };
        ops.lock().unwrap().push(LinOp {
            key,
            call_ns: call_us * 1000,
            return_ns,
            kind,
        });
    }
}

/// Linearizable registers under the same nemesis: concurrent clients read, write and delete
/// a few keys with `?consistency=linearizable` through random nodes, and the history must be
/// linearizable (kvs_checker::linear, Wing and Gong's search).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root for network namespaces; ./test.sh runs it"]
async fn linearizable_registers_survive_kill_pause_and_partition() {
    let settings = Settings::from_env();
    println!(
        "linearizable nemesis seed {} ({} s, {} clients, faults {:?}); replay with NEMESIS_SEED={}",
        settings.seed, settings.seconds, settings.sessions, settings.faults, settings.seed
    );
    let Store {
        cluster,
        addrs,
        http,
        log_dir,
    } = start_store("nemesis-linear", settings.seed).await;

    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(settings.seconds);
    let ops = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for id in 0..settings.sessions {
        let mut client = LinearClient {
            id,
            rng: StdRng::seed_from_u64(settings.seed.wrapping_add(u64::from(id) * 104_729)),
            written: 0,
        };
        let (addrs, http) = (addrs.clone(), http.clone());
        let (ops, attempts) = (ops.clone(), attempts.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                client.step(&addrs, &http, t0, &ops, &attempts).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    let windows = nemesis(
        cluster.clone(),
        settings.faults.clone(),
        settings.seed,
        t0,
        until,
    )
    .await;
    for task in tasks {
        task.await.expect("client task");
    }
    let elapsed = t0.elapsed();
    end_faults(&cluster);
    let history = std::mem::take(&mut *ops.lock().unwrap());
    let answered = history.iter().filter(|op| op.return_ns.is_some()).count();
    let in_fault = |call_us: u64| {
        windows
            .iter()
            .any(|w| call_us >= w.start_us && call_us <= w.end_us)
    };
    let (during, during_unanswered) = attempts
        .lock()
        .unwrap()
        .iter()
        .filter(|(call_us, _)| in_fault(*call_us))
        .fold((0usize, 0usize), |(n, u), (_, ok)| {
            (n + 1, u + usize::from(!ok))
        });
    let path = log_dir.join("linear-history.json");
    std::fs::write(&path, serde_json::to_vec(&history).expect("encode history"))
        .expect("save history");
    let started = Instant::now();
    let report = check_linearizable(&history);
    println!(
        "linearizable nemesis seed {}: {} operations in {:.1} s ({:.0}/s answered), {} faults; \
         503 or no answer: {} of {} requests during faults; \
         checked in {:.1?} ({} steps)",
        settings.seed,
        history.len(),
        elapsed.as_secs_f64(),
        answered as f64 / elapsed.as_secs_f64(),
        windows.len(),
        during_unanswered,
        during,
        started.elapsed(),
        report.steps
    );
    for (key, verdict) in &report.keys {
        println!("  {key}: {verdict:?}");
    }
    if !report.is_linearizable() {
        print_faults_and_logs(&windows, &cluster);
        panic!(
            "linearizable nemesis seed {}: not linearizable (replay with NEMESIS_SEED={})",
            settings.seed, settings.seed
        );
    }
    assert!(answered > 0, "no operation was answered");
}
