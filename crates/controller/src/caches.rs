//! One watch per kind, each feeding a cache that every reconcile reads and
//! streams of changed objects that every controller following the kind maps.
//!
//! Secret and ConfigMap values are replaced by digests before they are
//! cached: the controller only needs to know that a value changed (to roll
//! the worker), never the value.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tracing::warn;

use super::reconcile::Stores;
use super::worker_objects;
use wsbridge_api::{Bridge, Channel, Endpoint, Subscription};

/// One watch of a kind: a cache, and streams of changed objects for every
/// controller that follows it (deletions included, which kube's shared
/// streams do not dispatch by themselves).
pub(crate) struct CachedWatch<K: Resource<DynamicType = ()> + Clone + 'static> {
    writer: Writer<K>,
    deletes: broadcast::Sender<Arc<K>>,
}

/// Objects a slow controller may fall behind by before it misses some.
const BUFFER: usize = 4096;

impl<K> CachedWatch<K>
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
    pub(crate) fn primary(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.writer.subscribe().expect("a shared store")
    }

    /// Applied and deleted objects (for controllers that map them).
    pub(crate) fn triggers(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
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

    /// Runs the watch into the cache until dropped; `modify` rewrites each
    /// object before it is cached.
    fn run(
        self,
        api: Api<K>,
        config: watcher::Config,
        modify: impl Fn(&mut K) + Send + Sync + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
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

/// The watches of every kind the controller reads.
pub(crate) struct Caches {
    pub bridges: CachedWatch<Bridge>,
    pub channels: CachedWatch<Channel>,
    pub endpoints: CachedWatch<Endpoint>,
    pub subscriptions: CachedWatch<Subscription>,
    pub secrets: CachedWatch<Secret>,
    pub config_maps: CachedWatch<ConfigMap>,
    pub services: CachedWatch<Service>,
    pub deployments: CachedWatch<Deployment>,
    pub service_accounts: CachedWatch<ServiceAccount>,
    pub roles: CachedWatch<Role>,
    pub role_bindings: CachedWatch<RoleBinding>,
    pub network_policies: CachedWatch<NetworkPolicy>,
}

impl Caches {
    pub(crate) fn new() -> Self {
        Self {
            bridges: CachedWatch::new(),
            channels: CachedWatch::new(),
            endpoints: CachedWatch::new(),
            subscriptions: CachedWatch::new(),
            secrets: CachedWatch::new(),
            config_maps: CachedWatch::new(),
            services: CachedWatch::new(),
            deployments: CachedWatch::new(),
            service_accounts: CachedWatch::new(),
            roles: CachedWatch::new(),
            role_bindings: CachedWatch::new(),
            network_policies: CachedWatch::new(),
        }
    }

    /// What the reconciles read.
    pub(crate) fn stores(&self) -> Stores {
        Stores {
            bridges: self.bridges.reader(),
            channels: self.channels.reader(),
            endpoints: self.endpoints.reader(),
            subscriptions: self.subscriptions.reader(),
            secrets: self.secrets.reader(),
            config_maps: self.config_maps.reader(),
            services: self.services.reader(),
            deployments: self.deployments.reader(),
            service_accounts: self.service_accounts.reader(),
            roles: self.roles.reader(),
            role_bindings: self.role_bindings.reader(),
            network_policies: self.network_policies.reader(),
        }
    }

    /// Runs every watch (in `ns`, or all namespaces) until dropped.
    pub(crate) fn run(self, client: &Client, ns: Option<&str>) -> impl Future<Output = ()> + Send + 'static {
        let all = watcher::Config::default;
        futures::future::join_all(vec![
            self.bridges.run(api(client, ns), all(), |_| {}).boxed(),
            self.channels.run(api(client, ns), all(), |_| {}).boxed(),
            self.endpoints.run(api(client, ns), all(), |_| {}).boxed(),
            self.subscriptions.run(api(client, ns), all(), |_| {}).boxed(),
            self.secrets.run(api(client, ns), all(), digest_secret).boxed(),
            self.config_maps
                .run(api(client, ns), all(), digest_config_map)
                .boxed(),
            self.services.run(api(client, ns), all(), |_| {}).boxed(),
            self.deployments.run(api(client, ns), owned(), |_| {}).boxed(),
            self.service_accounts
                .run(api(client, ns), owned(), |_| {})
                .boxed(),
            self.roles.run(api(client, ns), owned(), |_| {}).boxed(),
            self.role_bindings.run(api(client, ns), owned(), |_| {}).boxed(),
            self.network_policies
                .run(api(client, ns), owned(), |_| {})
                .boxed(),
        ])
        .map(|_| ())
    }
}

/// Resolves once every cache has its first full list.
pub(crate) async fn synced(stores: &Stores) {
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
        stores.network_policies.wait_until_ready(),
    );
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

fn digest(bytes: &[u8]) -> ByteString {
    ByteString(Sha256::digest(bytes).to_vec())
}

/// A secret value's digest, salted with its Secret's UID. The worker's
/// config-hash annotation is built from these digests and anyone who can
/// read Deployments can read it: unsalted, a short token could be found by
/// hashing guesses. The UID is as private as the value (reading a Secret's
/// metadata needs the same permission as reading its data) and stays the
/// same across updates, so only a changed value rolls the worker.
pub(crate) fn salted_digest(uid: &str, value: &[u8]) -> ByteString {
    let mut h = Sha256::new();
    h.update(uid.as_bytes());
    h.update([0]);
    h.update(value);
    ByteString(h.finalize().to_vec())
}

/// Keeps a Secret's keys, replaces each value by its salted digest, and
/// drops annotations (`last-applied-configuration` may hold the values):
/// secret values never stay in the controller's memory. The one annotation
/// left is ours: which values are signing secrets (never the values).
fn digest_secret(s: &mut Secret) {
    s.metadata.annotations = None;
    // Decided on the values, kept as an annotation of the cached copy.
    worker_objects::signing::mark_signing_keys(s);
    let uid = s.metadata.uid.clone().unwrap_or_default();
    if let Some(data) = s.data.as_mut() {
        for v in data.values_mut() {
            *v = salted_digest(&uid, &v.0);
        }
    }
    s.string_data = None;
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
