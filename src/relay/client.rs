//! The forwarding side: one multiplexed connection per peer, shared by every request this
//! node forwards there, and watched by a heartbeat.
//!
//! A slow owner still answers heartbeats (its connection's reader answers them at once,
//! whatever the calls in flight wait for); a paused or vanished one, or a connection that
//! lost its way without a reset, does not. After [`SILENCE_LIMIT`] without a byte from the
//! peer the connection is closed and its calls fail as [`RelayError::Lost`], within
//! seconds instead of at their deadlines, so that the caller can fail over.

use super::throttle::Throttle;
use crate::NodeId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::{timeout_at, Instant};

use super::frame::{decode_answer, encode_call, encode_ping, Answer, Call, FORGOTTEN, PONG};
use super::handshake::{self, RelayKey};
use super::{reserve_for_read, write_coalesced, MAX_IN_FLIGHT};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How often a connection sends a heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// A connection whose peer has sent nothing for this long is closed. Six heartbeats: a
/// CPU-starved owner (load average 50 on 2 cores) is scheduled within hundreds of
/// milliseconds; a paused process or a cut cable never answers.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(3);
/// After a failed dial, requests to the peer fail at once for this long.
const REDIAL_AFTER: Duration = Duration::from_millis(250);

/// Why a call failed, and whether it may have taken effect.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelayError {
    /// The call never left this node: another member may safely be tried.
    #[error("relay to {0}: not sent: {1}")]
    NotSent(NodeId, &'static str),
    /// The call was handed to the connection but no answer came back in time: a write may
    /// or may not have been applied.
    #[error("relay to {0}: no answer: {1}")]
    NoAnswer(NodeId, &'static str),
    /// The connection died (went silent, or closed) with the call on it. It may have been
    /// applied; sent again to the same peer, with the same id, it is not applied twice.
    #[error("relay to {0}: connection lost: {1}")]
    Lost(NodeId, &'static str),
    /// The call was sent again and the peer no longer remembers whether it applied it.
    #[error("relay to {0}: the peer forgot the call")]
    Forgotten(NodeId),
}

/// Calls waiting for their answers on one connection.
#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    /// Set once the connection is gone; no call is registered after that.
    closed: bool,
}

struct Connection {
    frames: mpsc::Sender<BytesMut>,
    pending: Mutex<Pending>,
    open: AtomicBool,
    /// Why it closed, once it has.
    closed_because: std::sync::OnceLock<&'static str>,
    /// Milliseconds from `born` to the last byte received.
    heard_ms: AtomicU64,
    born: Instant,
    /// Bounds the calls in flight on this connection.
    slots: Semaphore,
    /// Stops the connection's I/O task.
    task: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl Connection {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn heard(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.heard_ms.store(ms, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let heard = Duration::from_millis(self.heard_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(heard)
    }

    /// Marks the connection gone and fails every call still waiting on it.
    fn close(&self, because: &'static str) {
        let _ = self.closed_because.set(because);
        self.open.store(false, Ordering::SeqCst);
        let mut pending = self.pending();
        pending.closed = true;
        pending.waiting.clear();
    }
}

/// Dials one peer at a time, so that a burst of requests opens one connection, not one
/// each; holds when the last dial failed, so that requests fail over at once meanwhile.
type Dialer = tokio::sync::Mutex<Option<Instant>>;

/// Relays calls to peers' relay listeners.
pub struct Client {
    /// This process, in every call: with the id, it names a request across attempts.
    origin: u64,
    next_id: AtomicU64,
    connections: Mutex<HashMap<NodeId, Arc<Connection>>>,
    dialers: Mutex<HashMap<NodeId, Arc<Dialer>>>,
    /// Where connection tasks run: the node's main runtime, not whichever HTTP worker
    /// happened to open the connection.
    runtime: Option<tokio::runtime::Handle>,
    /// Every connection proves it with the peer before its first frame.
    key: RelayKey,
    /// Failed handshakes are retried every 250 ms: warned of once in a while.
    refusals: Throttle<NodeId>,
    /// True while this node is cut off by an injected failure: nothing is sent.
    cut_off: tokio::sync::watch::Receiver<bool>,
    /// The address connections leave from (see `NodeId::connect_from`).
    source: Option<std::net::IpAddr>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client of a store without a cluster secret.
    pub fn new() -> Self {
        Self::with_key(RelayKey::open())
    }

    /// A client whose connections authenticate with `key` (see [`super::handshake`]).
    pub fn with_key(key: RelayKey) -> Self {
        Self {
            key,
            refusals: Throttle::default(),
            origin: rand::random(),
            next_id: AtomicU64::new(1),
            connections: Mutex::new(HashMap::new()),
            dialers: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::try_current().ok(),
            cut_off: tokio::sync::watch::channel(false).1,
            source: None,
        }
    }

    /// Opens connections from `source` (a node's own IP; see `super::admission`).
    pub fn from_address(mut self, source: std::net::IpAddr) -> Self {
        self.source = Some(source);
        self
    }

    /// Sends nothing while `cut_off` is true (an injected failure, see `crate::fault`):
    /// every call fails as if the network were down.
    pub fn cut_off_by(mut self, cut_off: tokio::sync::watch::Receiver<bool>) -> Self {
        self.cut_off = cut_off;
        self
    }

    /// A new request id; every attempt of one request carries the same.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `call` to the relay listener at `addr` and waits, at most `timeout`, for the
    /// answer. A call whose id is 0 is given a new one; its origin is always this client.
    pub async fn call(
        &self,
        addr: NodeId,
        mut call: Call,
        timeout: Duration,
    ) -> Result<Answer, RelayError> {
        if call.id == 0 {
            call.id = self.next_id();
        }
        call.origin = self.origin;
        if *self.cut_off.borrow() {
            return Err(RelayError::NotSent(
                addr,
                "this node is cut off (injected failure)",
            ));
        }
        let deadline = Instant::now() + timeout;
        let connection = self.connection(addr.clone(), deadline).await?;
        let _slot = match timeout_at(deadline, connection.slots.acquire()).await {
            Ok(Ok(slot)) => slot,
            _ => return Err(RelayError::NotSent(addr, "too many calls in flight")),
        };
        let mut frame = BytesMut::new();
        if encode_call(&call, &mut frame).is_err() {
            return Err(RelayError::NotSent(addr, "request too large"));
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = connection.pending();
            if pending.closed {
                return Err(RelayError::NotSent(addr, "connection closed"));
            }
            pending.waiting.insert(call.id, tx);
        }
        if connection.frames.try_send(frame).is_err() {
            connection.pending().waiting.remove(&call.id);
            return Err(RelayError::NotSent(addr, "connection busy or closed"));
        }
        match timeout_at(deadline, rx).await {
            Ok(Ok(answer)) if answer.status == FORGOTTEN => Err(RelayError::Forgotten(addr)),
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(RelayError::Lost(
                addr,
                connection.closed_because.get().copied().unwrap_or("closed"),
            )),
            Err(_) => {
                connection.pending().waiting.remove(&call.id);
                Err(RelayError::NoAnswer(addr, "timed out"))
            }
        }
    }

    /// How many peers this client holds a connection to (open or not yet replaced).
    #[cfg(test)]
    pub(super) fn connection_count(&self) -> usize {
        self.connections().len()
    }

    /// Whether an open connection to `addr` exists.
    #[cfg(test)]
    pub(super) fn is_connected(&self, addr: NodeId) -> bool {
        self.open_connection(addr).is_some()
    }

    /// How many calls wait for an answer from `addr`.
    #[cfg(test)]
    pub(super) fn waiting_calls(&self, addr: NodeId) -> usize {
        self.connections()
            .get(&addr)
            .map_or(0, |c| c.pending().waiting.len())
    }

    fn connections(&self) -> MutexGuard<'_, HashMap<NodeId, Arc<Connection>>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open_connection(&self, addr: NodeId) -> Option<Arc<Connection>> {
        let connections = self.connections();
        let connection = connections.get(&addr)?;
        connection
            .open
            .load(Ordering::SeqCst)
            .then(|| connection.clone())
    }

    /// The open connection to `addr`, opening one if there is none.
    async fn connection(
        &self,
        addr: NodeId,
        deadline: Instant,
    ) -> Result<Arc<Connection>, RelayError> {
        if let Some(connection) = self.open_connection(addr.clone()) {
            return Ok(connection);
        }
        let dialer = {
            let mut dialers = self.dialers.lock().unwrap_or_else(|p| p.into_inner());
            dialers.entry(addr.clone()).or_default().clone()
        };
        let connect_by = deadline.min(Instant::now() + CONNECT_TIMEOUT);
        let Ok(mut last_failure) = timeout_at(connect_by, dialer.lock()).await else {
            return Err(RelayError::NotSent(addr, "connect timed out"));
        };
        // Another request may have connected while this one waited.
        if let Some(connection) = self.open_connection(addr.clone()) {
            return Ok(connection);
        }
        if last_failure.is_some_and(|at| at.elapsed() < REDIAL_AFTER) {
            return Err(RelayError::NotSent(addr, "unreachable a moment ago"));
        }
        let mut socket = match timeout_at(connect_by, addr.connect_from(self.source)).await {
            Ok(Ok(socket)) => socket,
            failed => {
                *last_failure = Some(Instant::now());
                return Err(RelayError::NotSent(
                    addr,
                    match failed {
                        Ok(Err(_)) => "cannot connect",
                        _ => "connect timed out",
                    },
                ));
            }
        };
        let _ = socket.set_nodelay(true);
        match timeout_at(connect_by, handshake::client(&mut socket, &self.key)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                *last_failure = Some(Instant::now());
                self.refusals
                    .warn(addr.clone(), format_args!("relay to {addr}: {e}"));
                return Err(RelayError::NotSent(addr, "the handshake failed"));
            }
            Err(_) => {
                *last_failure = Some(Instant::now());
                return Err(RelayError::NotSent(addr, "the handshake timed out"));
            }
        }
        *last_failure = None;
        let connection = self.start(socket);
        self.connections().insert(addr, connection.clone());
        Ok(connection)
    }

    fn start(&self, socket: TcpStream) -> Arc<Connection> {
        let (frames, outgoing) = mpsc::channel(MAX_IN_FLIGHT);
        let connection = Arc::new(Connection {
            frames: frames.clone(),
            pending: Mutex::default(),
            open: AtomicBool::new(true),
            closed_because: std::sync::OnceLock::new(),
            heard_ms: AtomicU64::new(0),
            born: Instant::now(),
            slots: Semaphore::new(MAX_IN_FLIGHT),
            task: std::sync::OnceLock::new(),
        });
        let (reader, writer) = socket.into_split();
        let task = {
            let connection = connection.clone();
            async move {
                let because = tokio::select! {
                    _ = write_coalesced(outgoing, writer) => "write failed",
                    _ = read_answers(reader, &connection) => "closed by the peer",
                    because = heartbeat(frames, &connection) => because,
                };
                connection.close(because);
            }
        };
        let handle = match &self.runtime {
            Some(runtime) => runtime.spawn(task),
            None => tokio::spawn(task),
        };
        let _ = connection.task.set(handle.abort_handle());
        connection
    }

    /// Closes the connection to `addr`, failing the calls waiting on it at once. For a peer
    /// the failure detector has given up on: its connection may never report an error
    /// (a partitioned host sends no reset), and calls would wait out their timeouts.
    pub fn disconnect(&self, addr: NodeId) {
        let Some(connection) = self.connections().remove(&addr) else {
            return;
        };
        connection.close("the peer was lost");
        if let Some(task) = connection.task.get() {
            task.abort();
        }
    }
}

/// Sends a heartbeat every [`HEARTBEAT_INTERVAL`]; returns once the peer has been silent
/// for [`SILENCE_LIMIT`].
async fn heartbeat(frames: mpsc::Sender<BytesMut>, connection: &Connection) -> &'static str {
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if connection.silent_for() >= SILENCE_LIMIT {
            log::warn!(
                "relay connection silent for {:?}: closing it",
                connection.silent_for()
            );
            return "the peer went silent";
        }
        let mut ping = BytesMut::new();
        encode_ping(&mut ping);
        // A full queue means calls are being written; the heartbeat can wait its turn.
        let _ = frames.try_send(ping);
    }
}

/// Hands each answer to the call waiting for it, until the connection fails.
async fn read_answers(mut reader: OwnedReadHalf, connection: &Connection) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            match decode_answer(&mut buf) {
                Ok(Some(answer)) if answer.status == PONG => {}
                Ok(Some(answer)) => {
                    let waiting = connection.pending().waiting.remove(&answer.id);
                    if let Some(tx) = waiting {
                        let _ = tx.send(answer);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    log::warn!("relay connection dropped: {e}");
                    return;
                }
            }
        }
        reserve_for_read(&mut buf);
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => connection.heard(),
        }
    }
}
