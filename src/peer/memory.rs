//! [`Internode`] in one process, for tests: calls go to the [`Handler`] attached under the
//! peer's id (a test's scripted participant, or anything that serves as a node does),
//! through faults the test sets, and every delivery is recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Internode, PeerError};
use crate::peer::messages::Rpc;
use crate::relay::{Answer, Call, RelayError};
use crate::NodeId;

/// The serving side of a call: its status and body, as a node's relay channel answers.
#[async_trait]
pub trait Handler: Send + Sync {
    async fn handle(&self, rpc: Rpc, body: Bytes) -> (u16, Bytes);

    /// A forwarded client request; a handler that serves none answers 404.
    async fn relay(&self, call: Call) -> (u16, Bytes) {
        let _ = call;
        (
            404,
            Bytes::from_static(b"{\"error\":\"no key-value service here\"}"),
        )
    }
}

/// What happens to calls to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing arrives; the caller hears at once (a refused connection).
    Down,
    /// The call is served, but its answer never comes back.
    AnswerLost,
    /// Nothing arrives and nothing answers: the caller waits out its timeout (a paused
    /// process, a cut network).
    Silent,
}

#[derive(Default)]
struct Inner {
    handlers: HashMap<NodeId, Arc<dyn Handler>>,
    faults: HashMap<NodeId, Fault>,
    /// Calls a peer still serves before the fault takes over.
    fail_after: HashMap<NodeId, (usize, Fault)>,
    delivered: Vec<(NodeId, Rpc)>,
    /// Forwarded client requests that reached a handler: (peer, path).
    relayed: Vec<(NodeId, String)>,
}

/// Peers in memory. Cloning shares the network.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    inner: Arc<Mutex<Inner>>,
    call_ids: Arc<AtomicU64>,
}

impl MemoryNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls to `peer` go to `handler` from now on.
    pub fn attach(&self, peer: NodeId, handler: Arc<dyn Handler>) {
        self.lock().handlers.insert(peer, handler);
    }

    /// Sets (or with `None` clears) the fault on calls to `peer`.
    pub fn set_fault(&self, peer: NodeId, fault: Option<Fault>) {
        let mut inner = self.lock();
        inner.fail_after.remove(&peer);
        match fault {
            Some(fault) => inner.faults.insert(peer, fault),
            None => inner.faults.remove(&peer),
        };
    }

    /// `peer` serves `calls` more calls, then `fault` takes over (a peer dying mid-copy).
    pub fn fail_after(&self, peer: NodeId, calls: usize, fault: Fault) {
        let mut inner = self.lock();
        inner.faults.remove(&peer);
        inner.fail_after.insert(peer, (calls, fault));
    }

    /// Every call that reached a handler, in order.
    pub fn delivered(&self) -> Vec<(NodeId, Rpc)> {
        self.lock().delivered.clone()
    }

    /// The peers that call `rpc` reached, in order.
    pub fn delivered_to(&self, rpc: Rpc) -> Vec<NodeId> {
        let inner = self.lock();
        inner
            .delivered
            .iter()
            .filter(|(_, r)| *r == rpc)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// The forwarded client requests that reached a handler: (peer, path), in order.
    pub fn relayed(&self) -> Vec<(NodeId, String)> {
        self.lock().relayed.clone()
    }

    /// The fault that applies to this call, counting it against a pending `fail_after`.
    fn fault_for(&self, peer: NodeId) -> Option<Fault> {
        let mut inner = self.lock();
        if let Some((left, fault)) = inner.fail_after.get_mut(&peer) {
            if *left == 0 {
                let fault = *fault;
                inner.fail_after.remove(&peer);
                inner.faults.insert(peer.clone(), fault);
            } else {
                *left -= 1;
            }
        }
        inner.faults.get(&peer).copied()
    }
}

/// Why a call never reached a handler.
enum Undelivered {
    Down,
    Silent,
    NoSuchNode,
}

impl MemoryNetwork {
    /// Takes a call to `peer` through its fault (a silent peer costs `timeout`) to its
    /// handler, recording the delivery with `note`; the handler, and whether its answer
    /// is to be lost.
    async fn reach(
        &self,
        peer: NodeId,
        timeout: Duration,
        note: impl FnOnce(&mut Inner),
    ) -> Result<(Arc<dyn Handler>, bool), Undelivered> {
        let fault = self.fault_for(peer.clone());
        match fault {
            Some(Fault::Down) => return Err(Undelivered::Down),
            Some(Fault::Silent) => {
                tokio::time::sleep(timeout).await;
                return Err(Undelivered::Silent);
            }
            Some(Fault::AnswerLost) | None => {}
        }
        let mut inner = self.lock();
        let handler = inner
            .handlers
            .get(&peer)
            .cloned()
            .ok_or(Undelivered::NoSuchNode)?;
        note(&mut inner);
        Ok((handler, fault == Some(Fault::AnswerLost)))
    }
}

#[async_trait]
impl Internode for MemoryNetwork {
    async fn relay(
        &self,
        peer: NodeId,
        call: Call,
        timeout: Duration,
    ) -> Result<Answer, RelayError> {
        let path = call.path.clone();
        let reached = self.reach(peer.clone(), timeout, |inner| {
            inner.relayed.push((peer.clone(), path))
        });
        let (handler, answer_lost) = reached.await.map_err(|why| match why {
            Undelivered::Down => RelayError::NotSent(peer.clone(), "down"),
            Undelivered::Silent => RelayError::Lost(peer.clone(), "went silent"),
            Undelivered::NoSuchNode => RelayError::NotSent(peer.clone(), "no such node"),
        })?;
        let id = call.id;
        let (status, body) = tokio::time::timeout(timeout, handler.relay(call))
            .await
            .map_err(|_| RelayError::NoAnswer(peer.clone(), "timed out"))?;
        if answer_lost {
            return Err(RelayError::Lost(peer, "answer lost"));
        }
        Ok(Answer { id, status, body })
    }

    fn next_call_id(&self) -> u64 {
        self.call_ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    async fn exchange(
        &self,
        peer: NodeId,
        rpc: Rpc,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, PeerError> {
        let unreachable = |reason: &str| PeerError::Unreachable {
            peer: peer.clone(),
            reason: reason.to_owned(),
        };
        let reached = self.reach(peer.clone(), timeout, |inner| {
            inner.delivered.push((peer.clone(), rpc))
        });
        let (handler, answer_lost) = reached.await.map_err(|why| match why {
            Undelivered::Down => unreachable("down"),
            Undelivered::Silent => unreachable("timed out"),
            Undelivered::NoSuchNode => unreachable("no such node"),
        })?;
        let (status, answer) = tokio::time::timeout(timeout, handler.handle(rpc, body))
            .await
            .map_err(|_| unreachable("timed out"))?;
        if answer_lost {
            return Err(unreachable("answer lost"));
        }
        super::served(peer, status, answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::messages::KeyCount;

    struct Counter;

    #[async_trait]
    impl Handler for Counter {
        async fn handle(&self, _rpc: Rpc, _body: Bytes) -> (u16, Bytes) {
            (200, Bytes::from_static(br#"{"shard":1,"count":7}"#))
        }
    }

    fn id(i: u8) -> NodeId {
        format!("10.0.0.{i}:8080").parse().unwrap()
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn calls_reach_handlers_through_the_faults_set() {
        let net = MemoryNetwork::new();
        net.attach(id(1), Arc::new(Counter));
        let count: KeyCount = net.key_count(id(1), 1, SECOND).await.unwrap();
        assert_eq!(count.count, 7);
        assert!(
            net.key_count(id(2), 1, SECOND).await.is_err(),
            "no such node"
        );

        net.set_fault(id(1), Some(Fault::AnswerLost));
        assert!(net.key_count(id(1), 1, SECOND).await.is_err());
        net.set_fault(id(1), Some(Fault::Down));
        assert!(net.key_count(id(1), 1, SECOND).await.is_err());
        // Served, lost, and refused: two deliveries.
        assert_eq!(net.delivered_to(Rpc::KeyCount), vec![id(1), id(1)]);

        net.fail_after(id(1), 1, Fault::Silent);
        assert!(net.key_count(id(1), 1, SECOND).await.is_ok());
        let started = tokio::time::Instant::now();
        assert!(net.key_count(id(1), 1, SECOND).await.is_err());
        assert_eq!(
            started.elapsed(),
            SECOND,
            "a silent peer costs the whole timeout"
        );
    }
}
