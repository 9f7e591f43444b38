//! The owner's memory of the writes it answered over the relay channel, so that a write
//! sent again after its connection died is answered, not applied a second time.
//!
//! A forwarder whose connection goes silent cannot tell whether its write was applied. Sent
//! to another member, a second copy could overwrite a later write of another client; so it
//! sends the same call (same origin and id) to the same owner on a new connection, and the
//! owner answers from here: the answer it gave, or it waits for the first copy to finish.
//! Memory is bounded ([`MAX_BYTES`]); a repeated call the owner has had to forget is
//! answered [`super::frame::FORGOTTEN`], and the client hears that the write's fate is
//! unknown, as it would have without this memory.
//!
//! A plain state machine: the caller passes the time in, tests drive it without sockets.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

/// Answers kept at most, in bytes of body plus bookkeeping. At 15,000 forwarded writes a
/// second (a node's flat-out share) of ~300-byte answers this is about 3.5 s of writes;
/// at the course's pace, every write of the window.
pub const MAX_BYTES: usize = 16 << 20;
/// How long an answer is kept: well past the longest a forwarder retries (its budget,
/// [`crate::budget::CLIENT_BUDGET`]).
pub const WINDOW: Duration = Duration::from_secs(60);
/// Bookkeeping per answer, counted against [`MAX_BYTES`].
const ENTRY_OVERHEAD_BYTES: usize = 96;

type Key = (u64, u64);
/// A status and body, as relayed.
pub type Reply = (u16, Bytes);

/// What to do with an incoming write call.
#[derive(Debug)]
pub enum Begin {
    /// Not seen before: serve it, then [`Remembered::finish`].
    Run,
    /// Seen and answered: answer this again.
    Done(Reply),
    /// Seen and still being served: wait for that answer.
    Wait(watch::Receiver<Option<Reply>>),
    /// A repeat of a call this owner may have served but no longer remembers.
    Forgotten,
}

enum Slot {
    Running(watch::Sender<Option<Reply>>),
    Done(Reply),
}

#[derive(Default)]
pub struct Remembered {
    slots: HashMap<Key, Slot>,
    /// Answered calls, oldest first: (key, when, bytes).
    answered: VecDeque<(Key, Instant, usize)>,
    bytes: usize,
    /// Per origin, the highest id forgotten, and when the last one was: a repeat of an id
    /// at or below it is [`Begin::Forgotten`] for a window after that.
    forgotten: HashMap<u64, (u64, Instant)>,
}

impl Remembered {
    /// Registers a write call with `origin`, `id` and `attempt` (0 for the first).
    pub fn begin(&mut self, origin: u64, id: u64, attempt: u8) -> Begin {
        let key = (origin, id);
        match self.slots.get(&key) {
            Some(Slot::Done(reply)) => return Begin::Done(reply.clone()),
            Some(Slot::Running(sender)) => return Begin::Wait(sender.subscribe()),
            None => {}
        }
        let forgotten = self
            .forgotten
            .get(&origin)
            .is_some_and(|&(top, _)| id <= top);
        if attempt > 0 && forgotten {
            return Begin::Forgotten;
        }
        self.slots
            .insert(key, Slot::Running(watch::channel(None).0));
        Begin::Run
    }

    /// Records the answer to a call that [`Begin::Run`], hands it to any repeat waiting for
    /// it, and forgets what no longer fits.
    pub fn finish(&mut self, origin: u64, id: u64, reply: Reply, now: Instant) {
        let key = (origin, id);
        let size = reply.1.len() + ENTRY_OVERHEAD_BYTES;
        if let Some(Slot::Running(sender)) = self.slots.insert(key, Slot::Done(reply.clone())) {
            sender.send_replace(Some(reply));
        }
        self.answered.push_back((key, now, size));
        self.bytes += size;
        self.forget_old(now);
    }

    /// Drops a call that was never answered (its task ended without an answer); a repeat
    /// waiting for it is told it is forgotten.
    pub fn abandon(&mut self, origin: u64, id: u64, now: Instant) {
        if let Some(Slot::Running(_)) = self.slots.get(&(origin, id)) {
            self.slots.remove(&(origin, id));
            self.note_forgotten((origin, id), now);
        }
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some(&(key, at, size)) = self.answered.front() {
            if self.bytes <= MAX_BYTES && now.duration_since(at) < WINDOW {
                break;
            }
            self.answered.pop_front();
            self.bytes -= size;
            self.slots.remove(&key);
            self.note_forgotten(key, now);
        }
        self.forgotten
            .retain(|_, (_, at)| now.duration_since(*at) < WINDOW);
    }

    fn note_forgotten(&mut self, (origin, id): Key, at: Instant) {
        let entry = self.forgotten.entry(origin).or_insert((id, at));
        entry.0 = entry.0.max(id);
        entry.1 = entry.1.max(at);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> Reply {
        (200, Bytes::from(text.to_owned()))
    }

    #[test]
    fn a_repeated_write_gets_the_first_answer() {
        let mut memory = Remembered::default();
        let now = Instant::now();
        assert!(matches!(memory.begin(7, 1, 0), Begin::Run));
        let Begin::Wait(mut waiting) = memory.begin(7, 1, 1) else {
            panic!("a repeat while the first copy runs waits for it");
        };
        memory.finish(7, 1, reply("first"), now);
        assert_eq!(*waiting.borrow_and_update(), Some(reply("first")));
        assert!(matches!(memory.begin(7, 1, 2), Begin::Done(r) if r == reply("first")));
        // Another origin's call with the same id is another call.
        assert!(matches!(memory.begin(8, 1, 0), Begin::Run));
    }

    #[test]
    fn a_repeat_of_a_forgotten_write_is_not_applied_again() {
        let mut memory = Remembered::default();
        let start = Instant::now();
        for id in 1..=3 {
            assert!(matches!(memory.begin(7, id, 0), Begin::Run));
            memory.finish(7, id, reply("x"), start);
        }
        // Past the window: forgotten, and a repeat says so.
        memory.finish(9, 1, reply("x"), start + WINDOW);
        assert_eq!(memory.len(), 1);
        assert!(matches!(memory.begin(7, 2, 1), Begin::Forgotten));
        // A first attempt of a new id runs; so does a repeat of an id never forgotten.
        assert!(matches!(memory.begin(7, 4, 0), Begin::Run));
        assert!(matches!(memory.begin(7, 5, 1), Begin::Run));
    }

    #[test]
    fn memory_is_bounded_in_bytes() {
        let mut memory = Remembered::default();
        let now = Instant::now();
        let body = "b".repeat(1000);
        let fits = MAX_BYTES / (1000 + ENTRY_OVERHEAD_BYTES);
        for id in 0..(fits as u64 + 100) {
            assert!(matches!(memory.begin(1, id, 0), Begin::Run));
            memory.finish(1, id, reply(&body), now);
        }
        assert!(memory.bytes <= MAX_BYTES);
        assert_eq!(memory.len(), fits);
        assert!(matches!(memory.begin(1, 5, 1), Begin::Forgotten));
        assert!(matches!(
            memory.begin(1, fits as u64 + 99, 1),
            Begin::Done(_)
        ));
    }

    #[test]
    fn an_abandoned_call_is_forgotten_not_rerun() {
        let mut memory = Remembered::default();
        let now = Instant::now();
        assert!(matches!(memory.begin(3, 10, 0), Begin::Run));
        let Begin::Wait(waiting) = memory.begin(3, 10, 1) else {
            panic!("waits");
        };
        memory.abandon(3, 10, now);
        assert!(
            waiting.has_changed().is_err(),
            "the waiter hears the sender is gone"
        );
        assert!(matches!(memory.begin(3, 10, 2), Begin::Forgotten));
    }
}
