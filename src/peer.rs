//! The HTTP client every node uses to talk to its peers: internal RPCs and request forwarding.
//!
//! One `reqwest` client keeps pooled keep-alive connections per peer, so forwarding and
//! replication never pay a TCP handshake per request. Every call has a timeout.

use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::NodeId;

/// A header marking requests between nodes, with the number of hops so far.
pub const FORWARDED_HEADER: &str = "x-kvs-hops";
/// Forwarding stops after this many hops (maps in flux can bounce a request once or twice).
pub const MAX_HOPS: u32 = 4;
/// A header carrying the forwarding node's map epoch, so that a receiver with an older map
/// waits to learn the newer one instead of bouncing the request back.
pub const EPOCH_HEADER: &str = "x-kvs-epoch";
/// A header carrying how long the forwarding node waits for the answer, in milliseconds
/// ([`crate::budget`]).
pub const BUDGET_HEADER: &str = "x-kvs-budget-ms";

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No connection could be made: the request never left this node.
    #[error("{peer} not reached: {reason}")]
    NotConnected { peer: NodeId, reason: String },
    /// The exchange failed, possibly after the peer received the request.
    #[error("{peer} unreachable: {reason}")]
    Unreachable { peer: NodeId, reason: String },
    #[error("{peer} answered {status}: {body}")]
    Status {
        peer: NodeId,
        status: u16,
        body: String,
    },
}

/// A client's request on its way to another node.
#[derive(Debug, Clone)]
pub struct Relayed {
    pub method: reqwest::Method,
    pub path_and_query: String,
    pub body: Bytes,
    pub budget_ms: u32,
    /// Hops including the one about to be made.
    pub hops: u32,
    /// The forwarding node's map epoch.
    pub epoch: u64,
}

#[derive(Debug, Clone)]
pub struct Peers {
    client: reqwest::Client,
}

impl Default for Peers {
    fn default() -> Self {
        Self::new()
    }
}

impl Peers {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_millis(1000))
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()
            .expect("a plain HTTP client always builds");
        Self { client }
    }

    /// POSTs `body` as JSON to an internal endpoint and decodes the JSON answer.
    pub async fn call<Req, Resp>(
        &self,
        peer: NodeId,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let bytes = self.call_for_bytes(peer, path, body, timeout).await?;
        serde_json::from_slice(&bytes).map_err(|e| PeerError::Status {
            peer,
            status: 200,
            body: format!("undecodable answer: {e}"),
        })
    }

    /// Like [`Peers::call`], but leaves the (successful) answer undecoded, for callers that
    /// decode large answers off the runtime.
    pub async fn call_for_bytes<Req>(
        &self,
        peer: NodeId,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Bytes, PeerError>
    where
        Req: Serialize + ?Sized,
    {
        let unreachable = |e: reqwest::Error| PeerError::Unreachable {
            peer,
            reason: e.to_string(),
        };
        let response = self
            .client
            .post(format!("http://{peer}{path}"))
            .header(FORWARDED_HEADER, "1")
            .json(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(PeerError::Status {
                peer,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(bytes)
    }

    /// Sends a client's request on to `peer` unchanged and returns its status and body.
    pub async fn relay(
        &self,
        peer: NodeId,
        request: &Relayed,
        timeout: Duration,
    ) -> Result<(u16, Bytes), PeerError> {
        let unreachable = |e: reqwest::Error| {
            let reason = e.to_string();
            if e.is_connect() {
                PeerError::NotConnected { peer, reason }
            } else {
                PeerError::Unreachable { peer, reason }
            }
        };
        let response = self
            .client
            .request(
                request.method.clone(),
                format!("http://{peer}{}", request.path_and_query),
            )
            .header(FORWARDED_HEADER, request.hops.to_string())
            .header(EPOCH_HEADER, request.epoch.to_string())
            .header(BUDGET_HEADER, request.budget_ms.to_string())
            .header("content-type", "application/json")
            .body(request.body.clone())
            .timeout(timeout)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(unreachable)?;
        Ok((status, bytes))
    }
}
