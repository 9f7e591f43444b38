//! Fault injection (`KVS_FAULT_INJECTION=1`): an administrator, a test or `kvsctl fail` makes
//! a node behave as if it were cut off from the network, for a bounded time or until
//! recovered, as the fail and recover endpoints of the project kvs grew from did.
//!
//! A failed node answers no client request (each waits, unanswered, until the failure
//! ends), drops its relay connections and refuses new ones, sends no message to its peers,
//! and neither sends nor hears gossip, so its peers' failure detectors soon count it down.
//! Only its own operator endpoints (`/kvs/fault/*`, `/kvs/status`, `/kvs/health/*`,
//! `/metrics`) keep answering, so that it can be recovered and observed. The switch is one
//! watch channel: the HTTP edge, the relay channel and the gossip transport each follow it
//! without knowing of the others.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::ChitchatEnvelope;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a failure lasts when the request names no duration.
pub const DEFAULT_FAILURE: Duration = Duration::from_secs(30);
/// The longest failure one request can inject: a forgotten failure ends by itself.
pub const MAX_FAILURE_SECS: u64 = 3600;

/// Whether this node is failed, and until when.
#[derive(Debug)]
pub struct FaultSwitch {
    enabled: bool,
    failed: watch::Sender<bool>,
    /// Bumped to stop the gossip task once, as a fatal socket error would
    /// (`POST /kvs/fault/gossip-crash`): its supervisor must start it again.
    gossip_crashes: watch::Sender<u64>,
    /// The end of the current failure; a newer failure or a recovery supersedes it.
    until: Mutex<Option<Instant>>,
}

/// Why a failure could not be injected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("Fault injection is disabled")]
    Disabled,
    #[error("seconds must be between 1 and {MAX_FAILURE_SECS}")]
    BadDuration,
}

impl FaultSwitch {
    /// A switch that can be thrown only when `enabled` (`KVS_FAULT_INJECTION=1`).
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            failed: watch::channel(false).0,
            gossip_crashes: watch::channel(0).0,
            until: Mutex::new(None),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn is_failed(&self) -> bool {
        *self.failed.borrow()
    }

    /// Follows the switch: `true` while the node is failed.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.failed.subscribe()
    }

    /// Fails the node for `seconds` (its default when `None`); a failure already under way
    /// is extended or shortened to end then. Call [`FaultSwitch::expire`] at that instant.
    pub fn fail(&self, seconds: Option<u64>) -> Result<Duration, FaultError> {
        if !self.enabled {
            return Err(FaultError::Disabled);
        }
        let length = match seconds {
            None => DEFAULT_FAILURE,
            Some(s) if (1..=MAX_FAILURE_SECS).contains(&s) => Duration::from_secs(s),
            Some(_) => return Err(FaultError::BadDuration),
        };
        *self.until_lock() = Some(Instant::now() + length);
        self.failed.send_replace(true);
        log::warn!("injected failure: this node is cut off for {length:?}");
        Ok(length)
    }

    /// Stops the gossip task, as a fatal error of its socket would.
    pub fn crash_gossip(&self) -> Result<(), FaultError> {
        if !self.enabled {
            return Err(FaultError::Disabled);
        }
        self.gossip_crashes.send_modify(|n| *n += 1);
        log::warn!("injected fault: the gossip task is told to stop");
        Ok(())
    }

    /// What the gossip transport follows: the failure, and crashes.
    pub fn gossip_faults(&self) -> GossipFaults {
        GossipFaults {
            cut_off: self.subscribe(),
            crashes: self.gossip_crashes.subscribe(),
        }
    }

    /// Ends the failure now (nothing happens on a node that is not failed).
    pub fn recover(&self) -> Result<(), FaultError> {
        if !self.enabled {
            return Err(FaultError::Disabled);
        }
        *self.until_lock() = None;
        if self.failed.send_replace(false) {
            log::warn!("injected failure ended: this node is reachable again");
        }
        Ok(())
    }

    /// Ends the failure if its time is up (a later `fail` may have moved its end).
    pub fn expire(&self) {
        let mut until = self.until_lock();
        if until.is_some_and(|end| end <= Instant::now()) {
            *until = None;
            drop(until);
            self.failed.send_replace(false);
            log::warn!("injected failure ended: this node is reachable again");
        }
    }

    /// Returns once the node is not failed.
    pub async fn until_recovered(&self) {
        let mut failed = self.subscribe();
        let _ = failed.wait_for(|failed| !failed).await;
    }

    fn until_lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.until.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Ends failures when their time is up; runs for the node's life.
pub async fn expire_failures(switch: std::sync::Arc<FaultSwitch>) {
    let mut failed = switch.subscribe();
    loop {
        let end = *switch.until_lock();
        match end {
            Some(end) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(end) => switch.expire(),
                    _ = failed.changed() => {}
                }
            }
            None => {
                if failed.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The injected faults a gossip transport follows.
#[derive(Clone)]
pub struct GossipFaults {
    /// True while the node is failed.
    pub cut_off: watch::Receiver<bool>,
    /// Bumped by every injected crash.
    pub crashes: watch::Receiver<u64>,
}

impl GossipFaults {
    pub fn wrap<T: Transport>(&self, inner: T) -> SwitchedTransport<T> {
        SwitchedTransport {
            inner,
            faults: self.clone(),
        }
    }
}

/// A gossip transport, silent while the node is failed: it sends nothing and drops what it
/// hears, so peers count it down and it counts them down, as a cut cable would. An injected
/// crash ends its socket with an error, which stops chitchat's task.
pub struct SwitchedTransport<T> {
    inner: T,
    faults: GossipFaults,
}

#[async_trait]
impl<T: Transport> Transport for SwitchedTransport<T> {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = self.inner.open(listen_addr).await?;
        let mut crashes = self.faults.crashes.clone();
        // Crashes before this socket opened are not this socket's.
        crashes.borrow_and_update();
        Ok(Box::new(SwitchedSocket {
            inner,
            failed: self.faults.cut_off.clone(),
            crashes,
        }))
    }
}

struct SwitchedSocket {
    inner: Box<dyn Socket>,
    failed: watch::Receiver<bool>,
    crashes: watch::Receiver<u64>,
}

#[async_trait]
impl Socket for SwitchedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        if *self.failed.borrow() {
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        self.inner.send(to, envelope).await
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let received = tokio::select! {
                received = self.inner.recv() => received?,
                Ok(()) = self.crashes.changed() => anyhow::bail!("injected gossip crash"),
            };
            if !*self.failed.borrow() {
                return Ok(received);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_that_is_not_enabled_cannot_be_thrown() {
        let switch = FaultSwitch::new(false);
        assert_eq!(switch.fail(Some(5)), Err(FaultError::Disabled));
        assert_eq!(switch.recover(), Err(FaultError::Disabled));
        assert!(!switch.is_failed());
    }

    #[test]
    fn a_failure_must_be_bounded() {
        let switch = FaultSwitch::new(true);
        assert_eq!(switch.fail(Some(0)), Err(FaultError::BadDuration));
        assert_eq!(
            switch.fail(Some(MAX_FAILURE_SECS + 1)),
            Err(FaultError::BadDuration)
        );
        assert!(!switch.is_failed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_ends_by_itself_or_when_recovered() {
        let switch = std::sync::Arc::new(FaultSwitch::new(true));
        tokio::spawn(expire_failures(switch.clone()));
        assert_eq!(switch.fail(Some(10)), Ok(Duration::from_secs(10)));
        assert!(switch.is_failed());
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(switch.is_failed());
        tokio::time::timeout(Duration::from_secs(2), switch.until_recovered())
            .await
            .expect("the failure ends after 10 s");
        assert!(!switch.is_failed());

        switch.fail(None).unwrap();
        assert!(switch.is_failed());
        switch.recover().unwrap();
        assert!(!switch.is_failed());
        // The first failure's timer must not end a later one early.
        switch.fail(Some(100)).unwrap();
        tokio::time::sleep(Duration::from_secs(50)).await;
        assert!(switch.is_failed());
    }
}
