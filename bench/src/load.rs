//! The load generator: `concurrency` workers, each a client session that sends one request
//! at a time over keep-alive connections of its own ([`crate::h1`], one per target),
//! carrying the last causal-metadata token it received (kvs API). Closed loop by default (each worker sends its next request
//! as soon as the previous one is answered); with `--rate`, open loop: requests are due at
//! fixed times and latency is measured from the time a request was due, so a server that
//! falls behind is charged for the queueing it causes (no coordinated omission).
//!
//! Bounded: a run stops at `--duration` (after `--warmup`), or after `--requests`, or at
//! `--max-time`, whichever comes first; each request has `--timeout`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use rand::distributions::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::base_url;
use crate::h1;
use crate::stats::{summary, OpKind, Stats};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// The kvs contract: /key-value-store/<key>, carrying causal metadata per worker.
    Kvs,
    /// etcd v3 HTTP/JSON gateway: POST <prefix>/kv/put and <prefix>/kv/range.
    Etcd,
    /// The trivial server, sent exactly what a kvs GET sends (every request is a "GET").
    Fixed,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dist {
    Uniform,
    Zipf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spread {
    /// Every request goes to the next target in turn (round robin over all targets).
    Request,
    /// Worker i sends all its requests to target i mod n.
    Worker,
}

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Comma-separated targets: base URLs or host:port. Requests spread over all of them.
    #[arg(long, value_delimiter = ',', required = true)]
    pub targets: Vec<String>,
    #[arg(long, value_enum, default_value = "kvs")]
    pub api: Api,
    /// Concurrent client sessions (one request in flight each).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds to measure (after the warm-up). Default 10 unless --requests is given.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Total requests to send (measured, after the warm-up if --duration is also given).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Seconds of load before measuring starts (only with a duration).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Hard limit on the whole run, prefill included, in seconds.
    #[arg(long, default_value_t = 900.0)]
    pub max_time: f64,
    /// Number of distinct keys (key i is --key-prefix followed by i, zero-padded to --key-size).
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    #[arg(long, default_value = "k")]
    pub key_prefix: String,
    /// Use the keys listed in this file (one per line) instead of generated ones.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Bytes per value written.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Fraction of operations that are reads (GET); the rest are writes (PUT).
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    #[arg(long, value_enum, default_value = "uniform")]
    pub dist: Dist,
    /// Exponent of the Zipf distribution.
    #[arg(long, default_value_t = 0.99)]
    pub zipf_s: f64,
    /// Write every key once before the measured run.
    #[arg(long)]
    pub prefill: bool,
    /// Sessions used by the prefill (default: --concurrency).
    #[arg(long)]
    pub prefill_concurrency: Option<usize>,
    /// kvs: during the prefill, write the keys of each shard (from the `shard-id` of each PUT
    /// answer) to DIR/shard-<id>.keys.
    #[arg(long)]
    pub record_shards: Option<PathBuf>,
    /// Open loop: target total operations per second.
    #[arg(long)]
    pub rate: Option<f64>,
    #[arg(long, value_enum, default_value = "request")]
    pub spread: Spread,
    /// Threads of the generator's runtime.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// etcd gateway prefix (`/v3` on etcd >= 3.4, `/v3beta` on 3.3).
    #[arg(long, default_value = "/v3")]
    pub etcd_prefix: String,
    /// etcd: serializable (local, possibly stale) reads instead of the default linearizable ones.
    #[arg(long)]
    pub etcd_serializable: bool,
    /// kvs: do not carry causal metadata (every request independent).
    #[arg(long)]
    pub no_metadata: bool,
    /// kvs: linearizable requests (`?consistency=linearizable`, a majority of the shard).
    #[arg(long)]
    pub kvs_linearizable: bool,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A free-form label copied into the output.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Exit non-zero if more than this many requests failed (measured run and prefill).
    #[arg(long)]
    pub max_errors: Option<u64>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print only the one-line summary.
    #[arg(long)]
    pub quiet: bool,
}

enum Keys {
    Generated {
        prefix: String,
        width: usize,
        n: u64,
    },
    List(Vec<String>),
}

impl Keys {
    fn len(&self) -> u64 {
        match self {
            Keys::Generated { n, .. } => *n,
            Keys::List(v) => v.len() as u64,
        }
    }

    fn get(&self, i: u64) -> Cow<'_, str> {
        match self {
            Keys::Generated { prefix, width, .. } => {
                Cow::Owned(format!("{prefix}{i:0>width$}", width = *width))
            }
            Keys::List(v) => Cow::Borrowed(&v[i as usize]),
        }
    }
}

struct Target {
    /// Its place in `Ctx::targets` (and in each session's connections).
    index: usize,
    addr: std::net::SocketAddr,
    /// `host:port`, for the `Host` header.
    host: String,
    kv: String,
    etcd_put: String,
    etcd_range: String,
}

/// What one session owns: a connection to each target and a buffer for request bodies.
struct Session {
    conns: Vec<h1::Conn>,
    body: Vec<u8>,
}

impl Session {
    fn new(ctx: &Ctx) -> Self {
        let conns = ctx
            .targets
            .iter()
            .map(|t| h1::Conn::new(t.addr, t.host.clone(), ctx.timeout))
            .collect();
        Self {
            conns,
            body: Vec::with_capacity(256),
        }
    }
}

/// The fields of a kvs answer the generator reads, borrowed from its body.
#[derive(serde::Deserialize)]
struct KvAnswer<'a> {
    #[serde(rename = "causal-metadata", borrow, default)]
    metadata: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    value: Option<Cow<'a, str>>,
    #[serde(rename = "shard-id", default)]
    shard: Option<ShardId>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ShardId {
    Text(String),
    Number(u64),
}

/// Samples key indices 0..n with probability proportional to 1 / (rank+1)^s.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: u64, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut total = 0.0;
        for i in 0..n {
            total += 1.0 / ((i + 1) as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Self { cdf }
    }

    fn sample(&self, rng: &mut StdRng) -> u64 {
        let u: f64 = rng.gen();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1) as u64
    }
}

struct Ctx {
    api: Api,
    timeout: Duration,
    targets: Vec<Target>,
    keys: Keys,
    zipf: Option<Zipf>,
    value_size: usize,
    read_ratio: f64,
    carry: bool,
    /// Appended to every kvs key URL (`?consistency=linearizable`, or nothing).
    kv_suffix: &'static str,
    etcd_serializable: bool,
    spread: Spread,
    next_target: AtomicUsize,
    b64: base64::engine::GeneralPurpose,
}

enum Outcome {
    Ok { shard: Option<String> },
    Status { code: u16, body: String },
    Transport { kind: &'static str, msg: String },
    BadBody { msg: String },
}

fn transport(e: h1::H1Error) -> Outcome {
    Outcome::Transport {
        kind: e.kind(),
        msg: e.to_string(),
    }
}

/// Appends `text` to `out` as a JSON string.
fn push_json_str(out: &mut Vec<u8>, text: &str) {
    let _ = serde_json::to_writer(&mut *out, text);
}

impl Ctx {
    fn target(&self, worker: usize) -> &Target {
        let i = match self.spread {
            Spread::Request => self.next_target.fetch_add(1, Ordering::Relaxed),
            Spread::Worker => worker,
        };
        &self.targets[i % self.targets.len()]
    }

    fn pick_key(&self, rng: &mut StdRng) -> u64 {
        match &self.zipf {
            Some(z) => z.sample(rng),
            None => rng.gen_range(0..self.keys.len()),
        }
    }

    async fn op(
        &self,
        session: &mut Session,
        t: &Target,
        op: OpKind,
        key: &str,
        value: &str,
        token: &mut String,
    ) -> Outcome {
        match self.api {
            Api::Kvs => self.kvs_op(session, t, op, key, value, token).await,
            Api::Etcd => self.etcd_op(session, t, op, key, value).await,
            // The same request and the same client-side work as a kvs GET (JSON body with
            // the session's token, JSON answer parsed): only the server differs.
            Api::Fixed => {
                self.kvs_op(session, t, OpKind::Get, key, value, token)
                    .await
            }
        }
    }

    async fn kvs_op(
        &self,
        session: &mut Session,
        t: &Target,
        op: OpKind,
        key: &str,
        value: &str,
        token: &mut String,
    ) -> Outcome {
        let path = format!("{}{key}{}", t.kv, self.kv_suffix);
        let body = &mut session.body;
        body.clear();
        let (method, sent) = match op {
            OpKind::Get if self.carry && !token.is_empty() => {
                body.extend_from_slice(b"{\"causal-metadata\":");
                push_json_str(body, token);
                body.push(b'}');
                ("GET", h1::Body::Json(&body[..]))
            }
            OpKind::Get => ("GET", h1::Body::None),
            OpKind::Put => {
                let meta = if self.carry { token.as_str() } else { "" };
                body.extend_from_slice(b"{\"value\":");
                push_json_str(body, value);
                body.extend_from_slice(b",\"causal-metadata\":");
                push_json_str(body, meta);
                body.push(b'}');
                ("PUT", h1::Body::Json(&body[..]))
            }
        };
        let conn = &mut session.conns[t.index];
        let (code, bytes) = match conn.request(method, &path, sent).await {
            Ok(answer) => answer,
            Err(e) => return transport(e),
        };
        let ok = match op {
            OpKind::Get => code == 200,
            OpKind::Put => code == 200 || code == 201,
        };
        if !ok {
            return Outcome::Status {
                code,
                body: String::from_utf8_lossy(bytes).into_owned(),
            };
        }
        let answer: KvAnswer = match serde_json::from_slice(bytes) {
            Ok(answer) => answer,
            Err(e) => return Outcome::BadBody { msg: e.to_string() },
        };
        let text = || String::from_utf8_lossy(bytes).into_owned();
        match &answer.metadata {
            Some(m) => {
                if self.carry {
                    token.clear();
                    token.push_str(m);
                }
            }
            None => {
                return Outcome::BadBody {
                    msg: format!("no causal-metadata in {}", text()),
                }
            }
        }
        if op == OpKind::Get && answer.value.is_none() {
            return Outcome::BadBody {
                msg: format!("no value in {}", text()),
            };
        }
        let shard = answer.shard.map(|s| match s {
            ShardId::Text(s) => s,
            ShardId::Number(n) => n.to_string(),
        });
        Outcome::Ok { shard }
    }

    async fn etcd_op(
        &self,
        session: &mut Session,
        t: &Target,
        op: OpKind,
        key: &str,
        value: &str,
    ) -> Outcome {
        let k = self.b64.encode(key);
        let (url, body) = match op {
            OpKind::Get if self.etcd_serializable => {
                (&t.etcd_range, json!({ "key": k, "serializable": true }))
            }
            OpKind::Get => (&t.etcd_range, json!({ "key": k })),
            OpKind::Put => (
                &t.etcd_put,
                json!({ "key": k, "value": self.b64.encode(value) }),
            ),
        };
        let body = body.to_string();
        let conn = &mut session.conns[t.index];
        let sent = h1::Body::Json(body.as_bytes());
        let (code, bytes) = match conn.request("POST", url, sent).await {
            Ok(answer) => answer,
            Err(e) => return transport(e),
        };
        if code != 200 {
            return Outcome::Status {
                code,
                body: String::from_utf8_lossy(bytes).into_owned(),
            };
        }
        // A range that found the key has a "kvs" array; a missing key has none.
        if op == OpKind::Get && !contains(bytes, b"\"kvs\"") {
            return Outcome::BadBody {
                msg: format!("key not found: {}", String::from_utf8_lossy(bytes)),
            };
        }
        Outcome::Ok { shard: None }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn record(stats: &mut Stats, op: OpKind, outcome: &Outcome, latency: Duration) -> bool {
    match outcome {
        Outcome::Ok { .. } => {
            stats.success(op, latency);
            true
        }
        Outcome::Status { code, body } => {
            stats.error(op, code.to_string(), || truncate(body));
            false
        }
        Outcome::Transport { kind, msg } => {
            stats.error(op, (*kind).to_owned(), || truncate(msg));
            false
        }
        Outcome::BadBody { msg } => {
            stats.error(op, "bad body".to_owned(), || truncate(msg));
            false
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(300).collect()
}

fn random_value(rng: &mut StdRng, n: usize) -> String {
    rng.sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// How the measured phase is bounded and paced.
#[derive(Clone)]
struct Plan {
    start: Instant,
    measure_from: Instant,
    deadline: Instant,
    budget: Option<Arc<AtomicU64>>,
    /// Open loop: each worker's interval between due times (its offset is in `start`).
    interval: Option<Duration>,
}

fn take_one(budget: &Option<Arc<AtomicU64>>) -> bool {
    match budget {
        None => true,
        Some(b) => b
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok(),
    }
}

async fn worker(ctx: Arc<Ctx>, id: usize, plan: Plan, seed: u64) -> Stats {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(id as u64));
    let value = random_value(&mut rng, ctx.value_size);
    let mut token = String::new();
    let mut session = Session::new(&ctx);
    let mut stats = Stats::default();
    let mut k: u32 = 0;
    // When the previous answer arrived: a session cannot send before it.
    let mut answered: Option<Instant> = None;
    loop {
        let due = plan.interval.map(|iv| plan.start + iv * k);
        let now = Instant::now();
        if due.unwrap_or(now) >= plan.deadline || now >= plan.deadline {
            break;
        }
        let measured = due.unwrap_or(now) >= plan.measure_from;
        // The request budget counts measured requests only.
        if measured && !take_one(&plan.budget) {
            break;
        }
        // Latency counts from the due time when this session is behind its schedule (a
        // slow answer delayed it: the server is charged for the wait), and from the actual
        // send otherwise (the timer's millisecond granularity is not the server's doing).
        let mut t0 = None;
        if let Some(d) = due {
            if d > now {
                tokio::time::sleep_until(d).await;
            } else {
                t0 = Some(d);
            }
        }
        let op = if ctx.api == Api::Fixed || rng.gen::<f64>() < ctx.read_ratio {
            OpKind::Get
        } else {
            OpKind::Put
        };
        let idx = ctx.pick_key(&mut rng);
        let key = ctx.keys.get(idx);
        let target = ctx.target(id);
        let sent = Instant::now();
        if let (Some(d), true) = (due, measured) {
            // The generator's own delay: from when the request could first have gone (due,
            // or the previous answer if that came later) to when it went. A late previous
            // answer is the server's doing and counts in the latency, not here.
            let ready = answered.map_or(d, |a| a.max(d));
            stats.lag(sent.saturating_duration_since(ready));
        }
        let t0 = t0.unwrap_or(sent);
        let outcome = ctx
            .op(&mut session, target, op, &key, &value, &mut token)
            .await;
        answered = Some(Instant::now());
        let latency = t0.elapsed();
        if measured && record(&mut stats, op, &outcome, latency) && Instant::now() <= plan.deadline
        {
            stats.in_window += 1;
        }
        k += 1;
    }
    stats
}

async fn prefill_worker(
    ctx: Arc<Ctx>,
    id: usize,
    workers: usize,
    deadline: Instant,
    seed: u64,
) -> (Stats, Vec<(u64, String)>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed ^ id as u64);
    let value = random_value(&mut rng, ctx.value_size);
    let mut token = String::new();
    let mut session = Session::new(&ctx);
    let mut stats = Stats::default();
    let mut shards = Vec::new();
    let mut idx = id as u64;
    while idx < ctx.keys.len() && Instant::now() < deadline {
        let key = ctx.keys.get(idx);
        for attempt in 0..5 {
            let target = ctx.target(id);
            let t0 = Instant::now();
            let outcome = ctx
                .op(&mut session, target, OpKind::Put, &key, &value, &mut token)
                .await;
            if record(&mut stats, OpKind::Put, &outcome, t0.elapsed()) {
                if let Outcome::Ok { shard: Some(s) } = outcome {
                    shards.push((idx, s));
                }
                break;
            }
            if attempt < 4 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        idx += workers as u64;
    }
    (stats, shards)
}

pub fn main(args: LoadArgs) -> Result<()> {
    if args.targets.is_empty() {
        bail!("--targets names no target");
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        bail!("--read-ratio must be within 0..1");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if let Some(r) = args.rate {
        if !r.is_finite() || r <= 0.0 {
            bail!("--rate must be positive");
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let report = rt.block_on(run(args.clone()))?;
    let errors = report["errors_total"].as_u64().unwrap_or(0)
        + report["prefill"]["errors_total"].as_u64().unwrap_or(0);
    if let Some(max) = args.max_errors {
        if errors > max {
            bail!("{errors} requests failed (at most {max} allowed)");
        }
    }
    Ok(())
}

async fn run(args: LoadArgs) -> Result<Value> {
    let started = Instant::now();
    let hard_deadline = started + Duration::from_secs_f64(args.max_time);
    let keys = match &args.key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let list: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            if list.is_empty() {
                bail!("{} lists no key", path.display());
            }
            Keys::List(list)
        }
        None => {
            if args.keys == 0 {
                bail!("--keys must be at least 1");
            }
            let digits = args.keys.saturating_sub(1).to_string().len();
            let width = args
                .key_size
                .saturating_sub(args.key_prefix.len())
                .max(digits);
            Keys::Generated {
                prefix: args.key_prefix.clone(),
                width,
                n: args.keys,
            }
        }
    };
    let zipf = (args.dist == Dist::Zipf).then(|| Zipf::new(keys.len(), args.zipf_s));
    let etcd = args.etcd_prefix.trim_end_matches('/').to_owned();
    let mut targets = Vec::new();
    for (index, t) in args.targets.iter().enumerate() {
        let base = base_url(t);
        let Some(rest) = base.strip_prefix("http://") else {
            bail!("{t}: the generator speaks plain HTTP only");
        };
        let (host, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr = tokio::net::lookup_host(host)
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        targets.push(Target {
            index,
            addr,
            host: host.to_owned(),
            kv: format!("{prefix}/key-value-store/"),
            etcd_put: format!("{prefix}{etcd}/kv/put"),
            etcd_range: format!("{prefix}{etcd}/kv/range"),
        });
    }
    let ctx = Arc::new(Ctx {
        api: args.api,
        timeout: Duration::from_secs_f64(args.timeout),
        targets,
        keys,
        zipf,
        value_size: args.value_size,
        read_ratio: args.read_ratio,
        carry: !args.no_metadata,
        kv_suffix: if args.kvs_linearizable {
            "?consistency=linearizable"
        } else {
            ""
        },
        etcd_serializable: args.etcd_serializable,
        spread: args.spread,
        next_target: AtomicUsize::new(0),
        b64: base64::engine::general_purpose::STANDARD,
    });

    // Prefill: every key once.
    let mut prefill_report = Value::Null;
    if args.prefill && args.api != Api::Fixed {
        let workers = args.prefill_concurrency.unwrap_or(args.concurrency).max(1);
        let t0 = Instant::now();
        let handles: Vec<_> = (0..workers)
            .map(|id| {
                tokio::spawn(prefill_worker(
                    ctx.clone(),
                    id,
                    workers,
                    hard_deadline,
                    args.seed,
                ))
            })
            .collect();
        let mut stats = Stats::default();
        let mut shards: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for h in handles {
            let (s, sh) = h.await?;
            stats.merge(s);
            for (idx, shard) in sh {
                shards.entry(shard).or_default().push(idx);
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        if let Some(dir) = &args.record_shards {
            std::fs::create_dir_all(dir)?;
            for (shard, mut idxs) in shards.clone() {
                idxs.sort_unstable();
                let mut text = String::new();
                for i in idxs {
                    text.push_str(&ctx.keys.get(i));
                    text.push('\n');
                }
                std::fs::write(dir.join(format!("shard-{shard}.keys")), text)?;
            }
        }
        prefill_report = json!({
            "keys": ctx.keys.len(),
            "concurrency": workers,
            "seconds": secs,
            "ok": stats.ok,
            "ops_per_s": stats.ok as f64 / secs.max(1e-9),
            "errors_total": stats.error_count(),
            "errors": stats.errors,
            "error_samples": stats.samples,
            "latency": summary(&stats.all),
            "keys_per_shard": shards.iter().map(|(s, v)| (s.clone(), v.len())).collect::<BTreeMap<_, _>>(),
        });
        if !args.quiet {
            println!(
                "prefill: {} of {} keys written in {:.1} s ({:.0} PUT/s, {} errors{})",
                stats.ok,
                ctx.keys.len(),
                secs,
                stats.ok as f64 / secs.max(1e-9),
                stats.error_count(),
                if shards.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", per shard {:?}",
                        shards
                            .iter()
                            .map(|(s, v)| (s.as_str(), v.len()))
                            .collect::<Vec<_>>()
                    )
                }
            );
            print_errors(&stats);
        }
    }

    // The measured run.
    let skip_run = args.requests == Some(0);
    let duration = match (args.duration, args.requests) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(10.0),
    };
    let warmup = if duration.is_some() {
        args.warmup.max(0.0)
    } else {
        0.0
    };
    let start = Instant::now() + Duration::from_millis(5);
    let measure_from = start + Duration::from_secs_f64(warmup);
    let deadline = match duration {
        Some(d) => (measure_from + Duration::from_secs_f64(d)).min(hard_deadline),
        None => hard_deadline,
    };
    let budget = args.requests.map(|n| Arc::new(AtomicU64::new(n)));
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(args.concurrency as f64 / r));
    let mut stats = Stats::default();
    let mut elapsed = 0.0;
    if !skip_run {
        let handles: Vec<_> = (0..args.concurrency)
            .map(|id| {
                // Open loop: worker i's due times are offset by i/concurrency of an interval.
                let plan = Plan {
                    start: start
                        + interval
                            .map(|iv| iv.mul_f64(id as f64 / args.concurrency as f64))
                            .unwrap_or_default(),
                    measure_from,
                    deadline,
                    budget: budget.clone(),
                    interval,
                };
                tokio::spawn(worker(ctx.clone(), id, plan, args.seed))
            })
            .collect();
        for h in handles {
            stats.merge(h.await?);
        }
        elapsed = Instant::now()
            .saturating_duration_since(measure_from)
            .as_secs_f64();
    }
    // With a duration, throughput counts the successes completed inside the window;
    // with a request count, all of them over the time they took.
    let ops_per_s = match duration {
        Some(_) if !skip_run => {
            let window = deadline
                .saturating_duration_since(measure_from)
                .as_secs_f64();
            stats.in_window as f64 / window.max(1e-9)
        }
        _ => stats.ok as f64 / elapsed.max(1e-9),
    };
    let report = json!({
        "label": args.label,
        "api": format!("{:?}", args.api).to_lowercase(),
        "targets": args.targets,
        "concurrency": args.concurrency,
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "rate_target": args.rate,
        "read_ratio": args.read_ratio,
        "keys": ctx.keys.len(),
        "value_size": args.value_size,
        "dist": format!("{:?}", args.dist).to_lowercase(),
        "spread": format!("{:?}", args.spread).to_lowercase(),
        "carry_metadata": !args.no_metadata,
        "kvs_linearizable": args.kvs_linearizable,
        "etcd_serializable": args.etcd_serializable,
        "duration_s": elapsed,
        "ok": stats.ok,
        "ops_per_s": ops_per_s,
        "errors_total": stats.error_count(),
        "errors": stats.errors,
        "error_samples": stats.samples,
        "latency": summary(&stats.all),
        "get": summary(&stats.get),
        "put": summary(&stats.put),
        "send_lag": summary(&stats.lag),
        "prefill": prefill_report,
    });
    if !skip_run {
        let l = &report["latency"];
        let f = |k: &str| l[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{}{} ops/s {:.0}  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  ok {}  errors {}",
            if args.label.is_empty() { String::new() } else { format!("[{}] ", args.label) },
            match args.rate {
                Some(r) => format!("open loop at {r:.0}/s:"),
                None => "closed loop:".to_owned(),
            },
            ops_per_s,
            f("p50_ms"),
            f("p99_ms"),
            f("p999_ms"),
            f("max_ms"),
            stats.ok,
            stats.error_count()
        );
        if !args.quiet && !stats.lag.is_empty() {
            println!(
                "  send lag behind schedule: p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
                stats.lag.value_at_quantile(0.5) as f64 / 1000.0,
                stats.lag.value_at_quantile(0.99) as f64 / 1000.0,
                stats.lag.value_at_quantile(0.999) as f64 / 1000.0,
                stats.lag.max() as f64 / 1000.0
            );
        }
        if !args.quiet {
            for (name, h) in [("GET", &stats.get), ("PUT", &stats.put)] {
                if !h.is_empty() && !stats.get.is_empty() && !stats.put.is_empty() {
                    println!(
                        "  {name}: {} ok  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms",
                        h.len(),
                        h.value_at_quantile(0.5) as f64 / 1000.0,
                        h.value_at_quantile(0.99) as f64 / 1000.0,
                        h.value_at_quantile(0.999) as f64 / 1000.0
                    );
                }
            }
        }
        print_errors(&stats);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

fn print_errors(stats: &Stats) {
    for (kind, n) in &stats.errors {
        println!(
            "  error {kind}: {n} (first: {})",
            stats.samples.get(kind).map(String::as_str).unwrap_or("")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_requested_size() {
        let keys = Keys::Generated {
            prefix: "k".into(),
            width: 15,
            n: 1_000_000,
        };
        assert_eq!(keys.get(0), "k000000000000000");
        assert_eq!(keys.get(999_999).len(), 16);
    }

    #[test]
    fn zipf_favours_low_ranks_and_stays_in_range() {
        let z = Zipf::new(1000, 0.99);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        assert!(counts[0] > counts[10] && counts[10] > counts[500]);
        assert!(counts[0] > 10_000, "rank 0 holds about 13% of draws");
    }

    #[test]
    fn the_budget_hands_out_exactly_n() {
        let budget = Some(Arc::new(AtomicU64::new(3)));
        assert!((0..5).filter(|_| take_one(&budget)).count() == 3);
        assert!(take_one(&None));
    }
}
