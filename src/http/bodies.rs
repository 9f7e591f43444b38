//! Request bodies in flight, bounded in bytes: a request that carries a body reserves its
//! length (its `Content-Length`, or [`super::BODY_LIMIT`] when it does not say) from the
//! node's budget for bodies (`MemoryBudget::bodies_bytes`, from `KVS_MEMORY_MB`) until it
//! is answered. When the budget is spent, the request is answered 503 at once, before its
//! body is read: the write was not applied, and the client may send it again. Without the
//! bound, every connection (`KVS_MAX_CLIENT_CONNECTIONS`) could hold a 1 MiB value while it
//! waits for replication or a quorum, 4 GiB in all.

use std::sync::Arc;

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::web;
use serde_json::json;
use tokio::sync::Semaphore;

use super::{reply, BODY_LIMIT};

/// The budget's unit: permits are KiB, so a budget of gigabytes fits a semaphore.
const UNIT: usize = 1024;

/// The bytes request bodies in flight may take.
pub struct BodyBudget {
    permits: Arc<Semaphore>,
}

impl BodyBudget {
    pub fn new(bytes: usize) -> Self {
        let units = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(units)),
        }
    }
}

/// How many bytes a request's body may take: what its head says, or the limit.
fn reserved(req: &ServiceRequest) -> usize {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    match declared {
        Some(n) if !chunked => n.min(BODY_LIMIT),
        _ if chunked => BODY_LIMIT,
        _ => 0,
    }
}

/// Holds a request's body reservation until it is answered, or answers 503.
pub async fn reserve(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, BoxBody>>, actix_web::Error> {
    let bytes = reserved(&req);
    let budget = req.app_data::<web::Data<BodyBudget>>().cloned();
    let (Some(budget), true) = (budget, bytes > 0) else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let units = bytes.div_ceil(UNIT) as u32;
    let Ok(permit) = budget.permits.clone().try_acquire_many_owned(units) else {
        let method = req.method().as_str().to_owned();
        let answer = reply::json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "error": "Node is busy: request bodies in flight fill its memory budget (KVS_MEMORY_MB); try again",
                "message": format!("Error in {method}"),
            }),
        );
        return Ok(req.into_response(answer).map_into_right_body());
    };
    let answer = next.call(req).await;
    drop(permit);
    Ok(answer?.map_into_left_body())
}
