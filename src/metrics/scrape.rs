//! The `/metrics` page: the process's events ([`super::Registry`]) and the node's state,
//! read when the scrape comes.

use std::sync::Arc;

use ::metrics::{Key, Label, Recorder};
use actix_web::{web, HttpResponse};
use metrics_exporter_prometheus::PrometheusBuilder;

use super::{describe, METADATA};
use crate::membership::GossipStats;
use crate::node::Node;
use crate::shard::ShardId;
use crate::NodeId;

/// Where the page is served.
pub const PATH: &str = "/metrics";
/// The Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Live keys of this node's shard held here, labelled with the shard.
pub const SHARD_KEYS: &str = "kvs_shard_keys";
/// Per shard peer, writes this node coordinated that the peer has not acknowledged.
pub const REPLICATION_LAG: &str = "kvs_replication_lag_writes";
/// Per shard peer, those of them still in the outbox, to be pushed from there.
pub const OUTBOX_DEPTH: &str = "kvs_replication_outbox_writes";
/// Nodes gossip sees alive, this one included.
pub const LIVE_NODES: &str = "kvs_gossip_live_nodes";
/// Gossip datagrams, by `direction` and `outcome`.
pub const GOSSIP_DATAGRAMS: &str = "kvs_gossip_datagrams_total";
/// Gossip bytes, by `direction`.
pub const GOSSIP_BYTES: &str = "kvs_gossip_bytes_total";
/// Times the gossip task stopped and was started again.
pub const GOSSIP_RESTARTS: &str = "kvs_gossip_restarts_total";
/// Node incarnations gossip holds state for.
pub const GOSSIP_NODE_STATES: &str = "kvs_gossip_node_states";
/// Syncs of the storage engine's journal to the device.
pub const STORAGE_SYNCS: &str = "kvs_storage_syncs_total";
/// Scans of every key stored (at start, on a change of shard map, purge rounds with
/// tombstones, copies and reshards): never for a count.
pub const STORAGE_SCANS: &str = "kvs_storage_scans_total";
/// Free bytes on the data directory's filesystem, and the reserve kept.
pub const STORAGE_FREE: &str = "kvs_storage_free_bytes";
pub const STORAGE_RESERVE: &str = "kvs_storage_reserve_bytes";
/// 0: writes taken; 1: clients' writes refused (507); 2: nothing written; 3: a write failed.
pub const STORAGE_FULL: &str = "kvs_storage_disk_full";

/// `GET /metrics`.
pub async fn handle(node: web::Data<Arc<Node>>) -> HttpResponse {
    // Every figure is kept as it changes (the key count too): rendering scans nothing.
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(page(node.get_ref()))
}

/// The whole page.
pub fn page(node: &Node) -> String {
    let mut page = super::registry().render();
    page.push_str(&NodeState::of(node).render());
    page
}

/// One shard peer's replication, as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub peer: NodeId,
    /// Writes this node coordinated that the peer has not acknowledged.
    pub lag: u64,
    /// Those of them in the outbox. Fewer than `lag` when the peer fell out of the
    /// outbox's window (it was down for long) and pulls what it lacks instead.
    pub outbox: u64,
}

/// What a node's state pages show, read at scrape time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// This node's shard and the live keys of it held here; none outside every shard.
    pub shard_keys: Option<(ShardId, u64)>,
    pub peers: Vec<PeerState>,
    pub live_nodes: usize,
    pub gossip: GossipStats,
    /// Syncs to the device so far (none in memory).
    pub syncs: u64,
    /// Scans of every stored key so far.
    pub scans: u64,
    /// Free bytes, reserve and room on a durable node's disk.
    pub disk: Option<(u64, u64, crate::storage::space::Room)>,
}

impl NodeState {
    pub fn of(node: &Node) -> Self {
        // Every write this node coordinates enters the outbox in sequence order, so the
        // ring ends at the latest one and a peer's share of it is the newest `lag` writes.
        let held = node.local.outbox.held() as u64;
        let peers = node
            .replication_lag()
            .into_iter()
            .map(|(peer, lag)| PeerState {
                peer,
                lag,
                outbox: lag.min(held),
            })
            .collect();
        Self {
            shard_keys: node
                .routing
                .my_shard()
                .map(|shard| (shard, node.live_key_count() as u64)),
            peers,
            live_nodes: node.membership.up_nodes().len(),
            gossip: node.membership.counters().snapshot(),
            syncs: node.local.store.backend().map_or(0, |b| b.syncs()),
            scans: node.local.store.scans(),
            disk: node.local.store.space(),
        }
    }

    /// Renders the state through a recorder made for this scrape: a shard or a peer that
    /// is gone is gone from the page, rather than stay at its last value as it would in a
    /// recorder that lives on.
    pub fn render(&self) -> String {
        let recorder = PrometheusBuilder::new().build_recorder();
        describe(
            &recorder,
            SHARD_KEYS,
            "Live keys of this node's shard held by this node (kept as keys change).",
        );
        describe(
            &recorder,
            REPLICATION_LAG,
            "Writes this node coordinated that a peer of its shard has not acknowledged yet.",
        );
        describe(&recorder, OUTBOX_DEPTH, "Writes this node coordinated that a peer of its shard has not acknowledged and that wait in this node's replication outbox to be pushed to it; a peer that lags by more has fallen out of the outbox and pulls what it lacks instead.");
        describe(&recorder, LIVE_NODES, "Nodes the gossip failure detector sees alive, this one included, less those an administrator removed from the view.");
        let gauge = |name: &'static str, labels: Vec<Label>, value: f64| {
            recorder
                .register_gauge(&Key::from_parts(name, labels), &METADATA)
                .set(value);
        };
        if let Some((shard, keys)) = self.shard_keys {
            gauge(
                SHARD_KEYS,
                vec![Label::new("shard", shard.to_string())],
                keys as f64,
            );
        }
        for peer in &self.peers {
            let label = || vec![Label::new("peer", peer.peer.to_string())];
            gauge(REPLICATION_LAG, label(), peer.lag as f64);
            gauge(OUTBOX_DEPTH, label(), peer.outbox as f64);
        }
        gauge(LIVE_NODES, Vec::new(), self.live_nodes as f64);
        self.render_gossip(&recorder);
        describe(&recorder, STORAGE_SYNCS, "Syncs of the storage engine's journal to the device: by the periodic sync (KVS_SYNC=periodic), or before answering a write with KVS_SYNC=always, on the coordinator and on every peer that acknowledges it; concurrent writes share one.");
        recorder
            .register_counter(&Key::from_parts(STORAGE_SYNCS, Vec::new()), &METADATA)
            .absolute(self.syncs);
        describe(&recorder, STORAGE_SCANS, "Scans of every key this node stores: at start, when the shard map changes, by purge rounds while tombstones are stored, and to copy a shard; never to answer a count, which is kept as keys change.");
        recorder
            .register_counter(&Key::from_parts(STORAGE_SCANS, Vec::new()), &METADATA)
            .absolute(self.scans);
        if let Some((free, reserve, room)) = self.disk {
            use crate::storage::space::Room;
            describe(&recorder, STORAGE_FREE, "Free bytes on the data directory's filesystem, as the last write or readiness check found them.");
            describe(&recorder, STORAGE_RESERVE, "Bytes kept free on the data directory's filesystem (KVS_DISK_RESERVE_MB): below it clients' writes are refused, below half of it nothing is written.");
            describe(&recorder, STORAGE_FULL, "0: writes are taken; 1: below the reserve, clients' writes are answered 507 and only replication is stored; 2: below half the reserve, nothing is written; 3: a write failed (over a quota, a device error), nothing is written until the node restarts itself once the disk takes writes again.");
            gauge(STORAGE_FREE, Vec::new(), free as f64);
            gauge(STORAGE_RESERVE, Vec::new(), reserve as f64);
            let full = match room {
                Room::Any => 0.0,
                Room::Replication => 1.0,
                Room::None => 2.0,
                Room::Failed => 3.0,
            };
            gauge(STORAGE_FULL, Vec::new(), full);
        }
        recorder.handle().render()
    }

    fn render_gossip(&self, recorder: &metrics_exporter_prometheus::PrometheusRecorder) {
        describe(recorder, GOSSIP_DATAGRAMS, "Gossip datagrams: heard (in) by outcome (accepted; unauthenticated: no tag that holds with the cluster secret; replayed: seen before or sent outside the time horizon; malformed: not a chitchat datagram; refused: against the gossip rules or bounds; cut: heard with the digest entries of unknown nodes cut, the node holding its bound of node states), and sent (out) by outcome (sent; too_large: did not fit once sealed).");
        describe(
            recorder,
            GOSSIP_BYTES,
            "Gossip bytes heard (in) and sent (out) on the gossip port.",
        );
        describe(
            recorder,
            GOSSIP_RESTARTS,
            "Times this node's gossip task stopped and was started again as a new incarnation.",
        );
        describe(
            recorder,
            GOSSIP_NODE_STATES,
            "Node incarnations this node's gossip holds state for, live or dead (at most 128).",
        );
        let counter = |name: &'static str, labels: Vec<Label>, value: u64| {
            recorder
                .register_counter(&Key::from_parts(name, labels), &METADATA)
                .absolute(value);
        };
        let g = &self.gossip;
        let datagrams = [
            ("in", "accepted", g.accepted),
            ("in", "unauthenticated", g.unauthenticated),
            ("in", "replayed", g.replayed),
            ("in", "malformed", g.malformed),
            ("in", "refused", g.refused),
            ("in", "cut", g.cut),
            ("out", "sent", g.sent),
            ("out", "too_large", g.too_large),
        ];
        for (direction, outcome, value) in datagrams {
            let labels = vec![
                Label::from_static_parts("direction", direction),
                Label::from_static_parts("outcome", outcome),
            ];
            counter(GOSSIP_DATAGRAMS, labels, value);
        }
        for (direction, value) in [("in", g.bytes_in), ("out", g.bytes_out)] {
            let labels = vec![Label::from_static_parts("direction", direction)];
            counter(GOSSIP_BYTES, labels, value);
        }
        counter(GOSSIP_RESTARTS, Vec::new(), g.restarts);
        recorder
            .register_gauge(&Key::from_parts(GOSSIP_NODE_STATES, Vec::new()), &METADATA)
            .set(g.node_states as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> NodeId {
        NodeId::from(std::net::SocketAddr::from(([10, 0, 0, i], 8085)))
    }

    fn lines(page: &str) -> Vec<&str> {
        let mut lines: Vec<&str> = page.lines().filter(|l| !l.is_empty()).collect();
        lines.sort_unstable();
        lines
    }

    #[test]
    fn the_state_of_a_node_in_a_shard() {
        let state = NodeState {
            shard_keys: Some((1, 1200)),
            peers: vec![
                PeerState {
                    peer: addr(2),
                    lag: 0,
                    outbox: 0,
                },
                PeerState {
                    peer: addr(3),
                    lag: 30_000,
                    outbox: 20_000,
                },
            ],
            live_nodes: 3,
            gossip: GossipStats::default(),
            syncs: 0,
            scans: 0,
            disk: None,
        };
        let page = state.render();
        let samples: Vec<&str> = lines(&page)
            .into_iter()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| !l.starts_with("kvs_gossip_") || l.starts_with(LIVE_NODES))
            .filter(|l| !l.starts_with(STORAGE_SYNCS) && !l.starts_with(STORAGE_SCANS))
            .collect();
        assert_eq!(
            samples,
            [
                "kvs_gossip_live_nodes 3",
                r#"kvs_replication_lag_writes{peer="10.0.0.2:8085"} 0"#,
                r#"kvs_replication_lag_writes{peer="10.0.0.3:8085"} 30000"#,
                r#"kvs_replication_outbox_writes{peer="10.0.0.2:8085"} 0"#,
                r#"kvs_replication_outbox_writes{peer="10.0.0.3:8085"} 20000"#,
                r#"kvs_shard_keys{shard="1"} 1200"#,
            ],
            "{page}"
        );
        for name in [SHARD_KEYS, REPLICATION_LAG, OUTBOX_DEPTH, LIVE_NODES] {
            assert!(page.contains(&format!("# TYPE {name} gauge\n")), "{page}");
            assert!(page.contains(&format!("# HELP {name} ")), "{page}");
        }
    }

    #[test]
    fn a_node_outside_every_shard_shows_no_keys_and_no_peers() {
        let state = NodeState {
            shard_keys: None,
            peers: Vec::new(),
            live_nodes: 1,
            gossip: GossipStats::default(),
            syncs: 0,
            scans: 0,
            disk: None,
        };
        let page = state.render();
        assert!(!page.contains(SHARD_KEYS), "{page}");
        assert!(!page.contains(REPLICATION_LAG), "{page}");
        assert!(page.contains("kvs_gossip_live_nodes 1\n"), "{page}");
    }
}
