//! The calling side of the messages nodes send each other ([`Rpc`], served by
//! [`crate::internal`]): JSON bodies in calls on the relay channel, which shares one
//! authenticated connection per peer with forwarded client requests. Every call has a
//! timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::membership::{await_relay_address, RelayAddresses, RELAY_ADDRESS_WAIT};
use crate::relay::{self, Call, Kind};
use crate::replication::protocol::Rpc;
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

/// Makes the calls of [`Rpc`] to other nodes, over the relay channel.
pub struct Peers {
    relay: Arc<relay::Client>,
    /// Where each node's relay channel listens, from gossip.
    relays: watch::Receiver<RelayAddresses>,
}

impl Peers {
    pub fn new(relay: Arc<relay::Client>, relays: watch::Receiver<RelayAddresses>) -> Self {
        Self { relay, relays }
    }

    /// Sends `body` as JSON in call `rpc` and decodes the JSON answer.
    pub async fn call<Req, Resp>(
        &self,
        peer: NodeId,
        rpc: Rpc,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let bytes = self.call_for_bytes(peer, rpc, body, timeout).await?;
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
        rpc: Rpc,
        body: &Req,
        timeout: Duration,
    ) -> Result<Bytes, PeerError>
    where
        Req: Serialize + ?Sized,
    {
        let unreachable = |reason: String| PeerError::Unreachable { peer, reason };
        let deadline = tokio::time::Instant::now() + timeout;
        let learnt_by = deadline.min(tokio::time::Instant::now() + RELAY_ADDRESS_WAIT);
        let address = await_relay_address(&self.relays, &peer, learnt_by)
            .await
            .ok_or_else(|| {
                unreachable("its relay port is not known (not heard by gossip)".into())
            })?;
        let body = serde_json::to_vec(body).map_err(|e| unreachable(e.to_string()))?;
        let call = Call {
            id: 0,
            origin: 0,
            attempt: 0,
            op: Kind::Internal,
            hops: 0,
            epoch: 0,
            budget_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            path: rpc.name().to_owned(),
            body: Bytes::from(body),
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let answer = self
            .relay
            .call(address, call, remaining)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if answer.status != 200 {
            return Err(PeerError::Status {
                peer,
                status: answer.status,
                body: String::from_utf8_lossy(&answer.body).into_owned(),
            });
        }
        Ok(answer.body)
    }
}
