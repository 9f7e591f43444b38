//! Operator endpoints beside the contract (see `docs/tools.md`): the cluster's status and
//! fault injection, and the gate that holds client requests while the node is failed.

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{json_object, read_body, refuse_unless_admin_for, reply};
use crate::fault::FaultError;
use crate::node::Node;
use crate::status::ClusterStatus;

pub const STATUS_PATH: &str = "/kvs/status";
pub const FAIL_PATH: &str = "/kvs/fault/fail";
pub const RECOVER_PATH: &str = "/kvs/fault/recover";
pub const GOSSIP_CRASH_PATH: &str = "/kvs/fault/gossip-crash";
pub const DISK_ERROR_PATH: &str = "/kvs/fault/disk";

/// Paths a failed node still answers: those that observe it or end its failure, and the
/// dashboard's static page.
const ANSWERED_WHILE_FAILED: [&str; 5] = [
    "/kvs/fault/",
    STATUS_PATH,
    "/kvs/health/",
    "/metrics",
    "/dashboard",
];

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(STATUS_PATH, web::get().to(status))
        .route(FAIL_PATH, web::post().to(fail))
        .route(RECOVER_PATH, web::post().to(recover))
        .route(GOSSIP_CRASH_PATH, web::post().to(gossip_crash))
        .route(DISK_ERROR_PATH, web::post().to(disk_error));
}

/// Holds every other request while the node is failed, unanswered, as a node cut off from
/// the network would leave it; it is served once the failure ends (or the client gives up).
pub async fn hold_while_failed(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let failed = req
        .app_data::<web::Data<Arc<Node>>>()
        .filter(|node| node.fault.is_enabled() && node.fault.is_failed())
        .cloned();
    if let Some(node) = failed {
        let path = req.path();
        if !ANSWERED_WHILE_FAILED.iter().any(|p| path.starts_with(p)) {
            node.fault.until_recovered().await;
        }
    }
    next.call(req).await
}

/// `GET /kvs/status`.
async fn status(node: web::Data<Arc<Node>>) -> HttpResponse {
    reply::ok(json!(ClusterStatus::of(&node).await))
}

/// `POST /kvs/fault/fail`, body `{"seconds": S}` (optional).
async fn fail(
    req: actix_web::HttpRequest,
    payload: web::Payload,
    node: web::Data<Arc<Node>>,
) -> HttpResponse {
    let fields = match admin_fields(&req, payload, &node).await {
        Ok(fields) => fields,
        Err(refused) => return refused,
    };
    let seconds = match fields.get("seconds") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(s) => Some(s),
            None => return fault_error(StatusCode::BAD_REQUEST, "seconds must be an integer"),
        },
    };
    match node.fault.fail(seconds) {
        Ok(length) => reply::ok(json!({"message": "Node failed", "seconds": length.as_secs()})),
        Err(e) => fault_refused(&e),
    }
}

/// `POST /kvs/fault/recover`.
async fn recover(req: actix_web::HttpRequest, node: web::Data<Arc<Node>>) -> HttpResponse {
    if let Some(refused) = refuse_unless_admin_for(&req, &node, "POST") {
        return refused;
    }
    match node.fault.recover() {
        Ok(()) => reply::ok(json!({"message": "Node recovered"})),
        Err(e) => fault_refused(&e),
    }
}

/// `POST /kvs/fault/gossip-crash`: stops the gossip task once, as a fatal socket error
/// would; its supervisor starts a new incarnation (see `membership`).
async fn gossip_crash(req: actix_web::HttpRequest, node: web::Data<Arc<Node>>) -> HttpResponse {
    if let Some(refused) = refuse_unless_admin_for(&req, &node, "POST") {
        return refused;
    }
    match node.fault.crash_gossip() {
        Ok(()) => reply::ok(json!({"message": "Gossip stopped"})),
        Err(e) => fault_refused(&e),
    }
}

/// `POST /kvs/fault/disk`, body `{"error": "ENOSPC" | "EDQUOT" | "EIO" | null}`: from now
/// on the node's disk refuses every write, sync and probe with that error, as the
/// filesystem would (`storage::disk::inject_write_error`); `null` makes it take them again.
async fn disk_error(
    req: actix_web::HttpRequest,
    payload: web::Payload,
    node: web::Data<Arc<Node>>,
) -> HttpResponse {
    use rustix::io::Errno;
    let fields = match admin_fields(&req, payload, &node).await {
        Ok(fields) => fields,
        Err(refused) => return refused,
    };
    if !node.fault.is_enabled() {
        return fault_refused(&FaultError::Disabled);
    }
    let errno = match fields.get("error").and_then(|e| e.as_str()) {
        None => None,
        Some("ENOSPC") => Some(Errno::NOSPC),
        Some("EDQUOT") => Some(Errno::DQUOT),
        Some("EIO") => Some(Errno::IO),
        Some(_) => {
            return fault_error(
                StatusCode::BAD_REQUEST,
                "error must be ENOSPC, EDQUOT, EIO or null",
            )
        }
    };
    crate::storage::disk::inject_write_error(errno.map(|e| e.raw_os_error()));
    let message = match errno {
        Some(_) => "The disk refuses writes",
        None => "The disk takes writes",
    };
    reply::ok(json!({ "message": message }))
}

/// The fields of an administrator's JSON object body, or the answer refusing the request.
async fn admin_fields(
    req: &actix_web::HttpRequest,
    payload: web::Payload,
    node: &Node,
) -> Result<serde_json::Map<String, serde_json::Value>, HttpResponse> {
    if let Some(refused) = refuse_unless_admin_for(req, node, "POST") {
        return Err(refused);
    }
    let body = read_body(req, payload)
        .await
        .map_err(|e| super::body_refused("POST", e))?;
    json_object(&body).map_err(|e| fault_error(StatusCode::BAD_REQUEST, &e))
}

fn fault_refused(error: &FaultError) -> HttpResponse {
    let status = match error {
        FaultError::Disabled => StatusCode::NOT_FOUND,
        FaultError::BadDuration => StatusCode::BAD_REQUEST,
    };
    fault_error(status, &error.to_string())
}

fn fault_error(status: StatusCode, error: &str) -> HttpResponse {
    reply::json(status, json!({"error": error, "message": "Error in POST"}))
}
