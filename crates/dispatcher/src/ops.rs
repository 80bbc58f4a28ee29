//! What the dispatcher shows: `/readyz` (the watches listed, the broker
//! connected and every consumer consuming), its own metric of
//! Subscriptions left in the broker, and the backlog depths, asked of the
//! broker every few seconds on the side.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{info, warn};
use wsbridge_broker::Durable;
use wsbridge_core::ObjectKey;
use wsbridge_http::ops::Readiness;

use crate::consumers::Consumers;
use crate::subscriptions::HoldReason;

/// How often readiness is computed.
const READINESS_INTERVAL: Duration = Duration::from_millis(250);

/// How often the backlog depths are asked of the broker.
pub const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);

/// Labels of held Subscriptions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeldLabels {
    /// `namespace/name` of the Subscription.
    pub subscription: String,
    /// Why (`SigningUnavailable`).
    pub reason: String,
}

/// The dispatcher's own metrics.
#[derive(Clone, Default)]
pub struct DispatcherMetrics {
    /// 1 for each Subscription whose backlog is left in the broker.
    pub held: Family<HeldLabels, Gauge>,
}

impl DispatcherMetrics {
    /// The metrics, registered in `registry`.
    pub fn registered(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "wsbridge_dispatcher_held_subscriptions",
            "Subscriptions whose backlog the dispatcher leaves in the broker, undelivered, by reason \
             (SigningUnavailable: its signing key is not among the delivery keys; BridgeTokenUnavailable: a Bridge's token is not)",
            m.held.clone(),
        );
        m
    }

    pub(crate) fn hold(&self, key: &ObjectKey, reason: HoldReason) {
        self.held
            .get_or_create(&HeldLabels {
                subscription: key.to_string(),
                reason: reason.as_str().into(),
            })
            .set(1);
    }

    pub(crate) fn release(&self, key: &ObjectKey, reason: HoldReason) {
        self.held.remove(&HeldLabels {
            subscription: key.to_string(),
            reason: reason.as_str().into(),
        });
    }
}

/// Keeps `/readyz` in step until `stop`: ready once `synced` and while
/// [`Consumers::ready`]; logs each change, and has the backlog depths
/// observed every [`BACKLOG_INTERVAL`].
pub async fn follow_readiness(
    consumers: Arc<Mutex<Consumers>>,
    durable: Arc<Durable>,
    synced: watch::Receiver<bool>,
    ready: Readiness,
    mut stop: watch::Receiver<bool>,
) {
    let mut last: Option<Result<(), String>> = None;
    let mut backlogs: Option<tokio::task::JoinHandle<()>> = None;
    let mut since_backlogs = BACKLOG_INTERVAL;
    loop {
        let now = if *synced.borrow() {
            lock(&consumers).ready()
        } else {
            Err("Channels, Bridges and Subscriptions not listed yet".into())
        };
        ready.set(now.is_ok());
        if last.as_ref() != Some(&now) {
            match &now {
                Ok(()) => info!("ready: the broker is connected and every backlog is consumed"),
                Err(why) => warn!(reason = %why, "not ready"),
            }
            last = Some(now);
        }
        // Asked on the side: a broker slow to answer never holds up /readyz.
        if since_backlogs >= BACKLOG_INTERVAL && backlogs.as_ref().is_none_or(|t| t.is_finished()) {
            since_backlogs = Duration::ZERO;
            let queues = lock(&consumers).queues();
            let durable = durable.clone();
            backlogs = Some(tokio::spawn(
                async move { durable.observe_backlogs(queues).await },
            ));
        }
        tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            () = tokio::time::sleep(READINESS_INTERVAL) => since_backlogs += READINESS_INTERVAL,
        }
    }
    ready.set(false);
    if let Some(task) = backlogs {
        task.abort();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
