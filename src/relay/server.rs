//! The owning side: accepts relay connections and answers each call with a handler, many
//! calls at once per connection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use super::frame::{decode_call, encode_answer, Answer, Call};
use super::{reserve_for_read, write_coalesced, MAX_IN_FLIGHT};

/// Peers keep one connection each; this leaves room for many nodes and reconnects.
const MAX_CONNECTIONS: usize = 512;

/// Accepts connections on `listener` for ever, answering every call with `handler`, which
/// returns the status and body to relay back.
pub async fn serve<H, F>(listener: TcpListener, handler: H)
where
    H: Fn(Call) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = (u16, Bytes)> + Send + 'static,
{
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                // Out of descriptors, typically: back off instead of spinning.
                log::warn!("relay listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            log::warn!("relay listener: too many connections, refusing one");
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            serve_connection(socket, handler).await;
            drop(permit);
        });
    }
}

async fn serve_connection<H, F>(socket: TcpStream, handler: H)
where
    H: Fn(Call) -> F + Send + Sync + 'static,
    F: Future<Output = (u16, Bytes)> + Send + 'static,
{
    let _ = socket.set_nodelay(true);
    let (reader, writer) = socket.into_split();
    let (answers, outgoing) = mpsc::channel(MAX_IN_FLIGHT);
    tokio::select! {
        _ = write_coalesced(outgoing, writer) => {}
        _ = read_calls(reader, handler, answers) => {}
    }
}

/// Starts a task per call, at most [`MAX_IN_FLIGHT`] at once: a call may wait seconds for
/// its causal dependencies, and must not hold up the calls behind it.
async fn read_calls<H, F>(mut reader: OwnedReadHalf, handler: H, answers: mpsc::Sender<BytesMut>)
where
    H: Fn(Call) -> F + Send + Sync + 'static,
    F: Future<Output = (u16, Bytes)> + Send + 'static,
{
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            let call = match decode_call(&mut buf) {
                Ok(Some(call)) => call,
                Ok(None) => break,
                Err(e) => {
                    log::warn!("relay connection dropped: {e}");
                    return;
                }
            };
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let id = call.id;
            let answering = handler(call);
            let answers = answers.clone();
            tokio::spawn(async move {
                let (status, body) = answering.await;
                let mut frame = BytesMut::new();
                let answer = Answer { id, status, body };
                if encode_answer(&answer, &mut frame).is_ok() {
                    let _ = answers.send(frame).await;
                }
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
