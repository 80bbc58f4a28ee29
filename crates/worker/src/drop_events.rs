//! Tells users, with a Warning Event on the Bridge, when a subscriber is
//! losing messages for memory: its queue held `queueCapacityBytes` (reason
//! `queue_bytes`) or the worker's memory budget was exhausted (reason
//! `memory_budget`). The metrics count every drop; the Event says which
//! subscriber, how many since the last Event and why, at most once per
//! subscriber per [`MIN_EVENT_INTERVAL`].
//!
//! The data plane announces the first drop after each report
//! ([`DropNotice`]); this task decides when to report and takes the counts
//! then, so a subscriber dropping thousands of messages a second costs one
//! Event a minute.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use wsbridge_dataplane::delivery::{DropNotice, MEMORY_BUDGET, MemoryDropCounts, MemoryDrops, QUEUE_BYTES};

/// The Event's reason.
pub const DROPPING_FOR_MEMORY: &str = "SubscriberDroppingForMemory";
/// The Event's action.
pub const ACTION: &str = "Deliver";
/// No two Events about one subscriber closer than this.
pub const MIN_EVENT_INTERVAL: Duration = Duration::from_secs(60);
/// Events carry a note under 1 kB.
const NOTE_MAX: usize = 1000;

/// What one Event reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropReport {
    /// `namespace/name` of the channel.
    pub channel: String,
    /// The subscriber's id: its Subscription's `namespace/name`.
    pub subscriber: String,
    /// Dropped since the last Event about this subscriber.
    pub counts: MemoryDropCounts,
    /// Time since that Event; `None` for the first.
    pub since_last: Option<Duration>,
}

impl DropReport {
    /// The Event's note: the subscriber, the count and the reasons.
    pub fn note(&self) -> String {
        let total = self.counts.total();
        let messages = if total == 1 { "message" } else { "messages" };
        let since = match self.since_last {
            Some(d) => format!(
                " in the last {}",
                humantime::format_duration(Duration::from_secs(d.as_secs().max(1)))
            ),
            None => String::new(),
        };
        let by_reason: Vec<String> = self
            .counts
            .by_reason()
            .map(|(reason, n)| format!("{reason}: {n}"))
            .collect();
        let why: Vec<&str> = self
            .counts
            .by_reason()
            .map(|(reason, _)| match reason {
                QUEUE_BYTES => "its queue holds queueCapacityBytes (the subscriber is not keeping up)",
                MEMORY_BUDGET => "the worker's memory budget is exhausted (the largest queues give way)",
                _ => "",
            })
            .collect();
        let mut note = format!(
            "subscriber {} of channel {}: {total} {messages} dropped{since} ({}); {}",
            self.subscriber,
            self.channel,
            by_reason.join(", "),
            why.join("; ")
        );
        wsbridge_core::text::truncate(&mut note, NOTE_MAX);
        note
    }

    /// The Subscription the report is about, as the Event's related object.
    fn subscription(&self) -> Option<ObjectReference> {
        let (namespace, name) = self.subscriber.split_once('/')?;
        Some(ObjectReference {
            api_version: Some(format!("{}/{}", wsbridge_api::GROUP, wsbridge_api::VERSION)),
            kind: Some("Subscription".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..Default::default()
        })
    }

    /// The Event published for this report.
    pub fn event(&self) -> Event {
        Event {
            type_: EventType::Warning,
            reason: DROPPING_FOR_MEMORY.into(),
            note: Some(self.note()),
            action: ACTION.into(),
            secondary: self.subscription(),
        }
    }
}

/// Where reports go: Events on the Bridge in production, a list in tests.
pub trait DropEventSink: Send {
    fn publish(&self, report: &DropReport) -> impl Future<Output = Result<(), String>> + Send;
}

/// Events on the Bridge, through kube-runtime's [`Recorder`].
pub struct BridgeEvents {
    pub client: Client,
    pub reporter: Reporter,
    /// The Bridge as last seen (with its UID); `None` while unknown.
    pub bridge: watch::Receiver<Option<ObjectReference>>,
}

impl DropEventSink for BridgeEvents {
    async fn publish(&self, report: &DropReport) -> Result<(), String> {
        let Some(bridge) = self.bridge.borrow().clone() else {
            return Err("the Bridge is not known yet".into());
        };
        // A Recorder per report, so each report is an Event of its own: a
        // Recorder turns a repeat into a series of its first Event, whose
        // note the API server keeps immutable, so the count would stay the
        // first one's. The interval bounds how many there are.
        Recorder::new(self.client.clone(), self.reporter.clone())
            .publish(&report.event(), &bridge)
            .await
            .map_err(|e| e.to_string())
    }
}

/// One subscriber's reporting state.
#[derive(Default)]
struct Subscriber {
    /// Counters to take at the next report (a replaced subscriber's too).
    drops: Vec<Arc<MemoryDrops>>,
    /// Taken for a report that could not be published.
    carried: MemoryDropCounts,
    /// When the next report goes out, if one is due.
    due: Option<Instant>,
    /// When the last report was published.
    last: Option<Instant>,
}

/// Reports the notices' drops, per subscriber at most once per `interval`,
/// until `notices` closes (a report still due then is not made: the
/// metrics have it). A report that fails is retried after `interval` with
/// the drops since added.
pub async fn report(
    sink: impl DropEventSink,
    mut notices: mpsc::UnboundedReceiver<DropNotice>,
    interval: Duration,
) {
    let mut subscribers: HashMap<(Arc<str>, Arc<str>), Subscriber> = HashMap::new();
    loop {
        let next = subscribers.values().filter_map(|s| s.due).min();
        tokio::select! {
            notice = notices.recv() => {
                let Some(notice) = notice else { return };
                let now = Instant::now();
                let s = subscribers
                    .entry((notice.channel.clone(), notice.subscriber.clone()))
                    .or_default();
                if !s.drops.iter().any(|d| Arc::ptr_eq(d, &notice.drops)) {
                    s.drops.push(notice.drops);
                }
                // A due report (or a failed one's retry) keeps its time.
                if s.due.is_none() {
                    s.due = Some(s.last.map_or(now, |last| (last + interval).max(now)));
                }
            }
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                for ((channel, subscriber), s) in subscribers.iter_mut() {
                    if s.due.is_none_or(|due| due > now) {
                        continue;
                    }
                    s.due = None;
                    let mut counts = std::mem::take(&mut s.carried);
                    for drops in s.drops.drain(..) {
                        counts.add(drops.take());
                    }
                    if counts.total() == 0 {
                        continue;
                    }
                    let report = DropReport {
                        channel: channel.to_string(),
                        subscriber: subscriber.to_string(),
                        counts,
                        since_last: s.last.map(|last| now - last),
                    };
                    match sink.publish(&report).await {
                        Ok(()) => s.last = Some(now),
                        Err(error) => {
                            tracing::warn!(%error, subscriber = %subscriber, "could not publish the Event about memory drops; retrying");
                            s.carried = counts;
                            s.due = Some(now + interval);
                        }
                    }
                }
                // Forget subscribers with nothing due whose last report no
                // longer limits the next.
                subscribers.retain(|_, s| s.due.is_some() || s.last.is_some_and(|last| now - last < interval));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use wsbridge_dataplane::delivery::DropNotifier;

    /// Records every report; fails the first `fail`.
    #[derive(Clone, Default)]
    struct Reports {
        published: Arc<Mutex<Vec<(Instant, DropReport)>>>,
        fail: Arc<Mutex<usize>>,
    }

    impl DropEventSink for Reports {
        async fn publish(&self, report: &DropReport) -> Result<(), String> {
            let mut fail = self.fail.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err("the API server is unavailable".into());
            }
            self.published
                .lock()
                .unwrap()
                .push((Instant::now(), report.clone()));
            Ok(())
        }
    }

    impl Reports {
        fn take(&self) -> Vec<(Instant, DropReport)> {
            std::mem::take(&mut self.published.lock().unwrap())
        }
    }

    /// A subscriber's counters as the data plane holds them.
    struct Dropping(DropNotifier);

    impl Dropping {
        fn new(tx: &mpsc::UnboundedSender<DropNotice>, subscriber: &str) -> Self {
            Self(DropNotifier::new(
                "ns/ticker".into(),
                subscriber.into(),
                Some(tx.clone()),
            ))
        }

        fn drop_messages(&self, reason: &str, n: u64) {
            for _ in 0..n {
                self.0.dropped(reason);
            }
        }
    }

    fn start(sink: &Reports) -> (mpsc::UnboundedSender<DropNotice>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(report(sink.clone(), rx, MIN_EVENT_INTERVAL));
        (tx, task)
    }

    async fn settle() {
        // Lets the reporting task run without moving the clock much.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_drop_is_reported_at_once_then_at_most_once_a_minute_per_subscriber() {
        let sink = Reports::default();
        let (tx, task) = start(&sink);
        let started = Instant::now();
        let slow = Dropping::new(&tx, "ns/slow");
        slow.drop_messages(QUEUE_BYTES, 3);
        settle().await;
        let first = sink.take();
        assert_eq!(first.len(), 1, "reported at once");
        assert_eq!(first[0].1.counts.queue_bytes, 3);
        assert_eq!(first[0].1.since_last, None);

        // Drops every second for five minutes: one report a minute, with
        // every drop counted once.
        let mut dropped = 0;
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            slow.drop_messages(QUEUE_BYTES, 10);
            slow.drop_messages(MEMORY_BUDGET, 1);
            dropped += 11;
        }
        tokio::time::sleep(MIN_EVENT_INTERVAL).await;
        let reports = sink.take();
        // Five minutes after the first report, and what the last second
        // dropped a minute later.
        assert_eq!(reports.len(), 6, "{reports:?}");
        let mut at = first[0].0;
        for (when, r) in &reports {
            assert!(
                *when - at >= MIN_EVENT_INTERVAL,
                "{:?} after the last",
                *when - at
            );
            assert_eq!(r.since_last, Some(*when - at));
            at = *when;
        }
        assert_eq!(
            reports.iter().map(|(_, r)| r.counts.total()).sum::<u64>(),
            dropped,
            "every drop reported once"
        );
        assert!(reports.iter().all(|(_, r)| r.counts.memory_budget > 0));

        // Another subscriber is not held back by the first one's limit.
        let other = Dropping::new(&tx, "ns/other");
        slow.drop_messages(QUEUE_BYTES, 1);
        other.drop_messages(MEMORY_BUDGET, 1);
        settle().await;
        let reports = sink.take();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].1.subscriber, "ns/other");

        // Quiet subscribers cost nothing; after a quiet minute the next drop
        // is reported at once again.
        tokio::time::sleep(MIN_EVENT_INTERVAL * 3).await;
        let late = sink.take();
        assert_eq!(late.len(), 1, "the pending drop of ns/slow: {late:?}");
        assert_eq!(late[0].1.subscriber, "ns/slow");
        tokio::time::sleep(MIN_EVENT_INTERVAL * 2).await;
        slow.drop_messages(QUEUE_BYTES, 1);
        settle().await;
        assert_eq!(sink.take().len(), 1);
        assert!(started.elapsed() < Duration::from_secs(3600));
        drop((tx, slow, other));
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_report_is_retried_a_minute_later_with_every_drop_since() {
        let sink = Reports::default();
        *sink.fail.lock().unwrap() = 1;
        let (tx, task) = start(&sink);
        let slow = Dropping::new(&tx, "ns/slow");
        let started = Instant::now();
        slow.drop_messages(QUEUE_BYTES, 2);
        settle().await;
        assert!(sink.take().is_empty(), "the first attempt failed");
        // New drops do not bring the retry forward.
        slow.drop_messages(QUEUE_BYTES, 5);
        settle().await;
        assert!(sink.take().is_empty());
        tokio::time::sleep(MIN_EVENT_INTERVAL).await;
        let reports = sink.take();
        assert_eq!(reports.len(), 1);
        assert!(reports[0].0 - started >= MIN_EVENT_INTERVAL);
        assert_eq!(reports[0].1.counts.queue_bytes, 7);
        drop((tx, slow));
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_subscribers_counters_are_reported_together() {
        let sink = Reports::default();
        let (tx, task) = start(&sink);
        let old = Dropping::new(&tx, "ns/slow");
        old.drop_messages(QUEUE_BYTES, 1);
        settle().await;
        assert_eq!(sink.take().len(), 1);
        // The queue was replaced (new capacity): new counters, same subscriber.
        let new = Dropping::new(&tx, "ns/slow");
        old.drop_messages(QUEUE_BYTES, 2);
        new.drop_messages(QUEUE_BYTES, 3);
        tokio::time::sleep(MIN_EVENT_INTERVAL).await;
        let reports = sink.take();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].1.counts.queue_bytes, 5);
        drop((tx, old, new));
        task.await.unwrap();
    }

    #[test]
    fn the_note_names_the_subscriber_the_count_and_the_reasons() {
        let report = DropReport {
            channel: "ns/ticker".into(),
            subscriber: "ns/slow".into(),
            counts: MemoryDropCounts {
                queue_bytes: 1200,
                memory_budget: 34,
            },
            since_last: Some(Duration::from_millis(61_500)),
        };
        assert_eq!(
            report.note(),
            "subscriber ns/slow of channel ns/ticker: 1234 messages dropped in the last 1m 1s \
             (queue_bytes: 1200, memory_budget: 34); its queue holds queueCapacityBytes (the \
             subscriber is not keeping up); the worker's memory budget is exhausted (the largest \
             queues give way)"
        );
        let first = DropReport {
            counts: MemoryDropCounts {
                queue_bytes: 1,
                memory_budget: 0,
            },
            since_last: None,
            ..report
        };
        assert_eq!(
            first.note(),
            "subscriber ns/slow of channel ns/ticker: 1 message dropped (queue_bytes: 1); its queue \
             holds queueCapacityBytes (the subscriber is not keeping up)"
        );
        let event = first.event();
        assert_eq!(
            (event.reason.as_str(), event.type_),
            (DROPPING_FOR_MEMORY, EventType::Warning)
        );
        let related = event.secondary.unwrap();
        assert_eq!(
            (
                related.kind.as_deref(),
                related.namespace.as_deref(),
                related.name.as_deref()
            ),
            (Some("Subscription"), Some("ns"), Some("slow"))
        );
    }
}
