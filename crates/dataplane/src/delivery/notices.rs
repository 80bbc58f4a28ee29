//! Notices of a subscriber losing messages for memory, for a role to tell
//! users about (the bridge worker turns them into Kubernetes Events).
//!
//! Cheap on the hot path: a drop adds to the subscriber's counters, and
//! only the first drop after the counters were last taken sends a notice,
//! so a subscriber dropping tens of thousands of messages a second costs one
//! channel message per report, however often the reader reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::queue::{MEMORY_BUDGET, QUEUE_BYTES};

/// Messages of one subscriber dropped for memory, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryDropCounts {
    /// Its queue held `queueCapacityBytes` (reason `queue_bytes`).
    pub queue_bytes: u64,
    /// The process's memory budget was exhausted (reason `memory_budget`).
    pub memory_budget: u64,
}

impl MemoryDropCounts {
    /// Every message counted.
    pub fn total(&self) -> u64 {
        self.queue_bytes.saturating_add(self.memory_budget)
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: MemoryDropCounts) {
        self.queue_bytes = self.queue_bytes.saturating_add(other.queue_bytes);
        self.memory_budget = self.memory_budget.saturating_add(other.memory_budget);
    }

    /// The counts that are not zero, with their reason words.
    pub fn by_reason(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            (QUEUE_BYTES, self.queue_bytes),
            (MEMORY_BUDGET, self.memory_budget),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
    }
}

/// One subscriber's memory drops since they were last taken.
#[derive(Debug, Default)]
pub struct MemoryDrops {
    queue_bytes: AtomicU64,
    memory_budget: AtomicU64,
    /// A notice was sent and its counts are not taken yet.
    noticed: AtomicBool,
}

impl MemoryDrops {
    /// The counts so far, reset to zero. The next drop after this sends a
    /// new notice.
    pub fn take(&self) -> MemoryDropCounts {
        // Re-armed before the counts are read: a drop counted after the
        // read always sends a notice of its own.
        self.noticed.store(false, Ordering::SeqCst);
        MemoryDropCounts {
            queue_bytes: self.queue_bytes.swap(0, Ordering::SeqCst),
            memory_budget: self.memory_budget.swap(0, Ordering::SeqCst),
        }
    }

    /// Counts one drop for `reason` if it is a memory reason; true when a
    /// notice is due (the first such drop since the last take).
    fn count(&self, reason: &str) -> bool {
        let counter = match reason {
            QUEUE_BYTES => &self.queue_bytes,
            MEMORY_BUDGET => &self.memory_budget,
            _ => return false,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        !self.noticed.swap(true, Ordering::SeqCst)
    }
}

/// A subscriber has started dropping messages for memory: take its counts
/// (now, or later to report several at once).
#[derive(Debug, Clone)]
pub struct DropNotice {
    /// `namespace/name` of the channel.
    pub channel: Arc<str>,
    /// The subscriber's id (e.g. `namespace/subscription`).
    pub subscriber: Arc<str>,
    /// Its counters (a replaced subscriber has counters of its own: take
    /// every notice's).
    pub drops: Arc<MemoryDrops>,
}

/// Receives [`DropNotice`]s; set in
/// [`EngineConfig::drop_notices`](super::EngineConfig::drop_notices).
pub type DropNoticeSender = mpsc::UnboundedSender<DropNotice>;

/// Where one subscriber's memory drops are counted and announced (one per
/// subscriber queue; public for tests of what reads the notices).
#[derive(Debug)]
pub struct DropNotifier {
    notice: DropNotice,
    tx: Option<DropNoticeSender>,
}

impl DropNotifier {
    /// Counters of `subscriber` of `channel`, announced on `tx` (none: not counted).
    pub fn new(channel: Arc<str>, subscriber: Arc<str>, tx: Option<DropNoticeSender>) -> Self {
        Self {
            notice: DropNotice {
                channel,
                subscriber,
                drops: Arc::default(),
            },
            tx,
        }
    }

    /// Counts one message dropped for `reason` (only memory reasons count).
    #[inline]
    pub fn dropped(&self, reason: &str) {
        let Some(tx) = &self.tx else { return };
        if self.notice.drops.count(reason) {
            // Nobody listening is fine: the metrics still count.
            let _ = tx.send(self.notice.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::QUEUE_FULL;

    #[test]
    fn one_notice_per_take_however_many_drops() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let n = DropNotifier::new("ns/c".into(), "ns/s".into(), Some(tx));
        for _ in 0..1000 {
            n.dropped(QUEUE_BYTES);
        }
        n.dropped(MEMORY_BUDGET);
        n.dropped(QUEUE_FULL);
        let notice = rx.try_recv().unwrap();
        assert!(rx.try_recv().is_err(), "one notice until taken");
        assert_eq!(&*notice.subscriber, "ns/s");
        let counts = notice.drops.take();
        assert_eq!(
            counts,
            MemoryDropCounts {
                queue_bytes: 1000,
                memory_budget: 1
            }
        );
        assert_eq!(
            counts.by_reason().collect::<Vec<_>>(),
            [(QUEUE_BYTES, 1000), (MEMORY_BUDGET, 1)]
        );
        // Not a memory reason: no notice, no count.
        n.dropped(QUEUE_FULL);
        assert!(rx.try_recv().is_err());
        n.dropped(MEMORY_BUDGET);
        assert_eq!(rx.try_recv().unwrap().drops.take().total(), 1);
        assert_eq!(notice.drops.take(), MemoryDropCounts::default());
    }

    #[test]
    fn without_a_listener_nothing_is_counted() {
        let n = DropNotifier::new("ns/c".into(), "ns/s".into(), None);
        n.dropped(QUEUE_BYTES);
        assert_eq!(n.notice.drops.take(), MemoryDropCounts::default());
    }
}
