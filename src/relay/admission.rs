//! Who gets a relay connection: bounds on handshakes in progress, per source address and in
//! all, and on connections, with room kept for the store's own nodes.
//!
//! Before, a connection took one of 512 permits when accepted and kept it through its
//! handshake (5 s to finish), so one client holding silent sockets could keep every permit
//! taken, and a peer that reconnected (after a restart, say) found none. Now a socket that
//! has not finished its handshake holds only a handshake permit: at most
//! [`MAX_HANDSHAKES_PER_SOURCE`] per source address and [`MAX_HANDSHAKES`] in all, for at
//! most `HANDSHAKE_TIMEOUT`; past either bound it is closed at once. A connection permit is
//! taken after the handshake, and the last [`PEER_RESERVE`] of them go only to sources that
//! are nodes of the store (their addresses are in the view or the shard map). Nodes open
//! their relay connections from their own address (`BIND_ADDRESS`'s IP), so each is a
//! source of its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Relay connections a node keeps at once: peers keep one each; room for many nodes and
/// reconnects.
pub const MAX_CONNECTIONS: usize = 512;
/// Of those, kept for the store's own nodes.
pub const PEER_RESERVE: usize = 64;
/// Handshakes in progress at once, in all and per source address. A node opens one
/// connection per peer, one dial at a time.
pub const MAX_HANDSHAKES: usize = 64;
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 4;

/// Whether a source address is one of the store's nodes.
pub type KnownPeers = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

pub struct Admission {
    handshaking: Mutex<HashMap<IpAddr, usize>>,
    anyone: Arc<Semaphore>,
    peers_only: Arc<Semaphore>,
    known: KnownPeers,
}

/// A handshake in progress; gives its place back when dropped.
pub struct Handshaking {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        let mut handshaking = self.admission.lock();
        if let Some(n) = handshaking.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                handshaking.remove(&self.source);
            }
        }
    }
}

impl Admission {
    pub fn new(known: KnownPeers) -> Self {
        Self {
            handshaking: Mutex::new(HashMap::new()),
            anyone: Arc::new(Semaphore::new(MAX_CONNECTIONS - PEER_RESERVE)),
            peers_only: Arc::new(Semaphore::new(PEER_RESERVE)),
            known,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.handshaking.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a handshake from `source`, if its bounds allow one.
    pub fn handshake(self: &Arc<Self>, source: IpAddr) -> Option<Handshaking> {
        let mut handshaking = self.lock();
        let total: usize = handshaking.values().sum();
        let mine = handshaking.get(&source).copied().unwrap_or(0);
        if total >= MAX_HANDSHAKES || mine >= MAX_HANDSHAKES_PER_SOURCE {
            return None;
        }
        *handshaking.entry(source).or_default() += 1;
        debug_assert!(handshaking.len() <= MAX_HANDSHAKES);
        Some(Handshaking {
            admission: self.clone(),
            source,
        })
    }

    /// A connection permit for `source`, which finished its handshake: from the shared
    /// ones, or, for a node of the store, from the reserve.
    pub fn connection(&self, source: IpAddr) -> Option<OwnedSemaphorePermit> {
        self.anyone.clone().try_acquire_owned().ok().or_else(|| {
            (self.known)(source)
                .then(|| self.peers_only.clone().try_acquire_owned().ok())
                .flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn one_source_holds_few_handshakes_and_all_sources_a_bounded_number() {
        let admission = Arc::new(Admission::new(Arc::new(|_| false)));
        let mine: Vec<_> = (0..MAX_HANDSHAKES_PER_SOURCE)
            .map(|_| admission.handshake(ip(1)).expect("a place"))
            .collect();
        assert!(
            admission.handshake(ip(1)).is_none(),
            "a fifth from one source"
        );
        let others: Vec<_> = (2..=255)
            .filter_map(|last| admission.handshake(ip(last)))
            .collect();
        assert_eq!(mine.len() + others.len(), MAX_HANDSHAKES);
        drop(mine);
        assert!(admission.handshake(ip(1)).is_some(), "places come back");
    }

    #[test]
    fn the_last_connections_are_kept_for_the_store_s_nodes() {
        let admission = Admission::new(Arc::new(|source| source == ip(9)));
        let held: Vec<_> = (0..MAX_CONNECTIONS - PEER_RESERVE)
            .map(|_| admission.connection(ip(1)).expect("a permit"))
            .collect();
        assert!(
            admission.connection(ip(1)).is_none(),
            "an outsider past the shared ones"
        );
        let peers: Vec<_> = (0..PEER_RESERVE)
            .map(|_| admission.connection(ip(9)).expect("the reserve"))
            .collect();
        assert!(admission.connection(ip(9)).is_none());
        drop((held, peers));
    }
}
