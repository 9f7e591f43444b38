//! Per-worker measurements, merged at the end: latency histograms (microseconds) per
//! operation and counts of every outcome that was not a success.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Latencies are recorded in microseconds, from 1 µs to 120 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    Get,
    Put,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "GET",
            OpKind::Put => "PUT",
        }
    }
}

pub struct Stats {
    pub all: Histogram<u64>,
    pub get: Histogram<u64>,
    pub put: Histogram<u64>,
    /// Open loop: how late each request was sent after its due time (the generator's own
    /// delay: timer granularity, scheduling, or a session still waiting for its last answer).
    pub lag: Histogram<u64>,
    pub ok: u64,
    /// Successes completed before the end of the measuring window.
    pub in_window: u64,
    /// "GET 404", "PUT 503", "GET transport: timeout", ... -> count.
    pub errors: BTreeMap<String, u64>,
    /// The first message seen for each error kind, to tell what went wrong.
    pub samples: BTreeMap<String, String>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            all: histogram(),
            get: histogram(),
            put: histogram(),
            lag: histogram(),
            ok: 0,
            in_window: 0,
            errors: BTreeMap::new(),
            samples: BTreeMap::new(),
        }
    }
}

impl Stats {
    pub fn success(&mut self, op: OpKind, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, 120_000_000);
        self.all.saturating_record(us);
        match op {
            OpKind::Get => self.get.saturating_record(us),
            OpKind::Put => self.put.saturating_record(us),
        }
        self.ok += 1;
    }

    pub fn error(&mut self, op: OpKind, kind: String, sample: impl FnOnce() -> String) {
        let key = format!("{} {kind}", op.name());
        *self.errors.entry(key.clone()).or_default() += 1;
        self.samples.entry(key).or_insert_with(sample);
    }

    pub fn lag(&mut self, lag: Duration) {
        self.lag
            .saturating_record((lag.as_micros() as u64).clamp(1, 120_000_000));
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, other: Stats) {
        self.all.add(&other.all).expect("same bounds");
        self.get.add(&other.get).expect("same bounds");
        self.put.add(&other.put).expect("same bounds");
        self.lag.add(&other.lag).expect("same bounds");
        self.ok += other.ok;
        self.in_window += other.in_window;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.samples {
            self.samples.entry(k).or_insert(v);
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// p50/p90/p99/p99.9/max/mean in milliseconds, and the count.
pub fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "mean_ms": h.mean() / 1000.0,
    })
}
