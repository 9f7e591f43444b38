//! A linearizability checker for single-key registers (put, delete, get), for the histories
//! of linearizable kvs requests (issue 15).
//!
//! The search is Wing and Gong's: walk the history's calls and returns in time order; at a
//! call, try to take that operation as the next one linearized (if the register's state
//! allows what it observed), and go on from the start; at a return whose operation has not
//! been linearized, undo the last choice and try the next call instead. Lowe's pruning makes
//! it fast on real histories: a choice that leads to a (set of linearized operations, state)
//! pair seen before is skipped, since what follows from it has been explored. Keys are
//! independent (a history is linearizable if and only if each key's is), so each key is
//! searched alone. Knossos and Porcupine do the same; nothing is copied from them.
//!
//! An operation whose answer never came (a timeout, a 503 that says the write may have been
//! applied) may have taken effect at any time after its call: its return is placed after
//! every other event, and its outcome is unconstrained. A read without an answer says
//! nothing and is left out by the caller.

use std::collections::{BTreeMap, HashMap, HashSet};

/// What one operation did, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LinKind {
    /// Wrote the value (an answer or not, it can only have written it).
    Put(String),
    /// Deleted the key: `Some(true)` answered "deleted", `Some(false)` "did not exist",
    /// `None` either (no answer, or an answer that does not say: a blind delete).
    Delete { found: Option<bool> },
    /// Read the value (`None`: the key did not exist).
    Get(Option<String>),
}

/// One operation of a history: its key, when it was called and answered (nanoseconds on
/// one clock; `None`: never answered), and what it did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinOp {
    pub key: String,
    pub call_ns: u64,
    pub return_ns: Option<u64>,
    pub kind: LinKind,
}

/// The verdict on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVerdict {
    Linearizable,
    /// No order of the key's operations explains what the clients saw. `longest` is the
    /// longest prefix of operations (indexes into the history) the search could linearize,
    /// for the report.
    Violation {
        longest: Vec<usize>,
    },
    /// The search took more than its budget of steps: neither proven nor refuted.
    Undecided,
}

/// The verdicts per key, and the steps the search took.
#[derive(Debug, Clone, Default)]
pub struct LinReport {
    pub keys: BTreeMap<String, KeyVerdict>,
    pub steps: u64,
}

impl LinReport {
    pub fn violations(&self) -> impl Iterator<Item = (&String, &KeyVerdict)> {
        self.keys
            .iter()
            .filter(|(_, v)| matches!(v, KeyVerdict::Violation { .. }))
    }

    pub fn is_linearizable(&self) -> bool {
        self.keys.values().all(|v| *v == KeyVerdict::Linearizable)
    }
}

/// How many search steps one key may take before it is reported undecided.
pub const STEPS_PER_KEY: u64 = 50_000_000;

/// Checks every key of `ops` (its indexes are the operations' names in the report).
pub fn check_linearizable(ops: &[LinOp]) -> LinReport {
    // A put without an answer whose value no read returned may as well never have taken
    // effect: values are unique, so it explains no read, and dropping it loses no order
    // (unless a delete of its key says whether it found the key: such a put could explain
    // that). Kept, each would stay a candidate at every step of the search (its return is
    // at the end of time), and a history with hundreds of them (a partition) took the
    // search through their subsets: 50,000,000 steps undecided, against 32,748 without.
    let read: HashSet<&str> = ops
        .iter()
        .filter_map(|op| match &op.kind {
            LinKind::Get(Some(v)) => Some(v.as_str()),
            _ => None,
        })
        .collect();
    let deletes_tell: HashSet<&str> = ops
        .iter()
        .filter(|op| matches!(op.kind, LinKind::Delete { found: Some(_) }))
        .map(|op| op.key.as_str())
        .collect();
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        let unobserved = matches!(&op.kind, LinKind::Put(v) if !read.contains(v.as_str()));
        if op.return_ns.is_none() && unobserved && !deletes_tell.contains(op.key.as_str()) {
            continue;
        }
        by_key.entry(&op.key).or_default().push(i);
    }
    let mut report = LinReport::default();
    for (key, indexes) in by_key {
        let (verdict, steps) = check_key(ops, &indexes, STEPS_PER_KEY);
        report.steps += steps;
        report.keys.insert(key.to_owned(), verdict);
    }
    report
}

/// A register's state: the id of its value (0: absent).
type State = u32;

/// An operation of one key, with its value as an id.
#[derive(Clone, Copy)]
enum Step {
    Put(State),
    Delete(Option<bool>),
    Get(State),
}

impl Step {
    /// The state after this operation from `state`, if it can observe what it did there.
    fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Put(v) => Some(v),
            Step::Delete(None) => Some(0),
            Step::Delete(Some(found)) => (found == (state != 0)).then_some(0),
            Step::Get(v) => (v == state).then_some(state),
        }
    }
}

/// One event of the time line: operation `op`'s call or return.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    call: bool,
}

/// The time line as a doubly linked list over `events` (index `n` is the head sentinel),
/// so that a linearized operation's two events can be lifted out and put back in O(1).
struct Line {
    events: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each operation, the index of its call and its return event.
    call_of: Vec<usize>,
    return_of: Vec<usize>,
}

const NONE: usize = usize::MAX;

impl Line {
    fn new(times: &[(u64, Option<u64>)]) -> Self {
        let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(times.len() * 2);
        for (op, (call, ret)) in times.iter().enumerate() {
            // At equal times a call sorts before a return: the two overlap, which admits
            // more orders, never fewer (clocks are coarser than what they time).
            order.push((*call, 0, op));
            order.push((ret.unwrap_or(u64::MAX), 1, op));
        }
        order.sort_unstable();
        let n = order.len();
        let events: Vec<Event> = order
            .iter()
            .map(|&(_, kind, op)| Event {
                op,
                call: kind == 0,
            })
            .collect();
        let mut call_of = vec![0; times.len()];
        let mut return_of = vec![0; times.len()];
        for (i, e) in events.iter().enumerate() {
            if e.call {
                call_of[e.op] = i;
            } else {
                return_of[e.op] = i;
            }
        }
        // Index n is the head; the list is n -> 0 -> 1 -> ... -> n-1 -> NONE.
        let mut next: Vec<usize> = (1..=n).map(|i| if i == n { NONE } else { i }).collect();
        next.push(if n == 0 { NONE } else { 0 });
        let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { n } else { i - 1 }).collect();
        prev.push(NONE);
        Self {
            events,
            next,
            prev,
            call_of,
            return_of,
        }
    }

    fn head(&self) -> usize {
        self.next[self.events.len()]
    }

    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        self.next[p] = n;
        if n != NONE {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        self.next[p] = i;
        if n != NONE {
            self.prev[n] = i;
        }
    }

    /// Takes operation `op`'s events out (its return first: it comes later in the list).
    fn lift(&mut self, op: usize) {
        self.unlink(self.return_of[op]);
        self.unlink(self.call_of[op]);
    }

    /// Puts them back, in the reverse order of [`Line::lift`].
    fn unlift(&mut self, op: usize) {
        self.relink(self.call_of[op]);
        self.relink(self.return_of[op]);
    }
}

/// A set of operations, as bits.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

fn check_key(ops: &[LinOp], indexes: &[usize], budget: u64) -> (KeyVerdict, u64) {
    let mut values: HashMap<String, State> = HashMap::new();
    let mut id = |v: Option<&str>| -> State {
        match v {
            None => 0,
            Some(text) => {
                let next = values.len() as State + 1;
                *values.entry(text.to_owned()).or_insert(next)
            }
        }
    };
    let mut steps: Vec<Step> = Vec::with_capacity(indexes.len());
    let mut times = Vec::with_capacity(indexes.len());
    for &i in indexes {
        let op = &ops[i];
        steps.push(match &op.kind {
            LinKind::Put(v) => Step::Put(id(Some(v.as_str()))),
            LinKind::Delete { found } => {
                Step::Delete(if op.return_ns.is_some() { *found } else { None })
            }
            LinKind::Get(v) => Step::Get(id(v.as_deref())),
        });
        times.push((op.call_ns, op.return_ns));
    }
    let mut line = Line::new(&times);
    let mut linearized = Bits::new(indexes.len());
    let mut seen: HashSet<(Bits, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut state: State = 0;
    let mut entry = line.head();
    let mut taken = 0u64;
    while entry != NONE {
        taken += 1;
        if taken > budget {
            return (KeyVerdict::Undecided, taken);
        }
        let event = line.events[entry];
        if event.call {
            if let Some(after) = steps[event.op].apply(state) {
                let mut with = linearized.clone();
                with.set(event.op);
                if seen.insert((with.clone(), after)) {
                    linearized = with;
                    stack.push((event.op, state));
                    line.lift(event.op);
                    state = after;
                    entry = line.head();
                    continue;
                }
            }
            entry = line.next[entry];
        } else {
            // An operation returned before it could be linearized: undo the last choice.
            if stack.len() > longest.len() {
                longest = stack.iter().map(|&(op, _)| indexes[op]).collect();
            }
            let Some((op, before)) = stack.pop() else {
                return (KeyVerdict::Violation { longest }, taken);
            };
            line.unlift(op);
            linearized.clear(op);
            state = before;
            entry = line.next[line.call_of[op]];
        }
    }
    (KeyVerdict::Linearizable, taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(v: &str, call: u64, ret: Option<u64>) -> LinOp {
        LinOp {
            key: "k".into(),
            call_ns: call,
            return_ns: ret,
            kind: LinKind::Put(v.into()),
        }
    }
    fn get(v: Option<&str>, call: u64, ret: u64) -> LinOp {
        LinOp {
            key: "k".into(),
            call_ns: call,
            return_ns: Some(ret),
            kind: LinKind::Get(v.map(str::to_owned)),
        }
    }
    fn del(found: Option<bool>, call: u64, ret: Option<u64>) -> LinOp {
        LinOp {
            key: "k".into(),
            call_ns: call,
            return_ns: ret,
            kind: LinKind::Delete { found },
        }
    }
    fn ok(ops: &[LinOp]) -> bool {
        check_linearizable(ops).is_linearizable()
    }

    #[test]
    fn sequential_histories_follow_the_register() {
        assert!(ok(&[
            put("a", 0, Some(1)),
            get(Some("a"), 2, 3),
            del(Some(true), 4, Some(5)),
            get(None, 6, 7)
        ]));
        assert!(
            !ok(&[put("a", 0, Some(1)), get(None, 2, 3)]),
            "a read after a write must see it"
        );
        assert!(
            !ok(&[
                put("a", 0, Some(1)),
                put("b", 2, Some(3)),
                get(Some("a"), 4, 5)
            ]),
            "stale read"
        );
        assert!(!ok(&[del(Some(true), 0, Some(1))]), "nothing to delete");
        assert!(ok(&[del(Some(false), 0, Some(1))]));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The write overlaps both reads: old then new is fine ...
        assert!(ok(&[
            put("a", 0, Some(1)),
            put("b", 2, Some(10)),
            get(Some("a"), 3, 4),
            get(Some("b"), 5, 6)
        ]));
        // ... new then old is not (the first read fixed the write before the second).
        assert!(!ok(&[
            put("a", 0, Some(1)),
            put("b", 2, Some(10)),
            get(Some("b"), 3, 4),
            get(Some("a"), 5, 6)
        ]));
        // Two concurrent writes, read in one order by everyone afterwards.
        assert!(ok(&[
            put("a", 0, Some(5)),
            put("b", 1, Some(6)),
            get(Some("a"), 7, 8),
            get(Some("a"), 9, 10)
        ]));
        assert!(!ok(&[
            put("a", 0, Some(5)),
            put("b", 1, Some(6)),
            get(Some("a"), 7, 8),
            get(Some("b"), 9, 10)
        ]));
    }

    #[test]
    fn an_unanswered_write_may_take_effect_any_time_after_its_call_or_never() {
        assert!(ok(&[
            put("a", 0, Some(1)),
            put("b", 2, None),
            get(Some("a"), 3, 4),
            get(Some("b"), 100, 101)
        ]));
        assert!(ok(&[
            put("a", 0, Some(1)),
            put("b", 2, None),
            get(Some("a"), 100, 101)
        ]));
        assert!(
            !ok(&[
                put("a", 0, Some(1)),
                get(Some("b"), 2, 3),
                put("b", 5, None)
            ]),
            "read before its write's call"
        );
        // Once seen, it cannot be unseen.
        assert!(!ok(&[
            put("a", 0, Some(1)),
            put("b", 2, None),
            get(Some("b"), 3, 4),
            get(Some("a"), 5, 6)
        ]));
    }

    #[test]
    fn unanswered_puts_nobody_read_do_not_slow_the_search() {
        let mut ops = vec![put("a", 0, Some(1))];
        for i in 0..300 {
            ops.push(put(&format!("lost{i}"), 2 + i, None));
        }
        for i in 0..300 {
            ops.push(get(Some("a"), 1_000 + 2 * i, 1_001 + 2 * i));
        }
        ops.push(put("b", 2_000, Some(2_001)));
        ops.push(get(Some("a"), 2_002, 2_003));
        let report = check_linearizable(&ops);
        assert!(!report.is_linearizable(), "a read of a after b completed");
        assert!(report.steps < 100_000, "{} steps", report.steps);
        // A delete that says whether it found the key keeps them: one may explain it.
        let mut with_delete = vec![put("a", 0, Some(1)), del(Some(true), 2, Some(3))];
        with_delete.push(put("lost", 4, None));
        with_delete.push(del(Some(true), 10, Some(11)));
        assert!(check_linearizable(&with_delete).is_linearizable());
    }

    #[test]
    fn keys_are_checked_apart() {
        let mut other = put("x", 0, Some(1));
        other.key = "j".into();
        let mut stale = get(None, 2, 3);
        stale.key = "j".into();
        let report =
            check_linearizable(&[put("a", 0, Some(1)), get(Some("a"), 2, 3), other, stale]);
        assert_eq!(report.keys["k"], KeyVerdict::Linearizable);
        assert!(matches!(report.keys["j"], KeyVerdict::Violation { .. }));
    }

    /// Histories of a simulated linearizable register (each op takes effect at a random
    /// instant inside its interval) are accepted; the same histories with one read changed
    /// to a value that was never current at any instant of its interval are refused.
    #[test]
    fn simulated_registers_are_accepted_and_corrupted_ones_refused() {
        use rand::SeedableRng;
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for round in 0..50 {
            let (history, instants) = simulate(&mut rng, 400, 6);
            let report = check_linearizable(&history);
            assert!(
                report.is_linearizable(),
                "seed {seed} round {round}: {report:?}"
            );
            if let Some(bad) = corrupt(&history, &instants) {
                assert!(
                    !check_linearizable(&bad).is_linearizable(),
                    "seed {seed} round {round}"
                );
            }
        }
    }

    /// `n` ops by `clients` clients on one key; the instant each took effect.
    fn simulate(rng: &mut impl rand::Rng, n: usize, clients: usize) -> (Vec<LinOp>, Vec<u64>) {
        let mut free_at = vec![0u64; clients];
        let mut planned: Vec<(u64, u64, u64, usize)> = Vec::new(); // (effect, call, ret, kind seed)
        for i in 0..n {
            let c = rng.gen_range(0..clients);
            let call = free_at[c] + rng.gen_range(0..5);
            let ret = call + rng.gen_range(1..20);
            let effect = rng.gen_range(call..=ret);
            free_at[c] = ret + 1;
            planned.push((effect, call, ret, i));
        }
        planned.sort();
        let mut state: Option<String> = None;
        let mut ops = Vec::new();
        let mut instants = Vec::new();
        for (effect, call, ret, i) in planned {
            let kind = match rng.gen_range(0..10) {
                0..=3 => {
                    state = Some(format!("v{i}"));
                    LinKind::Put(format!("v{i}"))
                }
                4 => {
                    let found = state.is_some();
                    state = None;
                    LinKind::Delete { found: Some(found) }
                }
                _ => LinKind::Get(state.clone()),
            };
            let lost = matches!(kind, LinKind::Put(_)) && rng.gen_range(0..20) == 0;
            ops.push(LinOp {
                key: "k".into(),
                call_ns: call,
                return_ns: if lost { None } else { Some(ret) },
                kind,
            });
            instants.push(effect);
        }
        (ops, instants)
    }

    /// The history with one read's value replaced by a value that was overwritten before the
    /// read's call (and is not written again): no linearization can explain it.
    fn corrupt(history: &[LinOp], _instants: &[u64]) -> Option<Vec<LinOp>> {
        // A put answered, then another put answered after it, both before some read's call.
        for (r, read) in history.iter().enumerate() {
            let LinKind::Get(_) = read.kind else { continue };
            for (a, first) in history.iter().enumerate() {
                let (LinKind::Put(old), Some(a_ret)) = (&first.kind, first.return_ns) else {
                    continue;
                };
                let overwritten = history.iter().any(|second| {
                    matches!(second.kind, LinKind::Put(_))
                        && second.call_ns > a_ret
                        && second.return_ns.is_some_and(|t| t < read.call_ns)
                });
                if a != r && overwritten && a_ret < read.call_ns {
                    let mut bad = history.to_vec();
                    bad[r].kind = LinKind::Get(Some(old.clone()));
                    return Some(bad);
                }
            }
        }
        None
    }
}
