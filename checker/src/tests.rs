//! Hand-written histories with known verdicts, and randomised runs of the model store.

use std::time::Instant;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::sim::{base_seed, simulate, Config, Fault};
use crate::{check, AnomalyKind, FinalRead, History, Kind, Op, Report, Status};

/// Builds histories op by op; each op gets its own 10us slot unless timed explicitly.
#[derive(Default)]
struct Builder {
    history: History,
    clock: u64,
}

impl Builder {
    fn timed(
        &mut self,
        session: u32,
        kind: Kind,
        key: &str,
        value: Option<&str>,
        status: Status,
        (start_us, end_us): (u64, u64),
    ) -> usize {
        self.history.ops.push(Op {
            session,
            kind,
            key: key.to_string(),
            value: value.map(str::to_string),
            status,
            start_us,
            end_us,
            node: Some(format!("n{}", session % 3)),
        });
        self.history.ops.len() - 1
    }

    fn op(
        &mut self,
        session: u32,
        kind: Kind,
        key: &str,
        value: Option<&str>,
        status: Status,
    ) -> usize {
        self.clock += 10;
        let t = self.clock;
        self.timed(session, kind, key, value, status, (t, t + 5))
    }

    fn put(&mut self, session: u32, key: &str, value: &str) -> usize {
        self.op(session, Kind::Put, key, Some(value), Status::Ok)
    }

    fn get(&mut self, session: u32, key: &str, value: &str) -> usize {
        self.op(session, Kind::Get, key, Some(value), Status::Ok)
    }

    fn get_absent(&mut self, session: u32, key: &str) -> usize {
        self.op(session, Kind::Get, key, None, Status::NotFound)
    }

    fn delete(&mut self, session: u32, key: &str, status: Status) -> usize {
        self.op(session, Kind::Delete, key, None, status)
    }

    fn final_read(&mut self, node: &str, key: &str, value: Option<&str>) {
        self.history.final_reads.push(FinalRead {
            node: node.to_string(),
            key: key.to_string(),
            value: value.map(str::to_string),
        });
    }

    fn check(&self) -> Report {
        check(&self.history)
    }
}

/// The anomalies as (kind, ops), for exact comparisons.
fn found(report: &Report) -> Vec<(AnomalyKind, Vec<usize>)> {
    report
        .anomalies
        .iter()
        .map(|a| (a.kind, a.ops.clone()))
        .collect()
}

fn assert_clean(b: &Builder) {
    let report = b.check();
    assert!(report.is_clean(), "expected a clean history:\n{report}");
}

// ---- histories that must be accepted ----

#[test]
fn accepts_a_read_of_the_sessions_own_write() {
    let mut b = Builder::default();
    b.put(1, "x", "a");
    b.get(1, "x", "a");
    assert_clean(&b);
}

#[test]
fn accepts_either_of_two_concurrent_writes() {
    let mut b = Builder::default();
    b.put(1, "x", "a");
    b.put(2, "x", "b");
    b.get(3, "x", "a");
    b.get(3, "x", "b");
    b.get(4, "x", "b");
    b.get(4, "x", "a");
    b.final_read("n1", "x", Some("b"));
    b.final_read("n2", "x", Some("b"));
    assert_clean(&b);
}

#[test]
fn accepts_an_unknown_put_that_nobody_read() {
    let mut b = Builder::default();
    b.put(1, "x", "a");
    b.op(1, Kind::Put, "x", Some("b"), Status::Unknown);
    b.get(1, "x", "a");
    b.get(2, "x", "a");
    assert_clean(&b);
}

#[test]
fn accepts_an_unknown_put_read_by_another_session() {
    let mut b = Builder::default();
    b.put(1, "x", "a");
    b.op(1, Kind::Put, "x", Some("b"), Status::Unknown);
    b.get(2, "x", "b");
    // The writer got no metadata from its Unknown put, so it may still see the older value.
    b.get(1, "x", "a");
    b.final_read("n1", "x", Some("b"));
    assert_clean(&b);
}

#[test]
fn accepts_absence_before_any_write() {
    let mut b = Builder::default();
    b.get_absent(1, "x");
    b.put(2, "x", "a");
    b.get_absent(3, "x");
    assert_clean(&b);
}

#[test]
fn accepts_absence_after_a_delete() {
    let mut b = Builder::default();
    b.put(1, "x", "a");
    b.delete(1, "x", Status::Ok);
    b.get_absent(1, "x");
    b.delete(1, "x", Status::NotFound);
    b.get(2, "x", "a");
    b.get_absent(2, "x");
    b.final_read("n1", "x", None);
    assert_clean(&b);
}

#[test]
fn accepts_absence_from_a_delete_concurrent_with_a_put_in_the_past() {
    let mut b = Builder::default();
    b.put(1, "x", "a");
    b.delete(2, "x", Status::Ok);
    b.get(3, "x", "a");
    b.get_absent(3, "x");
    b.final_read("n1", "x", None);
    assert_clean(&b);
}

#[test]
fn accepts_absence_from_an_unknown_delete() {
    let mut b = Builder::default();
    b.put(1, "x", "a");
    b.delete(2, "x", Status::Unknown);
    b.get(3, "x", "a");
    b.get_absent(3, "x");
    assert_clean(&b);
}

#[test]
fn accepts_the_course_scenario() {
    let mut b = Builder::default();
    b.put(1, "x", "1");
    b.get(2, "x", "1");
    b.put(2, "y", "2");
    b.get(3, "y", "2");
    b.get(3, "x", "1");
    b.final_read("n1", "x", Some("1"));
    b.final_read("n2", "x", Some("1"));
    assert_clean(&b);
}

#[test]
fn failed_ops_impose_nothing() {
    let mut b = Builder::default();
    b.op(1, Kind::Put, "x", Some("a"), Status::Fail);
    b.op(1, Kind::Get, "x", Some("zzz"), Status::Fail);
    b.get_absent(1, "x");
    b.op(2, Kind::Get, "x", None, Status::Unknown);
    b.final_read("n1", "x", None);
    assert_clean(&b);
}

// ---- histories that must be rejected ----

#[test]
fn rejects_broken_read_your_writes() {
    let mut b = Builder::default();
    let v1 = b.put(2, "k", "v1");
    b.get(1, "k", "v1");
    let v2 = b.put(1, "k", "v2");
    let read = b.get(1, "k", "v1");
    assert_eq!(
        found(&b.check()),
        vec![(AnomalyKind::StaleRead, vec![read, v1, v2])]
    );
}

#[test]
fn rejects_broken_monotonic_reads() {
    let mut b = Builder::default();
    let v1 = b.put(1, "k", "v1");
    let v2 = b.put(1, "k", "v2");
    b.get(2, "k", "v2");
    let read = b.get(2, "k", "v1");
    assert_eq!(
        found(&b.check()),
        vec![(AnomalyKind::StaleRead, vec![read, v1, v2])]
    );
}

#[test]
fn rejects_broken_writes_follow_reads_with_absence() {
    let mut b = Builder::default();
    let x1 = b.put(1, "x", "1");
    b.get(2, "x", "1");
    b.put(2, "y", "2");
    b.get(3, "y", "2");
    let read = b.get_absent(3, "x");
    assert_eq!(
        found(&b.check()),
        vec![(AnomalyKind::StaleRead, vec![read, x1])]
    );
}

#[test]
fn rejects_broken_writes_follow_reads_with_an_older_value() {
    let mut b = Builder::default();
    let x0 = b.put(1, "x", "0");
    let x1 = b.put(1, "x", "1");
    b.get(2, "x", "1");
    b.put(2, "y", "2");
    b.get(3, "y", "2");
    let read = b.get(3, "x", "0");
    assert_eq!(
        found(&b.check()),
        vec![(AnomalyKind::StaleRead, vec![read, x0, x1])]
    );
}

#[test]
fn rejects_absence_after_the_sessions_own_put() {
    let mut b = Builder::default();
    let put = b.put(1, "k", "v");
    let read = b.get_absent(1, "k");
    let delete = b.delete(1, "k", Status::NotFound);
    assert_eq!(
        found(&b.check()),
        vec![
            (AnomalyKind::StaleRead, vec![read, put]),
            (AnomalyKind::StaleRead, vec![delete, put]),
        ]
    );
}

#[test]
fn rejects_a_stale_read_across_a_failed_op_of_the_session() {
    // A failed op adds nothing to the session's past, but does not take anything away either.
    let mut b = Builder::default();
    let put = b.put(1, "x", "a");
    b.op(1, Kind::Get, "x", None, Status::Fail);
    b.op(1, Kind::Put, "y", Some("u"), Status::Unknown);
    let read = b.get_absent(1, "x");
    assert_eq!(
        found(&b.check()),
        vec![(AnomalyKind::StaleRead, vec![read, put])]
    );
}

#[test]
fn rejects_a_value_never_written() {
    let mut b = Builder::default();
    let ghost = b.get(1, "k", "ghost");
    let put = b.put(2, "a", "v");
    let elsewhere = b.get(3, "b", "v");
    let failed = b.op(2, Kind::Put, "c", Some("w"), Status::Fail);
    let of_failed = b.get(3, "c", "w");
    b.final_read("n1", "k", Some("phantom"));
    assert_eq!(
        found(&b.check()),
        vec![
            (AnomalyKind::NeverWritten, vec![ghost]),
            (AnomalyKind::NeverWritten, vec![elsewhere, put]),
            (AnomalyKind::NeverWritten, vec![of_failed, failed]),
            (AnomalyKind::NeverWritten, vec![]),
        ]
    );
}

#[test]
fn rejects_a_duplicate_value() {
    let mut b = Builder::default();
    let first = b.put(1, "k", "v");
    let second = b.put(2, "k", "v");
    assert_eq!(
        found(&b.check()),
        vec![(AnomalyKind::DuplicateValue, vec![first, second])]
    );
}

#[test]
fn rejects_a_cycle() {
    // Each session reads the write the other makes only afterwards. All ops overlap in time, so
    // only the cycle itself is wrong.
    let mut b = Builder::default();
    let a_read = b.timed(1, Kind::Get, "y", Some("b"), Status::Ok, (0, 100));
    let a_write = b.timed(1, Kind::Put, "x", Some("a"), Status::Ok, (0, 100));
    let b_read = b.timed(2, Kind::Get, "x", Some("a"), Status::Ok, (0, 100));
    let b_write = b.timed(2, Kind::Put, "y", Some("b"), Status::Ok, (0, 100));
    let report = b.check();
    let found = found(&report);
    assert_eq!(found.len(), 1, "{report}");
    assert_eq!(found[0].0, AnomalyKind::Cycle);
    let mut on_cycle = found[0].1.clone();
    on_cycle.sort_unstable();
    assert_eq!(on_cycle, vec![a_read, a_write, b_read, b_write]);
}

#[test]
fn a_cycle_is_reported_in_edge_order() {
    let mut b = Builder::default();
    b.timed(1, Kind::Get, "y", Some("b"), Status::Ok, (0, 100));
    b.timed(1, Kind::Put, "x", Some("a"), Status::Ok, (0, 100));
    b.timed(2, Kind::Get, "x", Some("a"), Status::Ok, (0, 100));
    b.timed(2, Kind::Put, "y", Some("b"), Status::Ok, (0, 100));
    let report = b.check();
    let cycle = &report.anomalies[0].ops;
    let start = cycle
        .iter()
        .position(|&o| o == 0)
        .expect("op 0 is on the cycle");
    let rotated: Vec<usize> = cycle[start..]
        .iter()
        .chain(&cycle[..start])
        .copied()
        .collect();
    assert_eq!(rotated, vec![0, 1, 2, 3]);
}

#[test]
fn rejects_a_future_read() {
    let mut b = Builder::default();
    let read = b.timed(1, Kind::Get, "k", Some("v"), Status::Ok, (0, 5));
    let put = b.timed(2, Kind::Put, "k", Some("v"), Status::Ok, (10, 15));
    assert_eq!(
        found(&b.check()),
        vec![(AnomalyKind::FutureRead, vec![read, put])]
    );
}

#[test]
fn rejects_divergent_final_reads() {
    let mut b = Builder::default();
    let a = b.put(1, "k", "a");
    let c = b.put(2, "k", "b");
    b.final_read("n1", "k", Some("a"));
    b.final_read("n2", "k", Some("b"));
    let report = b.check();
    assert_eq!(found(&report), vec![(AnomalyKind::Divergence, vec![a, c])]);
    assert!(report.anomalies[0].message.contains("n1=\"a\", n2=\"b\""));
}

#[test]
fn rejects_a_lost_acknowledged_write() {
    let mut b = Builder::default();
    let v1 = b.put(1, "k", "1");
    let v2 = b.put(1, "k", "2");
    b.final_read("n1", "k", Some("1"));
    b.final_read("n2", "k", Some("2"));
    let report = b.check();
    assert_eq!(
        found(&report),
        vec![
            (AnomalyKind::Divergence, vec![v1, v2]),
            (AnomalyKind::LostWrite, vec![v2, v1]),
        ]
    );
    assert!(report.anomalies[1].message.contains("on n1"));
}

#[test]
fn rejects_absence_in_final_reads_of_a_key_only_put() {
    let mut b = Builder::default();
    let a = b.put(1, "k", "a");
    b.put(2, "k", "b");
    b.final_read("n1", "k", None);
    assert_eq!(found(&b.check()), vec![(AnomalyKind::LostWrite, vec![a])]);
}

#[test]
fn an_observed_unknown_put_is_in_the_past_of_its_readers() {
    // Session 2 read the Unknown put "b", which follows "a" in session 1: reading "a" afterwards
    // is stale, and so is a final value of "a".
    let mut b = Builder::default();
    let a = b.put(1, "x", "a");
    let unknown = b.op(1, Kind::Put, "x", Some("b"), Status::Unknown);
    b.get(2, "x", "b");
    let read = b.get(2, "x", "a");
    b.final_read("n1", "x", Some("a"));
    assert_eq!(
        found(&b.check()),
        vec![
            (AnomalyKind::StaleRead, vec![read, a, unknown]),
            (AnomalyKind::LostWrite, vec![unknown, a]),
        ]
    );
}

#[test]
fn a_get_answered_without_a_value_counts_as_absence() {
    let mut b = Builder::default();
    let put = b.put(1, "k", "v");
    let read = b.op(1, Kind::Get, "k", None, Status::Ok);
    assert_eq!(
        found(&b.check()),
        vec![(AnomalyKind::StaleRead, vec![read, put])]
    );
}

#[test]
fn stats_count_the_history() {
    let mut b = Builder::default();
    b.put(1, "x", "a");
    b.op(1, Kind::Put, "y", Some("b"), Status::Unknown);
    b.op(2, Kind::Put, "y", Some("c"), Status::Fail);
    b.get(2, "x", "a");
    b.get_absent(3, "z");
    b.final_read("n1", "w", None);
    let stats = b.check().stats;
    assert_eq!(
        (
            stats.ops,
            stats.writes,
            stats.reads,
            stats.sessions,
            stats.keys,
            stats.final_reads
        ),
        (5, 2, 2, 3, 4, 1)
    );
}

// ---- randomised runs of the model store ----

fn run(cfg: &Config, seed: u64) -> (History, Report) {
    let history = simulate(cfg, seed);
    let report = check(&history);
    (history, report)
}

#[test]
fn simulated_causal_histories_are_clean() {
    let base = base_seed();
    for i in 0..8u64 {
        let seed = base.wrapping_add(i);
        let cfg = Config::new(
            2 + (i as usize % 3),
            4 + i as usize,
            3 + (i as usize % 4),
            3000,
        );
        let (history, report) = run(&cfg, seed);
        assert!(report.is_clean(), "seed {seed}, {cfg:?}:\n{report}");
        assert_eq!(report.stats.ops, history.ops.len());
    }
}

#[test]
fn injected_stale_reads_are_caught() {
    let base = base_seed();
    for fault in [Fault::SkipDependencyWait(0.3), Fault::OlderVersion(0.2)] {
        let mut stale = 0;
        for i in 0..10u64 {
            let seed = base.wrapping_add(i);
            let mut cfg = Config::new(3, 6, 4, 2000);
            // Slow replication leaves replicas behind, so skipped waits show.
            cfg.delivery_rate = 0.1;
            cfg.fault = fault;
            let (_, report) = run(&cfg, seed);
            stale += report.count(AnomalyKind::StaleRead);
            // These faults only make reads stale: anything else would be a false alarm.
            assert_eq!(
                report.count(AnomalyKind::StaleRead),
                report.anomalies.len(),
                "seed {seed}, {cfg:?}:\n{report}"
            );
        }
        println!("{fault:?}: {stale} stale reads in 10 runs");
        assert!(stale > 0, "{fault:?} went unnoticed from base seed {base}");
    }
}

#[test]
fn the_simulator_exercises_the_hard_cases() {
    let seed = base_seed();
    let history = simulate(&Config::new(3, 6, 4, 3000), seed);
    let ops = &history.ops;
    let has = |kind: Kind, status: Status| ops.iter().any(|o| o.kind == kind && o.status == status);
    let unknown_values: std::collections::HashSet<&str> = ops
        .iter()
        .filter(|o| o.kind == Kind::Put && o.status == Status::Unknown)
        .filter_map(|o| o.value.as_deref())
        .collect();
    let observed_unknown = ops.iter().filter(|o| o.kind == Kind::Get).any(|o| {
        o.value
            .as_deref()
            .is_some_and(|v| unknown_values.contains(v))
    });
    assert!(
        observed_unknown,
        "seed {seed}: no get returned an Unknown put"
    );
    for (kind, status) in [
        (Kind::Put, Status::Fail),
        (Kind::Delete, Status::Ok),
        (Kind::Delete, Status::NotFound),
        (Kind::Delete, Status::Unknown),
        (Kind::Get, Status::NotFound),
        (Kind::Get, Status::Fail),
    ] {
        assert!(
            has(kind, status),
            "seed {seed}: no {kind} with status {status}"
        );
    }
}

/// Interleaves the sessions of `history` differently, keeping each session's order.
fn reinterleave(history: &History, seed: u64) -> History {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut queues: Vec<std::collections::VecDeque<Op>> = Vec::new();
    let mut session_slot = std::collections::HashMap::new();
    for op in &history.ops {
        let slot = *session_slot.entry(op.session).or_insert_with(|| {
            queues.push(Default::default());
            queues.len() - 1
        });
        queues[slot].push_back(op.clone());
    }
    let mut ops = Vec::with_capacity(history.ops.len());
    while !queues.is_empty() {
        let i = rng.gen_range(0..queues.len());
        match queues[i].pop_front() {
            Some(op) => ops.push(op),
            None => {
                queues.swap_remove(i);
            }
        }
    }
    History {
        ops,
        final_reads: history.final_reads.clone(),
    }
}

fn counts(report: &Report) -> Vec<usize> {
    AnomalyKind::ALL.iter().map(|&k| report.count(k)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn small_simulated_histories_are_clean(
        seed in any::<u64>(),
        replicas in 1usize..5,
        sessions in 1usize..7,
        keys in 1usize..5,
        ops in 1usize..400,
    ) {
        let cfg = Config::new(replicas, sessions, keys, ops);
        let (_, report) = run(&cfg, seed);
        prop_assert!(report.is_clean(), "{}", report);
    }

    #[test]
    fn the_verdict_does_not_depend_on_how_sessions_interleave(seed in any::<u64>()) {
        let mut cfg = Config::new(3, 5, 3, 600);
        cfg.delivery_rate = 0.1;
        cfg.fault = Fault::SkipDependencyWait(0.3);
        let (history, report) = run(&cfg, seed);
        let shuffled = check(&reinterleave(&history, seed));
        prop_assert_eq!(counts(&report), counts(&shuffled));
    }
}

#[test]
#[ignore = "speed check: cargo test -p kvs-checker --release -- --ignored --nocapture"]
fn speed_of_a_100k_op_history() {
    let seed = base_seed();
    let cfg = Config::new(3, 8, 20, 100_000);
    let started = Instant::now();
    let history = simulate(&cfg, seed);
    let simulated = started.elapsed();
    println!("simulated {} ops in {simulated:?}", history.ops.len());
    // A few rounds, since the first pays for cold caches and a shared machine adds noise.
    for round in 1..=3 {
        let started = Instant::now();
        let report = check(&history);
        let checked = started.elapsed();
        println!("round {round}: checked in {checked:?}: {report}");
        assert!(report.is_clean());
    }
}
