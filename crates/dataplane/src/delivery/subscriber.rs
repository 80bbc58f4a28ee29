//! One subscriber's queue and the task that delivers from it: retries with
//! backoff, expiry when the subscriber is removed or the engine stops, and
//! handing what could not be delivered to the dead-letter path.

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use http::Uri;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::dead_letter::DeadLetter;
use super::engine::SubscriberSpec;
use super::http::{HttpSender, OriginRoute};
use super::notices::DropNotifier;
use super::policy::{AttemptOutcome, DeliveryPolicy, Verdict, classify};
use super::queue::{MEMORY_BUDGET, Queued, SubscriberQueue};
use super::settle::Settlement;
use super::state::EngineState;
use crate::message::Message;
use crate::metrics::SubscriberLabels;
use wsbridge_core::ChannelKey;

type Expire = watch::Receiver<Option<&'static str>>;

/// Resolves with the reason once the worker must stop delivering.
async fn expired(rx: &mut Expire) -> &'static str {
    let reason = rx
        .wait_for(Option::is_some)
        .await
        .map(|r| r.unwrap_or("shutdown"));
    match reason {
        Ok(reason) => reason,
        Err(_) => std::future::pending().await,
    }
}

/// What a subscriber's task and the dispatch path share.
pub(super) struct WorkerCtx {
    shared: Arc<EngineState>,
    pub(super) channel: Arc<str>,
    pub(super) subscriber: Arc<str>,
    delivered: Counter,
    retried: Counter,
    latency: Histogram,
    /// This subscriber's drop counters by reason, looked up in the metric
    /// family once per reason, not per dropped message (a busy channel
    /// drops tens of thousands for `queue_full`).
    drops: Mutex<Vec<(&'static str, Counter)>>,
    /// Counts and announces drops for memory.
    memory_drops: DropNotifier,
    /// Queued plus in flight.
    pub(super) pending: AtomicU64,
    /// Bounded in messages and bytes.
    pub(super) queue: SubscriberQueue,
}

/// A running subscriber: its queue, its task and the spec it runs with.
pub(super) struct Worker {
    pub(super) spec: SubscriberSpec,
    pub(super) ctx: Arc<WorkerCtx>,
    pub(super) spec_tx: watch::Sender<Arc<SubscriberSpec>>,
    expire_tx: Arc<watch::Sender<Option<&'static str>>>,
    pub(super) task: JoinHandle<()>,
}

/// A removed subscriber whose task drains what is left of its queue.
pub(super) struct Retired {
    pub(super) ctx: Arc<WorkerCtx>,
    pub(super) expire_tx: Arc<watch::Sender<Option<&'static str>>>,
    pub(super) task: JoinHandle<()>,
}

impl Worker {
    /// Starts the task of `spec`, a subscriber of `channel`.
    pub(super) fn start(shared: Arc<EngineState>, channel: &ChannelKey, spec: SubscriberSpec) -> Self {
        let labels = SubscriberLabels {
            channel: channel.to_string(),
            subscriber: spec.id.clone(),
        };
        let delivered = shared.metrics.delivered.get_or_create(&labels).clone();
        let retried = shared.metrics.retried.get_or_create(&labels).clone();
        let latency = shared.metrics.delivery_latency.get_or_create(&labels).clone();
        let queued_bytes = shared.metrics.queued_bytes.get_or_create(&labels).clone();
        let channel: Arc<str> = Arc::from(labels.channel.as_str());
        let subscriber: Arc<str> = Arc::from(labels.subscriber.as_str());
        let memory_drops =
            DropNotifier::new(channel.clone(), subscriber.clone(), shared.drop_notices.clone());
        let ctx = Arc::new(WorkerCtx {
            channel,
            subscriber,
            memory_drops,
            delivered,
            retried,
            latency,
            drops: Mutex::default(),
            shared,
            pending: AtomicU64::new(0),
            queue: SubscriberQueue::new(spec.policy.queue_capacity, spec.policy.queue_bytes, queued_bytes),
        });
        let (spec_tx, spec_rx) = watch::channel(Arc::new(spec.clone()));
        let (expire_tx, expire_rx) = watch::channel(None);
        let task = tokio::spawn(run_worker(
            ctx.clone(),
            spec_rx,
            expire_rx,
            spec.policy.max_in_flight(),
        ));
        Self {
            spec,
            ctx,
            spec_tx,
            expire_tx: Arc::new(expire_tx),
            task,
        }
    }

    /// Queues `msg` without waiting. At the queue's bounds the overflow
    /// policy says which message gives way; that one is dead-lettered or
    /// dropped (reason `queue_full` or `queue_bytes`), counted either way,
    /// and this is false.
    #[inline]
    pub(super) fn offer(&self, msg: Arc<Message>, now: Instant) -> bool {
        let ctx = &self.ctx;
        ctx.pending.fetch_add(1, AtomicOrdering::Relaxed);
        let policy = &self.spec.policy;
        let gave_way = ctx.queue.push(Queued { msg, enqueued: now }, policy.overflow);
        let fitted = gave_way.is_empty();
        for (msg, reason) in gave_way {
            ctx.give_up_now(msg, policy, reason, None, 0);
            ctx.pending.fetch_sub(1, AtomicOrdering::Relaxed);
        }
        fitted
    }

    /// Gives `msg` up for this subscriber without queueing it (the process
    /// could not hold it).
    pub(super) fn refuse(&self, msg: Arc<Message>, reason: &'static str) {
        self.ctx.give_up_now(msg, &self.spec.policy, reason, None, 0);
    }

    /// Takes this subscriber's oldest queued message out, giving it up with
    /// reason `memory_budget` (to make room in the process's budget).
    pub(super) fn shed_oldest(&self) -> bool {
        let Some(msg) = self.ctx.queue.evict_oldest() else {
            return false;
        };
        self.ctx
            .give_up_now(msg, &self.spec.policy, MEMORY_BUDGET, None, 0);
        self.ctx.pending.fetch_sub(1, AtomicOrdering::Relaxed);
        true
    }

    /// Closes the queue; the task drains what is left and ends.
    pub(super) fn retire(self) -> Retired {
        self.ctx.queue.close();
        Retired {
            ctx: self.ctx,
            expire_tx: self.expire_tx,
            task: self.task,
        }
    }
}

/// The subscriber's task: delivers one message at a time, or up to
/// `max_in_flight` at once when unordered; ends when the queue is closed and
/// drained.
async fn run_worker(
    ctx: Arc<WorkerCtx>,
    spec: watch::Receiver<Arc<SubscriberSpec>>,
    expire: Expire,
    max_in_flight: usize,
) {
    let mut current = CurrentSpec::new(spec, &ctx.shared.http);
    if max_in_flight <= 1 {
        while let Some(q) = ctx.queue.pop().await {
            let (spec, origin) = current.get(&ctx.shared.http);
            ctx.deliver(q, spec, origin, expire.clone()).await;
        }
        return;
    }
    // Deliveries are futures of this task, not tasks of their own: no spawn
    // and no hand-off between threads per message.
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            q = ctx.queue.pop(), if open && in_flight.len() < max_in_flight => match q {
                Some(q) => {
                    let (spec, origin) = current.get(&ctx.shared.http);
                    in_flight.push(ctx.deliver(q, spec, origin, expire.clone()));
                }
                None => open = false,
            },
        }
    }
}

/// A subscriber's spec as it is now, with its URI's origin looked up again
/// only when the spec changes.
struct CurrentSpec {
    rx: watch::Receiver<Arc<SubscriberSpec>>,
    spec: Arc<SubscriberSpec>,
    origin: OriginRoute,
}

impl CurrentSpec {
    fn new(rx: watch::Receiver<Arc<SubscriberSpec>>, http: &HttpSender) -> Self {
        let spec = rx.borrow().clone();
        let origin = http.origin(&spec.uri);
        Self { rx, spec, origin }
    }

    fn get(&mut self, http: &HttpSender) -> (Arc<SubscriberSpec>, OriginRoute) {
        let latest = self.rx.borrow();
        if !Arc::ptr_eq(&latest, &self.spec) {
            self.spec = latest.clone();
            self.origin = http.origin(&self.spec.uri);
        }
        drop(latest);
        (self.spec.clone(), self.origin.clone())
    }
}

impl WorkerCtx {
    async fn deliver(&self, q: Queued, spec: Arc<SubscriberSpec>, origin: OriginRoute, mut expire: Expire) {
        let policy = &spec.policy;
        let mut attempts = 0u32;
        let mut last_status = None;
        let reason: &'static str = loop {
            if let Some(reason) = *expire.borrow() {
                break reason;
            }
            attempts += 1;
            let body = q.msg.payload().bytes();
            let signed = spec
                .signing
                .as_ref()
                .map(|key| key.signed_headers(q.msg.delivery_headers(), q.msg.id(), body));
            let headers = signed.as_ref().unwrap_or_else(|| q.msg.delivery_headers());
            let send = self
                .shared
                .http
                .post_to(&origin, &spec.uri, headers, body, policy.timeout);
            let outcome = tokio::select! {
                o = send => o,
                reason = expired(&mut expire) => break reason,
            };
            if let AttemptOutcome::Response { status, .. } = &outcome {
                last_status = Some(status.as_u16());
            }
            match classify(&outcome) {
                Verdict::Delivered => {
                    self.delivered.inc();
                    self.shared.stats.delivered.fetch_add(1, AtomicOrdering::Relaxed);
                    self.latency.observe(q.enqueued.elapsed().as_secs_f64());
                    self.pending.fetch_sub(1, AtomicOrdering::Relaxed);
                    q.msg.settle(Settlement::Delivered);
                    return;
                }
                Verdict::Reject => break "rejected",
                Verdict::Denied => break "destination_denied",
                Verdict::Retry { retry_after } => {
                    if attempts > policy.retry {
                        break "retries_exhausted";
                    }
                    self.retried.inc();
                    self.shared.stats.retried.fetch_add(1, AtomicOrdering::Relaxed);
                    let delay = policy.delay_for(attempts, retry_after);
                    debug!(
                        channel = %self.channel, subscriber = %self.subscriber, id = q.msg.id(),
                        attempt = attempts, outcome = ?outcome, ?delay, "delivery failed; retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        reason = expired(&mut expire) => break reason,
                    }
                }
            }
        };
        warn!(
            channel = %self.channel, subscriber = %self.subscriber, id = q.msg.id(),
            reason, attempts, last_status, "message not delivered"
        );
        match &policy.dead_letter_sink {
            Some(sink) => {
                let dl = self.dead_letter(q.msg, sink, policy, reason, last_status, attempts);
                self.shared
                    .dead_letters_pending
                    .fetch_add(1, AtomicOrdering::AcqRel);
                if self.shared.dead_letters.send(dl).await.is_err() {
                    self.shared
                        .dead_letters_pending
                        .fetch_sub(1, AtomicOrdering::AcqRel);
                    self.count_drop(reason);
                }
            }
            None => {
                self.count_drop(reason);
                q.msg.settle(Settlement::Dropped(reason));
            }
        }
        self.pending.fetch_sub(1, AtomicOrdering::Relaxed);
    }

    fn dead_letter(
        &self,
        msg: Arc<Message>,
        sink: &Uri,
        policy: &DeliveryPolicy,
        reason: &'static str,
        last_status: Option<u16>,
        attempts: u32,
    ) -> DeadLetter {
        DeadLetter {
            msg,
            sink: sink.clone(),
            channel: self.channel.clone(),
            subscriber: self.subscriber.clone(),
            reason,
            last_status,
            attempts,
            timeout: policy.timeout,
        }
    }

    /// Gives up on a message without waiting (dispatch path).
    fn give_up_now(
        &self,
        msg: Arc<Message>,
        policy: &DeliveryPolicy,
        reason: &'static str,
        last_status: Option<u16>,
        attempts: u32,
    ) {
        match &policy.dead_letter_sink {
            // The dead-letter queue holds what it takes within the budget.
            Some(_) if msg.charge(&self.shared.budget).is_err() => self.count_drop(MEMORY_BUDGET),
            Some(sink) => {
                let dl = self.dead_letter(msg, sink, policy, reason, last_status, attempts);
                self.shared
                    .dead_letters_pending
                    .fetch_add(1, AtomicOrdering::AcqRel);
                if self.shared.dead_letters.try_send(dl).is_err() {
                    self.shared
                        .dead_letters_pending
                        .fetch_sub(1, AtomicOrdering::AcqRel);
                    self.count_drop("dead_letter_queue_full");
                }
            }
            None => {
                self.count_drop(reason);
                msg.settle(Settlement::Dropped(reason));
            }
        }
    }

    /// Counts one message of this subscriber dropped for `reason`.
    fn count_drop(&self, reason: &'static str) {
        self.shared.stats.dropped.fetch_add(1, AtomicOrdering::Relaxed);
        self.memory_drops.dropped(reason);
        let mut drops = self.drops.lock().unwrap_or_else(|p| p.into_inner());
        match drops.iter().find(|(r, _)| *r == reason) {
            Some((_, counter)) => {
                counter.inc();
            }
            None => {
                let counter = self.shared.drop_counter(&self.channel, &self.subscriber, reason);
                counter.inc();
                drops.push((reason, counter));
            }
        }
    }
}
