//! The running data plane of standalone mode: the routing index, the
//! delivery engine and one endpoint connection per Bridge, kept in step with
//! the configuration by [`Runtime::apply`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::info;

use super::load::{BridgePlan, ChannelPlan, Plan};
use prometheus_client::registry::Registry;
use wsbridge_core::{ChannelKey, ObjectKey};
use wsbridge_dataplane::DestinationPolicy;
use wsbridge_dataplane::budget::{MemoryBudget, OverBudget, queue_budget};
use wsbridge_dataplane::clients::{ClientLimits, RemoteClients};
use wsbridge_dataplane::delivery::{DEFAULT_DEDUP_BYTES, DEFAULT_DEDUP_WINDOW, Publication, RecentPublishes};
use wsbridge_dataplane::delivery::{DeliveryEngine, DeliveryStats, EngineConfig, ShutdownReport};
use wsbridge_dataplane::endpoint::{EndpointConfig, EndpointHandle, EndpointOptions, SendError};
use wsbridge_dataplane::metrics::ChannelLabels;
use wsbridge_dataplane::routing::RoutingIndex;
use wsbridge_dataplane::{DataplaneMetrics, Message, Origin, Payload};
use wsbridge_translate as translate;

/// Messages waiting between an endpoint connection and the delivery engine.
const INBOUND_CAPACITY: usize = 1024;

struct RunningBridge {
    plan: BridgePlan,
    config: watch::Sender<EndpointConfig>,
    handle: Arc<EndpointHandle>,
    forward: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    plan: Plan,
    bridges: HashMap<ObjectKey, RunningBridge>,
    followed: HashMap<ChannelKey, JoinHandle<()>>,
}

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No such Channel (404).
    #[error("channel {0} not found")]
    NotFound(ChannelKey),
    /// Larger than the channel's or an endpoint's limit (413).
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Bytes in the message.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A bridged endpoint cannot take the message now (503).
    #[error("bridge {bridge} cannot send to its endpoint {endpoint}: {reason}")]
    Unavailable {
        /// The Bridge.
        bridge: ObjectKey,
        /// Its Endpoint.
        endpoint: ObjectKey,
        /// Not connected, buffer full, ...
        reason: String,
    },
    /// The process's memory budget cannot hold the message now (503).
    #[error("{0}; retry later")]
    OverBudget(#[from] OverBudget),
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message id (`ce-id`).
    pub id: String,
    /// Subscribers it was queued for.
    pub subscribers: usize,
    /// Endpoints it was sent out to.
    pub endpoints: usize,
}

/// The data plane of one standalone process.
pub struct Runtime {
    index: Arc<RoutingIndex>,
    engine: DeliveryEngine,
    metrics: Arc<DataplaneMetrics>,
    destinations: Arc<DestinationPolicy>,
    clients: Arc<RemoteClients>,
    /// Keys of recent publishes, so that a retried one is not sent twice.
    recent: RecentPublishes,
    state: Mutex<State>,
}

impl Runtime {
    /// An empty runtime; call [`Runtime::apply`] with a configuration.
    pub fn new(metrics: Arc<DataplaneMetrics>) -> Self {
        Self::with_destinations(metrics, Arc::default())
    }

    /// An empty runtime whose deliveries and endpoint connections go only
    /// where `destinations` allows.
    pub fn with_destinations(metrics: Arc<DataplaneMetrics>, destinations: Arc<DestinationPolicy>) -> Self {
        let budget = metrics.memory_budget(queue_budget(None));
        Self::with_budget(metrics, destinations, budget)
    }

    /// [`Runtime::with_destinations`], with queued messages (subscriber
    /// queues, endpoint send queues) held within `budget`.
    pub fn with_budget(
        metrics: Arc<DataplaneMetrics>,
        destinations: Arc<DestinationPolicy>,
        budget: Arc<MemoryBudget>,
    ) -> Self {
        Self {
            index: Arc::new(RoutingIndex::default()),
            engine: DeliveryEngine::new(
                EngineConfig {
                    destinations: destinations.clone(),
                    budget,
                    ..EngineConfig::default()
                },
                metrics.clone(),
            ),
            metrics,
            destinations,
            clients: RemoteClients::new(ClientLimits::default()),
            recent: RecentPublishes::new(
                DEFAULT_DEDUP_WINDOW,
                DEFAULT_DEDUP_BYTES,
                &mut Registry::default(),
            ),
            state: Mutex::new(State::default()),
        }
    }

    /// The same runtime, remembering publish keys in `recent` (whose
    /// counters are registered where `/metrics` serves them).
    pub fn with_recent_publishes(mut self, recent: RecentPublishes) -> Self {
        self.recent = recent;
        self
    }

    /// Keys of recent publishes on this runtime's channels.
    pub fn recent_publishes(&self) -> &RecentPublishes {
        &self.recent
    }

    /// The same runtime, broadcasting to `clients` (WebSocket subscribers).
    pub fn with_remote_clients(mut self, clients: Arc<RemoteClients>) -> Self {
        self.clients = clients;
        self
    }

    /// The channels' remote clients.
    pub fn clients(&self) -> &Arc<RemoteClients> {
        &self.clients
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `plan` the running configuration. Only what changed is touched:
    /// unchanged subscribers keep their queues, unchanged bridges keep their
    /// connections; an Endpoint change reconnects its bridges.
    pub fn apply(&self, plan: Plan) {
        let mut state = self.lock();
        let old = std::mem::take(&mut state.plan);

        sync(
            &old.channels,
            &plan.channels,
            |k, c: &ChannelPlan| self.index.apply_channel(k.clone(), c.info.clone()),
            |k| self.index.delete_channel(k),
        );
        sync(
            &old.subscriptions,
            &plan.subscriptions,
            |k, s| self.index.apply_subscription(k.clone(), s.clone()),
            |k| self.index.delete_subscription(k),
        );
        sync(
            &old.bridges,
            &plan.bridges,
            |k, b: &BridgePlan| self.index.apply_bridge(k.clone(), b.info.clone()),
            |k| self.index.delete_bridge(k),
        );

        // Bridges: stop removed ones (and ones moved to another channel),
        // reconfigure changed ones, start new ones.
        let stale: Vec<ObjectKey> = state
            .bridges
            .iter()
            .filter(|(k, running)| {
                plan.bridges
                    .get(*k)
                    .is_none_or(|p| p.channel != running.plan.channel)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            if let Some(running) = state.bridges.remove(&key) {
                info!(bridge = %key, "bridge removed; closing its endpoint connection");
                running.forward.abort();
                // Dropping the handle stops the connection.
            }
        }
        for (key, bridge) in &plan.bridges {
            match state.bridges.get_mut(key) {
                Some(running) => {
                    if running.plan != *bridge {
                        info!(bridge = %key, endpoint = %bridge.endpoint, "bridge configuration changed");
                        running.config.send_replace(bridge.config.clone());
                        running.plan = bridge.clone();
                    }
                }
                None => {
                    let running = self.start_bridge(key, bridge);
                    state.bridges.insert(key.clone(), running);
                }
            }
        }

        // Every channel that is mentioned gets a delivery follower.
        let mentioned: HashSet<ChannelKey> = plan
            .channels
            .keys()
            .cloned()
            .chain(plan.subscriptions.iter().map(|(k, s)| k.sibling(&s.channel)))
            .chain(plan.bridges.values().map(|b| b.channel.clone()))
            .collect();
        for channel in mentioned {
            state
                .followed
                .entry(channel.clone())
                .or_insert_with(|| self.engine.follow(self.index.watch(&channel)));
        }
        state.plan = plan;
    }

    fn start_bridge(&self, key: &ObjectKey, bridge: &BridgePlan) -> RunningBridge {
        info!(bridge = %key, endpoint = %bridge.endpoint, channel = %bridge.channel, url = %bridge.config.display_url(), "starting bridge");
        let (config_tx, config_rx) = watch::channel(bridge.config.clone());
        let (inbound_tx, mut inbound_rx) = mpsc::channel::<Arc<Message>>(INBOUND_CAPACITY);
        let handle = EndpointHandle::spawn(
            EndpointOptions {
                destinations: self.destinations.clone(),
                ..EndpointOptions::new(key.to_string())
            },
            config_rx,
            inbound_tx,
            self.metrics.clone(),
        );
        let engine = self.engine.clone();
        let clients = self.clients.clone();
        let channel = bridge.channel.clone();
        // Endpoint messages go to the channel's subscribers and remote
        // clients only, never back out to an endpoint.
        let forward = tokio::spawn(async move {
            while let Some(msg) = inbound_rx.recv().await {
                clients.broadcast(&channel, &msg);
                engine.dispatch(&channel, msg);
            }
        });
        RunningBridge {
            plan: bridge.clone(),
            config: config_tx,
            handle: Arc::new(handle),
            forward,
        }
    }

    /// Whether every bridge's endpoint is connected now.
    pub fn all_connected(&self) -> bool {
        self.lock().bridges.values().all(|b| b.handle.is_connected())
    }

    /// The bridges and whether each is connected, sorted.
    pub fn bridge_states(&self) -> BTreeMap<ObjectKey, bool> {
        self.lock()
            .bridges
            .iter()
            .map(|(k, b)| (k.clone(), b.handle.is_connected()))
            .collect()
    }

    /// The largest message `channel` accepts, or `None` when there is no such channel.
    pub fn max_message_bytes(&self, channel: &ChannelKey) -> Option<usize> {
        self.lock()
            .plan
            .channels
            .get(channel)
            .map(|c| c.max_message_bytes)
    }

    /// The largest message any channel of `namespace` accepts (0 when it
    /// has none).
    pub fn max_message_bytes_in(&self, namespace: &str) -> usize {
        self.lock()
            .plan
            .channels
            .iter()
            .filter(|(key, _)| key.namespace == namespace)
            .map(|(_, c)| c.max_message_bytes)
            .max()
            .unwrap_or(0)
    }

    /// Publishes `payload` on `channel`: out to every bridged endpoint of the
    /// channel (all of which must be connected), then to its subscribers.
    pub fn publish(&self, channel: &ChannelKey, payload: Payload) -> Result<Published, PublishError> {
        self.publish_recorded(channel, payload, &mut Publication::default())
    }

    /// [`Runtime::publish`] of a publish that may have been made before
    /// (same key): endpoints in `record` that took it, and the subscribers
    /// once dispatched to, do not get it again; `record` says what got it.
    pub fn publish_recorded(
        &self,
        channel: &ChannelKey,
        payload: Payload,
        record: &mut Publication,
    ) -> Result<Published, PublishError> {
        let routes = self.index.routes(channel);
        let max = self
            .max_message_bytes(channel)
            .filter(|_| routes.channel.is_some())
            .ok_or_else(|| PublishError::NotFound(channel.clone()))?;
        if payload.len() > max {
            return Err(PublishError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        let handles: Vec<(ObjectKey, ObjectKey, Option<Arc<EndpointHandle>>)> = {
            let state = self.lock();
            routes
                .bridges
                .iter()
                .map(|r| {
                    let handle = state.bridges.get(&r.bridge).map(|b| b.handle.clone());
                    (r.bridge.clone(), r.endpoint.clone(), handle)
                })
                .collect()
        };
        for (bridge, endpoint, handle) in &handles {
            if !record.bridges.contains(bridge) && !handle.as_ref().is_some_and(|h| h.is_connected()) {
                return Err(PublishError::Unavailable {
                    bridge: bridge.clone(),
                    endpoint: endpoint.clone(),
                    reason: "the endpoint is not connected".into(),
                });
            }
        }
        let mut msg = Message::new(
            payload,
            Origin::Published,
            translate::channel_source(&channel.namespace, &channel.name),
        );
        if let Some(id) = &record.id {
            msg = msg.with_id(id.clone());
        }
        let msg = Arc::new(msg);
        record.id.get_or_insert_with(|| msg.id().to_owned());
        // Charged before any queue takes it: refused (503) rather than
        // grown past the budget.
        self.engine.admit(&msg)?;
        for (bridge, endpoint, handle) in &handles {
            if record.bridges.contains(bridge) {
                self.recent.skipped_endpoint();
                continue;
            }
            let Some(handle) = handle else { continue };
            match handle.try_send(msg.clone()) {
                Ok(()) => {
                    record.bridges.insert(bridge.clone());
                }
                Err(SendError::TooLarge { size, max }) => {
                    return Err(PublishError::TooLarge { size, max });
                }
                Err(e) => {
                    return Err(PublishError::Unavailable {
                        bridge: bridge.clone(),
                        endpoint: endpoint.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        if record.dispatched {
            self.recent.skipped_subscribers();
            return Ok(Published {
                id: msg.id().to_string(),
                subscribers: 0,
                endpoints: handles.len(),
            });
        }
        self.clients.broadcast(channel, &msg);
        let report = self.engine.dispatch(channel, msg.clone());
        record.dispatched = true;
        self.metrics
            .published
            .get_or_create(&ChannelLabels {
                channel: channel.to_string(),
            })
            .inc();
        Ok(Published {
            id: msg.id().to_string(),
            subscribers: report.subscribers,
            endpoints: handles.len(),
        })
    }

    /// Delivery counts since start.
    pub fn stats(&self) -> DeliveryStats {
        self.engine.stats()
    }

    /// Stops every endpoint connection, then lets queued deliveries finish
    /// within `drain` (what is left is counted as dropped).
    pub async fn shutdown(&self, drain: Duration) -> ShutdownReport {
        let bridges: Vec<(ObjectKey, RunningBridge)> = self.lock().bridges.drain().collect();
        for (key, running) in bridges {
            let RunningBridge { handle, forward, .. } = running;
            if let Ok(handle) = Arc::try_unwrap(handle) {
                let _ = tokio::time::timeout(Duration::from_secs(3), handle.shutdown()).await;
            }
            // The connection is closed: what it forwarded is already queued.
            let _ = tokio::time::timeout(Duration::from_secs(1), forward).await;
            tracing::debug!(bridge = %key, "bridge stopped");
        }
        let report = self.engine.shutdown(drain).await;
        for (_, task) in self.lock().followed.drain() {
            task.abort();
        }
        report
    }
}

/// Calls `apply` for what is new or changed in `new`, `delete` for what is gone.
fn sync<V: PartialEq>(
    old: &BTreeMap<ObjectKey, V>,
    new: &BTreeMap<ObjectKey, V>,
    mut apply: impl FnMut(&ObjectKey, &V),
    mut delete: impl FnMut(&ObjectKey),
) {
    for key in old.keys().filter(|k| !new.contains_key(*k)) {
        delete(key);
    }
    for (key, value) in new {
        if old.get(key) != Some(value) {
            apply(key, value);
        }
    }
}
