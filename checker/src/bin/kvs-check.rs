//! `kvs-check HISTORY.json [--json]`: checks a recorded history and prints the report.
//!
//! Exit code 0 if the history is clean, 1 if it has anomalies, 2 on a usage or load error.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: kvs-check HISTORY.json [--json]";

/// What the command line asked for.
struct Args {
    path: PathBuf,
    json: bool,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut path = None;
    let mut json = false;
    for arg in args {
        match arg.as_str() {
            "--json" => json = true,
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            _ if path.is_some() => return Err("more than one history given".to_string()),
            _ => path = Some(PathBuf::from(arg)),
        }
    }
    let path = path.ok_or_else(|| "no history given".to_string())?;
    Ok(Args { path, json })
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(why) => {
            eprintln!("kvs-check: {why}; {USAGE}");
            return ExitCode::from(2);
        }
    };
    let history = match kvs_checker::load(&args.path) {
        Ok(history) => history,
        Err(err) => {
            eprintln!("kvs-check: {err}");
            return ExitCode::from(2);
        }
    };
    let report = kvs_checker::check(&history);
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("kvs-check: cannot encode the report: {err}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{report}");
    }
    ExitCode::from(if report.is_clean() { 0 } else { 1 })
}
