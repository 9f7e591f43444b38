//! `/key-value-store-shard/...`: shard questions and administrative changes.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::reply::{self, Op};
use super::view::socket_address;
use super::{json_object, read_body, refuse_unless_admin};
use crate::admin;
use crate::error::KvsError;
use crate::node::Node;
use crate::shard::ShardId;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/key-value-store-shard/shard-ids")
            .route(web::get().to(shard_ids))
            .default_service(web::to(not_allowed)),
    )
    .service(
        web::resource("/key-value-store-shard/node-shard-id")
            .route(web::get().to(node_shard_id))
            .default_service(web::to(not_allowed)),
    )
    .service(
        web::resource("/key-value-store-shard/shard-id-members/{id}")
            .route(web::get().to(members))
            .default_service(web::to(not_allowed)),
    )
    .service(
        web::resource("/key-value-store-shard/shard-id-key-count/{id}")
            .route(web::get().to(key_count))
            .default_service(web::to(not_allowed)),
    )
    .service(
        web::resource("/key-value-store-shard/add-member/{id}")
            .route(web::put().to(add_member))
            .default_service(web::to(not_allowed)),
    )
    .service(
        web::resource("/key-value-store-shard/reshard")
            .route(web::put().to(reshard))
            .default_service(web::to(not_allowed)),
    );
}

async fn not_allowed(req: HttpRequest) -> HttpResponse {
    reply::method_not_allowed(req.method().as_str())
}

fn known_shard(node: &Node, id: &str) -> Result<ShardId, KvsError> {
    let shard: ShardId = id.trim().parse().map_err(|_| KvsError::UnknownShard)?;
    if node.routing.map().members(shard).is_none() {
        return Err(KvsError::UnknownShard);
    }
    Ok(shard)
}

async fn shard_ids(node: web::Data<Arc<Node>>) -> HttpResponse {
    let ids = node
        .routing
        .map()
        .shard_ids()
        .map(|id| id.to_string())
        .collect::<Vec<_>>();
    reply::ok(json!({
        "message": "Shard IDs retrieved successfully",
        "shard-ids": reply::list(node.config.api_format, ids),
    }))
}

async fn node_shard_id(node: web::Data<Arc<Node>>) -> HttpResponse {
    match node.routing.my_shard() {
        Some(shard) => reply::ok(json!({
            "message": "Shard ID of the node retrieved successfully",
            "shard-id": shard.to_string(),
        })),
        None => reply::error(Op::Get, &KvsError::NotAMember),
    }
}

async fn members(node: web::Data<Arc<Node>>, id: web::Path<String>) -> HttpResponse {
    let shard = match known_shard(&node, &id) {
        Ok(s) => s,
        Err(e) => return reply::error(Op::Get, &e),
    };
    let map = node.routing.map();
    let members = map
        .members(shard)
        .map(|m| m.iter().map(ToString::to_string).collect::<Vec<_>>())
        .unwrap_or_default();
    reply::ok(json!({
        "message": "Members of shard ID retrieved successfully",
        "shard-id-members": reply::list(node.config.api_format, members),
    }))
}

async fn key_count(node: web::Data<Arc<Node>>, id: web::Path<String>) -> HttpResponse {
    let shard = match known_shard(&node, &id) {
        Ok(s) => s,
        Err(e) => return reply::error(Op::Get, &e),
    };
    match count_keys(&node, shard).await {
        Ok(count) => reply::ok(json!({
            "message": "Key count of shard ID retrieved successfully",
            "shard-id-key-count": count,
        })),
        Err(e) => reply::error(Op::Get, &e),
    }
}

/// Counts locally when this node is a member of `shard`, else asks a live member.
pub async fn count_keys(node: &Node, shard: ShardId) -> Result<usize, KvsError> {
    if node.routing.my_shard() == Some(shard) {
        return Ok(node.live_key_count());
    }
    let map = node.routing.map();
    let members = map.members(shard).ok_or(KvsError::UnknownShard)?;
    for member in node.forwarding_order(&map, members) {
        let answer = node
            .peers
            .key_count(member, shard, Duration::from_secs(10))
            .await;
        if let Ok(count) = answer {
            if count.shard == shard {
                return Ok(count.count);
            }
        }
    }
    Err(KvsError::Unavailable)
}

async fn add_member(
    req: HttpRequest,
    node: web::Data<Arc<Node>>,
    id: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    if let Some(refused) = refuse_unless_admin(&req, &node, Op::Put) {
        return refused;
    }
    let body = match read_body(&req, payload).await {
        Ok(body) => body,
        Err(e) => return super::body_refused("PUT", e),
    };
    let result = async {
        let shard = known_shard(&node, &id)?;
        let member = socket_address(&body)?;
        admin::add_member(&node, shard, member).await
    }
    .await;
    match result {
        Ok(()) => reply::ok(json!({"message": "Node added to shard successfully"})),
        Err(e) => reply::error(Op::Put, &e),
    }
}

/// Reads `shard-count`: a positive integer (a numeric string is accepted too).
pub fn shard_count(body: &[u8]) -> Result<u32, KvsError> {
    let fields = json_object(body).map_err(KvsError::BadRequest)?;
    let invalid = || KvsError::BadRequest("shard-count must be a positive integer".into());
    let count = match fields.get("shard-count") {
        None | Some(Value::Null) => {
            return Err(KvsError::BadRequest("shard-count is missing".into()))
        }
        Some(Value::Number(n)) => n.as_u64().ok_or_else(invalid)?,
        Some(Value::String(s)) => s.trim().parse().map_err(|_| invalid())?,
        Some(_) => return Err(invalid()),
    };
    match u32::try_from(count) {
        Ok(c) if c > 0 => Ok(c),
        _ => Err(invalid()),
    }
}

async fn reshard(
    req: HttpRequest,
    node: web::Data<Arc<Node>>,
    payload: web::Payload,
) -> HttpResponse {
    if let Some(refused) = refuse_unless_admin(&req, &node, Op::Put) {
        return refused;
    }
    let body = match read_body(&req, payload).await {
        Ok(body) => body,
        Err(e) => return super::body_refused("PUT", e),
    };
    let result = async {
        let count = shard_count(&body)?;
        admin::reshard(&node, count).await
    }
    .await;
    match result {
        Ok(()) => reply::ok(json!({"message": "Resharding done successfully"})),
        Err(e) => reply::error(Op::Put, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_count_must_be_a_positive_integer() {
        assert_eq!(shard_count(br#"{"shard-count": 3}"#), Ok(3));
        assert_eq!(shard_count(br#"{"shard-count": "3"}"#), Ok(3));
        for bad in [
            &br#"{"shard-count": 0}"#[..],
            br#"{"shard-count": -1}"#,
            br#"{"shard-count": 1.5}"#,
            br#"{"shard-count": "x"}"#,
            br#"{"shard-count": [2]}"#,
            br#"{}"#,
            b"nope",
        ] {
            assert!(matches!(shard_count(bad), Err(KvsError::BadRequest(_))));
        }
    }
}
