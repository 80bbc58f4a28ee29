//! Prometheus metrics of the data plane. Label values are channel keys,
//! subscriber ids, endpoint names and fixed reason words: never secrets,
//! never message content.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of endpoint metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The endpoint connection's name (e.g. `namespace/bridge`).
    pub endpoint: String,
}

/// Labels of channel metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    /// `namespace/name` of the channel.
    pub channel: String,
}

/// Labels of per-subscriber delivery metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriberLabels {
    /// `namespace/name` of the channel.
    pub channel: String,
    /// The subscriber's id (e.g. `namespace/subscription`).
    pub subscriber: String,
}

/// Labels of dead-letter and drop counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Channel key; empty for endpoint-side drops.
    pub channel: String,
    /// Subscriber id; empty when not about one subscriber.
    pub subscriber: String,
    /// Endpoint name; empty for delivery-side drops.
    pub endpoint: String,
    /// Why (a fixed word such as `queue_full`, `too_large`, `retries_exhausted`).
    pub reason: String,
}

/// Every data plane metric. Cheap to share (`Arc<DataplaneMetrics>`).
#[derive(Clone)]
pub struct DataplaneMetrics {
    /// Messages received from endpoints.
    pub received: Family<EndpointLabels, Counter>,
    /// Messages sent out to endpoints.
    pub sent: Family<EndpointLabels, Counter>,
    /// Messages published on channels (over HTTP).
    pub published: Family<ChannelLabels, Counter>,
    /// Messages delivered to subscribers (2xx).
    pub delivered: Family<SubscriberLabels, Counter>,
    /// Delivery retries.
    pub retried: Family<SubscriberLabels, Counter>,
    /// Messages dead-lettered, by reason.
    pub dead_lettered: Family<ReasonLabels, Counter>,
    /// Messages dropped (not delivered and not dead-lettered), by reason.
    pub dropped: Family<ReasonLabels, Counter>,
    /// Endpoint reconnects (connections established after the first).
    pub reconnects: Family<EndpointLabels, Counter>,
    /// 1 while the endpoint is connected, else 0.
    pub connected: Family<EndpointLabels, Gauge>,
    /// Seconds from enqueue to successful delivery (includes retries).
    pub delivery_latency: Family<SubscriberLabels, Histogram>,
    /// Bytes of messages waiting in each subscriber's queue.
    pub queued_bytes: Family<SubscriberLabels, Gauge>,
    /// Bytes that queued messages hold in this process, each message
    /// counted once however many queues share it.
    pub memory_budget_used: Gauge,
    /// Bytes that queued messages may hold in this process.
    pub memory_budget: Gauge,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

impl Default for DataplaneMetrics {
    fn default() -> Self {
        Self {
            received: Family::default(),
            sent: Family::default(),
            published: Family::default(),
            delivered: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            dropped: Family::default(),
            reconnects: Family::default(),
            connected: Family::default(),
            delivery_latency: Family::new_with_constructor(latency_histogram),
            queued_bytes: Family::default(),
            memory_budget_used: Gauge::default(),
            memory_budget: Gauge::default(),
        }
    }
}

impl DataplaneMetrics {
    /// Metrics that are not exposed anywhere (tests, tools).
    pub fn unregistered() -> Self {
        Self::default()
    }

    /// Creates the metrics and registers them (prefix `wsbridge_`).
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("wsbridge");
        r.register(
            "messages_received",
            "Messages received from external endpoints",
            m.received.clone(),
        );
        r.register(
            "messages_sent",
            "Messages sent out to external endpoints",
            m.sent.clone(),
        );
        r.register(
            "messages_published",
            "Messages published on channels over HTTP",
            m.published.clone(),
        );
        r.register(
            "messages_delivered",
            "Messages delivered to subscribers",
            m.delivered.clone(),
        );
        r.register("delivery_retries", "Delivery attempts retried", m.retried.clone());
        r.register(
            "messages_dead_lettered",
            "Messages sent to a dead-letter sink",
            m.dead_lettered.clone(),
        );
        r.register(
            "messages_dropped",
            "Messages dropped without delivery, by reason",
            m.dropped.clone(),
        );
        r.register(
            "endpoint_reconnects",
            "Endpoint connections re-established",
            m.reconnects.clone(),
        );
        r.register(
            "endpoint_connected",
            "1 while the endpoint is connected",
            m.connected.clone(),
        );
        r.register(
            "delivery_latency_seconds",
            "Time from enqueue to successful delivery",
            m.delivery_latency.clone(),
        );
        r.register(
            "subscriber_queued_bytes",
            "Bytes of messages waiting in a subscriber's queue",
            m.queued_bytes.clone(),
        );
        r.register(
            "memory_budget_used_bytes",
            "Bytes queued messages hold in this process (each message once)",
            m.memory_budget_used.clone(),
        );
        r.register(
            "memory_budget_bytes",
            "Bytes queued messages may hold in this process",
            m.memory_budget.clone(),
        );
        m
    }

    /// A memory budget of `limit` bytes reported on these metrics.
    pub fn memory_budget(&self, limit: u64) -> std::sync::Arc<crate::budget::MemoryBudget> {
        crate::budget::MemoryBudget::with_gauges(
            limit,
            self.memory_budget_used.clone(),
            self.memory_budget.clone(),
        )
    }

    /// Counts a message of `endpoint` dropped for `reason`.
    pub fn drop_endpoint(&self, endpoint: &str, reason: &str) {
        self.dropped
            .get_or_create(&ReasonLabels {
                channel: String::new(),
                subscriber: String::new(),
                endpoint: endpoint.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The number of drops with `reason` summed over all other labels.
    pub fn dropped_total(&self, reason: &str) -> u64 {
        sum_reason(&self.dropped, reason)
    }

    /// The number of dead-letters with `reason` summed over all other labels.
    pub fn dead_lettered_total(&self, reason: &str) -> u64 {
        sum_reason(&self.dead_lettered, reason)
    }
}

fn sum_reason(family: &Family<ReasonLabels, Counter>, reason: &str) -> u64 {
    // Family has no iterator; encode into text and sum the matching lines.
    let mut registry = Registry::default();
    registry.register("x", "x", family.clone());
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        return 0;
    }
    let needle = format!("reason=\"{reason}\"");
    text.lines()
        .filter(|l| l.starts_with("x_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}
