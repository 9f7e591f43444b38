//! The session file: the causal metadata of the last answer, kept between commands so
//! that consecutive kvsctl commands are causally consistent, whichever node they reach.
//!
//! The file is a small JSON object, `{"causal-metadata": "<token>"}`. It is replaced
//! atomically (a temporary file in the same directory, then a rename), so a command
//! killed halfway, or two commands finishing at once, never leave a torn file: the last
//! rename wins, and its token is one the store issued.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CliError;

/// The file's content.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct SessionFile {
    #[serde(rename = "causal-metadata", default)]
    causal_metadata: String,
}

/// The session of one kvsctl run: the token to send, and where to keep the next one.
#[derive(Debug)]
pub struct Session {
    /// `None` with `--no-session`: nothing is read or written.
    path: Option<PathBuf>,
    token: String,
    /// The token changed since it was loaded.
    changed: bool,
}

impl Session {
    /// A session that starts empty and is never saved (`--no-session`).
    pub fn disabled() -> Self {
        Session {
            path: None,
            token: String::new(),
            changed: false,
        }
    }

    /// Loads the session kept at `path`; a missing file is an empty session.
    pub fn load(path: PathBuf) -> Result<Self, CliError> {
        let token = match fs::read(&path) {
            Ok(bytes) => parse(&bytes).map_err(|e| {
                CliError::Local(format!(
                    "session file {} is not a kvsctl session ({e}); remove it with \
                     `kvsctl session reset`",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(CliError::Local(format!(
                    "cannot read session file {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(Session {
            path: Some(path),
            token,
            changed: false,
        })
    }

    /// The causal metadata to send with the next request (`""`: no dependencies).
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Keeps the `causal-metadata` of an answer: the store's answers already include
    /// everything the token sent depended on, so the newest replaces the older.
    pub fn observe(&mut self, token: &str) {
        if token != self.token {
            self.token = token.to_owned();
            self.changed = true;
        }
    }

    /// Writes the token back if it changed (and the session has a file).
    pub fn save(&self) -> Result<(), CliError> {
        match &self.path {
            Some(path) if self.changed => write_atomically(path, &render(&self.token)),
            _ => Ok(()),
        }
    }
}

fn parse(bytes: &[u8]) -> Result<String, serde_json::Error> {
    serde_json::from_slice::<SessionFile>(bytes).map(|f| f.causal_metadata)
}

fn render(token: &str) -> Vec<u8> {
    let file = SessionFile {
        causal_metadata: token.to_owned(),
    };
    // Serializing a struct of one string cannot fail.
    let mut text = serde_json::to_vec(&file).unwrap_or_default();
    text.push(b'\n');
    text
}

/// Removes the session file. Ok(true) if there was one.
pub fn reset(path: &Path) -> Result<bool, CliError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CliError::Local(format!(
            "cannot remove session file {}: {e}",
            path.display()
        ))),
    }
}

/// Replaces `path` by a file holding `content`: written to a temporary file beside it,
/// synced, then renamed over it, so that a reader sees either the old or the new file.
fn write_atomically(path: &Path, content: &[u8]) -> Result<(), CliError> {
    let local = |what: &str, e: std::io::Error| {
        CliError::Local(format!(
            "cannot {what} session file {}: {e}",
            path.display()
        ))
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| local("create the directory of the", e))?;
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(name);
    let written = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(content).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(local("write the", e));
    }
    Ok(())
}

/// Where the session is kept when neither `--session` nor `KVSCTL_SESSION` says:
/// `$XDG_STATE_HOME/kvsctl/session.json`, else `~/.local/state/kvsctl/session.json`.
/// `var` reads the environment (a parameter, for the tests).
pub fn default_path(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    // The XDG base directory spec ignores relative paths.
    let absolute = |name: &str| var(name).map(PathBuf::from).filter(|p| p.is_absolute());
    let state = absolute("XDG_STATE_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".local").join("state")))?;
    Some(state.join("kvsctl").join("session.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir()
            .join("kvsctl-unit")
            .join(format!("{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_missing_file_is_an_empty_session() {
        let dir = scratch("missing");
        let session = Session::load(dir.join("s.json")).expect("loads");
        assert_eq!(session.token(), "");
    }

    #[test]
    fn a_token_survives_a_save_and_a_load_in_new_directories() {
        let dir = scratch("round-trip");
        let path = dir.join("a").join("b").join("s.json");
        let mut session = Session::load(path.clone()).expect("loads");
        session.observe("tok-1");
        session.save().expect("saves");
        assert_eq!(Session::load(path.clone()).expect("loads").token(), "tok-1");
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap_or(&dir))
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert_eq!(names, vec![OsString::from("s.json")]);
        assert!(reset(&path).expect("resets"));
        assert!(!reset(&path).expect("resets again"));
        assert_eq!(Session::load(path).expect("loads").token(), "");
    }

    #[test]
    fn an_unchanged_session_is_not_written() {
        let dir = scratch("unchanged");
        let path = dir.join("s.json");
        let mut session = Session::load(path.clone()).expect("loads");
        session.observe("");
        session.save().expect("saves");
        assert!(!path.exists());
    }

    #[test]
    fn a_damaged_file_is_an_error_that_says_how_to_reset() {
        let dir = scratch("damaged");
        let path = dir.join("s.json");
        fs::create_dir_all(&dir).expect("dir");
        fs::write(&path, b"{not json").expect("write");
        let e = Session::load(path).expect_err("refused");
        assert!(e.to_string().contains("kvsctl session reset"), "{e}");
        assert_eq!(e.exit_code(), crate::error::EXIT_LOCAL);
    }

    #[test]
    fn a_disabled_session_keeps_nothing() {
        let mut session = Session::disabled();
        session.observe("tok");
        assert_eq!(session.token(), "tok");
        assert!(session.path().is_none());
        session.save().expect("nothing to save");
    }

    #[test]
    fn the_default_path_follows_xdg_then_home() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            default_path(env(&[("XDG_STATE_HOME", "/s"), ("HOME", "/h")])),
            Some(PathBuf::from("/s/kvsctl/session.json"))
        );
        assert_eq!(
            default_path(env(&[("XDG_STATE_HOME", "rel"), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.local/state/kvsctl/session.json"))
        );
        assert_eq!(default_path(env(&[])), None);
    }
}
