//! Abusive clients on the HTTP port (issue 23): each test named for the abuse, each failing
//! against the build before (`KVS_TEST_BINARY=<old build>`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FMT: &str = "2019";

/// Whether the server closed `stream` (EOF, after a 408 or not) within `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let until = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {} // a 408 answer; the close follows
        }
    }
}

/// 200 connections that sent half a request head were all still open 15 s later: each
/// held a connection slot and its buffers for a minute. Now each is answered 408 and
/// closed within the head timeout (5 s), and the node serves as before.
#[tokio::test]
async fn half_sent_request_heads_are_closed() {
    let c = Cluster::start(2, Some(1), FMT).await;
    let mut streams = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(c.addr(0)).await.expect("connects");
        let head = format!("PUT /key-value-store/k{i} HTTP/1.1\r\nHost: x\r\nContent-");
        s.write_all(head.as_bytes()).await.unwrap();
        streams.push(s);
    }
    let started = Instant::now();
    for (i, s) in streams.iter_mut().enumerate() {
        let left = Duration::from_secs(10).saturating_sub(started.elapsed());
        assert!(
            closed_within(s, left).await,
            "connection {i} still open after 10 s"
        );
    }
    let (status, body) = c.kv_put(0, "after", "the flood", "").await;
    assert_eq!(status, 201, "{body}");
}

/// A body that trickles (its head says 1,000 bytes, 10 come) is answered 408 within the
/// body timeout (10 s), not held for as long as the client likes.
#[tokio::test]
async fn a_trickled_body_is_answered_408() {
    let c = Cluster::start(2, Some(1), FMT).await;
    let mut s = TcpStream::connect(c.addr(0)).await.expect("connects");
    let head = "PUT /key-value-store/slow HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"value\":";
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(15), s.read(&mut answer))
        .await
        .expect("an answer within 15 s")
        .expect("read");
    let text = String::from_utf8_lossy(&answer[..read]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("Request body not received within 10 s"),
        "{text}"
    );
}

/// `KVS_MAX_CLIENT_CONNECTIONS` caps the connections the port holds: with 16 silent ones
/// open, a real client waits in the backlog until the head timeout frees a slot, then is
/// served. (Before, connections were capped only by actix's default, 25,000 a worker.)
#[tokio::test]
async fn client_connections_are_capped() {
    let env = [("KVS_MAX_CLIENT_CONNECTIONS", "16"), ("KVS_WORKERS", "1")];
    let c = Cluster::start_with_env(2, Some(1), FMT, &env).await;
    // Readiness polling may hold a keep-alive connection of the test's client; silent
    // sockets fill every slot left.
    let mut silent = Vec::new();
    for _ in 0..16 {
        silent.push(TcpStream::connect(c.addr(0)).await.expect("connects"));
    }
    let started = Instant::now();
    let answer = reqwest::Client::new()
        .get(c.url(0, "/kvs/health/live"))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .expect("served once a slot frees");
    let waited = started.elapsed();
    assert_eq!(answer.status().as_u16(), 200);
    assert!(
        waited >= Duration::from_secs(2),
        "served at once ({waited:?}): the cap was not applied"
    );
    drop(silent);
}
