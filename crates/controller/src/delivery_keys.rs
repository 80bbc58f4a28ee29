//! The signing keys of the roles that deliver for every namespace: the
//! gateway (publishes on memory Channels) and the dispatcher (backlogs of
//! rabbitmq Channels) sign a Subscription's deliveries as its worker does,
//! but read no Secrets through the API. The controller, which reads them
//! already, keeps one Secret in its own namespace with a key per signed
//! Subscription, `{namespace}.{name}` (see
//! [`wsbridge_dataplane::delivery::signing_keys`]), holding a copy of that
//! Subscription's usable `whsec_` secret, and `bridge_{namespace}.{name}`
//! holding the token of each Bridge on a rabbitmq Channel (the dispatcher
//! presents it with the Bridge's endpoint messages); those roles mount it.
//! So such a secret is readable, beside its own namespace, by whoever can
//! read Secrets in the installation's namespace: the same people who can
//! read the send key and take over the controller already
//! (docs/security.md, "Signed deliveries").
//!
//! Rebuilt whenever a Subscription, Bridge, Channel or Secret changes
//! (debounced), and
//! written only when its content changed: the controller keeps the digest
//! of what it wrote, never the values.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};
use wsbridge_api::ChannelBackend;
use wsbridge_core::ObjectKey;
use wsbridge_dataplane::delivery::SigningKey;
use wsbridge_dataplane::delivery::delivery_keys::{bridge_token_file_name, signing_file_name};

use super::reconcile::Stores;
use super::send_key::SendKeySecret;
use super::worker_objects::{self, signing::signing_secret_problem};

/// Changes arriving within this long are one rebuild.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// A rebuild also runs this often (a missed change, or a failed write).
const RESYNC: Duration = Duration::from_secs(60);
/// A Secret holds at most 1 MiB; past this the copy is refused (logged).
const MAX_BYTES: usize = 900 * 1024;

/// Keeps the Secret `at` in step with the signed Subscriptions of
/// `stores`, rebuilding on each item of `changes`, from the moment
/// `synced` is true (a cache still filling would drop keys). Runs until
/// dropped.
pub(crate) async fn run(
    client: Client,
    stores: Stores,
    at: SendKeySecret,
    changes: impl Stream<Item = ()> + Send,
    mut synced: watch::Receiver<bool>,
) {
    let mut changes = std::pin::pin!(changes);
    if synced.wait_for(|s| *s).await.is_err() {
        return;
    }
    let mut written: Option<[u8; 32]> = None;
    loop {
        match build(&client, &stores).await {
            Ok(keys) => {
                let digest = digest(&keys);
                if written != Some(digest) {
                    match write(&client, &at, keys).await {
                        Ok(count) => {
                            info!(secret = %at.name, subscriptions = count, "wrote the delivery signing keys");
                            written = Some(digest);
                        }
                        Err(e) => {
                            warn!(secret = %at.name, error = %e, "writing the delivery signing keys; retrying")
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "reading the signing secrets; retrying"),
        }
        // The next change (or the resync), then whatever follows it closely.
        tokio::select! {
            change = changes.next() => if change.is_none() { return },
            _ = tokio::time::sleep(RESYNC) => {}
        }
        let _ = tokio::time::timeout(DEBOUNCE, async { while changes.next().await.is_some() {} }).await;
    }
}

/// The usable signing secret of every signed Subscription and the token of
/// every Bridge on a rabbitmq Channel, by file name.
async fn build(client: &Client, stores: &Stores) -> Result<BTreeMap<String, String>, kube::Error> {
    let mut keys = BTreeMap::new();
    for sub in stores.subscriptions.state() {
        let (Some(ns), Some(reference)) = (sub.namespace(), sub.spec.signing_secret_ref.as_ref()) else {
            continue;
        };
        // The cache says whether the value is a usable secret (without it).
        if signing_secret_problem(stores, &ns, reference).is_some() {
            continue;
        }
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let Some(secret) = secrets.get_opt(&reference.name).await? else {
            continue;
        };
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&reference.key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok());
        if let Some(value) = value.filter(|v| SigningKey::from_whsec(v).is_ok()) {
            keys.insert(
                signing_file_name(&ObjectKey::new(ns, sub.name_any())),
                value.trim().to_string(),
            );
        }
    }
    // The tokens of Bridges on rabbitmq Channels: their endpoint messages
    // reach subscribers through the dispatcher, which presents them.
    for bridge in stores.bridges.state() {
        let (Some(ns), Some(reference)) = (bridge.namespace(), bridge.spec.token_secret_ref.as_ref()) else {
            continue;
        };
        let durable = stores.channels.state().iter().any(|c| {
            c.namespace().as_deref() == Some(ns.as_str())
                && c.name_any() == bridge.spec.channel
                && c.spec.backend() == ChannelBackend::Rabbitmq
        });
        if !durable {
            continue;
        }
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let token = secrets
            .get_opt(&reference.name)
            .await?
            .and_then(|s| s.data)
            .and_then(|d| d.get(&reference.key).cloned())
            .and_then(|v| String::from_utf8(v.0).ok())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        if let Some(token) = token {
            keys.insert(
                bridge_token_file_name(&ObjectKey::new(ns, bridge.name_any())),
                token,
            );
        }
    }
    Ok(keys)
}

fn digest(keys: &BTreeMap<String, String>) -> [u8; 32] {
    let mut hash = Sha256::new();
    for (name, value) in keys {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(value.as_bytes());
        hash.update([0]);
    }
    hash.finalize().into()
}

/// Applies the Secret with exactly `keys` (server-side apply: keys no
/// longer there are removed); returns how many it holds.
async fn write(client: &Client, at: &SendKeySecret, keys: BTreeMap<String, String>) -> anyhow::Result<usize> {
    let size: usize = keys.iter().map(|(k, v)| k.len() + v.len()).sum();
    anyhow::ensure!(
        size <= MAX_BYTES,
        "{} signing keys take {size} bytes, more than a Secret holds",
        keys.len()
    );
    let count = keys.len();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(at.name.clone()),
            namespace: Some(at.namespace.clone()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".into(), "wsbridge".into()),
                ("app.kubernetes.io/component".into(), "delivery-keys".into()),
                (
                    worker_objects::MANAGED_BY.into(),
                    worker_objects::FIELD_MANAGER.into(),
                ),
            ])),
            ..Default::default()
        },
        data: Some(
            keys.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), &at.namespace);
    api.patch(
        &at.name,
        &PatchParams::apply(worker_objects::FIELD_MANAGER).force(),
        &Patch::Apply(&secret),
    )
    .await?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_changes_with_any_name_or_value() {
        let a = BTreeMap::from([("ns.a".to_string(), "whsec_x".to_string())]);
        let b = BTreeMap::from([("ns.a".to_string(), "whsec_y".to_string())]);
        let c = BTreeMap::from([("ns.b".to_string(), "whsec_x".to_string())]);
        assert_ne!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&c));
        assert_eq!(digest(&a), digest(&a.clone()));
        assert_ne!(digest(&a), digest(&BTreeMap::new()));
    }
}
