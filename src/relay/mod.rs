//! The relay channel: how a node forwards client requests to the owners of their keys.
//!
//! A forwarded request over HTTP costs the forwarding node a second full HTTP exchange, and
//! the owner a full HTTP request, per client request. Here each pair of nodes shares one TCP
//! connection that carries many requests at once as length-prefixed [`frame`]s, matched to
//! their answers by id; each side writes whatever frames are queued in one system call.
//! The owner serves a relayed request exactly as an HTTP one ([`crate::http`] supplies the
//! handler), so the client gets the same answer either way.
//!
//! Every node listens on its own relay port and advertises it by gossip; a request waits
//! (briefly) for a member's port to be known. Forwarding never uses HTTP, so a node treats
//! every HTTP request as a client's, whatever headers it carries.

pub mod admission;
pub mod client;
pub mod frame;
pub mod handshake;
pub mod remembered;
pub mod server;
pub mod throttle;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

pub use client::{Client, RelayError};
pub use frame::{Answer, Call, Kind};
pub use handshake::RelayKey;
pub use server::{serve, serve_with};

/// Calls in flight per connection, in each direction.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Bytes gathered into one write at most.
const MAX_WRITE: usize = 256 * 1024;

/// A frame at least this large is written on its own rather than copied into the gathered
/// write (a value of 1 MiB was copied once more there on its way to each peer).
const WRITE_ALONE: usize = 64 * 1024;

/// Writes the frames queued on `frames`, as many as are waiting in one write, until the
/// channel closes or the connection fails.
async fn write_coalesced(mut frames: mpsc::Receiver<BytesMut>, mut socket: OwnedWriteHalf) {
    let mut out = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = frames.recv().await {
        let mut next = Some(first);
        while let Some(frame) = next {
            if frame.len() >= WRITE_ALONE {
                if write_out(&mut socket, &mut out).await.is_err()
                    || socket.write_all(&frame).await.is_err()
                {
                    return;
                }
            } else {
                out.extend_from_slice(&frame);
            }
            next = (out.len() < MAX_WRITE)
                .then(|| frames.try_recv().ok())
                .flatten();
        }
        if write_out(&mut socket, &mut out).await.is_err() {
            return;
        }
    }
}

/// Writes what `out` gathered, if anything, and empties it.
async fn write_out(socket: &mut OwnedWriteHalf, out: &mut BytesMut) -> std::io::Result<()> {
    if !out.is_empty() {
        socket.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Makes room for the next read without growing the buffer on every small read.
fn reserve_for_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 16 * 1024 {
        buf.reserve(64 * 1024);
    }
}

#[cfg(test)]
mod tests {
    fn never_cut_off() -> tokio::sync::watch::Receiver<bool> {
        tokio::sync::watch::channel(false).1
    }

    use std::time::Duration;

    use bytes::Bytes;
    use tokio::net::TcpListener;

    use super::*;
    use crate::error::Op;

    fn call(path: &str, body: &str) -> Call {
        Call {
            id: 0,
            origin: 0,
            attempt: 0,
            op: Kind::Kv(Op::Get),
            hops: 1,
            epoch: 1,
            budget_ms: 0,
            path: path.into(),
            body: Bytes::from(body.to_owned()),
        }
    }

    /// A listener answering with the path and body it received, after waiting as many
    /// milliseconds as the body says.
    async fn echo_server() -> crate::NodeId {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = crate::NodeId::from(listener.local_addr().unwrap());
        tokio::spawn(serve(
            listener,
            RelayKey::open(),
            never_cut_off(),
            |call: Call| async move {
                let wait: u64 = std::str::from_utf8(&call.body)
                    .ok()
                    .and_then(|b| b.parse().ok())
                    .unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                let text = format!("{} {}", call.path, String::from_utf8_lossy(&call.body));
                (200, Bytes::from(text))
            },
        ));
        addr
    }

    #[tokio::test]
    async fn concurrent_calls_share_a_connection_and_get_their_own_answers() {
        let addr = echo_server().await;
        let client = std::sync::Arc::new(Client::new());
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let (client, addr) = (client.clone(), addr.clone());
            tasks.push(tokio::spawn(async move {
                // Later calls answer first: answers are matched by id, not by order.
                let wait = (200 - i) / 20;
                let path = format!("/key-value-store/k{i}");
                let answer = client
                    .call(addr, call(&path, &wait.to_string()), Duration::from_secs(5))
                    .await
                    .unwrap();
                assert_eq!(answer.status, 200);
                assert_eq!(answer.body, format!("{path} {wait}"));
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(client.connection_count(), 1);
    }

    #[tokio::test]
    async fn unreachable_peers_and_silent_ones_fail_differently() {
        let client = Client::new();
        // Nothing listens there: the call never left, another member may be tried.
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            crate::NodeId::from(listener.local_addr().unwrap())
        };
        let err = client
            .call(closed, call("/k", ""), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, RelayError::NotSent(..)), "{err}");

        // Sent, then no answer in time: the caller must not assume it was not applied.
        let addr = echo_server().await;
        let err = client
            .call(addr.clone(), call("/k", "2000"), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, RelayError::NoAnswer(..)), "{err}");
        // The connection stays usable.
        let answer = client
            .call(addr, call("/k", "0"), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(answer.body, "/k 0");
    }

    #[tokio::test]
    async fn disconnecting_a_peer_fails_its_waiting_calls_at_once() {
        let addr = echo_server().await;
        let client = std::sync::Arc::new(Client::new());
        let waiting = {
            let (client, addr) = (client.clone(), addr.clone());
            tokio::spawn(async move {
                client
                    .call(addr, call("/k", "10000"), Duration::from_secs(20))
                    .await
            })
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            while client.waiting_calls(addr.clone()) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the call is sent");
        client.disconnect(addr.clone());
        let result = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("the waiting call ends at once")
            .unwrap();
        assert!(matches!(result, Err(RelayError::Lost(..))));
        // A later call opens a new connection.
        let answer = client
            .call(addr, call("/k", "0"), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
    }

    /// A peer that accepts connections, completes the handshake, and then never sends a
    /// byte: a process paused later, or a host that vanished without a reset.
    async fn silent_peer() -> (crate::NodeId, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = crate::NodeId::from(listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                let _ = handshake::server(&mut socket, &RelayKey::open()).await;
                held.push(socket);
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_silent_connection_is_detected_and_replaced_within_seconds() {
        let (addr, _peer) = silent_peer().await;
        let client = Client::new();
        let started = tokio::time::Instant::now();
        let err = client
            .call(addr.clone(), call("/k", ""), Duration::from_secs(20))
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, RelayError::Lost(..)), "{err}");
        assert!(
            took >= client::SILENCE_LIMIT && took < client::SILENCE_LIMIT * 2,
            "detected after {took:?}"
        );
        // The next call does not reuse the dead connection.
        assert!(!client.is_connected(addr));
    }

    /// A listener that accepts and says nothing (a paused process): the call fails within
    /// the connect bound, as never sent, so that the caller may try another member.
    #[tokio::test]
    async fn a_peer_silent_from_the_start_fails_the_handshake_not_the_call() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = crate::NodeId::from(listener.local_addr().unwrap());
        let client = Client::new();
        let started = tokio::time::Instant::now();
        let err = client
            .call(addr, call("/k", ""), Duration::from_secs(20))
            .await
            .unwrap_err();
        assert!(matches!(err, RelayError::NotSent(..)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
    }

    /// A node with another store's secret can neither call nor be called.
    #[tokio::test]
    async fn a_peer_with_another_secret_is_refused_both_ways() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = crate::NodeId::from(listener.local_addr().unwrap());
        let mine = RelayKey::from_secret(b"this store's secret");
        let called = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = called.clone();
        tokio::spawn(serve(
            listener,
            mine,
            never_cut_off(),
            move |_call: Call| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { (200, bytes::Bytes::new()) }
            },
        ));
        for key in [
            RelayKey::open(),
            RelayKey::from_secret(b"another store's secret"),
        ] {
            let err = Client::with_key(key)
                .call(addr.clone(), call("/k", ""), Duration::from_secs(5))
                .await
                .unwrap_err();
            assert!(matches!(err, RelayError::NotSent(..)), "{err}");
        }
        assert_eq!(called.load(std::sync::atomic::Ordering::SeqCst), 0);
        let answer = Client::with_key(mine)
            .call(addr, call("/k", ""), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(called.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_slow_owner_is_not_mistaken_for_a_dead_one() {
        let addr = echo_server().await;
        let client = Client::new();
        let wait_ms = (client::SILENCE_LIMIT * 2).as_millis().to_string();
        let answer = client
            .call(addr, call("/k", &wait_ms), Duration::from_secs(20))
            .await
            .expect("heartbeats keep the connection while the owner works");
        assert_eq!(answer.body, format!("/k {wait_ms}"));
    }

    #[tokio::test]
    async fn a_write_sent_again_is_answered_not_applied_twice() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = crate::NodeId::from(listener.local_addr().unwrap());
        let applied = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = applied.clone();
        tokio::spawn(serve(
            listener,
            RelayKey::open(),
            never_cut_off(),
            move |_call: Call| {
                let counter = counter.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    (200, Bytes::from(format!("applied {n}")))
                }
            },
        ));
        let client = std::sync::Arc::new(Client::new());
        let write = Call {
            id: client.next_id(),
            op: Kind::Kv(Op::Put),
            ..call("/key-value-store/k", "{}")
        };
        // The first copy's answer is not waited for (as when its connection died) ...
        let first = client
            .call(addr.clone(), write.clone(), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(first, RelayError::NoAnswer(..)), "{first}");
        client.disconnect(addr.clone());
        // ... and the same call on a new connection gets the first copy's answer, whether
        // it is still running or done.
        for attempt in 1..=2 {
            let again = Call {
                attempt,
                ..write.clone()
            };
            let answer = client
                .call(addr.clone(), again, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(answer.body, "applied 1");
        }
        assert_eq!(applied.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A read is served each time it is sent.
        let read = Call {
            id: client.next_id(),
            ..call("/key-value-store/k", "")
        };
        for _ in 0..2 {
            client
                .call(addr.clone(), read.clone(), Duration::from_secs(5))
                .await
                .unwrap();
        }
        assert_eq!(applied.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
