//! The delivery engine's API: which subscribers a channel has, dispatching
//! a message to them, live subscriber changes and graceful shutdown.
//! One subscriber's queue and task are in `subscriber.rs`, the dead-letter
//! path in `dead_letter.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use http::Uri;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::dead_letter::run_dead_letters;
use super::http::HttpSender;
use super::notices::DropNoticeSender;
use super::policy::DeliveryPolicy;
use super::queue::MEMORY_BUDGET;
use super::signing::SigningKey;
use super::state::{EngineState, Stats};
use super::subscriber::{Retired, Worker};
use crate::budget::{MemoryBudget, OverBudget};
use crate::destination::DestinationPolicy;
use crate::message::Message;
use crate::metrics::DataplaneMetrics;
use crate::routing::ChannelRoutes;
use wsbridge_core::ChannelKey;

/// One subscriber of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberSpec {
    /// Unique within the channel; used in logs and metric labels
    /// (e.g. the Subscription's `namespace/name`).
    pub id: String,
    /// Where messages are POSTed (`http://`).
    pub uri: Uri,
    /// Retries, ordering, dead-letter sink.
    pub policy: DeliveryPolicy,
    /// Signs every request (Standard Webhooks) when set.
    pub signing: Option<SigningKey>,
}

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Bound of the shared dead-letter queue (beyond it, dropped and counted).
    pub dead_letter_capacity: usize,
    /// Concurrent dead-letter POSTs.
    pub dead_letter_concurrency: usize,
    /// Attempts per dead-letter POST.
    pub dead_letter_attempts: u32,
    /// How long a removed subscriber may keep draining its queue; after that
    /// the rest is dead-lettered (reason `unsubscribed`) or dropped.
    pub removal_grace: Duration,
    /// Where deliveries and dead-letters may go (checked at connect time on
    /// the resolved addresses); denied ones are dead-lettered or dropped
    /// with reason `destination_denied`.
    pub destinations: Arc<DestinationPolicy>,
    /// What queued messages may hold in the process, each message counted
    /// once (shared with the roles' publish paths).
    pub budget: Arc<MemoryBudget>,
    /// Told when a subscriber starts dropping messages for memory (reasons
    /// `queue_bytes` and `memory_budget`); `None` counts them in the
    /// metrics only.
    pub drop_notices: Option<DropNoticeSender>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            dead_letter_capacity: 10_000,
            dead_letter_concurrency: 32,
            dead_letter_attempts: 3,
            removal_grace: Duration::from_secs(30),
            destinations: Arc::default(),
            budget: MemoryBudget::unlimited(),
            drop_notices: None,
        }
    }
}

/// Messages taken out of the largest queues, at most, to make room for one
/// new message in the process's budget.
const MAX_SHED_PER_MESSAGE: usize = 4096;

/// Running totals of the engine (also exported as metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Delivered with a 2xx.
    pub delivered: u64,
    /// Retries made.
    pub retried: u64,
    /// Accepted by a dead-letter sink.
    pub dead_lettered: u64,
    /// Neither delivered nor dead-lettered.
    pub dropped: u64,
}

/// What [`DeliveryEngine::dispatch`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DispatchReport {
    /// Subscribers the message was offered to.
    pub subscribers: usize,
    /// Of those, how many had a full queue (message dead-lettered or dropped).
    pub overflowed: usize,
    /// The process's memory budget could not hold the message, even after
    /// the largest queues gave way: no subscriber got it.
    pub over_budget: bool,
}

/// What [`DeliveryEngine::shutdown`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Delivered during shutdown.
    pub delivered: u64,
    /// Dead-lettered during shutdown.
    pub dead_lettered: u64,
    /// Dropped during shutdown (includes `abandoned`).
    pub dropped: u64,
    /// Still pending at the deadline, dropped (counted, reason `shutdown`).
    pub abandoned: u64,
}

struct Inner {
    shared: Arc<EngineState>,
    config: EngineConfig,
    channels: RwLock<HashMap<ChannelKey, Vec<Worker>>>,
    retiring: Mutex<Vec<Retired>>,
    closed: AtomicBool,
    dead_letter_task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let channels = self.channels.get_mut().unwrap_or_else(|p| p.into_inner());
        for w in channels.values().flatten() {
            w.task.abort();
        }
        for r in self.retiring.get_mut().unwrap_or_else(|p| p.into_inner()).iter() {
            r.task.abort();
        }
        if let Some(t) = self
            .dead_letter_task
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
    }
}

/// Delivers channel messages to HTTP subscribers. Cheap to clone (shared).
#[derive(Clone)]
pub struct DeliveryEngine {
    inner: Arc<Inner>,
}

impl DeliveryEngine {
    /// A new engine; must be called within a Tokio runtime.
    pub fn new(config: EngineConfig, metrics: Arc<DataplaneMetrics>) -> Self {
        let (dl_tx, dl_rx) = mpsc::channel(config.dead_letter_capacity.max(1));
        let shared = Arc::new(EngineState {
            http: HttpSender::with_policy(config.destinations.clone()),
            metrics,
            stats: Stats::default(),
            dead_letters: dl_tx,
            dead_letters_pending: AtomicU64::new(0),
            budget: config.budget.clone(),
            drop_notices: config.drop_notices.clone(),
        });
        let task = tokio::spawn(run_dead_letters(
            Arc::downgrade(&shared),
            dl_rx,
            config.dead_letter_concurrency.max(1),
            config.dead_letter_attempts.max(1),
        ));
        Self {
            inner: Arc::new(Inner {
                shared,
                config,
                channels: RwLock::new(HashMap::new()),
                retiring: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
                dead_letter_task: Mutex::new(Some(task)),
            }),
        }
    }

    /// Totals so far.
    pub fn stats(&self) -> DeliveryStats {
        self.inner.shared.stats.snapshot()
    }

    /// The subscriber ids of `channel`, in the order given.
    pub fn subscribers(&self, channel: &ChannelKey) -> Vec<String> {
        let map = self.inner.channels.read().unwrap_or_else(|p| p.into_inner());
        map.get(channel)
            .map(|ws| ws.iter().map(|w| w.spec.id.clone()).collect())
            .unwrap_or_default()
    }

    /// Makes `specs` the subscribers of `channel`. Unchanged subscribers keep
    /// their queue and task untouched; a changed retry/timeout/URI/sink
    /// applies to the next message; a changed queue capacity or ordering
    /// replaces the subscriber (the old queue drains in the background);
    /// removed subscribers drain for `removal_grace`, then give up the rest.
    pub fn set_subscribers(&self, channel: &ChannelKey, specs: Vec<SubscriberSpec>) {
        if self.inner.closed.load(AtomicOrdering::Acquire) {
            return;
        }
        let mut map = self.inner.channels.write().unwrap_or_else(|p| p.into_inner());
        let mut old: HashMap<String, Worker> = map
            .remove(channel)
            .unwrap_or_default()
            .into_iter()
            .map(|w| (w.spec.id.clone(), w))
            .collect();
        let mut next: Vec<Worker> = Vec::with_capacity(specs.len());
        for spec in specs {
            if next.iter().any(|w| w.spec.id == spec.id) {
                warn!(channel = %channel, subscriber = %spec.id, "duplicate subscriber id ignored");
                continue;
            }
            match old.remove(&spec.id) {
                Some(w) if w.spec == spec => next.push(w),
                Some(mut w)
                    if w.spec.policy.queue_capacity == spec.policy.queue_capacity
                        && w.spec.policy.queue_bytes == spec.policy.queue_bytes
                        && w.spec.policy.max_in_flight() == spec.policy.max_in_flight() =>
                {
                    w.spec_tx.send_replace(Arc::new(spec.clone()));
                    w.spec = spec;
                    next.push(w);
                }
                Some(w) => {
                    self.retire(w);
                    next.push(Worker::start(self.inner.shared.clone(), channel, spec));
                }
                None => next.push(Worker::start(self.inner.shared.clone(), channel, spec)),
            }
        }
        for (_, w) in old {
            self.retire(w);
        }
        if !next.is_empty() {
            map.insert(channel.clone(), next);
        }
    }

    /// Applies every change of a routing index watch to this engine (see
    /// [`crate::routing::RoutingIndex::watch`]). Ends when the
    /// index drops the channel's watch or the engine is dropped.
    /// The routes as they are now apply before this returns, so a connection
    /// started next finds its subscribers.
    pub fn follow(&self, mut routes: watch::Receiver<Arc<ChannelRoutes>>) -> JoinHandle<()> {
        let current = routes.borrow_and_update().clone();
        self.set_subscribers(&current.key, current.subscribers.clone());
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            while routes.changed().await.is_ok() {
                let current = routes.borrow_and_update().clone();
                match weak.upgrade() {
                    Some(inner) => {
                        DeliveryEngine { inner }.set_subscribers(&current.key, current.subscribers.clone())
                    }
                    None => return,
                }
            }
        })
    }

    /// The process's memory budget for queued messages.
    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.inner.shared.budget
    }

    /// Charges `msg` to the process's budget (once per message), making
    /// room by taking the oldest messages out of the largest queues (reason
    /// `memory_budget`) when it is short. The publish paths call this
    /// before accepting a message, to refuse it (503) rather than grow.
    pub fn admit(&self, msg: &Message) -> Result<(), OverBudget> {
        let map = self.inner.channels.read().unwrap_or_else(|p| p.into_inner());
        self.charge(&map, msg)
    }

    fn charge(&self, channels: &HashMap<ChannelKey, Vec<Worker>>, msg: &Message) -> Result<(), OverBudget> {
        let budget = &self.inner.shared.budget;
        let mut charged = msg.charge(budget);
        let mut shed = 0;
        while charged.is_err() && shed < MAX_SHED_PER_MESSAGE {
            // The subscriber furthest behind gives way, not the others.
            let Some(largest) = channels
                .values()
                .flatten()
                .filter(|w| w.ctx.queue.bytes() > 0)
                .max_by_key(|w| w.ctx.queue.bytes())
            else {
                break;
            };
            while charged.is_err() && shed < MAX_SHED_PER_MESSAGE && largest.shed_oldest() {
                shed += 1;
                charged = msg.charge(budget);
            }
            if shed == 0 {
                break;
            }
        }
        if shed > 0 {
            debug!(
                shed,
                used = budget.used(),
                limit = budget.limit(),
                "memory budget short: the largest queues gave way"
            );
        }
        charged
    }

    /// Offers `msg` to every subscriber of `channel`. Never waits: a full
    /// queue dead-letters (reason `queue_full` or `queue_bytes`) or drops a
    /// message for that subscriber, counted either way, and so does a
    /// process whose memory budget cannot hold it (reason `memory_budget`).
    pub fn dispatch(&self, channel: &ChannelKey, msg: Arc<Message>) -> DispatchReport {
        let map = self.inner.channels.read().unwrap_or_else(|p| p.into_inner());
        let Some(workers) = map.get(channel) else {
            return DispatchReport::default();
        };
        let now = Instant::now();
        let mut report = DispatchReport {
            subscribers: workers.len(),
            overflowed: 0,
            over_budget: false,
        };
        if self.charge(&map, &msg).is_err() {
            for w in workers {
                w.refuse(msg.clone(), MEMORY_BUDGET);
            }
            report.overflowed = workers.len();
            report.over_budget = true;
            return report;
        }
        for w in workers {
            if !w.offer(msg.clone(), now) {
                report.overflowed += 1;
            }
        }
        report
    }

    fn retire(&self, w: Worker) {
        debug!(channel = %w.ctx.channel, subscriber = %w.ctx.subscriber, "subscriber removed; draining");
        let r = w.retire();
        let expire = r.expire_tx.clone();
        let grace = self.inner.config.removal_grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            expire.send_replace(Some("unsubscribed"));
        });
        let mut retiring = self.inner.retiring.lock().unwrap_or_else(|p| p.into_inner());
        retiring.retain(|r| !r.task.is_finished());
        retiring.push(r);
    }

    /// Stops accepting messages and drains within `deadline`: queued and
    /// in-flight messages are delivered normally for most of the time; then
    /// the rest is dead-lettered (reason `shutdown`) or dropped; whatever is
    /// still pending at the deadline is abandoned and counted as dropped.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let start = Instant::now();
        let before = self.stats();
        self.inner.closed.store(true, AtomicOrdering::Release);
        let mut retired: Vec<Retired> = {
            let mut map = self.inner.channels.write().unwrap_or_else(|p| p.into_inner());
            map.drain().flat_map(|(_, ws)| ws).map(Worker::retire).collect()
        };
        retired.extend(
            self.inner
                .retiring
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..),
        );
        wait_all(&mut retired, start + deadline.mul_f64(0.6)).await;
        for r in &retired {
            r.expire_tx.send_replace(Some("shutdown"));
        }
        wait_all(&mut retired, start + deadline.mul_f64(0.85)).await;
        let shared = &self.inner.shared;
        let until = start + deadline;
        while shared.dead_letters_pending.load(AtomicOrdering::Acquire) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut abandoned = 0;
        for r in retired {
            if !r.task.is_finished() {
                r.task.abort();
                let n = r.ctx.pending.swap(0, AtomicOrdering::AcqRel);
                shared.count_drop(&r.ctx.channel, &r.ctx.subscriber, "shutdown", n);
                abandoned += n;
            }
        }
        if let Some(t) = self
            .inner
            .dead_letter_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
        let n = shared.dead_letters_pending.swap(0, AtomicOrdering::AcqRel);
        shared.count_drop("", "", "shutdown", n);
        abandoned += n;
        let after = self.stats();
        let report = ShutdownReport {
            delivered: after.delivered - before.delivered,
            dead_lettered: after.dead_lettered - before.dead_lettered,
            dropped: after.dropped - before.dropped,
            abandoned,
        };
        debug!(?report, "delivery engine stopped");
        report
    }
}

async fn wait_all(retired: &mut [Retired], until: Instant) {
    for r in retired.iter_mut() {
        if r.task.is_finished() {
            continue;
        }
        if tokio::time::timeout_at(until, &mut r.task).await.is_err() {
            return;
        }
    }
}
