//! Prometheus metrics of a role's broker connection: whether it is up,
//! how many connections it made, what publishing with confirms gave, where
//! each consumer is and how deep each backlog is. Labels are channel and
//! queue names and fixed words: never credentials, never message content.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::connection::{Broker, BrokerState};
use crate::publisher::PublishError;

/// Labels of publish counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    /// `namespace/name` of the channel.
    pub channel: String,
    /// `confirmed`, `unavailable`, `refused` or `timeout`.
    pub result: String,
}

/// Labels of queue metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// The queue's name (see [`crate::topology`]).
    pub queue: String,
}

/// Every broker metric. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct BrokerMetrics {
    /// 1 while connected to the broker.
    pub connected: Gauge,
    /// Connections made since start (more than one: reconnects).
    pub connections: Gauge,
    /// Messages published with confirms, by result.
    pub publishes: Family<PublishLabels, Counter>,
    /// 1 while a queue's consumer consumes, 0 while it waits.
    pub consuming: Family<QueueLabels, Gauge>,
    /// Messages ready in a queue (its backlog), as last asked.
    pub backlog: Family<QueueLabels, Gauge>,
}

impl BrokerMetrics {
    /// The metrics, registered in `registry`.
    pub fn registered(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "wsbridge_broker_connected",
            "1 while connected to the RabbitMQ broker",
            m.connected.clone(),
        );
        registry.register(
            "wsbridge_broker_connections",
            "Connections made to the broker since start (above 1: reconnects)",
            m.connections.clone(),
        );
        registry.register(
            "wsbridge_broker_publishes",
            "Messages published to the broker, by result (confirmed, unavailable, refused, timeout)",
            m.publishes.clone(),
        );
        registry.register(
            "wsbridge_broker_consuming",
            "1 while the consumer of a queue consumes, 0 while it waits for the broker",
            m.consuming.clone(),
        );
        registry.register(
            "wsbridge_broker_backlog_messages",
            "Messages ready in a queue (a Subscription's or Bridge's backlog)",
            m.backlog.clone(),
        );
        m
    }

    /// Records the outcome of one publish on `channel`.
    pub fn published(&self, channel: &str, result: &Result<(), PublishError>) {
        let result = match result {
            Ok(()) => "confirmed",
            Err(PublishError::Unavailable(_)) => "unavailable",
            Err(PublishError::Refused) => "refused",
            Err(PublishError::Timeout(_)) => "timeout",
        };
        self.publishes
            .get_or_create(&PublishLabels {
                channel: channel.to_string(),
                result: result.into(),
            })
            .inc();
    }

    /// Sets the connection gauges from `broker`'s state now.
    pub fn observe(&self, broker: &Broker) {
        match broker.state() {
            BrokerState::Connected { generation } => {
                self.connected.set(1);
                self.connections
                    .set(i64::try_from(generation).unwrap_or(i64::MAX));
            }
            _ => {
                self.connected.set(0);
            }
        }
    }

    /// Sets whether the consumer of `queue` consumes.
    pub fn set_consuming(&self, queue: &str, consuming: bool) {
        self.consuming
            .get_or_create(&QueueLabels { queue: queue.into() })
            .set(i64::from(consuming));
    }

    /// Sets the backlog of `queue`.
    pub fn set_backlog(&self, queue: &str, messages: u32) {
        self.backlog
            .get_or_create(&QueueLabels { queue: queue.into() })
            .set(i64::from(messages));
    }

    /// Forgets a queue that is no longer consumed.
    pub fn remove_queue(&self, queue: &str) {
        let labels = QueueLabels { queue: queue.into() };
        self.consuming.remove(&labels);
        self.backlog.remove(&labels);
    }
}
