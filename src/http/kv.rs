//! `/key-value-store/<key>`: validate, then serve locally or forward to the key's shard.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::reply::{self, Op};
use super::{json_object, read_body};
use crate::budget::Deadline;
use crate::causal::CausalMetadata;
use crate::error::KvsError;
use crate::metrics::{Delivery, Forward};
use crate::node::{Node, Route};
use crate::peer::MAX_HOPS;
use crate::quorum::WriteQuorum;
use crate::relay::{Call, Kind, RelayError};
use crate::NodeId;

pub const MAX_KEY_CHARS: usize = 50;
const PREFIX: &str = "/key-value-store/";
const LISTING_PATH: &str = "/key-value-store";

/// A validated key-value request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRequest {
    pub op: Op,
    pub key: String,
    pub value: Option<String>,
    pub deps: CausalMetadata,
    /// A write's own `"write-quorum"`, overriding the node's default.
    pub quorum: Option<WriteQuorum>,
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
        let quorum = match op {
            Op::Get => None,
            _ => WriteQuorum::from_json(fields.get("write-quorum"))
                .map_err(|e| KvsError::BadRequest(e.to_string()))?,
        };
        Ok(Self {
            op,
            key,
            value,
            deps,
            quorum,
        })
    }
}

/// The key as the client wrote it: the rest of the path, percent-decoded once.
pub(crate) fn key_from_path(path_and_query: &str) -> Result<String, KvsError> {
    let path = path_and_query.split('?').next().unwrap_or_default();
    let raw = path.strip_prefix(PREFIX).unwrap_or_default();
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| KvsError::BadRequest("Key is not valid UTF-8".into()))
}

/// A key-value answer, whichever way the request came (HTTP or the relay channel).
#[derive(Debug)]
pub struct KvAnswer {
    pub status: StatusCode,
    /// A JSON body.
    pub body: Bytes,
}

impl KvAnswer {
    fn error(op: Op, error: &KvsError) -> Self {
        let (status, body) = reply::error_body(op, error);
        Self {
            status,
            body: Bytes::from(body.to_string()),
        }
    }

    /// An answer relayed from another node, status as received.
    fn relayed(status: u16, body: Bytes) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            body,
        }
    }

    fn into_response(self) -> HttpResponse {
        HttpResponse::build(self.status)
            .content_type("application/json")
            .body(self.body)
    }
}

pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    node: web::Data<Arc<Node>>,
) -> HttpResponse {
    // Served for the whole `/key-value-store` scope: `/key-value-store/<key>`, and the
    // listing at `/key-value-store` itself.
    if !req.uri().path().starts_with(PREFIX) {
        if req.uri().path() == LISTING_PATH && req.method() == actix_web::http::Method::GET {
            let body = match read_body(&req, payload).await {
                Ok(body) => body,
                Err(e) => return super::body_refused("GET", e),
            };
            let body = metadata_from_header(&req, body);
            return super::list::handle(req.query_string(), &body, node).await;
        }
        return reply::not_found(req.method().as_str());
    }
    let Some(op) = Op::from_method(req.method().as_str()) else {
        return reply::method_not_allowed(req.method().as_str());
    };
    let body = match read_body(&req, payload).await {
        Ok(body) => body,
        Err(e) => return super::body_refused(op.name(), e),
    };
    let body = match op {
        Op::Get => metadata_from_header(&req, body),
        _ => body,
    };
    // Every HTTP request is a client's: nodes forward over the relay channel only, so no
    // header can make a request skip forwarding or shorten its wait.
    let arrival = Arrival {
        hops: 0,
        sender_epoch: 0,
        deadline: Deadline::for_client(),
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path(), |p| p.as_str());
    serve(&node, op, path, body, arrival).await.into_response()
}

/// The header a GET may carry its causal metadata in instead of a body: browsers cannot
/// send a GET with a body (the dashboard reads this way; see docs/tools.md).
pub const METADATA_HEADER: &str = "causal-metadata";

/// A GET's body, or, when it has none, `{"causal-metadata": <the header>}`: from then on,
/// relayed or not, the request is the contract's.
fn metadata_from_header(req: &HttpRequest, body: Bytes) -> Bytes {
    if !body.iter().all(u8::is_ascii_whitespace) {
        return body;
    }
    match req.headers().get(METADATA_HEADER).map(|v| v.to_str()) {
        Some(Ok(token)) => Bytes::from(serde_json::json!({ "causal-metadata": token }).to_string()),
        // Not text: the parser answers it as metadata this store did not issue.
        Some(Err(_)) => Bytes::from_static(br#"{"causal-metadata":"?"}"#),
        None => body,
    }
}

/// A client's request `op` relayed by another node (see [`crate::internal::relay_handler`]),
/// served as if it came by HTTP.
pub async fn serve_relayed(node: &Arc<Node>, op: Op, call: Call) -> (u16, Bytes) {
    let arrival = Arrival {
        hops: call.hops,
        sender_epoch: call.epoch,
        deadline: Deadline::from_budget_ms(call.budget_ms),
    };
    let answer = serve(node, op, &call.path, call.body, arrival).await;
    (answer.status.as_u16(), answer.body)
}

/// How a request reached this node.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    /// 0 from a client; otherwise the nodes it passed through.
    hops: u32,
    /// The forwarding node's map epoch.
    sender_epoch: u64,
    /// When the node before this one (or the client) stops waiting, less a margin.
    deadline: Deadline,
}

/// Serves a key-value request that reached this node directly or was forwarded.
async fn serve(
    node: &Node,
    op: Op,
    path_and_query: &str,
    body: Bytes,
    arrival: Arrival,
) -> KvAnswer {
    let Arrival {
        hops,
        sender_epoch,
        deadline,
    } = arrival;
    let key = match key_from_path(path_and_query) {
        Ok(key) => key,
        Err(e) => return KvAnswer::error(op, &e),
    };
    if hops > 0 && sender_epoch > node.routing.map().epoch {
        node.routing.await_epoch(sender_epoch, deadline).await;
    }
    // A request for another shard is relayed as it came: the owner validates it, and its
    // answer (an error included) goes back unchanged.
    let relayed = |members| Relayed {
        op,
        path_and_query,
        body: body.clone(),
        members,
        hops,
        deadline,
    };
    match node.route(&key) {
        Ok(Route::Remote(_, members)) => forward(node, relayed(members)).await,
        Ok(Route::Local(_)) => {
            let request = match KvRequest::parse(op, key, &body) {
                Ok(request) => request,
                Err(e) => return KvAnswer::error(op, &e),
            };
            let linearizable = crate::linear::requested(path_and_query);
            // A replica that lacks the client's dependencies sends the request to the node
            // that issued the client's token (it has them all) rather than wait for them to
            // be replicated here. Once per request: a request that was already sent on for
            // this reason (or forwarded by another shard's node and then sent on) waits.
            // (A linearizable request asks a majority anyway.)
            if hops <= 1 && !linearizable {
                if let Some(issuer) = node.better_placed(&request.deps) {
                    match relay_once(node, &relayed(Vec::new()), issuer, Forward::Issuer).await {
                        Ok(answer) => return answer,
                        Err(Undelivered::Unknown) if op != Op::Get => {
                            return KvAnswer::error(op, &KvsError::WriteFateUnknown)
                        }
                        // Not reached: wait for the dependencies here after all.
                        Err(_) => {}
                    }
                }
            }
            let executed = if linearizable {
                execute_linearizable(node, &request, deadline).await
            } else {
                execute(node, &request, deadline).await
            };
            match executed {
                // The map changed while the request waited: route it again.
                Err(KvsError::NotOwner(_)) => match node.route(&request.key) {
                    Ok(Route::Remote(_, members)) => forward(node, relayed(members)).await,
                    _ => KvAnswer::error(op, &KvsError::Unavailable),
                },
                Ok(answer) => answer,
                Err(e) => KvAnswer::error(op, &e),
            }
        }
        Err(e) => KvAnswer::error(op, &e),
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

fn json_reply(status: StatusCode, body: &impl Serialize) -> KvAnswer {
    match serde_json::to_vec(body) {
        Ok(text) => KvAnswer {
            status,
            body: Bytes::from(text),
        },
        Err(_) => KvAnswer {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: Bytes::new(),
        },
    }
}

async fn execute(
    node: &Node,
    request: &KvRequest,
    deadline: Deadline,
) -> Result<KvAnswer, KvsError> {
    match request.op {
        Op::Get => {
            let entry = node.read(&request.key, &request.deps, deadline).await?;
            Ok(retrieved(node, request, entry))
        }
        Op::Put | Op::Delete => {
            let needed = node.quorum_needed(request.quorum)?;
            let outcome = node
                .write(&request.key, request.value.clone(), &request.deps, deadline)
                .await?;
            if needed > 1 {
                node.await_quorum(outcome.dot, needed, deadline).await?;
            }
            Ok(written(request.op, &outcome))
        }
    }
}

/// A request with `?consistency=linearizable` (see [`crate::linear`]); the answers are the
/// contract's, as for a causal request.
async fn execute_linearizable(
    node: &Node,
    request: &KvRequest,
    deadline: Deadline,
) -> Result<KvAnswer, KvsError> {
    let key = &request.key;
    match request.op {
        Op::Get => match crate::linear::read(node, key, &request.deps, deadline).await? {
            Some(entry) if entry.is_live() => Ok(retrieved(node, request, entry)),
            _ => Err(KvsError::KeyNotFound),
        },
        Op::Put | Op::Delete => {
            let value = request.value.clone();
            let outcome = crate::linear::write(node, key, value, &request.deps, deadline).await?;
            Ok(written(request.op, &outcome))
        }
    }
}

fn retrieved(node: &Node, request: &KvRequest, entry: crate::storage::Entry) -> KvAnswer {
    let metadata = read_metadata(&request.deps, entry.metadata, node.me.clone());
    let body = Retrieved {
        message: "Retrieved successfully",
        version: &metadata,
        causal_metadata: &metadata,
        value: entry.value.as_deref().unwrap_or_default(),
    };
    json_reply(StatusCode::OK, &body)
}

fn written(op: Op, outcome: &crate::node::WriteOutcome) -> KvAnswer {
    let (status, message) = match (op, outcome.created) {
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
    json_reply(status, &body)
}

/// The metadata a read answers: the client's dependencies merged with the value's, so that
/// a client that passes it on never loses a dependency by reading (its own earlier writes
/// above all). A client that sent none gets the stored token exactly, on every replica: the
/// same string the write of the value returned. A token that already covers the other is
/// answered as it is; a true merge names this node, which has applied both, as its issuer.
fn read_metadata(client: &CausalMetadata, stored: String, me: NodeId) -> String {
    if client.is_empty() {
        return stored;
    }
    let Ok(decoded) = CausalMetadata::decode_stored(&stored) else {
        // Only a token this store issued is ever stored; keep the client's, never drop it.
        return client.encode();
    };
    if decoded.covers(client) {
        return stored;
    }
    let merged = client.merged(&decoded);
    match merged.issuer {
        Some(_) => merged.encode(),
        None => merged.issued_by(me).encode(),
    }
}

/// A request on its way to another shard.
struct Relayed<'a> {
    op: Op,
    path_and_query: &'a str,
    body: Bytes,
    /// Members of the key's shard, in order of preference.
    members: Vec<NodeId>,
    /// Hops so far.
    hops: u32,
    /// When this node must have answered.
    deadline: Deadline,
}

/// Why a relayed request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undelivered {
    /// It never left this node: trying elsewhere (or here) is safe.
    NotSent,
    /// It may have been applied: a write must not be sent again.
    Unknown,
}

/// How often one write is sent to its owner: again only when a connection died with it on
/// it, and each attempt is bounded by the request's deadline as well.
const MAX_WRITE_ATTEMPTS: u8 = 4;

/// Relays the request to a member of the key's shard, trying the next one if a member
/// cannot be reached, and passes its answer back unchanged. A write whose answer is lost
/// on the way is not sent to another member: it may have been applied, and a second copy
/// could overwrite a later write of another client (see [`relay_once`]).
async fn forward(node: &Node, request: Relayed<'_>) -> KvAnswer {
    let unavailable = || KvAnswer::error(request.op, &KvsError::Unavailable);
    if request.hops >= MAX_HOPS {
        return unavailable();
    }
    for member in request.members.iter().take(3) {
        match relay_once(node, &request, member.clone(), Forward::Shard).await {
            Ok(answer) => return answer,
            Err(Undelivered::Unknown) if request.op != Op::Get => {
                return KvAnswer::error(request.op, &KvsError::WriteFateUnknown)
            }
            Err(_) => {}
        }
    }
    unavailable()
}

/// Relays the request to `member` (see [`relay_attempts`]), and counts how that went.
async fn relay_once(
    node: &Node,
    request: &Relayed<'_>,
    member: NodeId,
    reason: Forward,
) -> Result<KvAnswer, Undelivered> {
    let result = relay_attempts(node, request, member).await;
    let outcome = match result {
        Ok(_) => Delivery::Answered,
        Err(Undelivered::NotSent) => Delivery::NotSent,
        Err(Undelivered::Unknown) => Delivery::Lost,
    };
    crate::metrics::forwarded(reason, outcome);
    result
}

/// Relays the request to `member`. A read whose connection dies is given up at once (the
/// caller tries another member). A write whose connection dies is sent again to the same
/// member, with the same id, on a new connection: the member answers a write it applied
/// from memory instead of applying it twice ([`crate::relay::remembered`]), so a stuck
/// connection costs a few seconds, not the write.
async fn relay_attempts(
    node: &Node,
    request: &Relayed<'_>,
    member: NodeId,
) -> Result<KvAnswer, Undelivered> {
    let Some(budget_ms) = request.deadline.forward_budget_ms() else {
        return Err(Undelivered::NotSent);
    };
    let epoch = node.routing.map().epoch;
    // Nodes forward only over the relay channel: a client's HTTP request is always a
    // client's, whatever headers it sends.
    let mut call = Call {
        id: node.peers.next_call_id(),
        origin: 0,
        attempt: 0,
        op: Kind::Kv(request.op),
        hops: request.hops + 1,
        epoch,
        budget_ms,
        path: request.path_and_query.to_owned(),
        body: request.body.clone(),
    };
    loop {
        let result = node
            .peers
            .relay(member.clone(), call.clone(), request.deadline.remaining())
            .await;
        let again = call.attempt + 1 < MAX_WRITE_ATTEMPTS && request.op != Op::Get;
        match result {
            Ok(answer) => return Ok(KvAnswer::relayed(answer.status, answer.body)),
            Err(e @ RelayError::NotSent(..)) if call.attempt == 0 => {
                log::debug!("forwarding to {member} failed: {e}");
                return Err(Undelivered::NotSent);
            }
            Err(e @ RelayError::Lost(..)) if again => {
                let Some(budget_ms) = request.deadline.forward_budget_ms() else {
                    log::warn!("forwarding to {member} failed: {e}; no time left to retry");
                    return Err(Undelivered::Unknown);
                };
                log::warn!("forwarding to {member}: {e}; sending the write again");
                call.attempt += 1;
                call.budget_ms = budget_ms;
            }
            Err(e) => {
                log::warn!("forwarding to {member} failed: {e}");
                return Err(Undelivered::Unknown);
            }
        }
    }
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
    fn a_write_may_ask_for_its_own_quorum() {
        let put = parse(Op::Put, "k", r#"{"value":"v","write-quorum":2}"#).unwrap();
        assert_eq!(put.quorum, Some(WriteQuorum::Count(2)));
        let delete = parse(Op::Delete, "k", r#"{"write-quorum":"all"}"#).unwrap();
        assert_eq!(delete.quorum, Some(WriteQuorum::All));
        assert_eq!(
            parse(Op::Put, "k", r#"{"value":"v"}"#).unwrap().quorum,
            None
        );
        assert!(matches!(
            parse(Op::Put, "k", r#"{"value":"v","write-quorum":0}"#),
            Err(KvsError::BadRequest(_))
        ));
        // A read has nothing to wait for: the field is ignored.
        assert_eq!(
            parse(Op::Get, "k", r#"{"write-quorum":"x"}"#)
                .unwrap()
                .quorum,
            None
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
