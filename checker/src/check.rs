//! The rules: each looks at the index and happens-before and reports what it finds.

use std::collections::HashMap;
use std::time::Instant;

use crate::hb::{Hb, Past};
use crate::history::{FinalRead, History, Kind, Status};
use crate::index::{Index, Source};
use crate::report::{Anomaly, AnomalyKind, Report, Stats};

/// Checks a history against causal consistency; see the crate documentation for the rules.
pub fn check(history: &History) -> Report {
    let started = Instant::now();
    let ix = Index::build(history);
    let mut found = Vec::new();
    report_duplicates(&ix, &mut found);
    report_read_sources(&ix, &mut found);
    let hb = Hb::build(&ix);
    if let Some(cycle) = &hb.cycle {
        found.push(cycle_anomaly(&ix, cycle));
    }
    report_stale_reads(&ix, &hb, &mut found);
    report_final_reads(&ix, &hb, &mut found);
    // Stable, so each kind keeps the order of the ops it was found at.
    found.sort_by_key(|a| a.kind);
    let mut stats = stats(&ix);
    stats.elapsed_ms = started.elapsed().as_millis() as u64;
    Report {
        anomalies: found,
        stats,
    }
}

fn stats(ix: &Index) -> Stats {
    let ops = ix.ops();
    Stats {
        ops: ops.len(),
        writes: ops.iter().filter(|op| op.is_write()).count(),
        reads: ops
            .iter()
            .filter(|op| op.kind == Kind::Get && op.status.is_success())
            .count(),
        sessions: ix.session_count,
        keys: ix.keys.len(),
        final_reads: ix.history.final_reads.len(),
        elapsed_ms: 0,
    }
}

/// One line about an op: who did what where and when.
fn describe(ix: &Index, id: usize) -> String {
    let op = &ix.ops()[id];
    let what = match (op.kind, op.value.as_deref(), op.status) {
        (Kind::Put, Some(v), _) | (Kind::Get, Some(v), Status::Ok) => {
            format!("{} {}={v:?}", op.kind, op.key)
        }
        _ => format!("{} {}", op.kind, op.key),
    };
    let node = op
        .node
        .as_deref()
        .map(|n| format!(" on {n}"))
        .unwrap_or_default();
    format!(
        "op {id} (session {} {what} -> {}{node}, {}-{}us)",
        op.session, op.status, op.start_us, op.end_us
    )
}

fn report_duplicates(ix: &Index, found: &mut Vec<Anomaly>) {
    let mut groups = ix.duplicates.clone();
    groups.sort_unstable();
    for group in groups {
        let value = ix.ops()[group[0]].value.as_deref().unwrap_or_default();
        let who: Vec<String> = group.iter().map(|&id| describe(ix, id)).collect();
        found.push(Anomaly {
            kind: AnomalyKind::DuplicateValue,
            message: format!(
                "value {value:?} is written by {} puts: {}",
                group.len(),
                who.join(", ")
            ),
            ops: group,
        });
    }
}

/// Checks that each value a get returned was written to its key, and not after the get.
fn report_read_sources(ix: &Index, found: &mut Vec<Anomaly>) {
    for (id, op) in ix.ops().iter().enumerate() {
        let Some(Some(value)) = op.observation() else {
            continue;
        };
        let put = match ix.resolve(&op.key, value) {
            Source::Put(put) => put,
            source => {
                found.extend(never_written(ix, source, &describe(ix, id), Some(id)));
                continue;
            }
        };
        if ix.ops()[put].start_us > op.end_us {
            found.push(Anomaly {
                kind: AnomalyKind::FutureRead,
                ops: vec![id, put],
                message: format!(
                    "{} returned a value whose put was sent only after the answer arrived: {}",
                    describe(ix, id),
                    describe(ix, put)
                ),
            });
        }
    }
}

/// The never_written anomaly for a read (described by `reader`) whose value resolved to `source`.
fn never_written(
    ix: &Index,
    source: Source,
    reader: &str,
    read_op: Option<usize>,
) -> Option<Anomaly> {
    let (why, put) = match source {
        Source::Put(_) => return None,
        Source::Missing => ("no put wrote it".to_string(), None),
        Source::OtherKey(p) => (
            format!("it was written to another key by {}", describe(ix, p)),
            Some(p),
        ),
        Source::Ineffective(p) => (
            format!("only {} wrote it, which failed", describe(ix, p)),
            Some(p),
        ),
    };
    Some(Anomaly {
        kind: AnomalyKind::NeverWritten,
        ops: read_op.into_iter().chain(put).collect(),
        message: format!("{reader} returned a value never written to its key: {why}"),
    })
}

fn cycle_anomaly(ix: &Index, cycle: &[usize]) -> Anomaly {
    const LISTED: usize = 6;
    let mut steps: Vec<String> = cycle
        .iter()
        .take(LISTED)
        .map(|&id| describe(ix, id))
        .collect();
    if cycle.len() > LISTED {
        steps.push(format!("... ({} more)", cycle.len() - LISTED));
    }
    Anomaly {
        kind: AnomalyKind::Cycle,
        ops: cycle.to_vec(),
        message: format!(
            "happens-before has a cycle of {} ops (ops on or after it are not checked for stale reads): {} -> back to op {}",
            cycle.len(),
            steps.join(" -> "),
            cycle[0]
        ),
    }
}

/// What the stale-read rule says about one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Consistent,
    /// The returned put is in the past of this newer write of the key, itself in the read's past.
    Overwritten {
        newer: usize,
    },
    /// The read saw absence though this put was in its past and no source of absence fits.
    Unexplained {
        newer: usize,
    },
}

/// Applies the stale-read rule to a read of `key` with causal past `past` that returned the value
/// of put `returned`, or absence when `returned` is None.
fn judge(
    ix: &Index,
    hb: &Hb,
    past: Past,
    key: usize,
    returned: Option<usize>,
    cands: &mut Vec<usize>,
) -> Verdict {
    hb.candidates(past, key, cands);
    // Only a final read's candidates can lack a clock (observed Unknown puts behind a cycle).
    cands.retain(|&c| hb.has_clock(c));
    match returned {
        Some(w) => cands
            .iter()
            .find(|&&c| c != w && hb.contains(Past::Of(c), w))
            .map_or(Verdict::Consistent, |&newer| Verdict::Overwritten { newer }),
        None => judge_absence(ix, hb, past, key, cands),
    }
}

fn judge_absence(ix: &Index, hb: &Hb, past: Past, key: usize, cands: &[usize]) -> Verdict {
    let maximal: Vec<usize> = cands
        .iter()
        .copied()
        .filter(|&c| !cands.iter().any(|&o| o != c && hb.contains(Past::Of(o), c)))
        .collect();
    // No write of the key in the past: the initial state explains the absence.
    let Some(&first) = maximal.first() else {
        return Verdict::Consistent;
    };
    // A delete in the past that no write in the past follows explains it too.
    if maximal.iter().any(|&m| ix.ops()[m].kind == Kind::Delete) {
        return Verdict::Consistent;
    }
    if has_concurrent_delete(ix, hb, past, key) {
        return Verdict::Consistent;
    }
    // Blame an acknowledged put if one of the maximal writes is.
    let newer = maximal
        .iter()
        .copied()
        .find(|&m| ix.ops()[m].status == Status::Ok)
        .unwrap_or(first);
    Verdict::Unexplained { newer }
}

/// Whether some delete of `key` is neither in `past` nor after the read: such a delete is after
/// no write in the past either, so it is an admissible source of absence.
fn has_concurrent_delete(ix: &Index, hb: &Hb, past: Past, key: usize) -> bool {
    let deletes = &ix.keys[key].deletes;
    // In a valid history the delete that explains a read has usually just been sent: look at
    // those sent before the read's answer, latest first, then at the rest.
    let split = match past {
        Past::Of(r) => deletes.partition_point(|&d| ix.ops()[d].start_us <= ix.ops()[r].end_us),
        Past::Final => deletes.len(),
    };
    let (before, after) = deletes.split_at(split);
    before
        .iter()
        .rev()
        .chain(after)
        .any(|&d| !hb.contains(past, d) && !is_after(hb, past, d))
}

/// Whether the reader of `past` is in the past of delete `d`. A final read is after everything;
/// an op behind a cycle has no clock, and is given the benefit of the doubt.
fn is_after(hb: &Hb, past: Past, d: usize) -> bool {
    match past {
        Past::Of(r) => hb.has_clock(d) && hb.contains(Past::Of(d), r),
        Past::Final => false,
    }
}

fn report_stale_reads(ix: &Index, hb: &Hb, found: &mut Vec<Anomaly>) {
    let mut cands = Vec::new();
    for (r, op) in ix.ops().iter().enumerate() {
        let Some(seen) = op.observation() else {
            continue;
        };
        if !hb.has_clock(r) {
            continue;
        }
        let returned = match (seen, ix.reads_from[r]) {
            (None, _) => None,
            (Some(_), Some(put)) => Some(put),
            // A value no put wrote was reported as never_written: no write to compare with.
            (Some(_), None) => continue,
        };
        let verdict = judge(ix, hb, Past::Of(r), ix.key[r], returned, &mut cands);
        if let Some(anomaly) = stale_anomaly(ix, r, returned, verdict) {
            found.push(anomaly);
        }
    }
}

fn stale_anomaly(
    ix: &Index,
    r: usize,
    returned: Option<usize>,
    verdict: Verdict,
) -> Option<Anomaly> {
    let reader = describe(ix, r);
    match (verdict, returned) {
        (Verdict::Consistent, _) => None,
        (Verdict::Overwritten { newer }, Some(w)) => Some(Anomaly {
            kind: AnomalyKind::StaleRead,
            ops: vec![r, w, newer],
            message: format!(
                "{reader} returned the value of {}, but it had already seen {}, which follows that put",
                describe(ix, w),
                describe(ix, newer)
            ),
        }),
        (Verdict::Unexplained { newer }, _) | (Verdict::Overwritten { newer }, None) => {
            Some(Anomaly {
                kind: AnomalyKind::StaleRead,
                ops: vec![r, newer],
                message: format!(
                    "{reader} saw the key absent, but it had already seen {}, and no delete of the key can explain the absence",
                    describe(ix, newer)
                ),
            })
        }
    }
}

fn report_final_reads(ix: &Index, hb: &Hb, found: &mut Vec<Anomaly>) {
    report_divergence(ix, found);
    let mut cands = Vec::new();
    for read in &ix.history.final_reads {
        let Some(key) = ix.key_id(&read.key) else {
            continue;
        };
        let reader = describe_final(read);
        let returned = match read.value.as_deref() {
            None => None,
            Some(value) => match ix.resolve(&read.key, value) {
                Source::Put(put) => Some(put),
                source => {
                    found.extend(never_written(ix, source, &reader, None));
                    continue;
                }
            },
        };
        let verdict = judge(ix, hb, Past::Final, key, returned, &mut cands);
        if let Some(anomaly) = lost_write_anomaly(ix, &reader, returned, verdict) {
            found.push(anomaly);
        }
    }
}

fn describe_final(read: &FinalRead) -> String {
    match &read.value {
        Some(v) => format!("final read of {} on {} ({:?})", read.key, read.node, v),
        None => format!("final read of {} on {} (absent)", read.key, read.node),
    }
}

fn lost_write_anomaly(
    ix: &Index,
    reader: &str,
    returned: Option<usize>,
    verdict: Verdict,
) -> Option<Anomaly> {
    let (newer, why) = match (verdict, returned) {
        (Verdict::Consistent, _) => return None,
        (Verdict::Overwritten { newer }, Some(w)) => (
            newer,
            format!("follows {}, whose value it returned", describe(ix, w)),
        ),
        (Verdict::Unexplained { newer }, _) | (Verdict::Overwritten { newer }, None) => (
            newer,
            "is in the past of every final read and no delete explains the absence".to_string(),
        ),
    };
    let how = if ix.ops()[newer].status == Status::Ok {
        "acknowledged"
    } else {
        "observed"
    };
    Some(Anomaly {
        kind: AnomalyKind::LostWrite,
        ops: std::iter::once(newer).chain(returned).collect(),
        message: format!(
            "{reader}: the {how} write {} was lost; it {why}",
            describe(ix, newer)
        ),
    })
}

/// Final reads of a key must agree across nodes once the store has converged.
fn report_divergence(ix: &Index, found: &mut Vec<Anomaly>) {
    let mut by_key: HashMap<&str, Vec<&FinalRead>> = HashMap::new();
    let mut order = Vec::new();
    for read in &ix.history.final_reads {
        let reads = by_key.entry(&read.key).or_default();
        if reads.is_empty() {
            order.push(read.key.as_str());
        }
        reads.push(read);
    }
    for key in order {
        let reads = &by_key[key];
        if reads.iter().all(|r| r.value == reads[0].value) {
            continue;
        }
        let seen: Vec<String> = reads
            .iter()
            .map(|r| match &r.value {
                Some(v) => format!("{}={v:?}", r.node),
                None => format!("{}=absent", r.node),
            })
            .collect();
        let mut puts: Vec<usize> = reads
            .iter()
            .filter_map(|r| match ix.resolve(key, r.value.as_deref()?) {
                Source::Put(p) => Some(p),
                _ => None,
            })
            .collect();
        puts.sort_unstable();
        puts.dedup();
        found.push(Anomaly {
            kind: AnomalyKind::Divergence,
            ops: puts,
            message: format!(
                "final reads of key {key} disagree after healing: {}",
                seen.join(", ")
            ),
        });
    }
}
