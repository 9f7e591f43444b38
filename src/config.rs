//! Node configuration from the environment of the contract (or the same flags).

use crate::quorum::{QuorumError, WriteQuorum};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::shard::MIN_REPLICAS;
use crate::NodeId;

/// The wire format of list-valued fields (see the contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApiFormat {
    /// Lists as one comma-joined string.
    #[default]
    Y2019,
    /// Lists as JSON arrays of strings.
    Y2020,
}

/// The raw command line and environment, validated by [`Config::from_args`].
#[derive(Debug, Parser)]
#[command(
    name = "kvs",
    version,
    about = "A sharded, replicated, causally consistent key-value store node",
    after_help = "Subcommand: `kvs healthcheck [--live] [--address HOST:PORT]` probes a node's \
                  readiness (see `kvs healthcheck --help`)."
)]
pub struct Args {
    /// ip:port at which the other nodes reach this node.
    #[arg(long, env = "SOCKET_ADDRESS")]
    pub socket_address: Option<String>,
    /// Comma-separated ip:port of the nodes of the store, this node included.
    #[arg(long, env = "VIEW")]
    pub view: Option<String>,
    /// Number of shards to form at first start; absent on a node that joins with add-member.
    #[arg(long, env = "SHARD_COUNT")]
    pub shard_count: Option<String>,
    /// Wire format of list fields: 2019 (comma-joined strings) or 2020 (JSON arrays).
    #[arg(long, env = "API_FORMAT", default_value = "2019")]
    pub api_format: String,
    /// Where HTTP (TCP) and gossip (UDP) listen; default `0.0.0.0:<port of SOCKET_ADDRESS>`.
    #[arg(long, env = "BIND_ADDRESS")]
    pub bind_address: Option<String>,
    /// Gossip round interval in milliseconds; failure detection takes about four rounds.
    #[arg(long, env = "KVS_GOSSIP_INTERVAL_MS", default_value_t = 200)]
    pub gossip_interval_ms: u64,
    /// How long a request waits for missing causal dependencies before answering 503.
    #[arg(long, env = "KVS_DEPENDENCY_TIMEOUT_MS", default_value_t = 5000)]
    pub dependency_timeout_ms: u64,
    /// TCP port of the relay channel that carries forwarded requests between nodes, on the
    /// bind address's IP; 0 picks a free port. Either way the port is advertised by gossip.
    #[arg(long, env = "KVS_RELAY_PORT", default_value_t = 0)]
    pub relay_port: u16,
    /// Threads serving HTTP, and as many running background work (replication, relay).
    /// Lower it when several nodes share a host's cores.
    #[arg(long, env = "KVS_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// The most client connections the HTTP port holds at once; past it, new connections
    /// wait in the listen backlog until one closes.
    #[arg(long, env = "KVS_MAX_CLIENT_CONNECTIONS", default_value_t = 4096)]
    pub max_client_connections: usize,
    /// The node's memory target in MiB: the storage engine's cache and memtable, a reserve
    /// for the process, and the rest for values on their way (see [`MemoryBudget`]).
    #[arg(long, env = "KVS_MEMORY_MB", default_value_t = 384)]
    pub memory_mb: u64,
    /// Host names a browser may reach this node by, comma-separated, besides IP addresses,
    /// `localhost` and SOCKET_ADDRESS's host (a guard against DNS rebinding: see
    /// docs/security.md).
    #[arg(long, env = "KVS_ALLOWED_HOSTS")]
    pub allowed_hosts: Option<String>,
    /// Directory of this node's data; default `kvs-data/<ip>_<port>` under the working
    /// directory (`/data` in the Docker image).
    #[arg(long, env = "KVS_DATA_DIR")]
    pub data_dir: Option<String>,
    /// Keep data in memory only: a restarted node then starts empty and copies its shard.
    #[arg(long, env = "KVS_IN_MEMORY")]
    pub in_memory: bool,
    /// When writes reach the disk device: `periodic` (every KVS_SYNC_INTERVAL_MS; a crash of
    /// the process loses nothing, a power cut loses at most that interval) or `always`
    /// (before every write is answered).
    #[arg(long = "sync", env = "KVS_SYNC", default_value = "periodic")]
    pub sync: String,
    /// Interval of periodic syncs, in milliseconds.
    #[arg(long, env = "KVS_SYNC_INTERVAL_MS", default_value_t = 100)]
    pub sync_interval_ms: u64,
    /// Block cache of the storage engine, in MiB.
    /// 48 by default: a node holding 2,000,000 keys whose cache has filled (reads of old
    /// keys, the status page's key counts) measured 304 MB resident with 64 MiB, 244 MB
    /// with the cache still empty; issue 11's bound is 300 MB.
    #[arg(long, env = "KVS_CACHE_MB", default_value_t = 48)]
    pub cache_mb: u64,
    /// Size at which the storage engine's memtable (the latest writes, in memory) is written
    /// out as a table, in MiB. Measured on a node holding 2,000,000 keys: 64 MiB, 306 MB
    /// resident; 32 MiB, 237 MB; 16 MiB, 198 MB (prefill 26.6k, 25.4k and 24.6k PUT/s).
    #[arg(long, env = "KVS_MEMTABLE_MB", default_value_t = 32)]
    pub memtable_mb: u64,
    /// Space kept free on the data directory's filesystem: below it, clients' writes are
    /// answered 507 and only replication is stored; below half of it, nothing. At least
    /// twice the memtable plus 16 MiB (the default, 0, means that).
    #[arg(long, env = "KVS_DISK_RESERVE_MB", default_value_t = 0)]
    pub disk_reserve_mb: u64,
    /// Members of a shard that must hold a write before it is answered: a number,
    /// `majority` or `all`; a request's `"write-quorum"` field overrides it.
    #[arg(long, env = "KVS_WRITE_QUORUM", default_value = "1")]
    pub write_quorum: String,
    /// The store's shared secret (at least 16 bytes), the same on every node: it keys the
    /// causal-metadata tokens, so that a forged token or one of another store is refused.
    #[arg(long, env = "KVS_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// A file holding the cluster secret (a mounted Docker or Kubernetes secret); its
    /// surrounding whitespace is ignored.
    #[arg(long, env = "KVS_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<String>,
    /// The secret this node's data directory was stamped under, when rotating the cluster
    /// secret: the directory is stamped again with the new one. Unset, a directory stamped
    /// under another secret is refused.
    #[arg(long, env = "KVS_CLUSTER_SECRET_PREVIOUS", hide_env_values = true)]
    pub cluster_secret_previous: Option<String>,
    /// When set, view changes, add-member and reshard require `Authorization: Bearer
    /// <token>`; unset, they stay open as the course contract expects.
    #[arg(long, env = "KVS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// `text` (readable lines, the default) or `json` (one JSON object per line, with
    /// `ts`, `level`, `target` and `msg`, for log collectors).
    #[arg(long, env = "KVS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Allow `POST /kvs/fault/fail` and `/kvs/fault/recover` (`kvsctl fail`, `kvsctl
    /// recover`), which make this node behave as if cut off from the network: for tests and
    /// drills, never for a store in service.
    #[arg(long, env = "KVS_FAULT_INJECTION", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub fault_injection: bool,
    /// In a Kubernetes StatefulSet: derive VIEW from this pod's name (SOCKET_ADDRESS,
    /// `<set>-<ordinal>.<service>...:<port>`) and the set's first replica count; a pod of a
    /// higher ordinal joins later by add-member (see docs/kubernetes.md).
    #[arg(long, env = "KVS_STATEFULSET_REPLICAS")]
    pub statefulset_replicas: Option<u32>,
}

impl Config {
    /// The key relay connections authenticate with: from the cluster secret, or public.
    pub fn relay_key(&self) -> crate::relay::RelayKey {
        match &self.cluster_secret {
            Some(secret) => crate::relay::RelayKey::from_secret(secret.as_bytes()),
            None => crate::relay::RelayKey::open(),
        }
    }
}

/// How a node writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// One log record as a line of JSON (`KVS_LOG_FORMAT=json`).
pub fn json_log_line(ts: &str, level: log::Level, target: &str, msg: &str) -> String {
    serde_json::json!({"ts": ts, "level": level.as_str(), "target": target, "msg": msg}).to_string()
}

/// The cluster secret's bytes; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Vec<u8>);

impl ClusterSecret {
    /// Shorter secrets are refused: a guessable secret protects nothing.
    pub const MIN_BYTES: usize = 16;

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecret(<{} bytes>)", self.0.len())
    }
}

/// The admin token; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// Whether an `Authorization` header value presents this token, compared in constant
    /// time so that the comparison does not reveal how much of a guess was right.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        let Some(presented) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
            return false;
        };
        crate::codec::same_secret_bytes(presented.trim().as_bytes(), self.0.as_bytes())
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<hidden>)")
    }
}

/// When acknowledged writes are synced to the disk device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// By a background task at this interval.
    Periodic(Duration),
    /// Before each write is answered (concurrent writes share one sync).
    Always,
}

/// Where and how a node keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// `None`: in memory only.
    pub dir: Option<std::path::PathBuf>,
    pub sync: SyncMode,
    pub cache_bytes: u64,
    pub memtable_bytes: u64,
    /// See `storage::space`.
    pub disk_reserve_bytes: u64,
}

/// What a node keeps of values on their way, in bytes (from `KVS_MEMORY_MB`): the part of
/// the memory target left after the storage engine's cache and memtable and
/// [`MEMORY_RESERVE_MB`] for everything else, split between the outbox (own writes not yet
/// pushed; a peer further behind pulls from the engine instead), the recent log (writes
/// applied lately, for pulls; older ones come from a scan) and request bodies in flight
/// (past which a client's write is answered 503 at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    pub total_bytes: u64,
    pub outbox_bytes: usize,
    pub recent_bytes: usize,
    pub bodies_bytes: usize,
}

/// What the memory target keeps back for the process itself: code, runtimes, connection
/// buffers, the engine's other structures, push batches being encoded for each peer, and
/// the allocator's slack. With 96, a node that coordinated 1,500 writes of 1 MiB under a
/// 256 MiB target peaked at 257 MiB (its peers at 195); with 128 it stays under.
pub const MEMORY_RESERVE_MB: u64 = 128;
/// The least the queues get: a few of the largest values (1 MiB) each.
const MIN_QUEUES_MB: u64 = 16;

impl MemoryBudget {
    pub fn new(total_mb: u64, storage: &StorageConfig) -> Result<Self, String> {
        let engine_mb = (storage.cache_bytes + storage.memtable_bytes) >> 20;
        let least = engine_mb + MEMORY_RESERVE_MB + MIN_QUEUES_MB;
        if total_mb < least {
            return Err(format!(
                "must be at least {least} (KVS_CACHE_MB and KVS_MEMTABLE_MB, {MEMORY_RESERVE_MB} for the process, {MIN_QUEUES_MB} for values on their way)"
            ));
        }
        let queues = ((total_mb - engine_mb - MEMORY_RESERVE_MB) << 20) as usize;
        Ok(Self {
            total_bytes: total_mb << 20,
            outbox_bytes: queues / 2,
            recent_bytes: queues / 4,
            bodies_bytes: queues / 4,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub socket_address: NodeId,
    pub view: BTreeSet<NodeId>,
    pub shard_count: Option<u32>,
    pub api_format: ApiFormat,
    pub bind_address: SocketAddr,
    pub gossip_interval: Duration,
    pub dependency_timeout: Duration,
    pub relay_port: u16,
    pub workers: usize,
    pub max_client_connections: usize,
    /// Host names browsers may use besides addresses, `localhost` and this node's own.
    pub allowed_hosts: Vec<String>,
    pub memory: MemoryBudget,
    pub storage: StorageConfig,
    pub write_quorum: WriteQuorum,
    pub cluster_secret: Option<ClusterSecret>,
    /// The secret being rotated away from (`KVS_CLUSTER_SECRET_PREVIOUS`).
    pub previous_secret: Option<ClusterSecret>,
    pub admin_token: Option<AdminToken>,
    pub fault_injection: bool,
}

/// A configuration error: one line naming the variable at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

fn bad(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        problem: problem.into(),
    }
}

/// Empty variables (as `docker run -e SHARD_COUNT=` leaves them) count as absent.
fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn parse_addr(variable: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.trim().parse().map_err(|_| {
        bad(
            variable,
            format!("'{text}' is not an ip:port socket address"),
        )
    })
}

/// A node's identity: an ip:port address, or a DNS name with a port (see [`NodeId`]).
fn parse_node(variable: &'static str, text: &str) -> Result<NodeId, ConfigError> {
    text.trim()
        .parse()
        .map_err(|e: crate::identity::NodeIdError| bad(variable, e.to_string()))
}

impl Config {
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let socket_address = match present(&args.socket_address) {
            Some(text) => parse_node("SOCKET_ADDRESS", text)?,
            None => return Err(bad("SOCKET_ADDRESS", "is required (ip:port of this node)")),
        };
        if socket_address.ip().is_some_and(|ip| ip.is_unspecified()) {
            return Err(bad(
                "SOCKET_ADDRESS",
                "must be the node's real address, not 0.0.0.0",
            ));
        }
        let (mut view, joins_later) = match (present(&args.view), args.statefulset_replicas) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "KVS_STATEFULSET_REPLICAS",
                    "derives VIEW from the pod names: set one of them, not both",
                ))
            }
            (None, Some(replicas)) => statefulset_view(&socket_address, replicas)?,
            (Some(view_text), None) => {
                let mut view = BTreeSet::new();
                for part in view_text.split(',').filter(|p| !p.trim().is_empty()) {
                    view.insert(parse_node("VIEW", part)?);
                }
                (view, false)
            }
            (None, None) => {
                return Err(bad(
                    "VIEW",
                    "is required (comma-separated ip:port of the store's nodes)",
                ))
            }
        };
        let shard_count = match present(&args.shard_count) {
            // A pod beyond the StatefulSet's first replicas joins the store by add-member.
            _ if joins_later => None,
            None => None,
            Some(text) => Some(parse_shard_count(text, &view, socket_address.clone())?),
        };
        view.insert(socket_address.clone());
        let api_format = match args.api_format.trim() {
            "" | "2019" => ApiFormat::Y2019,
            "2020" => ApiFormat::Y2020,
            other => {
                return Err(bad(
                    "API_FORMAT",
                    format!("'{other}' is neither 2019 nor 2020"),
                ))
            }
        };
        let bind_address = match present(&args.bind_address) {
            Some(text) => parse_addr("BIND_ADDRESS", text)?,
            None => SocketAddr::from(([0, 0, 0, 0], socket_address.port())),
        };
        if args.gossip_interval_ms == 0 {
            return Err(bad("KVS_GOSSIP_INTERVAL_MS", "must be positive"));
        }
        if !(1..=64).contains(&args.workers) {
            return Err(bad("KVS_WORKERS", "must be between 1 and 64"));
        }
        if !(16..=1_000_000).contains(&args.max_client_connections) {
            return Err(bad(
                "KVS_MAX_CLIENT_CONNECTIONS",
                "must be between 16 and 1000000",
            ));
        }
        let storage = storage_config(args, socket_address.clone())?;
        let memory =
            MemoryBudget::new(args.memory_mb, &storage).map_err(|e| bad("KVS_MEMORY_MB", e))?;
        let write_quorum = args
            .write_quorum
            .parse()
            .map_err(|e: QuorumError| bad("KVS_WRITE_QUORUM", e.to_string()))?;
        let cluster_secret = cluster_secret(args)?;
        let admin_token = present(&args.admin_token).map(|t| AdminToken(t.to_owned()));
        let previous_secret =
            present(&args.cluster_secret_previous).map(|t| ClusterSecret(t.as_bytes().to_vec()));
        Ok(Self {
            cluster_secret,
            previous_secret,
            admin_token,
            fault_injection: args.fault_injection,
            write_quorum,
            memory,
            storage,
            socket_address,
            view,
            shard_count,
            api_format,
            bind_address,
            gossip_interval: Duration::from_millis(args.gossip_interval_ms),
            dependency_timeout: Duration::from_millis(args.dependency_timeout_ms),
            relay_port: args.relay_port,
            workers: args.workers,
            max_client_connections: args.max_client_connections,
            allowed_hosts: present(&args.allowed_hosts)
                .map(|list| {
                    list.split(',')
                        .map(|h| h.trim().to_ascii_lowercase())
                        .filter(|h| !h.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// The secret from `KVS_CLUSTER_SECRET` or the file `KVS_CLUSTER_SECRET_FILE` names.
fn cluster_secret(args: &Args) -> Result<Option<ClusterSecret>, ConfigError> {
    let (variable, text) = match (
        present(&args.cluster_secret),
        present(&args.cluster_secret_file),
    ) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(bad(
                "KVS_CLUSTER_SECRET",
                "set it or KVS_CLUSTER_SECRET_FILE, not both",
            ))
        }
        (Some(secret), None) => ("KVS_CLUSTER_SECRET", secret.to_owned()),
        (None, Some(path)) => (
            "KVS_CLUSTER_SECRET_FILE",
            std::fs::read_to_string(path)
                .map_err(|e| {
                    bad(
                        "KVS_CLUSTER_SECRET_FILE",
                        format!("cannot read {path}: {e}"),
                    )
                })?
                .trim()
                .to_owned(),
        ),
    };
    if text.len() < ClusterSecret::MIN_BYTES {
        return Err(bad(
            variable,
            format!(
                "a secret of {} bytes is too short (at least {}; `openssl rand -hex 32` makes one)",
                text.len(),
                ClusterSecret::MIN_BYTES
            ),
        ));
    }
    Ok(Some(ClusterSecret(text.into_bytes())))
}

fn storage_config(args: &Args, me: NodeId) -> Result<StorageConfig, ConfigError> {
    let sync = match args.sync.trim() {
        "" | "periodic" => {
            if args.sync_interval_ms == 0 {
                return Err(bad("KVS_SYNC_INTERVAL_MS", "must be positive"));
            }
            SyncMode::Periodic(Duration::from_millis(args.sync_interval_ms))
        }
        "always" => SyncMode::Always,
        other => {
            return Err(bad(
                "KVS_SYNC",
                format!("'{other}' is neither periodic nor always"),
            ))
        }
    };
    let dir = match (args.in_memory, present(&args.data_dir)) {
        (true, _) => None,
        (false, Some(dir)) => Some(std::path::PathBuf::from(dir)),
        (false, None) => Some(
            std::path::Path::new("kvs-data")
                .join(format!("{}_{}", me.host(), me.port()).replace([':', '[', ']'], "_")),
        ),
    };
    Ok(StorageConfig {
        dir,
        sync,
        cache_bytes: args.cache_mb.max(1) << 20,
        memtable_bytes: args.memtable_mb.max(1) << 20,
        disk_reserve_bytes: crate::storage::space::reserve_for(
            args.memtable_mb.max(1) << 20,
            args.disk_reserve_mb.saturating_mul(1 << 20),
        ),
    })
}

/// The `VIEW` of a StatefulSet's pod (`KVS_STATEFULSET_REPLICAS`): the names of the first
/// `replicas` pods, which differ from this pod's own name (`<set>-<ordinal>.<rest>:<port>`)
/// only in the ordinal. A pod of a higher ordinal (the set was scaled up) is added to them
/// and joins later, by add-member: it must not form a shard map of its own.
fn statefulset_view(me: &NodeId, replicas: u32) -> Result<(BTreeSet<NodeId>, bool), ConfigError> {
    const VARIABLE: &str = "KVS_STATEFULSET_REPLICAS";
    let NodeId::Name(name, port) = me else {
        return Err(bad(
            VARIABLE,
            "needs SOCKET_ADDRESS to be the pod's DNS name",
        ));
    };
    let (first, rest) = name.split_once('.').unwrap_or((name, ""));
    let (set, ordinal) = first
        .rsplit_once('-')
        .and_then(|(set, n)| Some((set, n.parse::<u32>().ok()?)))
        .ok_or_else(|| {
            bad(
                VARIABLE,
                format!("SOCKET_ADDRESS {me} is not a StatefulSet pod's name (<set>-<ordinal>...)"),
            )
        })?;
    if replicas == 0 {
        return Err(bad(VARIABLE, "must be at least 1"));
    }
    let dot = if rest.is_empty() { "" } else { "." };
    let mut view = BTreeSet::new();
    for i in 0..replicas {
        let text = format!("{set}-{i}{dot}{rest}:{port}");
        view.insert(parse_node(VARIABLE, &text)?);
    }
    view.insert(me.clone());
    Ok((view, ordinal >= replicas))
}

fn parse_shard_count(text: &str, view: &BTreeSet<NodeId>, me: NodeId) -> Result<u32, ConfigError> {
    let count: u32 = text
        .parse()
        .map_err(|_| bad("SHARD_COUNT", format!("'{text}' is not a positive integer")))?;
    if count == 0 {
        return Err(bad("SHARD_COUNT", "must be at least 1"));
    }
    if !view.contains(&me) {
        // The first shard map is computed from VIEW alone: every node must see the same VIEW.
        return Err(bad(
            "VIEW",
            "must include SOCKET_ADDRESS when SHARD_COUNT is set",
        ));
    }
    if view.len() < MIN_REPLICAS * count as usize {
        return Err(bad(
            "VIEW",
            format!(
                "{} nodes cannot form {count} shards of at least {MIN_REPLICAS} (SHARD_COUNT={count})",
                view.len()
            ),
        ));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_log_line_stays_one_line_whatever_the_message() {
        let line = json_log_line(
            "1",
            log::Level::Warn,
            "kvs::relay",
            "a \"quoted\"\nsecond line",
        );
        assert!(!line.contains('\n'), "{line}");
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["msg"], "a \"quoted\"\nsecond line");
        assert_eq!(back["level"], "WARN");
    }

    fn args(socket: Option<&str>, view: Option<&str>, shards: Option<&str>) -> Args {
        Args {
            socket_address: socket.map(Into::into),
            view: view.map(Into::into),
            shard_count: shards.map(Into::into),
            api_format: "2019".into(),
            bind_address: None,
            gossip_interval_ms: 200,
            dependency_timeout_ms: 5000,
            relay_port: 0,
            workers: 2,
            max_client_connections: 4096,
            memory_mb: 384,
            allowed_hosts: None,
            data_dir: None,
            in_memory: false,
            sync: "periodic".into(),
            sync_interval_ms: 100,
            cache_mb: 64,
            memtable_mb: 32,
            disk_reserve_mb: 0,
            write_quorum: "1".into(),
            cluster_secret: None,
            cluster_secret_file: None,
            cluster_secret_previous: None,
            admin_token: None,
            log_format: LogFormat::Text,
            fault_injection: false,
            statefulset_replicas: None,
        }
    }

    #[test]
    fn the_cluster_secret_comes_from_the_variable_or_a_file_never_both() {
        let mut a = args(Some("10.10.0.2:8080"), Some(VIEW), Some("2"));
        assert_eq!(Config::from_args(&a).unwrap().cluster_secret, None);
        a.cluster_secret = Some("0123456789abcdef0123".into());
        let secret = Config::from_args(&a).unwrap().cluster_secret.unwrap();
        assert_eq!(secret.as_bytes(), b"0123456789abcdef0123");
        assert!(!format!("{secret:?}").contains("0123"), "printed");
        let file = std::env::temp_dir().join(format!("kvs-secret-{}", std::process::id()));
        std::fs::write(&file, "  fedcba9876543210fedc\n").unwrap();
        a.cluster_secret_file = Some(file.display().to_string());
        let err = Config::from_args(&a).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        a.cluster_secret = None;
        let secret = Config::from_args(&a).unwrap().cluster_secret.unwrap();
        assert_eq!(secret.as_bytes(), b"fedcba9876543210fedc");
        std::fs::remove_file(&file).unwrap();
        let err = Config::from_args(&a).unwrap_err().to_string();
        assert!(
            err.starts_with("KVS_CLUSTER_SECRET_FILE: cannot read"),
            "{err}"
        );
        a.cluster_secret_file = None;
        a.cluster_secret = Some("short".into());
        let err = Config::from_args(&a).unwrap_err().to_string();
        assert!(err.contains("too short"), "{err}");
    }

    #[test]
    fn the_admin_token_is_presented_as_a_bearer_token() {
        let mut a = args(Some("10.10.0.2:8080"), Some(VIEW), Some("2"));
        assert!(Config::from_args(&a).unwrap().admin_token.is_none());
        a.admin_token = Some("s3cret-token".into());
        let token = Config::from_args(&a).unwrap().admin_token.unwrap();
        assert!(token.admits(Some("Bearer s3cret-token")));
        assert!(!token.admits(Some("Bearer s3cret-tokeN")));
        assert!(!token.admits(Some("Bearer s3cret")));
        assert!(!token.admits(Some("s3cret-token")));
        assert!(!token.admits(None));
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn the_write_quorum_is_one_unless_set() {
        let mut a = args(Some("10.10.0.2:8080"), Some(VIEW), Some("2"));
        assert_eq!(
            Config::from_args(&a).unwrap().write_quorum,
            WriteQuorum::Count(1)
        );
        a.write_quorum = "majority".into();
        assert_eq!(
            Config::from_args(&a).unwrap().write_quorum,
            WriteQuorum::Majority
        );
        a.write_quorum = "0".into();
        let err = Config::from_args(&a).unwrap_err().to_string();
        assert!(err.contains("KVS_WRITE_QUORUM"), "{err}");
    }

    #[test]
    fn storage_is_durable_by_default_in_a_directory_per_node() {
        let c = Config::from_args(&args(Some("10.10.0.2:8080"), Some(VIEW), Some("2"))).unwrap();
        assert_eq!(
            c.storage.dir.as_deref(),
            Some(std::path::Path::new("kvs-data/10.10.0.2_8080"))
        );
        assert_eq!(
            c.storage.sync,
            SyncMode::Periodic(Duration::from_millis(100))
        );
        let mut a = args(Some("10.10.0.2:8080"), Some(VIEW), Some("2"));
        a.in_memory = true;
        a.sync = "always".into();
        let c = Config::from_args(&a).unwrap();
        assert_eq!((c.storage.dir, c.storage.sync), (None, SyncMode::Always));
        a.sync = "sometimes".into();
        assert_eq!(Config::from_args(&a).unwrap_err().variable, "KVS_SYNC");
    }

    const VIEW: &str = "10.10.0.2:8080,10.10.0.3:8080,10.10.0.4:8080,10.10.0.5:8080";

    #[test]
    fn a_good_configuration_parses() {
        let c = Config::from_args(&args(Some("10.10.0.2:8080"), Some(VIEW), Some("2"))).unwrap();
        assert_eq!(c.view.len(), 4);
        assert_eq!(c.shard_count, Some(2));
        assert_eq!(c.bind_address.to_string(), "0.0.0.0:8080");
        assert_eq!(c.api_format, ApiFormat::Y2019);
    }

    #[test]
    fn each_error_names_its_variable() {
        let cases = [
            (args(None, Some(VIEW), Some("2")), "SOCKET_ADDRESS"),
            (args(Some("nope"), Some(VIEW), Some("2")), "SOCKET_ADDRESS"),
            (args(Some("10.10.0.2:8080"), None, Some("2")), "VIEW"),
            (
                args(Some("10.10.0.2:8080"), Some("10.10.0.2:8080,x"), None),
                "VIEW",
            ),
            (
                args(Some("10.10.0.2:8080"), Some(VIEW), Some("0")),
                "SHARD_COUNT",
            ),
            (
                args(Some("10.10.0.2:8080"), Some(VIEW), Some("two")),
                "SHARD_COUNT",
            ),
            (args(Some("10.10.0.2:8080"), Some(VIEW), Some("3")), "VIEW"),
            (args(Some("10.10.0.9:8080"), Some(VIEW), Some("2")), "VIEW"),
        ];
        for (a, variable) in cases {
            let err = Config::from_args(&a).unwrap_err();
            assert_eq!(err.variable, variable, "{err}");
            assert!(!err.to_string().contains('\n'));
        }
    }

    #[test]
    fn a_joining_node_needs_no_shard_count_and_is_added_to_its_view() {
        let c = Config::from_args(&args(Some("10.10.0.8:8080"), Some(VIEW), Some(""))).unwrap();
        assert_eq!(c.shard_count, None);
        assert!(c.view.contains(&"10.10.0.8:8080".parse().unwrap()));
    }

    #[test]
    fn a_statefulset_pod_derives_its_view_from_its_name() {
        let me: NodeId = "kvs-1.kvs.db.svc.cluster.local:8080".parse().unwrap();
        let (view, later) = statefulset_view(&me, 3).unwrap();
        let names: Vec<String> = view.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "kvs-0.kvs.db.svc.cluster.local:8080",
                "kvs-1.kvs.db.svc.cluster.local:8080",
                "kvs-2.kvs.db.svc.cluster.local:8080"
            ]
        );
        assert!(!later);
        let grown: NodeId = "kvs-3.kvs.db.svc.cluster.local:8080".parse().unwrap();
        let (view, later) = statefulset_view(&grown, 3).unwrap();
        assert_eq!(view.len(), 4);
        assert!(later, "a pod beyond the first replicas joins by add-member");
        let ip: NodeId = "10.0.0.1:8080".parse().unwrap();
        assert!(statefulset_view(&ip, 3).is_err());
        let unnumbered: NodeId = "kvs.db:8080".parse().unwrap();
        assert!(statefulset_view(&unnumbered, 3).is_err());
    }
}
