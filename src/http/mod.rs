//! The HTTP surface, for clients only: the contract (`kv`, `view`, `shard`), the node's
//! storage counts, and its liveness and readiness ([`crate::health`]). Nodes talk to each other on the relay channel ([`crate::internal`]).
//! Every request but `/metrics` is counted and timed for it ([`crate::metrics`]).

pub(crate) mod bodies;
pub(crate) mod browsers;
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
/// How long a client has to send its first request's head once it connects (408 and the
/// connection closed after it). A client sends its head at once; a connection
/// that trickles one holds a slot of `KVS_MAX_CLIENT_CONNECTIONS` for nothing.
pub const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a client has to send a request's body once the head arrived (408 after it):
/// a 1 MiB body in 10 s is 100 KB/s, slower than any client the store serves.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long an idle connection is kept between requests.
pub const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(30);

pub fn server(node: Arc<Node>) -> std::io::Result<Server> {
    let bind = node.config.bind_address;
    let workers = node.config.workers;
    let per_worker = node.config.max_client_connections.div_ceil(workers);
    let bodies = web::Data::new(bodies::BodyBudget::new(node.config.memory.bodies_bytes));
    let data = web::Data::new(node);
    let server = HttpServer::new(move || {
        App::new()
            .wrap(crate::metrics::CountRequests)
            .app_data(data.clone())
            .app_data(bodies.clone())
            .wrap(actix_web::middleware::from_fn(bodies::reserve))
            .wrap(actix_web::middleware::from_fn(operator::hold_while_failed))
            .wrap(actix_web::middleware::from_fn(browsers::guard))
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
    // Per worker: the cap is the whole port's.
    .max_connections(per_worker)
    .keep_alive(KEEP_ALIVE)
    .client_request_timeout(HEAD_TIMEOUT)
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

/// Why a request body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Larger than [`BODY_LIMIT`] (413).
    TooLarge,
    /// Not all there within [`BODY_TIMEOUT`], or the connection broke (408).
    TooSlow,
}

/// Reads a request body up to [`BODY_LIMIT`] bytes, within [`BODY_TIMEOUT`].
pub async fn read_body(req: &HttpRequest, payload: web::Payload) -> Result<Bytes, BodyError> {
    // Room for the whole body at once, as its head announces it (at most the limit): a
    // 1 MiB body read into a buffer that doubles from nothing is copied about twice over,
    // each time into fresh pages.
    let announced = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(0)
        .min(BODY_LIMIT);
    tokio::time::timeout(BODY_TIMEOUT, read_body_unbounded(payload, announced))
        .await
        .unwrap_or(Err(BodyError::TooSlow))
}

async fn read_body_unbounded(
    mut payload: web::Payload,
    announced: usize,
) -> Result<Bytes, BodyError> {
    let mut body = BytesMut::with_capacity(announced);
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| BodyError::TooSlow)?;
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The answer to a request whose body was not read.
pub fn body_refused(op_name: &str, error: BodyError) -> HttpResponse {
    match error {
        BodyError::TooLarge => reply::too_large(op_name, BODY_LIMIT),
        BodyError::TooSlow => reply::too_slow(op_name, BODY_TIMEOUT),
    }
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
