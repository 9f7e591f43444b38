//! Cluster membership by gossip (chitchat): who is up, and the small state each node
//! advertises (its shard map and how far it has applied writes).
//!
//! Chitchat's phi-accrual failure detector judges liveness from heartbeats; this module turns
//! its view into a plain [`LiveSet`] on a watch channel, so the rest of the node never touches
//! the gossip library. The administrative view endpoints layer a [`ViewAdmin`] on top.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion,
};
use tokio::sync::watch;

pub mod auth;
pub mod guard;
mod seal;
pub mod transport;
pub mod wire;

pub use seal::GossipSeal;
pub use transport::{GossipCounters, GossipStats};

use crate::causal::CausalMetadata;
use crate::config::Config;
use crate::error::KvsError;
use crate::identity::Source;
use crate::NodeId;

/// Gossip key holding the node's shard map (JSON).
pub const KEY_MAP: &str = "map";
/// Gossip key holding the node's applied clock (a causal-metadata token).
pub const KEY_APPLIED: &str = "applied";
/// Gossip key holding the node's relay port (see [`crate::relay`]).
pub const KEY_RELAY: &str = "relay";
/// Gossip key holding what the node reports of itself to operators (see [`crate::status`]).
pub const KEY_STATS: &str = "stats";
/// Every key a node publishes. A datagram carrying another is refused ([`guard`]), so a
/// version of kvs that publishes a new key must come after one that accepts it.
pub const PUBLISHED_KEYS: [&str; 4] = [KEY_MAP, KEY_APPLIED, KEY_RELAY, KEY_STATS];

/// What one live node advertises.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerState {
    pub generation: u64,
    pub map: Option<String>,
    pub applied: Option<String>,
    pub relay_port: Option<u16>,
}

impl LiveSet {
    /// The applied clock `node` advertises by gossip, if it is live and its token decodes.
    pub fn applied_of(&self, node: &NodeId) -> Option<CausalMetadata> {
        let token = self.nodes.get(node)?.applied.as_deref()?;
        CausalMetadata::decode_stored(token).ok()
    }
}

impl PeerState {
    /// Where `node`, advertising this state, listens for the relay channel.
    pub fn relay_address(&self, node: &NodeId) -> Option<NodeId> {
        Some(node.with_port(self.relay_port?))
    }
}

/// The nodes the failure detector believes alive, this node included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveSet {
    pub nodes: BTreeMap<NodeId, PeerState>,
}

/// How long an address added with `PUT /key-value-store-view` stays in the view without
/// ever gossiping.
const DECLARED_GRACE: Duration = Duration::from_secs(30);

/// Administrative changes to the view: addresses an administrator added before they gossip,
/// and nodes an administrator removed, which stay out until they restart.
#[derive(Debug, Default)]
pub struct ViewAdmin {
    declared: HashMap<NodeId, Instant>,
    removed: HashMap<NodeId, u64>,
}

impl ViewAdmin {
    /// Forgets the declarations of nodes that have gossiped: from then on a node is the
    /// failure detector's, and once it stops it leaves the view within seconds, not at the
    /// end of the grace.
    fn settle(&mut self, live: &LiveSet) {
        if !self.declared.is_empty() {
            self.declared
                .retain(|node, _| !live.nodes.contains_key(node));
        }
    }

    /// Live nodes, less those an administrator removed.
    pub fn up(&mut self, live: &LiveSet) -> BTreeSet<NodeId> {
        self.settle(live);
        live.nodes
            .iter()
            .filter(|(n, s)| self.removed.get(n) != Some(&s.generation))
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn is_up(&self, live: &LiveSet, node: &NodeId) -> bool {
        live.nodes
            .get(node)
            .is_some_and(|s| self.removed.get(node) != Some(&s.generation))
    }

    pub fn view(&mut self, live: &LiveSet, now: Instant) -> BTreeSet<NodeId> {
        self.settle(live);
        let mut view: BTreeSet<NodeId> = live
            .nodes
            .iter()
            .filter(|(node, state)| self.removed.get(node) != Some(&state.generation))
            .map(|(node, _)| node.clone())
            .collect();
        view.extend(
            self.declared
                .iter()
                .filter(|(_, &since)| now.duration_since(since) < DECLARED_GRACE)
                .map(|(node, _)| node.clone()),
        );
        view
    }

    pub fn add(&mut self, live: &LiveSet, node: NodeId, now: Instant) -> Result<(), KvsError> {
        if self.view(live, now).contains(&node) {
            return Err(KvsError::AlreadyInView);
        }
        self.removed.remove(&node);
        if !live.nodes.contains_key(&node) {
            self.declared.insert(node, now);
        }
        Ok(())
    }

    pub fn remove(&mut self, live: &LiveSet, node: NodeId, now: Instant) -> Result<(), KvsError> {
        if !self.view(live, now).contains(&node) {
            return Err(KvsError::NotInView);
        }
        self.declared.remove(&node);
        if let Some(state) = live.nodes.get(&node) {
            self.removed.insert(node, state.generation);
        }
        Ok(())
    }
}

pub struct Membership {
    me: NodeId,
    gossip: Arc<Gossip>,
    relays: watch::Receiver<RelayAddresses>,
    view_state: ViewState,
    seal: GossipSeal,
}

/// The live set and an administrator's changes to it, behind two locks: the `admin` mutex
/// and the live set's watch lock (a read lock that gossip's follower takes to write).
/// Lock order: `admin`, then the live set. [`ViewState::with`] is the only place that takes
/// both, so no caller can take them the other way (which, with a writer of the live set
/// waiting between them, deadlocked: `tests::the_view_s_locks_are_taken_in_one_order`).
struct ViewState {
    live: watch::Receiver<LiveSet>,
    admin: Mutex<ViewAdmin>,
}

impl ViewState {
    fn with<T>(&self, f: impl FnOnce(&mut ViewAdmin, &LiveSet) -> T) -> T {
        let mut admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        let live = self.live.borrow();
        f(&mut admin, &live)
    }
}

/// The gossip task of the moment: when it stops (chitchat's task ends on a fatal socket
/// error, or panics), [`supervise`] starts a new incarnation of this node's gossip, and
/// the node is not live meanwhile.
struct Gossip {
    chitchat: RwLock<Arc<tokio::sync::Mutex<Chitchat>>>,
    /// What this node publishes, sealed: a new incarnation starts with it.
    published: Mutex<BTreeMap<String, String>>,
    alive: watch::Sender<bool>,
    counters: Arc<GossipCounters>,
}

impl Gossip {
    fn chitchat(&self) -> Arc<tokio::sync::Mutex<Chitchat>> {
        self.chitchat
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn published(&self) -> Vec<(String, String)> {
        let published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        published.clone().into_iter().collect()
    }
}

/// Where each node's newest incarnation gossiped that its relay channel listens, live or
/// not yet: a restarted node is called as soon as its first gossip arrives, not only once
/// the failure detector has taken it back (a second or more).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayAddresses {
    nodes: BTreeMap<NodeId, (u64, NodeId)>,
}

impl RelayAddresses {
    pub fn get(&self, node: &NodeId) -> Option<NodeId> {
        self.nodes.get(node).map(|(_, address)| address.clone())
    }

    fn from_states(states: &BTreeMap<ChitchatId, chitchat::NodeState>, seal: &GossipSeal) -> Self {
        let mut out = Self::default();
        for (id, state) in states {
            let (Ok(node), Some(port)) = (
                NodeId::parse_from(&id.node_id, Source::Unvouched),
                relay_port(seal, id, state),
            ) else {
                continue;
            };
            let newest = out
                .nodes
                .get(&node)
                .is_none_or(|(generation, _)| *generation < id.generation_id);
            if newest {
                out.nodes
                    .insert(node.clone(), (id.generation_id, node.with_port(port)));
            }
        }
        out
    }
}

/// The relay port a node state advertises, if its seal holds: a state without one is not
/// counted as the node's (see [`seal`]).
fn relay_port(seal: &GossipSeal, id: &ChitchatId, state: &chitchat::NodeState) -> Option<u16> {
    let sealed = state.get(KEY_RELAY)?;
    seal.open(&id.node_id, KEY_RELAY, sealed)?.parse().ok()
}

/// The most a call waits for gossip to tell a node's relay port (the first second after
/// this node or that one started), before it counts the node as unreachable.
pub const RELAY_ADDRESS_WAIT: Duration = Duration::from_secs(2);

/// `node`'s relay address from `relays`, waiting until `until` for gossip to tell it.
pub async fn await_relay_address(
    relays: &watch::Receiver<RelayAddresses>,
    node: &NodeId,
    until: tokio::time::Instant,
) -> Option<NodeId> {
    if let Some(known) = relays.borrow().get(node) {
        return Some(known);
    }
    let mut relays = relays.clone();
    let heard = tokio::time::timeout_at(until, relays.wait_for(|r| r.get(node).is_some())).await;
    if let Ok(Ok(seen)) = &heard {
        return seen.get(node);
    }
    None
}

/// Refreshes the relay addresses from every node state chitchat holds, each gossip round,
/// and tells the gossip guard which incarnations chitchat still holds.
async fn follow_relay_addresses(
    chitchat: std::sync::Weak<tokio::sync::Mutex<Chitchat>>,
    tx: Arc<watch::Sender<RelayAddresses>>,
    interval: Duration,
    seal: GossipSeal,
    known: Arc<Mutex<guard::Known>>,
    counters: Arc<GossipCounters>,
) {
    loop {
        let Some(chitchat) = chitchat.upgrade() else {
            return;
        };
        let (addresses, held) = {
            let chitchat = chitchat.lock().await;
            let states = chitchat.node_states();
            let held: HashSet<(String, u64)> = states
                .keys()
                .map(|id| (id.node_id.to_string(), id.generation_id))
                .collect();
            (RelayAddresses::from_states(states, &seal), held)
        };
        drop(chitchat);
        counters
            .node_states
            .store(held.len() as u64, std::sync::atomic::Ordering::Relaxed);
        known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .refresh(held);
        tx.send_if_modified(|current| {
            let changed = *current != addresses;
            *current = addresses;
            changed
        });
        tokio::time::sleep(interval).await;
    }
}

/// How long a node named by DNS waits at start for its own name to resolve: a pod's record
/// in a headless Service appears moments after the pod gets its IP.
pub const OWN_NAME_WAIT: Duration = Duration::from_secs(60);

/// The address peers gossip to: this node's own, or what its name resolves to now (a
/// restarted pod gossips under a new generation with its new address; its name stays).
async fn advertise_address(me: &NodeId) -> anyhow::Result<std::net::SocketAddr> {
    let until = tokio::time::Instant::now() + OWN_NAME_WAIT;
    loop {
        match me.resolve().await {
            Ok(addr) => return Ok(addr),
            Err(e) if tokio::time::Instant::now() >= until => {
                anyhow::bail!("SOCKET_ADDRESS {me} does not resolve: {e}")
            }
            Err(e) => {
                log::info!("waiting for {me} to resolve: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The cluster id gossip messages carry: chitchat answers a node of another id `BadCluster`
/// and never merges its state. Derived from the cluster secret (a key derivation of its
/// own), so that a node of another store, or one without the secret, cannot join; and so
/// that the secret itself never travels. It is not an authentication of every message
/// (chitchat's transport offers no hook to tag datagrams): the values gossip carries are
/// sealed instead (see `GossipSeal`).
pub fn gossip_cluster_id(secret: Option<&[u8]>) -> String {
    match secret {
        None => "kvs".to_string(),
        Some(secret) => {
            let key = blake3::derive_key("kvs 2026-12-01 gossip cluster id", secret);
            let hex: String = key[..16].iter().map(|b| format!("{b:02x}")).collect();
            format!("kvs-{hex}")
        }
    }
}

/// The first wait before a stopped gossip task is started again, doubled at every stop
/// in a row up to [`RESTART_MAX_WAIT`]: a fault that stops it at once must not spin.
const RESTART_FIRST_WAIT: Duration = Duration::from_millis(200);
const RESTART_MAX_WAIT: Duration = Duration::from_secs(30);
/// A gossip task that ran this long before it stopped starts again after the first wait.
const RESTART_SETTLED: Duration = Duration::from_secs(60);

/// What every incarnation of this node's gossip is started from.
struct GossipPlan {
    me: NodeId,
    advertised: std::net::SocketAddr,
    cluster_id: String,
    gossip_interval: Duration,
    listen_addr: std::net::SocketAddr,
    seed_nodes: Vec<String>,
    key: Option<auth::DatagramKey>,
    faults: crate::fault::GossipFaults,
    seal: GossipSeal,
    live_tx: Arc<watch::Sender<LiveSet>>,
    relays_tx: Arc<watch::Sender<RelayAddresses>>,
}

impl GossipPlan {
    fn chitchat_config(&self, generation: u64) -> ChitchatConfig {
        ChitchatConfig {
            chitchat_id: ChitchatId::new(self.me.to_string(), generation, self.advertised),
            cluster_id: self.cluster_id.clone(),
            gossip_interval: self.gossip_interval,
            listen_addr: self.listen_addr,
            seed_nodes: self.seed_nodes.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: 8.0,
                sampling_window_size: 1000,
                max_interval: Duration::from_secs(10),
                // The default (5 s) makes a new peer's first detection about six times slower.
                initial_interval: self.gossip_interval,
                dead_node_grace_period: Duration::from_secs(3600),
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        }
    }

    /// Starts an incarnation of this node's gossip, publishing `published`, and the loops
    /// that follow it (they end with it).
    async fn spawn(
        &self,
        generation: u64,
        published: Vec<(String, String)>,
        counters: &Arc<GossipCounters>,
    ) -> anyhow::Result<ChitchatHandle> {
        let me = wire::Id {
            node_id: self.me.to_string(),
            generation,
            gossip_addr: self.advertised,
        };
        let known = Arc::new(Mutex::new(guard::Known::new(me)));
        let transport = self.faults.wrap(transport::GuardedTransport {
            key: self.key.clone(),
            advertised: self.advertised,
            known: known.clone(),
            counters: counters.clone(),
        });
        let handle =
            spawn_chitchat(self.chitchat_config(generation), published, &transport).await?;
        let watcher = handle.with_chitchat(|c| c.live_nodes_watcher()).await;
        tokio::spawn(follow_live_nodes(
            watcher,
            self.live_tx.clone(),
            self.me.clone(),
            generation,
            self.seal.clone(),
        ));
        tokio::spawn(follow_relay_addresses(
            Arc::downgrade(&handle.chitchat()),
            self.relays_tx.clone(),
            self.gossip_interval,
            self.seal.clone(),
            known,
            counters.clone(),
        ));
        Ok(handle)
    }
}

/// A generation after `previous`: the time in milliseconds, as chitchat's examples use.
fn next_generation(previous: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now.max(previous + 1)
}

/// Watches the gossip task and starts a new incarnation whenever it stops. Ends when the
/// membership is dropped.
async fn supervise(
    plan: GossipPlan,
    gossip: std::sync::Weak<Gossip>,
    mut handle: ChitchatHandle,
    mut generation: u64,
) {
    let mut wait = RESTART_FIRST_WAIT;
    loop {
        let started = Instant::now();
        let why = handle.termination_watcher().await;
        let Some(gossip) = gossip.upgrade() else {
            return;
        };
        gossip.alive.send_replace(false);
        gossip
            .counters
            .restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if started.elapsed() >= RESTART_SETTLED {
            wait = RESTART_FIRST_WAIT;
        }
        let why = why.err().map_or("it ended".to_string(), |e| e.to_string());
        log::error!(
            "gossip stopped ({why}): this node is not live; a new incarnation starts in {wait:?}"
        );
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RESTART_MAX_WAIT);
            generation = next_generation(generation);
            match plan
                .spawn(generation, gossip.published(), &gossip.counters)
                .await
            {
                Ok(next) => {
                    *gossip.chitchat.write().unwrap_or_else(|p| p.into_inner()) = next.chitchat();
                    handle = next;
                    break;
                }
                Err(e) => log::error!("gossip could not start again ({e}); next try in {wait:?}"),
            }
        }
        gossip.alive.send_replace(true);
        log::warn!("gossip started again as incarnation {generation}");
    }
}

impl Membership {
    /// Starts gossiping on the bind address (UDP, same port as HTTP), seeded from `VIEW`,
    /// under a supervisor that starts it again if it stops. `faults` can silence or stop
    /// gossip (an injected failure, see [`crate::fault`]).
    pub async fn start(
        config: &Config,
        initial: Vec<(String, String)>,
        faults: crate::fault::GossipFaults,
    ) -> anyhow::Result<Self> {
        let me = config.socket_address.clone();
        let generation = next_generation(0);
        let secret = config.cluster_secret.as_ref().map(|s| s.as_bytes());
        let seal = GossipSeal::new(secret);
        let me_id = me.to_string();
        let published: BTreeMap<String, String> = initial
            .into_iter()
            .map(|(key, value)| {
                let sealed = seal.seal(&me_id, &key, &value);
                (key, sealed)
            })
            .collect();
        let (live_tx, live) = watch::channel(LiveSet::default());
        let (relays_tx, relays) = watch::channel(RelayAddresses::default());
        let plan = GossipPlan {
            me: me.clone(),
            advertised: advertise_address(&me).await?,
            cluster_id: gossip_cluster_id(secret),
            gossip_interval: config.gossip_interval,
            listen_addr: config.bind_address,
            seed_nodes: config
                .view
                .iter()
                .filter(|n| **n != me)
                .map(ToString::to_string)
                .collect(),
            key: secret.map(auth::DatagramKey::new),
            faults,
            seal: seal.clone(),
            live_tx: Arc::new(live_tx),
            relays_tx: Arc::new(relays_tx),
        };
        let counters = Arc::new(GossipCounters::default());
        let initial: Vec<(String, String)> = published.clone().into_iter().collect();
        let handle = plan.spawn(generation, initial, &counters).await?;
        let gossip = Arc::new(Gossip {
            chitchat: RwLock::new(handle.chitchat()),
            published: Mutex::new(published),
            alive: watch::channel(true).0,
            counters,
        });
        tokio::spawn(supervise(plan, Arc::downgrade(&gossip), handle, generation));
        Ok(Self {
            me,
            gossip,
            view_state: ViewState {
                live,
                admin: Mutex::new(ViewAdmin::default()),
            },
            relays,
            seal,
        })
    }

    /// Whether this node's gossip task runs (it is being started again otherwise).
    pub fn gossip_alive(&self) -> bool {
        *self.gossip.alive.borrow()
    }

    /// What this node's gossip port did with the datagrams it heard and sent.
    pub fn counters(&self) -> Arc<GossipCounters> {
        self.gossip.counters.clone()
    }

    pub fn me(&self) -> NodeId {
        self.me.clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<LiveSet> {
        self.view_state.live.clone()
    }

    pub fn live_set(&self) -> LiveSet {
        self.view_state.live.borrow().clone()
    }

    /// Live nodes, less those an administrator removed.
    pub fn up_nodes(&self) -> BTreeSet<NodeId> {
        self.view_state.with(|admin, live| admin.up(live))
    }

    pub fn is_up(&self, node: &NodeId) -> bool {
        *node == self.me || self.view_state.with(|admin, live| admin.is_up(live, node))
    }

    /// The relay addresses as gossip tells them, for [`crate::peer::RelayPeers`].
    pub fn relay_addresses(&self) -> watch::Receiver<RelayAddresses> {
        self.relays.clone()
    }

    /// The view as the view endpoints report it.
    pub fn view(&self) -> BTreeSet<NodeId> {
        self.view_state
            .with(|admin, live| admin.view(live, Instant::now()))
    }

    pub fn add_to_view(&self, node: NodeId) -> Result<(), KvsError> {
        self.view_state
            .with(|admin, live| admin.add(live, node, Instant::now()))
    }

    pub fn remove_from_view(&self, node: NodeId) -> Result<(), KvsError> {
        self.view_state
            .with(|admin, live| admin.remove(live, node, Instant::now()))
    }

    /// The value every node known to gossip, up or down, last advertised under `key` (its
    /// newest incarnation's, and only if its seal holds).
    pub async fn gossiped(&self, key: &str) -> BTreeMap<NodeId, String> {
        let chitchat = self.gossip.chitchat();
        let chitchat = chitchat.lock().await;
        let mut newest: BTreeMap<NodeId, (u64, String)> = BTreeMap::new();
        for (id, state) in chitchat.node_states() {
            let Ok(node) = NodeId::parse_from(&id.node_id, Source::Unvouched) else {
                continue;
            };
            let Some(value) = state
                .get(key)
                .and_then(|sealed| self.seal.open(&id.node_id, key, sealed))
            else {
                continue;
            };
            if newest.get(&node).is_none_or(|(g, _)| *g < id.generation_id) {
                newest.insert(node, (id.generation_id, value.to_owned()));
            }
        }
        newest.into_iter().map(|(n, (_, v))| (n, v)).collect()
    }

    /// Advertises a key-value pair to every node.
    pub async fn publish(&self, key: &str, value: String) {
        let sealed = self.seal.seal(&self.me.to_string(), key, &value);
        self.gossip
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), sealed.clone());
        let chitchat = self.gossip.chitchat();
        chitchat.lock().await.self_node_state().set(key, sealed);
    }
}

/// Mirrors chitchat's live-node watch into a [`LiveSet`], keeping only the newest incarnation
/// of each node (a restarted node's old generation lingers among chitchat's dead nodes).
async fn follow_live_nodes(
    mut watcher: watch::Receiver<BTreeMap<ChitchatId, chitchat::NodeState>>,
    tx: Arc<watch::Sender<LiveSet>>,
    me: NodeId,
    generation: u64,
    seal: GossipSeal,
) {
    loop {
        let set = {
            let nodes = watcher.borrow_and_update();
            let mut set = LiveSet::default();
            set.nodes.insert(
                me.clone(),
                PeerState {
                    generation,
                    ..Default::default()
                },
            );
            for (id, state) in nodes.iter() {
                let Ok(node) = NodeId::parse_from(&id.node_id, Source::Unvouched) else {
                    continue;
                };
                if node == me {
                    continue;
                }
                let Some(relay_port) = relay_port(&seal, id, state) else {
                    continue;
                };
                let open = |key| {
                    let sealed = state.get(key)?;
                    seal.open(&id.node_id, key, sealed).map(str::to_owned)
                };
                let peer = PeerState {
                    generation: id.generation_id,
                    map: open(KEY_MAP),
                    applied: open(KEY_APPLIED),
                    relay_port: Some(relay_port),
                };
                let newer = set
                    .nodes
                    .get(&node)
                    .is_none_or(|p| p.generation < peer.generation);
                if newer {
                    set.nodes.insert(node, peer);
                }
            }
            set
        };
        tx.send_if_modified(|current| {
            if *current != set {
                *current = set;
                true
            } else {
                false
            }
        });
        if watcher.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u8) -> NodeId {
        format!("10.0.0.{i}:8080").parse().unwrap()
    }

    fn live(nodes: &[(u8, u64)]) -> LiveSet {
        LiveSet {
            nodes: nodes
                .iter()
                .map(|&(i, generation)| {
                    (
                        n(i),
                        PeerState {
                            generation,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        }
    }

    /// Every path that takes the view's two locks, hammered from threads while the live set
    /// changes: with the old order (the live set first in `up_nodes`/`is_up`, `admin` first
    /// in `view`/`add`/`remove`) a writer waiting on the live set could lock them all.
    #[test]
    fn the_view_s_locks_are_taken_in_one_order() {
        let (tx, rx) = watch::channel(live(&[(1, 1), (2, 1)]));
        let state = std::sync::Arc::new(ViewState {
            live: rx,
            admin: Mutex::new(ViewAdmin::default()),
        });
        let deadline = Instant::now() + Duration::from_secs(2);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for kind in 0..4 {
            let (state, done_tx) = (state.clone(), done_tx.clone());
            threads.push(std::thread::spawn(move || {
                while Instant::now() < deadline {
                    match kind {
                        0 => drop(state.with(|a, l| a.up(l))),
                        1 => drop(state.with(|a, l| a.is_up(l, &n(2)))),
                        2 => drop(state.with(|a, l| a.view(l, Instant::now()))),
                        _ => {
                            let _ = state.with(|a, l| a.remove(l, n(2), Instant::now()));
                            let _ = state.with(|a, l| a.add(l, n(2), Instant::now()));
                        }
                    }
                }
                done_tx.send(()).unwrap();
            }));
        }
        threads.push(std::thread::spawn(move || {
            let mut generation = 1;
            while Instant::now() < deadline {
                generation += 1;
                tx.send_replace(live(&[(1, 1), (2, generation)]));
            }
            done_tx.send(()).unwrap();
        }));
        // A deadlocked thread never ends: the test fails rather than waits for it.
        for _ in 0..threads.len() {
            done_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a thread is stuck on the view's locks");
        }
    }

    #[test]
    fn removed_nodes_stay_out_until_they_restart() {
        let mut admin = ViewAdmin::default();
        let now = Instant::now();
        let set = live(&[(1, 1), (2, 1)]);
        admin.remove(&set, n(2), now).unwrap();
        assert_eq!(admin.view(&set, now), [n(1)].into());
        assert_eq!(admin.remove(&set, n(2), now), Err(KvsError::NotInView));
        let restarted = live(&[(1, 1), (2, 2)]);
        assert_eq!(admin.view(&restarted, now), [n(1), n(2)].into());
    }

    #[test]
    fn declared_nodes_show_until_the_grace_ends() {
        let mut admin = ViewAdmin::default();
        let now = Instant::now();
        let set = live(&[(1, 1)]);
        admin.add(&set, n(5), now).unwrap();
        assert_eq!(admin.add(&set, n(5), now), Err(KvsError::AlreadyInView));
        assert_eq!(admin.add(&set, n(1), now), Err(KvsError::AlreadyInView));
        assert!(admin.view(&set, now).contains(&n(5)));
        assert!(!admin.view(&set, now + DECLARED_GRACE).contains(&n(5)));
    }

    #[test]
    fn a_live_node_put_back_is_not_declared() {
        let mut admin = ViewAdmin::default();
        let now = Instant::now();
        let set = live(&[(1, 1), (2, 1)]);
        admin.remove(&set, n(2), now).unwrap();
        admin.add(&set, n(2), now).unwrap();
        assert!(admin.view(&set, now).contains(&n(2)));
        assert_eq!(admin.view(&live(&[(1, 1)]), now), [n(1)].into());
    }

    #[test]
    fn a_declared_node_that_gossiped_then_stopped_leaves_at_once() {
        let mut admin = ViewAdmin::default();
        let now = Instant::now();
        admin.add(&live(&[(1, 1)]), n(5), now).unwrap();
        assert!(admin.view(&live(&[(1, 1), (5, 1)]), now).contains(&n(5)));
        // It stopped: the failure detector dropped it, and the declaration is spent.
        assert_eq!(admin.view(&live(&[(1, 1)]), now), [n(1)].into());
    }
}
