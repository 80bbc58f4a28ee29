//! What the engine's parts share: the HTTP sender, the metrics, the running
//! totals and the dead-letter queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use super::dead_letter::DeadLetter;
use super::engine::DeliveryStats;
use super::http::HttpSender;
use super::notices::DropNoticeSender;
use crate::budget::MemoryBudget;
use crate::metrics::{DataplaneMetrics, ReasonLabels};

/// Running totals; [`DeliveryStats`] is a snapshot of them.
#[derive(Default)]
pub(super) struct Stats {
    pub(super) delivered: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) dropped: AtomicU64,
}

impl Stats {
    pub(super) fn snapshot(&self) -> DeliveryStats {
        DeliveryStats {
            delivered: self.delivered.load(AtomicOrdering::Relaxed),
            retried: self.retried.load(AtomicOrdering::Relaxed),
            dead_lettered: self.dead_lettered.load(AtomicOrdering::Relaxed),
            dropped: self.dropped.load(AtomicOrdering::Relaxed),
        }
    }
}

/// Shared by the engine, every subscriber task and the dead-letter task.
pub(super) struct EngineState {
    pub(super) http: HttpSender,
    pub(super) metrics: Arc<DataplaneMetrics>,
    pub(super) stats: Stats,
    pub(super) dead_letters: mpsc::Sender<DeadLetter>,
    pub(super) dead_letters_pending: AtomicU64,
    /// What queued messages may hold in this process.
    pub(super) budget: Arc<MemoryBudget>,
    /// Told when a subscriber starts dropping for memory.
    pub(super) drop_notices: Option<DropNoticeSender>,
}

impl EngineState {
    pub(super) fn count_drop(&self, channel: &str, subscriber: &str, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.stats.dropped.fetch_add(n, AtomicOrdering::Relaxed);
        self.drop_counter(channel, subscriber, reason).inc_by(n);
    }

    pub(super) fn drop_counter(&self, channel: &str, subscriber: &str, reason: &str) -> Counter {
        self.metrics
            .dropped
            .get_or_create(&ReasonLabels {
                channel: channel.to_string(),
                subscriber: subscriber.to_string(),
                endpoint: String::new(),
                reason: reason.to_string(),
            })
            .clone()
    }
}
