//! kvs: a sharded, replicated key-value store with causal consistency.
//!
//! A request's path through a node:
//!
//! - [`http`] parses and validates it against the contract, then asks [`node::Node::route`]
//!   where the key lives. Keys map to shards by rendezvous hashing over the [`shard`] map.
//! - A key of another shard is forwarded to a live member of that shard over the [`relay`]
//!   channel (its port learnt by gossip), and its answer is passed back unchanged. Every
//!   other message between nodes (replication, pulls, map changes, reshard phases) travels
//!   on the same channel too: sent through [`peer::Internode`] (one method per message,
//!   with an in-memory implementation for tests), served by [`internal`]. Its connections
//!   start with a handshake keyed by the cluster secret; the client port serves clients
//!   only.
//! - A key of this node's shard is served by [`node`] (its local replica, routing and reshard
//!   state, each a part of its own): it first waits until the writes the
//!   client's causal metadata depends on are applied here ([`causal`]), or relays the request
//!   to the node that issued the client's token, which has them; then it reads or writes
//!   [`storage`], which keeps every key in memory and journals every write to disk (fjall,
//!   behind the `storage::Backend` seam) before it is answered.
//! - A restarted node starts from what [`recovery`] reads back from its data directory: its
//!   keys, its applied clock and own sequence number, and its shard map.
//! - A write is answered at once and then pushed to the other members of the shard in
//!   batches; replicas apply writes in causal order and pull what they miss ([`replication`]).
//! - Nodes learn who is up, and each other's shard maps and progress, by gossip
//!   ([`membership`]), whose values are sealed with the cluster secret. Adding a member and resharding are coordinated by [`admin`].
//! - What the node does and how it stands (requests, forwarding, replication lag, keys,
//!   live nodes, administrative changes) is exposed to Prometheus at `/metrics` ([`metrics`]).

pub mod admin;
pub mod budget;
pub mod causal;
pub mod codec;
pub mod config;
pub mod error;
pub mod fault;
#[cfg(test)]
mod fuzz;
pub mod health;
pub mod http;
pub mod identity;
pub mod internal;
pub mod linear;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod quorum;
pub mod recovery;
pub mod relay;
pub mod replication;
pub mod shard;
pub mod status;
pub mod storage;

use std::sync::Arc;

pub use config::{Args, Config};

pub use identity::NodeId;

/// Runs a node until its HTTP server stops or the process is told to stop.
pub async fn run(config: Config) -> anyhow::Result<()> {
    announce_secrets(&config);
    let initial = match config.shard_count {
        Some(count) => shard::ShardMap::initial(&config.view, count)?,
        None => shard::ShardMap::none(),
    };
    let start = open_storage(&config, initial)?;
    let map = start.map.clone();
    // Bound before gossip starts, so that the port peers learn is already listening.
    let relay_bind = std::net::SocketAddr::new(config.bind_address.ip(), config.relay_port);
    let relay_listener = tokio::net::TcpListener::bind(relay_bind)
        .await
        .map_err(|e| anyhow::anyhow!("relay channel: cannot listen on {relay_bind}: {e}"))?;
    let relay_port = relay_listener.local_addr()?.port();
    let gossip = vec![
        (membership::KEY_MAP.to_owned(), serde_json::to_string(&map)?),
        (membership::KEY_RELAY.to_owned(), relay_port.to_string()),
    ];
    let fault = Arc::new(fault::FaultSwitch::new(config.fault_injection));
    if fault.is_enabled() {
        log::warn!("KVS_FAULT_INJECTION is set: /kvs/fault/fail can cut this node off");
        tokio::spawn(fault::expire_failures(fault.clone()));
    }
    let membership = membership::Membership::start(&config, gossip, fault.gossip_faults()).await?;
    log::info!(
        "node {} listening on {} ({:?} format), {} shards known",
        config.socket_address,
        config.bind_address,
        config.api_format,
        map.shards.len()
    );
    let node = Arc::new(node::Node::new(config, membership, start, fault));
    replication::spawn_background(&node);
    if let config::SyncMode::Periodic(interval) = node.config.storage.sync {
        tokio::spawn(sync_periodically(node.clone(), interval));
    }
    tokio::spawn(admin::expire_stale_freezes(node.clone()));
    tokio::spawn(relay::serve_with(
        relay_listener,
        node.config.relay_key(),
        node.fault.subscribe(),
        node::known_peers(&node),
        internal::relay_handler(node.clone()),
    ));
    tokio::spawn(node::drop_relays_to_lost_peers(node.clone()));
    tokio::spawn(node::purge_tombstones(node.clone()));
    tokio::spawn(status::publish_stats(node.clone()));
    tokio::spawn(metrics::upkeep());
    let server = http::server(node.clone())?;
    let handle = server.handle();
    tokio::select! {
        result = server => result?,
        _ = shutdown_signal() => {
            log::info!("shutting down");
            handle.stop(true).await;
            hand_over_last_writes(&node).await;
        }
    }
    if let Some(backend) = node.local.store.backend() {
        backend.sync()?;
    }
    Ok(())
}

/// How long a stopping node waits for its shard peers to hold its last writes.
const SHUTDOWN_FLUSH: std::time::Duration = std::time::Duration::from_secs(3);

/// Pushes this node's last writes to its live shard peers before it stops (bounded by
/// [`SHUTDOWN_FLUSH`]): they are in its journal either way, but a client whose token
/// depends on them would otherwise wait, or get a 503, until this node is back. A rolling
/// restart (Kubernetes, `docker stop`) then never leaves a write readable only here.
async fn hand_over_last_writes(node: &node::Node) {
    let peers: Vec<NodeId> = node
        .routing
        .shard_peers()
        .into_iter()
        .filter(|p| node.membership.is_up(p))
        .collect();
    if !replication::push::flush(node, &peers, SHUTDOWN_FLUSH).await {
        log::warn!("stopping before every shard peer acknowledged this node's last writes");
    }
}

/// Keys the causal-metadata tokens with the cluster secret, and says once what is open.
fn announce_secrets(config: &Config) {
    match &config.cluster_secret {
        Some(secret) => {
            causal::key_tokens_with(secret.as_bytes());
            log::info!(
                "causal-metadata tokens, relay connections and gossip values are keyed with \
                 the cluster secret"
            );
        }
        None => log::warn!(
            "KVS_CLUSTER_SECRET is not set: anyone who reaches this node's ports can act as a \
             node, and causal-metadata tokens are checksummed, not authenticated"
        ),
    }
    if config.admin_token.is_none() {
        log::info!("KVS_ADMIN_TOKEN is not set: view changes, add-member and reshard are open");
    }
}

/// The node's data and state: read back from its data directory, or new (`--in-memory`).
fn open_storage(config: &Config, initial: shard::ShardMap) -> anyhow::Result<recovery::Recovered> {
    let me = config.socket_address.clone();
    let Some(dir) = &config.storage.dir else {
        log::warn!("data is kept in memory only (--in-memory): a restarted node starts empty");
        return Ok(recovery::Recovered::in_memory(me, initial));
    };
    let started = std::time::Instant::now();
    let disk = storage::disk::Disk::open(
        dir,
        config.storage.cache_bytes,
        config.storage.memtable_bytes,
    )
    .map_err(|e| anyhow::anyhow!("KVS_DATA_DIR {}: {e}", dir.display()))?;
    let disk = Arc::new(disk);
    let start = recovery::Recovered::from_backend(disk.clone(), me, initial)
        .and_then(|start| {
            let secret = config.cluster_secret.as_ref().map(|s| s.as_bytes());
            let previous = config.previous_secret.as_ref().map(|s| s.as_bytes());
            recovery::DirStamp::check_and_stamp(disk.as_ref(), &start.map, secret, previous)?;
            Ok(start)
        })
        .map_err(|e| anyhow::anyhow!("KVS_DATA_DIR {}: {e}", dir.display()))?;
    let start = recovery::Recovered {
        store: start.store.with_space(storage::space::DiskSpace::new(
            dir,
            config.storage.disk_reserve_bytes,
        )),
        ..start
    };
    log::info!(
        "data directory {}: {} keys, era {}, own sequence {}, recovered in {:?}",
        dir.display(),
        start.keys,
        start.replica.era(),
        start.replica.own_seq(),
        started.elapsed()
    );
    Ok(start)
}

/// Group commit for `KVS_SYNC=periodic`: whatever was written in the last interval reaches
/// the device in one sync.
async fn sync_periodically(node: Arc<node::Node>, interval: std::time::Duration) {
    let Some(backend) = node.local.store.backend().cloned() else {
        return;
    };
    loop {
        tokio::time::sleep(interval).await;
        let backend = backend.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || backend.sync()).await {
            // The disk fails (or the node stops); later syncs fail at once until it restarts.
            node.local.disk_failed(e);
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
