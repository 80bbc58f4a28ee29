//! `wsbridge gateway`: the stateless front door for publishers and remote
//! clients.
//!
//! It follows Channels, Bridges and Subscriptions from the API server into a
//! routing index (caches, not a request per publish). A publish is checked
//! (anonymous channel, or a token allowed to `publish`), sent out through
//! every bridge of the channel via its worker's `POST /v1/send`, then
//! broadcast to the channel's subscribers by the gateway's own delivery
//! engine. WebSocket clients connect at the same address, or multiplex a
//! namespace's channels at `/ws/{namespace}` ([`remote`]). Several replicas
//! can run side by side: they share nothing.
//!
//! A Channel with `backend: rabbitmq` goes through the installation's
//! broker instead ([`GatewayOptions::broker`], a [`Durable`] of role
//! `gateway`): a publish is written to the channel's exchange with
//! publisher confirms and answered `202` only once the broker confirmed it
//! (the Subscriptions' backlogs and the Bridges' queues then hold it; the
//! dispatcher and the workers take it from there), `503 BrokerUnavailable`
//! when it did not, `503 NoBroker` when this gateway has no broker. Its
//! WebSocket clients are served from a queue of this replica's own (see
//! [`remote`]).
//!
//! The same listener serves RabbitMQ's HTTP auth backend at `/auth/*`
//! ([`broker_auth`]): MQTT and AMQP clients of the broker log in with a
//! Kubernetes token (or anonymously) and read or write a `rabbitmq`
//! Channel as RBAC (or the Channel's flags) allows.
#![forbid(unsafe_code)]

pub mod access;
mod broker_auth;
mod metrics;
mod publish;
mod remote;
mod send_key;
mod signing;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use kube::runtime::watcher;
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use tokio::task::{JoinHandle, JoinSet};

use access::{Access, AccessOptions};
use wsbridge_api::{Bridge, Channel, ChannelBackend, Subscription, conditions};
use wsbridge_broker::{BrokerMetrics, BrokerState, BrokerUrl, ConsumerHandle, Durable};
use wsbridge_core::{ChannelKey, ObjectKey};
use wsbridge_dataplane::DataplaneMetrics;
use wsbridge_dataplane::budget::queue_budget;
use wsbridge_dataplane::clients::{ClientLimits, FeedEnd, RemoteClients};
use wsbridge_dataplane::delivery::{
    DEFAULT_DEDUP_BYTES, DEFAULT_DEDUP_WINDOW, DeliveryEngine, EngineConfig, HttpSender, RecentPublishes,
};
use wsbridge_dataplane::routing::RoutingIndex;
use wsbridge_http::ops::{self, Readiness};
use wsbridge_http::websocket::{ClientKeepalive, Connections};
use wsbridge_k8s::follow::{Change, follow, key_of};
use wsbridge_translate as translate;

/// What `wsbridge gateway` needs.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// Address of the HTTP server (publish path, WebSocket clients,
    /// RabbitMQ's auth backend at `/auth/*`, probes, metrics).
    pub listen: SocketAddr,
    /// Only this namespace's channels; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Token and access review caching.
    pub access: AccessOptions,
    /// Time limit of one send to a bridge's worker.
    pub send_timeout: Duration,
    /// How long in-flight deliveries may take at shutdown.
    pub drain: Duration,
    /// Where deliveries and dead-letters may go. Sends to workers use the
    /// built-in policy only (worker addresses are pod IPs).
    pub destinations: Arc<wsbridge_dataplane::DestinationPolicy>,
    /// The memory the gateway may use; queued messages take half of it
    /// (default: the pod's limit, read from its cgroup).
    pub memory_limit: Option<u64>,
    /// The installation key each Bridge's send credential is derived from
    /// (the controller's Secret, mounted); read again when it changes.
    /// `None`: sends carry no credential and every worker refuses them.
    pub send_key_file: Option<std::path::PathBuf>,
    /// The broker of `backend: rabbitmq` Channels. `None`: publishes and
    /// WebSocket clients on such a Channel get `503 NoBroker`.
    pub broker: Option<BrokerUrl>,
    /// The controller's copy of the signing secrets (its Secret, mounted):
    /// deliveries to a signed Subscription are signed with its key, and
    /// wait for it. `None`: signed Subscriptions get nothing from the
    /// gateway.
    pub delivery_keys_dir: Option<std::path::PathBuf>,
}

/// What a publish needs of a Channel besides its routes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChannelFacts {
    pub max_message_bytes: usize,
    /// `allowAnonymousPublish`.
    pub allow_anonymous_publish: bool,
    /// `allowAnonymousSubscribe`.
    pub allow_anonymous_subscribe: bool,
    /// Bridges the controller counted on the Channel's status: a publish
    /// waits (503) while the gateway has seen fewer, rather than silently
    /// skipping an endpoint it has not heard of yet.
    pub bridges: usize,
    /// `backend: rabbitmq`: publishes go to the broker, remote clients are
    /// served from it.
    pub durable: bool,
}

/// How a bridge can be reached right now (from its status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BridgePath {
    pub address: Option<http::Uri>,
    pub connected: bool,
    /// The Bridge's UID, which its send credential is derived from.
    pub uid: Option<String>,
}

/// The caches a publish reads.
pub(crate) struct GatewayState {
    pub index: Arc<RoutingIndex>,
    pub channels: RwLock<HashMap<ChannelKey, ChannelFacts>>,
    pub paths: RwLock<HashMap<ObjectKey, BridgePath>>,
    pub engine: Arc<DeliveryEngine>,
    pub access: Access,
    pub http: HttpSender,
    pub send_timeout: Duration,
    /// The installation key of the workers' send credentials.
    pub send_keys: send_key::SendKeys,
    pub dataplane: Arc<DataplaneMetrics>,
    pub metrics: metrics::GatewayMetrics,
    /// Keys of recent publishes, so that a retried one is not sent twice.
    pub recent: RecentPublishes,
    /// The broker of `rabbitmq` channels, when one is configured.
    pub durable: Option<Arc<Durable>>,
    /// This replica's WebSocket clients (of `rabbitmq` channels).
    pub clients: Arc<RemoteClients>,
    /// Per `rabbitmq` channel with clients here: the listener of
    /// everything it carries, feeding `clients`.
    pub listeners: Mutex<HashMap<ChannelKey, ConsumerHandle>>,
    /// This replica's name in its listeners' queue names (its pod).
    pub replica: String,
    /// The signing keys of signed Subscriptions.
    signing: Arc<signing::Signing>,
    followers: Mutex<HashMap<ChannelKey, JoinHandle<()>>>,
}

impl GatewayState {
    /// Delivery follows a channel's subscribers from the moment it exists.
    fn follow_channel(&self, key: &ChannelKey) {
        let mut followers = self.followers.lock().expect("followers lock");
        followers
            .entry(key.clone())
            .or_insert_with(|| self.engine.follow(self.index.watch(key)));
    }

    /// Whether `channel` is known and `backend: rabbitmq`.
    pub(crate) fn is_durable(&self, channel: &ChannelKey) -> bool {
        self.channels
            .read()
            .ok()
            .and_then(|c| c.get(channel).map(|f| f.durable))
            .unwrap_or(false)
    }

    /// Listens to `channel` on the broker unless it does already (called
    /// with a client of it joined).
    pub(crate) fn listen(&self, durable: &Durable, channel: &ChannelKey) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        listeners
            .entry(channel.clone())
            .or_insert_with(|| durable.listen_channel(channel, &self.replica, self.clients.clone()));
    }

    /// Stops the listeners of channels without clients here (or no longer
    /// `rabbitmq`: deleted, or switched to `memory`), so that a replica
    /// holds a queue only where someone reads it, and starts one for a
    /// `rabbitmq` channel whose clients have none (the channel was deleted
    /// and created again under them); updates the broker metrics. Under
    /// the listeners' lock, as [`GatewayState::listen`] is: a client that
    /// joins meanwhile is counted before the check.
    fn sweep_listeners(&self) {
        let Some(durable) = &self.durable else {
            return;
        };
        durable.metrics().observe(durable.broker());
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let orphaned: Vec<ChannelKey> = self
            .channels
            .read()
            .map(|channels| {
                channels
                    .iter()
                    .filter(|(key, facts)| {
                        facts.durable && !listeners.contains_key(*key) && self.clients.count(key) > 0
                    })
                    .map(|(key, _)| key.clone())
                    .collect()
            })
            .unwrap_or_default();
        for channel in orphaned {
            tracing::debug!(%channel, "clients without a listener: listening on the broker again");
            let listener = durable.listen_channel(&channel, &self.replica, self.clients.clone());
            listeners.insert(channel, listener);
        }
        listeners.retain(|channel, listener| {
            // The queue's name without this replica's suffix (the pod is
            // the target's own label): one series per channel.
            let queue = format!("wsbridge.gateway.{}.{}", channel.namespace, channel.name);
            let keep = self.clients.count(channel) > 0 && self.is_durable(channel);
            if keep {
                let consuming = matches!(
                    listener.state(),
                    wsbridge_broker::consumer::ConsumerState::Consuming { .. }
                );
                durable.metrics().set_consuming(&queue, consuming);
            } else {
                durable.metrics().remove_queue(&queue);
                tracing::debug!(%channel, "no clients here any more: stopped listening on the broker");
            }
            keep
        });
    }

    fn forget_channel(&self, key: &ChannelKey) {
        if let Some(f) = self.followers.lock().expect("followers lock").remove(key) {
            f.abort();
        }
        self.engine.set_subscribers(key, Vec::new());
    }
}

/// A running gateway (the library form, used by tests and `run`).
pub struct Gateway {
    shared: Arc<GatewayState>,
    server: JoinHandle<std::io::Result<()>>,
    tasks: JoinSet<()>,
    stop: tokio::sync::watch::Sender<bool>,
    drain: Duration,
    /// The bound HTTP address.
    pub addr: SocketAddr,
}

/// Runs the gateway until SIGINT/SIGTERM, then drains.
pub async fn run(options: GatewayOptions, client: Client) -> anyhow::Result<()> {
    let shutdown = ops::shutdown_signal();
    let gateway = Gateway::start(options, client).await?;
    shutdown.await;
    tracing::info!("shutting down");
    gateway.shutdown().await;
    Ok(())
}

impl Gateway {
    pub async fn start(options: GatewayOptions, client: Client) -> anyhow::Result<Self> {
        let mut registry = Registry::default();
        let dataplane = Arc::new(DataplaneMetrics::new(&mut registry));
        let metrics = metrics::GatewayMetrics::new(&mut registry);
        let access_metrics = metrics::AccessMetrics::new(&mut registry);
        let broker_auth_metrics = metrics::BrokerAuthMetrics::new(&mut registry);
        let recent = RecentPublishes::new(DEFAULT_DEDUP_WINDOW, DEFAULT_DEDUP_BYTES, &mut registry);
        let clients = RemoteClients::registered(ClientLimits::default(), &mut registry);
        let durable = options.broker.clone().map(|url| {
            tracing::info!(broker = %url, "rabbitmq channels go through the broker");
            Durable::connect(url, BrokerMetrics::registered(&mut registry), "gateway")
        });
        let shared = Arc::new(GatewayState {
            index: Arc::new(RoutingIndex::default()),
            channels: RwLock::default(),
            paths: RwLock::default(),
            engine: Arc::new(DeliveryEngine::new(
                EngineConfig {
                    destinations: options.destinations.clone(),
                    budget: dataplane.memory_budget(queue_budget(options.memory_limit)),
                    ..EngineConfig::default()
                },
                dataplane.clone(),
            )),
            access: Access::new(client.clone(), options.access.clone(), access_metrics),
            http: HttpSender::new(),
            send_timeout: options.send_timeout,
            send_keys: send_key::SendKeys::new(options.send_key_file.clone()),
            dataplane,
            metrics,
            recent,
            durable,
            clients,
            listeners: Mutex::default(),
            replica: replica_name(),
            signing: Arc::new(signing::Signing::new(
                wsbridge_dataplane::delivery::delivery_keys::DeliveryKeys::follow(
                    options.delivery_keys_dir.clone(),
                ),
            )),
            followers: Mutex::default(),
        });
        let ready = Readiness::default();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let hub = Arc::new(remote::GatewayHub {
            shared: shared.clone(),
            connections: Connections {
                keepalive: ClientKeepalive::default(),
                stop: stopped.clone(),
            },
        });
        let broker_auth = Arc::new(broker_auth::BrokerAuth::new(
            shared.clone(),
            options
                .broker
                .as_ref()
                .map_or_else(|| "/".to_string(), BrokerUrl::vhost),
            options.access.capacity,
            broker_auth_metrics,
        ));
        let router = ops::router(Arc::new(registry), ready.clone())
            .merge(remote::router(hub))
            .merge(broker_auth::router(broker_auth));
        let mut http_stop = stopped.clone();
        let (addr, server) = ops::serve(options.listen, router, async move {
            let _ = http_stop.wait_for(|s| *s).await;
        })
        .await?;
        tracing::info!(%addr, "gateway listening");

        let mut tasks = JoinSet::new();
        let synced = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let mark = |bit: u8| {
            let synced = synced.clone();
            let ready = ready.clone();
            move || {
                if synced.fetch_or(bit, std::sync::atomic::Ordering::Relaxed) | bit == 0b111 {
                    ready.set(true);
                }
            }
        };

        let s = shared.clone();
        tasks.spawn(follow(
            scoped::<Channel>(&client, options.namespace.as_deref()),
            watcher::Config::default(),
            move |change| match change {
                Change::Applied(c) => {
                    let key = key_of(c);
                    match translate::channel_info(&key.namespace, &c.spec) {
                        Ok(info) => {
                            let facts = ChannelFacts {
                                max_message_bytes: translate::channel_max_message_bytes(&c.spec),
                                allow_anonymous_publish: c.spec.allow_anonymous_publish,
                                allow_anonymous_subscribe: c.spec.allow_anonymous_subscribe,
                                bridges: c
                                    .status
                                    .as_ref()
                                    .map_or(0, |st| usize::try_from(st.bridges).unwrap_or(0)),
                                durable: c.spec.backend() == ChannelBackend::Rabbitmq,
                            };
                            let was = s
                                .channels
                                .write()
                                .expect("channels lock")
                                .insert(key.clone(), facts);
                            if was.is_some_and(|was| was.durable) && !facts.durable {
                                // Its remote clients are served no more.
                                s.clients.close_channel(&key, FeedEnd::ChannelNotShared);
                            }
                            s.index.apply_channel(key.clone(), info);
                            s.follow_channel(&key);
                        }
                        Err(e) => tracing::warn!(channel = %key, error = %e, "ignoring an unusable Channel"),
                    }
                }
                Change::Deleted(key) => {
                    s.channels.write().expect("channels lock").remove(key);
                    s.clients.close_channel(key, FeedEnd::ChannelDeleted);
                    s.index.delete_channel(key);
                    s.forget_channel(key);
                }
            },
            mark(0b001),
        ));
        tasks.spawn(shared.signing.clone().follow_keys(shared.index.clone()));
        let s = shared.clone();
        tasks.spawn(follow(
            scoped::<Subscription>(&client, options.namespace.as_deref()),
            watcher::Config::default(),
            move |change| match change {
                Change::Applied(sub) => s.signing.apply(&s.index, key_of(sub), &sub.spec),
                Change::Deleted(key) => s.signing.delete(&s.index, key),
            },
            mark(0b010),
        ));
        let s = shared.clone();
        tasks.spawn(follow(
            scoped::<Bridge>(&client, options.namespace.as_deref()),
            watcher::Config::default(),
            move |change| match change {
                Change::Applied(b) => {
                    let key = key_of(b);
                    s.index.apply_bridge(key.clone(), translate::bridge_info(&b.spec));
                    s.paths.write().expect("paths lock").insert(key, bridge_path(b));
                }
                Change::Deleted(key) => {
                    s.index.delete_bridge(key);
                    s.paths.write().expect("paths lock").remove(key);
                }
            },
            mark(0b100),
        ));
        if shared.durable.is_some() {
            tasks.spawn(follow_broker(shared.clone()));
        }
        Ok(Self {
            shared,
            server,
            tasks,
            stop,
            drain: options.drain,
            addr,
        })
    }

    /// Stops serving and drains deliveries. Publishes in flight finish
    /// first: one answered 202 after the delivery engine closed would reach
    /// no subscriber.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if !ops::join_or_abort(&mut self.server, self.drain / 2).await {
            tracing::warn!("publishes still in flight after {:?}; closing", self.drain / 2);
        }
        // Their queues go with their consumers.
        self.shared
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let report = self.shared.engine.shutdown(self.drain).await;
        tracing::info!(?report, "deliveries drained");
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Every second: the broker's state into the metrics and the log, and the
/// listeners of channels without clients here stopped.
///
/// The broker's state does not enter `/readyz`, by design: a gateway
/// without its broker still serves every `memory` channel, its HTTP
/// subscribers and bridges, and answers each `rabbitmq` publish with a
/// clear `503 BrokerUnavailable` that a publisher retries. Taking every
/// replica out of its Service on a broker outage would turn that into
/// connection errors for everyone. The state is in
/// `wsbridge_broker_connected` (and `wsbridge_broker_connections`, which
/// counts reconnects) for alerts, and in the log on each change.
async fn follow_broker(shared: Arc<GatewayState>) {
    let Some(durable) = shared.durable.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut was_connected = None;
    loop {
        tick.tick().await;
        let state = durable.broker().state();
        let connected = state.is_connected();
        if was_connected != Some(connected) {
            match &state {
                BrokerState::Connected { generation } => {
                    tracing::info!(broker = %durable.broker().url(), generation, "broker connected: rabbitmq channels accept publishes")
                }
                BrokerState::Connecting => {}
                BrokerState::Disconnected { reason, .. } => {
                    tracing::warn!(broker = %durable.broker().url(), %reason, "broker unavailable: publishes on rabbitmq channels get 503 until it is back; memory channels are unaffected")
                }
            }
            if !matches!(state, BrokerState::Connecting) {
                was_connected = Some(connected);
            }
        }
        shared.sweep_listeners();
    }
}

/// This replica's name in its queues: the pod's (`POD_NAME`, set by the
/// chart), else the process id.
fn replica_name() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .unwrap_or_else(|| format!("pid{}", std::process::id()))
}

/// An API for one namespace, or all.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Where a Bridge's worker takes sends, from what the worker wrote.
fn bridge_path(bridge: &Bridge) -> BridgePath {
    let status = bridge.status.as_ref();
    BridgePath {
        address: status
            .and_then(|s| s.address.as_ref())
            .and_then(|a| a.url.parse().ok()),
        connected: status.is_some_and(|s| conditions::is_true(&s.conditions, conditions::CONNECTED)),
        uid: bridge.metadata.uid.clone(),
    }
}
