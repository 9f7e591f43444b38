//! Happens-before as vector clocks.
//!
//! The clock of op `x` holds, per session, 1 + the highest position of a successful op of that
//! session in past(x) (0: none). Successful ops of a session are totally ordered by session order
//! and each is in the past of the next, so that prefix says exactly which of them are in past(x).
//!
//! Unsuccessful ops never enter a later op's past through their session, and the only ones that
//! enter it at all are observed Unknown puts, through the gets that returned them. Those gets are
//! successful, so "Unknown put u is in past(x)" is "one of u's readers is in past(x)": a clock
//! lookup per session that read u. That is the sparse set of the design, kept implicitly, so it
//! costs nothing to propagate however many Unknown puts get observed.

use std::collections::VecDeque;

use crate::history::Status;
use crate::index::Index;

/// Whose causal past a query is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Past {
    /// The past of an op, which includes the op itself.
    Of(usize),
    /// The past of a final read: every write with status Ok, every observed Unknown put, and
    /// their pasts.
    Final,
}

pub(crate) struct Hb<'a, 'h> {
    ix: &'a Index<'h>,
    width: usize,
    clocks: Vec<u32>,
    /// Ops that got a clock: all of them unless hb has a cycle.
    done: Vec<bool>,
    final_clock: Vec<u32>,
    /// One cycle of hb, in edge order, if hb is not a partial order.
    pub cycle: Option<Vec<usize>>,
}

/// The ops with an edge to `x`: the last successful op before it in its session, and for a get
/// the put it read from.
fn preds(ix: &Index, x: usize) -> impl Iterator<Item = usize> {
    ix.session_pred[x].into_iter().chain(ix.reads_from[x])
}

impl<'a, 'h> Hb<'a, 'h> {
    pub fn build(ix: &'a Index<'h>) -> Self {
        let n = ix.ops().len();
        let width = ix.session_count;
        let mut hb = Hb {
            ix,
            width,
            clocks: vec![0; n * width],
            done: vec![false; n],
            final_clock: vec![0; width],
            cycle: None,
        };
        let order = topological_order(ix);
        hb.assign_clocks(&order);
        hb.assign_final_clock();
        if order.len() < n {
            hb.cycle = Some(hb.find_cycle());
        }
        hb
    }

    /// Whether `op` got a clock; ops on or after a cycle do not.
    pub fn has_clock(&self, op: usize) -> bool {
        self.done[op]
    }

    fn clock(&self, past: Past) -> &[u32] {
        match past {
            Past::Of(x) => &self.clocks[x * self.width..(x + 1) * self.width],
            Past::Final => &self.final_clock,
        }
    }

    /// Whether op `a` is in `past`. For `Past::Of(b)`, `b` must have a clock.
    pub fn contains(&self, past: Past, a: usize) -> bool {
        match past {
            Past::Of(b) if a == b => true,
            Past::Of(_) => self.in_clock(self.clock(past), a),
            Past::Final => self.ix.observed[a] || self.in_clock(&self.final_clock, a),
        }
    }

    fn in_clock(&self, clock: &[u32], a: usize) -> bool {
        if self.ix.ops()[a].status.is_success() {
            return clock[self.ix.session[a]] > self.ix.pos[a];
        }
        self.ix
            .first_readers
            .get(&a)
            .is_some_and(|readers| readers.iter().any(|&(s, pos)| clock[s] > pos))
    }

    /// Fills `out` with writes of `key` in `past` that include all the maximal ones: per session
    /// its last successful write of the key in the past, plus observed Unknown puts of the key
    /// the session read after that write (any it read before are in that write's past).
    pub fn candidates(&self, past: Past, key: usize, out: &mut Vec<usize>) {
        out.clear();
        let clock = self.clock(past);
        for log in &self.ix.keys[key].sessions {
            let seen = clock[log.session];
            let upto = log.events.partition_point(|e| e.pos < seen);
            for event in log.events[..upto].iter().rev() {
                out.push(event.op);
                if !event.via_read {
                    break;
                }
            }
        }
        if past == Past::Final {
            // An Unknown put seen only by a final read has no reader to find it through.
            out.extend(&self.ix.keys[key].observed_unknown);
        }
        out.sort_unstable();
        out.dedup();
    }

    fn assign_clocks(&mut self, order: &[usize]) {
        let w = self.width;
        let mut row = vec![0u32; w];
        for &x in order {
            row.fill(0);
            for p in preds(self.ix, x) {
                join(&mut row, &self.clocks[p * w..(p + 1) * w]);
            }
            if self.ix.ops()[x].status.is_success() {
                row[self.ix.session[x]] = self.ix.pos[x] + 1;
            }
            self.clocks[x * w..(x + 1) * w].copy_from_slice(&row);
            self.done[x] = true;
        }
    }

    fn assign_final_clock(&mut self) {
        let w = self.width;
        for (x, op) in self.ix.ops().iter().enumerate() {
            let in_final = (op.is_write() && op.status == Status::Ok) || self.ix.observed[x];
            if in_final && self.done[x] {
                join(&mut self.final_clock, &self.clocks[x * w..(x + 1) * w]);
            }
        }
    }

    /// Walks predecessors back from an op without a clock until one repeats. Every such op has a
    /// predecessor without a clock (else it would have got one), so the walk closes a cycle.
    fn find_cycle(&self) -> Vec<usize> {
        let Some(start) = self.done.iter().position(|&d| !d) else {
            return Vec::new();
        };
        let mut step_of = vec![usize::MAX; self.done.len()];
        let mut path = Vec::new();
        let mut cur = start;
        while step_of[cur] == usize::MAX {
            step_of[cur] = path.len();
            path.push(cur);
            match preds(self.ix, cur).find(|&p| !self.done[p]) {
                Some(p) => cur = p,
                None => return Vec::new(),
            }
        }
        let mut cycle = path.split_off(step_of[cur]);
        cycle.reverse();
        cycle
    }
}

fn join(into: &mut [u32], other: &[u32]) {
    for (a, &b) in into.iter_mut().zip(other) {
        *a = (*a).max(b);
    }
}

/// Kahn's algorithm over the session and reads-from edges. Ops on or after a cycle are missing
/// from the result.
fn topological_order(ix: &Index) -> Vec<usize> {
    let n = ix.ops().len();
    let mut indegree = vec![0u32; n];
    // Successor lists in one flat array: succ[first[p]..first[p + 1]] are p's successors.
    let mut first = vec![0usize; n + 1];
    for (x, degree) in indegree.iter_mut().enumerate() {
        for p in preds(ix, x) {
            *degree += 1;
            first[p + 1] += 1;
        }
    }
    for i in 0..n {
        first[i + 1] += first[i];
    }
    let mut fill = first.clone();
    let mut succ = vec![0usize; first[n]];
    for x in 0..n {
        for p in preds(ix, x) {
            succ[fill[p]] = x;
            fill[p] += 1;
        }
    }
    let mut queue: VecDeque<usize> = (0..n).filter(|&x| indegree[x] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(x) = queue.pop_front() {
        order.push(x);
        for &y in &succ[first[x]..first[x + 1]] {
            indegree[y] -= 1;
            if indegree[y] == 0 {
                queue.push_back(y);
            }
        }
    }
    order
}
