//! kvsctl's errors and the exit code each one maps to.
//!
//! The codes are part of kvsctl's interface (scripts branch on them); `kvsctl --help`
//! and the README list them. They separate what a script must do next: fix the command
//! (2), accept the store's answer (1), retry safely (3), read before retrying (4), or fix
//! the local environment (5).

use std::path::PathBuf;

/// Exit code: the store answered with an error (key not found, bad request, 401, 503...).
pub const EXIT_STORE: u8 = 1;
/// Exit code: the command line is wrong (clap uses 2 as well).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: no node could be reached; nothing was applied, a retry is safe.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: a write was sent but its answer was lost: it may have been applied.
pub const EXIT_FATE_UNKNOWN: u8 = 4;
/// Exit code: a local problem (session file, input file, stdin).
pub const EXIT_LOCAL: u8 = 5;

/// The error text the store uses when a write's fate is unknown (a forwarded write whose
/// answer was lost inside the store); kvsctl reports it with [`EXIT_FATE_UNKNOWN`].
const STORE_FATE_UNKNOWN: &str = "Unable to satisfy request: the write may have been applied";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A command line clap accepted but kvsctl cannot carry out (an empty key...).
    #[error("{0}")]
    Usage(String),

    /// The store answered with a status other than 2xx.
    #[error("{what}: {message} ({status} from {node})")]
    Store {
        what: String,
        node: String,
        status: u16,
        message: String,
    },

    /// The store refused the session's causal metadata: it was issued by another store
    /// (or the store's secret changed). Dropping it silently would lose causality.
    #[error(
        "{what}: the store at {node} refused the session's causal metadata (issued by \
         another store?); start a new session with `kvsctl session reset`{}, or run with --no-session",
        session.as_ref().map(|p| format!(" (file {})", p.display())).unwrap_or_default()
    )]
    InvalidSession {
        what: String,
        node: String,
        session: Option<PathBuf>,
    },

    /// The store answered 2xx with a body kvsctl cannot read.
    #[error("{what}: unexpected answer from {node}: {detail}")]
    Protocol {
        what: String,
        node: String,
        detail: String,
    },

    /// Every node was tried and none answered; nothing was applied.
    #[error("{what}: no node reachable: {attempts}")]
    Unreachable { what: String, attempts: String },

    /// A write was sent and its answer lost.
    #[error(
        "{what}: {node}: {reason} after the request was sent; the write may have been \
         applied: read before retrying"
    )]
    FateUnknown {
        what: String,
        node: String,
        reason: String,
    },

    /// A local file or stream could not be read or written.
    #[error("{0}")]
    Local(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Store { message, .. } if message.starts_with(STORE_FATE_UNKNOWN) => {
                EXIT_FATE_UNKNOWN
            }
            CliError::Store { .. }
            | CliError::InvalidSession { .. }
            | CliError::Protocol { .. } => EXIT_STORE,
            CliError::Unreachable { .. } => EXIT_UNREACHABLE,
            CliError::FateUnknown { .. } => EXIT_FATE_UNKNOWN,
            CliError::Local(_) => EXIT_LOCAL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(message: &str) -> CliError {
        CliError::Store {
            what: "put 'k'".into(),
            node: "n:1".into(),
            status: 503,
            message: message.into(),
        }
    }

    #[test]
    fn each_error_has_its_documented_code() {
        assert_eq!(store("Key does not exist").exit_code(), 1);
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        let unreachable = CliError::Unreachable {
            what: "get 'k'".into(),
            attempts: "a (refused)".into(),
        };
        assert_eq!(unreachable.exit_code(), 3);
        assert_eq!(CliError::Local("x".into()).exit_code(), 5);
    }

    #[test]
    fn the_stores_own_unknown_fate_is_reported_as_such() {
        let e = store(
            "Unable to satisfy request: the write may have been applied; read the key before retrying",
        );
        assert_eq!(e.exit_code(), EXIT_FATE_UNKNOWN);
        assert_eq!(store("Unable to satisfy request").exit_code(), EXIT_STORE);
    }

    #[test]
    fn an_invalid_session_says_how_to_reset_it_on_one_line() {
        let e = CliError::InvalidSession {
            what: "get 'k'".into(),
            node: "127.0.0.1:8082".into(),
            session: Some(PathBuf::from("/tmp/s.json")),
        };
        let text = e.to_string();
        assert!(text.contains("kvsctl session reset"), "{text}");
        assert!(text.contains("--no-session"), "{text}");
        assert!(text.contains("/tmp/s.json"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }
}
