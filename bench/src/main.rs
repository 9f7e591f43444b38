//! `kvs-bench`: the load generator used to benchmark kvs against a trivial HTTP server and
//! etcd, plus the trivial server itself and a few helpers for the benchmark scripts.
//!
//! Every request loop here is bounded: by a duration, by a request count, or by both, and
//! every request has a timeout. Targets are whatever the caller names (the scripts only ever
//! name loopback addresses).

mod engines;
mod fixed;
mod h1;
mod load;
mod stats;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "kvs-bench",
    version,
    about = "Load generator for kvs (and etcd, and a trivial HTTP server)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Drive a closed-loop (or, with --rate, open-loop) load and report throughput, latency
    /// percentiles and every error.
    Load(Box<load::LoadArgs>),
    /// A trivial HTTP server answering a fixed small JSON body to any request: the ceiling
    /// of HTTP on this machine.
    ServeFixed(fixed::FixedArgs),
    /// Wait until every target answers (kvs: its view lists --nodes nodes and shard-ids
    /// answers; etcd: /health; fixed: GET /). Exits non-zero after --timeout seconds.
    WaitReady(WaitArgs),
    /// Print the members of a kvs shard, comma-separated (`shard-id-members/<id>`).
    ShardMembers(MembersArgs),
    /// fjall against redb on kvs's write pattern (crash-safe writes, group sync), and the
    /// time to read every key back after a restart.
    Engines(engines::EnginesArgs),
}

#[derive(clap::Args, Debug)]
struct WaitArgs {
    #[arg(long, value_delimiter = ',', required = true)]
    targets: Vec<String>,
    #[arg(long, value_enum, default_value = "kvs")]
    api: load::Api,
    /// kvs: how many nodes every view must list.
    #[arg(long, default_value_t = 0)]
    nodes: usize,
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
}

#[derive(clap::Args, Debug)]
struct MembersArgs {
    #[arg(long)]
    target: String,
    #[arg(long)]
    shard: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Load(args) => load::main(*args),
        Cmd::ServeFixed(args) => fixed::main(args),
        Cmd::WaitReady(args) => runtime()?.block_on(wait_ready(args)),
        Cmd::ShardMembers(args) => runtime()?.block_on(shard_members(args)),
        Cmd::Engines(args) => engines::main(args),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `host:port` or a full base URL, without a trailing slash.
pub fn base_url(target: &str) -> String {
    let t = target.trim().trim_end_matches('/');
    if t.starts_with("http://") || t.starts_with("https://") {
        t.to_owned()
    } else {
        format!("http://{t}")
    }
}

fn small_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()?)
}

async fn ready_once(client: &reqwest::Client, args: &WaitArgs, base: &str) -> Result<(), String> {
    let get = |path: &str| client.get(format!("{base}{path}")).send();
    let fail = |e: reqwest::Error| e.to_string();
    match args.api {
        load::Api::Kvs => {
            let r = get("/key-value-store-view").await.map_err(fail)?;
            if !r.status().is_success() {
                return Err(format!("view answered {}", r.status()));
            }
            let v: serde_json::Value = r.json().await.map_err(fail)?;
            let view = v["view"].as_str().unwrap_or_default();
            let n = view.split(',').filter(|s| !s.is_empty()).count();
            if n < args.nodes {
                return Err(format!("view lists {n} of {} nodes", args.nodes));
            }
            let r = get("/key-value-store-shard/shard-ids")
                .await
                .map_err(fail)?;
            if !r.status().is_success() {
                return Err(format!("shard-ids answered {}", r.status()));
            }
            let r = get("/key-value-store-shard/node-shard-id")
                .await
                .map_err(fail)?;
            if !r.status().is_success() {
                return Err(format!("node-shard-id answered {}", r.status()));
            }
        }
        load::Api::Etcd => {
            let r = get("/health").await.map_err(fail)?;
            let body = r.text().await.map_err(fail)?;
            if !body.contains("true") {
                return Err(format!("health: {body}"));
            }
        }
        load::Api::Fixed => {
            let r = get("/").await.map_err(fail)?;
            if !r.status().is_success() {
                return Err(format!("GET / answered {}", r.status()));
            }
        }
    }
    Ok(())
}

async fn wait_ready(args: WaitArgs) -> Result<()> {
    let client = small_client()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.timeout);
    let bases: Vec<String> = args.targets.iter().map(|t| base_url(t)).collect();
    loop {
        let mut last = None;
        for base in &bases {
            if let Err(e) = ready_once(&client, &args, base).await {
                last = Some(format!("{base}: {e}"));
                break;
            }
        }
        match last {
            None => return Ok(()),
            Some(e) if tokio::time::Instant::now() >= deadline => {
                bail!("not ready after {} s: {e}", args.timeout)
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn shard_members(args: MembersArgs) -> Result<()> {
    let client = small_client()?;
    let url = format!(
        "{}/key-value-store-shard/shard-id-members/{}",
        base_url(&args.target),
        args.shard
    );
    let v: serde_json::Value = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .json()
        .await?;
    let members = match &v["shard-id-members"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(","),
        other => bail!("unexpected answer from {url}: {other}"),
    };
    println!("{members}");
    Ok(())
}
