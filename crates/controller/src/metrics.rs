//! Controller metrics: reconciles, failures by error label, durations, the
//! API requests the controller makes, and whether this replica leads.

use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::reconcile::Timer;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub kind: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `get`, `list`, `watch`, `create`, `patch`, `update`, `delete`...
    pub verb: String,
}

type HistogramFamily = Family<KindLabels, Histogram, fn() -> Histogram>;

/// Handles to the controller's metrics (cheap to clone).
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Family<KindLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub durations: HistogramFamily,
    pub api_requests: Family<RequestLabels, Counter>,
    /// 1 while this replica reconciles (holds the Lease, or runs without
    /// leader election), else 0: summed over replicas, 0 means no leader.
    pub leader: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them under `wsbridge_controller_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            failures: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
            api_requests: Family::default(),
            leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("wsbridge_controller");
        r.register("reconciles", "Reconciles run, by kind", m.reconciles.clone());
        r.register(
            "reconcile_failures",
            "Reconciles that failed, by kind and error",
            m.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile, by kind",
            m.durations.clone(),
        );
        r.register(
            "api_requests",
            "Requests sent to the Kubernetes API server, by verb",
            m.api_requests.clone(),
        );
        r.register(
            "leader",
            "1 while this replica is the one that reconciles",
            m.leader.clone(),
        );
        m
    }

    /// Marks this replica as the one reconciling until the guard drops
    /// (when reconciling ends or its future is dropped on losing the Lease).
    pub fn leading(&self) -> Leading {
        self.leader.set(1);
        Leading(self.leader.clone())
    }

    /// Starts timing a reconcile; counted when the returned guard drops.
    pub fn start(&self, kind: &'static str) -> Timer {
        Timer {
            metrics: self.clone(),
            kind,
            started: Instant::now(),
        }
    }

    pub(super) fn finish(&self, kind: &str, elapsed: Duration) {
        let labels = KindLabels { kind: kind.into() };
        self.reconciles.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn failure(&self, kind: &str, error: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                kind: kind.into(),
                error: error.into(),
            })
            .inc();
    }

    /// Counts one API request (from the client's middleware).
    pub fn request<B>(&self, req: &http::Request<B>) {
        let watch = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        let verb = match *req.method() {
            http::Method::GET if watch => "watch",
            http::Method::GET => "get",
            http::Method::POST => "create",
            http::Method::PATCH => "patch",
            http::Method::PUT => "update",
            http::Method::DELETE => "delete",
            _ => "other",
        };
        self.api_requests
            .get_or_create(&RequestLabels { verb: verb.into() })
            .inc();
    }
}

/// Holds `wsbridge_controller_leader` at 1; back to 0 on drop.
pub struct Leading(Gauge);

impl Drop for Leading {
    fn drop(&mut self) {
        self.0.set(0);
    }
}
