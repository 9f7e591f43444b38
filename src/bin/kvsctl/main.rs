//! `kvsctl`, the command-line client of kvs (`kvsctl --help`).
//!
//! Modules: `args` (the command line), `client` (nodes and failover), `session` (the
//! causal metadata kept between runs), `commands` (what each subcommand asks), `output`
//! (text and JSON), `digest` (image keys), `error` (errors and exit codes).

mod args;
mod client;
mod commands;
mod digest;
mod error;
mod output;
mod session;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::json;

use args::{Cli, Command, SessionAction};
use client::{Client, Timeouts};
use commands::Ctx;
use error::CliError;
use output::Report;
use session::Session;

fn main() -> ExitCode {
    // clap prints usage errors and exits 2, and --help/--version with 0.
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report_error(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

/// One line on stderr, whatever the error text holds (an HTML body, a key with a newline).
fn report_error(e: &CliError) {
    let text = e.to_string().replace(['\n', '\r'], " ");
    eprintln!("kvsctl: {text}");
}

fn run(cli: Cli) -> Result<(), CliError> {
    let session_path = session_path(&cli)?;
    if let Command::Session { action } = &cli.command {
        return print(&session_command(action, session_path)?, cli.json);
    }
    let session = match session_path {
        Some(path) => Session::load(path)?,
        None => Session::disabled(),
    };
    let timeouts = Timeouts {
        request: Duration::from_millis(cli.timeout_ms),
        connect: Duration::from_millis(cli.connect_timeout_ms),
    };
    let client = Client::new(cli.nodes, cli.token, timeouts)?;
    let mut ctx = Ctx {
        client,
        session,
        linearizable: cli.linearizable,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Local(format!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(commands::run(&mut ctx, cli.command));
    // Saved even after an error: an earlier answer of the same command (a page of a
    // listing) may have moved the session on.
    let saved = ctx.session.save();
    print(&result?, cli.json)?;
    saved
}

/// The session file to use: `--session`/`KVSCTL_SESSION`, else the default; `None` with
/// `--no-session`.
fn session_path(cli: &Cli) -> Result<Option<PathBuf>, CliError> {
    if cli.no_session {
        return Ok(None);
    }
    cli.session
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
        .or_else(|| session::default_path(|name| std::env::var_os(name)))
        .map(Some)
        .ok_or_else(|| {
            CliError::Local(
                "no place for the session file: give --session PATH (or KVSCTL_SESSION, or \
                 set HOME), or use --no-session"
                    .into(),
            )
        })
}

fn session_command(action: &SessionAction, path: Option<PathBuf>) -> Result<Report, CliError> {
    let Some(path) = path else {
        let json = json!({ "path": null, "causal-metadata": "" });
        return Ok(Report::new(json, "no session (--no-session)\n"));
    };
    match action {
        SessionAction::Show => {
            let session = Session::load(path.clone())?;
            let token = session.token();
            let json = json!({ "path": path, "causal-metadata": token });
            let shown = if token.is_empty() { "(none)" } else { token };
            let text = format!(
                "session file: {}\ncausal metadata: {shown}\n",
                path.display()
            );
            Ok(Report::new(json, text))
        }
        SessionAction::Reset => {
            let removed = session::reset(&path)?;
            let json = json!({ "path": path, "removed": removed });
            let text = if removed {
                format!("removed session file {}\n", path.display())
            } else {
                format!("no session file at {}\n", path.display())
            };
            Ok(Report::new(json, text))
        }
    }
}

/// Writes the report to stdout (and its note to stderr, in text mode). A closed pipe
/// (`kvsctl ls | head`) is not an error.
fn print(report: &Report, json: bool) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(report.render(json).as_bytes())
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(CliError::Local(format!("cannot write to stdout: {e}")))
        }
        _ => {}
    }
    if let (false, Some(note)) = (json, &report.note) {
        eprintln!("kvsctl: {note}");
    }
    Ok(())
}
