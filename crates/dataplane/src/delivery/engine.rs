//! The delivery engine: one bounded queue and one task per subscriber,
//! retries, dead-lettering, live subscriber changes and graceful shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use http::{HeaderName, HeaderValue, Uri};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::http::{HttpSender, OriginRoute};
use super::policy::{AttemptOutcome, DeliveryPolicy, Verdict, classify};
use crate::destination::DestinationPolicy;
use crate::message::Message;
use crate::metrics::{DataplaneMetrics, ReasonLabels, SubscriberLabels};
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
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            dead_letter_capacity: 10_000,
            dead_letter_concurrency: 32,
            dead_letter_attempts: 3,
            removal_grace: Duration::from_secs(30),
            destinations: Arc::default(),
        }
    }
}

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

/// Dead-letter headers: why the message could not be delivered.
pub const DEAD_LETTER_REASON: HeaderName = HeaderName::from_static("x-wsbridge-dead-letter-reason");
/// CloudEvents extension with the same reason.
pub const CE_FAILURE: HeaderName = HeaderName::from_static("ce-wsbridgefailure");
/// The subscriber that could not take the message.
pub const DEAD_LETTER_SUBSCRIBER: HeaderName = HeaderName::from_static("x-wsbridge-subscriber");
/// Attempts made.
pub const DEAD_LETTER_ATTEMPTS: HeaderName = HeaderName::from_static("x-wsbridge-attempts");
/// The subscriber's last HTTP status, when there was one.
pub const DEAD_LETTER_STATUS: HeaderName = HeaderName::from_static("x-wsbridge-last-status");

#[derive(Default)]
struct Stats {
    delivered: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    dropped: AtomicU64,
}

impl Stats {
    fn snapshot(&self) -> DeliveryStats {
        DeliveryStats {
            delivered: self.delivered.load(AtomicOrdering::Relaxed),
            retried: self.retried.load(AtomicOrdering::Relaxed),
            dead_lettered: self.dead_lettered.load(AtomicOrdering::Relaxed),
            dropped: self.dropped.load(AtomicOrdering::Relaxed),
        }
    }
}

struct DeadLetter {
    msg: Arc<Message>,
    sink: Uri,
    channel: Arc<str>,
    subscriber: Arc<str>,
    reason: &'static str,
    last_status: Option<u16>,
    attempts: u32,
    timeout: Duration,
}

struct EngineState {
    http: HttpSender,
    metrics: Arc<DataplaneMetrics>,
    stats: Stats,
    dead_letters: mpsc::Sender<DeadLetter>,
    dead_letters_pending: AtomicU64,
}

impl EngineState {
    fn count_drop(&self, channel: &str, subscriber: &str, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.stats.dropped.fetch_add(n, AtomicOrdering::Relaxed);
        self.drop_counter(channel, subscriber, reason).inc_by(n);
    }

    fn drop_counter(&self, channel: &str, subscriber: &str, reason: &str) -> Counter {
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

struct Queued {
    msg: Arc<Message>,
    enqueued: Instant,
}

struct WorkerCtx {
    shared: Arc<EngineState>,
    channel: Arc<str>,
    subscriber: Arc<str>,
    delivered: Counter,
    retried: Counter,
    latency: Histogram,
    /// This subscriber's drop counters by reason, looked up in the metric
    /// family once per reason, not per dropped message (a busy channel
    /// drops tens of thousands for `queue_full`).
    drops: Mutex<Vec<(&'static str, Counter)>>,
    /// Queued plus in flight.
    pending: AtomicU64,
    /// Queued only, bounded by the queue capacity.
    queued: AtomicUsize,
    capacity: usize,
}

struct Worker {
    spec: SubscriberSpec,
    ctx: Arc<WorkerCtx>,
    /// Unbounded in itself: `WorkerCtx::queued` bounds it. A bounded
    /// channel takes a lock on every receive to return the permit.
    tx: mpsc::UnboundedSender<Queued>,
    spec_tx: watch::Sender<Arc<SubscriberSpec>>,
    expire_tx: Arc<watch::Sender<Option<&'static str>>>,
    task: JoinHandle<()>,
}

struct Retired {
    ctx: Arc<WorkerCtx>,
    expire_tx: Arc<watch::Sender<Option<&'static str>>>,
    task: JoinHandle<()>,
}

impl Worker {
    fn retire(self) -> Retired {
        // Dropping `tx` closes the queue: the task drains what is left and ends.
        Retired {
            ctx: self.ctx,
            expire_tx: self.expire_tx,
            task: self.task,
        }
    }
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
                        && w.spec.policy.max_in_flight() == spec.policy.max_in_flight() =>
                {
                    w.spec_tx.send_replace(Arc::new(spec.clone()));
                    w.spec = spec;
                    next.push(w);
                }
                Some(w) => {
                    self.retire(w);
                    next.push(self.start_worker(channel, spec));
                }
                None => next.push(self.start_worker(channel, spec)),
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

    /// Offers `msg` to every subscriber of `channel`. Never waits: a full
    /// queue dead-letters (reason `queue_full`) or drops the message for
    /// that subscriber, counted either way.
    pub fn dispatch(&self, channel: &ChannelKey, msg: Arc<Message>) -> DispatchReport {
        let map = self.inner.channels.read().unwrap_or_else(|p| p.into_inner());
        let Some(workers) = map.get(channel) else {
            return DispatchReport::default();
        };
        let now = Instant::now();
        let mut report = DispatchReport {
            subscribers: workers.len(),
            overflowed: 0,
        };
        for w in workers {
            w.ctx.pending.fetch_add(1, AtomicOrdering::Relaxed);
            let queued = Queued {
                msg: msg.clone(),
                enqueued: now,
            };
            let sent = if w.ctx.queued.fetch_add(1, AtomicOrdering::Relaxed) < w.ctx.capacity {
                w.tx.send(queued).map_err(|e| e.0)
            } else {
                Err(queued)
            };
            if let Err(q) = sent {
                w.ctx.queued.fetch_sub(1, AtomicOrdering::Relaxed);
                report.overflowed += 1;
                w.ctx.give_up_now(q.msg, &w.spec.policy, "queue_full", None, 0);
                w.ctx.pending.fetch_sub(1, AtomicOrdering::Relaxed);
            }
        }
        report
    }

    fn start_worker(&self, channel: &ChannelKey, spec: SubscriberSpec) -> Worker {
        let shared = self.inner.shared.clone();
        let labels = SubscriberLabels {
            channel: channel.to_string(),
            subscriber: spec.id.clone(),
        };
        let delivered = shared.metrics.delivered.get_or_create(&labels).clone();
        let retried = shared.metrics.retried.get_or_create(&labels).clone();
        let latency = shared.metrics.delivery_latency.get_or_create(&labels).clone();
        let ctx = Arc::new(WorkerCtx {
            channel: Arc::from(labels.channel.as_str()),
            subscriber: Arc::from(labels.subscriber.as_str()),
            delivered,
            retried,
            latency,
            drops: Mutex::default(),
            shared,
            pending: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            capacity: spec.policy.queue_capacity.max(1),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (spec_tx, spec_rx) = watch::channel(Arc::new(spec.clone()));
        let (expire_tx, expire_rx) = watch::channel(None);
        let task = tokio::spawn(run_worker(
            ctx.clone(),
            rx,
            spec_rx,
            expire_rx,
            spec.policy.max_in_flight(),
        ));
        Worker {
            spec,
            ctx,
            tx,
            spec_tx,
            expire_tx: Arc::new(expire_tx),
            task,
        }
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

async fn run_worker(
    ctx: Arc<WorkerCtx>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    spec: watch::Receiver<Arc<SubscriberSpec>>,
    expire: Expire,
    max_in_flight: usize,
) {
    let mut current = CurrentSpec::new(spec, &ctx.shared.http);
    if max_in_flight <= 1 {
        while let Some(q) = rx.recv().await {
            ctx.queued.fetch_sub(1, AtomicOrdering::Relaxed);
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
            q = rx.recv(), if open && in_flight.len() < max_in_flight => match q {
                Some(q) => {
                    ctx.queued.fetch_sub(1, AtomicOrdering::Relaxed);
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
            let send = self.shared.http.post_to(
                &origin,
                &spec.uri,
                q.msg.delivery_headers(),
                q.msg.payload().bytes(),
                policy.timeout,
            );
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
            None => self.count_drop(reason),
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
            None => self.count_drop(reason),
        }
    }

    /// Counts one message of this subscriber dropped for `reason`.
    fn count_drop(&self, reason: &'static str) {
        self.shared.stats.dropped.fetch_add(1, AtomicOrdering::Relaxed);
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

async fn run_dead_letters(
    shared: Weak<EngineState>,
    mut rx: mpsc::Receiver<DeadLetter>,
    concurrency: usize,
    attempts: u32,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    while let Some(dl) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            post_dead_letter(&shared, dl, attempts).await;
            shared.dead_letters_pending.fetch_sub(1, AtomicOrdering::AcqRel);
            drop(permit);
        });
    }
}

async fn post_dead_letter(shared: &EngineState, dl: DeadLetter, attempts: u32) {
    let mut headers = dl.msg.http_headers();
    headers.insert(DEAD_LETTER_REASON, HeaderValue::from_static(dl.reason));
    headers.insert(CE_FAILURE, HeaderValue::from_static(dl.reason));
    if let Ok(v) = HeaderValue::from_str(&dl.subscriber) {
        headers.insert(DEAD_LETTER_SUBSCRIBER, v);
    }
    headers.insert(DEAD_LETTER_ATTEMPTS, HeaderValue::from(dl.attempts));
    if let Some(status) = dl.last_status {
        headers.insert(DEAD_LETTER_STATUS, HeaderValue::from(status));
    }
    for attempt in 1..=attempts {
        let outcome = shared
            .http
            .post(&dl.sink, &headers, dl.msg.payload().bytes(), dl.timeout)
            .await;
        match classify(&outcome) {
            Verdict::Delivered => {
                shared.stats.dead_lettered.fetch_add(1, AtomicOrdering::Relaxed);
                shared
                    .metrics
                    .dead_lettered
                    .get_or_create(&ReasonLabels {
                        channel: dl.channel.to_string(),
                        subscriber: dl.subscriber.to_string(),
                        endpoint: String::new(),
                        reason: dl.reason.to_string(),
                    })
                    .inc();
                return;
            }
            Verdict::Reject => break,
            Verdict::Denied => {
                warn!(channel = %dl.channel, subscriber = %dl.subscriber, id = dl.msg.id(), reason = dl.reason, "dead-letter sink is a denied destination; dropped");
                shared.count_drop(&dl.channel, &dl.subscriber, "destination_denied", 1);
                return;
            }
            Verdict::Retry { .. } if attempt < attempts => {
                tokio::time::sleep(Duration::from_millis(100) * attempt).await;
            }
            Verdict::Retry { .. } => {}
        }
    }
    warn!(channel = %dl.channel, subscriber = %dl.subscriber, id = dl.msg.id(), reason = dl.reason, "dead-letter sink did not accept the message; dropped");
    shared.count_drop(&dl.channel, &dl.subscriber, "dead_letter_failed", 1);
}
