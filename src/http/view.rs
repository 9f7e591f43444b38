//! `/key-value-store-view`: the live nodes, and administrative additions and removals.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::reply::{self, Op};
use super::{json_object, read_body, refuse_unless_admin};
use crate::error::KvsError;
use crate::identity::{NodeIdError, Source};
use crate::node::Node;
use crate::peer::messages::ViewChange;
use crate::NodeId;

/// Reads `socket-address` from a body, with an error that says what is wrong.
pub fn socket_address(body: &[u8]) -> Result<NodeId, KvsError> {
    let fields = json_object(body).map_err(KvsError::BadRequest)?;
    match fields.get("socket-address") {
        None | Some(Value::Null) => Err(KvsError::BadRequest("socket-address is missing".into())),
        // A name a view change brings is unvouched until a shard map names it.
        Some(Value::String(text)) => match NodeId::parse_from(text, Source::Unvouched) {
            Ok(node) => Ok(node),
            Err(NodeIdError::Malformed(_)) => Err(KvsError::BadRequest(format!(
                "socket-address '{text}' is not an ip:port address"
            ))),
            Err(e) => Err(KvsError::BadRequest(format!(
                "socket-address '{text}': {e}"
            ))),
        },
        Some(_) => Err(KvsError::BadRequest(
            "socket-address must be a string".into(),
        )),
    }
}

pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    node: web::Data<Arc<Node>>,
) -> HttpResponse {
    let Some(op) = Op::from_method(req.method().as_str()) else {
        return reply::method_not_allowed(req.method().as_str());
    };
    if op == Op::Get {
        let view: Vec<String> = node
            .membership
            .view()
            .iter()
            .map(ToString::to_string)
            .collect();
        return reply::ok(json!({
            "message": "View retrieved successfully",
            "view": view.join(","),
        }));
    }
    if let Some(refused) = refuse_unless_admin(&req, &node, op) {
        return refused;
    }
    let body = match read_body(&req, payload).await {
        Ok(body) => body,
        Err(e) => return super::body_refused(op.name(), e),
    };
    let address = match socket_address(&body) {
        Ok(a) => a,
        Err(e) => return reply::error(op, &e),
    };
    let add = op == Op::Put;
    let result = if add {
        node.membership.add_to_view(address.clone())
    } else {
        node.membership.remove_from_view(address.clone())
    };
    if let Err(e) = result {
        return reply::error(op, &e);
    }
    // Nodes tell each other over the internal endpoint: this request is a client's.
    tokio::spawn(relay_change(node.get_ref().clone(), add, address));
    if add {
        reply::json(
            StatusCode::CREATED,
            json!({"message": "Replica added successfully to the view"}),
        )
    } else {
        reply::ok(json!({"message": "Replica deleted successfully from the view"}))
    }
}

/// Tells the other live nodes of an administrative view change (best effort).
async fn relay_change(node: Arc<Node>, add: bool, address: NodeId) {
    let change = ViewChange {
        add,
        node: address.clone(),
    };
    let others: Vec<NodeId> = node
        .membership
        .up_nodes()
        .into_iter()
        .filter(|n| *n != node.me && *n != address)
        .collect();
    for peer in others {
        let _ = node
            .peers
            .view_change(peer, &change, std::time::Duration::from_secs(2))
            .await;
    }
}
