//! A model causally consistent store, to generate histories the checker must accept, and, with a
//! fault injected, histories in which it should find stale reads.
//!
//! Replicas apply writes locally and ship them to each other; each replica delivers what it
//! received in causal order (an update waits until the replica has everything it depended on)
//! and resolves concurrent writes by last-writer-wins on a Lamport stamp. A session carries the
//! vector clock of everything it was answered about, and a replica serves it only once it has
//! delivered all of that, so every history is causally consistent by construction.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{FinalRead, History, Kind, Op, Status};

/// A deliberate bug in the store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fault {
    None,
    /// With this probability a read does not wait for the session's dependencies.
    SkipDependencyWait(f64),
    /// With this probability a read answers with the version its replica had before the latest.
    OlderVersion(f64),
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub replicas: usize,
    pub sessions: usize,
    pub keys: usize,
    pub ops: usize,
    /// Chance, after each op, that some replica receives and delivers pending updates.
    pub delivery_rate: f64,
    pub fault: Fault,
}

impl Config {
    pub fn new(replicas: usize, sessions: usize, keys: usize, ops: usize) -> Self {
        Config {
            replicas,
            sessions,
            keys,
            ops,
            delivery_rate: 0.3,
            fault: Fault::None,
        }
    }
}

/// The base seed of a randomised test: `CHECKER_SEED` if set, else the clock. Printed, so a
/// failure can be replayed.
pub(crate) fn base_seed() -> u64 {
    let seed = match std::env::var("CHECKER_SEED") {
        Ok(text) => text.trim().parse().expect("CHECKER_SEED must be a u64"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    println!("CHECKER_SEED={seed}");
    seed
}

/// Lamport time, then the origin replica: a total order of writes for last-writer-wins.
type Stamp = (u64, usize);

struct Update {
    /// The origin's vector clock before this write: what must be delivered first.
    deps: Vec<u32>,
    key: usize,
    value: Option<String>,
    stamp: Stamp,
}

#[derive(Clone)]
struct Version {
    stamp: Stamp,
    /// None for a tombstone.
    value: Option<String>,
}

#[derive(Clone, Default)]
struct Slot {
    current: Option<Version>,
    /// Kept only to inject the older-version fault.
    previous: Option<Version>,
}

struct Replica {
    /// How many updates of each origin this replica has applied: its vector clock.
    delivered: Vec<u32>,
    /// How many updates of each origin have arrived (in order) and may wait for delivery.
    received: Vec<u32>,
    lamport: u64,
    slots: Vec<Slot>,
}

impl Replica {
    fn apply(&mut self, key: usize, version: Version) {
        self.lamport = self.lamport.max(version.stamp.0);
        let slot = &mut self.slots[key];
        if slot
            .current
            .as_ref()
            .is_some_and(|c| c.stamp > version.stamp)
        {
            return;
        }
        slot.previous = slot.current.replace(version);
    }

    fn covers(&self, clock: &[u32]) -> bool {
        self.delivered.iter().zip(clock).all(|(d, c)| d >= c)
    }

    fn present(&self, key: usize) -> bool {
        self.slots[key]
            .current
            .as_ref()
            .is_some_and(|v| v.value.is_some())
    }
}

struct Store {
    replicas: Vec<Replica>,
    /// Every update, by origin replica, in the order the origin applied them.
    log: Vec<Vec<Update>>,
}

impl Store {
    fn new(replicas: usize, keys: usize) -> Self {
        let replica = || Replica {
            delivered: vec![0; replicas],
            received: vec![0; replicas],
            lamport: 0,
            slots: vec![Slot::default(); keys],
        };
        Store {
            replicas: (0..replicas).map(|_| replica()).collect(),
            log: (0..replicas).map(|_| Vec::new()).collect(),
        }
    }

    /// Applies a write at replica `r` and queues it for the others.
    fn write(&mut self, r: usize, key: usize, value: Option<String>) {
        let rep = &mut self.replicas[r];
        rep.lamport += 1;
        let stamp = (rep.lamport, r);
        let deps = rep.delivered.clone();
        rep.delivered[r] += 1;
        rep.received[r] += 1;
        rep.apply(
            key,
            Version {
                stamp,
                value: value.clone(),
            },
        );
        self.log[r].push(Update {
            deps,
            key,
            value,
            stamp,
        });
    }

    /// Delivers, in causal order, everything replica `r` received that is ready.
    fn deliver(&mut self, r: usize) {
        let rep = &mut self.replicas[r];
        loop {
            let mut progressed = false;
            for (origin, updates) in self.log.iter().enumerate() {
                while rep.delivered[origin] < rep.received[origin] {
                    let update = &updates[rep.delivered[origin] as usize];
                    if !rep.covers(&update.deps) {
                        break;
                    }
                    let version = Version {
                        stamp: update.stamp,
                        value: update.value.clone(),
                    };
                    rep.apply(update.key, version);
                    rep.delivered[origin] += 1;
                    progressed = true;
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// Blocks replica `r` until it has delivered everything in `clock`: the messages it needs
    /// arrive, then get delivered.
    fn wait_for(&mut self, r: usize, clock: &[u32]) {
        let rep = &mut self.replicas[r];
        for (received, &needed) in rep.received.iter_mut().zip(clock) {
            *received = (*received).max(needed);
        }
        self.deliver(r);
        assert!(
            self.replicas[r].covers(clock),
            "a session's clock is causally closed"
        );
    }

    /// Some updates of one origin arrive at one replica.
    fn network_step(&mut self, rng: &mut StdRng) {
        let r = rng.gen_range(0..self.replicas.len());
        let origin = rng.gen_range(0..self.replicas.len());
        let sent = self.log[origin].len() as u32;
        let received = &mut self.replicas[r].received[origin];
        if *received < sent {
            *received = rng.gen_range(*received + 1..=sent);
        }
        self.deliver(r);
    }

    /// Heals the network: everything arrives everywhere.
    fn heal(&mut self) {
        let sent: Vec<u32> = self.log.iter().map(|l| l.len() as u32).collect();
        for r in 0..self.replicas.len() {
            self.replicas[r].received.clone_from(&sent);
            self.deliver(r);
        }
    }
}

struct Session {
    id: u32,
    clock: Vec<u32>,
    last_end: u64,
}

/// What one op did, before it is timed and recorded.
struct Outcome {
    kind: Kind,
    value: Option<String>,
    status: Status,
}

struct Sim {
    cfg: Config,
    rng: StdRng,
    store: Store,
    sessions: Vec<Session>,
}

/// Runs the model store and returns what its clients observed.
pub(crate) fn simulate(cfg: &Config, seed: u64) -> History {
    let mut sim = Sim {
        cfg: cfg.clone(),
        rng: StdRng::seed_from_u64(seed),
        store: Store::new(cfg.replicas, cfg.keys),
        sessions: (0..cfg.sessions)
            .map(|s| Session {
                id: s as u32 + 1,
                clock: vec![0; cfg.replicas],
                last_end: 0,
            })
            .collect(),
    };
    let ops = (1..=cfg.ops).map(|step| sim.step(step)).collect();
    sim.store.heal();
    History {
        ops,
        final_reads: sim.final_reads(),
    }
}

impl Sim {
    fn step(&mut self, step: usize) -> Op {
        let s = self.rng.gen_range(0..self.sessions.len());
        let r = self.rng.gen_range(0..self.cfg.replicas);
        let key = self.rng.gen_range(0..self.cfg.keys);
        let roll: f64 = self.rng.gen();
        let outcome = if roll < 0.4 {
            self.put(s, r, key, format!("v{step}"))
        } else if roll < 0.55 {
            self.delete(s, r, key)
        } else {
            self.get(s, r, key)
        };
        if self.rng.gen_bool(self.cfg.delivery_rate) {
            self.store.network_step(&mut self.rng);
        }
        self.record(step, s, r, key, outcome)
    }

    /// Times the op: it takes effect at step*10, the request went out up to 9us before (but after
    /// the session's previous answer) and the answer came back up to 9us after.
    fn record(&mut self, step: usize, s: usize, r: usize, key: usize, outcome: Outcome) -> Op {
        let at = step as u64 * 10;
        let session = &mut self.sessions[s];
        let start_us = (at - self.rng.gen_range(0..10)).max(session.last_end + 1);
        let end_us = at + self.rng.gen_range(0..10);
        session.last_end = end_us;
        Op {
            session: session.id,
            kind: outcome.kind,
            key: format!("k{key}"),
            value: outcome.value,
            status: outcome.status,
            start_us,
            end_us,
            node: Some(format!("n{r}")),
        }
    }

    /// Gives session `s` the metadata of replica `r`'s answer.
    fn answer(&mut self, s: usize, r: usize) {
        let delivered = &self.store.replicas[r].delivered;
        for (c, &d) in self.sessions[s].clock.iter_mut().zip(delivered) {
            *c = (*c).max(d);
        }
    }

    /// Draws whether a write fails, has an unknown fate, or is acknowledged.
    fn write_status(&mut self) -> Status {
        let roll: f64 = self.rng.gen();
        if roll < 0.02 {
            Status::Fail
        } else if roll < 0.06 {
            Status::Unknown
        } else {
            Status::Ok
        }
    }

    fn put(&mut self, s: usize, r: usize, key: usize, value: String) -> Outcome {
        let status = self.write_status();
        // A write with an unknown fate took effect half the time; its answer never arrives.
        let applied = match status {
            Status::Fail => false,
            Status::Unknown => self.rng.gen_bool(0.5),
            _ => true,
        };
        if applied {
            self.store.wait_for(r, &self.sessions[s].clock);
            self.store.write(r, key, Some(value.clone()));
        }
        if status == Status::Ok {
            self.answer(s, r);
        }
        Outcome {
            kind: Kind::Put,
            value: Some(value),
            status,
        }
    }

    fn delete(&mut self, s: usize, r: usize, key: usize) -> Outcome {
        let mut status = self.write_status();
        if status != Status::Fail {
            self.store.wait_for(r, &self.sessions[s].clock);
        }
        let present = self.store.replicas[r].present(key);
        match status {
            Status::Ok if present => self.store.write(r, key, None),
            // Deleting an absent key answers 404 and writes nothing.
            Status::Ok => status = Status::NotFound,
            Status::Unknown if present && self.rng.gen_bool(0.5) => self.store.write(r, key, None),
            _ => {}
        }
        if status.is_success() {
            self.answer(s, r);
        }
        Outcome {
            kind: Kind::Delete,
            value: None,
            status,
        }
    }

    fn get(&mut self, s: usize, r: usize, key: usize) -> Outcome {
        if self.rng.gen_bool(0.02) {
            return Outcome {
                kind: Kind::Get,
                value: None,
                status: Status::Fail,
            };
        }
        let skip_wait = match self.cfg.fault {
            Fault::SkipDependencyWait(p) => self.rng.gen_bool(p),
            _ => false,
        };
        if !skip_wait {
            self.store.wait_for(r, &self.sessions[s].clock);
        }
        let older = match self.cfg.fault {
            Fault::OlderVersion(p) => self.rng.gen_bool(p),
            _ => false,
        };
        let slot = &self.store.replicas[r].slots[key];
        let version = if older { &slot.previous } else { &slot.current };
        let value = version.as_ref().and_then(|v| v.value.clone());
        self.answer(s, r);
        let status = if value.is_some() {
            Status::Ok
        } else {
            Status::NotFound
        };
        Outcome {
            kind: Kind::Get,
            value,
            status,
        }
    }

    fn final_reads(&self) -> Vec<FinalRead> {
        let mut reads = Vec::new();
        for (r, rep) in self.store.replicas.iter().enumerate() {
            for (key, slot) in rep.slots.iter().enumerate() {
                reads.push(FinalRead {
                    node: format!("n{r}"),
                    key: format!("k{key}"),
                    value: slot.current.as_ref().and_then(|v| v.value.clone()),
                });
            }
        }
        reads
    }
}
