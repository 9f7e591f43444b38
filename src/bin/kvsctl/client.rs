//! The HTTP side of kvsctl: the list of nodes, and failover between them.
//!
//! A request goes to the first node of the list; when that node cannot be reached, to the
//! next. What "cannot be reached" allows depends on the request:
//! - a read may go to the next node after any transport failure (refused, timed out,
//!   reset): asking again changes nothing in the store;
//! - a write goes to the next node only when it was certainly not sent (the connection
//!   could not be made). Once sent, a lost answer says nothing of whether it was applied,
//!   and sending it to another node could overwrite a later write of another client: the
//!   caller gets [`CliError::FateUnknown`] instead.

use std::fmt;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::error::CliError;

/// A node as the user named it (`host:port`), and the URL its requests start with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    label: String,
    base: String,
}

impl NodeAddr {
    /// Parses `host:port` or `http://host:port` (a trailing `/` is allowed); the store
    /// speaks plain HTTP, so anything else is refused here rather than at the first request.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.starts_with("https://") {
            return Err("kvs nodes speak plain HTTP: use host:port or http://host:port".into());
        }
        let label = text.strip_prefix("http://").unwrap_or(text);
        let label = label.strip_suffix('/').unwrap_or(label);
        let (host, port) = label
            .rsplit_once(':')
            .ok_or_else(|| format!("'{text}' is not host:port"))?;
        if host.is_empty() || host.contains('/') {
            return Err(format!("'{text}' is not host:port"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(NodeAddr {
                label: label.to_owned(),
                base: format!("http://{label}"),
            }),
            _ => Err(format!(
                "'{text}': the port must be a number from 1 to 65535"
            )),
        }
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// Whether a request may be sent again to another node after a failure (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Read,
    Write,
}

/// One request, as kvsctl means it; the client picks the node.
#[derive(Debug, Clone)]
pub struct Call {
    /// What the request does, for messages ("get 'k'").
    pub what: String,
    pub method: Method,
    /// Path and query, already percent-encoded.
    pub path: String,
    pub body: Option<Value>,
    /// Sends the admin token (view changes, add-member, reshard, fault injection).
    pub admin: bool,
    pub delivery: Delivery,
}

impl Call {
    pub fn read(what: impl Into<String>, path: impl Into<String>) -> Self {
        Call {
            what: what.into(),
            method: Method::GET,
            path: path.into(),
            body: None,
            admin: false,
            delivery: Delivery::Read,
        }
    }

    pub fn write(what: impl Into<String>, method: Method, path: impl Into<String>) -> Self {
        Call {
            method,
            delivery: Delivery::Write,
            ..Call::read(what, path)
        }
    }

    pub fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }
}

/// A node's answer, whatever its status.
#[derive(Debug)]
pub struct Answer {
    pub node: String,
    pub status: u16,
    /// The JSON body; `Null` when empty, a string holding the text when not JSON.
    pub body: Value,
}

impl Answer {
    /// The store's own words for an error answer: `error`, else `message`, else the body.
    pub fn error_text(&self) -> String {
        ["error", "message"]
            .iter()
            .find_map(|f| self.body.get(f).and_then(Value::as_str))
            .map(str::to_owned)
            .unwrap_or_else(|| match &self.body {
                Value::String(text) => text.chars().take(200).collect(),
                Value::Null => "(no body)".to_owned(),
                other => other.to_string(),
            })
    }

    /// Ok for a 2xx answer, else the store's error.
    pub fn success(self, what: &str) -> Result<Answer, CliError> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        Err(CliError::Store {
            what: what.to_owned(),
            message: self.error_text(),
            node: self.node,
            status: self.status,
        })
    }

    /// A 2xx answer's body lacks what kvsctl expected.
    pub fn unexpected(&self, what: &str, missing: &str) -> CliError {
        let body: String = self.body.to_string().chars().take(200).collect();
        CliError::Protocol {
            what: what.to_owned(),
            node: self.node.clone(),
            detail: format!("no {missing} in {body}"),
        }
    }

    /// A string field of the body.
    pub fn text(&self, what: &str, field: &str) -> Result<String, CliError> {
        self.body
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| self.unexpected(what, field))
    }

    /// A list field in either wire format: a comma-joined string (2019) or an array of
    /// strings (2020).
    pub fn list(&self, what: &str, field: &str) -> Result<Vec<String>, CliError> {
        parse_list(self.body.get(field)).ok_or_else(|| self.unexpected(what, field))
    }
}

/// A list of the contract in either format; `None` if it is neither.
pub fn parse_list(value: Option<&Value>) -> Option<Vec<String>> {
    match value? {
        Value::String(joined) => Some(
            joined
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

/// How an attempt at one node failed.
enum Failure {
    /// The connection could not be made: nothing was sent.
    NotSent(String),
    /// Sent, or perhaps sent, and no answer came.
    Lost(String),
}

/// How long kvsctl waits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a whole request at one node, connection and answer included.
    pub request: Duration,
    /// For the connection to one node.
    pub connect: Duration,
}

pub struct Client {
    http: reqwest::Client,
    nodes: Vec<NodeAddr>,
    token: Option<String>,
    timeouts: Timeouts,
}

impl Client {
    pub fn new(
        nodes: Vec<NodeAddr>,
        token: Option<String>,
        timeouts: Timeouts,
    ) -> Result<Self, CliError> {
        let http = reqwest::Client::builder()
            // The store runs on a local or private network: a proxy from the environment
            // would only get in the way (and hide which node failed).
            .no_proxy()
            .timeout(timeouts.request)
            .connect_timeout(timeouts.connect.min(timeouts.request))
            .build()
            .map_err(|e| CliError::Local(format!("cannot start the HTTP client: {e}")))?;
        Ok(Client {
            http,
            nodes,
            token: token.filter(|t| !t.is_empty()),
            timeouts,
        })
    }

    /// Sends `call` to the first node that takes it (module docs for the rules).
    pub async fn call(&self, call: &Call) -> Result<Answer, CliError> {
        let mut attempts = Vec::new();
        for node in &self.nodes {
            match self.attempt(node, call).await {
                Ok(answer) => return Ok(answer),
                Err(Failure::NotSent(why)) => attempts.push(format!("{node} ({why})")),
                Err(Failure::Lost(why)) if call.delivery == Delivery::Read => {
                    attempts.push(format!("{node} ({why})"))
                }
                Err(Failure::Lost(reason)) => {
                    return Err(CliError::FateUnknown {
                        what: call.what.clone(),
                        node: node.to_string(),
                        reason,
                    })
                }
            }
        }
        Err(CliError::Unreachable {
            what: call.what.clone(),
            attempts: if attempts.is_empty() {
                "no --node given".to_owned()
            } else {
                attempts.join(", ")
            },
        })
    }

    /// Sends `call` to `node` only (fault injection targets one node).
    pub async fn call_at(&self, node: &NodeAddr, call: &Call) -> Result<Answer, CliError> {
        match self.attempt(node, call).await {
            Ok(answer) => Ok(answer),
            Err(Failure::NotSent(why)) => Err(CliError::Unreachable {
                what: call.what.clone(),
                attempts: format!("{node} ({why})"),
            }),
            Err(Failure::Lost(reason)) => Err(CliError::FateUnknown {
                what: call.what.clone(),
                node: node.to_string(),
                reason,
            }),
        }
    }

    async fn attempt(&self, node: &NodeAddr, call: &Call) -> Result<Answer, Failure> {
        let mut request = self
            .http
            .request(call.method.clone(), format!("{}{}", node.base, call.path));
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        if let (true, Some(token)) = (call.admin, &self.token) {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| {
            let why = self.describe(&e);
            if e.is_connect() {
                Failure::NotSent(why)
            } else {
                Failure::Lost(why)
            }
        })?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Failure::Lost(self.describe(&e)))?;
        Ok(Answer {
            node: node.to_string(),
            status,
            body: parse_body(&bytes),
        })
    }

    /// A short reason for a transport error: the timeout that ran out, or the innermost
    /// cause ("Connection refused (os error 111)") rather than reqwest's whole chain.
    fn describe(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            let (what, limit) = if e.is_connect() {
                ("no connection", self.timeouts.connect)
            } else {
                ("no answer", self.timeouts.request)
            };
            return format!("{what} within {} ms", limit.as_millis());
        }
        let mut cause: &dyn std::error::Error = e;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        match cause
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
        {
            // The usual ones without "(os error 111)": one is listed for every node.
            Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".to_owned(),
            Some(std::io::ErrorKind::ConnectionReset) => "connection reset".to_owned(),
            _ => cause.to_string(),
        }
    }
}

fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_addresses_take_host_port_or_an_http_url() {
        let a = NodeAddr::parse("127.0.0.1:8082").expect("parses");
        assert_eq!(a.to_string(), "127.0.0.1:8082");
        assert_eq!(a.base, "http://127.0.0.1:8082");
        let b = NodeAddr::parse("http://localhost:8083/").expect("parses");
        assert_eq!(
            (b.label.as_str(), b.base.as_str()),
            ("localhost:8083", "http://localhost:8083")
        );
        assert!(NodeAddr::parse("[::1]:8080").is_ok());
        for bad in [
            "localhost",
            ":8080",
            "host:0",
            "host:http",
            "https://h:1",
            "h:1/x",
        ] {
            assert!(NodeAddr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_are_read_in_both_wire_formats() {
        assert_eq!(
            parse_list(Some(&json!("a,b"))),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            parse_list(Some(&json!(["a", "b"]))),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(parse_list(Some(&json!(""))), Some(vec![]));
        assert_eq!(parse_list(Some(&json!([1]))), None);
        assert_eq!(parse_list(None), None);
    }

    #[test]
    fn an_error_answer_is_told_in_the_stores_words() {
        let answer = |status, body| Answer {
            node: "n:1".into(),
            status,
            body,
        };
        let e = answer(
            404,
            json!({"error": "Key does not exist", "message": "Error in GET"}),
        )
        .success("get 'k'")
        .expect_err("404");
        assert_eq!(e.to_string(), "get 'k': Key does not exist (404 from n:1)");
        let e = answer(400, json!({"message": "Not enough nodes"}))
            .success("reshard")
            .expect_err("400");
        assert!(e.to_string().contains("Not enough nodes"), "{e}");
        let e = answer(502, parse_body(b"<html>bad gateway</html>"))
            .success("get 'k'")
            .expect_err("502");
        assert!(e.to_string().contains("bad gateway"), "{e}");
        assert!(answer(201, Value::Null).success("put").is_ok());
    }
}
