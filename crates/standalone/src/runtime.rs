//! The running data plane of standalone mode: the routing index, the
//! delivery engine and one endpoint connection per Bridge, kept in step with
//! the configuration by [`Runtime::apply`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use super::load::{BridgePlan, ChannelPlan, Plan};
use prometheus_client::registry::Registry;
use wsbridge_broker::{Durable, DurableConsumer};
use wsbridge_core::{ChannelKey, ObjectKey, SecretString};
use wsbridge_dataplane::DestinationPolicy;
use wsbridge_dataplane::budget::{MemoryBudget, OverBudget, queue_budget};
use wsbridge_dataplane::clients::{ClientLimits, FeedEnd, RemoteClients};
use wsbridge_dataplane::delivery::{DEFAULT_DEDUP_BYTES, DEFAULT_DEDUP_WINDOW, Publication, RecentPublishes};
use wsbridge_dataplane::delivery::{DeliveryEngine, DeliveryStats, EngineConfig, ShutdownReport};
use wsbridge_dataplane::endpoint::{EndpointConfig, EndpointHandle, EndpointOptions, SendError};
use wsbridge_dataplane::metrics::ChannelLabels;
use wsbridge_dataplane::routing::{ChannelRoutes, RoutingIndex};
use wsbridge_dataplane::{DataplaneMetrics, Message, Origin, Payload};
use wsbridge_translate as translate;

/// Messages waiting between an endpoint connection and the delivery engine.
const INBOUND_CAPACITY: usize = 1024;

struct RunningBridge {
    plan: BridgePlan,
    config: watch::Sender<EndpointConfig>,
    handle: Arc<EndpointHandle>,
    forward: JoinHandle<()>,
    /// On a `rabbitmq` channel: the consumer of its queue of published
    /// messages (endpoint messages go to the broker too).
    outbound: Option<DurableConsumer>,
}

#[derive(Default)]
struct State {
    plan: Plan,
    bridges: HashMap<ObjectKey, RunningBridge>,
    /// Delivery followers of `memory` channels.
    followed: HashMap<ChannelKey, JoinHandle<()>>,
    /// Consumers of the backlogs of Subscriptions of `rabbitmq` channels.
    backlogs: HashMap<ObjectKey, DurableConsumer>,
    /// Per `rabbitmq` channel, what MQTT and AMQP clients publish, on its
    /// way to the WebSocket clients.
    remote_listeners: HashMap<ChannelKey, wsbridge_broker::ConsumerHandle>,
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
    /// The broker did not confirm the message of a `rabbitmq` channel (503):
    /// it was not accepted.
    #[error("{0}; the message was not accepted, retry later")]
    Broker(#[from] wsbridge_broker::PublishError),
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
    /// The broker of `rabbitmq` channels, when one is configured.
    durable: Option<Arc<Durable>>,
    /// Each Bridge's token by the source of its messages: stamped again on
    /// endpoint messages that come back from the broker (which never holds it).
    tokens: Arc<RwLock<HashMap<String, SecretString>>>,
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
            durable: None,
            tokens: Arc::default(),
            state: Mutex::new(State::default()),
        }
    }

    /// The same runtime, with `rabbitmq` channels on `durable`'s broker.
    pub fn with_broker(mut self, durable: Arc<Durable>) -> Self {
        self.durable = Some(durable);
        self
    }

    /// The broker of `rabbitmq` channels, when one is configured.
    pub fn broker(&self) -> Option<&Arc<Durable>> {
        self.durable.as_ref()
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

    /// What anonymous clients of the broker may do on `channel`; `None`
    /// when it is no `rabbitmq` channel here.
    pub fn anonymous_access(&self, channel: &ChannelKey) -> Option<crate::auth::AnonymousAccess> {
        let state = self.lock();
        let plan = state.plan.channels.get(channel).filter(|c| c.durable())?;
        Some(crate::auth::AnonymousAccess {
            subscribe: plan.allow_anonymous_subscribe,
            publish: plan.info.allow_anonymous_publish,
        })
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
            |k| {
                self.index.delete_channel(k);
                // Its remote clients hear that it is gone (they would
                // otherwise wait on a channel that no longer carries anything).
                self.clients.close_channel(k, FeedEnd::ChannelDeleted);
            },
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
                plan.bridges.get(*k).is_none_or(|p| {
                    p.channel != running.plan.channel
                        || plan.durable(&p.channel) != running.outbound.is_some()
                })
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
                    let running = self.start_bridge(key, bridge, plan.durable(&bridge.channel));
                    state.bridges.insert(key.clone(), running);
                }
            }
        }
        self.set_tokens(&plan);

        // Every memory channel that is mentioned gets a delivery follower;
        // a rabbitmq channel's Subscriptions are fed by their backlogs.
        let mentioned: HashSet<ChannelKey> = plan
            .channels
            .keys()
            .cloned()
            .chain(plan.subscriptions.iter().map(|(k, s)| k.sibling(&s.channel)))
            .chain(plan.bridges.values().map(|b| b.channel.clone()))
            .filter(|channel| !plan.durable(channel))
            .collect();
        state.followed.retain(|channel, task| {
            let keep = mentioned.contains(channel);
            if !keep {
                task.abort();
                self.engine.set_subscribers(channel, Vec::new());
            }
            keep
        });
        self.sync_backlogs(&mut state, &plan);
        self.sync_remote_listeners(&mut state, &plan);
        for channel in mentioned {
            state
                .followed
                .entry(channel.clone())
                .or_insert_with(|| self.engine.follow(self.index.watch(&channel)));
        }
        state.plan = plan;
    }

    /// Starts or stops listening to each `rabbitmq` channel's remote
    /// publishes (MQTT, AMQP) for its WebSocket clients, as `plan` says.
    fn sync_remote_listeners(&self, state: &mut State, plan: &Plan) {
        let mut running = std::mem::take(&mut state.remote_listeners);
        if let Some(durable) = &self.durable {
            for key in plan.channels.keys().filter(|k| plan.durable(k)) {
                let listener = running
                    .remove(key)
                    .unwrap_or_else(|| durable.listen_remote(key, self.clients.clone()));
                state.remote_listeners.insert(key.clone(), listener);
            }
        }
    }

    /// Starts, keeps or stops the consumer of each backlog of a `rabbitmq`
    /// channel's Subscription, as `plan` says.
    fn sync_backlogs(&self, state: &mut State, plan: &Plan) {
        let mut running = std::mem::take(&mut state.backlogs);
        if let Some(durable) = &self.durable {
            for (key, info) in &plan.subscriptions {
                let channel = key.sibling(&info.channel);
                if !plan.durable(&channel) {
                    continue;
                }
                let routes = self.index.routes(&channel);
                let id = key.to_string();
                let Some(subscriber) = routes.subscribers.iter().find(|s| s.id == id) else {
                    continue;
                };
                let backlog = plan.backlogs.get(key).copied().unwrap_or_default();
                let consumer = match running.remove(key) {
                    Some(consumer) if consumer.matches(&channel, subscriber, backlog) => {
                        if let Some(engine_key) = consumer.engine_key() {
                            self.engine.set_subscribers(&engine_key, vec![subscriber.clone()]);
                        }
                        consumer
                    }
                    old => {
                        if let Some(old) = old {
                            self.stop_backlog(&old);
                        }
                        info!(subscription = %key, channel = %channel, "consuming the subscription's backlog from the broker");
                        durable.consume_subscription(
                            &channel,
                            key,
                            subscriber,
                            backlog,
                            &self.engine,
                            self.stamp(),
                        )
                    }
                };
                state.backlogs.insert(key.clone(), consumer);
            }
        }
        for (key, old) in running {
            info!(subscription = %key, "subscription removed; no longer consuming its backlog");
            self.stop_backlog(&old);
        }
    }

    /// Stops delivering what `consumer` handed in (it stops when dropped).
    fn stop_backlog(&self, consumer: &DurableConsumer) {
        if let Some(engine_key) = consumer.engine_key() {
            self.engine.set_subscribers(&engine_key, Vec::new());
        }
        if let Some(durable) = &self.durable {
            durable.metrics().remove_queue(consumer.queue());
        }
    }

    /// Adds the Bridge's token to an endpoint message that came back from
    /// the broker.
    fn stamp(&self) -> impl Fn(Arc<Message>) -> Arc<Message> + Send + Sync + 'static {
        let tokens = self.tokens.clone();
        move |msg: Arc<Message>| {
            if msg.origin() != Origin::Endpoint {
                return msg;
            }
            let tokens = tokens.read().unwrap_or_else(|p| p.into_inner());
            match tokens.get(msg.source()) {
                Some(token) => Arc::new((*msg).clone().with_subscriber_token(Some(token))),
                None => msg,
            }
        }
    }

    fn set_tokens(&self, plan: &Plan) {
        let tokens = plan
            .bridges
            .values()
            .filter_map(|b| {
                let token = b.config.subscriber_token.clone()?;
                Some((b.config.inbound_source.clone(), token))
            })
            .collect();
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = tokens;
    }

    fn start_bridge(&self, key: &ObjectKey, bridge: &BridgePlan, durable: bool) -> RunningBridge {
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
        let handle = Arc::new(handle);
        let engine = self.engine.clone();
        let clients = self.clients.clone();
        let channel = bridge.channel.clone();
        let broker = self.durable.clone().filter(|_| durable);
        let outbound = broker.as_ref().map(|broker| {
            broker.consume_bridge(&channel, key, Arc::downgrade(&handle), self.metrics.clone())
        });
        // Endpoint messages go to the channel's subscribers and remote
        // clients only, never back out to an endpoint: on a rabbitmq channel
        // through the broker, each confirmed before the next.
        let forward = match broker {
            Some(broker) => {
                let metrics = self.metrics.clone();
                let name = key.to_string();
                tokio::spawn(async move {
                    let done = |msg: &Arc<Message>, result| match result {
                        Ok(()) => {
                            clients.broadcast(&channel, msg);
                        }
                        Err(e) => {
                            metrics.drop_endpoint(&name, "broker_unavailable");
                            debug!(bridge = %name, error = %e, "endpoint message not confirmed by the broker; dropped");
                        }
                    };
                    broker.publish_all(&channel, inbound_rx, done).await;
                })
            }
            None => tokio::spawn(async move {
                while let Some(msg) = inbound_rx.recv().await {
                    clients.broadcast(&channel, &msg);
                    engine.dispatch(&channel, msg);
                }
            }),
        };
        RunningBridge {
            plan: bridge.clone(),
            config: config_tx,
            handle,
            forward,
            outbound,
        }
    }

    /// Whether the broker and every consumer of it are up, when `rabbitmq`
    /// channels are configured (`Err` says why not); updates the broker
    /// metrics.
    pub fn broker_ready(&self) -> Result<(), String> {
        let Some(durable) = &self.durable else {
            return Ok(());
        };
        let state = self.lock();
        durable.ready(
            state
                .backlogs
                .values()
                .chain(state.bridges.values().filter_map(|b| b.outbound.as_ref())),
        )
    }

    /// The queues consumed from the broker (for backlog metrics).
    pub fn broker_queues(&self) -> Vec<String> {
        let state = self.lock();
        state
            .backlogs
            .values()
            .chain(state.bridges.values().filter_map(|b| b.outbound.as_ref()))
            .map(|c| c.queue().to_string())
            .collect()
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
        let routes = self.routes_for(channel, &payload)?;
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
        let msg = published_message(channel, payload, record);
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
        self.count_published(channel);
        Ok(Published {
            id: msg.id().to_string(),
            subscribers: report.subscribers,
            endpoints: handles.len(),
        })
    }

    /// Publishes on `channel` whatever its backend: [`Runtime::publish_recorded`]
    /// on a `memory` channel; on a `rabbitmq` channel, to the broker, accepted
    /// only once it confirmed the message (its Subscriptions' backlogs and
    /// Bridges' queues then hold it), refused when it did not.
    pub async fn publish_any(
        &self,
        channel: &ChannelKey,
        payload: Payload,
        record: &mut Publication,
    ) -> Result<Published, PublishError> {
        let durable = self.durable.clone().filter(|_| self.lock().plan.durable(channel));
        let Some(durable) = durable else {
            return self.publish_recorded(channel, payload, record);
        };
        let routes = self.routes_for(channel, &payload)?;
        let msg = published_message(channel, payload, record);
        if record.dispatched {
            self.recent.skipped_subscribers();
            return Ok(Published {
                id: msg.id().to_string(),
                subscribers: 0,
                endpoints: 0,
            });
        }
        durable.publish(channel, &msg).await?;
        record.dispatched = true;
        self.clients.broadcast(channel, &msg);
        self.count_published(channel);
        Ok(Published {
            id: msg.id().to_string(),
            subscribers: routes.subscribers.len(),
            endpoints: routes.bridges.len(),
        })
    }

    /// The routes of `channel`, when it exists and takes `payload`.
    fn routes_for(
        &self,
        channel: &ChannelKey,
        payload: &Payload,
    ) -> Result<Arc<ChannelRoutes>, PublishError> {
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
        Ok(routes)
    }

    fn count_published(&self, channel: &ChannelKey) {
        self.metrics
            .published
            .get_or_create(&ChannelLabels {
                channel: channel.to_string(),
            })
            .inc();
    }

    /// Delivery counts since start.
    pub fn stats(&self) -> DeliveryStats {
        self.engine.stats()
    }

    /// Stops every endpoint connection, then lets queued deliveries finish
    /// within `drain` (what is left is counted as dropped).
    pub async fn shutdown(&self, drain: Duration) -> ShutdownReport {
        // Consumers first: what they hold unacknowledged goes back to the
        // broker's queues (delivered again, at least once, after a restart).
        let backlogs: Vec<DurableConsumer> = self.lock().backlogs.drain().map(|(_, c)| c).collect();
        drop(backlogs);
        let listeners: Vec<_> = self.lock().remote_listeners.drain().collect();
        drop(listeners);
        let bridges: Vec<(ObjectKey, RunningBridge)> = self.lock().bridges.drain().collect();
        for (key, running) in bridges {
            let RunningBridge {
                handle,
                forward,
                outbound,
                ..
            } = running;
            drop(outbound);
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

/// The message of a publish on `channel`, with the id of its first attempt
/// (`record`) when it is a retry.
fn published_message(channel: &ChannelKey, payload: Payload, record: &mut Publication) -> Arc<Message> {
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
    msg
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
