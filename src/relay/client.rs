//! The forwarding side: one multiplexed connection per peer, shared by every request this
//! node forwards there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::{timeout_at, Instant};

use super::frame::{decode_answer, encode_call, Answer, Call};
use super::{reserve_for_read, write_coalesced, MAX_IN_FLIGHT};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// After a failed dial, requests to the peer fail at once for this long.
const REDIAL_AFTER: Duration = Duration::from_millis(250);

/// Why a call failed, and whether it may have taken effect.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelayError {
    /// The call never left this node: another member may safely be tried.
    #[error("relay to {0}: not sent: {1}")]
    NotSent(SocketAddr, &'static str),
    /// The call was handed to the connection but no answer came back: a write may or may
    /// not have been applied.
    #[error("relay to {0}: no answer: {1}")]
    NoAnswer(SocketAddr, &'static str),
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
    next_id: AtomicU64,
    open: AtomicBool,
    /// Bounds the calls in flight on this connection.
    slots: Semaphore,
    /// Stops the connection's I/O task.
    task: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl Connection {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection gone and fails every call still waiting on it.
    fn close(&self) {
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
    connections: Mutex<HashMap<SocketAddr, Arc<Connection>>>,
    dialers: Mutex<HashMap<SocketAddr, Arc<Dialer>>>,
    /// Where connection tasks run: the node's main runtime, not whichever HTTP worker
    /// happened to open the connection.
    runtime: Option<tokio::runtime::Handle>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        Self {
            connections: Mutex::new(HashMap::new()),
            dialers: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Sends `call` (its id is assigned here) to the relay listener at `addr` and waits, at
    /// most `timeout`, for the answer.
    pub async fn call(
        &self,
        addr: SocketAddr,
        mut call: Call,
        timeout: Duration,
    ) -> Result<Answer, RelayError> {
        let deadline = Instant::now() + timeout;
        let connection = self.connection(addr, deadline).await?;
        let _slot = match timeout_at(deadline, connection.slots.acquire()).await {
            Ok(Ok(slot)) => slot,
            _ => return Err(RelayError::NotSent(addr, "too many calls in flight")),
        };
        call.id = connection.next_id.fetch_add(1, Ordering::Relaxed);
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
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(RelayError::NoAnswer(addr, "connection closed")),
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

    /// How many calls wait for an answer from `addr`.
    #[cfg(test)]
    pub(super) fn waiting_calls(&self, addr: SocketAddr) -> usize {
        self.connections()
            .get(&addr)
            .map_or(0, |c| c.pending().waiting.len())
    }

    fn connections(&self) -> MutexGuard<'_, HashMap<SocketAddr, Arc<Connection>>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open_connection(&self, addr: SocketAddr) -> Option<Arc<Connection>> {
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
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<Arc<Connection>, RelayError> {
        if let Some(connection) = self.open_connection(addr) {
            return Ok(connection);
        }
        let dialer = {
            let mut dialers = self.dialers.lock().unwrap_or_else(|p| p.into_inner());
            dialers.entry(addr).or_default().clone()
        };
        let connect_by = deadline.min(Instant::now() + CONNECT_TIMEOUT);
        let Ok(mut last_failure) = timeout_at(connect_by, dialer.lock()).await else {
            return Err(RelayError::NotSent(addr, "connect timed out"));
        };
        // Another request may have connected while this one waited.
        if let Some(connection) = self.open_connection(addr) {
            return Ok(connection);
        }
        if last_failure.is_some_and(|at| at.elapsed() < REDIAL_AFTER) {
            return Err(RelayError::NotSent(addr, "unreachable a moment ago"));
        }
        let socket = match timeout_at(connect_by, TcpStream::connect(addr)).await {
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
        *last_failure = None;
        let _ = socket.set_nodelay(true);
        let connection = self.start(socket);
        self.connections().insert(addr, connection.clone());
        Ok(connection)
    }

    fn start(&self, socket: TcpStream) -> Arc<Connection> {
        let (frames, outgoing) = mpsc::channel(MAX_IN_FLIGHT);
        let connection = Arc::new(Connection {
            frames,
            pending: Mutex::default(),
            next_id: AtomicU64::new(0),
            open: AtomicBool::new(true),
            slots: Semaphore::new(MAX_IN_FLIGHT),
            task: std::sync::OnceLock::new(),
        });
        let (reader, writer) = socket.into_split();
        let task = {
            let connection = connection.clone();
            async move {
                tokio::select! {
                    _ = write_coalesced(outgoing, writer) => {}
                    _ = read_answers(reader, &connection) => {}
                }
                connection.close();
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
    pub fn disconnect(&self, addr: SocketAddr) {
        let Some(connection) = self.connections().remove(&addr) else {
            return;
        };
        connection.close();
        if let Some(task) = connection.task.get() {
            task.abort();
        }
    }
}

/// Hands each answer to the call waiting for it, until the connection fails.
async fn read_answers(mut reader: OwnedReadHalf, connection: &Connection) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            match decode_answer(&mut buf) {
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
            Ok(_) => {}
        }
    }
}
