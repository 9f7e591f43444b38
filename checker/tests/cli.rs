//! The `kvs-check` binary: output and exit codes.

use std::path::PathBuf;
use std::process::{Command, Output};

fn write_history(name: &str, json: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("kvs-check-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, json).expect("temp dir is writable");
    path
}

fn kvs_check(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvs-check"))
        .args(args)
        .output()
        .expect("kvs-check runs")
}

const CLEAN: &str = r#"{"ops": [
    {"session": 1, "kind": "put", "key": "x", "value": "a", "status": "ok", "start_us": 0, "end_us": 5},
    {"session": 1, "kind": "get", "key": "x", "value": "a", "status": "ok", "start_us": 6, "end_us": 9}
], "final_reads": [{"node": "n1", "key": "x", "value": "a"}]}"#;

const STALE: &str = r#"{"ops": [
    {"session": 1, "kind": "put", "key": "x", "value": "a", "status": "ok", "start_us": 0, "end_us": 5},
    {"session": 1, "kind": "get", "key": "x", "value": null, "status": "not_found", "start_us": 6, "end_us": 9, "node": "n2"}
]}"#;

#[test]
fn a_clean_history_exits_zero() {
    let path = write_history("clean.json", CLEAN);
    let out = kvs_check(&[path.to_str().expect("utf-8 temp path")]);
    std::fs::remove_file(&path).ok();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("clean"));
}

#[test]
fn anomalies_exit_one_and_json_is_a_report() {
    let path = write_history("stale.json", STALE);
    let path_arg = path.to_str().expect("utf-8 temp path");
    let text = kvs_check(&[path_arg]);
    let json = kvs_check(&["--json", path_arg]);
    std::fs::remove_file(&path).ok();
    assert_eq!(text.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&text.stdout).contains("stale_read: 1"));
    assert_eq!(json.status.code(), Some(1));
    let report: kvs_checker::Report =
        serde_json::from_slice(&json.stdout).expect("--json prints a Report");
    assert_eq!(report.anomalies.len(), 1);
    assert_eq!(report.anomalies[0].ops, vec![1, 0]);
}

#[test]
fn usage_and_load_errors_exit_two() {
    for args in [&[][..], &["a.json", "b.json"], &["--verbose", "a.json"]] {
        let out = kvs_check(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
    }
    let missing = kvs_check(&["/nonexistent/history.json"]);
    assert_eq!(missing.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&missing.stderr).lines().count(), 1);
}
