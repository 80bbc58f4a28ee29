//! Feeds a Kubernetes watch into plain `apply`/`delete` callbacks, the way
//! the data plane's indexes want it: a relist deletes what vanished while
//! the watch was down, errors back off and retry forever, and the first
//! complete list is signalled so a role can report ready.

use std::collections::HashSet;
use std::fmt::Debug;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use wsbridge_core::ObjectKey;

/// The key of an object: `namespace/name`.
pub fn key_of<K: Resource>(obj: &K) -> ObjectKey {
    ObjectKey::new(obj.namespace().unwrap_or_default(), obj.name_any())
}

/// What happened to an object.
pub enum Change<'a, K> {
    /// Created or changed (or seen in a relist).
    Applied(&'a K),
    /// Gone (deleted, or missing from a relist).
    Deleted(&'a ObjectKey),
}

/// Runs until the task is dropped: watches `api` with `config` and calls
/// `on_change` for every change, then `on_synced` after each complete list.
pub async fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    mut on_change: impl FnMut(Change<'_, K>) + Send,
    mut on_synced: impl FnMut() + Send,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let mut known: HashSet<ObjectKey> = HashSet::new();
    let mut relisted: HashSet<ObjectKey> = HashSet::new();
    let mut stream = watcher(api, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(obj)) => {
                known.insert(key_of(&obj));
                on_change(Change::Applied(&obj));
            }
            Ok(watcher::Event::Delete(obj)) => {
                let key = key_of(&obj);
                known.remove(&key);
                on_change(Change::Deleted(&key));
            }
            Ok(watcher::Event::Init) => relisted.clear(),
            Ok(watcher::Event::InitApply(obj)) => {
                relisted.insert(key_of(&obj));
                on_change(Change::Applied(&obj));
            }
            Ok(watcher::Event::InitDone) => {
                for gone in known.difference(&relisted) {
                    on_change(Change::Deleted(gone));
                }
                known = std::mem::take(&mut relisted);
                on_synced();
            }
            // The watcher retries with backoff by itself; say why it is
            // retrying and keep going.
            Err(e) => {
                tracing::warn!(kind = %K::kind(&Default::default()), error = %e, "watch failed; retrying")
            }
        }
    }
}
