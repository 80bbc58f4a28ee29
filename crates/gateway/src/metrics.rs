//! Gateway metrics: publishes by outcome and their latency; token and
//! access reviews.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// HTTP status answered.
    pub code: u16,
    /// The JSON reason (`Accepted`, `ChannelNotFound`, ...).
    pub reason: String,
}

#[derive(Clone)]
pub struct GatewayMetrics {
    pub publishes: Family<OutcomeLabels, Counter>,
    pub latency: Histogram,
}

impl GatewayMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            publishes: Family::default(),
            latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
        };
        let r = registry.sub_registry_with_prefix("wsbridge_gateway");
        r.register("publishes", "Publish requests by outcome", m.publishes.clone());
        r.register(
            "publish_duration_seconds",
            "Time to answer a publish request",
            m.latency.clone(),
        );
        m
    }

    pub fn observe(&self, code: u16, reason: &str, seconds: f64) {
        self.publishes
            .get_or_create(&OutcomeLabels {
                code,
                reason: reason.to_owned(),
            })
            .inc();
        self.latency.observe(seconds);
    }
}

/// Which review the API server was asked for.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReviewKind {
    /// TokenReview.
    Token,
    /// SubjectAccessReview.
    Access,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// `token` (TokenReview) or `access` (SubjectAccessReview).
    pub kind: &'static str,
    /// `allowed` (authenticated, or may publish), `denied`, or `error`.
    pub result: &'static str,
}

/// What the access caches cost the API server.
#[derive(Clone)]
pub struct AccessMetrics {
    pub reviews: Family<ReviewLabels, Counter>,
    pub rejected_cached: Counter,
    pub throttled: Counter,
}

impl AccessMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            reviews: Family::default(),
            rejected_cached: Counter::default(),
            throttled: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("wsbridge_gateway");
        r.register(
            "access_reviews",
            "TokenReviews and SubjectAccessReviews sent to the API server, by result",
            m.reviews.clone(),
        );
        r.register(
            "access_rejected_cached",
            "Publishes refused from the cache of rejected tokens, without a review",
            m.rejected_cached.clone(),
        );
        r.register(
            "access_reviews_throttled",
            "Publishes answered 429 because the rate of reviews of new tokens was reached",
            m.throttled.clone(),
        );
        m
    }

    /// Counts one review and how it ended.
    pub fn reviewed<E>(&self, kind: ReviewKind, answer: &Result<bool, E>) {
        let kind = match kind {
            ReviewKind::Token => "token",
            ReviewKind::Access => "access",
        };
        let result = match answer {
            Ok(true) => "allowed",
            Ok(false) => "denied",
            Err(_) => "error",
        };
        self.reviews.get_or_create(&ReviewLabels { kind, result }).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerAuthLabels {
    /// The broker's question: `user`, `vhost`, `resource` or `topic`.
    pub resource: &'static str,
    /// `allow` or `deny`.
    pub decision: &'static str,
}

/// The broker's HTTP auth backend's answers.
#[derive(Clone)]
pub struct BrokerAuthMetrics {
    pub decisions: Family<BrokerAuthLabels, Counter>,
}

impl BrokerAuthMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            decisions: Family::default(),
        };
        registry.sub_registry_with_prefix("wsbridge_gateway").register(
            "broker_auth",
            "Answers to RabbitMQ's HTTP auth backend (MQTT and AMQP clients), by question and decision",
            m.decisions.clone(),
        );
        m
    }

    /// Counts one answer.
    pub fn decided(&self, resource: &'static str, allowed: bool) {
        let decision = if allowed { "allow" } else { "deny" };
        self.decisions
            .get_or_create(&BrokerAuthLabels { resource, decision })
            .inc();
    }
}
