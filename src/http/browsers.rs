//! What a web page may make a browser send to a node: the two ways a page on another site
//! could act on a node on `localhost` or a private network, closed.
//!
//! - **Simple cross-site requests.** A page can make a browser send a POST with a
//!   `text/plain`, form or empty body to any address, without asking the node first (no
//!   CORS preflight); the answer is hidden from the page, but the request is served. The
//!   node's POST endpoints (`/kvs/fault/*`) therefore take only `application/json`, which a
//!   browser sends cross-site only after a preflight the node never grants: 415 otherwise.
//!   PUT and DELETE (the contract's writes) always need a preflight, so they stay open to
//!   any content type, as `curl -d` scripts send.
//! - **DNS rebinding.** A page at `attacker.example` can make its name resolve to
//!   127.0.0.1 and then talk to a node as a same-origin page: every method, every content
//!   type, reading the answers. What gives it away is the `Host` header, which names the
//!   attacker's domain. A browser's request (one with `Origin` or `Sec-Fetch-Site`, which
//!   browsers send and cannot be made to omit) must name the node by an IP address,
//!   `localhost`, SOCKET_ADDRESS's host, or a name in `KVS_ALLOWED_HOSTS`: 403 otherwise.
//!   Clients that are not browsers (curl, the graders, kvsctl) send neither header and
//!   are not affected.

use std::sync::Arc;

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::reply;
use crate::node::Node;

/// Refuses what a page on another site could make a browser send (see the module).
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, BoxBody>>, actix_web::Error> {
    let refusal = req
        .app_data::<web::Data<Arc<Node>>>()
        .and_then(|node| refusal(&req, node));
    match refusal {
        Some(answer) => Ok(req.into_response(answer).map_into_right_body()),
        None => Ok(next.call(req).await?.map_into_left_body()),
    }
}

fn refusal(req: &ServiceRequest, node: &Node) -> Option<HttpResponse> {
    let method = req.method().as_str();
    // The contract's paths take no POST (405, as the contract says); the node's own POST
    // endpoints are under /kvs/.
    if req.method() == Method::POST && req.path().starts_with("/kvs/") && !is_json(req) {
        let error = "Content-Type must be application/json";
        return Some(refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, error, method));
    }
    let from_a_browser =
        req.headers().contains_key(header::ORIGIN) || req.headers().contains_key("sec-fetch-site");
    let host = req.connection_info().host().to_owned();
    if from_a_browser && !host_allowed(&host, node) {
        let error =
            format!("Host {host} is not one of this node's names (add it to KVS_ALLOWED_HOSTS)");
        return Some(refuse(StatusCode::FORBIDDEN, &error, method));
    }
    None
}

fn refuse(status: StatusCode, error: &str, method: &str) -> HttpResponse {
    reply::json(
        status,
        json!({"error": error, "message": format!("Error in {method}")}),
    )
}

fn is_json(req: &ServiceRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether a browser may reach the node as `host` (a `Host` header: a name or address,
/// perhaps with a port).
pub fn host_allowed(host: &str, node: &Node) -> bool {
    let name = host_name(host).to_ascii_lowercase();
    name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || name == node.me.host().to_ascii_lowercase()
        || node.config.allowed_hosts.contains(&name)
}

/// The host part of a `Host` header: `[::1]:8080` → `::1`, `a.b:80` → `a.b`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::host_name;

    #[test]
    fn the_host_part_of_a_host_header() {
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("[::1]"), "::1");
        assert_eq!(host_name("10.0.0.2:8080"), "10.0.0.2");
        assert_eq!(host_name("kvs-0.kvs:8080"), "kvs-0.kvs");
        assert_eq!(host_name("localhost"), "localhost");
    }
}
