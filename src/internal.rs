//! The serving side of the calls nodes make to each other ([`Rpc`]): replication, pulls and
//! full copies, map changes, reshard phases, key counts and view changes. They arrive on the
//! relay channel only, after its handshake ([`crate::relay::handshake`]); the client port
//! serves none of them. Bodies and answers are JSON; an error answers the status and body
//! the HTTP edge would.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::admin;
use crate::error::KvsError;
use crate::http::reply::{error_body, Op};
use crate::node::Node;
use crate::peer::messages::*;
use crate::relay::{Call, Kind};

/// Serves the call named `name` with `body`; the status and body to send back.
pub async fn serve(node: &Arc<Node>, name: &str, body: Bytes) -> (u16, Bytes) {
    let Some(rpc) = Rpc::from_name(name) else {
        return failure(&KvsError::BadRequest(format!("unknown call {name:?}")));
    };
    match answer(node, rpc, &body).await {
        Ok(bytes) => (200, Bytes::from(bytes)),
        Err(e) => failure(&e),
    }
}

/// The relay channel's handler: a forwarded client request is served as if it came by
/// HTTP, a node's own message by [`serve`].
pub fn relay_handler(
    node: Arc<Node>,
) -> impl Fn(Call) -> BoxFuture<'static, (u16, Bytes)> + Clone + Send + Sync + 'static {
    move |call: Call| {
        let node = node.clone();
        Box::pin(async move {
            match call.op {
                Kind::Kv(op) => crate::http::kv::serve_relayed(&node, op, call).await,
                Kind::Internal => serve(&node, &call.path, call.body).await,
            }
        })
    }
}

fn failure(e: &KvsError) -> (u16, Bytes) {
    let (status, body) = error_body(Op::Put, e);
    (status.as_u16(), Bytes::from(body.to_string()))
}

fn parse<T: DeserializeOwned>(rpc: Rpc, body: &[u8]) -> Result<T, KvsError> {
    serde_json::from_slice(body).map_err(|e| KvsError::BadRequest(format!("{rpc}: {e}")))
}

fn json(value: &impl Serialize) -> Result<Vec<u8>, KvsError> {
    serde_json::to_vec(value).map_err(|_| KvsError::Unavailable)
}

async fn answer(node: &Arc<Node>, rpc: Rpc, body: &[u8]) -> Result<Vec<u8>, KvsError> {
    let answer = answer_unsynced(node, rpc, body).await?;
    if stores(rpc) {
        // What a peer acknowledges, it holds as the coordinator does: with `KVS_SYNC=always`
        // on the device (one group sync for every call answered meanwhile). A quorum or
        // majority acknowledgement then means on that many devices.
        node.local.sync_if_always().await?;
    }
    Ok(answer)
}

/// Whether answering `rpc` acknowledges records, or a map, this node has just stored.
fn stores(rpc: Rpc) -> bool {
    matches!(
        rpc,
        Rpc::Replicate | Rpc::Absorb | Rpc::LinStore | Rpc::Map | Rpc::Prepare | Rpc::Commit
    )
}

async fn answer_unsynced(node: &Arc<Node>, rpc: Rpc, body: &[u8]) -> Result<Vec<u8>, KvsError> {
    match rpc {
        Rpc::Replicate => json(&node.receive_push(parse(rpc, body)?).await),
        Rpc::Sync => sync(node, parse(rpc, body)?).await,
        Rpc::Absorb => {
            let absorb: Absorb = parse(rpc, body)?;
            node.local.absorb_records(absorb.records)?;
            json(&Done::yes())
        }
        Rpc::Map => install_map(node, parse(rpc, body)?),
        Rpc::CatchUp => {
            let message: EpochMessage = parse(rpc, body)?;
            json(&admin::catch_up(node, message.epoch).await?)
        }
        Rpc::Prepare => {
            let message: MapMessage = parse(rpc, body)?;
            admin::prepare(node, message.map).await?;
            json(&Done::yes())
        }
        Rpc::Transfer => {
            let message: EpochMessage = parse(rpc, body)?;
            admin::transfer(node, message.epoch, &message.participants).await?;
            json(&Done::yes())
        }
        Rpc::Commit => {
            let message: EpochMessage = parse(rpc, body)?;
            admin::commit(node, message.epoch)?;
            json(&Done::yes())
        }
        Rpc::Abort => {
            let message: EpochMessage = parse(rpc, body)?;
            admin::abort(node, message.epoch);
            json(&Done::yes())
        }
        Rpc::KeyCount => key_count(node, parse(rpc, body)?),
        Rpc::ListKeys => json(&node.list_page(&parse(rpc, body)?).await?),
        Rpc::LinQuery => json(&crate::linear::answer_query(node, &parse(rpc, body)?).await?),
        Rpc::LinStore => json(&crate::linear::answer_store(node, parse(rpc, body)?).await?),
        Rpc::View => {
            let change: ViewChange = parse(rpc, body)?;
            // Each node keeps its own administrative view; "already so" is not an error.
            let _ = if change.add {
                node.membership.add_to_view(change.node)
            } else {
                node.membership.remove_from_view(change.node)
            };
            json(&Done::yes())
        }
    }
}

/// Collecting and encoding a whole shard is seconds of CPU: off the runtime.
async fn sync(node: &Arc<Node>, request: SyncRequest) -> Result<Vec<u8>, KvsError> {
    let node = node.clone();
    tokio::task::spawn_blocking(move || serde_json::to_vec(&node.snapshot_for(&request)))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or(KvsError::Unavailable)
}

fn install_map(node: &Arc<Node>, message: MapMessage) -> Result<Vec<u8>, KvsError> {
    if node.reshard.is_pending() {
        return Err(KvsError::Conflict("A reshard is in progress".into()));
    }
    let current = node.routing.map();
    if message.map == *current || node.install_map(message.map, false) {
        tokio::spawn(crate::replication::handoff::hand_off_foreign_keys(
            node.clone(),
        ));
        return json(&Done::yes());
    }
    Err(KvsError::Conflict("A newer shard map is in place".into()))
}

fn key_count(node: &Node, body: serde_json::Value) -> Result<Vec<u8>, KvsError> {
    let shard = body
        .get("shard")
        .and_then(|s| s.as_u64())
        .unwrap_or(u64::MAX);
    match node.routing.my_shard() {
        Some(mine) if u64::from(mine) == shard => json(&KeyCount {
            shard: mine,
            count: node.live_key_count(),
        }),
        _ => Err(KvsError::NotAMember),
    }
}
