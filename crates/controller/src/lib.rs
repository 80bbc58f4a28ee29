//! `wsbridge controller`: reconciles Endpoints, Channels, Bridges and
//! Subscriptions, and applies one worker Deployment per Bridge.
//!
//! Shape:
//! - one watch per kind, feeding a shared cache ([`reconcile::Stores`]) and
//!   the four kube-runtime `Controller`s (primary streams and mapped
//!   triggers: Channel → Bridges/Subscriptions, Endpoint → Bridges,
//!   Secret/ConfigMap → Endpoints/Bridges, Service → Subscriptions, worker
//!   Deployment → its Bridge, Bridge/Subscription → their Channel);
//! - pure status decisions in [`status`], worker objects in [`worker`];
//! - writes only when something changed, so an idle cluster costs no writes;
//! - a Lease elects the one replica that reconciles; every replica serves
//!   `/healthz`, `/readyz` and `/metrics`.
//!
//! No finalizers: everything the controller creates is owned by its Bridge
//! (controller owner reference) and removed by the garbage collector;
//! statuses live on the objects themselves; nothing lives outside the cluster.
#![forbid(unsafe_code)]

pub mod metrics;
pub mod reconcile;
pub mod status;
mod status_write;
pub mod worker_objects;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use metrics::Metrics;
pub use reconcile::Error;
use reconcile::{Context, Stores};
use wsbridge_api::{Bridge, Channel, Endpoint, Subscription};
use wsbridge_dataplane::DestinationPolicy;
use wsbridge_http::ops::{self, LogFormat, Readiness};

/// The default worker image: this crate's version.
pub const DEFAULT_WORKER_IMAGE: &str = concat!("ghcr.io/wsbridge/wsbridge:", env!("CARGO_PKG_VERSION"));

/// How the controller runs (the binary fills it from `wsbridge controller`'s flags).
#[derive(Clone, Debug)]
pub struct Options {
    /// Image of the bridge worker Deployments.
    pub worker_image: String,
    /// Base URL of the publish gateway; Channel addresses are
    /// `{gateway-url}/channels/NAMESPACE/NAME`.
    pub gateway_url: String,
    /// Cluster DNS domain used in resolved Service addresses.
    pub cluster_domain: String,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// Elect one active replica with a Lease (`--leader-election=false` to
    /// reconcile unconditionally).
    pub leader_election: bool,
    /// Namespace of the Lease.
    pub lease_namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// Seconds a Lease is valid without renewal.
    pub lease_duration_seconds: u64,
    /// Seconds before expiry when the holder renews.
    pub lease_grace_seconds: u64,
    /// Watch only this namespace (default: all namespaces).
    pub namespace: Option<String>,
    /// Reconciles running at once, per kind.
    pub concurrency: u16,
    /// Outbound destination policy (subscribers, dead-letter sinks,
    /// endpoints); passed on to every worker.
    pub destinations: Arc<DestinationPolicy>,
}

/// Runs the controller until SIGINT/SIGTERM.
pub async fn run(args: Options) -> anyhow::Result<()> {
    let destinations = args.destinations.clone();
    // A no-op when the binary already set logging up (tests call `run` directly).
    ops::init_logging(LogFormat::Text);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let config = kube::Config::infer().await?;
    let counting = metrics.clone();
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&tower::util::MapRequestLayer::new(
            move |req: http::Request<kube::client::Body>| {
                counting.request(&req);
                req
            },
        ))
        .build();
    let readiness = Readiness::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        ops::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut server_stop = stop_rx.clone();
    let (addr, server) = ops::serve(
        args.listen,
        ops::router(Arc::new(registry), readiness.clone()),
        async move {
            let _ = server_stop.wait_for(|s| *s).await;
        },
    )
    .await?;
    info!(%addr, "serving /healthz, /readyz and /metrics");
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let runner = Runner {
        client: client.clone(),
        args: args.clone(),
        metrics,
        readiness: readiness.clone(),
        identity: identity.clone(),
        destinations,
    };
    let result = if args.leader_election {
        runner.run_with_lease(stop_rx).await
    } else {
        let mut stop = stop_rx;
        tokio::select! {
            r = runner.run_controllers() => r,
            _ = stop.wait_for(|s| *s) => Ok(()),
        }
    };
    readiness.set(false);
    server.abort();
    info!("stopped");
    result
}

struct Runner {
    client: Client,
    args: Options,
    metrics: Metrics,
    readiness: Readiness,
    identity: String,
    destinations: Arc<wsbridge_dataplane::DestinationPolicy>,
}

impl Runner {
    /// Waits for the Lease, reconciles while holding it, stops when it is
    /// lost, and releases it on shutdown. A standby replica reports ready:
    /// it is healthy and waiting.
    async fn run_with_lease(&self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(self.client.clone(), &self.args.lease_name)
                .with_namespace(&self.args.lease_namespace)
                .with_identity(&self.identity)
                .with_duration(self.args.lease_duration_seconds)
                .with_grace(self.args.lease_grace_seconds)
                .with_field_manager(format!("wsbridge-controller-lease-{}", self.identity))
                .build()
                .await?;
        let (mut leader, lease_task) = manager.watch().await;
        let mut result = Ok(());
        loop {
            self.readiness.set(true);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                r = leader.wait_for(|l| *l) => if r.is_err() { result = Err(anyhow::anyhow!("lease manager stopped")); break },
            }
            info!(identity = %self.identity, lease = %self.args.lease_name, "acquired the lease; reconciling");
            self.readiness.set(false);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                r = leader.wait_for(|l| !*l) => {
                    if r.is_err() { result = Err(anyhow::anyhow!("lease manager stopped")); break }
                    warn!("lost the lease; stopped reconciling");
                }
                r = self.run_controllers() => { result = r; break }
            }
        }
        drop(leader);
        match lease_task.await {
            Ok(Ok(manager)) => {
                if let Err(e) = manager.release().await {
                    warn!(error = %e, "releasing the lease failed");
                }
            }
            Ok(Err(e)) => warn!(error = %e, "lease manager failed"),
            Err(e) => warn!(error = %e, "lease manager task failed"),
        }
        result
    }

    /// Starts the watches and the four controllers; returns only if they end.
    async fn run_controllers(&self) -> anyhow::Result<()> {
        let client = self.client.clone();
        let ns = self.args.namespace.as_deref();
        let bridges = Shared::<Bridge>::new();
        let channels = Shared::<Channel>::new();
        let endpoints = Shared::<Endpoint>::new();
        let subscriptions = Shared::<Subscription>::new();
        let secrets = Shared::<Secret>::new();
        let config_maps = Shared::<ConfigMap>::new();
        let services = Shared::<Service>::new();
        let deployments = Shared::<Deployment>::new();
        let service_accounts = Shared::<ServiceAccount>::new();
        let roles = Shared::<Role>::new();
        let role_bindings = Shared::<RoleBinding>::new();
        let stores = Stores {
            bridges: bridges.reader(),
            channels: channels.reader(),
            endpoints: endpoints.reader(),
            subscriptions: subscriptions.reader(),
            secrets: secrets.reader(),
            config_maps: config_maps.reader(),
            services: services.reader(),
            deployments: deployments.reader(),
            service_accounts: service_accounts.reader(),
            roles: roles.reader(),
            role_bindings: role_bindings.reader(),
        };
        let reporter = Reporter {
            controller: worker_objects::FIELD_MANAGER.into(),
            instance: Some(self.identity.clone()),
        };
        let ctx = Arc::new(Context {
            client: client.clone(),
            stores: stores.clone(),
            metrics: self.metrics.clone(),
            recorder: Recorder::new(client.clone(), reporter),
            worker_image: self.args.worker_image.clone(),
            gateway_url: self.args.gateway_url.clone(),
            cluster_domain: self.args.cluster_domain.clone(),
            destinations: self.destinations.clone(),
        });
        let config = ControllerConfig::default()
            .concurrency(self.args.concurrency)
            .debounce(Duration::from_millis(50));
        let s = stores.clone();

        let bridge_controller = Controller::for_shared_stream(bridges.primary(), stores.bridges.clone())
            .with_config(config.clone())
            .owns_shared_stream(deployments.triggers())
            .owns_shared_stream(service_accounts.triggers())
            .owns_shared_stream(roles.triggers())
            .owns_shared_stream(role_bindings.triggers())
            .watches_shared_stream(channels.triggers(), {
                let s = s.clone();
                move |c: Arc<Channel>| by_channel(&s.bridges, &c, |b| &b.spec.channel)
            })
            .watches_shared_stream(endpoints.triggers(), {
                let s = s.clone();
                move |e: Arc<Endpoint>| {
                    let (ns, name) = key(&*e);
                    refs_where(&s.bridges, &ns, |b| b.spec.endpoint == name)
                }
            })
            .watches_shared_stream(secrets.triggers(), {
                let s = s.clone();
                move |sec: Arc<Secret>| {
                    let (ns, name) = key(&*sec);
                    refs_where(&s.bridges, &ns, |b| {
                        b.spec.token_secret_ref.as_ref().is_some_and(|t| t.name == name)
                            || reconcile::get(&s.endpoints, &ns, &b.spec.endpoint)
                                .is_some_and(|e| endpoint_uses_secret(&e, &name))
                    })
                }
            })
            .watches_shared_stream(config_maps.triggers(), {
                let s = s.clone();
                move |cm: Arc<ConfigMap>| {
                    let (ns, name) = key(&*cm);
                    refs_where(&s.bridges, &ns, |b| {
                        reconcile::get(&s.endpoints, &ns, &b.spec.endpoint)
                            .is_some_and(|e| endpoint_uses_config_map(&e, &name))
                    })
                }
            })
            .run(reconcile::reconcile_bridge, reconcile::error_policy, ctx.clone())
            .for_each(|_| futures::future::ready(()));

        let subscription_controller =
            Controller::for_shared_stream(subscriptions.primary(), stores.subscriptions.clone())
                .with_config(config.clone())
                .watches_shared_stream(channels.triggers(), {
                    let s = s.clone();
                    move |c: Arc<Channel>| by_channel(&s.subscriptions, &c, |x| &x.spec.channel)
                })
                .watches_shared_stream(services.triggers(), {
                    let s = s.clone();
                    move |svc: Arc<Service>| {
                        let (ns, name) = key(&*svc);
                        refs_where(&s.subscriptions, &ns, |x| {
                            let sink = |d: Option<&wsbridge_api::DeliverySpec>| {
                                d.and_then(|d| d.dead_letter_sink.as_ref())
                                    .and_then(|d| d.service.as_ref())
                                    .is_some_and(|r| r.name == name)
                            };
                            x.spec.subscriber.service.as_ref().is_some_and(|r| r.name == name)
                                || sink(x.spec.delivery.as_ref())
                                || reconcile::get(&s.channels, &ns, &x.spec.channel)
                                    .is_some_and(|c| sink(c.spec.delivery.as_ref()))
                        })
                    }
                })
                .run(
                    reconcile::reconcile_subscription,
                    reconcile::error_policy,
                    ctx.clone(),
                )
                .for_each(|_| futures::future::ready(()));

        let channel_controller = Controller::for_shared_stream(channels.primary(), stores.channels.clone())
            .with_config(config.clone())
            .watches_shared_stream(bridges.triggers(), |b: Arc<Bridge>| {
                Some(ObjectRef::new(&b.spec.channel).within(&b.namespace().unwrap_or_default()))
            })
            .watches_shared_stream(subscriptions.triggers(), |x: Arc<Subscription>| {
                Some(ObjectRef::new(&x.spec.channel).within(&x.namespace().unwrap_or_default()))
            })
            .run(reconcile::reconcile_channel, reconcile::error_policy, ctx.clone())
            .for_each(|_| futures::future::ready(()));

        let endpoint_controller =
            Controller::for_shared_stream(endpoints.primary(), stores.endpoints.clone())
                .with_config(config)
                .watches_shared_stream(secrets.triggers(), {
                    let s = s.clone();
                    move |sec: Arc<Secret>| {
                        let (ns, name) = key(&*sec);
                        refs_where(&s.endpoints, &ns, |e| endpoint_uses_secret(e, &name))
                    }
                })
                .watches_shared_stream(config_maps.triggers(), {
                    let s = s.clone();
                    move |cm: Arc<ConfigMap>| {
                        let (ns, name) = key(&*cm);
                        refs_where(&s.endpoints, &ns, |e| endpoint_uses_config_map(e, &name))
                    }
                })
                .run(
                    reconcile::reconcile_endpoint,
                    reconcile::error_policy,
                    ctx.clone(),
                )
                .for_each(|_| futures::future::ready(()));

        let watches = futures::future::join_all(vec![
            bridges
                .run(api(&client, ns), watcher::Config::default(), |_| {})
                .boxed(),
            channels
                .run(api(&client, ns), watcher::Config::default(), |_| {})
                .boxed(),
            endpoints
                .run(api(&client, ns), watcher::Config::default(), |_| {})
                .boxed(),
            subscriptions
                .run(api(&client, ns), watcher::Config::default(), |_| {})
                .boxed(),
            secrets
                .run(api(&client, ns), watcher::Config::default(), digest_secret)
                .boxed(),
            config_maps
                .run(api(&client, ns), watcher::Config::default(), digest_config_map)
                .boxed(),
            services
                .run(api(&client, ns), watcher::Config::default(), |_| {})
                .boxed(),
            deployments.run(api(&client, ns), owned(), |_| {}).boxed(),
            service_accounts.run(api(&client, ns), owned(), |_| {}).boxed(),
            roles.run(api(&client, ns), owned(), |_| {}).boxed(),
            role_bindings.run(api(&client, ns), owned(), |_| {}).boxed(),
        ]);
        let readiness = self.readiness.clone();
        let synced = async move {
            let _ = futures::join!(
                stores.bridges.wait_until_ready(),
                stores.channels.wait_until_ready(),
                stores.endpoints.wait_until_ready(),
                stores.subscriptions.wait_until_ready(),
                stores.secrets.wait_until_ready(),
                stores.config_maps.wait_until_ready(),
                stores.services.wait_until_ready(),
                stores.deployments.wait_until_ready(),
                stores.service_accounts.wait_until_ready(),
                stores.roles.wait_until_ready(),
                stores.role_bindings.wait_until_ready(),
            );
            info!("caches synced");
            readiness.set(true);
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = watches => {},
            _ = bridge_controller => {},
            _ = subscription_controller => {},
            _ = channel_controller => {},
            _ = endpoint_controller => {},
            _ = synced => {},
        }
        anyhow::bail!("controllers stopped unexpectedly")
    }
}

/// Watches only the worker objects this controller applies.
fn owned() -> watcher::Config {
    watcher::Config::default().labels(&format!(
        "{}={}",
        worker_objects::MANAGED_BY,
        worker_objects::FIELD_MANAGER
    ))
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn key<K: Resource>(obj: &K) -> (String, String) {
    (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

fn refs_where<K>(store: &Store<K>, ns: &str, pred: impl Fn(&K) -> bool) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(ns) && pred(o))
        .map(|o| ObjectRef::from_obj(&**o))
        .collect()
}

fn by_channel<K>(store: &Store<K>, channel: &Channel, field: impl Fn(&K) -> &String) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (ns, name) = key(channel);
    refs_where(store, &ns, |o| *field(o) == name)
}

fn endpoint_uses_secret(e: &Endpoint, name: &str) -> bool {
    e.spec.auth.as_ref().is_some_and(|a| a.secret_ref.name == name)
        || e.spec
            .tls
            .as_ref()
            .and_then(|t| t.ca_secret_ref.as_ref())
            .is_some_and(|s| s.name == name)
}

fn endpoint_uses_config_map(e: &Endpoint, name: &str) -> bool {
    e.spec
        .tls
        .as_ref()
        .and_then(|t| t.ca_config_map_ref.as_ref())
        .is_some_and(|s| s.name == name)
}

fn digest(bytes: &[u8]) -> ByteString {
    ByteString(Sha256::digest(bytes).to_vec())
}

/// A secret value's digest, salted with its Secret's UID. The worker's
/// config-hash annotation is built from these digests and anyone who can
/// read Deployments can read it: unsalted, a short token could be found by
/// hashing guesses. The UID is as private as the value (reading a Secret's
/// metadata needs the same permission as reading its data) and stays the
/// same across updates, so only a changed value rolls the worker.
fn salted_digest(uid: &str, value: &[u8]) -> ByteString {
    let mut h = Sha256::new();
    h.update(uid.as_bytes());
    h.update([0]);
    h.update(value);
    ByteString(h.finalize().to_vec())
}

/// Keeps a Secret's keys, replaces each value by its salted digest, and
/// drops annotations (`last-applied-configuration` may hold the values):
/// secret values never stay in the controller's memory.
fn digest_secret(s: &mut Secret) {
    let uid = s.metadata.uid.clone().unwrap_or_default();
    if let Some(data) = s.data.as_mut() {
        for v in data.values_mut() {
            *v = salted_digest(&uid, &v.0);
        }
    }
    s.string_data = None;
    s.metadata.annotations = None;
}

/// Like [`digest_secret`]: keys and digests, all under `binaryData`.
fn digest_config_map(c: &mut ConfigMap) {
    let mut out: BTreeMap<String, ByteString> = BTreeMap::new();
    for (k, v) in c.data.take().into_iter().flatten() {
        out.insert(k, digest(v.as_bytes()));
    }
    for (k, v) in c.binary_data.take().into_iter().flatten() {
        out.insert(k, digest(&v.0));
    }
    c.binary_data = Some(out);
    c.metadata.annotations = None;
}

/// One watch of a kind: a shared cache, and streams of changed objects for
/// every controller that follows it (deletions included, which kube's
/// shared streams do not dispatch by themselves).
struct Shared<K: Resource<DynamicType = ()> + Clone + 'static> {
    writer: Writer<K>,
    deletes: broadcast::Sender<Arc<K>>,
}

const BUFFER: usize = 4096;

impl<K> Shared<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    fn new() -> Self {
        let (_, writer) = reflector::store_shared(BUFFER);
        let (deletes, _) = broadcast::channel(BUFFER);
        Self { writer, deletes }
    }

    fn reader(&self) -> Store<K> {
        self.writer.as_reader()
    }

    /// Applied objects (for the controller of this kind).
    fn primary(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.writer.subscribe().expect("a shared store")
    }

    /// Applied and deleted objects (for controllers that map them).
    fn triggers(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let deleted = futures::stream::unfold(self.deletes.subscribe(), |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(obj) => return Some((obj, rx)),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!(
                            missed = n,
                            "deletions were dropped; the hourly resync repairs them"
                        );
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        futures::stream::select(self.primary(), deleted)
    }

    /// Runs the watch into the cache until dropped.
    fn run(
        self,
        api: Api<K>,
        config: watcher::Config,
        modify: impl Fn(&mut K) + Send + Sync + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let deletes = self.deletes;
        watcher(api, config)
            .default_backoff()
            .modify(move |obj: &mut K| {
                obj.meta_mut().managed_fields = None;
                modify(obj);
            })
            .inspect_ok(move |event| {
                if let watcher::Event::Delete(obj) = event {
                    let _ = deletes.send(Arc::new(obj.clone()));
                }
            })
            .reflect_shared(self.writer)
            .for_each(|r| {
                if let Err(e) = r {
                    warn!(error = %e, kind = %K::kind(&()), "watch failed; retrying");
                }
                futures::future::ready(())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(uid: &str, value: &str) -> Secret {
        let mut s = Secret::default();
        s.metadata.uid = Some(uid.into());
        s.data = Some(BTreeMap::from([("token".to_string(), ByteString(value.into()))]));
        s
    }

    fn token_digest(mut s: Secret) -> Vec<u8> {
        digest_secret(&mut s);
        s.data.unwrap()["token"].0.clone()
    }

    #[test]
    fn secret_digests_are_salted_with_the_secret_uid() {
        let d = token_digest(secret("uid-1", "hunter2"));
        assert_ne!(d, b"hunter2".to_vec(), "the value is not kept");
        assert_ne!(
            d,
            Sha256::digest(b"hunter2").to_vec(),
            "a guess cannot be checked without the UID"
        );
        assert_eq!(
            d,
            token_digest(secret("uid-1", "hunter2")),
            "stable while the Secret is"
        );
        assert_ne!(d, token_digest(secret("uid-2", "hunter2")));
        assert_ne!(
            d,
            token_digest(secret("uid-1", "hunter3")),
            "a changed value changes the digest"
        );
    }
}
