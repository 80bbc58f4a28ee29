//! The worker objects of a Bridge (docs/architecture.md, "The worker pod
//! contract"), built by pure functions: their names and labels, the hashes
//! that decide when to apply and when to roll, the RBAC objects in
//! `rbac.rs` and the Deployment in `deployment.rs`.

mod deployment;
pub mod drift;
mod network_policy;
mod rbac;
pub mod send_credential;
pub mod signing;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

pub use deployment::{builtin_pod_defaults, with_pod_defaults, worker_env};
pub use network_policy::{PodsIn, WorkerIngress};
pub use signing::SignedSubscription;
use wsbridge_api::{Bridge, Endpoint};
use wsbridge_dataplane::DestinationPolicy;

/// Field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "wsbridge-controller";
/// Pod template annotation: hash of the referenced Secret/ConfigMap data.
pub const CONFIG_HASH: &str = "wsbridge.io/config-hash";
/// Deployment annotation: hash of the desired worker objects, so that an
/// unchanged Bridge costs no write.
pub const APPLIED_HASH: &str = "wsbridge.io/applied-hash";
/// Label naming the Bridge on every worker object.
pub const BRIDGE_LABEL: &str = "wsbridge.io/bridge";
/// Label selecting what this controller manages.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// `wsbridge-worker-B` (shortened with a hash when the name would be too long).
pub fn worker_name(bridge: &str) -> String {
    let name = format!("wsbridge-worker-{bridge}");
    if name.len() <= 253 {
        name
    } else {
        format!("{}-{}", &name[..240], &short_hash(bridge.as_bytes()))
    }
}

fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..6])
}

/// A label value for the Bridge name (63 characters at most).
pub fn bridge_label(bridge: &str) -> String {
    if bridge.len() <= 63 {
        bridge.to_owned()
    } else {
        format!(
            "{}-{}",
            bridge[..50].trim_end_matches(['-', '.']),
            short_hash(bridge.as_bytes())
        )
    }
}

/// Where a worker gets a referenced value from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Secret { name: String, key: String },
    ConfigMap { name: String, key: String },
}

/// Every Secret/ConfigMap key a Bridge's worker reads (for the config hash).
pub fn referenced_keys(bridge: &Bridge, endpoint: &Endpoint) -> Vec<Source> {
    let mut out = Vec::new();
    let secret = |name: &str, key: &str| Source::Secret {
        name: name.into(),
        key: key.into(),
    };
    if let Some(auth) = &endpoint.spec.auth {
        for key in ["token", "username", "password"] {
            out.push(secret(&auth.secret_ref.name, key));
        }
        for key in auth.secret_headers.iter().flatten().map(|(_, k)| &k.0) {
            out.push(secret(&auth.secret_ref.name, key));
        }
    }
    if let Some(tls) = &endpoint.spec.tls {
        if let Some(s) = &tls.ca_secret_ref {
            out.push(secret(&s.name, &s.key));
        }
        if let Some(c) = &tls.ca_config_map_ref {
            out.push(Source::ConfigMap {
                name: c.name.clone(),
                key: c.key.clone(),
            });
        }
    }
    if let Some(t) = &bridge.spec.token_secret_ref {
        out.push(secret(&t.name, &t.key));
    }
    out.sort();
    out.dedup();
    out
}

/// Hash of the referenced data, from digests of each value (`None`: absent).
/// Never sees a value itself.
pub fn config_hash(entries: &[(Source, Option<Vec<u8>>)]) -> String {
    let mut h = Sha256::new();
    for (source, digest) in entries {
        let (kind, name, key) = match source {
            Source::Secret { name, key } => ("Secret", name, key),
            Source::ConfigMap { name, key } => ("ConfigMap", name, key),
        };
        h.update(format!("{kind}/{name}/{key}=").as_bytes());
        match digest {
            Some(d) => h.update(d),
            None => h.update(b"-"),
        }
        h.update(b"\n");
    }
    hex::encode(&h.finalize()[..16])
}

/// The worker objects of a Bridge.
#[derive(Clone, Debug)]
pub struct WorkerObjects {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub deployment: Deployment,
    /// `None` when the controller writes no NetworkPolicies.
    pub network_policy: Option<NetworkPolicy>,
}

fn labels(bridge: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "wsbridge".into()),
        ("app.kubernetes.io/component".into(), "worker".into()),
        (MANAGED_BY.into(), FIELD_MANAGER.into()),
        (BRIDGE_LABEL.into(), bridge_label(bridge)),
    ])
}

/// The Bridge's own Secret (its send credential and, on a `rabbitmq`
/// Channel, the broker's URL): the worker's name, labels and owner, like
/// the other worker objects.
pub fn send_credential_secret(
    bridge: &Bridge,
    credential: &wsbridge_core::SecretString,
    broker_url: Option<&wsbridge_core::SecretString>,
) -> k8s_openapi::api::core::v1::Secret {
    let b = bridge.name_any();
    let meta = ObjectMeta {
        name: Some(worker_name(&b)),
        namespace: Some(bridge.namespace().unwrap_or_default()),
        labels: Some(labels(&b)),
        owner_references: Some(bridge.controller_owner_ref(&()).into_iter().collect()),
        ..Default::default()
    };
    send_credential::secret(meta, credential, broker_url)
}

/// What a Bridge's worker objects are built from, besides the Bridge and
/// its Endpoint.
#[derive(Clone, Copy, Debug)]
pub struct WorkerInputs<'a> {
    /// The worker image.
    pub image: &'a str,
    /// Hash of what the worker reads (see [`config_hash`]): a change rolls it.
    pub config_hash: &'a str,
    /// Where the worker may connect and deliver.
    pub destinations: &'a DestinationPolicy,
    /// Who may reach the worker; `None`: no NetworkPolicy.
    pub ingress: Option<&'a WorkerIngress>,
    /// The Subscriptions whose deliveries it signs.
    pub signed: &'a [SignedSubscription],
    /// The worker reads the broker's URL from the Bridge's Secret (a
    /// Bridge on a `rabbitmq` Channel, in an installation with a broker).
    pub broker_url: bool,
}

/// Builds the worker objects of a Bridge on a `memory` Channel (see
/// [`build`]).
pub fn worker_objects(
    bridge: &Bridge,
    endpoint: &Endpoint,
    image: &str,
    config_hash: &str,
    destinations: &DestinationPolicy,
    ingress: Option<&WorkerIngress>,
    signed: &[SignedSubscription],
) -> WorkerObjects {
    build(
        bridge,
        endpoint,
        &WorkerInputs {
            image,
            config_hash,
            destinations,
            ingress,
            signed,
            broker_url: false,
        },
    )
}

/// Builds the worker objects. The Deployment carries [`APPLIED_HASH`] over
/// all of them.
pub fn build(bridge: &Bridge, endpoint: &Endpoint, inputs: &WorkerInputs) -> WorkerObjects {
    let b = bridge.name_any();
    let owner = bridge.controller_owner_ref(&()).into_iter().collect::<Vec<_>>();
    let meta = ObjectMeta {
        name: Some(worker_name(&b)),
        namespace: Some(bridge.namespace().unwrap_or_default()),
        labels: Some(labels(&b)),
        owner_references: Some(owner),
        ..Default::default()
    };
    let (service_account, role, role_binding) = rbac::rbac_objects(bridge, &meta);
    let network_policy = inputs.ingress.map(|i| {
        network_policy::network_policy(meta.clone(), deployment::pod_selector(&b), deployment::PORT, i)
    });
    let mut deployment = deployment::deployment(bridge, endpoint, inputs, meta);
    let mut h = Sha256::new();
    for part in [
        serde_json::to_vec(&service_account),
        serde_json::to_vec(&role),
        serde_json::to_vec(&role_binding),
        serde_json::to_vec(&deployment),
        serde_json::to_vec(&network_policy),
    ] {
        h.update(part.expect("worker objects serialize"));
    }
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    deployment.metadata.annotations = Some(BTreeMap::from([(
        APPLIED_HASH.to_string(),
        hex::encode(&h.finalize()[..16]),
    )]));
    WorkerObjects {
        service_account,
        role,
        role_binding,
        deployment,
        network_policy,
    }
}

#[cfg(test)]
fn fixture() -> (Bridge, Endpoint) {
    use wsbridge_api::{BridgeSpec, EndpointSpec};
    let mut b = Bridge::new(
        "feed",
        BridgeSpec {
            channel: "ticker".into(),
            endpoint: "market".into(),
            token_secret_ref: Some(wsbridge_api::KeySelector {
                name: "sub-token".into(),
                key: "token".into(),
            }),
            worker: None,
        },
    );
    b.metadata.namespace = Some("ns".into());
    b.metadata.uid = Some("uid-1".into());
    let spec: EndpointSpec = serde_norway::from_str(
        "url: wss://x/\nauth: {secretRef: {name: creds}, secretHeaders: {X-B: kb, X-A: ka}}\ntls: {caConfigMapRef: {name: ca, key: ca.crt}}",
    )
    .unwrap();
    (b, Endpoint::new("market", spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_destination_policy_reaches_the_worker_env_and_rolls_it() {
        let (b, e) = fixture();
        let policy = DestinationPolicy::from_rules(&["127.0.0.2/32".into()], &[], true).unwrap();
        let env = worker_env(&b, &e, &policy);
        let value = |n: &str| env.iter().find(|v| v.name == n).and_then(|v| v.value.clone());
        assert_eq!(
            value("WSBRIDGE_DESTINATION_DENY").as_deref(),
            Some("127.0.0.2/32")
        );
        assert_eq!(value("WSBRIDGE_ALLOW_LINK_LOCAL").as_deref(), Some("true"));
        assert!(value("WSBRIDGE_DESTINATION_ALLOW").is_none());
        let hash = |p: &DestinationPolicy| {
            worker_objects(&b, &e, "img:1", "abc", p, None, &[])
                .deployment
                .metadata
                .annotations
                .unwrap()[APPLIED_HASH]
                .clone()
        };
        assert_ne!(hash(&policy), hash(&DestinationPolicy::default()));
    }

    #[test]
    fn config_hash_follows_the_digests() {
        let (b, e) = fixture();
        let keys = referenced_keys(&b, &e);
        assert!(keys.contains(&Source::ConfigMap {
            name: "ca".into(),
            key: "ca.crt".into()
        }));
        let with = |d: &[u8]| {
            let entries: Vec<_> = keys.iter().map(|k| (k.clone(), Some(d.to_vec()))).collect();
            config_hash(&entries)
        };
        assert_eq!(with(b"1"), with(b"1"));
        assert_ne!(with(b"1"), with(b"2"));
    }

    #[test]
    fn applied_hash_changes_with_the_spec_only() {
        let (b, e) = fixture();
        let hash = |image: &str, config_hash: &str| {
            let w = worker_objects(
                &b,
                &e,
                image,
                config_hash,
                &DestinationPolicy::default(),
                None,
                &[],
            );
            w.deployment.metadata.annotations.unwrap()[APPLIED_HASH].clone()
        };
        assert_eq!(hash("img:1", "abc"), hash("img:1", "abc"));
        assert_ne!(hash("img:1", "abc"), hash("img:2", "abc"));
        assert_ne!(hash("img:1", "abc"), hash("img:1", "abd"));
    }

    #[test]
    fn a_worker_on_the_broker_reads_its_url_from_the_bridge_secret() {
        let (b, e) = fixture();
        let policy = DestinationPolicy::default();
        let objects = |broker_url: bool| {
            build(
                &b,
                &e,
                &WorkerInputs {
                    image: "img:1",
                    config_hash: "abc",
                    destinations: &policy,
                    ingress: None,
                    signed: &[],
                    broker_url,
                },
            )
        };
        let env = |w: &WorkerObjects| {
            w.deployment
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .env
                .clone()
                .unwrap()
        };
        let durable = objects(true);
        let url = env(&durable)
            .into_iter()
            .find(|v| v.name == wsbridge_api::worker_env::RABBITMQ_URL)
            .expect("the broker URL variable");
        assert!(url.value.is_none(), "by reference only");
        let r = url.value_from.unwrap().secret_key_ref.unwrap();
        assert_eq!(
            (r.name.as_str(), r.key.as_str()),
            ("wsbridge-worker-feed", send_credential::BROKER_URL_KEY)
        );
        let memory = objects(false);
        assert!(
            env(&memory)
                .iter()
                .all(|v| v.name != wsbridge_api::worker_env::RABBITMQ_URL)
        );
        let hash =
            |w: &WorkerObjects| w.deployment.metadata.annotations.as_ref().unwrap()[APPLIED_HASH].clone();
        assert_ne!(hash(&durable), hash(&memory));
        assert_eq!(
            hash(&memory),
            hash(&worker_objects(&b, &e, "img:1", "abc", &policy, None, &[]))
        );
    }

    #[test]
    fn long_names_stay_valid() {
        let long = "a".repeat(253);
        assert!(worker_name(&long).len() <= 253);
        assert!(bridge_label(&long).len() <= 63);
    }
}
