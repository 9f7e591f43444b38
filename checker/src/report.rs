//! What the checker found, for people (Display) and for tools (serde).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kinds of anomaly, in the order reports list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// A read returned a value no put of its key wrote.
    NeverWritten,
    /// Two puts wrote the same value: the history itself is invalid.
    DuplicateValue,
    /// Happens-before has a cycle.
    Cycle,
    /// A get returned a value whose put was sent after the get's answer arrived.
    FutureRead,
    /// A read missed a write that was in its causal past.
    StaleRead,
    /// Final reads of one key on different nodes disagree.
    Divergence,
    /// A final read shows that an acknowledged (or observed) write was lost.
    LostWrite,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 7] = [
        AnomalyKind::NeverWritten,
        AnomalyKind::DuplicateValue,
        AnomalyKind::Cycle,
        AnomalyKind::FutureRead,
        AnomalyKind::StaleRead,
        AnomalyKind::Divergence,
        AnomalyKind::LostWrite,
    ];

    /// The name used in JSON and in reports.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::NeverWritten => "never_written",
            AnomalyKind::DuplicateValue => "duplicate_value",
            AnomalyKind::Cycle => "cycle",
            AnomalyKind::FutureRead => "future_read",
            AnomalyKind::StaleRead => "stale_read",
            AnomalyKind::Divergence => "divergence",
            AnomalyKind::LostWrite => "lost_write",
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One violation, with the ids (indexes in `History::ops`) of the ops involved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub ops: Vec<usize>,
    /// One line for a human, naming sessions, keys, values, nodes and times.
    pub message: String,
}

/// The size of the history and how long the check took.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub ops: usize,
    /// Puts and deletes with status Ok or Unknown.
    pub writes: usize,
    /// Gets with status Ok or NotFound.
    pub reads: usize,
    pub sessions: usize,
    pub keys: usize,
    pub final_reads: usize,
    pub elapsed_ms: u64,
}

/// The checker's verdict on one history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub anomalies: Vec<Anomaly>,
    pub stats: Stats,
}

/// How many anomalies `Display` shows in full.
const SHOWN: usize = 20;

impl Report {
    pub fn is_clean(&self) -> bool {
        self.anomalies.is_empty()
    }

    pub fn count(&self, kind: AnomalyKind) -> usize {
        self.anomalies.iter().filter(|a| a.kind == kind).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        let verdict = if self.is_clean() {
            "clean, no anomalies".to_string()
        } else {
            format!("{} anomalies", self.anomalies.len())
        };
        writeln!(
            f,
            "kvs-check: {verdict} in {} ops ({} writes, {} reads, {} sessions, {} keys, {} final reads; checked in {} ms)",
            s.ops, s.writes, s.reads, s.sessions, s.keys, s.final_reads, s.elapsed_ms
        )?;
        for kind in AnomalyKind::ALL {
            let n = self.count(kind);
            if n > 0 {
                writeln!(f, "  {kind}: {n}")?;
            }
        }
        for a in self.anomalies.iter().take(SHOWN) {
            writeln!(f, "{} {:?}: {}", a.kind, a.ops, a.message)?;
        }
        if self.anomalies.len() > SHOWN {
            writeln!(f, "... and {} more", self.anomalies.len() - SHOWN)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anomaly(kind: AnomalyKind, op: usize) -> Anomaly {
        Anomaly {
            kind,
            ops: vec![op],
            message: format!("anomaly at op {op}"),
        }
    }

    #[test]
    fn display_counts_kinds_and_shows_at_most_twenty() {
        let mut anomalies: Vec<Anomaly> = (0..23)
            .map(|i| anomaly(AnomalyKind::StaleRead, i))
            .collect();
        anomalies.push(anomaly(AnomalyKind::Cycle, 99));
        let report = Report {
            anomalies,
            stats: Stats::default(),
        };
        let text = report.to_string();
        assert!(text.starts_with("kvs-check: 24 anomalies in 0 ops"));
        assert!(text.contains("  stale_read: 23\n"));
        assert!(text.contains("  cycle: 1\n"));
        assert!(text.contains("stale_read [19]: anomaly at op 19"));
        assert!(!text.contains("anomaly at op 20"));
        assert!(text.ends_with("... and 4 more\n"));
    }

    #[test]
    fn clean_report_says_so() {
        let report = Report::default();
        assert!(report.is_clean());
        assert!(report
            .to_string()
            .starts_with("kvs-check: clean, no anomalies"));
    }

    #[test]
    fn kinds_serialize_in_snake_case() {
        for kind in AnomalyKind::ALL {
            let json = serde_json::to_string(&kind).expect("serializable");
            assert_eq!(json, format!("\"{}\"", kind.name()));
        }
        let report = Report {
            anomalies: vec![anomaly(AnomalyKind::LostWrite, 3)],
            stats: Stats::default(),
        };
        let json = serde_json::to_string(&report).expect("serializable");
        let back: Report = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, report);
    }
}
