//! Lookups built once per history: sessions and positions, keys, which put each read read from,
//! and per key the writes that the stale-read rule has to consider.

use std::collections::HashMap;

use crate::history::{History, Kind, Op, Status};

/// What a value returned by a read resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The put of this key that wrote the value, with status Ok or Unknown.
    Put(usize),
    /// No put wrote the value.
    Missing,
    /// A put wrote the value, but to another key.
    OtherKey(usize),
    /// A put of this key carried the value but had no effect (it failed).
    Ineffective(usize),
}

/// An entry of one session's log of one key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Event {
    /// Position in the session at which `op` joined the session's causal past.
    pub pos: u32,
    pub op: usize,
    /// `op` is an observed Unknown put that the session first read at `pos`, not a write of its own.
    pub via_read: bool,
}

/// One session's successful writes of a key and first reads of observed Unknown puts of it.
#[derive(Debug, Clone)]
pub(crate) struct SessionLog {
    pub session: usize,
    /// In session order.
    pub events: Vec<Event>,
}

/// What the checks need to know about one key.
#[derive(Debug, Clone)]
pub(crate) struct KeyInfo {
    pub sessions: Vec<SessionLog>,
    /// Unknown puts of the key that some get or final read returned.
    pub observed_unknown: Vec<usize>,
    /// Deletes with status Ok or Unknown (the possible sources of absence), by start time.
    pub deletes: Vec<usize>,
}

pub(crate) struct Index<'h> {
    pub history: &'h History,
    /// Dense session number of each op.
    pub session: Vec<usize>,
    /// Position of each op within its session.
    pub pos: Vec<u32>,
    pub session_count: usize,
    /// The last op of the same session before this one that completed successfully.
    pub session_pred: Vec<Option<usize>>,
    /// Dense key number of each op.
    pub key: Vec<usize>,
    pub keys: Vec<KeyInfo>,
    key_ids: HashMap<&'h str, usize>,
    put_by_value: HashMap<&'h str, usize>,
    /// Groups of puts that wrote the same value.
    pub duplicates: Vec<Vec<usize>>,
    /// For a get with status Ok: the put it read from, when that put is a valid source.
    pub reads_from: Vec<Option<usize>>,
    /// Unknown puts that some read returned: those, and only those, took effect for sure.
    pub observed: Vec<bool>,
    /// For each observed Unknown put, the first get of each session that returned it, as
    /// (session, position). The put is in an op's past exactly when one of these gets is.
    pub first_readers: HashMap<usize, Vec<(usize, u32)>>,
}

impl<'h> Index<'h> {
    pub fn build(history: &'h History) -> Self {
        let n = history.ops.len();
        let mut ix = Index {
            history,
            session: Vec::with_capacity(n),
            pos: Vec::with_capacity(n),
            session_count: 0,
            session_pred: Vec::with_capacity(n),
            key: Vec::with_capacity(n),
            keys: Vec::new(),
            key_ids: HashMap::new(),
            put_by_value: HashMap::new(),
            duplicates: Vec::new(),
            reads_from: vec![None; n],
            observed: vec![false; n],
            first_readers: HashMap::new(),
        };
        ix.index_sessions();
        ix.index_keys();
        ix.index_values();
        ix.index_reads();
        ix.index_key_logs();
        ix
    }

    pub fn ops(&self) -> &'h [Op] {
        &self.history.ops
    }

    pub fn key_id(&self, key: &str) -> Option<usize> {
        self.key_ids.get(key).copied()
    }

    /// Finds the put that a read of `key` returning `value` read from.
    pub fn resolve(&self, key: &str, value: &str) -> Source {
        let Some(&put) = self.put_by_value.get(value) else {
            return Source::Missing;
        };
        let op = &self.history.ops[put];
        if op.key != key {
            Source::OtherKey(put)
        } else if !op.is_write() {
            Source::Ineffective(put)
        } else {
            Source::Put(put)
        }
    }

    fn index_sessions(&mut self) {
        let mut dense: HashMap<u32, usize> = HashMap::new();
        let mut next_pos: Vec<u32> = Vec::new();
        let mut last_success: Vec<Option<usize>> = Vec::new();
        for (id, op) in self.history.ops.iter().enumerate() {
            let s = *dense.entry(op.session).or_insert_with(|| {
                next_pos.push(0);
                last_success.push(None);
                next_pos.len() - 1
            });
            self.session.push(s);
            self.pos.push(next_pos[s]);
            next_pos[s] += 1;
            self.session_pred.push(last_success[s]);
            // Only an answered op hands the client metadata that later ops carry.
            if op.status.is_success() {
                last_success[s] = Some(id);
            }
        }
        self.session_count = next_pos.len();
    }

    fn intern_key(&mut self, name: &'h str) -> usize {
        if let Some(&id) = self.key_ids.get(name) {
            return id;
        }
        self.keys.push(KeyInfo {
            sessions: Vec::new(),
            observed_unknown: Vec::new(),
            deletes: Vec::new(),
        });
        self.key_ids.insert(name, self.keys.len() - 1);
        self.keys.len() - 1
    }

    fn index_keys(&mut self) {
        let history = self.history;
        for op in &history.ops {
            let id = self.intern_key(&op.key);
            self.key.push(id);
        }
        for read in &history.final_reads {
            self.intern_key(&read.key);
        }
    }

    /// Maps each value to the put that wrote it, noting values written more than once.
    fn index_values(&mut self) {
        let mut extra: HashMap<&'h str, Vec<usize>> = HashMap::new();
        for (id, op) in self.history.ops.iter().enumerate() {
            let (Kind::Put, Some(value)) = (op.kind, op.value.as_deref()) else {
                continue;
            };
            let Some(&first) = self.put_by_value.get(value) else {
                self.put_by_value.insert(value, id);
                continue;
            };
            // On the first repeat `first` is still the first put of the value: it is only ever
            // replaced below, after its group exists.
            extra.entry(value).or_insert_with(|| vec![first]).push(id);
            // Reads of a duplicated value are attributed to a put that took effect, if any did.
            if !self.history.ops[first].is_write() && op.is_write() {
                self.put_by_value.insert(value, id);
            }
        }
        self.duplicates = extra.into_values().collect();
        self.duplicates.sort_unstable();
    }

    /// Links gets to the puts they read from and marks the Unknown puts that were observed.
    fn index_reads(&mut self) {
        let history = self.history;
        for (id, op) in history.ops.iter().enumerate() {
            if op.kind != Kind::Get || op.status != Status::Ok {
                continue;
            }
            let Some(value) = op.value.as_deref() else {
                continue;
            };
            if let Source::Put(put) = self.resolve(&op.key, value) {
                self.reads_from[id] = Some(put);
                self.observed[put] |= history.ops[put].status == Status::Unknown;
            }
        }
        for read in &history.final_reads {
            let Some(value) = read.value.as_deref() else {
                continue;
            };
            if let Source::Put(put) = self.resolve(&read.key, value) {
                self.observed[put] |= history.ops[put].status == Status::Unknown;
            }
        }
    }

    /// Builds each key's session logs, observed Unknown puts and deletes.
    fn index_key_logs(&mut self) {
        let ops = &self.history.ops;
        let mut log_of: HashMap<(usize, usize), usize> = HashMap::new();
        for (id, op) in ops.iter().enumerate() {
            let event = if op.is_write() && op.status == Status::Ok {
                Some(Event {
                    pos: self.pos[id],
                    op: id,
                    via_read: false,
                })
            } else {
                self.first_read_of_unknown(id)
            };
            let Some(event) = event else {
                continue;
            };
            let (key, session) = (self.key[id], self.session[id]);
            let sessions = &mut self.keys[key].sessions;
            let slot = *log_of.entry((key, session)).or_insert_with(|| {
                sessions.push(SessionLog {
                    session,
                    events: Vec::new(),
                });
                sessions.len() - 1
            });
            sessions[slot].events.push(event);
        }
        for (id, op) in ops.iter().enumerate() {
            let key = &mut self.keys[self.key[id]];
            if self.observed[id] {
                key.observed_unknown.push(id);
            }
            if op.kind == Kind::Delete && op.is_write() {
                key.deletes.push(id);
            }
        }
        for key in &mut self.keys {
            key.deletes.sort_by_key(|&d| ops[d].start_us);
        }
    }

    /// If get `id` is its session's first read of an Unknown put, records it and returns its event.
    fn first_read_of_unknown(&mut self, id: usize) -> Option<Event> {
        let put = self.reads_from[id]?;
        if self.history.ops[put].status != Status::Unknown {
            return None;
        }
        let (session, pos) = (self.session[id], self.pos[id]);
        let readers = self.first_readers.entry(put).or_default();
        if readers.iter().any(|&(s, _)| s == session) {
            return None;
        }
        readers.push((session, pos));
        Some(Event {
            pos,
            op: put,
            via_read: true,
        })
    }
}
