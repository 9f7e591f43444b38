//! The history format: what the clients of a test observed, as JSON.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What an operation asked the store to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Put,
    Delete,
    Get,
}

/// How an operation ended, as far as its client could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// put: 200/201 (the write happened); get: 200 with a value; delete: 200 (a tombstone was written).
    Ok,
    /// A get or delete answered 404: the client observed the key absent; writes nothing.
    NotFound,
    /// Definitely had no effect (a 4xx, or a read that failed in any way).
    Fail,
    /// A write whose fate is unknown (timeout, 503, connection reset): may or may not have happened.
    Unknown,
}

impl Status {
    /// Whether the client got an answer, and with it the metadata that puts this op in the causal
    /// past of the session's later ops.
    pub fn is_success(self) -> bool {
        matches!(self, Status::Ok | Status::NotFound)
    }
}

/// One request of one session, with what its client saw of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub session: u32,
    pub kind: Kind,
    pub key: String,
    /// put: the value written; get: the value read (None for NotFound); delete: None.
    #[serde(default)]
    pub value: Option<String>,
    pub status: Status,
    /// Microseconds since the start of the test, when the request was sent.
    pub start_us: u64,
    /// When its answer (or failure) arrived.
    pub end_us: u64,
    /// Which node the client asked; used in reports only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Op {
    /// A put or delete that did, or may have, changed the store.
    pub fn is_write(&self) -> bool {
        matches!(self.kind, Kind::Put | Kind::Delete)
            && matches!(self.status, Status::Ok | Status::Unknown)
    }

    /// What the op observed of its key, if anything: `Some(Some(v))` a value, `Some(None)` absence.
    ///
    /// A get answered 200 without a value is taken as absence, since it carries no value to place.
    pub fn observation(&self) -> Option<Option<&str>> {
        match (self.kind, self.status) {
            (Kind::Get, Status::Ok) => Some(self.value.as_deref()),
            (Kind::Get | Kind::Delete, Status::NotFound) => Some(None),
            _ => None,
        }
    }
}

/// A read of one key on one node after all faults were healed and the store had converged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalRead {
    pub node: String,
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
}

/// Everything the clients observed during one test.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Ops of all sessions; each session's ops appear in the order the session issued them.
    pub ops: Vec<Op>,
    #[serde(default)]
    pub final_reads: Vec<FinalRead>,
}

/// Why a history file could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            LoadError::Parse { path, source } => {
                write!(f, "{} is not a valid history: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Io { source, .. } => Some(source),
            LoadError::Parse { source, .. } => Some(source),
        }
    }
}

/// Reads a history from a JSON file.
pub fn load(path: &Path) -> Result<History, LoadError> {
    // Reading the whole file first and parsing the bytes is much faster than parsing from a reader.
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| LoadError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Put => "put",
            Kind::Delete => "delete",
            Kind::Get => "get",
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::NotFound => "not_found",
            Status::Fail => "fail",
            Status::Unknown => "unknown",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("kvs-checker-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("temp dir is writable");
        path
    }

    #[test]
    fn parses_the_documented_field_names() {
        let json = r#"{"ops": [
            {"session": 1, "kind": "put", "key": "x", "value": "a", "status": "ok", "start_us": 1, "end_us": 2, "node": "n1"},
            {"session": 2, "kind": "get", "key": "x", "value": null, "status": "not_found", "start_us": 3, "end_us": 4},
            {"session": 2, "kind": "delete", "key": "x", "status": "unknown", "start_us": 5, "end_us": 6},
            {"session": 2, "kind": "get", "key": "x", "status": "fail", "start_us": 7, "end_us": 8}
        ]}"#;
        let path = temp_file("names.json", json);
        let history = load(&path).expect("valid history");
        std::fs::remove_file(&path).ok();
        assert_eq!(history.ops.len(), 4);
        assert!(history.final_reads.is_empty());
        assert_eq!(history.ops[0].node.as_deref(), Some("n1"));
        assert_eq!(history.ops[1].status, Status::NotFound);
        assert_eq!(history.ops[2].kind, Kind::Delete);
        assert_eq!(history.ops[2].value, None);
        assert_eq!(history.ops[3].status, Status::Fail);
    }

    #[test]
    fn a_missing_file_is_an_io_error() {
        let path = std::env::temp_dir().join("kvs-checker-no-such-file.json");
        let err = load(&path).expect_err("no such file");
        assert!(matches!(err, LoadError::Io { .. }));
        assert!(err.to_string().contains("cannot read"));
    }

    #[test]
    fn malformed_json_is_a_parse_error() {
        let path = temp_file("bad.json", r#"{"ops": [{"session": "one"}]}"#);
        let err = load(&path).expect_err("bad history");
        std::fs::remove_file(&path).ok();
        assert!(matches!(err, LoadError::Parse { .. }));
    }

    #[test]
    fn observations_follow_kind_and_status() {
        let mut op = Op {
            session: 1,
            kind: Kind::Get,
            key: "k".into(),
            value: Some("v".into()),
            status: Status::Ok,
            start_us: 0,
            end_us: 1,
            node: None,
        };
        assert_eq!(op.observation(), Some(Some("v")));
        op.status = Status::Unknown;
        assert_eq!(op.observation(), None);
        op.kind = Kind::Delete;
        assert!(op.is_write());
        op.status = Status::NotFound;
        assert_eq!(op.observation(), Some(None));
        assert!(!op.is_write());
    }
}
