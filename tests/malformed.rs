//! Ten thousand random and malformed requests against a three-node store: no answer is a 5xx
//! other than the contract's 503, no node goes down, and no stored value, view or shard map
//! changes. Seeded (`MALFORMED_SEED` replays a run); the seed is printed.

mod common;

use std::time::Duration;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const REQUESTS: usize = 10_000;
const CONCURRENCY: usize = 16;
const SENTINELS: usize = 20;
const ADMIN_TOKEN: &str = "the-admin-token-nobody-random-sends";

const METHODS: &[&str] = &["GET", "PUT", "DELETE", "POST", "PATCH", "HEAD", "OPTIONS"];
const PATHS: &[&str] = &[
    "/key-value-store/",
    "/key-value-store",
    "/key-value-store-view",
    "/key-value-store-shard/shard-ids",
    "/key-value-store-shard/node-shard-id",
    "/key-value-store-shard/shard-id-members/",
    "/key-value-store-shard/shard-id-key-count/",
    "/key-value-store-shard/add-member/",
    "/key-value-store-shard/reshard",
    "/internal/absorb",
    "/internal/replicate",
    "/internal/map",
    "/internal/reshard/commit",
    "/kvs/storage",
    "/",
];

fn random_text(rng: &mut StdRng, max: usize) -> String {
    let len = rng.gen_range(0..=max);
    (0..len)
        .map(|_| match rng.gen_range(0..10) {
            0 => char::from_u32(rng.gen_range(0x80..0x2FFF)).unwrap_or('é'),
            1 => ['%', '/', '?', '#', '&', '=', '"', '\\', ' ', '\u{0}'][rng.gen_range(0..10)],
            _ => char::from(rng.gen_range(b'a'..=b'z')),
        })
        .collect()
}

/// A path: a contract path with a random (never a sentinel's) suffix, or garbage.
fn random_path(rng: &mut StdRng) -> String {
    // Half of them at a key, where the bodies are parsed.
    if rng.gen_bool(0.5) {
        return format!("/key-value-store/r-{}", rng.gen_range(0..200));
    }
    let base = PATHS[rng.gen_range(0..PATHS.len())];
    let suffix: String = match rng.gen_range(0..6) {
        0 => String::new(),
        1 => rng.gen_range(0..5).to_string(),
        2 => "x".repeat(rng.gen_range(40..80)),
        3 => format!("%{:02X}%zz", rng.gen::<u8>()),
        _ => format!("r-{}", rng.gen::<u32>()),
    };
    let path = format!("{base}{suffix}");
    // Keep it a valid request target: the test is about the node, not the HTTP client.
    path.chars()
        .filter(|c| c.is_ascii_graphic() && *c != '#')
        .collect()
}

fn random_json_value(rng: &mut StdRng) -> Value {
    match rng.gen_range(0..8) {
        0 => Value::Null,
        1 => json!(rng.gen::<i64>()),
        2 => json!(rng.gen::<f64>()),
        3 => json!(random_text(rng, 30)),
        4 => json!("x".repeat(rng.gen_range(0..3000))),
        5 => json!([random_text(rng, 5), 1, null]),
        6 => json!({"nested": {"deep": [1, 2, 3]}}),
        _ => json!(rng.gen::<bool>()),
    }
}

fn random_body(rng: &mut StdRng) -> Vec<u8> {
    match rng.gen_range(0..8) {
        0 => Vec::new(),
        1 => (0..rng.gen_range(1..200)).map(|_| rng.gen()).collect(),
        2 => b"{\"value\": \"unterminated".to_vec(),
        3 => json!([1, 2, 3]).to_string().into_bytes(),
        4 => {
            // Plausible fields with implausible values.
            let mut fields = serde_json::Map::new();
            for name in [
                "value",
                "causal-metadata",
                "socket-address",
                "shard-count",
                "write-quorum",
            ] {
                if rng.gen_bool(0.6) {
                    fields.insert(name.into(), random_json_value(rng));
                }
            }
            Value::Object(fields).to_string().into_bytes()
        }
        5 => json!({"value": "v", "causal-metadata": random_text(rng, 60)})
            .to_string()
            .into_bytes(),
        6 => json!({"socket-address": format!("10.{}.0.1:{}", rng.gen::<u8>(), rng.gen::<u16>())})
            .to_string()
            .into_bytes(),
        _ => json!({"value": random_text(rng, 20), "causal-metadata": ""})
            .to_string()
            .into_bytes(),
    }
}

fn random_request(
    rng: &mut StdRng,
    client: &reqwest::Client,
    base: &str,
) -> reqwest::RequestBuilder {
    // Mostly the contract's methods, whose handlers read the body.
    let method = if rng.gen_bool(0.8) {
        ["GET", "PUT", "DELETE"][rng.gen_range(0..3)]
    } else {
        METHODS[rng.gen_range(0..METHODS.len())]
    };
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
    let mut request = client
        .request(method, format!("{base}{}", random_path(rng)))
        .body(random_body(rng))
        .timeout(Duration::from_secs(30));
    if rng.gen_bool(0.7) {
        let content_type = [
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "garbage/x;;charset=",
        ][rng.gen_range(0..4)];
        request = request.header("content-type", content_type);
    }
    for header in ["x-kvs-hops", "x-kvs-epoch", "x-kvs-budget-ms"] {
        if rng.gen_bool(0.1) {
            request = request.header(header, rng.gen::<u32>().to_string());
        }
    }
    if rng.gen_bool(0.1) {
        request = request.header(
            "authorization",
            format!(
                "Bearer {}",
                random_text(rng, 20).replace(|c: char| !c.is_ascii_alphanumeric(), "")
            ),
        );
    }
    request
}

async fn snapshot(c: &Cluster) -> Vec<(u16, Value)> {
    let mut out = Vec::new();
    for i in 0..c.len() {
        out.push(get(&c.view_url(i), None).await);
        out.push(get(&c.url(i, "/key-value-store-shard/shard-ids"), None).await);
        out.push(get(&c.url(i, "/key-value-store-shard/node-shard-id"), None).await);
    }
    out
}

#[tokio::test]
async fn random_and_malformed_requests_change_nothing_and_break_nothing() {
    let seed: u64 = std::env::var("MALFORMED_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("malformed-request seed {seed}; replay with MALFORMED_SEED={seed}");
    let c = Cluster::start_with_env(3, Some(1), "2019", &[("KVS_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let mut cm = String::new();
    for k in 0..SENTINELS {
        let (s, b) = c
            .kv_put(k % 3, &format!("sentinel-{k}"), &format!("kept-{k}"), &cm)
            .await;
        assert_eq!(s, 201, "{b}");
        cm = b["causal-metadata"].as_str().unwrap().to_owned();
    }
    let before = snapshot(&c).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let bases: Vec<String> = (0..c.len()).map(|i| c.url(i, "")).collect();
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let client = client.clone();
        let bases = bases.clone();
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(worker as u64));
        tasks.push(tokio::spawn(async move {
            let mut bad = Vec::new();
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            for _ in 0..REQUESTS / CONCURRENCY {
                let base = &bases[rng.gen_range(0..bases.len())];
                let request = random_request(&mut rng, &client, base);
                let described = format!("{request:?}");
                match request.send().await {
                    Ok(answer) => {
                        let status = answer.status().as_u16();
                        *statuses.entry(status).or_default() += 1;
                        if status >= 500 && status != 503 {
                            let text = answer.text().await.unwrap_or_default();
                            bad.push(format!("{status} for {described}: {text}"));
                        }
                    }
                    Err(e) => bad.push(format!("no answer for {described}: {e}")),
                }
            }
            (bad, statuses)
        }));
    }
    let mut bad = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for task in tasks {
        let (b, s) = task.await.unwrap();
        bad.extend(b);
        for (status, n) in s {
            *statuses.entry(status).or_default() += n;
        }
    }
    println!(
        "{} requests in {:?}; statuses {statuses:?}",
        REQUESTS / CONCURRENCY * CONCURRENCY,
        started.elapsed()
    );
    assert!(
        bad.is_empty(),
        "{} bad answers, first: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    c.assert_running();
    assert_eq!(snapshot(&c).await, before, "the view or the shards changed");
    for k in 0..SENTINELS {
        for i in 0..c.len() {
            let (s, b, _) = c
                .poll_get(
                    i,
                    &format!("sentinel-{k}"),
                    Some(&cm),
                    CONVERGE_TIMEOUT,
                    |s, _| s == 200,
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                (s, b["value"].clone()),
                (200, json!(format!("kept-{k}"))),
                "node {i}: {b}"
            );
        }
    }
}
