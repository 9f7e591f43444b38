//! Group commit for `lin-store`: concurrent linearizable writes that store their versions on
//! the same peer share one message, which the peer applies in one batch (one journal
//! write). A write joins the batch being gathered for its peer and map epoch; the first to
//! arrive starts a task that sends whatever has gathered, again and again until no write
//! waits. The task is not the caller's: a write that stops waiting (its round got its
//! majority elsewhere) never strands the others.
//!
//! Measured on three nodes (`bench/run.sh --only kvs3,etcd`): one message per write gave
//! 16,700 linearizable PUT/s (1.99-2.01x etcd's PUT), batches 17,500 (2.11x). Waiting for
//! the acknowledgements of the causal pushes instead, which are batched already, gave
//! 10,400: they come at the pushes' pace, and every acknowledgement woke every writer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::messages::{LinStore, LinVersion};
use super::Internode;
use crate::storage::Record;
use crate::NodeId;

/// The most records one `lin-store` carries.
pub const MAX_BATCH_RECORDS: usize = 256;

/// A write waiting for its batch: its record, and where its answer goes (the epoch the
/// peer answered under, or why it did not).
struct Waiter {
    record: Record,
    answer: oneshot::Sender<Result<u64, String>>,
}

/// The writes gathered for one (peer, epoch), and whether a sender runs for them.
#[derive(Default)]
struct Queue {
    waiters: Vec<Waiter>,
    sending: bool,
}

#[derive(Default)]
struct Pending {
    queues: HashMap<(NodeId, u64), Queue>,
}

/// The batches being gathered, per peer and map epoch.
#[derive(Default, Clone)]
pub struct StoreCombiner {
    pending: Arc<Mutex<Pending>>,
}

impl StoreCombiner {
    /// Stores `record` on `peer` under `epoch`, in a batch with whatever else is being
    /// stored there now; the epoch the peer answered under.
    pub async fn store(
        &self,
        peers: Arc<dyn Internode>,
        peer: NodeId,
        epoch: u64,
        record: Record,
        budget_ms: u32,
        timeout: Duration,
    ) -> Result<LinVersion, String> {
        let (answer, answered) = oneshot::channel();
        let lead = {
            let mut pending = self.lock();
            let queue = pending.queues.entry((peer.clone(), epoch)).or_default();
            queue.waiters.push(Waiter { record, answer });
            // The first waiter when no sender runs starts one; later ones join its batch.
            !std::mem::replace(&mut queue.sending, true)
        };
        if lead {
            let combiner = self.clone();
            tokio::spawn(async move {
                combiner
                    .send_until_empty(peers, peer, epoch, budget_ms, timeout)
                    .await;
            });
        }
        match answered.await {
            Ok(Ok(epoch)) => Ok(LinVersion { epoch, entry: None }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the batch was dropped".into()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the gathered writes, batch after batch, until none waits; then stops (in the
    /// same critical section that finds the queue empty, so no write is left behind).
    async fn send_until_empty(
        &self,
        peers: Arc<dyn Internode>,
        peer: NodeId,
        epoch: u64,
        budget_ms: u32,
        timeout: Duration,
    ) {
        loop {
            // Writes that arrive while this one yields join its batch.
            tokio::task::yield_now().await;
            let batch: Vec<Waiter> = {
                let mut pending = self.lock();
                let queue = pending.queues.entry((peer.clone(), epoch)).or_default();
                if queue.waiters.is_empty() {
                    pending.queues.remove(&(peer, epoch));
                    return;
                }
                let take = queue.waiters.len().min(MAX_BATCH_RECORDS);
                queue.waiters.drain(..take).collect()
            };
            let message = LinStore {
                epoch,
                records: batch.iter().map(|w| w.record.clone()).collect(),
                budget_ms,
            };
            let answer = peers
                .lin_store(peer.clone(), &message, timeout)
                .await
                .map(|version| version.epoch)
                .map_err(|e| e.to_string());
            for waiter in batch {
                let _ = waiter.answer.send(answer.clone());
            }
        }
    }
}
