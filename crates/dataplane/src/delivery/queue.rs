//! One subscriber's queue, bounded in messages and in bytes. At the bound
//! the subscriber's overflow policy decides whether the newest message is
//! refused or the oldest queued ones give way.
//!
//! A deque under a mutex rather than a channel: dropping the oldest needs
//! the producer to take from the front, which no channel allows. Both sides
//! hold the lock only to push or pop one entry.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::message::Message;

/// Which message gives way when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// The new message is refused (the queue keeps what it has).
    #[default]
    DropNewest,
    /// The oldest queued messages give way to the new one.
    DropOldest,
}

/// Bytes a subscriber's queue holds by default: sixteen 1 MiB messages, or
/// thousands of small ones; eight hung subscribers fit in the default
/// worker's budget (half of its 256 MiB limit).
pub const DEFAULT_QUEUE_BYTES: u64 = 16 << 20;

/// Drop reason: the queue holds `queueCapacity` messages.
pub const QUEUE_FULL: &str = "queue_full";
/// Drop reason: the queue holds `queueCapacityBytes`.
pub const QUEUE_BYTES: &str = "queue_bytes";
/// Drop reason: the process's memory budget is exhausted.
pub const MEMORY_BUDGET: &str = "memory_budget";

/// A message waiting in a queue.
pub(super) struct Queued {
    pub(super) msg: Arc<Message>,
    pub(super) enqueued: Instant,
}

/// What giving way produced: messages to dead-letter or drop, with why.
pub(super) type GaveWay = Vec<(Arc<Message>, &'static str)>;

struct State {
    items: VecDeque<Queued>,
    bytes: u64,
    closed: bool,
}

/// The queue of one subscriber; its task pops, dispatch pushes.
pub(super) struct SubscriberQueue {
    state: Mutex<State>,
    ready: Notify,
    capacity: usize,
    max_bytes: u64,
    /// The bytes queued now, readable without the lock (to find the
    /// largest queues when the process budget is short).
    bytes: AtomicU64,
    /// The subscriber's queued-bytes gauge (shared with a replaced queue of
    /// the same subscriber still draining, hence moved by deltas).
    gauge: Gauge,
}

impl SubscriberQueue {
    pub(super) fn new(capacity: usize, max_bytes: u64, gauge: Gauge) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
            }),
            ready: Notify::new(),
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            bytes: AtomicU64::new(0),
            gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `q` within the bounds, as `overflow` says. Returns the
    /// messages that gave way (the new one when refused), for the caller to
    /// dead-letter or count outside the lock.
    pub(super) fn push(&self, q: Queued, overflow: Overflow) -> GaveWay {
        let size = q.msg.held_bytes();
        let mut gave_way = GaveWay::new();
        let mut st = self.lock();
        let refuse = if st.closed {
            Some("unsubscribed")
        } else if size > self.max_bytes {
            Some(QUEUE_BYTES)
        } else if overflow == Overflow::DropNewest {
            if st.items.len() >= self.capacity {
                Some(QUEUE_FULL)
            } else if st.bytes + size > self.max_bytes {
                Some(QUEUE_BYTES)
            } else {
                None
            }
        } else {
            None
        };
        if let Some(reason) = refuse {
            drop(st);
            gave_way.push((q.msg, reason));
            return gave_way;
        }
        while st.items.len() >= self.capacity || st.bytes + size > self.max_bytes {
            let reason = if st.items.len() >= self.capacity {
                QUEUE_FULL
            } else {
                QUEUE_BYTES
            };
            match self.pop_locked(&mut st) {
                Some(old) => gave_way.push((old.msg, reason)),
                None => break,
            }
        }
        st.bytes += size;
        st.items.push_back(q);
        drop(st);
        self.moved(size as i64);
        self.ready.notify_one();
        gave_way
    }

    /// The oldest message, waiting for one; `None` once closed and empty.
    pub(super) async fn pop(&self) -> Option<Queued> {
        loop {
            {
                let mut st = self.lock();
                if let Some(q) = self.pop_locked(&mut st) {
                    return Some(q);
                }
                if st.closed {
                    return None;
                }
            }
            // A push between the unlock and this wait leaves a permit, so
            // no wake-up is lost.
            self.ready.notified().await;
        }
    }

    /// Takes the oldest message without waiting (to make room in the
    /// process's budget).
    pub(super) fn evict_oldest(&self) -> Option<Arc<Message>> {
        let mut st = self.lock();
        self.pop_locked(&mut st).map(|q| q.msg)
    }

    /// No more pushes; the task drains what is left and ends.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Bytes queued now.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn pop_locked(&self, st: &mut State) -> Option<Queued> {
        let q = st.items.pop_front()?;
        let size = q.msg.held_bytes();
        st.bytes -= size;
        self.moved(-(size as i64));
        Some(q)
    }

    fn moved(&self, delta: i64) {
        if delta >= 0 {
            self.bytes.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
        self.gauge.inc_by(delta);
    }
}

impl Drop for SubscriberQueue {
    fn drop(&mut self) {
        // What is still queued leaves the subscriber's gauge with it.
        let left = self.bytes.load(Ordering::Relaxed);
        self.gauge.dec_by(left as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Origin, Payload};

    fn msg(len: usize) -> Queued {
        Queued {
            msg: Arc::new(Message::new(
                Payload::binary(vec![0u8; len]),
                Origin::Endpoint,
                "/t",
            )),
            enqueued: Instant::now(),
        }
    }

    fn reasons(g: &GaveWay) -> Vec<&'static str> {
        g.iter().map(|(_, r)| *r).collect()
    }

    #[tokio::test]
    async fn drop_newest_refuses_what_exceeds_either_bound() {
        let size = msg(1000).msg.held_bytes();
        let q = SubscriberQueue::new(3, 2 * size, Gauge::default());
        assert!(q.push(msg(1000), Overflow::DropNewest).is_empty());
        assert!(q.push(msg(1000), Overflow::DropNewest).is_empty());
        assert_eq!(reasons(&q.push(msg(1000), Overflow::DropNewest)), [QUEUE_BYTES]);
        assert_eq!(q.bytes(), 2 * size);
        let q = SubscriberQueue::new(1, u64::MAX, Gauge::default());
        assert!(q.push(msg(1), Overflow::DropNewest).is_empty());
        assert_eq!(reasons(&q.push(msg(1), Overflow::DropNewest)), [QUEUE_FULL]);
    }

    #[tokio::test]
    async fn drop_oldest_makes_room_for_the_newest() {
        let size = msg(1000).msg.held_bytes();
        let gauge = Gauge::default();
        let q = SubscriberQueue::new(10, 2 * size, gauge.clone());
        let first = msg(1000);
        let first_id = first.msg.id().to_string();
        q.push(first, Overflow::DropOldest);
        q.push(msg(1000), Overflow::DropOldest);
        let third = msg(1000);
        let third_id = third.msg.id().to_string();
        let gave_way = q.push(third, Overflow::DropOldest);
        assert_eq!(reasons(&gave_way), [QUEUE_BYTES]);
        assert_eq!(gave_way[0].0.id(), first_id);
        assert_eq!(gauge.get(), 2 * size as i64);
        q.pop().await.unwrap();
        assert_eq!(q.pop().await.unwrap().msg.id(), third_id);
        assert_eq!((q.bytes(), gauge.get()), (0, 0));
        // A message larger than the whole bound never gets in.
        assert_eq!(reasons(&q.push(msg(5000), Overflow::DropOldest)), [QUEUE_BYTES]);
        q.close();
        assert!(q.pop().await.is_none());
    }
}
