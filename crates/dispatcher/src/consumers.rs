//! The consumers this replica runs, kept in step with [`Catalog::wanted`]:
//! one per Subscription to consume (restarted when its delivery options
//! or backlog changed, stopped when it is gone or its Channel went to
//! `memory`), and a declared-but-unconsumed queue per held one.
//!
//! [`Catalog::wanted`]: crate::subscriptions::Catalog::wanted

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use wsbridge_broker::topology::subscription_queue;
use wsbridge_broker::{AdminError, Durable, DurableConsumer};
use wsbridge_core::{ChannelKey, ObjectKey};
use wsbridge_dataplane::delivery::DeliveryEngine;
use wsbridge_dataplane::delivery::delivery_keys::DeliveryKeys;
use wsbridge_dataplane::{Message, Origin};

use crate::ops::DispatcherMetrics;
use crate::subscriptions::{HoldReason, Want};

/// How long a held Subscription's queue declaration waits before it is
/// tried again while the broker is unreachable.
const DECLARE_RETRY: Duration = Duration::from_secs(5);

/// A Subscription whose backlog is left in the broker.
struct Held {
    want: Want,
    /// Declares its queue (so what is published waits there), then ends.
    declaring: JoinHandle<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.declaring.abort();
    }
}

/// The running consumers and held Subscriptions.
pub struct Consumers {
    durable: Arc<Durable>,
    engine: Arc<DeliveryEngine>,
    metrics: DispatcherMetrics,
    /// The Bridges' tokens, presented with their endpoint messages.
    keys: watch::Receiver<Arc<DeliveryKeys>>,
    running: HashMap<ObjectKey, DurableConsumer>,
    held: HashMap<ObjectKey, Held>,
}

impl Consumers {
    pub fn new(
        durable: Arc<Durable>,
        engine: Arc<DeliveryEngine>,
        metrics: DispatcherMetrics,
        keys: watch::Receiver<Arc<DeliveryKeys>>,
    ) -> Self {
        Self {
            durable,
            engine,
            metrics,
            keys,
            running: HashMap::new(),
            held: HashMap::new(),
        }
    }

    /// Starts, restarts, keeps or stops consumers so that exactly `wanted` runs.
    pub fn sync(&mut self, wanted: &BTreeMap<ObjectKey, Want>) {
        let mut running = std::mem::take(&mut self.running);
        let mut held = std::mem::take(&mut self.held);
        for (key, want) in wanted {
            match want {
                Want::Consume {
                    channel,
                    subscriber,
                    backlog,
                } => {
                    if let Some(reason) = held.remove(key).and_then(|h| h.want.hold_reason()) {
                        self.metrics.release(key, reason);
                    }
                    let consumer = match running.remove(key) {
                        Some(c) if c.matches(channel, subscriber, *backlog) => {
                            // Same queue and consumer; the subscriber's
                            // address or retries may still have changed.
                            if let Some(engine_key) = c.engine_key() {
                                self.engine
                                    .set_subscribers(&engine_key, vec![(**subscriber).clone()]);
                            }
                            c
                        }
                        old => {
                            if let Some(old) = old {
                                info!(subscription = %key, "delivery options or backlog changed; restarting its consumer");
                                self.stop(old);
                            } else {
                                info!(subscription = %key, channel = %channel, "consuming the subscription's backlog");
                            }
                            self.durable.consume_subscription(
                                channel,
                                key,
                                subscriber,
                                *backlog,
                                &self.engine,
                                stamp(self.keys.clone(), channel),
                            )
                        }
                    };
                    self.running.insert(key.clone(), consumer);
                }
                Want::Hold { reason, .. } => {
                    if let Some(old) = running.remove(key) {
                        self.stop(old);
                    }
                    let entry = match held.remove(key) {
                        Some(h) if h.want == *want => h,
                        old => {
                            if let Some(old) = old.and_then(|h| h.want.hold_reason()) {
                                self.metrics.release(key, old);
                            }
                            self.warn_held(key, *reason);
                            Held {
                                want: want.clone(),
                                declaring: tokio::spawn(declare(
                                    self.durable.clone(),
                                    key.clone(),
                                    want.clone(),
                                )),
                            }
                        }
                    };
                    self.held.insert(key.clone(), entry);
                }
            }
        }
        for (key, old) in running {
            info!(subscription = %key, "no longer a subscription of a rabbitmq channel; stopped consuming its backlog");
            self.stop(old);
        }
        for (key, h) in held {
            if let Some(reason) = h.want.hold_reason() {
                self.metrics.release(&key, reason);
            }
            self.durable.metrics().remove_queue(&subscription_queue(&key));
        }
    }

    fn warn_held(&self, key: &ObjectKey, reason: HoldReason) {
        self.metrics.hold(key, reason);
        match reason {
            HoldReason::SigningUnavailable => warn!(
                subscription = %key,
                reason = reason.as_str(),
                "the subscription names a signingSecretRef and its key is not among the delivery keys \
                 (yet): its messages stay in its backlog, undelivered, rather than go out unsigned"
            ),
            HoldReason::BridgeTokenUnavailable => warn!(
                subscription = %key,
                reason = reason.as_str(),
                "a Bridge of its channel names a tokenSecretRef and its token is not among the delivery \
                 keys (yet): its messages stay in its backlog rather than go out without the token"
            ),
        }
    }

    /// Stops `consumer` now (what it held unacknowledged goes back to the queue).
    fn stop(&self, consumer: DurableConsumer) {
        if let Some(engine_key) = consumer.engine_key() {
            self.engine.set_subscribers(&engine_key, Vec::new());
        }
        self.durable.metrics().remove_queue(consumer.queue());
    }

    /// Whether the broker is connected and every consumer consumes (`Err`
    /// says why not); updates the broker metrics.
    pub fn ready(&self) -> Result<(), String> {
        self.durable.ready(self.running.values())
    }

    /// Every queue this replica consumes or holds (for backlog metrics).
    pub fn queues(&self) -> Vec<String> {
        self.running
            .values()
            .map(|c| c.queue().to_string())
            .chain(self.held.keys().map(subscription_queue))
            .collect()
    }

    /// Takes every consumer out, for a graceful stop.
    pub fn take_all(&mut self) -> Vec<DurableConsumer> {
        self.held.clear();
        self.running.drain().map(|(_, c)| c).collect()
    }
}

/// Adds its Bridge's token to an endpoint message of `channel` that came
/// back from the broker (which never holds it): the Bridge named by the
/// message's source (`/namespaces/{ns}/bridges/{name}`), in the channel's
/// namespace only.
fn stamp(
    keys: watch::Receiver<Arc<DeliveryKeys>>,
    channel: &ChannelKey,
) -> impl Fn(Arc<Message>) -> Arc<Message> + Send + Sync + 'static {
    let namespace = channel.namespace.clone();
    move |msg: Arc<Message>| {
        if msg.origin() != Origin::Endpoint {
            return msg;
        }
        let Some(bridge) = bridge_of(msg.source()).filter(|b| b.namespace == namespace) else {
            return msg;
        };
        let token = keys.borrow().bridge_token(&bridge).cloned();
        match token {
            Some(token) => Arc::new((*msg).clone().with_subscriber_token(Some(&token))),
            None => msg,
        }
    }
}

/// The Bridge of an endpoint message's source, `/namespaces/{ns}/bridges/{name}`.
fn bridge_of(source: &str) -> Option<ObjectKey> {
    let (namespace, rest) = source.strip_prefix("/namespaces/")?.split_once('/')?;
    let name = rest.strip_prefix("bridges/")?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains('/'))
        .then(|| ObjectKey::new(namespace, name))
}

/// Declares a held Subscription's backlog, as its consumer would, so what
/// is published waits there; retried while the broker is unreachable.
async fn declare(durable: Arc<Durable>, key: ObjectKey, want: Want) {
    let Want::Hold {
        channel,
        backlog,
        ordered,
        ..
    } = want
    else {
        return;
    };
    loop {
        match durable
            .broker()
            .declare_subscription(&channel, &key, backlog, ordered)
            .await
        {
            Ok(()) => return,
            Err(AdminError::Unreachable(_)) => tokio::time::sleep(DECLARE_RETRY).await,
            Err(e @ AdminError::Refused(_)) => {
                warn!(subscription = %key, error = %e, "could not declare the held subscription's backlog");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_message_names_its_bridge_by_its_source() {
        let source = wsbridge_translate::bridge_source("team", "feed");
        assert_eq!(bridge_of(&source), Some(ObjectKey::new("team", "feed")));
        for other in [
            "/namespaces/team/channels/ticks",
            "/namespaces//bridges/feed",
            "/namespaces/team/bridges/",
            "/namespaces/team/bridges/feed/x",
            "bridges/feed",
        ] {
            assert_eq!(bridge_of(other), None, "{other}");
        }
    }
}
