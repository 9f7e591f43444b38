//! `GET /metrics`: what a node has done and what state it is in, in the Prometheus text
//! format (0.0.4), for a Prometheus server to scrape.
//!
//! Two kinds of series, kept apart on purpose:
//!
//! - *Events*, counted as they happen, in one recorder for the process ([`Registry`]):
//!   client requests by operation and status, with their latency
//!   ([`CountRequests`], wrapped around every route); requests forwarded to
//!   another node, by reason and outcome ([`forwarded`]); add-member and reshard durations,
//!   by outcome ([`timed`]).
//! - *State*, read from the node when a scrape comes ([`NodeState`]): keys of its shard, each
//!   peer's replication lag and outbox depth, live nodes. Reading them costs the write path
//!   nothing, and a peer or shard that is gone leaves the page with the next scrape.
//!
//! The key path serves ~15,000 requests/s per node, so recording an event is a handful of
//! atomic operations on handles resolved once: every label value is a static string or was
//! formatted when its series was first seen (a status code's counter is looked up in a
//! table indexed by operation and code, not by hashing labels), and no label carries a
//! key, a path or anything else a client chooses. `/metrics` itself is not counted.
//!
//! Histogram samples wait in the recorder's lock-free buckets until a scrape or [`upkeep`]
//! folds them in; `upkeep` runs every few seconds so that a node nobody scrapes keeps a
//! bounded backlog (8 bytes a request, 600 KB at 15,000 requests/s for 5 s).

mod middleware;
mod scrape;

use std::future::Future;
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

use ::metrics::{Counter, Histogram, Key, KeyName, Label, Level, Metadata, Recorder};
use actix_web::http::Method;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

pub use middleware::CountRequests;
pub use scrape::{handle, NodeState, PeerState, CONTENT_TYPE, PATH};

/// Client requests, by `op` and `status`.
pub const REQUESTS: &str = "kvs_http_requests_total";
/// Client request latency, by `op`.
pub const REQUEST_SECONDS: &str = "kvs_http_request_duration_seconds";
/// Requests relayed to another node, by `reason` and `outcome`.
pub const FORWARDED: &str = "kvs_forwarded_requests_total";
/// Add-member durations, by `outcome`.
pub const ADD_MEMBER_SECONDS: &str = "kvs_add_member_duration_seconds";
/// Reshard durations, by `outcome`.
pub const RESHARD_SECONDS: &str = "kvs_reshard_duration_seconds";

/// Latency buckets of client requests, in seconds. Served locally a PUT takes well under
/// a millisecond and p99 was 3.4-5.6 ms at 24,000 PUT/s on 3 nodes; waits for
/// dependencies, quorums and frozen writes reach seconds, and a client's budget is 20 s.
const REQUEST_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];
/// Duration buckets of add-member and reshard, in seconds: tens of milliseconds for a few
/// keys, minutes for millions (a transfer may take up to 300 s).
const CHANGE_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// How often histogram samples are folded in when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What a client request was, as the `op` label says it: the contract's key operations,
/// and a coarse class for everything else. Never the key or the path: the label's values
/// are these seven whatever clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientOp {
    /// `GET /key-value-store/<key>`.
    Get,
    /// `PUT /key-value-store/<key>`.
    Put,
    /// `DELETE /key-value-store/<key>`.
    Delete,
    /// `/key-value-store-view`, any method.
    View,
    /// `/key-value-store-shard/...` questions (ids, members, key counts).
    Shard,
    /// Add-member and reshard.
    Admin,
    /// Anything else: other methods on a key, listings, status, health, unknown paths.
    Other,
}

impl ClientOp {
    const ALL: [ClientOp; 7] = [
        ClientOp::Get,
        ClientOp::Put,
        ClientOp::Delete,
        ClientOp::View,
        ClientOp::Shard,
        ClientOp::Admin,
        ClientOp::Other,
    ];

    /// The operation of a request to `path` (without its query), or `None` for `/metrics`,
    /// which is no client's request.
    pub fn of(method: &Method, path: &str) -> Option<Self> {
        if path.starts_with("/key-value-store/") {
            return Some(match *method {
                Method::GET => ClientOp::Get,
                Method::PUT => ClientOp::Put,
                Method::DELETE => ClientOp::Delete,
                _ => ClientOp::Other,
            });
        }
        if path == "/key-value-store-view" {
            return Some(ClientOp::View);
        }
        if let Some(rest) = path.strip_prefix("/key-value-store-shard/") {
            let admin = rest.starts_with("add-member/") || rest == "reshard";
            return Some(if admin {
                ClientOp::Admin
            } else {
                ClientOp::Shard
            });
        }
        if path == PATH {
            return None;
        }
        Some(ClientOp::Other)
    }

    pub fn label(self) -> &'static str {
        match self {
            ClientOp::Get => "get",
            ClientOp::Put => "put",
            ClientOp::Delete => "delete",
            ClientOp::View => "view",
            ClientOp::Shard => "shard",
            ClientOp::Admin => "admin",
            ClientOp::Other => "other",
        }
    }
}

/// Why a request was relayed to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Its key belongs to another shard.
    Shard,
    /// This node lacks writes the client's causal metadata depends on, and the node that
    /// issued that metadata has them.
    Issuer,
}

impl Forward {
    const ALL: [Forward; 2] = [Forward::Shard, Forward::Issuer];

    pub fn label(self) -> &'static str {
        match self {
            Forward::Shard => "shard",
            Forward::Issuer => "issuer",
        }
    }
}

/// How a relayed request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The other node answered (whatever its answer).
    Answered,
    /// It never left this node (no connection, or no time left): safe to try elsewhere.
    NotSent,
    /// Its connection died with it on it: a write's fate is unknown.
    Lost,
}

impl Delivery {
    const ALL: [Delivery; 3] = [Delivery::Answered, Delivery::NotSent, Delivery::Lost];

    pub fn label(self) -> &'static str {
        match self {
            Delivery::Answered => "answered",
            Delivery::NotSent => "not_sent",
            Delivery::Lost => "lost",
        }
    }
}

/// An administrative change whose duration is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminChange {
    AddMember,
    Reshard,
}

/// The `outcome` label of an administrative change.
const CHANGE_OUTCOMES: [&str; 2] = ["ok", "error"];

/// Status codes with a counter slot of their own per operation: every code a server
/// sends. A code outside (none is) is counted through the recorder's own lookup.
const FIRST_STATUS: u16 = 100;
const STATUS_SLOTS: usize = 500;

/// The recorder of a process's events, and handles to its series resolved in advance.
pub struct Registry {
    recorder: PrometheusRecorder,
    /// `REQUESTS` counters, `op × STATUS_SLOTS + (status - FIRST_STATUS)`, registered the
    /// first time a status is seen for an operation (so only codes that occurred appear).
    requests: Box<[OnceLock<Counter>]>,
    latency: [Histogram; ClientOp::ALL.len()],
    forwarded: [[Counter; Delivery::ALL.len()]; Forward::ALL.len()],
    /// By change, then outcome (ok, error).
    changes: [[Histogram; 2]; 2],
}

/// The metadata handed to the recorder with every registration (it ignores it).
static METADATA: Metadata<'static> = Metadata::new("kvs", Level::INFO, Some(module_path!()));

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        let recorder = prometheus_builder(&[
            (REQUEST_SECONDS, &REQUEST_BUCKETS),
            (ADD_MEMBER_SECONDS, &CHANGE_BUCKETS),
            (RESHARD_SECONDS, &CHANGE_BUCKETS),
        ])
        .build_recorder();
        describe(&recorder, REQUESTS, "Client requests answered over HTTP, by operation and status code (/metrics not counted).");
        describe(
            &recorder,
            REQUEST_SECONDS,
            "Time from a client request's arrival to its answer, by operation.",
        );
        describe(&recorder, FORWARDED, "Client requests relayed to another node: by reason (shard: the key's shard is elsewhere; issuer: the node that issued the client's causal metadata has its dependencies) and outcome (answered; not_sent: never left this node; lost: the connection died with it).");
        describe(&recorder, ADD_MEMBER_SECONDS, "Add-member changes coordinated by this node: telling every node the new map and the new member's copy of its shard, by outcome.");
        describe(&recorder, RESHARD_SECONDS, "Reshards coordinated by this node: prepare, transfer and commit on every node, by outcome.");
        let histogram = |name: &'static str, labels: Vec<Label>| {
            recorder.register_histogram(&Key::from_parts(name, labels), &METADATA)
        };
        let latency = ClientOp::ALL.map(|op| {
            histogram(
                REQUEST_SECONDS,
                vec![Label::from_static_parts("op", op.label())],
            )
        });
        let forwarded = Forward::ALL.map(|reason| {
            Delivery::ALL.map(|outcome| {
                let labels = vec![
                    Label::from_static_parts("reason", reason.label()),
                    Label::from_static_parts("outcome", outcome.label()),
                ];
                recorder.register_counter(&Key::from_parts(FORWARDED, labels), &METADATA)
            })
        });
        let changes = [ADD_MEMBER_SECONDS, RESHARD_SECONDS].map(|name| {
            CHANGE_OUTCOMES
                .map(|outcome| histogram(name, vec![Label::from_static_parts("outcome", outcome)]))
        });
        Self {
            requests: (0..ClientOp::ALL.len() * STATUS_SLOTS)
                .map(|_| OnceLock::new())
                .collect(),
            recorder,
            latency,
            forwarded,
            changes,
        }
    }

    /// Records a client request of `op` answered with `status` after `elapsed`.
    pub fn request(&self, op: ClientOp, status: u16, elapsed: Duration) {
        self.latency[op as usize].record(elapsed.as_secs_f64());
        let slot = usize::from(status.wrapping_sub(FIRST_STATUS));
        let cached = (slot < STATUS_SLOTS)
            .then(|| self.requests.get(op as usize * STATUS_SLOTS + slot))
            .flatten();
        match cached {
            Some(counter) => counter
                .get_or_init(|| self.request_counter(op, status))
                .increment(1),
            None => self.request_counter(op, status).increment(1),
        }
    }

    fn request_counter(&self, op: ClientOp, status: u16) -> Counter {
        let labels = vec![
            Label::from_static_parts("op", op.label()),
            Label::new("status", status.to_string()),
        ];
        self.recorder
            .register_counter(&Key::from_parts(REQUESTS, labels), &METADATA)
    }

    /// Records a request relayed to another node.
    pub fn forwarded(&self, reason: Forward, outcome: Delivery) {
        self.forwarded[reason as usize][outcome as usize].increment(1);
    }

    /// Records an administrative change that took `elapsed`.
    pub fn change(&self, change: AdminChange, ok: bool, elapsed: Duration) {
        self.changes[change as usize][usize::from(!ok)].record(elapsed.as_secs_f64());
    }

    /// The page of every series recorded so far.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }

    /// Folds histogram samples in (a scrape does it too).
    pub fn upkeep(&self) {
        self.recorder.handle().run_upkeep();
    }
}

/// A recorder's builder with `buckets` for the histograms they name (the others would be
/// summaries; every histogram here has buckets, so that Prometheus can aggregate them).
fn prometheus_builder(buckets: &[(&str, &[f64])]) -> PrometheusBuilder {
    let built = buckets
        .iter()
        .try_fold(PrometheusBuilder::new(), |builder, (name, bounds)| {
            builder.set_buckets_for_metric(Matcher::Full((*name).to_owned()), bounds)
        });
    built.unwrap_or_else(|e| {
        // Only an empty bucket list fails, and none is.
        log::error!("metrics: {e}; latency histograms are rendered as summaries");
        PrometheusBuilder::new()
    })
}

/// Gives `name` its `# HELP` line (the recorder writes `# TYPE` lines itself).
fn describe(recorder: &PrometheusRecorder, name: &'static str, help: &'static str) {
    // The recorder keeps one description per name, whatever the kind asked for.
    recorder.describe_counter(KeyName::from_const_str(name), None, help.into());
}

/// The process's registry: one node per process, so one set of counters.
static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// Records a client request (see [`Registry::request`]).
pub fn request(op: ClientOp, status: u16, elapsed: Duration) {
    REGISTRY.request(op, status, elapsed);
}

/// Records a request relayed to another node (see [`Registry::forwarded`]).
pub fn forwarded(reason: Forward, outcome: Delivery) {
    REGISTRY.forwarded(reason, outcome);
}

/// Runs `work`, an administrative change, and records how long it took and whether it
/// succeeded. A change whose request is dropped midway (its client went away) records
/// nothing.
pub async fn timed<T, E>(
    change: AdminChange,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let result = work.await;
    REGISTRY.change(change, result.is_ok(), started.elapsed());
    result
}

/// Folds histogram samples in every 5 s (`UPKEEP_INTERVAL`), so that a node nobody scrapes
/// does not keep every request's sample.
pub async fn upkeep() {
    let mut every = tokio::time::interval(UPKEEP_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        REGISTRY.upkeep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_a_few_operations_whatever_the_path() {
        let op = |method: Method, path: &str| ClientOp::of(&method, path);
        assert_eq!(op(Method::GET, "/key-value-store/k"), Some(ClientOp::Get));
        assert_eq!(
            op(Method::PUT, "/key-value-store/a/b%20c"),
            Some(ClientOp::Put)
        );
        assert_eq!(
            op(Method::DELETE, "/key-value-store/k"),
            Some(ClientOp::Delete)
        );
        assert_eq!(
            op(Method::POST, "/key-value-store/k"),
            Some(ClientOp::Other)
        );
        assert_eq!(op(Method::GET, "/key-value-store"), Some(ClientOp::Other));
        assert_eq!(
            op(Method::PUT, "/key-value-store-view"),
            Some(ClientOp::View)
        );
        assert_eq!(
            op(Method::GET, "/key-value-store-view"),
            Some(ClientOp::View)
        );
        let shard = |path: &str| op(Method::GET, &format!("/key-value-store-shard/{path}"));
        assert_eq!(shard("shard-ids"), Some(ClientOp::Shard));
        assert_eq!(shard("shard-id-key-count/3"), Some(ClientOp::Shard));
        assert_eq!(shard("add-member/1"), Some(ClientOp::Admin));
        assert_eq!(shard("reshard"), Some(ClientOp::Admin));
        assert_eq!(op(Method::GET, "/kvs/health/ready"), Some(ClientOp::Other));
        assert_eq!(op(Method::GET, "/no/such/path"), Some(ClientOp::Other));
        assert_eq!(op(Method::GET, "/metrics"), None, "a scrape is not counted");
        assert_eq!(op(Method::POST, "/metrics"), None);
    }

    #[test]
    fn label_values_are_distinct() {
        let mut ops: Vec<_> = ClientOp::ALL.iter().map(|o| o.label()).collect();
        ops.sort_unstable();
        ops.dedup();
        assert_eq!(ops.len(), ClientOp::ALL.len());
        for (i, op) in ClientOp::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "ALL is in discriminant order");
        }
        for (i, reason) in Forward::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
        for (i, outcome) in Delivery::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i);
        }
    }

    /// The value of the sample `name{labels}` (labels as rendered, in order) in `page`.
    fn sample(page: &str, series: &str) -> Option<f64> {
        page.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn requests_are_counted_by_operation_and_status() {
        let registry = Registry::new();
        let ms = Duration::from_millis(1);
        registry.request(ClientOp::Put, 201, ms);
        registry.request(ClientOp::Put, 201, ms);
        registry.request(ClientOp::Get, 404, ms * 30);
        registry.request(ClientOp::Other, 999, ms);
        registry.request(ClientOp::Other, 42, ms);
        let page = registry.render();
        let count = |op: &str, status: &str| {
            sample(
                &page,
                &format!(r#"{REQUESTS}{{op="{op}",status="{status}"}}"#),
            )
        };
        assert_eq!(count("put", "201"), Some(2.0), "{page}");
        assert_eq!(count("get", "404"), Some(1.0), "{page}");
        assert_eq!(
            count("get", "200"),
            None,
            "a status never seen has no series"
        );
        assert_eq!(
            count("other", "999"),
            Some(1.0),
            "codes beyond the table count too"
        );
        assert_eq!(count("other", "42"), Some(1.0));
        let latency = |suffix: &str| sample(&page, &format!(r#"{REQUEST_SECONDS}_{suffix}"#));
        assert_eq!(latency(r#"count{op="put"}"#), Some(2.0), "{page}");
        assert_eq!(
            latency(r#"bucket{op="get",le="0.025"}"#),
            Some(0.0),
            "{page}"
        );
        assert_eq!(
            latency(r#"bucket{op="get",le="0.05"}"#),
            Some(1.0),
            "{page}"
        );
        assert_eq!(
            latency(r#"bucket{op="get",le="+Inf"}"#),
            Some(1.0),
            "{page}"
        );
        assert_eq!(
            latency(r#"count{op="delete"}"#),
            Some(0.0),
            "every op from the start"
        );
        assert!(
            page.contains(&format!("# TYPE {REQUESTS} counter")),
            "{page}"
        );
        assert!(
            page.contains(&format!("# TYPE {REQUEST_SECONDS} histogram")),
            "{page}"
        );
        assert!(page.contains(&format!("# HELP {REQUESTS} ")), "{page}");
    }

    #[test]
    fn forwarding_and_changes_have_every_series_from_the_start() {
        let registry = Registry::new();
        let page = registry.render();
        for reason in Forward::ALL {
            for outcome in Delivery::ALL {
                let series = format!(
                    r#"{FORWARDED}{{reason="{}",outcome="{}"}}"#,
                    reason.label(),
                    outcome.label()
                );
                assert_eq!(sample(&page, &series), Some(0.0), "{series}: {page}");
            }
        }
        registry.forwarded(Forward::Shard, Delivery::Answered);
        registry.change(AdminChange::Reshard, true, Duration::from_millis(700));
        registry.change(AdminChange::AddMember, false, Duration::from_secs(3));
        let page = registry.render();
        let forwarded = format!(r#"{FORWARDED}{{reason="shard",outcome="answered"}}"#);
        assert_eq!(sample(&page, &forwarded), Some(1.0), "{page}");
        let count = |name: &str, outcome: &str| {
            sample(&page, &format!(r#"{name}_count{{outcome="{outcome}"}}"#))
        };
        assert_eq!(count(RESHARD_SECONDS, "ok"), Some(1.0), "{page}");
        assert_eq!(count(RESHARD_SECONDS, "error"), Some(0.0), "{page}");
        assert_eq!(count(ADD_MEMBER_SECONDS, "error"), Some(1.0), "{page}");
        let sum = sample(&page, &format!(r#"{RESHARD_SECONDS}_sum{{outcome="ok"}}"#));
        assert_eq!(sum, Some(0.7), "{page}");
    }

    #[tokio::test]
    async fn timed_passes_the_result_through() {
        let ok: Result<u8, ()> = timed(AdminChange::Reshard, async { Ok(3) }).await;
        assert_eq!(ok, Ok(3));
        let failed: Result<u8, &str> = timed(AdminChange::AddMember, async { Err("no") }).await;
        assert_eq!(failed, Err("no"));
    }
}
