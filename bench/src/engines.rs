//! `kvs-bench engines`: fjall against redb on kvs's write pattern, in one process, no network.
//!
//! What a kvs node asks of its engine: every write it acknowledges must survive kill -9 of
//! the process (in the journal, handed to the operating system, before the answer), and reach
//! the device by a group sync, periodic or before the answer. Writers are concurrent; keys are
//! 16 bytes, versions about 200 (value, stamp and causal token), a working set overwritten many
//! times. A restart reads every key back.
//!
//! - fjall, periodic: each writer inserts (the journal write is the crash safety); one thread
//!   syncs every 100 ms (`KVS_SYNC=periodic`).
//! - fjall, group sync: writers hand writes to one committer, which inserts what is queued,
//!   syncs once and answers them all (`KVS_SYNC=always`).
//! - redb, group commit: the same committer, one write transaction per group committed with
//!   `Durability::Immediate`. redb has no cheaper crash-safe mode: a commit with
//!   `Durability::None` is not persisted until a later durable one, so a killed process may
//!   lose it; every acknowledged write costs its share of an fsync.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};

#[derive(clap::Args, Debug)]
pub struct EnginesArgs {
    /// Distinct keys written.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Writes in all, spread over the writers.
    #[arg(long, default_value_t = 200_000)]
    writes: usize,
    /// Concurrent writers (a node's requests in flight).
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Bytes of each version.
    #[arg(long, default_value_t = 200)]
    version_size: usize,
    /// Where the databases go (removed afterwards).
    #[arg(long, default_value = "/tmp/kvs-bench-engines")]
    dir: PathBuf,
    /// Seed of the key choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const SYNC_INTERVAL: Duration = Duration::from_millis(100);
const REDB_TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("data");

type Write = (Vec<u8>, Vec<u8>, mpsc::SyncSender<()>);

pub fn main(args: EnginesArgs) -> Result<()> {
    println!(
        "engines: {} writes of {}-byte versions over {} keys, {} writers (seed {})",
        args.writes, args.version_size, args.keys, args.writers, args.seed
    );
    println!("| engine, sync | writes/s | restart: open + read every key | on disk |");
    println!("|---|---|---|---|");
    for mode in ["fjall periodic", "fjall group sync", "redb group commit"] {
        let dir = args.dir.join(mode.replace(' ', "-"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let rate = match mode {
            "fjall periodic" => fjall_periodic(&args, &dir)?,
            "fjall group sync" => group(&args, FjallCommitter::open(&dir)?)?,
            _ => group(&args, RedbCommitter::open(&dir)?)?,
        };
        let (restart, keys) = match mode {
            "redb group commit" => reopen_redb(&dir)?,
            _ => reopen_fjall(&dir)?,
        };
        println!(
            "| {mode} | {rate:.0} | {:.2} s ({keys} keys) | {:.1} MB |",
            restart.as_secs_f64(),
            du(&dir) as f64 / 1e6
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// The writes of writer `w`: (key, version) pairs.
fn workload(args: &EnginesArgs, w: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed * 1000 + w as u64);
    (0..args.writes / args.writers)
        .map(|i| {
            let key = format!("key{:013}", rng.gen_range(0..args.keys)).into_bytes();
            let mut version = vec![b'v'; args.version_size];
            version[..8].copy_from_slice(&(i as u64).to_le_bytes());
            (key, version)
        })
        .collect()
}

fn open_fjall(dir: &Path) -> Result<(fjall::Database, fjall::Keyspace)> {
    let db = fjall::Database::builder(dir).open().context("fjall open")?;
    let data = db
        .keyspace("data", fjall::KeyspaceCreateOptions::default)
        .context("fjall keyspace")?;
    Ok((db, data))
}

fn fjall_periodic(args: &EnginesArgs, dir: &Path) -> Result<f64> {
    let (db, data) = open_fjall(dir)?;
    let done = Arc::new(AtomicBool::new(false));
    let syncer = {
        let (db, done) = (db.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(SYNC_INTERVAL);
                let _ = db.persist(fjall::PersistMode::SyncData);
            }
        })
    };
    let elapsed = run_writers(args, move |key, version| data.insert(key, version).is_ok());
    done.store(true, Ordering::Relaxed);
    let _ = syncer.join();
    db.persist(fjall::PersistMode::SyncData)?;
    Ok((args.writes / args.writers * args.writers) as f64 / elapsed.as_secs_f64())
}

/// An engine that takes a group of writes and makes them durable at once.
trait Committer: Send + 'static {
    fn commit(&mut self, group: &[Write]) -> Result<()>;
}

struct FjallCommitter {
    db: fjall::Database,
    data: fjall::Keyspace,
}

impl FjallCommitter {
    fn open(dir: &Path) -> Result<Self> {
        let (db, data) = open_fjall(dir)?;
        Ok(Self { db, data })
    }
}

impl Committer for FjallCommitter {
    fn commit(&mut self, group: &[Write]) -> Result<()> {
        for (key, version, _) in group {
            self.data.insert(key, version)?;
        }
        self.db.persist(fjall::PersistMode::SyncData)?;
        Ok(())
    }
}

struct RedbCommitter {
    db: redb::Database,
}

impl RedbCommitter {
    fn open(dir: &Path) -> Result<Self> {
        let db = redb::Database::create(dir.join("data.redb")).context("redb create")?;
        Ok(Self { db })
    }
}

impl Committer for RedbCommitter {
    fn commit(&mut self, group: &[Write]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(REDB_TABLE)?;
            for (key, version, _) in group {
                table.insert(key.as_slice(), version.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Writers hand each write to one committer and wait for its answer; the committer takes
/// everything queued, commits it durably at once, and answers.
fn group(args: &EnginesArgs, mut committer: impl Committer) -> Result<f64> {
    let (queue, incoming) = mpsc::sync_channel::<Write>(args.writers * 2);
    let committing = std::thread::spawn(move || -> Result<()> {
        while let Ok(first) = incoming.recv() {
            let mut group = vec![first];
            while let Ok(more) = incoming.try_recv() {
                group.push(more);
            }
            committer.commit(&group)?;
            for (_, _, answer) in group {
                let _ = answer.send(());
            }
        }
        Ok(())
    });
    let elapsed = run_writers(args, move |key, version| {
        let (answer, answered) = mpsc::sync_channel(1);
        queue.send((key, version, answer)).is_ok() && answered.recv().is_ok()
    });
    committing
        .join()
        .map_err(|_| anyhow::anyhow!("committer panicked"))??;
    Ok((args.writes / args.writers * args.writers) as f64 / elapsed.as_secs_f64())
}

/// Runs every writer's load on a thread of its own, each write through `write` (which
/// returns false to stop that writer), and returns how long they took together.
fn run_writers<W>(args: &EnginesArgs, write: W) -> Duration
where
    W: Fn(Vec<u8>, Vec<u8>) -> bool + Clone + Send + 'static,
{
    let loads: Vec<_> = (0..args.writers).map(|w| workload(args, w)).collect();
    let started = Instant::now();
    let writers: Vec<_> = loads
        .into_iter()
        .map(|load| {
            let write = write.clone();
            std::thread::spawn(move || {
                for (key, version) in load {
                    if !write(key, version) {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(write);
    for w in writers {
        let _ = w.join();
    }
    started.elapsed()
}

fn reopen_fjall(dir: &Path) -> Result<(Duration, usize)> {
    let started = Instant::now();
    let (_db, data) = open_fjall(dir)?;
    let mut keys = 0;
    for item in data.iter() {
        let (_key, _version) = item.into_inner()?;
        keys += 1;
    }
    Ok((started.elapsed(), keys))
}

fn reopen_redb(dir: &Path) -> Result<(Duration, usize)> {
    use redb::{ReadableDatabase, ReadableTable};
    let started = Instant::now();
    let db = redb::Database::open(dir.join("data.redb"))?;
    let tx = db.begin_read()?;
    let table = tx.open_table(REDB_TABLE)?;
    let mut keys = 0;
    for item in table.iter()? {
        let (_key, _version) = item?;
        keys += 1;
    }
    Ok((started.elapsed(), keys))
}

fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
