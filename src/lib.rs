//! kvs: a sharded, replicated key-value store with causal consistency.
//!
//! A request's path through a node:
//!
//! - [`http`] parses and validates it against the contract, then asks [`node::Node::route`]
//!   where the key lives. Keys map to shards by rendezvous hashing over the [`shard`] map.
//! - A key of another shard is forwarded to a live member of that shard over the [`relay`]
//!   channel (or HTTP, [`peer`], until the member's relay port is known), and its answer is
//!   passed back unchanged.
//! - A key of this node's shard is served by [`node`]: it first waits until the writes the
//!   client's causal metadata depends on are applied here ([`causal`]), then reads or writes
//!   [`storage`].
//! - A write is answered at once and then pushed to the other members of the shard in
//!   batches; replicas apply writes in causal order and pull what they miss ([`replication`]).
//! - Nodes learn who is up, and each other's shard maps and progress, by gossip
//!   ([`membership`]). Adding a member and resharding are coordinated by [`admin`].

pub mod admin;
pub mod causal;
pub mod codec;
pub mod config;
pub mod error;
pub mod http;
pub mod membership;
pub mod node;
pub mod peer;
pub mod relay;
pub mod replication;
pub mod shard;
pub mod storage;

use std::sync::Arc;

pub use config::{Args, Config};

/// Nodes are named by the socket address clients and peers reach them at.
pub type NodeId = std::net::SocketAddr;

/// Runs a node until its HTTP server stops or the process is told to stop.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let map = match config.shard_count {
        Some(count) => shard::ShardMap::initial(&config.view, count)?,
        None => shard::ShardMap::none(),
    };
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
    let membership = membership::Membership::start(&config, gossip).await?;
    log::info!(
        "node {} listening on {} ({:?} format), {} shards known",
        config.socket_address,
        config.bind_address,
        config.api_format,
        map.shards.len()
    );
    let node = Arc::new(node::Node::new(config, membership, map));
    replication::spawn_background(&node);
    tokio::spawn(admin::expire_stale_freezes(node.clone()));
    tokio::spawn(relay::serve(
        relay_listener,
        http::relay_handler(node.clone()),
    ));
    tokio::spawn(node::drop_relays_to_lost_peers(node.clone()));
    let server = http::server(node)?;
    let handle = server.handle();
    tokio::select! {
        result = server => result?,
        _ = shutdown_signal() => {
            log::info!("shutting down");
            handle.stop(true).await;
        }
    }
    Ok(())
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
