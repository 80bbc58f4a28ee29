//! The installation key that every Bridge's send credential is derived
//! from ([`wsbridge_dataplane::send_auth`]): a Secret in the controller's
//! namespace, created with a random key when absent. Rotating it (a new
//! value, or deleting the Secret so that a new one is created) changes every
//! credential: each Bridge's credential Secret is written again, which
//! rolls its worker, and the gateway reads the mounted key again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use wsbridge_dataplane::send_auth;

/// The key of the installation key in its Secret.
pub const KEY: &str = "key";

/// Where the installation key lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendKeySecret {
    pub namespace: String,
    pub name: String,
}

/// The current installation key (`None` only before it was first read).
pub type KeyBytes = Option<Arc<[u8]>>;

fn key_of(secret: &Secret) -> KeyBytes {
    let value = secret.data.as_ref()?.get(KEY)?;
    (!value.0.is_empty()).then(|| Arc::from(value.0.as_slice()))
}

/// Reads the key, creating the Secret with a new random key when it does
/// not exist (several replicas may race: the loser reads the winner's).
pub(crate) async fn ensure(client: &Client, at: &SendKeySecret) -> anyhow::Result<Arc<[u8]>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &at.namespace);
    for _ in 0..3 {
        if let Some(secret) = api.get_opt(&at.name).await? {
            return key_of(&secret).ok_or_else(|| {
                anyhow::anyhow!(
                    "Secret {}/{} has no non-empty key `{KEY}` (the send key)",
                    at.namespace,
                    at.name
                )
            });
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(at.name.clone()),
                namespace: Some(at.namespace.clone()),
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/name".into(), "wsbridge".into()),
                    ("app.kubernetes.io/component".into(), "send-key".into()),
                    (
                        super::worker_objects::MANAGED_BY.into(),
                        super::worker_objects::FIELD_MANAGER.into(),
                    ),
                ])),
                ..Default::default()
            },
            string_data: Some(BTreeMap::from([(KEY.into(), send_auth::new_installation_key())])),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(created) => {
                info!(namespace = %at.namespace, name = %at.name, "created the send key");
                if let Some(key) = key_of(&created) {
                    return Ok(key);
                }
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("could not read or create Secret {}/{}", at.namespace, at.name)
}

/// Follows the Secret: a changed key is published on `key`; a deleted
/// Secret is created again with a new key. Runs until dropped.
pub(crate) async fn follow(client: Client, at: SendKeySecret, key: watch::Sender<KeyBytes>) {
    let api: Api<Secret> = Api::namespaced(client.clone(), &at.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", at.name));
    let mut events = watcher(api, config).boxed();
    while let Some(event) = events.next().await {
        let secret = match event {
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => Some(s),
            Ok(watcher::Event::Delete(_)) => None,
            Ok(_) => continue,
            Err(e) => {
                warn!(error = %e, "watching the send key");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let next = match secret.as_ref().and_then(key_of) {
            Some(k) => Some(k),
            None => match ensure(&client, &at).await {
                Ok(k) => Some(k),
                Err(e) => {
                    warn!(error = %e, "the send key is unusable; Bridges keep their credentials");
                    continue;
                }
            },
        };
        key.send_if_modified(|cur| {
            let changed = *cur != next;
            if changed {
                if cur.is_some() {
                    info!("the send key changed: every Bridge's send credential is written again");
                }
                *cur = next;
            }
            changed
        });
    }
}

/// One item each time the key changes after the first (a trigger for
/// reconciling every Bridge).
pub(crate) fn changes(mut key: watch::Receiver<KeyBytes>) -> impl Stream<Item = ()> + Send + 'static {
    key.mark_unchanged();
    futures::stream::unfold(key, |mut key| async move {
        key.changed().await.ok()?;
        Some(((), key))
    })
}
