//! Endpoints the nodes use among themselves: replication, pulls, map changes and reshards.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::reply::{self, Op};
use crate::admin;
use crate::error::KvsError;
use crate::node::Node;
use crate::replication::protocol::*;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(PATH_REPLICATE, web::post().to(replicate))
        .route(PATH_SYNC, web::post().to(sync))
        .route(PATH_ABSORB, web::post().to(absorb))
        .route(PATH_MAP, web::post().to(map))
        .route(PATH_CATCH_UP, web::post().to(catch_up))
        .route(PATH_PREPARE, web::post().to(prepare))
        .route(PATH_TRANSFER, web::post().to(transfer))
        .route(PATH_COMMIT, web::post().to(commit))
        .route(PATH_ABORT, web::post().to(abort))
        .route(PATH_KEY_COUNT, web::post().to(key_count))
        .route(PATH_VIEW, web::post().to(view_change))
        .route(PATH_STORAGE, web::get().to(storage));
}

type NodeData = web::Data<Arc<Node>>;

fn answer<T: Serialize>(result: Result<T, KvsError>) -> HttpResponse {
    match result {
        Ok(body) => HttpResponse::Ok().json(body),
        Err(e) => reply::error(Op::Put, &e),
    }
}

async fn storage(node: NodeData) -> HttpResponse {
    answer(Ok(node.storage_stats()))
}

async fn replicate(node: NodeData, batch: web::Json<ReplicateBatch>) -> HttpResponse {
    answer(Ok(node.receive_push(batch.into_inner()).await))
}

async fn sync(node: NodeData, request: web::Json<SyncRequest>) -> HttpResponse {
    let node = node.get_ref().clone();
    // Collecting and encoding a whole shard is seconds of CPU: keep it off the HTTP worker.
    let body =
        tokio::task::spawn_blocking(move || serde_json::to_vec(&node.snapshot_for(&request))).await;
    match body {
        Ok(Ok(body)) => HttpResponse::Ok()
            .content_type("application/json")
            .body(body),
        _ => reply::error(Op::Put, &KvsError::Unavailable),
    }
}

async fn absorb(node: NodeData, body: web::Json<Absorb>) -> HttpResponse {
    node.absorb_records(body.into_inner().records);
    answer(Ok(Done::yes()))
}

async fn map(node: NodeData, body: web::Json<MapMessage>) -> HttpResponse {
    let message = body.into_inner();
    if node.has_pending_reshard() {
        return answer::<Done>(Err(KvsError::Conflict("A reshard is in progress".into())));
    }
    let current = node.map();
    if message.map == *current || node.install_map(message.map, false) {
        tokio::spawn(admin::hand_off_foreign_keys(node.get_ref().clone()));
        return answer(Ok(Done::yes()));
    }
    answer::<Done>(Err(KvsError::Conflict(
        "A newer shard map is in place".into(),
    )))
}

async fn catch_up(node: NodeData, body: web::Json<EpochMessage>) -> HttpResponse {
    answer(admin::catch_up(&node, body.epoch).await)
}

async fn prepare(node: NodeData, body: web::Json<MapMessage>) -> HttpResponse {
    answer(
        admin::prepare(&node, body.into_inner().map)
            .await
            .map(|_| Done::yes()),
    )
}

async fn transfer(node: NodeData, body: web::Json<EpochMessage>) -> HttpResponse {
    answer(
        admin::transfer(&node, body.epoch, &body.participants)
            .await
            .map(|_| Done::yes()),
    )
}

async fn commit(node: NodeData, body: web::Json<EpochMessage>) -> HttpResponse {
    answer(admin::commit(&node, body.epoch).map(|_| Done::yes()))
}

async fn abort(node: NodeData, body: web::Json<EpochMessage>) -> HttpResponse {
    admin::abort(&node, body.epoch);
    answer(Ok(Done::yes()))
}

async fn key_count(node: NodeData, body: web::Json<serde_json::Value>) -> HttpResponse {
    let shard = body
        .get("shard")
        .and_then(|s| s.as_u64())
        .unwrap_or(u64::MAX);
    match node.my_shard() {
        Some(mine) if u64::from(mine) == shard => answer(Ok(KeyCount {
            shard: mine,
            count: node.live_key_count(),
        })),
        _ => answer::<KeyCount>(Err(KvsError::NotAMember)),
    }
}

async fn view_change(node: NodeData, body: web::Json<ViewChange>) -> HttpResponse {
    // Each node keeps its own administrative view; "already so" is not an error here.
    let _ = if body.add {
        node.membership.add_to_view(body.node)
    } else {
        node.membership.remove_from_view(body.node)
    };
    answer(Ok(Done::yes()))
}
