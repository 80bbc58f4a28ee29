//! `wsbridge worker --bridge NAMESPACE/NAME`: the Kubernetes side of one
//! bridge's data plane.
//!
//! It reads its Bridge, Endpoint and Channel and follows the channel's
//! Subscriptions live; secret values come from its environment (see [`env`]).
//! A *session* runs for one Bridge spec and the backend of its Channel:
//! when the spec changes (another channel or endpoint) or the Channel moves
//! between `memory` and `rabbitmq`, the session is replaced in-process,
//! without a pod restart. Endpoint changes reconfigure the live connection.
//!
//! On a `memory` Channel the worker delivers endpoint messages to the
//! channel's Subscriptions itself. On a `rabbitmq` Channel it publishes
//! them to the broker with confirms (the dispatchers deliver each
//! Subscription's backlog), and consumes the Bridge's queue of published
//! messages out to its endpoint, so a publish accepted while the worker was
//! away is sent once it is back.
#![forbid(unsafe_code)]

pub mod drop_events;
pub mod env;
mod send;
pub mod status;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::Reporter;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use send::{SendSlot, SendTarget};
use wsbridge_api::{Bridge, BridgeSpec, Channel, ChannelBackend, Endpoint, EndpointSpec, Subscription};
use wsbridge_broker::{BrokerMetrics, BrokerUrl, Durable, DurableConsumer};
use wsbridge_core::{ChannelKey, ObjectKey};
use wsbridge_dataplane::budget::queue_budget;
use wsbridge_dataplane::delivery::{DeliveryEngine, EngineConfig};
use wsbridge_dataplane::endpoint::{ConnectionState, EndpointConfig, EndpointHandle, EndpointOptions};
use wsbridge_dataplane::routing::RoutingIndex;
use wsbridge_dataplane::{DataplaneMetrics, Message};
use wsbridge_http::ops::{self, Readiness};
use wsbridge_k8s::follow::{Change, follow};
use wsbridge_translate as translate;

/// What `wsbridge worker` needs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The Bridge this worker serves.
    pub bridge: ObjectKey,
    /// HTTP listener: ops endpoints and `POST /v1/send`.
    pub listen: SocketAddr,
    /// The publish address written to the Bridge's status
    /// (`http://POD_IP:PORT`); `None` leaves it unset.
    pub advertise: Option<String>,
    /// How long in-flight deliveries may take at shutdown.
    pub drain: Duration,
    /// Where deliveries, dead-letters and the endpoint connection may go.
    pub destinations: Arc<wsbridge_dataplane::DestinationPolicy>,
    /// The memory the worker may use; queued messages take half of it
    /// (default: the pod's limit, read from its cgroup).
    pub memory_limit: Option<u64>,
    /// The broker of a `rabbitmq` Channel (the controller writes it into the
    /// pod of a Bridge on one); `None` on a `memory` Channel.
    pub broker: Option<BrokerUrl>,
}

/// Runs the worker until SIGINT/SIGTERM, then drains.
pub async fn run(options: WorkerOptions, client: Client) -> anyhow::Result<()> {
    let shutdown = ops::shutdown_signal();
    let worker = Worker::start(options, client).await?;
    shutdown.await;
    tracing::info!("shutting down");
    worker.shutdown().await;
    Ok(())
}

/// A running worker (the library form, used by tests and `run`).
pub struct Worker {
    engine: Arc<DeliveryEngine>,
    /// Publishes the Events about subscribers dropping for memory.
    drop_events: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    sessions: tokio::task::JoinHandle<()>,
    /// Keeps `/readyz` in step with the session and the broker.
    readiness: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    drain: Duration,
    /// The bound HTTP address.
    pub addr: SocketAddr,
}

impl Worker {
    /// Binds the listener and starts following the Bridge.
    pub async fn start(options: WorkerOptions, client: Client) -> anyhow::Result<Self> {
        let mut registry = Registry::default();
        let metrics = Arc::new(DataplaneMetrics::new(&mut registry));
        let budget = metrics.memory_budget(queue_budget(options.memory_limit));
        tracing::info!(bytes = budget.limit(), "memory budget for queued messages");
        // Subscribers dropping for memory → Warning Events on the Bridge.
        let (drop_notices, notices) = mpsc::unbounded_channel();
        let (bridge_ref, bridge) = watch::channel(None);
        let drop_events = tokio::spawn(drop_events::report(
            drop_events::BridgeEvents {
                client: client.clone(),
                reporter: Reporter {
                    controller: status::FIELD_MANAGER.into(),
                    instance: std::env::var(wsbridge_api::worker_env::POD_NAME).ok(),
                },
                bridge,
            },
            notices,
            drop_events::MIN_EVENT_INTERVAL,
        ));
        let engine = Arc::new(DeliveryEngine::new(
            EngineConfig {
                destinations: options.destinations.clone(),
                budget: budget.clone(),
                drop_notices: Some(drop_notices),
                ..EngineConfig::default()
            },
            metrics.clone(),
        ));
        // Connecting (in the background) only when the pod has a broker:
        // the controller gives one to the worker of a rabbitmq Channel.
        let durable = options
            .broker
            .clone()
            .map(|url| Durable::connect(url, BrokerMetrics::registered(&mut registry), "worker"));
        let ready = Readiness::default();
        let synced = Readiness::default();
        let slot: SendSlot = Arc::new(RwLock::new(None));
        let on_broker = Arc::new(AtomicBool::new(false));
        let outbound: Outbound = Arc::default();
        let (stop, stopped) = watch::channel(false);

        let credential = send::credential_from_env(|k| std::env::var(k).ok());
        if credential.is_none() {
            tracing::warn!(
                variable = wsbridge_api::worker_env::SEND_CREDENTIAL,
                "no send credential in the environment: every send is refused with 401"
            );
        }
        let router = ops::router(Arc::new(registry), ready.clone()).merge(send::router(
            slot.clone(),
            budget,
            credential,
            on_broker.clone(),
        ));
        let mut http_stop = stopped.clone();
        let (addr, server) = ops::serve(options.listen, router, async move {
            let _ = http_stop.wait_for(|s| *s).await;
        })
        .await?;
        tracing::info!(%addr, bridge = %options.bridge, "worker listening");

        let drain = options.drain;
        let readiness = tokio::spawn(follow_readiness(
            ReadinessInputs {
                synced: synced.clone(),
                durable: durable.clone(),
                on_broker: on_broker.clone(),
                outbound: outbound.clone(),
            },
            ready,
        ));
        let sessions = Sessions {
            client,
            options,
            engine: engine.clone(),
            metrics,
            synced,
            slot,
            bridge_ref: Arc::new(bridge_ref),
            durable,
            on_broker,
            outbound,
        };
        let sessions = tokio::spawn(sessions.run(stopped));
        Ok(Self {
            engine,
            drop_events,
            server,
            sessions,
            readiness,
            stop,
            drain,
            addr,
        })
    }

    /// Stops taking sends, closes the connection (sending what was accepted
    /// for the endpoint first), hands what it read to the delivery engine,
    /// then drains deliveries. In that order: a message that reaches the
    /// engine after it closed would be lost.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        ops::join_or_abort(&mut self.server, Duration::from_secs(5)).await;
        if !ops::join_or_abort(&mut self.sessions, Duration::from_secs(15)).await {
            tracing::warn!("the session did not stop in time");
        }
        self.readiness.abort();
        let report = self.engine.shutdown(self.drain).await;
        tracing::info!(?report, "deliveries drained");
        // A report still waiting for its interval is not made: the metrics
        // have its drops.
        self.drop_events.abort();
    }
}

/// The consumer of the Bridge's queue of published messages (a session on
/// a `rabbitmq` Channel, once its connection exists).
type Outbound = Arc<Mutex<Option<DurableConsumer>>>;

/// The Bridge's Channel as last seen: `None` until the first list,
/// `Some(None)` while it does not exist.
type ChannelView = Option<Option<Channel>>;

/// The backend a session runs for (an absent Channel: `memory`, today's
/// behaviour, which delivers to nobody).
fn backend_of(view: &ChannelView) -> ChannelBackend {
    view.as_ref()
        .and_then(Option::as_ref)
        .map_or(ChannelBackend::Memory, |c| c.spec.backend())
}

/// Follows the Channel `name` into `view`; only spec changes are news.
async fn follow_channel(api: Api<Channel>, name: String, view: watch::Sender<ChannelView>) {
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    follow(
        api,
        cfg,
        |change| match change {
            Change::Applied(c) => {
                view.send_if_modified(|cur| {
                    let changed = cur.as_ref().and_then(Option::as_ref).map(|c| &c.spec) != Some(&c.spec);
                    if changed {
                        *cur = Some(Some(c.clone()));
                    }
                    changed
                });
            }
            Change::Deleted(_) => {
                view.send_replace(Some(None));
            }
        },
        || {
            view.send_if_modified(|cur| {
                let first = cur.is_none();
                if first {
                    *cur = Some(None);
                }
                first
            });
        },
    )
    .await
}

struct Sessions {
    client: Client,
    options: WorkerOptions,
    engine: Arc<DeliveryEngine>,
    metrics: Arc<DataplaneMetrics>,
    /// The session knows its Channel (and, on `memory`, its Subscriptions).
    synced: Readiness,
    slot: SendSlot,
    /// The Bridge (with its UID) that Events are about.
    bridge_ref: Arc<watch::Sender<Option<ObjectReference>>>,
    /// The broker, when the pod has its URL.
    durable: Option<Arc<Durable>>,
    /// The current session's Channel is `rabbitmq`.
    on_broker: Arc<AtomicBool>,
    outbound: Outbound,
}

/// Why the session loop ended a session.
enum Next {
    Restart(&'static str),
    Exit,
}

impl Sessions {
    /// Follows the Bridge; runs one session per spec.
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let ns = self.options.bridge.namespace.clone();
        let name = self.options.bridge.name.clone();
        let bridges: Api<Bridge> = Api::namespaced(self.client.clone(), &ns);
        let (spec_tx, mut spec_rx) = watch::channel::<Option<(BridgeSpec, Option<i64>)>>(None);
        let by_name = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let bridge_ref = self.bridge_ref.clone();
        let follower = tokio::spawn(follow(
            bridges.clone(),
            by_name,
            move |change| match change {
                // Being deleted: the controller deletes its broker queue
                // once no one consumes it, so the session stops now.
                Change::Applied(b) if b.metadata.deletion_timestamp.is_some() => {
                    spec_tx.send_replace(None);
                }
                Change::Applied(b) => {
                    let reference = Some(b.object_ref(&()));
                    bridge_ref.send_if_modified(|cur| {
                        let changed = *cur != reference;
                        if changed {
                            cur.clone_from(&reference);
                        }
                        changed
                    });
                    let next = Some((b.spec.clone(), b.metadata.generation));
                    spec_tx.send_if_modified(|cur| {
                        let changed = cur.as_ref().map(|c| &c.0) != next.as_ref().map(|n| &n.0);
                        if changed {
                            *cur = next;
                        }
                        changed
                    });
                }
                Change::Deleted(_) => {
                    bridge_ref.send_replace(None);
                    spec_tx.send_replace(None);
                }
            },
            || {},
        ));
        loop {
            let current = spec_rx.borrow_and_update().clone();
            let Some((spec, generation)) = current else {
                tracing::info!(bridge = %self.options.bridge, "waiting for the Bridge to exist");
                self.synced.set(false);
                tokio::select! {
                    changed = spec_rx.changed() => if changed.is_err() { break } else { continue },
                    _ = stopped.wait_for(|s| *s) => break,
                }
            };
            // The Channel's backend decides the session's shape: known first.
            let (view_tx, mut view) = watch::channel::<ChannelView>(None);
            let channel_follower = tokio::spawn(follow_channel(
                Api::namespaced(self.client.clone(), &ns),
                spec.channel.clone(),
                view_tx,
            ));
            let next = tokio::select! {
                known = view.wait_for(Option::is_some) => if known.is_ok() { None } else { Some(Next::Exit) },
                changed = spec_rx.changed() => Some(if changed.is_ok() { Next::Restart("Bridge spec changed") } else { Next::Exit }),
                _ = stopped.wait_for(|s| *s) => Some(Next::Exit),
            };
            let next = match next {
                Some(next) => next,
                None => {
                    let backend = backend_of(&view.borrow());
                    let session = self.start_session(spec, generation, backend, view.clone());
                    let next = tokio::select! {
                        changed = spec_rx.changed() => if changed.is_ok() { Next::Restart("Bridge spec changed") } else { Next::Exit },
                        _ = view.wait_for(|v| backend_of(v) != backend) => Next::Restart("the Channel's backend changed"),
                        _ = stopped.wait_for(|s| *s) => Next::Exit,
                    };
                    session.stop(&self.engine, &self.slot).await;
                    next
                }
            };
            channel_follower.abort();
            match next {
                Next::Exit => break,
                Next::Restart(why) => {
                    tracing::info!(bridge = %self.options.bridge, "{why}; restarting the session")
                }
            }
        }
        follower.abort();
    }

    fn start_session(
        &self,
        spec: BridgeSpec,
        generation: Option<i64>,
        backend: ChannelBackend,
        view: watch::Receiver<ChannelView>,
    ) -> Session {
        let ns = self.options.bridge.namespace.clone();
        let bridge_name = self.options.bridge.name.clone();
        let channel_key = ChannelKey::new(ns.clone(), spec.channel.clone());
        let on_broker = backend == ChannelBackend::Rabbitmq;
        self.on_broker.store(on_broker, Ordering::Relaxed);
        let durable = self.durable.clone().filter(|_| on_broker);
        tracing::info!(bridge = %self.options.bridge, channel = %channel_key, ?backend, "starting the session");

        // Connection state as users see it, also before a connection exists.
        let (state_tx, state_rx) = watch::channel(ConnectionState::Disconnected {
            reason: format!("waiting for Endpoint {}", spec.endpoint),
            retry_in: None,
        });
        let sink = status::BridgeStatusSink {
            api: Api::namespaced(self.client.clone(), &ns),
            bridge: bridge_name.clone(),
        };
        if on_broker && durable.is_none() {
            // Never delivered from memory instead: nothing is connected.
            tracing::warn!(
                bridge = %self.options.bridge,
                variable = wsbridge_api::worker_env::RABBITMQ_URL,
                "the Channel has backend rabbitmq but this pod has no broker URL; not connecting to the endpoint"
            );
            let status = tokio::spawn(status::report_as(
                sink,
                bridge_name,
                generation,
                self.options.advertise.clone(),
                state_rx,
                |state, _| status::no_broker_condition(state),
            ));
            self.synced.set(true);
            return Session {
                tasks: JoinSet::new(),
                dispatcher: tokio::spawn(async {}),
                status,
                state: state_tx,
                channel: channel_key,
                outbound: None,
            };
        }
        let status = tokio::spawn(status::report(
            sink,
            bridge_name.clone(),
            spec.endpoint.clone(),
            generation,
            self.options.advertise.clone(),
            state_rx,
        ));

        let mut tasks = JoinSet::new();
        let state = state_tx.clone();
        // The connection opens only once the subscribers are known: a
        // message read before that would reach nobody. On the broker the
        // Subscriptions are not this worker's business.
        let (routes_ready_tx, routes_ready) = watch::channel(durable.is_some());
        let source = translate::channel_source(&ns, &spec.channel);
        // Endpoint → connection config; the connection starts with the first valid one.
        let (inbound_tx, inbound_rx) = mpsc::channel::<Arc<Message>>(1024);
        tasks.spawn(follow_endpoint(
            Api::namespaced(self.client.clone(), &ns),
            spec.clone(),
            bridge_name.clone(),
            ns.clone(),
            EndpointRuntime {
                metrics: self.metrics.clone(),
                inbound: inbound_tx,
                state: state_tx,
                routes_ready,
                slot: self.slot.clone(),
                source: source.clone(),
                destinations: self.options.destinations.clone(),
                outbound: durable.clone().map(|durable| OutboundQueue {
                    durable,
                    channel: channel_key.clone(),
                    bridge: self.options.bridge.clone(),
                    slot: self.outbound.clone(),
                }),
            },
        ));

        if let Some(durable) = durable {
            // Endpoint messages → the channel's exchange, confirmed; never
            // back out to an endpoint.
            let dispatcher = tokio::spawn(publish_to_broker(
                durable,
                channel_key.clone(),
                inbound_rx,
                self.metrics.clone(),
                source,
            ));
            self.synced.set(true);
            return Session {
                tasks,
                dispatcher,
                status,
                state,
                channel: channel_key,
                outbound: Some(self.outbound.clone()),
            };
        }

        // Endpoint messages → the channel's subscribers. Never back out.
        let engine = self.engine.clone();
        let key = channel_key.clone();
        let mut inbound_rx = inbound_rx;
        let dispatcher = tokio::spawn(async move {
            while let Some(message) = inbound_rx.recv().await {
                engine.dispatch(&key, message);
            }
        });

        // Channel and Subscriptions → routing index → delivery engine.
        let index = Arc::new(RoutingIndex::default());
        let synced = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let routes_ready_tx = Arc::new(routes_ready_tx);
        let mark_synced = |bit: u8| {
            let synced = synced.clone();
            let ready = self.synced.clone();
            let engine = self.engine.clone();
            let index = index.clone();
            let channel = channel_key.clone();
            let routes_ready = routes_ready_tx.clone();
            move || {
                if synced.fetch_or(bit, std::sync::atomic::Ordering::Relaxed) | bit == 0b11 {
                    // Applied here rather than left to the engine's follower
                    // task, so the subscribers exist before the connection opens.
                    let routes = index.routes(&channel);
                    engine.set_subscribers(&channel, routes.subscribers.clone());
                    routes_ready.send_replace(true);
                    ready.set(true);
                }
            }
        };
        tasks.spawn(apply_channel(
            view,
            index.clone(),
            channel_key.clone(),
            mark_synced(0b01),
        ));
        let subscriptions: Api<Subscription> = Api::namespaced(self.client.clone(), &ns);
        let idx = index.clone();
        let cfg = watcher::Config::default().fields(&format!("spec.channel={}", spec.channel));
        let namespace = ns.clone();
        tasks.spawn(follow(
            subscriptions,
            cfg,
            move |change| match change {
                Change::Applied(s) => {
                    let key = wsbridge_k8s::follow::key_of(s);
                    let info = translate::subscription_info(&namespace, &s.spec)
                        .map_err(|e| e.to_string())
                        .and_then(|mut info| {
                            // A signed Subscription is never delivered to unsigned.
                            if let Some(reference) = &s.spec.signing_secret_ref {
                                let name = s.name_any();
                                info.signing =
                                    Some(env::signing_key(&name, reference, |k| std::env::var(k).ok())?);
                            }
                            Ok(info)
                        });
                    match info {
                        Ok(info) => idx.apply_subscription(key, info),
                        Err(e) => {
                            tracing::warn!(subscription = %key, error = %e, "ignoring an unusable Subscription");
                            idx.delete_subscription(&key);
                        }
                    }
                }
                Change::Deleted(key) => idx.delete_subscription(key),
            },
            mark_synced(0b10),
        ));
        let follower = self.engine.follow(index.watch(&channel_key));
        tasks.spawn(async move {
            let _ = follower.await;
        });
        Session {
            tasks,
            dispatcher,
            status,
            state,
            channel: channel_key,
            outbound: None,
        }
    }
}

/// Applies the Channel to `index` on every change, `synced` after the first.
async fn apply_channel(
    mut view: watch::Receiver<ChannelView>,
    index: Arc<RoutingIndex>,
    key: ChannelKey,
    synced: impl FnOnce(),
) {
    let mut synced = Some(synced);
    loop {
        let current = view.borrow_and_update().clone().flatten();
        match current {
            Some(c) => match translate::channel_info(&key.namespace, &c.spec) {
                Ok(info) => index.apply_channel(key.clone(), info),
                Err(e) => tracing::warn!(channel = %key, error = %e, "ignoring an unusable Channel"),
            },
            None => index.delete_channel(&key),
        }
        if let Some(synced) = synced.take() {
            synced();
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}

/// Publishes the endpoint's messages on `channel`'s exchange until the
/// connection is gone, up to [`wsbridge_broker::MAX_UNCONFIRMED`] awaiting
/// their confirm at once; what the broker did not confirm is counted as
/// dropped (and in the broker's publish metrics).
async fn publish_to_broker(
    durable: Arc<Durable>,
    channel: ChannelKey,
    inbound: mpsc::Receiver<Arc<Message>>,
    metrics: Arc<DataplaneMetrics>,
    endpoint: String,
) {
    let done = |msg: &Arc<Message>, result: Result<(), wsbridge_broker::PublishError>| {
        if let Err(e) = result {
            metrics.drop_endpoint(&endpoint, "broker_unavailable");
            tracing::debug!(id = msg.id(), error = %e, "endpoint message not confirmed by the broker; dropped");
        }
    };
    durable.publish_all(&channel, inbound, done).await;
}

/// What `/readyz` is decided from.
struct ReadinessInputs {
    synced: Readiness,
    durable: Option<Arc<Durable>>,
    on_broker: Arc<AtomicBool>,
    outbound: Outbound,
}

impl ReadinessInputs {
    /// Ready once the session knows its Channel and, on a `rabbitmq`
    /// Channel, while the broker is connected and the Bridge's queue is
    /// consumed (`Err` says why not). Updates the broker metrics.
    fn ready(&self) -> Result<(), String> {
        if !self.synced.get() {
            return Err("following the Bridge and its Channel".into());
        }
        if !self.on_broker.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some(durable) = &self.durable else {
            return Err(format!(
                "the Channel has backend rabbitmq but this pod has no broker URL ({})",
                wsbridge_api::worker_env::RABBITMQ_URL
            ));
        };
        let outbound = self.outbound.lock().unwrap_or_else(|p| p.into_inner());
        durable.ready(outbound.iter())
    }
}

/// Keeps `ready` in step with [`ReadinessInputs::ready`], logging each
/// change, and asks the broker how deep the Bridge's queue is now and then
/// (on the side: a slow broker never holds up `/readyz`).
async fn follow_readiness(inputs: ReadinessInputs, ready: Readiness) {
    let mut last: Option<Result<(), String>> = None;
    let mut backlog: Option<tokio::task::JoinHandle<()>> = None;
    for tick in 0u64.. {
        let now = inputs.ready();
        ready.set(now.is_ok());
        if last.as_ref() != Some(&now) {
            match &now {
                Ok(()) => tracing::info!("ready"),
                Err(why) => tracing::warn!(reason = %why, "not ready"),
            }
            last = Some(now);
        }
        if tick.is_multiple_of(20)
            && backlog.as_ref().is_none_or(|t| t.is_finished())
            && let Some(durable) = inputs.durable.clone()
        {
            let queues: Vec<String> = inputs
                .outbound
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|c| c.queue().to_string())
                .collect();
            backlog = Some(tokio::spawn(
                async move { durable.observe_backlogs(queues).await },
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

struct Session {
    tasks: JoinSet<()>,
    /// Endpoint messages → the delivery engine or the broker; ends once the
    /// connection (the last inbound sender) is gone and everything it read
    /// is dispatched (or confirmed).
    dispatcher: tokio::task::JoinHandle<()>,
    /// Writes `Connected`; ends after writing the last state once every
    /// state sender is gone.
    status: tokio::task::JoinHandle<()>,
    state: watch::Sender<ConnectionState>,
    channel: ChannelKey,
    /// On a `rabbitmq` Channel: where the consumer of the Bridge's queue is.
    outbound: Option<Outbound>,
}

impl Session {
    async fn stop(mut self, engine: &DeliveryEngine, slot: &SendSlot) {
        // Nothing more is taken from the Bridge's queue: what the consumer
        // holds unacknowledged goes back to the broker.
        if let Some(outbound) = &self.outbound {
            let consumer = outbound.lock().unwrap_or_else(|p| p.into_inner()).take();
            drop(consumer);
        }
        // Close the connection first: it sends what was accepted for the
        // endpoint, then stops reading.
        let target = slot.write().ok().and_then(|mut s| s.take());
        if let Some(target) = &target
            && !target.handle.close(Duration::from_secs(10)).await
        {
            tracing::warn!("the endpoint connection did not close in time");
        }
        drop(target);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        // The Bridge's status says the worker stopped.
        self.state.send_replace(ConnectionState::Stopped);
        drop(self.state);
        ops::join_or_abort(&mut self.status, Duration::from_secs(5)).await;
        // Everything the connection read reaches the engine (or the broker).
        if !ops::join_or_abort(&mut self.dispatcher, Duration::from_secs(10)).await {
            tracing::warn!("endpoint messages still undispatched; dropping them");
        }
        // Subscribers of a channel this worker no longer serves drain and go.
        engine.set_subscribers(&self.channel, Vec::new());
    }
}

/// What the endpoint follower hands to the connection it starts.
struct EndpointRuntime {
    destinations: Arc<wsbridge_dataplane::DestinationPolicy>,
    metrics: Arc<DataplaneMetrics>,
    inbound: mpsc::Sender<Arc<Message>>,
    state: watch::Sender<ConnectionState>,
    /// Becomes true once the channel's subscribers are applied to the engine.
    routes_ready: watch::Receiver<bool>,
    slot: SendSlot,
    source: String,
    /// On a `rabbitmq` Channel: the Bridge's queue of published messages,
    /// consumed out to the connection once it exists.
    outbound: Option<OutboundQueue>,
}

/// The Bridge's queue of published messages in the broker.
struct OutboundQueue {
    durable: Arc<Durable>,
    channel: ChannelKey,
    bridge: ObjectKey,
    slot: Outbound,
}

/// Follows the Bridge's Endpoint: starts the connection with the first
/// usable spec and reconfigures it on every change.
async fn follow_endpoint(
    api: Api<Endpoint>,
    bridge: BridgeSpec,
    bridge_name: String,
    ns: String,
    rt: EndpointRuntime,
) {
    let (config_tx, config_rx) = watch::channel::<Option<EndpointConfig>>(None);
    let endpoint_name = bridge.endpoint.clone();
    let state = rt.state.clone();
    let cfg = watcher::Config::default().fields(&format!("metadata.name={endpoint_name}"));
    let follower = follow(
        api,
        cfg,
        move |change| match change {
            Change::Applied(e) => match connection_config(&ns, &bridge_name, &e.spec) {
                Ok(config) => {
                    config_tx.send_replace(Some(config));
                }
                Err(e) => {
                    state.send_replace(ConnectionState::Disconnected {
                        reason: e.to_string(),
                        retry_in: None,
                    });
                }
            },
            Change::Deleted(_) => {
                state.send_replace(ConnectionState::Disconnected {
                    reason: format!("Endpoint {endpoint_name} not found"),
                    retry_in: None,
                });
            }
        },
        || {},
    );
    tokio::join!(follower, connect(config_rx, rt));
}

/// The endpoint's spec with the secrets of this pod's environment.
fn connection_config(
    ns: &str,
    bridge: &str,
    spec: &EndpointSpec,
) -> Result<EndpointConfig, translate::TranslateError> {
    let header_names: Vec<String> = spec
        .auth
        .iter()
        .flat_map(|a| a.secret_headers.iter().flatten())
        .map(|(h, _)| h.clone())
        .collect();
    let secrets = env::resolve(&header_names, |k| std::env::var(k).ok());
    translate::endpoint_config(ns, bridge, spec, &secrets)
}

/// Starts the connection with the first config and mirrors its state.
async fn connect(mut configs: watch::Receiver<Option<EndpointConfig>>, mut rt: EndpointRuntime) {
    if rt.routes_ready.wait_for(|ready| *ready).await.is_err() {
        return;
    }
    let Ok(first) = configs.wait_for(Option::is_some).await.map(|c| c.clone()) else {
        return;
    };
    let first = first.expect("waited for Some");
    let (live_tx, live_rx) = watch::channel(first.clone());
    let handle = Arc::new(EndpointHandle::spawn(
        EndpointOptions {
            destinations: rt.destinations.clone(),
            ..EndpointOptions::new(rt.source.clone())
        },
        live_rx,
        rt.inbound,
        rt.metrics.clone(),
    ));
    if let Some(queue) = &rt.outbound {
        // Published messages wait in the broker while the endpoint is not
        // connected, and leave the queue once the connection took them.
        let consumer = queue.durable.consume_bridge(
            &queue.channel,
            &queue.bridge,
            Arc::downgrade(&handle),
            rt.metrics.clone(),
        );
        *queue.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(consumer);
    }
    if let Ok(mut slot) = rt.slot.write() {
        *slot = Some(SendTarget {
            handle: handle.clone(),
            max_message_bytes: first.max_message_bytes,
            source: rt.source.clone(),
        });
    }
    let mut states = handle.state();
    loop {
        rt.state.send_replace(states.borrow_and_update().clone());
        tokio::select! {
            changed = states.changed() => if changed.is_err() { break },
            changed = configs.changed() => {
                if changed.is_err() { break }
                if let Some(config) = configs.borrow_and_update().clone() {
                    if let Ok(mut slot) = rt.slot.write()
                        && let Some(target) = slot.as_mut()
                    {
                        target.max_message_bytes = config.max_message_bytes;
                    }
                    live_tx.send_replace(config);
                }
            }
        }
    }
}
