//! Gateway metrics: publishes by outcome and their latency.

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
