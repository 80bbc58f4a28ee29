//! The worker objects of a Bridge (docs/architecture.md, "The worker pod
//! contract"), built by pure functions.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapKeySelector, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, ServiceAccount, Volume,
    VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use wsbridge_api::worker_env as contract;
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

const PORT: i32 = 8080;

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

/// The four worker objects of a Bridge.
#[derive(Clone, Debug)]
pub struct WorkerObjects {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub deployment: Deployment,
}

fn labels(bridge: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "wsbridge".into()),
        ("app.kubernetes.io/component".into(), "worker".into()),
        (MANAGED_BY.into(), FIELD_MANAGER.into()),
        (BRIDGE_LABEL.into(), bridge_label(bridge)),
    ])
}

fn secret_env(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: optional.then_some(true),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The worker's environment: downward API, listen address and secret
/// references (`valueFrom`, never values). `WSBRIDGE_ENDPOINT_HEADER_<i>` is
/// 0-based over `auth.secretHeaders` sorted by header name.
pub fn worker_env(bridge: &Bridge, endpoint: &Endpoint, destinations: &DestinationPolicy) -> Vec<EnvVar> {
    let mut env = vec![
        field_env(contract::POD_IP, "status.podIP"),
        field_env(contract::POD_NAME, "metadata.name"),
        field_env(contract::POD_NAMESPACE, "metadata.namespace"),
        EnvVar {
            name: contract::LISTEN.into(),
            value: Some(format!("0.0.0.0:{PORT}")),
            ..Default::default()
        },
    ];
    // The controller's destination policy: plain values (no secrets).
    for (name, value) in destinations.to_env() {
        env.push(EnvVar {
            name: name.into(),
            value: Some(value),
            ..Default::default()
        });
    }
    if let Some(auth) = &endpoint.spec.auth {
        let s = &auth.secret_ref.name;
        env.push(secret_env(contract::ENDPOINT_TOKEN, s, "token", true));
        env.push(secret_env(contract::ENDPOINT_USERNAME, s, "username", true));
        env.push(secret_env(contract::ENDPOINT_PASSWORD, s, "password", true));
        // BTreeMap: sorted by header name.
        for (i, (_, key)) in auth.secret_headers.iter().flatten().enumerate() {
            env.push(secret_env(&contract::header_var(i), s, &key.0, false));
        }
    }
    if let Some(tls) = &endpoint.spec.tls {
        if let Some(c) = &tls.ca_secret_ref {
            env.push(secret_env(contract::ENDPOINT_CA, &c.name, &c.key, false));
        } else if let Some(c) = &tls.ca_config_map_ref {
            env.push(EnvVar {
                name: contract::ENDPOINT_CA.into(),
                value_from: Some(EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: c.name.clone(),
                        key: c.key.clone(),
                        optional: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    if let Some(t) = &bridge.spec.token_secret_ref {
        env.push(secret_env(contract::BRIDGE_TOKEN, &t.name, &t.key, false));
    }
    env
}

fn quantities(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".into(), Quantity(cpu.into())),
        ("memory".into(), Quantity(memory.into())),
    ])
}

fn probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// Builds the worker objects. The Deployment carries [`APPLIED_HASH`] over
/// all four.
pub fn worker_objects(
    bridge: &Bridge,
    endpoint: &Endpoint,
    image: &str,
    config_hash: &str,
    destinations: &DestinationPolicy,
) -> WorkerObjects {
    let ns = bridge.namespace().unwrap_or_default();
    let b = bridge.name_any();
    let name = worker_name(&b);
    let owner = bridge.controller_owner_ref(&()).into_iter().collect::<Vec<_>>();
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(ns.clone()),
        labels: Some(labels(&b)),
        owner_references: Some(owner),
        ..Default::default()
    };
    let service_account = ServiceAccount {
        metadata: meta.clone(),
        ..Default::default()
    };
    let rule = |resources: &[&str], verbs: &[&str], names: Option<Vec<String>>| PolicyRule {
        api_groups: Some(vec![wsbridge_api::GROUP.into()]),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        resource_names: names,
        ..Default::default()
    };
    let role = Role {
        metadata: meta.clone(),
        rules: Some(vec![
            rule(&["bridges"], &["get", "list", "watch"], Some(vec![b.clone()])),
            rule(
                &["channels"],
                &["get", "list", "watch"],
                Some(vec![bridge.spec.channel.clone()]),
            ),
            rule(
                &["endpoints"],
                &["get", "list", "watch"],
                Some(vec![bridge.spec.endpoint.clone()]),
            ),
            rule(&["subscriptions"], &["list", "watch"], None),
            rule(&["bridges/status"], &["patch", "update"], Some(vec![b.clone()])),
        ]),
    };
    let role_binding = RoleBinding {
        metadata: meta.clone(),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: name.clone(),
            namespace: Some(ns.clone()),
            ..Default::default()
        }]),
    };
    let selector = BTreeMap::from([
        ("app.kubernetes.io/component".to_string(), "worker".to_string()),
        (BRIDGE_LABEL.to_string(), bridge_label(&b)),
    ]);
    let container = Container {
        name: "worker".into(),
        image: Some(image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec!["worker".into(), "--bridge".into(), format!("{ns}/{b}")]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: Some(worker_env(bridge, endpoint, destinations)),
        liveness_probe: Some(probe("/healthz")),
        readiness_probe: Some(probe("/readyz")),
        resources: Some(ResourceRequirements {
            requests: Some(quantities("50m", "32Mi")),
            limits: Some(quantities("1", "256Mi")),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let mut template_labels = labels(&b);
    template_labels.extend(selector.clone());
    let mut deployment = Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            }),
            selector: LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH.to_string(),
                        config_hash.to_string(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    automount_service_account_token: Some(true),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "tmp".into(),
                        empty_dir: Some(EmptyDirVolumeSource {
                            size_limit: Some(Quantity("16Mi".into())),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    };
    let mut h = Sha256::new();
    for part in [
        serde_json::to_vec(&service_account),
        serde_json::to_vec(&role),
        serde_json::to_vec(&role_binding),
        serde_json::to_vec(&deployment),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsbridge_api::{BridgeSpec, EndpointSpec};

    fn fixture() -> (Bridge, Endpoint) {
        let mut b = Bridge::new(
            "feed",
            BridgeSpec {
                channel: "ticker".into(),
                endpoint: "market".into(),
                token_secret_ref: Some(wsbridge_api::KeySelector {
                    name: "sub-token".into(),
                    key: "token".into(),
                }),
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

    #[test]
    fn deployment_is_restricted_and_owned() {
        let (b, e) = fixture();
        let w = worker_objects(&b, &e, "img:1", "abc", &DestinationPolicy::default());
        let d = &w.deployment;
        assert_eq!(d.metadata.name.as_deref(), Some("wsbridge-worker-feed"));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("Bridge", "feed", Some(true))
        );
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.strategy.as_ref().unwrap().type_.as_deref(), Some("Recreate"));
        let pod = spec.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.args.as_ref().unwrap(), &["worker", "--bridge", "ns/feed"]);
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(), &["ALL"]);
        assert_eq!(pod.service_account_name.as_deref(), Some("wsbridge-worker-feed"));
        let annotations = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap();
        assert_eq!(annotations[CONFIG_HASH], "abc");
    }

    #[test]
    fn env_references_secrets_and_never_holds_values() {
        let (b, e) = fixture();
        let env = worker_env(&b, &e, &DestinationPolicy::default());
        let by_name = |n: &str| env.iter().find(|v| v.name == n).unwrap();
        for v in &env {
            if v.name.starts_with("WSBRIDGE_ENDPOINT") || v.name == "WSBRIDGE_BRIDGE_TOKEN" {
                assert!(v.value.is_none(), "{}", v.name);
            }
        }
        let h0 = by_name("WSBRIDGE_ENDPOINT_HEADER_0");
        assert_eq!(
            h0.value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .key,
            "ka"
        );
        let token = by_name("WSBRIDGE_ENDPOINT_TOKEN");
        assert_eq!(
            token
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .optional,
            Some(true)
        );
        let ca = by_name("WSBRIDGE_ENDPOINT_CA");
        assert_eq!(
            ca.value_from
                .as_ref()
                .unwrap()
                .config_map_key_ref
                .as_ref()
                .unwrap()
                .name,
            "ca"
        );
        assert_eq!(
            by_name("WSBRIDGE_BRIDGE_TOKEN")
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "sub-token"
        );
    }

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
            worker_objects(&b, &e, "img:1", "abc", p)
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
        let hash =
            |w: &WorkerObjects| w.deployment.metadata.annotations.as_ref().unwrap()[APPLIED_HASH].clone();
        let one = worker_objects(&b, &e, "img:1", "abc", &DestinationPolicy::default());
        assert_eq!(
            hash(&one),
            hash(&worker_objects(
                &b,
                &e,
                "img:1",
                "abc",
                &DestinationPolicy::default()
            ))
        );
        assert_ne!(
            hash(&one),
            hash(&worker_objects(
                &b,
                &e,
                "img:2",
                "abc",
                &DestinationPolicy::default()
            ))
        );
        assert_ne!(
            hash(&one),
            hash(&worker_objects(
                &b,
                &e,
                "img:1",
                "abd",
                &DestinationPolicy::default()
            ))
        );
    }

    #[test]
    fn long_names_stay_valid() {
        let long = "a".repeat(253);
        assert!(worker_name(&long).len() <= 253);
        assert!(bridge_label(&long).len() <= 63);
    }
}
