//! `wsbridge dispatcher`: consumes the backlog of every Subscription of a
//! `rabbitmq` Channel into the delivery engine. Stateless: any number of
//! replicas consume side by side. An ordered Subscription has one active
//! consumer across all of them (single active consumer, one message at a
//! time); an unordered one is spread over every replica, each taking up to
//! `maxInFlight` at once. A message leaves its backlog only once its
//! delivery ended (see `wsbridge_broker::consumer`).
//!
//! It follows Channels, Bridges (which of them name a token) and
//! Subscriptions through the Kubernetes API
//! ([`subscriptions`]), keeps one consumer per Subscription in step with
//! them ([`consumers`]), and serves `/healthz`, `/readyz` and `/metrics`
//! ([`ops`]). It reads no Secrets through the API: a Subscription with a
//! `signingSecretRef` is signed with the controller's copy of its key
//! (the delivery keys Secret, mounted: `--delivery-keys-dir`), and held,
//! its messages left in its backlog, while that key is not there: never
//! delivered unsigned. The same goes for the tokens of a Channel's Bridges,
//! presented with their endpoint messages.
#![forbid(unsafe_code)]

pub mod consumers;
pub mod ops;
pub mod subscriptions;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::watcher;
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use consumers::Consumers;
use ops::{DispatcherMetrics, lock};
use subscriptions::Catalog;
use wsbridge_api::{Bridge, Channel, Subscription};
use wsbridge_broker::{BrokerMetrics, BrokerUrl, Durable};
use wsbridge_dataplane::budget::queue_budget;
use wsbridge_dataplane::delivery::delivery_keys::DeliveryKeys;
use wsbridge_dataplane::delivery::{DeliveryEngine, EngineConfig};
use wsbridge_dataplane::{DataplaneMetrics, DestinationPolicy};
use wsbridge_http::ops::{self as http_ops, Readiness};
use wsbridge_k8s::follow::{Change, follow, key_of};

/// What `wsbridge dispatcher` needs.
#[derive(Clone, Debug)]
pub struct DispatcherOptions {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// Only this namespace's Subscriptions; all namespaces when `None`.
    pub namespace: Option<String>,
    /// The RabbitMQ broker of `rabbitmq` Channels.
    pub broker: BrokerUrl,
    /// Where deliveries and dead-letters may go.
    pub destinations: Arc<DestinationPolicy>,
    /// The memory the dispatcher may use; messages handed to the delivery
    /// engine take half of it (default: the pod's limit, from its cgroup).
    pub memory_limit: Option<u64>,
    /// How long deliveries under way may take to finish at shutdown.
    pub drain: Duration,
    /// The signing keys of signed Subscriptions (the delivery keys
    /// Secret, mounted), read again when they change; `None`: no keys, so
    /// every signed Subscription is held.
    pub delivery_keys_dir: Option<std::path::PathBuf>,
}

/// Runs the dispatcher until SIGINT/SIGTERM, then drains.
pub async fn run(options: DispatcherOptions, client: Client) -> anyhow::Result<()> {
    let shutdown = http_ops::shutdown_signal();
    let dispatcher = Dispatcher::start(options, client).await?;
    shutdown.await;
    tracing::info!("shutting down");
    dispatcher.shutdown().await;
    Ok(())
}

/// A running dispatcher (the library form, used by `run`).
pub struct Dispatcher {
    consumers: Arc<Mutex<Consumers>>,
    engine: Arc<DeliveryEngine>,
    server: JoinHandle<std::io::Result<()>>,
    readiness: JoinHandle<()>,
    followers: JoinSet<()>,
    stop: watch::Sender<bool>,
    drain: Duration,
    /// The bound HTTP address.
    pub addr: SocketAddr,
}

impl Dispatcher {
    /// Connects to the broker, binds the listener and starts following.
    pub async fn start(options: DispatcherOptions, client: Client) -> anyhow::Result<Self> {
        let mut registry = Registry::default();
        let dataplane = Arc::new(DataplaneMetrics::new(&mut registry));
        let broker_metrics = BrokerMetrics::registered(&mut registry);
        let metrics = DispatcherMetrics::registered(&mut registry);
        let budget = dataplane.memory_budget(queue_budget(options.memory_limit));
        tracing::info!(
            bytes = budget.limit(),
            "memory budget for messages being delivered"
        );
        tracing::info!(broker = %options.broker, "connecting to the broker");
        let durable = Durable::connect(options.broker.clone(), broker_metrics, "dispatcher");
        let engine = Arc::new(DeliveryEngine::new(
            EngineConfig {
                destinations: options.destinations.clone(),
                budget,
                ..EngineConfig::default()
            },
            dataplane,
        ));
        let mut keys = DeliveryKeys::follow(options.delivery_keys_dir.clone());
        let consumers = Arc::new(Mutex::new(Consumers::new(
            durable.clone(),
            engine.clone(),
            metrics,
            keys.clone(),
        )));

        let ready = Readiness::default();
        let (stop, stopped) = watch::channel(false);
        let mut http_stop = stopped.clone();
        let (addr, server) = http_ops::serve(
            options.listen,
            http_ops::router(Arc::new(registry), ready.clone()),
            async move {
                let _ = http_stop.wait_for(|s| *s).await;
            },
        )
        .await?;
        tracing::info!(%addr, namespace = options.namespace.as_deref().unwrap_or("(all)"), "dispatcher listening");

        // Channels, Bridges, Subscriptions and keys → catalog → consumers,
        // on every change.
        let catalog = Arc::new(Mutex::new(Catalog::default()));
        lock(&catalog).set_keys(keys.borrow_and_update().clone());
        let (synced_tx, synced) = watch::channel(false);
        let listed = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let mark = |bit: u8| {
            let listed = listed.clone();
            let synced_tx = synced_tx.clone();
            move || {
                if listed.fetch_or(bit, std::sync::atomic::Ordering::Relaxed) | bit == 0b111 {
                    synced_tx.send_replace(true);
                }
            }
        };
        let apply = |catalog: Arc<Mutex<Catalog>>, consumers: Arc<Mutex<Consumers>>| {
            // The catalog stays locked until the consumers follow it: two
            // watches applying at once never leave an older view in force.
            move |change: &dyn Fn(&mut Catalog)| {
                let mut catalog = lock(&catalog);
                change(&mut catalog);
                let wanted = catalog.wanted();
                lock(&consumers).sync(&wanted);
            }
        };
        let mut followers = JoinSet::new();
        let on_channels = apply(catalog.clone(), consumers.clone());
        followers.spawn(follow(
            scoped::<Channel>(&client, options.namespace.as_deref()),
            watcher::Config::default(),
            move |change| match change {
                Change::Applied(c) => on_channels(&|cat| cat.apply_channel(key_of(c), c)),
                Change::Deleted(key) => on_channels(&|cat| cat.delete_channel(key)),
            },
            mark(0b01),
        ));
        let on_keys = apply(catalog.clone(), consumers.clone());
        followers.spawn(async move {
            while keys.changed().await.is_ok() {
                let now = keys.borrow_and_update().clone();
                on_keys(&|cat| cat.set_keys(now.clone()));
            }
        });
        let on_bridges = apply(catalog.clone(), consumers.clone());
        followers.spawn(follow(
            scoped::<Bridge>(&client, options.namespace.as_deref()),
            watcher::Config::default(),
            move |change| match change {
                Change::Applied(b) => on_bridges(&|cat| cat.apply_bridge(key_of(b), b)),
                Change::Deleted(key) => on_bridges(&|cat| cat.delete_bridge(key)),
            },
            mark(0b100),
        ));
        let on_subscriptions = apply(catalog, consumers.clone());
        followers.spawn(follow(
            scoped::<Subscription>(&client, options.namespace.as_deref()),
            watcher::Config::default(),
            move |change| match change {
                // Being deleted: stop consuming, so that the controller
                // can delete its backlog (only once no one consumes it).
                Change::Applied(s) if s.metadata.deletion_timestamp.is_some() => {
                    on_subscriptions(&|cat| cat.delete_subscription(&key_of(s)))
                }
                Change::Applied(s) => on_subscriptions(&|cat| cat.apply_subscription(key_of(s), s)),
                Change::Deleted(key) => on_subscriptions(&|cat| cat.delete_subscription(key)),
            },
            mark(0b10),
        ));
        let readiness = tokio::spawn(ops::follow_readiness(
            consumers.clone(),
            durable,
            synced,
            ready,
            stopped,
        ));
        Ok(Self {
            consumers,
            engine,
            server,
            readiness,
            followers,
            stop,
            drain: options.drain,
            addr,
        })
    }

    /// Stops gracefully: not ready, no more changes followed, every
    /// consumer stops taking messages and the deliveries under way finish
    /// (and are acknowledged) within the drain timeout; whatever is still
    /// unacknowledged then goes back to its queue, for another replica.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.readiness).await;
        self.followers.abort_all();
        while self.followers.join_next().await.is_some() {}
        let consumers = lock(&self.consumers).take_all();
        let count = consumers.len();
        futures::future::join_all(consumers.into_iter().map(|c| c.stop(self.drain))).await;
        tracing::info!(consumers = count, "consumers stopped");
        // What is left was never acknowledged: the broker has it back.
        let report = self.engine.shutdown(Duration::from_secs(1)).await;
        tracing::info!(?report, "delivery engine stopped");
        http_ops::join_or_abort(&mut self.server, Duration::from_secs(5)).await;
    }
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
