//! The owning side: accepts relay connections and answers each call with a handler, many
//! calls at once per connection; answers heartbeats at once; answers a write sent again
//! from memory ([`super::remembered`]).

use super::admission::{Admission, KnownPeers};
use super::throttle::Throttle;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use super::frame::{decode_call, encode_answer, Answer, Call, Incoming, Kind, FORGOTTEN, PONG};
use super::handshake::{self, RelayKey};
use super::remembered::{Begin, Remembered, Reply};
use super::{reserve_for_read, write_coalesced, MAX_IN_FLIGHT};
use crate::error::Op;

type Memory = Arc<Mutex<Remembered>>;

fn lock(memory: &Memory) -> MutexGuard<'_, Remembered> {
    memory.lock().unwrap_or_else(|p| p.into_inner())
}

/// [`serve_with`] for a listener that keeps no connections for known peers.
pub async fn serve<H, F>(
    listener: TcpListener,
    key: RelayKey,
    cut_off: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Call) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = (u16, Bytes)> + Send + 'static,
{
    serve_with(listener, key, cut_off, Arc::new(|_| false), handler).await
}

/// Accepts connections on `listener` for ever, each after its handshake with `key` and as
/// [`super::admission`] allows (`known` says which sources are the store's nodes),
/// answering every call with `handler`, which returns the status and body to relay back.
/// While `cut_off` is true (an injected failure), connections are dropped and refused.
pub async fn serve_with<H, F>(
    listener: TcpListener,
    key: RelayKey,
    cut_off: watch::Receiver<bool>,
    known: KnownPeers,
    handler: H,
) where
    H: Fn(Call) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = (u16, Bytes)> + Send + 'static,
{
    let admission = Arc::new(Admission::new(known));
    let refusals = Arc::new(Throttle::default());
    // Shared by every connection: a write is sent again on a new connection.
    let memory = Memory::default();
    loop {
        let (mut socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, typically: back off instead of spinning.
                log::warn!("relay listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if *cut_off.borrow() {
            drop(socket);
            continue;
        }
        let source = peer.ip();
        let Some(handshaking) = admission.handshake(source) else {
            let why = format_args!("relay connection from {peer} refused: too many handshakes");
            refusals.warn(source, why);
            continue;
        };
        let handler = handler.clone();
        let memory = memory.clone();
        let refusals = refusals.clone();
        let cut_off = cut_off.clone();
        let admission = admission.clone();
        tokio::spawn(async move {
            let shaken = handshake::server(&mut socket, &key).await;
            drop(handshaking);
            if let Err(e) = shaken {
                let why = format_args!("relay connection from {peer} refused: {e}");
                return refusals.warn(source, why);
            }
            let Some(permit) = admission.connection(source) else {
                let why = format_args!("relay connection from {peer} refused: too many");
                return refusals.warn(source, why);
            };
            tokio::select! {
                _ = serve_connection(socket, handler, memory) => {}
                _ = until_cut_off(cut_off) => {}
            }
            drop(permit);
        });
    }
}

/// Returns when `cut_off` turns true; never if its switch is gone.
async fn until_cut_off(mut cut_off: watch::Receiver<bool>) {
    if cut_off.wait_for(|cut| *cut).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn serve_connection<H, F>(socket: TcpStream, handler: H, memory: Memory)
where
    H: Fn(Call) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = (u16, Bytes)> + Send + 'static,
{
    let _ = socket.set_nodelay(true);
    let (reader, writer) = socket.into_split();
    // Room for every call in flight and the heartbeats between them.
    let (answers, outgoing) = mpsc::channel(MAX_IN_FLIGHT + 16);
    tokio::select! {
        _ = write_coalesced(outgoing, writer) => {}
        _ = read_calls(reader, handler, memory, answers) => {}
    }
}

/// Starts a task per call, at most [`MAX_IN_FLIGHT`] at once: a call may wait seconds for
/// its causal dependencies, and must not hold up the calls behind it.
async fn read_calls<H, F>(
    mut reader: OwnedReadHalf,
    handler: H,
    memory: Memory,
    answers: mpsc::Sender<BytesMut>,
) where
    H: Fn(Call) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = (u16, Bytes)> + Send + 'static,
{
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            let call = match decode_call(&mut buf) {
                Ok(Some(Incoming::Call(call))) => call,
                Ok(Some(Incoming::Ping)) => {
                    // Never waits: a full queue means answers are flowing, which the
                    // client hears as well as a pong.
                    let _ = answers.try_send(answer_frame(0, (PONG, Bytes::new())));
                    continue;
                }
                Ok(None) => break,
                Err(e) => {
                    log::warn!("relay connection dropped: {e}");
                    return;
                }
            };
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let handler = handler.clone();
            let memory = memory.clone();
            let answers = answers.clone();
            tokio::spawn(async move {
                let id = call.id;
                let reply = answer_once(call, handler, &memory).await;
                let _ = answers.send(answer_frame(id, reply)).await;
                drop(permit);
            });
        }
        reserve_for_read(&mut buf);
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn answer_frame(id: u64, (status, body): Reply) -> BytesMut {
    let mut frame = BytesMut::new();
    if encode_answer(&Answer { id, status, body }, &mut frame).is_err() {
        frame.clear();
        let _ = encode_answer(
            &Answer {
                id,
                status: 500,
                body: Bytes::new(),
            },
            &mut frame,
        );
    }
    frame
}

/// Serves `call`, a write at most once however often it is sent.
async fn answer_once<H, F>(call: Call, handler: H, memory: &Memory) -> Reply
where
    H: Fn(Call) -> F,
    F: Future<Output = Reply>,
{
    // Only a client's write must not run twice; reads and messages between nodes (each
    // of which its sender retries as it sees fit) simply run.
    if !matches!(call.op, Kind::Kv(Op::Put | Op::Delete)) {
        return handler(call).await;
    }
    let (origin, id) = (call.origin, call.id);
    let begin = lock(memory).begin(origin, id, call.attempt);
    match begin {
        Begin::Run => {
            let mut abandoned = Abandoned {
                memory,
                origin,
                id,
                armed: true,
            };
            let reply = handler(call).await;
            abandoned.armed = false;
            lock(memory).finish(origin, id, reply.clone(), Instant::now());
            reply
        }
        Begin::Done(reply) => reply,
        Begin::Wait(mut first) => match first.wait_for(Option::is_some).await {
            Ok(reply) => reply.clone().unwrap_or((FORGOTTEN, Bytes::new())),
            Err(_) => (FORGOTTEN, Bytes::new()),
        },
        Begin::Forgotten => (FORGOTTEN, Bytes::new()),
    }
}

/// Forgets a call whose handler never finished (it panicked), so that a repeat is told.
struct Abandoned<'a> {
    memory: &'a Memory,
    origin: u64,
    id: u64,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(self.memory).abandon(self.origin, self.id, Instant::now());
        }
    }
}
