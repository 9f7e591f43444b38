//! What a command prints: plain text by default, one JSON document with `--json`.

use serde_json::Value;

/// A command's result in both forms; `main` prints the one asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub json: Value,
    /// Printed as is: it carries its own final newline (or none, for `get --no-newline`).
    pub text: String,
    /// A line for stderr in text mode, next to a success (e.g. that a listing has more).
    pub note: Option<String>,
}

impl Report {
    pub fn new(json: Value, text: impl Into<String>) -> Self {
        Report {
            json,
            text: text.into(),
            note: None,
        }
    }

    /// The bytes to write to stdout.
    pub fn render(&self, json: bool) -> String {
        if json {
            format!("{}\n", self.json)
        } else {
            self.text.clone()
        }
    }
}

/// One item a line.
pub fn lines(items: &[String]) -> String {
    items.iter().map(|i| format!("{i}\n")).collect()
}

/// Left-aligned columns two spaces apart; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    std::iter::once(&header)
        .chain(rows)
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            format!("{}\n", cells.join("  ").trim_end())
        })
        .collect()
}

/// The key counts of shards, with their total.
pub fn count_table(counts: &[(String, u64)]) -> String {
    let mut rows: Vec<Vec<String>> = counts
        .iter()
        .map(|(shard, n)| vec![shard.clone(), n.to_string()])
        .collect();
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    rows.push(vec!["total".into(), total.to_string()]);
    table(&["SHARD", "KEYS"], &rows)
}

/// `GET /kvs/status` as a table: one row a node, and which node's view it is.
pub fn status_table(status: &Value) -> String {
    let nodes = status
        .get("nodes")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = nodes.iter().map(status_row).collect();
    let mut text = format!(
        "as seen by {} (shard map epoch {})\n",
        cell(status.get("node")),
        cell(status.get("epoch"))
    );
    text.push_str(&table(
        &["NODE", "STATE", "SHARD", "KEYS", "LAG", "READY"],
        &rows,
    ));
    if nodes.iter().any(|n| !is_up(n)) {
        text.push_str("(KEYS and LAG of a node that is not up are the last it published)\n");
    }
    text
}

fn is_up(node: &Value) -> bool {
    node.get("up").and_then(Value::as_bool) == Some(true)
        && node.get("failed").and_then(Value::as_bool) != Some(true)
}

fn status_row(node: &Value) -> Vec<String> {
    let flag = |name| node.get(name).and_then(Value::as_bool);
    let state = match (flag("failed"), flag("up")) {
        (Some(true), _) => "failed",
        (_, Some(true)) => "up",
        _ => "down",
    };
    let ready = match flag("ready") {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    };
    vec![
        cell(node.get("address")),
        state.to_owned(),
        cell(node.get("shard-id")),
        cell(node.get("keys")),
        max_lag(node.get("lag")),
        ready.to_owned(),
    ]
}

/// The largest lag over the node's peers: how far behind its slowest peer is.
fn max_lag(lag: Option<&Value>) -> String {
    lag.and_then(Value::as_object)
        .and_then(|peers| peers.values().filter_map(Value::as_u64).max())
        .map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// A scalar as a table cell: strings bare, absent or null as `-`.
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_is_one_line_and_text_is_as_given() {
        let r = Report::new(json!({"a": [1, 2]}), "v");
        assert_eq!(r.render(true), "{\"a\":[1,2]}\n");
        assert_eq!(r.render(false), "v");
    }

    #[test]
    fn tables_align_their_columns() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["wide cell".into(), "x".into()],
                vec!["b".into(), "y".into()],
            ],
        );
        assert_eq!(t, "A          LONGER\nwide cell  x\nb          y\n");
    }

    #[test]
    fn counts_end_with_their_total() {
        let t = count_table(&[("0".into(), 3), ("1".into(), 4)]);
        assert_eq!(t, "SHARD  KEYS\n0      3\n1      4\ntotal  7\n");
    }

    #[test]
    fn the_status_table_shows_every_node_and_marks_stale_figures() {
        let status = json!({
            "node": "a:1", "epoch": 3,
            "nodes": [
                {"address": "a:1", "up": true, "shard-id": "0", "keys": 10,
                 "lag": {"b:1": 0, "c:1": 4}, "ready": true, "failed": false},
                {"address": "b:1", "up": false, "shard-id": "0", "keys": 9,
                 "lag": {}, "ready": false, "failed": false},
                {"address": "d:1", "up": true, "shard-id": null, "keys": null,
                 "lag": {}, "ready": true, "failed": true}
            ]
        });
        let text = status_table(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "as seen by a:1 (shard map epoch 3)");
        assert_eq!(lines[1], "NODE  STATE   SHARD  KEYS  LAG  READY");
        assert_eq!(lines[2], "a:1   up      0      10    4    yes");
        assert_eq!(lines[3], "b:1   down    0      9     -    no");
        assert_eq!(lines[4], "d:1   failed  -      -     -    yes");
        assert!(lines[5].contains("last it published"), "{text}");
    }

    #[test]
    fn lines_end_each_item_with_a_newline() {
        assert_eq!(lines(&["a".into(), "b".into()]), "a\nb\n");
        assert_eq!(lines(&[]), "");
    }
}
