//! [`Internode`] over the relay channel: each call a frame of kind
//! [`Kind::Internal`] on the authenticated connection this node keeps to the peer.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use super::{Internode, PeerError};
use crate::membership::{await_relay_address, RelayAddresses, RELAY_ADDRESS_WAIT};
use crate::peer::messages::Rpc;
use crate::relay::{self, Answer, Call, Kind, RelayError};
use crate::NodeId;

/// Makes the calls of [`Internode`] to other nodes, over the relay channel.
pub struct RelayPeers {
    relay: Arc<relay::Client>,
    /// Where each node's relay channel listens, from gossip.
    relays: watch::Receiver<RelayAddresses>,
}

impl RelayPeers {
    pub fn new(relay: Arc<relay::Client>, relays: watch::Receiver<RelayAddresses>) -> Self {
        Self { relay, relays }
    }
}

impl RelayPeers {
    /// `peer`'s relay address, waiting for gossip to tell it until `deadline` at most.
    async fn address(&self, peer: NodeId, deadline: tokio::time::Instant) -> Option<NodeId> {
        let learnt_by = deadline.min(tokio::time::Instant::now() + RELAY_ADDRESS_WAIT);
        await_relay_address(&self.relays, &peer, learnt_by).await
    }
}

#[async_trait]
impl Internode for RelayPeers {
    async fn relay(
        &self,
        peer: NodeId,
        call: Call,
        timeout: Duration,
    ) -> Result<Answer, RelayError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let Some(address) = self.address(peer.clone(), deadline).await else {
            return Err(RelayError::NotSent(peer, "its relay port is not known yet"));
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.relay.call(address, call, remaining).await
    }

    fn next_call_id(&self) -> u64 {
        self.relay.next_id()
    }

    async fn exchange(
        &self,
        peer: NodeId,
        rpc: Rpc,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, PeerError> {
        let unreachable = |reason: String| PeerError::Unreachable {
            peer: peer.clone(),
            reason,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let address = self.address(peer.clone(), deadline).await.ok_or_else(|| {
            unreachable("its relay port is not known (not heard by gossip)".into())
        })?;
        let call = Call {
            id: 0,
            origin: 0,
            attempt: 0,
            op: Kind::Internal,
            hops: 0,
            epoch: 0,
            budget_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            path: rpc.name().to_owned(),
            body,
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let answer = self
            .relay
            .call(address, call, remaining)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        super::served(peer, answer.status, answer.body)
    }
}
