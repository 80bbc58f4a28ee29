//! Acknowledgements written together. Each acknowledgement of a quorum
//! queue's message is a command the broker appends to the queue's log, so
//! a consumer that acknowledges each message on its own costs the broker
//! about a third more CPU per message than one that acknowledges in batches
//! (PerfTest 1→1 with and without `--multi-ack-every 64`: 88–101 against
//! 56–71 µs per message). Ended deliveries are therefore collected and
//! acknowledged with one `multiple` ack up to the oldest message still under
//! way, once a quarter of the prefetch window has ended or after a few
//! milliseconds. Messages that ended above one still under way (an
//! unordered subscriber's later message finished first, or an earlier one
//! is being retried) are acknowledged one by one then: the prefetch window
//! must not wait for a slow delivery.
//!
//! The only cost is at-least-once's: a consumer that dies before it wrote
//! a batch gets those messages delivered again (by `ce-id`, duplicates).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

/// The longest an ended delivery waits for its acknowledgement.
pub const ACK_DELAY: Duration = Duration::from_millis(5);

/// One acknowledgement to write: `multiple` covers every unacknowledged
/// message of the channel up to this one's delivery tag.
#[derive(Debug, PartialEq, Eq)]
pub struct Ack<A> {
    pub acker: A,
    pub multiple: bool,
}

/// Delivery tags of one channel: taken and not settled, and ended and not
/// yet acknowledged. `A` is what acknowledges a message (lapin's `Acker`).
#[derive(Debug)]
pub struct Acks<A> {
    /// Taken from the queue and still under way (or kept to be handed in
    /// again).
    open: BTreeSet<u64>,
    /// Ended, to be acknowledged.
    ended: BTreeMap<u64, A>,
    /// When the oldest of `ended` ended.
    since: Option<Instant>,
    /// How many ended messages are written at once without waiting.
    batch: usize,
}

impl<A> Acks<A> {
    /// For a consumer with `prefetch` messages unacknowledged at most: a
    /// batch is a quarter of that (with a prefetch of 1, every message is
    /// acknowledged at once: the broker sends the next only then).
    pub fn new(prefetch: u16) -> Self {
        Self {
            open: BTreeSet::new(),
            ended: BTreeMap::new(),
            since: None,
            batch: usize::from(prefetch / 4).max(1),
        }
    }

    /// Message `tag` was taken from the queue.
    pub fn taken(&mut self, tag: u64) {
        self.open.insert(tag);
    }

    /// Message `tag` was settled otherwise (returned to the queue).
    pub fn released(&mut self, tag: u64) {
        self.open.remove(&tag);
    }

    /// Message `tag`'s delivery ended: it is to be acknowledged.
    pub fn ended(&mut self, tag: u64, acker: A) {
        self.open.remove(&tag);
        self.ended.insert(tag, acker);
        self.since.get_or_insert_with(Instant::now);
    }

    /// When the ended messages are to be written: `None` when there are
    /// none; now when a batch is full.
    pub fn due(&self) -> Option<Instant> {
        let since = self.since?;
        if self.ended.len() >= self.batch {
            return Some(since);
        }
        Some(since + ACK_DELAY)
    }

    /// Every ended message's acknowledgement, as few as the open ones
    /// allow: one `multiple` up to the oldest open message, then one each.
    pub fn take(&mut self) -> Vec<Ack<A>> {
        self.since = None;
        let oldest_open = self.open.first().copied().unwrap_or(u64::MAX);
        let above = self.ended.split_off(&oldest_open);
        let mut acks = Vec::with_capacity(1 + above.len());
        if let Some((_, acker)) = std::mem::take(&mut self.ended).into_iter().next_back() {
            acks.push(Ack {
                acker,
                multiple: true,
            });
        }
        acks.extend(above.into_values().map(|acker| Ack {
            acker,
            multiple: false,
        }));
        acks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_due<A>(acks: &Acks<A>, now: Instant) -> bool {
        acks.due().is_some_and(|due| due <= now)
    }

    fn tags(acks: Vec<Ack<u64>>) -> Vec<(u64, bool)> {
        acks.into_iter().map(|a| (a.acker, a.multiple)).collect()
    }

    #[test]
    fn ended_in_order_are_acknowledged_by_one_multiple_ack() {
        let mut acks = Acks::new(64);
        for tag in 1..=16 {
            acks.taken(tag);
        }
        for tag in 1..=16 {
            acks.ended(tag, tag);
        }
        assert!(is_due(&acks, Instant::now()), "a quarter of the window ended");
        assert_eq!(tags(acks.take()), [(16, true)]);
        assert_eq!(acks.due(), None);
        assert!(acks.take().is_empty());
    }

    #[test]
    fn a_message_under_way_bounds_the_multiple_ack_and_later_ones_go_one_by_one() {
        let mut acks = Acks::new(64);
        for tag in 1..=6 {
            acks.taken(tag);
        }
        for tag in [1, 2, 4, 6] {
            acks.ended(tag, tag);
        }
        // 3 is still under way, 5 was returned to the queue.
        acks.released(5);
        assert_eq!(tags(acks.take()), [(2, true), (4, false), (6, false)]);
        acks.ended(3, 3);
        assert_eq!(tags(acks.take()), [(3, true)]);
    }

    #[test]
    fn a_small_batch_waits_a_few_milliseconds_and_a_window_of_one_not_at_all() {
        let mut acks = Acks::new(64);
        acks.taken(1);
        acks.ended(1, 1);
        let now = Instant::now();
        assert!(!is_due(&acks, now));
        assert!(is_due(&acks, now + ACK_DELAY));

        let mut one = Acks::new(1);
        one.taken(1);
        one.ended(1, 1);
        assert!(is_due(&one, Instant::now()));
    }
}
