//! The HTTP client every node uses for internal RPCs to its peers (client requests are
//! forwarded over the [`crate::relay`] channel).
//!
//! One `reqwest` client keeps pooled keep-alive connections per peer, so internal calls never
//! pay a TCP handshake each. Every call has a timeout.

use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::NodeId;

/// Forwarding stops after this many hops (maps in flux can bounce a request once or twice).
pub const MAX_HOPS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
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
}
