//! How long a client request may take, at every node it passes through.
//!
//! The budgets nest, so that each layer answers before the one that called it gives up:
//!
//! ```text
//! client's timeout (30 s is usual: the course's scripts, our e2e suite)
//!   > the node the client reached: CLIENT_BUDGET (20 s), then 503
//!     > the owner it forwarded to: what was left, less HOP_MARGIN (1 s), then its own 503
//!       > the issuer the owner relayed to: what was left, less HOP_MARGIN again
//! ```
//!
//! Every bounded wait of the node that serves the request (for its dependencies, for its
//! shard's data, for a reshard's freeze, for a newer map) ends at the request's deadline at
//! the latest. Before, a forwarder waited 5 + 30 + 5 s, exactly the sum of the owner's own
//! waits, so a slow but working owner answered just after its forwarder had given up and
//! told the client 503 for a write that took effect.

use std::time::Duration;

use tokio::time::Instant;

/// The most a node takes to answer a client's request, forwarding included.
pub const CLIENT_BUDGET: Duration = Duration::from_secs(20);
/// How much earlier than its forwarder's limit an owner answers: time for the answer to
/// travel back and for a CPU-starved forwarder to be scheduled.
pub const HOP_MARGIN: Duration = Duration::from_secs(1);
/// Below this, a request is not sent on: the next node could not do anything useful.
const MIN_FORWARD_BUDGET: Duration = Duration::from_millis(200);

/// The instant by which a request must be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Instant);

impl Deadline {
    /// The deadline of a request a client sent to this node.
    pub fn for_client() -> Self {
        Self(Instant::now() + CLIENT_BUDGET)
    }

    /// The deadline of a request another node forwarded with `budget_ms` to answer it;
    /// a budget of 0 (an older peer that sent none) counts as a client's.
    pub fn from_budget_ms(budget_ms: u32) -> Self {
        match budget_ms {
            0 => Self::for_client(),
            ms => Self(Instant::now() + Duration::from_millis(u64::from(ms)).min(CLIENT_BUDGET)),
        }
    }

    /// A deadline at `at`.
    pub fn from_instant(at: Instant) -> Self {
        Self(at)
    }

    pub fn instant(self) -> Instant {
        self.0
    }

    /// `bound` from now, or the deadline if that comes first.
    pub fn within(self, bound: Duration) -> Instant {
        self.0.min(Instant::now() + bound)
    }

    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// The budget to give the next node, which must answer `HOP_MARGIN` before this one's
    /// deadline; `None` when too little is left to send the request on at all.
    pub fn forward_budget_ms(self) -> Option<u32> {
        let left = self.remaining().checked_sub(HOP_MARGIN)?;
        (left >= MIN_FORWARD_BUDGET).then(|| u32::try_from(left.as_millis()).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_hop_answers_a_margin_before_the_one_before_it() {
        let client = Deadline::for_client();
        let owner = Deadline::from_budget_ms(client.forward_budget_ms().unwrap());
        assert_eq!(client.instant() - owner.instant(), HOP_MARGIN);
        let issuer = Deadline::from_budget_ms(owner.forward_budget_ms().unwrap());
        assert_eq!(owner.instant() - issuer.instant(), HOP_MARGIN);
        assert!(CLIENT_BUDGET < Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_forwarded_without_time_to_serve_it() {
        let deadline = Deadline::from_budget_ms(1100);
        assert_eq!(deadline.forward_budget_ms(), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(Deadline::for_client().forward_budget_ms(), Some(19_000));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_end_at_the_deadline_or_their_own_bound() {
        let deadline = Deadline::from_budget_ms(3000);
        let now = Instant::now();
        assert_eq!(
            deadline.within(Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(deadline.within(Duration::from_secs(30)), deadline.instant());
        // A budget larger than a client's is capped: no peer can make this node wait longer.
        assert_eq!(
            Deadline::from_budget_ms(u32::MAX).instant(),
            now + CLIENT_BUDGET
        );
    }
}
