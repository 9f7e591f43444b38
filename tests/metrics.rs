//! `/metrics` on a store of processes: the page is the Prometheus text format line by line,
//! and its series follow what clients and administrators do.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::json;

const FMT: &str = "2019";

/// A scrape of one node's page.
struct Page {
    text: String,
    scrape: prometheus_parse::Scrape,
}

impl Page {
    /// The value of the series `name` whose labels are exactly `labels` (a counter, a gauge,
    /// or a histogram's `_sum` or `_count`).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series(name).find_map(|(found, value)| {
            let wanted: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (found == wanted).then_some(value)
        })
    }

    /// `value`, 0 for a series the page does not have (yet).
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// Every series named `name`: its labels and value.
    fn series<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (BTreeMap<String, String>, f64)> + 'a {
        use prometheus_parse::Value;
        self.scrape
            .samples
            .iter()
            .filter(move |s| s.metric == name)
            .filter_map(|s| {
                let value = match s.value {
                    Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                    _ => return None,
                };
                let labels = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                Some((labels, value))
            })
    }

    /// The sum of every series named `name`.
    fn total(&self, name: &str) -> f64 {
        self.series(name).map(|(_, v)| v).sum()
    }
}

async fn try_scrape(c: &Cluster, i: usize) -> Result<Page, String> {
    let url = c.url(i, "/metrics");
    let response = reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response
        .text()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if status != 200 {
        return Err(format!("GET {url}: {status} {text}"));
    }
    if !content_type.starts_with("text/plain; version=0.0.4") {
        return Err(format!("GET {url}: content type {content_type:?}"));
    }
    check_exposition_format(&text)?;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .map_err(|e| format!("GET {url}: {e}"))?;
    Ok(Page { text, scrape })
}

async fn scrape(c: &Cluster, i: usize) -> Page {
    try_scrape(c, i)
        .await
        .unwrap_or_else(|e| panic!("node {i}: {e}"))
}

/// Checks every line of a page against the text format (0.0.4): each line parses (with
/// `prometheus-parse`, and with the stricter reading below, since that parser skips what it
/// does not understand), and every sample belongs to a family with a `# TYPE` and a
/// `# HELP` line, given once, before its samples.
fn check_exposition_format(text: &str) -> Result<(), String> {
    use prometheus_parse::LineInfo;
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeSet<String> = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        if LineInfo::parse(line) == LineInfo::Ignored {
            return Err(format!("prometheus-parse ignores {}", at()));
        }
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').ok_or_else(at)?;
            if !valid_name(name) || help.trim().is_empty() || !helps.insert(name.to_owned()) {
                return Err(format!("bad or repeated HELP at {}", at()));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or_else(at)?;
            let known = ["counter", "gauge", "histogram", "summary", "untyped"];
            if !valid_name(name) || !known.contains(&kind) {
                return Err(format!("bad TYPE at {}", at()));
            }
            if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                return Err(format!("repeated TYPE at {}", at()));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, labels, value) = parse_sample(line).map_err(|e| format!("{e} at {}", at()))?;
        if !name.starts_with("kvs_") {
            return Err(format!("not a kvs_ series at {}", at()));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| types.get(*base).map(String::as_str) == Some("histogram"))
            .unwrap_or(name);
        let kind = types
            .get(family)
            .ok_or_else(|| format!("no TYPE before {}", at()))?;
        if !helps.contains(family) {
            return Err(format!("no HELP before {}", at()));
        }
        if kind == "counter" && !name.ends_with("_total") {
            return Err(format!("a counter's name ends in _total: {}", at()));
        }
        if kind == "histogram" && !family.ends_with("_seconds") {
            return Err(format!(
                "histograms here are durations in seconds: {}",
                at()
            ));
        }
        if name.ends_with("_bucket") && !labels.iter().any(|(k, _)| k == "le") {
            return Err(format!("a bucket without le at {}", at()));
        }
        if value.is_nan() {
            return Err(format!("NaN at {}", at()));
        }
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{label="value",...} value`, strictly: quoted label values with `\\`, `\"` and
/// `\n` escapes, and a float value.
#[allow(clippy::type_complexity)]
fn parse_sample(line: &str) -> Result<(&str, Vec<(String, String)>, f64), String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| "no value".to_string())?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("bad name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = rest.split_once("=\"").ok_or("a label without =\"")?;
            if !valid_name(label) || label.starts_with("__") {
                return Err(format!("bad label name {label:?}"));
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => return Err("a bad escape".into()),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("an unterminated label value".into()),
                }
            };
            labels.push((label.to_owned(), value));
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok((name, labels, value))
}

async fn node_shard(c: &Cluster, i: usize) -> String {
    let (status, body) = get(&c.url(i, "/key-value-store-shard/node-shard-id"), None).await;
    assert_eq!(status, 200, "{body}");
    body["shard-id"].as_str().expect("a shard id").to_owned()
}

async fn shard_members(c: &Cluster, i: usize, shard: &str) -> BTreeSet<String> {
    let url = c.url(
        i,
        &format!("/key-value-store-shard/shard-id-members/{shard}"),
    );
    let (status, body) = get(&url, None).await;
    assert_eq!(status, 200, "{body}");
    let members = &body["shard-id-members"];
    match members.as_array() {
        Some(list) => list
            .iter()
            .filter_map(|m| m.as_str())
            .map(String::from)
            .collect(),
        None => members
            .as_str()
            .unwrap_or_default()
            .split(',')
            .map(String::from)
            .collect(),
    }
}

/// Polls node i's page until `check` holds; panics with the last page otherwise.
async fn poll_page(c: &Cluster, i: usize, what: &str, check: impl Fn(&Page) -> bool) -> Page {
    let last = std::sync::Mutex::new(String::new());
    let found = poll_until(CONVERGE_TIMEOUT, POLL_INTERVAL, || {
        let (c, check, last) = (c, &check, &last);
        async move {
            let page = try_scrape(c, i).await.ok()?;
            if check(&page) {
                return Some(page);
            }
            *last.lock().expect("not poisoned") = page.text;
            None
        }
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "node {i}: {what}; last page:\n{}",
            last.lock().expect("not poisoned")
        )
    })
}

const REQUESTS: &str = "kvs_http_requests_total";
const FORWARDED: &str = "kvs_forwarded_requests_total";

/// Client requests count by operation and status, requests for another shard's keys count
/// as forwarded, and the node's state (keys, peers' lag, live nodes) reaches what was done.
/// Scrapes count as nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_requests_and_the_nodes_state() {
    let c = Cluster::start(4, Some(2), FMT).await;
    let mine = node_shard(&c, 0).await;
    let peers: BTreeSet<String> = shard_members(&c, 0, &mine)
        .await
        .into_iter()
        .filter(|m| *m != c.addr(0).to_string())
        .collect();
    assert_eq!(peers.len(), 1, "two members a shard: {peers:?}");

    let before = scrape(&c, 0).await;
    let again = scrape(&c, 0).await;
    assert_eq!(
        before.total(REQUESTS),
        again.total(REQUESTS),
        "a scrape is not a client request:\n{}",
        again.text
    );
    assert!(!again.text.contains("op=\"metrics\""), "{}", again.text);

    // Fresh keys through node 0 until both shards have some: node 0 serves its own and
    // forwards the others.
    let mut shard_of: BTreeMap<String, String> = BTreeMap::new();
    let mut metadata: BTreeMap<String, String> = BTreeMap::new();
    let mut k = 0;
    while k < 10 || shard_of.values().collect::<BTreeSet<_>>().len() < 2 {
        assert!(k < 100, "100 keys and one shard only: {shard_of:?}");
        let key = format!("metric-key-{k}");
        let (status, body) = c.kv_put(0, &key, "v", "").await;
        assert_eq!(status, 201, "{body}");
        let shard = body["shard-id"].as_str().expect("a shard id").to_owned();
        let cm = body["causal-metadata"]
            .as_str()
            .expect("metadata")
            .to_owned();
        metadata.insert(key.clone(), cm);
        shard_of.insert(key, shard);
        k += 1;
    }
    let written = shard_of.len() as f64;
    let local = shard_of
        .iter()
        .find(|(_, s)| **s == mine)
        .map(|(k, _)| k.clone());
    let remote = shard_of
        .iter()
        .find(|(_, s)| **s != mine)
        .map(|(k, _)| k.clone());
    let (local, remote) = (local.expect("a local key"), remote.expect("a remote key"));
    let forwarded_puts = shard_of.values().filter(|s| **s != mine).count() as f64;
    // With the write's metadata: whichever member of the other shard answers, it answers
    // with the write (waiting for it if need be), and node 0 forwards the GET once.
    for key in [&local, &remote] {
        let (status, body) = c.kv_get(0, key, Some(&metadata[key])).await;
        assert_eq!(status, 200, "GET {key}: {body}");
    }
    let (status, body) = raw(reqwest::Method::PUT, &c.kv_url(0, &local), "nope", None).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = c.kv_delete(0, &local, "").await;
    assert_eq!(status, 200, "{body}");
    shard_of.remove(&local);

    let after = scrape(&c, 0).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.count(name, labels) - before.count(name, labels)
    };
    let requests = |op, status| delta(REQUESTS, &[("op", op), ("status", status)]);
    assert_eq!(requests("put", "201"), written, "{}", after.text);
    assert_eq!(requests("put", "400"), 1.0, "{}", after.text);
    assert_eq!(requests("get", "200"), 2.0, "{}", after.text);
    assert_eq!(requests("delete", "200"), 1.0, "{}", after.text);
    assert_eq!(
        delta("kvs_http_request_duration_seconds_count", &[("op", "put")]),
        written + 1.0,
        "{}",
        after.text
    );
    assert!(
        after.count("kvs_http_request_duration_seconds_sum", &[("op", "put")]) > 0.0,
        "{}",
        after.text
    );
    let forwarded = |reason, outcome| delta(FORWARDED, &[("reason", reason), ("outcome", outcome)]);
    assert_eq!(
        forwarded("shard", "answered"),
        forwarded_puts + 1.0,
        "every PUT and the GET of another shard's key:\n{}",
        after.text
    );
    // (`not_sent` may count a member tried first that could not be reached; nothing was
    // lost, and no request carried metadata another node of node 0's shard issued.)
    for (reason, outcome) in [("shard", "lost"), ("issuer", "answered")] {
        assert_eq!(forwarded(reason, outcome), 0.0, "{}", after.text);
    }
    assert!(
        !after.text.contains("metric-key"),
        "no key in a label:\n{}",
        after.text
    );

    // The state, read when scraped (key counts are up to 5 s old).
    let mut keys_of: BTreeMap<String, f64> = BTreeMap::new();
    for shard in shard_of.values() {
        *keys_of.entry(shard.clone()).or_default() += 1.0;
    }
    for i in 0..c.len() {
        let shard = node_shard(&c, i).await;
        let want = keys_of.get(&shard).copied().unwrap_or_default();
        let page = poll_page(&c, i, &format!("{want} keys in shard {shard}"), |p| {
            p.value("kvs_shard_keys", &[("shard", shard.as_str())]) == Some(want)
                && p.series("kvs_shard_keys").count() == 1
        })
        .await;
        assert_eq!(
            page.value("kvs_gossip_live_nodes", &[]),
            Some(4.0),
            "node {i}:\n{}",
            page.text
        );
    }
    let page = poll_page(&c, 0, "the shard peer caught up", |p| {
        let lagged: BTreeSet<String> = p
            .series("kvs_replication_lag_writes")
            .map(|(labels, _)| labels["peer"].clone())
            .collect();
        lagged == peers
            && p.total("kvs_replication_lag_writes") == 0.0
            && p.total("kvs_replication_outbox_writes") == 0.0
    })
    .await;
    let outbox: BTreeSet<String> = page
        .series("kvs_replication_outbox_writes")
        .map(|(labels, _)| labels["peer"].clone())
        .collect();
    assert_eq!(outbox, peers, "{}", page.text);
}

/// An add-member and a reshard each record their duration on the node that coordinated
/// them; a refused reshard records none. After the reshard the page shows the new shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrative_changes_record_their_durations() {
    const ADD_MEMBER: &str = "kvs_add_member_duration_seconds_count";
    const RESHARD: &str = "kvs_reshard_duration_seconds_count";
    let mut c = Cluster::start(4, Some(2), FMT).await;
    for k in 0..6 {
        let (status, body) = c.kv_put(k % 4, &format!("k{k}"), "v", "").await;
        assert_eq!(status, 201, "{body}");
    }
    let page = scrape(&c, 0).await;
    for name in [ADD_MEMBER, RESHARD] {
        for outcome in ["ok", "error"] {
            assert_eq!(
                page.value(name, &[("outcome", outcome)]),
                Some(0.0),
                "{}",
                page.text
            );
        }
    }

    let all = c.addrs();
    let fifth = c.start_extra_node(&all);
    for i in 0..c.len() {
        c.wait_view(i, &c.addrs(), CONVERGE_TIMEOUT).await;
    }
    let shard = node_shard(&c, 0).await;
    let (status, body) = put(
        &c.url(0, &format!("/key-value-store-shard/add-member/{shard}")),
        json!({"socket-address": c.addr(fifth).to_string()}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let page = scrape(&c, 0).await;
    assert_eq!(
        page.count(ADD_MEMBER, &[("outcome", "ok")]),
        1.0,
        "{}",
        page.text
    );
    assert_eq!(page.count(ADD_MEMBER, &[("outcome", "error")]), 0.0);
    assert_eq!(
        page.count(REQUESTS, &[("op", "admin"), ("status", "200")]),
        1.0,
        "{}",
        page.text
    );
    let elsewhere = scrape(&c, 1).await;
    assert_eq!(
        elsewhere.count(ADD_MEMBER, &[("outcome", "ok")]),
        0.0,
        "only the coordinator records it"
    );

    let url = c.url(0, "/key-value-store-shard/reshard");
    let reshard = |count: u32| put(&url, json!({"shard-count": count}));
    let (status, body) = reshard(10).await;
    assert_eq!(status, 400, "not enough nodes: {body}");
    let (status, body) = reshard(1).await;
    assert_eq!(status, 200, "{body}");
    let page = scrape(&c, 0).await;
    assert_eq!(
        page.count(RESHARD, &[("outcome", "ok")]),
        1.0,
        "{}",
        page.text
    );
    assert_eq!(
        page.count(RESHARD, &[("outcome", "error")]),
        0.0,
        "a refused reshard is no reshard:\n{}",
        page.text
    );
    assert!(
        page.count("kvs_reshard_duration_seconds_sum", &[("outcome", "ok")]) > 0.0,
        "{}",
        page.text
    );

    // One shard of five nodes now: every key here, four peers, the old shard's series gone.
    let shard = node_shard(&c, 0).await;
    poll_page(&c, 0, "every key in the one shard", |p| {
        p.value("kvs_shard_keys", &[("shard", shard.as_str())]) == Some(6.0)
            && p.series("kvs_shard_keys").count() == 1
            && p.series("kvs_replication_lag_writes").count() == 4
            && p.value("kvs_gossip_live_nodes", &[]) == Some(5.0)
    })
    .await;
}

/// While a peer is paused, writes pile up for it: the page shows its lag and outbox depth
/// growing, answers at once while a quorum write waits for that peer, and shows the lag
/// gone once the peer is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_paused_peer_falling_behind_and_catching_up() {
    let c = Cluster::start(2, Some(1), FMT).await;
    let peer = c.addr(1).to_string();
    let lag = |p: &Page| p.value("kvs_replication_lag_writes", &[("peer", peer.as_str())]);
    let outbox = |p: &Page| p.value("kvs_replication_outbox_writes", &[("peer", peer.as_str())]);
    c.pause(1);
    for k in 0..5 {
        let (status, body) = c.kv_put(0, &format!("k{k}"), "v", "").await;
        assert_eq!(status, 201, "{body}");
    }
    let page = scrape(&c, 0).await;
    assert_eq!(lag(&page), Some(5.0), "{}", page.text);
    assert_eq!(outbox(&page), Some(5.0), "{}", page.text);

    // A write that waits (up to 5 s) for the paused peer to hold it; meanwhile the page
    // answers at once.
    let url = c.kv_url(0, "waits");
    let waiting = tokio::spawn(async move {
        let body = json!({"value": "v", "causal-metadata": "", "write-quorum": "all"});
        let body = Body::Json(&body);
        let timeout = std::time::Duration::from_secs(15);
        try_request_timeout(reqwest::Method::PUT, &url, body, timeout).await
    });
    poll_page(&c, 0, "the waiting write is in", |p| lag(p) == Some(6.0)).await;
    let started = std::time::Instant::now();
    scrape(&c, 0).await;
    let took = started.elapsed();
    assert!(!waiting.is_finished(), "the quorum write still waits");
    assert!(
        took < std::time::Duration::from_secs(2),
        "a scrape took {took:?} while a write waited"
    );
    let (status, body) = waiting
        .await
        .expect("the write's task")
        .expect("an answer after the quorum wait");
    assert_ne!(status, 201, "no quorum with the peer paused: {body}");

    c.resume(1);
    poll_page(&c, 0, "the peer caught up", |p| {
        lag(p) == Some(0.0) && outbox(p) == Some(0.0)
    })
    .await;
    assert_eq!(
        scrape(&c, 0)
            .await
            .count(REQUESTS, &[("op", "put"), ("status", "201")]),
        5.0
    );
}

/// The page checker above rejects what the format does not allow (so its passing means
/// something).
#[test]
fn the_format_check_rejects_malformed_pages() {
    let good = "# HELP kvs_x_total X.\n# TYPE kvs_x_total counter\nkvs_x_total{op=\"a\\\"b\"} 1\n\n\
                # HELP kvs_d_seconds D.\n# TYPE kvs_d_seconds histogram\n\
                kvs_d_seconds_bucket{le=\"+Inf\"} 2\nkvs_d_seconds_sum 0.5\nkvs_d_seconds_count 2\n";
    assert_eq!(check_exposition_format(good), Ok(()));
    for bad in [
        "kvs_x_total 1\n",
        "# TYPE kvs_x_total counter\nkvs_x_total 1\n",
        "# HELP kvs_x X.\n# TYPE kvs_x counter\nkvs_x 1\n",
        "# HELP kvs_x_total X.\n# TYPE kvs_x_total counter\nkvs_x_total{op=a} 1\n",
        "# HELP kvs_x_total X.\n# TYPE kvs_x_total counter\nkvs_x_total{op=\"a} 1\n",
        "# HELP kvs_x_total X.\n# TYPE kvs_x_total counter\nkvs_x_total one\n",
        "# HELP kvs_g X.\n# TYPE kvs_g gauge\n# TYPE kvs_g gauge\nkvs_g 1\n",
        "# HELP kvs_d X.\n# TYPE kvs_d histogram\nkvs_d_bucket{le=\"1\"} 1\n",
        "# HELP other_g X.\n# TYPE other_g gauge\nother_g 1\n",
        "kvs_g 1 2 3 4\n",
    ] {
        assert!(check_exposition_format(bad).is_err(), "accepted {bad:?}");
    }
}
