//! `/key-value-store/<key>`: validate, then serve locally or forward to the key's shard.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::reply::{self, Op};
use super::{hops, json_object, read_body, BODY_LIMIT};
use crate::causal::CausalMetadata;
use crate::error::KvsError;
use crate::node::{Node, Route, FREEZE_WAIT};
use crate::peer::{Relayed, EPOCH_HEADER, MAX_HOPS};

pub const MAX_KEY_CHARS: usize = 50;
const PREFIX: &str = "/key-value-store/";

/// A validated key-value request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRequest {
    pub op: Op,
    pub key: String,
    pub value: Option<String>,
    pub deps: CausalMetadata,
}

impl KvRequest {
    /// Checks a request in the order the contract's tables imply: the key, then the body.
    pub fn parse(op: Op, key: String, body: &[u8]) -> Result<Self, KvsError> {
        if key.is_empty() {
            return Err(KvsError::BadRequest("Key is missing".into()));
        }
        if key.chars().count() > MAX_KEY_CHARS {
            return Err(KvsError::KeyTooLong);
        }
        let fields = json_object(body).map_err(KvsError::BadRequest)?;
        let deps = match fields.get("causal-metadata") {
            None | Some(Value::Null) => CausalMetadata::default(),
            Some(Value::String(token)) => {
                CausalMetadata::decode(token).map_err(|_| KvsError::InvalidMetadata)?
            }
            Some(_) => {
                return Err(KvsError::BadRequest(
                    "causal-metadata must be a string".into(),
                ))
            }
        };
        let value = match (op, fields.get("value")) {
            (Op::Put, None) => return Err(KvsError::ValueMissing),
            (Op::Put, Some(Value::String(v))) => Some(v.clone()),
            (Op::Put, Some(_)) => {
                return Err(KvsError::BadRequest("value must be a string".into()))
            }
            _ => None,
        };
        Ok(Self {
            op,
            key,
            value,
            deps,
        })
    }
}

/// The key as the client wrote it: the rest of the path, percent-decoded once.
fn key_from_path(req: &HttpRequest) -> Result<String, KvsError> {
    let raw = req.uri().path().strip_prefix(PREFIX).unwrap_or_default();
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| KvsError::BadRequest("Key is not valid UTF-8".into()))
}

pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    node: web::Data<Arc<Node>>,
) -> HttpResponse {
    let Some(op) = Op::from_method(req.method()) else {
        return reply::method_not_allowed(req.method().as_str());
    };
    let Ok(body) = read_body(payload).await else {
        return reply::too_large(op.name(), BODY_LIMIT);
    };
    let key = match key_from_path(&req) {
        Ok(key) => key,
        Err(e) => return reply::error(op, &e),
    };
    let hops = hops(&req);
    if hops > 0 {
        let sender_epoch = req
            .headers()
            .get(EPOCH_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if sender_epoch > node.map().epoch {
            node.await_epoch(sender_epoch).await;
        }
    }
    // A request for another shard is relayed as it came: the owner validates it, and its
    // answer (an error included) goes back unchanged.
    match node.route(&key) {
        Ok(Route::Remote(..)) => forward(&node, &req, body, op, &key, hops).await,
        Ok(Route::Local(_)) => {
            let request = match KvRequest::parse(op, key, &body) {
                Ok(request) => request,
                Err(e) => return reply::error(op, &e),
            };
            match execute(&node, &request).await {
                Err(KvsError::NotOwner(_)) => {
                    forward(&node, &req, body, op, &request.key, hops).await
                }
                Ok(response) => response,
                Err(e) => reply::error(op, &e),
            }
        }
        Err(e) => reply::error(op, &e),
    }
}

/// A successful read, as the contract spells it.
#[derive(Serialize)]
struct Retrieved<'a> {
    message: &'static str,
    version: &'a str,
    #[serde(rename = "causal-metadata")]
    causal_metadata: &'a str,
    value: &'a str,
}

/// A successful write or delete, as the contract spells it.
#[derive(Serialize)]
struct Written<'a> {
    message: &'static str,
    version: &'a str,
    #[serde(rename = "causal-metadata")]
    causal_metadata: &'a str,
    #[serde(rename = "shard-id")]
    shard_id: String,
}

fn json_reply(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    match serde_json::to_string(body) {
        Ok(text) => HttpResponse::build(status)
            .content_type("application/json")
            .body(text),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

async fn execute(node: &Node, request: &KvRequest) -> Result<HttpResponse, KvsError> {
    match request.op {
        Op::Get => {
            let entry = node.read(&request.key, &request.deps).await?;
            let body = Retrieved {
                message: "Retrieved successfully",
                version: &entry.metadata,
                causal_metadata: &entry.metadata,
                value: entry.value.as_deref().unwrap_or_default(),
            };
            Ok(json_reply(StatusCode::OK, &body))
        }
        Op::Put | Op::Delete => {
            let outcome = node
                .write(&request.key, request.value.clone(), &request.deps)
                .await?;
            let (status, message) = match (request.op, outcome.created) {
                (Op::Put, true) => (StatusCode::CREATED, "Added successfully"),
                (Op::Put, false) => (StatusCode::OK, "Updated successfully"),
                _ => (StatusCode::OK, "Deleted successfully"),
            };
            let body = Written {
                message,
                version: &outcome.metadata,
                causal_metadata: &outcome.metadata,
                shard_id: outcome.shard.to_string(),
            };
            Ok(json_reply(status, &body))
        }
    }
}

/// Relays the request to a member of the key's shard, trying the next one if a member
/// cannot be reached, and passes its answer back unchanged.
async fn forward(
    node: &Node,
    req: &HttpRequest,
    body: Bytes,
    op: Op,
    key: &str,
    hops: u32,
) -> HttpResponse {
    let unavailable = || reply::error(op, &KvsError::Unavailable);
    if hops >= MAX_HOPS {
        return unavailable();
    }
    let Ok(Route::Remote(_, members)) = node.route(key) else {
        return unavailable();
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    let method = match op {
        Op::Get => reqwest::Method::GET,
        Op::Put => reqwest::Method::PUT,
        Op::Delete => reqwest::Method::DELETE,
    };
    let timeout = node.config.dependency_timeout + FREEZE_WAIT + Duration::from_secs(5);
    let relayed = Relayed {
        method,
        path_and_query: path,
        body,
        hops: hops + 1,
        epoch: node.map().epoch,
    };
    for member in members.into_iter().take(3) {
        match node.peers.relay(member, &relayed, timeout).await {
            Ok((status, bytes)) => {
                return HttpResponse::build(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                )
                .content_type("application/json")
                .body(bytes)
            }
            Err(e) => log::debug!("forwarding to {member} failed: {e}"),
        }
    }
    unavailable()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(op: Op, key: &str, body: &str) -> Result<KvRequest, KvsError> {
        KvRequest::parse(op, key.to_owned(), body.as_bytes())
    }

    #[test]
    fn key_length_counts_characters_not_bytes() {
        assert!(parse(Op::Put, &"ж".repeat(50), r#"{"value":"v"}"#).is_ok());
        assert_eq!(
            parse(Op::Put, &"k".repeat(51), r#"{"value":"v"}"#),
            Err(KvsError::KeyTooLong)
        );
    }

    #[test]
    fn key_length_is_checked_before_the_value() {
        assert_eq!(
            parse(Op::Put, &"k".repeat(51), "{}"),
            Err(KvsError::KeyTooLong)
        );
    }

    #[test]
    fn put_needs_a_string_value() {
        assert_eq!(parse(Op::Put, "k", "{}"), Err(KvsError::ValueMissing));
        assert_eq!(parse(Op::Put, "k", ""), Err(KvsError::ValueMissing));
        assert!(matches!(
            parse(Op::Put, "k", r#"{"value":3}"#),
            Err(KvsError::BadRequest(_))
        ));
        assert_eq!(
            parse(Op::Put, "k", r#"{"value":""}"#).unwrap().value,
            Some(String::new())
        );
    }

    #[test]
    fn metadata_must_be_issued_by_the_store() {
        assert_eq!(
            parse(Op::Get, "k", r#"{"causal-metadata":"forged"}"#),
            Err(KvsError::InvalidMetadata)
        );
        assert!(parse(Op::Get, "k", r#"{"causal-metadata":""}"#).is_ok());
        assert!(parse(Op::Get, "k", r#"{"causal-metadata":null}"#).is_ok());
        assert!(matches!(
            parse(Op::Delete, "k", r#"{"causal-metadata":5}"#),
            Err(KvsError::BadRequest(_))
        ));
    }

    #[test]
    fn bodies_must_be_json_objects() {
        assert!(matches!(
            parse(Op::Put, "k", "value=v"),
            Err(KvsError::BadRequest(_))
        ));
        assert!(matches!(
            parse(Op::Put, "k", "[1]"),
            Err(KvsError::BadRequest(_))
        ));
        assert!(parse(Op::Get, "k", "").is_ok());
    }
}
