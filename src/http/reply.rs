//! Turning results into the contract's JSON bodies and status codes.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde_json::{json, Value};

use crate::config::ApiFormat;
use crate::error::KvsError;

pub use crate::error::Op;

pub fn json(status: StatusCode, body: Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(body.to_string())
}

fn status_of(error: &KvsError) -> StatusCode {
    match error {
        KvsError::KeyNotFound
        | KvsError::UnknownShard
        | KvsError::NotAMember
        | KvsError::AlreadyInView
        | KvsError::NotInView => StatusCode::NOT_FOUND,
        KvsError::KeyTooLong
        | KvsError::ValueMissing
        | KvsError::InvalidMetadata
        | KvsError::BadRequest(_)
        | KvsError::NotEnoughNodes => StatusCode::BAD_REQUEST,
        KvsError::Conflict(_) => StatusCode::CONFLICT,
        KvsError::AdminTokenRequired => StatusCode::UNAUTHORIZED,
        KvsError::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        KvsError::Unavailable
        | KvsError::WriteFateUnknown
        | KvsError::DependenciesMissing
        | KvsError::NotOwner(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The contract's error body for `error` in operation `op`.
pub fn error(op: Op, error: &KvsError) -> HttpResponse {
    let (status, body) = error_body(op, error);
    json(status, body)
}

/// The status and body of [`error`].
pub fn error_body(op: Op, error: &KvsError) -> (StatusCode, Value) {
    error_body_for(op.name(), error)
}

/// [`error`] for a request of any method (`"POST"`, say).
pub fn error_for(method: &str, error: &KvsError) -> HttpResponse {
    let (status, body) = error_body_for(method, error);
    json(status, body)
}

fn error_body_for(method: &str, error: &KvsError) -> (StatusCode, Value) {
    let message = format!("Error in {method}");
    let body = match error {
        KvsError::KeyNotFound => json!({
            "doesExist": false,
            "error": error.to_string(),
            "message": message,
        }),
        KvsError::NotEnoughNodes => json!({ "message": error.to_string() }),
        KvsError::NotOwner(_) => json!({
            "error": KvsError::Unavailable.to_string(),
            "message": message,
        }),
        _ => json!({ "error": error.to_string(), "message": message }),
    };
    (status_of(error), body)
}

pub fn ok(body: Value) -> HttpResponse {
    json(StatusCode::OK, body)
}

/// A list field in the node's wire format: a comma-joined string (2019) or an array (2020).
pub fn list(format: ApiFormat, items: impl IntoIterator<Item = String>) -> Value {
    let items: Vec<String> = items.into_iter().collect();
    match format {
        ApiFormat::Y2019 => Value::String(items.join(",")),
        ApiFormat::Y2020 => Value::Array(items.into_iter().map(Value::String).collect()),
    }
}

pub fn method_not_allowed(op_name: &str) -> HttpResponse {
    json(
        StatusCode::METHOD_NOT_ALLOWED,
        json!({ "error": "Method not allowed", "message": format!("Error in {op_name}") }),
    )
}

pub fn not_found(op_name: &str) -> HttpResponse {
    json(
        StatusCode::NOT_FOUND,
        json!({ "error": "No such endpoint", "message": format!("Error in {op_name}") }),
    )
}

pub fn too_large(op_name: &str, limit: usize) -> HttpResponse {
    json(
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({
            "error": format!("Request body is larger than {limit} bytes"),
            "message": format!("Error in {op_name}"),
        }),
    )
}

/// 408: the request's body did not arrive within `limit`.
pub fn too_slow(op_name: &str, limit: std::time::Duration) -> HttpResponse {
    json(
        StatusCode::REQUEST_TIMEOUT,
        json!({
            "error": format!("Request body not received within {} s", limit.as_secs()),
            "message": format!("Error in {op_name}"),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body(resp: HttpResponse) -> (u16, Value) {
        let status = resp.status().as_u16();
        let bytes = resp.into_body().try_into_bytes().unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn not_found_keys_say_does_not_exist() {
        assert_eq!(
            body(error(Op::Delete, &KvsError::KeyNotFound)),
            (
                404,
                json!({"doesExist": false, "error": "Key does not exist", "message": "Error in DELETE"})
            )
        );
    }

    #[test]
    fn not_enough_nodes_is_a_bare_message() {
        assert_eq!(
            body(error(Op::Put, &KvsError::NotEnoughNodes)),
            (
                400,
                json!({"message": "Not enough nodes to provide fault-tolerance with the given shard count!"})
            )
        );
    }

    #[test]
    fn a_write_of_unknown_fate_says_to_read_before_retrying() {
        let (status, body) = body(error(Op::Put, &KvsError::WriteFateUnknown));
        assert_eq!(status, 503);
        assert_eq!(body["message"], "Error in PUT");
        let text = body["error"].as_str().unwrap();
        assert!(
            text.starts_with("Unable to satisfy request") && text.contains("may have been applied")
        );
    }

    #[test]
    fn lists_follow_the_format() {
        let items = || vec!["0".to_string(), "1".to_string()];
        assert_eq!(list(ApiFormat::Y2019, items()), json!("0,1"));
        assert_eq!(list(ApiFormat::Y2020, items()), json!(["0", "1"]));
    }
}
