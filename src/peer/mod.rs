//! The calling side of the messages nodes send each other, served by [`crate::internal`].
//!
//! [`Internode`] is the one typed interface: a method per message (a forwarded client
//! request, push, pull or copy page, absorb, install map, catch-up, the reshard phases, key
//! count, view change). Its two
//! implementations differ only in how a call's bytes travel:
//! - [`relay::RelayPeers`]: JSON bodies in calls on the relay channel, which shares one
//!   authenticated connection per peer with forwarded client requests;
//! - [`memory::MemoryNetwork`]: in the same process, to [`memory::Handler`]s, with faults a
//!   test turns on and off (a peer down, an answer lost, a peer that dies after some calls),
//!   so that the coordinators ([`crate::admin`], [`crate::replication::pull`]) are tested
//!   in milliseconds, without processes.
//!
//! Both carry the same encoded bytes, so the in-memory tests also cover the messages' codec.
//! Every call has a timeout.

pub mod combine;
pub mod memory;
pub mod messages;
pub mod relay;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::peer::messages::{
    Absorb, Done, EpochMessage, KeyCount, LinQuery, LinStore, LinVersion, ListPage, ListRequest,
    MapMessage, ReplicateAck, ReplicateBatch, Rpc, SyncRequest, SyncResponse, ViewChange,
};
use crate::relay::{Answer, Call, RelayError};
use crate::shard::{ShardId, ShardMap};
use crate::NodeId;

pub use relay::RelayPeers;

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

/// The messages one node sends another, one method per message. An implementation provides
/// the transports, [`Internode::exchange`] for the nodes' own messages and
/// [`Internode::relay`] for forwarded client requests; the typed methods encode and decode.
#[async_trait]
pub trait Internode: Send + Sync {
    /// Forwards a client's request (`call`, of kind [`crate::relay::Kind::Kv`]) to `peer`
    /// and returns its answer as the peer gave it. The error says whether the call may
    /// have reached the peer (see [`RelayError`]), which decides whether a write may be
    /// sent again.
    async fn relay(
        &self,
        peer: NodeId,
        call: Call,
        timeout: Duration,
    ) -> Result<Answer, RelayError>;

    /// A new id for a forwarded call: a write sent again after a lost connection keeps its
    /// id, so that the peer answers it from memory instead of applying it twice.
    fn next_call_id(&self) -> u64;

    /// Delivers call `rpc` with a JSON `body` to `peer` within `timeout`; the body of its
    /// answer if the peer served it (any other status is a [`PeerError::Status`]).
    async fn exchange(
        &self,
        peer: NodeId,
        rpc: Rpc,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, PeerError>;

    /// A push of an origin's consecutive writes; the ack says how far the peer applied them.
    async fn push(
        &self,
        peer: NodeId,
        batch: &ReplicateBatch,
        timeout: Duration,
    ) -> Result<ReplicateAck, PeerError> {
        // Sized up front: grown from empty, a batch holding a value of 1 MiB was copied
        // through every doubling on its way to 1 MiB (a tenth of the coordinator's CPU in a
        // profile of such writes).
        let weight = batch.records.iter().map(|r| r.weight()).sum();
        let body = encode_into(peer.clone(), batch, Vec::with_capacity(weight))?;
        let answer = self
            .exchange(peer.clone(), Rpc::Replicate, body, timeout)
            .await?;
        decode(peer, &answer)
    }

    /// A pull: a delta, or one page of a full copy.
    async fn pull(
        &self,
        peer: NodeId,
        request: &SyncRequest,
        timeout: Duration,
    ) -> Result<SyncResponse, PeerError> {
        let body = encode(peer.clone(), request)?;
        let answer = self
            .exchange(peer.clone(), Rpc::Sync, body, timeout)
            .await?;
        // A page of a full copy is thousands of records (a source in memory answers a
        // million at once): decoding them must not stall the runtime's other tasks.
        let from = peer.clone();
        let decoded = tokio::task::spawn_blocking(move || decode::<SyncResponse>(from, &answer));
        decoded.await.map_err(|e| PeerError::Unreachable {
            peer,
            reason: e.to_string(),
        })?
    }

    /// Records handed over outside the causal streams (reshard transfers, hand-offs).
    async fn absorb(
        &self,
        peer: NodeId,
        absorb: &Absorb,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        done(call(self, peer, Rpc::Absorb, absorb, timeout).await)
    }

    /// A newer shard map to install.
    async fn install_map(
        &self,
        peer: NodeId,
        map: &ShardMap,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        done(call(self, peer, Rpc::Map, &map_message(map), timeout).await)
    }

    /// Asks a new member to copy its shard once it holds the map of `epoch`.
    async fn catch_up(
        &self,
        peer: NodeId,
        epoch: u64,
        timeout: Duration,
    ) -> Result<KeyCount, PeerError> {
        call(
            self,
            peer,
            Rpc::CatchUp,
            &epoch_message(epoch, &[]),
            timeout,
        )
        .await
    }

    /// Reshard phase 1: freeze writes and flush pushes, for `map`.
    async fn prepare(
        &self,
        peer: NodeId,
        map: &ShardMap,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        done(call(self, peer, Rpc::Prepare, &map_message(map), timeout).await)
    }

    /// Reshard phase 2: send the keys this peer is designated for.
    async fn transfer(
        &self,
        peer: NodeId,
        epoch: u64,
        participants: &[NodeId],
        timeout: Duration,
    ) -> Result<(), PeerError> {
        let message = epoch_message(epoch, participants);
        done(call(self, peer, Rpc::Transfer, &message, timeout).await)
    }

    /// Reshard phase 3: install the prepared map and resume writes.
    async fn commit(&self, peer: NodeId, epoch: u64, timeout: Duration) -> Result<(), PeerError> {
        done(call(self, peer, Rpc::Commit, &epoch_message(epoch, &[]), timeout).await)
    }

    /// Abandons a prepared reshard.
    async fn abort(&self, peer: NodeId, epoch: u64, timeout: Duration) -> Result<(), PeerError> {
        done(call(self, peer, Rpc::Abort, &epoch_message(epoch, &[]), timeout).await)
    }

    /// The live key count of `shard`, of which `peer` is a member.
    async fn key_count(
        &self,
        peer: NodeId,
        shard: ShardId,
        timeout: Duration,
    ) -> Result<KeyCount, PeerError> {
        let body = serde_json::json!({ "shard": shard });
        call(self, peer, Rpc::KeyCount, &body, timeout).await
    }

    /// One page of the keys of `peer`'s shard, for a listing.
    async fn list_keys(
        &self,
        peer: NodeId,
        request: &ListRequest,
        timeout: Duration,
    ) -> Result<ListPage, PeerError> {
        call(self, peer, Rpc::ListKeys, request, timeout).await
    }

    /// A linearizable operation's query of `peer`'s version of a key.
    async fn lin_query(
        &self,
        peer: NodeId,
        query: &LinQuery,
        timeout: Duration,
    ) -> Result<LinVersion, PeerError> {
        call(self, peer, Rpc::LinQuery, query, timeout).await
    }

    /// A linearizable operation's store of a version on `peer`.
    async fn lin_store(
        &self,
        peer: NodeId,
        store: &LinStore,
        timeout: Duration,
    ) -> Result<LinVersion, PeerError> {
        call(self, peer, Rpc::LinStore, store, timeout).await
    }

    /// An administrative view change.
    async fn view_change(
        &self,
        peer: NodeId,
        change: &ViewChange,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        done(call(self, peer, Rpc::View, change, timeout).await)
    }
}

fn epoch_message(epoch: u64, participants: &[NodeId]) -> EpochMessage {
    EpochMessage {
        epoch,
        participants: participants.to_vec(),
    }
}

fn map_message(map: &ShardMap) -> MapMessage {
    MapMessage { map: map.clone() }
}

/// The body of an answer with `status`: a call is served only with 200.
pub(crate) fn served(peer: NodeId, status: u16, body: Bytes) -> Result<Bytes, PeerError> {
    if status != 200 {
        return Err(PeerError::Status {
            peer,
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(body)
}

fn done(answer: Result<Done, PeerError>) -> Result<(), PeerError> {
    answer.map(|_| ())
}

fn encode<T: Serialize + ?Sized>(peer: NodeId, body: &T) -> Result<Bytes, PeerError> {
    encode_into(peer, body, Vec::new())
}

/// [`encode`] into `out` (sized by the caller).
fn encode_into<T: Serialize + ?Sized>(
    peer: NodeId,
    body: &T,
    mut out: Vec<u8>,
) -> Result<Bytes, PeerError> {
    serde_json::to_writer(&mut out, body)
        .map(|()| Bytes::from(out))
        .map_err(|e| PeerError::Unreachable {
            peer,
            reason: format!("unencodable request: {e}"),
        })
}

fn decode<T: DeserializeOwned>(peer: NodeId, body: &[u8]) -> Result<T, PeerError> {
    serde_json::from_slice(body).map_err(|e| PeerError::Status {
        peer,
        status: 200,
        body: format!("undecodable answer: {e}"),
    })
}

async fn call<P, Req, Resp>(
    peers: &P,
    peer: NodeId,
    rpc: Rpc,
    body: &Req,
    timeout: Duration,
) -> Result<Resp, PeerError>
where
    P: Internode + ?Sized,
    Req: Serialize + ?Sized,
    Resp: DeserializeOwned,
{
    let answer = peers
        .exchange(peer.clone(), rpc, encode(peer.clone(), body)?, timeout)
        .await?;
    decode(peer, &answer)
}
