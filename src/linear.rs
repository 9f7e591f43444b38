//! Linearizable reads and writes of one key, chosen per request
//! (`/key-value-store/<key>?consistency=linearizable`), beside the causal ones: an ABD
//! register over the members of the key's shard (Attiya, Bar-Noy and Dolev), with majority
//! quorums. See docs/design.md, "Linearizable requests".
//!
//! - A read asks every member for its version of the key and takes the newest of the first
//!   majority to answer; if fewer than a majority hold that version, it stores it on more
//!   members until a majority does, and only then answers. Any later operation's majority
//!   meets this one, so it sees this version or a newer one.
//! - A write asks a majority for their versions too, takes the newest in here, and then
//!   writes as a causal write does, with a Lamport time above every version it saw (so its
//!   stamp is the newest); it answers once a majority stores it.
//!
//! The versions and their order are the causal store's own (last writer wins by stamp), so a
//! linearizable write is a write like any other for causal readers, and is replicated like
//! one. Every message carries the map epoch the coordinator works under; a member under
//! another map refuses it, and the operation is tried again under the newer map or answered
//! 503, so none completes against a membership a reshard or an add-member replaced. Without
//! a majority within [`LINEAR_WAIT`], the answer is 503.
//!
//! [`Gather`] is the decision part (which answers count, which version wins, who lacks it),
//! tested without a network; the `async` functions only send and wait.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

use crate::budget::Deadline;
use crate::causal::CausalMetadata;
use crate::error::{KvsError, Result};
use crate::node::{Node, Route, WriteOutcome};
use crate::peer::messages::{LinQuery, LinStore, LinVersion};
use crate::storage::{Entry, Record};
use crate::NodeId;

/// The query parameter that asks for a linearizable operation.
pub const PARAMETER: &str = "consistency=linearizable";
/// The longest a linearizable operation waits for a majority before it answers 503.
pub const LINEAR_WAIT: Duration = Duration::from_secs(5);
/// How many times an operation is tried again after a member answered under another map.
const MAX_MAP_ATTEMPTS: usize = 3;

/// Whether a request's path and query ask for a linearizable operation.
pub fn requested(path_and_query: &str) -> bool {
    path_and_query
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|p| p == PARAMETER))
}

/// The members' answers to one round, under one map epoch.
#[derive(Debug, Clone)]
pub struct Gather {
    epoch: u64,
    needed: usize,
    answers: Vec<(NodeId, Option<Entry>)>,
    /// The newest epoch a member refused the round under, if any did.
    newer_epoch: Option<u64>,
}

impl Gather {
    /// A round among `members` members, under `epoch`.
    pub fn new(epoch: u64, members: usize) -> Self {
        Self {
            epoch,
            needed: members / 2 + 1,
            answers: Vec::new(),
            newer_epoch: None,
        }
    }

    pub fn needed(&self) -> usize {
        self.needed
    }

    /// Counts `from`'s answer if it was given under this round's map.
    pub fn add(&mut self, from: NodeId, answer: LinVersion) {
        if answer.epoch == self.epoch {
            self.answers.push((from, answer.entry));
        } else if answer.epoch > self.epoch {
            self.newer_epoch = Some(self.newer_epoch.unwrap_or(0).max(answer.epoch));
        }
    }

    /// A member answered under a newer map: the round must be done again under it.
    pub fn newer_epoch(&self) -> Option<u64> {
        self.newer_epoch
    }

    pub fn has_majority(&self) -> bool {
        self.answers.len() >= self.needed
    }

    /// The newest version among the answers (`None`: no answering member has the key).
    pub fn newest(&self) -> Option<&Entry> {
        self.answers
            .iter()
            .filter_map(|(_, e)| e.as_ref())
            .max_by_key(|e| e.stamp.clone())
    }

    /// The answering members that hold `newest` (or a newer version).
    pub fn holders(&self, newest: &Entry) -> Vec<NodeId> {
        self.answers
            .iter()
            .filter(|(_, e)| e.as_ref().is_some_and(|e| e.stamp >= newest.stamp))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// The key's shard under the current map: its epoch, and its members other than this node.
/// `NotOwner` if this node is not a member (the caller routes the request again).
fn shard_peers(node: &Node, key: &str) -> Result<(u64, usize, Vec<NodeId>)> {
    let map = node.routing.map();
    let Route::Local(shard) = node.route(key)? else {
        return Err(KvsError::NotOwner(
            map.shard_for_key(key).unwrap_or_default(),
        ));
    };
    let members: BTreeSet<NodeId> = map.members(shard).cloned().unwrap_or_default();
    let peers = members.iter().filter(|m| **m != node.me).cloned().collect();
    Ok((map.epoch, members.len(), peers))
}

/// This node's answer to a query: its version of the key under `query.epoch`.
pub async fn answer_query(node: &Node, query: &LinQuery) -> Result<LinVersion> {
    let deadline = Deadline::from_budget_ms(query.budget_ms);
    let epoch = member_under(node, &query.key, query.epoch, deadline).await?;
    let entry = node.local_version(&query.key);
    Ok(LinVersion { epoch, entry })
}

/// This node's answer to a store: it holds `store.records` (or newer versions) under
/// `store.epoch`. The records of one store come from one coordinator, all of its shard.
pub async fn answer_store(node: &Node, store: LinStore) -> Result<LinVersion> {
    let deadline = Deadline::from_budget_ms(store.budget_ms);
    let Some(first) = store.records.first() else {
        return Ok(LinVersion {
            epoch: store.epoch,
            entry: None,
        });
    };
    let epoch = member_under(node, &first.key, store.epoch, deadline).await?;
    if epoch == store.epoch {
        node.take_versions(store.records)?;
    }
    Ok(LinVersion { epoch, entry: None })
}

/// Waits (bounded) for the asker's map epoch and this node's shard data; the epoch this
/// node answers under (a different one makes the asker try again or give up).
async fn member_under(node: &Node, key: &str, epoch: u64, deadline: Deadline) -> Result<u64> {
    if epoch > node.routing.map().epoch {
        node.routing.await_epoch(epoch, deadline).await;
    }
    // A member that has not caught up with its shard (just added, or restarted without
    // its data) may lack what it acknowledged: it must not count in a majority.
    node.await_synced(deadline).await?;
    let mine = node.routing.map().epoch;
    if mine == epoch {
        if let Route::Remote(shard, _) = node.route(key)? {
            return Err(KvsError::NotOwner(shard));
        }
    }
    Ok(mine)
}

/// How long a round waits for the peers it asked first before it asks the others too. A
/// majority of three members needs one peer besides the coordinator: asking one peer
/// instead of both halves a round's messages, which raised linearizable PUTs from 1.86x to
/// 1.99-2.01x etcd's (docs/BENCHMARKS.md). A peer that is slower than this (paused,
/// overloaded, cut off) costs a round this much once; one that refuses at once costs
/// nothing.
pub const HEDGE: Duration = Duration::from_millis(30);

/// What a round makes of one peer's answer.
enum Taken {
    /// The round has what it needs.
    Done,
    /// The answer counts; more are needed.
    Counted,
    /// The answer does not count (an error, another map): ask one more peer.
    NotCounted,
}

/// The order in which a round asks peers: those gossip sees up first, rotated from round
/// to round so that coordinators spread their rounds over the shard; the others last.
fn ask_order(node: &Node, peers: &[NodeId]) -> Vec<NodeId> {
    let (mut up, down): (Vec<NodeId>, Vec<NodeId>) = peers
        .iter()
        .cloned()
        .partition(|p| node.membership.is_up(p));
    if !up.is_empty() {
        let turn = ROTATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let len = up.len();
        up.rotate_left(turn % len);
    }
    up.extend(down);
    up
}

static ROTATION: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Sends `call` to the first `first` peers of `order`, to one more for each answer that
/// does not count, and to all the rest once [`HEDGE`] has passed, until `take` says the
/// round is done; `Unavailable` if every peer was asked first.
async fn ask<T, F, Fut>(
    order: Vec<NodeId>,
    first: usize,
    call: F,
    mut take: impl FnMut(NodeId, std::result::Result<T, crate::peer::PeerError>) -> Taken,
) -> Result<()>
where
    F: Fn(NodeId) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, crate::peer::PeerError>>,
{
    let call = &call;
    let asked = |peer: NodeId| async move { (peer.clone(), call(peer).await) };
    let mut rest = order.into_iter();
    let mut calls = FuturesUnordered::new();
    for peer in rest.by_ref().take(first.max(1)) {
        calls.push(asked(peer));
    }
    let hedge = tokio::time::sleep(HEDGE);
    tokio::pin!(hedge);
    let mut hedged = false;
    loop {
        tokio::select! {
            Some((peer, answer)) = calls.next() => match take(peer, answer) {
                Taken::Done => return Ok(()),
                Taken::Counted => {}
                Taken::NotCounted => {
                    if let Some(next) = rest.next() {
                        calls.push(asked(next));
                    }
                }
            },
            () = &mut hedge, if !hedged => {
                hedged = true;
                for peer in rest.by_ref() {
                    calls.push(asked(peer));
                }
            }
        }
        if calls.is_empty() {
            match rest.next() {
                Some(next) => calls.push(asked(next)),
                None => return Err(KvsError::Unavailable),
            }
        }
    }
}

/// Asks the members for their versions of `key`, this node first; returns once a majority
/// answered under `epoch`, or a member answered under a newer map.
async fn query(
    node: &Node,
    key: &str,
    epoch: u64,
    members: usize,
    peers: &[NodeId],
    deadline: Deadline,
) -> Result<Gather> {
    // This node counts in the majority too: not before it holds its shard's data.
    node.await_synced(deadline).await?;
    let mut gather = Gather::new(epoch, members);
    gather.add(
        node.me.clone(),
        LinVersion {
            epoch,
            entry: node.local_version(key),
        },
    );
    if gather.has_majority() {
        return Ok(gather);
    }
    let message = LinQuery {
        epoch,
        key: key.to_owned(),
        budget_ms: budget_ms(deadline)?,
    };
    let first = gather.needed() - 1;
    let call = |peer| node.peers.lin_query(peer, &message, deadline.remaining());
    ask(ask_order(node, peers), first, call, |peer, answer| {
        let before = gather.answers.len();
        match answer {
            Ok(version) => gather.add(peer, version),
            Err(e) => log::debug!("linearizable query to {peer}: {e}"),
        }
        if gather.has_majority() || gather.newer_epoch().is_some() {
            Taken::Done
        } else if gather.answers.len() > before {
            Taken::Counted
        } else {
            Taken::NotCounted
        }
    })
    .await?;
    Ok(gather)
}

/// Stores `record` on members among `targets` until `holding` (members that hold it
/// already) reaches `needed`.
async fn store(
    node: &Node,
    record: &Record,
    epoch: u64,
    targets: &[NodeId],
    mut holding: usize,
    needed: usize,
    deadline: Deadline,
) -> Result<()> {
    if holding >= needed {
        return Ok(());
    }
    let budget_ms = budget_ms(deadline)?;
    let mut newer_map = false;
    let call = |peer: NodeId| {
        let combined = node.lin_stores.store(
            node.peers.clone(),
            peer.clone(),
            epoch,
            record.clone(),
            budget_ms,
            deadline.remaining(),
        );
        async move {
            combined
                .await
                .map_err(|reason| crate::peer::PeerError::Unreachable { peer, reason })
        }
    };
    ask(
        ask_order(node, targets),
        needed - holding,
        call,
        |peer, answer| match answer {
            Ok(answer) if answer.epoch == epoch => {
                holding += 1;
                if holding >= needed {
                    Taken::Done
                } else {
                    Taken::Counted
                }
            }
            Ok(answer) => {
                log::debug!("linearizable store to {peer}: under epoch {}", answer.epoch);
                newer_map |= answer.epoch > epoch;
                if newer_map {
                    Taken::Done
                } else {
                    Taken::NotCounted
                }
            }
            Err(e) => {
                log::debug!("linearizable store to {peer}: {e}");
                Taken::NotCounted
            }
        },
    )
    .await?;
    if newer_map {
        return Err(KvsError::NotOwner(0));
    }
    Ok(())
}

fn budget_ms(deadline: Deadline) -> Result<u32> {
    deadline.forward_budget_ms().ok_or(KvsError::Unavailable)
}

/// Runs `round` under the current map, again under a newer one when a member answered
/// under it (a reshard or an add-member committed meanwhile), [`MAX_MAP_ATTEMPTS`] times.
async fn under_current_map<T, F, Fut>(node: &Node, deadline: Deadline, mut round: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Attempt<T>>>,
{
    for _ in 0..MAX_MAP_ATTEMPTS {
        match round().await? {
            Attempt::Done(value) => return Ok(value),
            Attempt::NewerMap(epoch) => {
                node.routing.await_epoch(epoch, deadline).await;
            }
        }
    }
    Err(KvsError::Unavailable)
}

enum Attempt<T> {
    Done(T),
    NewerMap(u64),
}

/// A linearizable read: the key's newest version a majority holds (`None`: absent).
pub async fn read(
    node: &Node,
    key: &str,
    deps: &CausalMetadata,
    deadline: Deadline,
) -> Result<Option<Entry>> {
    let deadline = Deadline::from_instant(deadline.within(LINEAR_WAIT));
    node.await_dependencies(deps, deadline).await?;
    under_current_map(node, deadline, || async {
        let (epoch, members, peers) = shard_peers(node, key)?;
        let gather = query(node, key, epoch, members, &peers, deadline).await?;
        if let Some(newer) = gather.newer_epoch() {
            return Ok(Attempt::NewerMap(newer));
        }
        let Some(newest) = gather.newest().cloned() else {
            return Ok(Attempt::Done(None));
        };
        write_back(node, key, &gather, &newest, &peers, deadline).await?;
        Ok(Attempt::Done(Some(newest)))
    })
    .await
}

/// Makes a majority hold `newest` (or a newer version) before an operation answers with
/// what it saw: a read's value, or a delete's "does not exist". Without it, a version only
/// a minority holds (a write whose fate is unknown) could be seen now and missed by a later
/// operation whose majority lacks it.
async fn write_back(
    node: &Node,
    key: &str,
    gather: &Gather,
    newest: &Entry,
    peers: &[NodeId],
    deadline: Deadline,
) -> Result<()> {
    let record = Record {
        key: key.to_owned(),
        entry: newest.clone(),
    };
    let holders = gather.holders(newest);
    let mut holding = holders.len();
    // A node without room for it (`storage::space`) leaves the write-back to the others.
    if !holders.contains(&node.me) && node.take_version(record.clone()).is_ok() {
        holding += 1;
    }
    let others: Vec<NodeId> = peers
        .iter()
        .filter(|p| !holders.contains(p))
        .cloned()
        .collect();
    let needed = gather.needed();
    store(
        node,
        &record,
        gather.epoch,
        &others,
        holding,
        needed,
        deadline,
    )
    .await
}

/// A linearizable PUT (`Some(value)`) or DELETE (`None`): stamped after every version a
/// majority holds, answered once a majority stores it.
pub async fn write(
    node: &Node,
    key: &str,
    value: Option<String>,
    deps: &CausalMetadata,
    deadline: Deadline,
) -> Result<WriteOutcome> {
    let deadline = Deadline::from_instant(deadline.within(LINEAR_WAIT));
    under_current_map(node, deadline, || {
        let value = value.clone();
        async move {
            let (epoch, members, peers) = shard_peers(node, key)?;
            let gather = query(node, key, epoch, members, &peers, deadline).await?;
            if let Some(newer) = gather.newer_epoch() {
                return Ok(Attempt::NewerMap(newer));
            }
            let newest = gather.newest().cloned();
            // A delete that finds nothing answers 404 as a read of "absent" would: once a
            // majority holds the tombstone it saw.
            if value.is_none() && !newest.as_ref().is_some_and(Entry::is_live) {
                if let Some(tombstone) = &newest {
                    write_back(node, key, &gather, tombstone, &peers, deadline).await?;
                }
                return Err(KvsError::KeyNotFound);
            }
            // The newest version here first: a delete of a key only a majority holds finds
            // it, and this write's Lamport time passes every version seen.
            if let Some(newest) = &newest {
                node.take_version(Record {
                    key: key.to_owned(),
                    entry: newest.clone(),
                })?;
            }
            let outcome = match node.write(key, value, deps, deadline).await {
                // A tombstone newer than what the majority answered arrived here meanwhile.
                Err(KvsError::KeyNotFound) => {
                    if let Some(tombstone) = node.local_version(key) {
                        write_back(node, key, &gather, &tombstone, &peers, deadline).await?;
                    }
                    return Err(KvsError::KeyNotFound);
                }
                other => other?,
            };
            let Some(entry) = node.local_version(key) else {
                return Err(KvsError::Unavailable);
            };
            let record = Record {
                key: key.to_owned(),
                entry,
            };
            // The write is in this node's journal and reaches the others in any case: from
            // here on it is never tried again (a second copy, later, could undo another
            // client's write in between), and a failure says it may have been applied.
            store(node, &record, epoch, &peers, 1, gather.needed(), deadline)
                .await
                .map_err(|_| KvsError::WriteFateUnknown)?;
            Ok(Attempt::Done(outcome))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::Stamp;

    fn node(i: u8) -> NodeId {
        format!("10.0.0.{i}:8080").parse().unwrap()
    }

    fn entry(lamport: u64) -> Entry {
        Entry {
            value: Some(format!("v{lamport}")),
            stamp: Stamp {
                era: 0,
                lamport,
                origin: node(9),
                seq: lamport,
            },
            metadata: String::new(),
        }
    }

    impl Gather {
        /// The answering members that do not hold `newest`: the complement of `holders`.
        fn lacking(&self, newest: &Entry) -> Vec<NodeId> {
            let holders = self.holders(newest);
            self.answers
                .iter()
                .map(|(n, _)| n.clone())
                .filter(|n| !holders.contains(n))
                .collect()
        }
    }

    fn version(epoch: u64, lamport: Option<u64>) -> LinVersion {
        LinVersion {
            epoch,
            entry: lamport.map(entry),
        }
    }

    #[test]
    fn a_majority_of_answers_under_the_round_map_decides() {
        let mut g = Gather::new(4, 3);
        assert_eq!(g.needed(), 2);
        g.add(node(1), version(4, Some(3)));
        assert!(!g.has_majority());
        g.add(node(2), version(3, Some(9)));
        assert!(
            !g.has_majority(),
            "an answer under an older map does not count"
        );
        assert_eq!(g.newer_epoch(), None);
        g.add(node(3), version(4, None));
        assert!(g.has_majority());
        let newest = g.newest().unwrap().clone();
        assert_eq!(newest.stamp.lamport, 3);
        assert_eq!(g.lacking(&newest), vec![node(3)]);
        assert_eq!(
            g.holders(&newest),
            vec![node(1)],
            "a write-back must reach one more"
        );
    }

    #[test]
    fn an_answer_under_a_newer_map_restarts_the_round() {
        let mut g = Gather::new(4, 5);
        assert_eq!(g.needed(), 3);
        g.add(node(1), version(5, Some(1)));
        assert_eq!(g.newer_epoch(), Some(5));
    }

    #[test]
    fn nothing_written_reads_as_absent() {
        let mut g = Gather::new(0, 2);
        g.add(node(1), version(0, None));
        g.add(node(2), version(0, None));
        assert!(g.has_majority());
        assert!(g.newest().is_none());
    }

    #[test]
    fn the_parameter_is_found_among_others() {
        assert!(requested("/key-value-store/k?consistency=linearizable"));
        assert!(requested("/key-value-store/k?a=1&consistency=linearizable"));
        assert!(!requested("/key-value-store/k"));
        assert!(!requested("/key-value-store/k?consistency=causal"));
    }
}
