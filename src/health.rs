//! Liveness and readiness: what a node says of itself (`GET /kvs/health/live` and
//! `GET /kvs/health/ready`, answered in [`crate::http`]), and `kvs healthcheck`, the probe
//! a Docker `HEALTHCHECK` or a Kubernetes probe runs in an image that has no shell and no
//! curl.
//!
//! Live: the process serves HTTP and its gossip task runs (a node whose gossip stopped drops
//! out of every view while it still serves). Ready: it is live, has a shard map and, if it
//! is a member of a shard, holds that shard's data (it has copied it since it started or
//! joined, see `LocalReplica::is_synced`), so it answers requests without a 503 for want
//! of data. A node in no shard is ready once it has a map: it serves every key by
//! forwarding.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::node::Node;
use crate::storage::space::Room;

pub const LIVE_PATH: &str = "/kvs/health/live";
pub const READY_PATH: &str = "/kvs/health/ready";

/// The most of an answer a probe reads: the status line and a short JSON body.
const MAX_ANSWER_BYTES: usize = 4096;

/// A node's readiness, as `GET /kvs/health/ready` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// What the node waits for, when it is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<&'static str>,
    /// The node's shard, if it is a member of one.
    #[serde(rename = "shard-id", skip_serializing_if = "Option::is_none")]
    pub shard_id: Option<String>,
}

impl Readiness {
    pub fn of(node: &Node) -> Self {
        let map = node.routing.map();
        let shard = map.shard_of(&node.me);
        let waiting_for = if node.fault.is_failed() {
            Some("the end of an injected failure (POST /kvs/fault/recover)")
        } else if !node.membership.gossip_alive() {
            Some("gossip, which stopped and is being started again")
        } else if map.shards.is_empty() {
            Some("a shard map (from SHARD_COUNT, the other nodes of VIEW, or an administrator)")
        } else if shard.is_some() && !node.local.is_synced() {
            Some("a copy of its shard's data from the shard's other members")
        } else if node.local.store.room() == Room::Failed {
            Some(
                "its disk, which failed a write: clients' writes are refused (507) until it \
                 takes writes again and the node restarts itself",
            )
        } else if node.local.store.room() < Room::Any {
            // A fresh look at the disk: a node taken out of service takes no writes that
            // would look again, and must still notice that space came back.
            Some("space on its disk: clients' writes are refused (507) until space is freed")
        } else {
            None
        };
        Self {
            ready: waiting_for.is_none(),
            waiting_for,
            shard_id: shard.map(|s| s.to_string()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}: cannot resolve: {1}")]
    Resolve(String, String),
    #[error("{0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("{0}: no answer within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("{0} answered {1}")]
    Status(SocketAddr, String),
}

/// Asks the node at `address` (`host:port`) for `path` over plain HTTP/1.0; Ok if it
/// answers 200 within `timeout`.
pub fn probe(address: &str, path: &str, timeout: Duration) -> Result<(), ProbeError> {
    let deadline = Instant::now() + timeout;
    let target = address
        .to_socket_addrs()
        .map_err(|e| ProbeError::Resolve(address.to_owned(), e.to_string()))?
        .next()
        .ok_or_else(|| ProbeError::Resolve(address.to_owned(), "no address".into()))?;
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            ProbeError::Timeout(target, timeout)
        }
        _ => ProbeError::Io(target, e),
    };
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut stream = TcpStream::connect_timeout(&target, left()).map_err(io)?;
    stream.set_write_timeout(Some(left())).map_err(io)?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 512];
    while answer.len() < MAX_ANSWER_BYTES {
        stream.set_read_timeout(Some(left())).map_err(io)?;
        match stream.read(&mut chunk).map_err(io)? {
            0 => break,
            n => answer.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) == Some("200") {
        return Ok(());
    }
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
    Err(ProbeError::Status(
        target,
        format!("{status_line} {body}").trim().to_owned(),
    ))
}

/// The address a probe inside the node's own container or pod should use: the bind
/// address, with a wildcard IP replaced by loopback; without one, loopback at the port of
/// `SOCKET_ADDRESS` (the default bind is every interface at that port), so that a probe
/// never depends on DNS (a pod's name resolves only once the pod is published).
pub fn local_address(bind: Option<&str>, socket_address: Option<&str>) -> Option<String> {
    if let Some(bind) = bind.and_then(|b| b.parse::<SocketAddr>().ok()) {
        if bind.ip().is_unspecified() {
            return Some(format!("127.0.0.1:{}", bind.port()));
        }
        return Some(bind.to_string());
    }
    let port = socket_address?
        .trim()
        .rsplit_once(':')?
        .1
        .parse::<u16>()
        .ok()?;
    Some(format!("127.0.0.1:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            if let Ok((mut socket, _)) = listener.accept() {
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request);
                let _ = socket.write_all(answer.as_bytes());
            }
        });
        address
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_probe_passes_on_200_only_and_says_why_not() {
        let ok = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
        assert!(probe(&ok, READY_PATH, SECOND).is_ok());
        let busy = serve_once(
            "HTTP/1.1 503 Service Unavailable\r\n\r\n{\"ready\":false,\"waiting_for\":\"x\"}",
        );
        let err = probe(&busy, READY_PATH, SECOND).unwrap_err().to_string();
        assert!(err.contains("503") && err.contains("waiting_for"), "{err}");
    }

    #[test]
    fn a_probe_of_a_closed_port_or_a_silent_server_fails_within_its_timeout() {
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(probe(&closed.to_string(), LIVE_PATH, SECOND).is_err());
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let started = Instant::now();
        let address = silent.local_addr().unwrap().to_string();
        let err = probe(&address, LIVE_PATH, Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().ends_with("no answer within 300ms"), "{err}");
        assert!(started.elapsed() < SECOND, "{:?}", started.elapsed());
    }

    #[test]
    fn a_wildcard_bind_address_is_probed_on_loopback() {
        assert_eq!(
            local_address(Some("0.0.0.0:8080"), Some("10.10.0.2:8080")).as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            local_address(Some("10.10.0.2:8081"), None).as_deref(),
            Some("10.10.0.2:8081")
        );
        assert_eq!(
            local_address(None, Some("kvs-0.kvs:8080")).as_deref(),
            Some("127.0.0.1:8080")
        );
    }
}
