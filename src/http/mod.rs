//! The HTTP surface, for clients only: the contract (`kv`, `view`, `shard`), the node's
//! storage counts, and its liveness and readiness ([`crate::health`]). Nodes talk to each other on the relay channel ([`crate::internal`]).
//! Every request but `/metrics` is counted and timed for it ([`crate::metrics`]).

pub(crate) mod dashboard;
pub(crate) mod kv;
pub(crate) mod list;
pub(crate) mod operator;
pub mod reply;
pub(crate) mod shard;
pub(crate) mod view;

use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::{Map, Value};

use crate::health;
use crate::node::Node;

/// The largest client request body accepted (413 beyond).
pub const BODY_LIMIT: usize = 1 << 20;

pub fn server(node: Arc<Node>) -> std::io::Result<Server> {
    let bind = node.config.bind_address;
    let workers = node.config.workers;
    let data = web::Data::new(node);
    let server = HttpServer::new(move || {
        App::new()
            .wrap(crate::metrics::CountRequests)
            .app_data(data.clone())
            .wrap(actix_web::middleware::from_fn(operator::hold_while_failed))
            // A static prefix with a default service, not a `{key:.*}` pattern: actix matches
            // patterns with a regex, which cost ~4% of a node's CPU on the hottest path.
            .service(web::scope("/key-value-store").default_service(web::to(kv::handle)))
            .route("/key-value-store-view", web::route().to(view::handle))
            .configure(shard::routes)
            .configure(operator::routes)
            .configure(dashboard::routes)
            .route("/kvs/storage", web::get().to(storage))
            .route(health::LIVE_PATH, web::get().to(live))
            .route(health::READY_PATH, web::get().to(ready))
            .route(crate::metrics::PATH, web::get().to(crate::metrics::handle))
            .default_service(web::to(|req: HttpRequest| async move {
                reply::not_found(req.method().as_str())
            }))
    })
    .workers(workers)
    .backlog(4096)
    .keep_alive(std::time::Duration::from_secs(75))
    // Peers send large batches to nodes that may be busy: allow more than the default 5 s
    // for a request to arrive before answering 408.
    .client_request_timeout(std::time::Duration::from_secs(60))
    .disable_signals()
    .bind(bind)?
    .run();
    Ok(server)
}

/// `GET /kvs/storage`: how many keys, live ones and tombstones this node holds (for
/// operators and tests).
async fn storage(node: web::Data<Arc<Node>>) -> HttpResponse {
    reply::ok(serde_json::json!(node.local.storage_stats()))
}

/// `GET /kvs/health/live`: the node serves HTTP and its gossip task runs (while a stopped
/// one is being started again, 503: a node that cannot gossip drops out of every view).
async fn live(node: web::Data<Arc<Node>>) -> HttpResponse {
    if node.membership.gossip_alive() {
        return reply::ok(serde_json::json!({"live": true}));
    }
    reply::json(
        actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"live": false, "waiting_for": "gossip, which stopped and is being started again"}),
    )
}

/// `GET /kvs/health/ready`: 200 when the node can serve its keys, else 503 saying what it
/// waits for ([`health::Readiness`]).
async fn ready(node: web::Data<Arc<Node>>) -> HttpResponse {
    let readiness = health::Readiness::of(&node);
    let status = if readiness.ready {
        actix_web::http::StatusCode::OK
    } else {
        actix_web::http::StatusCode::SERVICE_UNAVAILABLE
    };
    reply::json(status, serde_json::json!(readiness))
}

/// Reads a request body up to [`BODY_LIMIT`] bytes.
pub async fn read_body(mut payload: web::Payload) -> Result<Bytes, ()> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ())?;
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Refuses an administrative change (view, add-member, reshard) that does not present the
/// store's admin token, when one is set: 401 with the contract's error body.
pub fn refuse_unless_admin(req: &HttpRequest, node: &Node, op: reply::Op) -> Option<HttpResponse> {
    refuse_unless_admin_for(req, node, op.name())
}

/// [`refuse_unless_admin`] for a request of any method.
pub fn refuse_unless_admin_for(
    req: &HttpRequest,
    node: &Node,
    method: &str,
) -> Option<HttpResponse> {
    let token = node.config.admin_token.as_ref()?;
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if token.admits(presented) {
        return None;
    }
    let mut refused = reply::error_for(method, &crate::error::KvsError::AdminTokenRequired);
    refused.headers_mut().insert(
        actix_web::http::header::WWW_AUTHENTICATE,
        actix_web::http::header::HeaderValue::from_static("Bearer"),
    );
    Some(refused)
}

/// Parses a body as a JSON object; an empty body is an empty object.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("Request body must be a JSON object".into()),
        Err(_) => Err("Request body is not valid JSON".into()),
    }
}
