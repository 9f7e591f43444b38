//! What a node tells operators about itself (`/kvs/status`, `/metrics`): how many live keys
//! it holds, and how far each shard peer lags behind the writes it coordinated.

/// How many of this node's writes of era `era`, up to `own_seq`, a peer that acknowledged
/// `acked` (an era and a sequence number) has yet to apply. A peer that has acknowledged
/// nothing of this era lags by all of them.
pub fn lag(era: u64, own_seq: u64, acked: Option<(u64, u64)>) -> u64 {
    match acked {
        Some((acked_era, applied)) if acked_era == era => own_seq.saturating_sub(applied),
        _ => own_seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_lags_by_the_writes_it_has_not_acknowledged() {
        assert_eq!(lag(1, 10, Some((1, 10))), 0);
        assert_eq!(lag(1, 10, Some((1, 7))), 3);
        assert_eq!(
            lag(2, 4, Some((1, 100))),
            4,
            "an old era's acks count for nothing"
        );
        assert_eq!(lag(1, 5, None), 5);
    }
}
