//! The worker Deployment: one restricted pod running `wsbridge worker
//! --bridge NS/NAME`, configured through its environment (the contract in
//! `wsbridge_api::worker_env`), secrets by reference only.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapKeySelector, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{BRIDGE_LABEL, CONFIG_HASH, bridge_label, labels};
use wsbridge_api::worker_env as contract;
use wsbridge_api::worker_pod::{Quantity as ApiQuantity, ResourceAmounts};
use wsbridge_api::{Bridge, Endpoint, WorkerPodSpec, WorkerResources};
use wsbridge_dataplane::DestinationPolicy;

/// The worker's HTTP port (probes, metrics, `POST /v1/send`).
pub(super) const PORT: i32 = 8080;

pub(super) fn secret_env(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
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
    // What the gateway presents on `POST /v1/send`: the Bridge's own Secret.
    env.push(secret_env(
        contract::SEND_CREDENTIAL,
        &super::worker_name(&bridge.name_any()),
        super::send_credential::KEY,
        false,
    ));
    env
}
/// Requests and limits of a worker when neither its Bridge nor the
/// controller's defaults say: the 256Mi limit gives a 128Mi budget for
/// queued messages, eight subscribers' default 16Mi queues.
pub fn builtin_pod_defaults() -> WorkerPodSpec {
    let amounts = |cpu: &str, memory: &str| ResourceAmounts {
        cpu: Some(ApiQuantity(cpu.into())),
        memory: Some(ApiQuantity(memory.into())),
    };
    WorkerPodSpec {
        resources: Some(WorkerResources {
            requests: Some(amounts("50m", "32Mi")),
            limits: Some(amounts("1", "256Mi")),
        }),
        ..Default::default()
    }
}

/// `bridge` with its `spec.worker` completed by `defaults` (the
/// controller's, for every worker) where it leaves fields unset.
pub fn with_pod_defaults(bridge: &Bridge, defaults: &WorkerPodSpec) -> Bridge {
    let mut sized = bridge.clone();
    let own = sized.spec.worker.take().unwrap_or_default();
    sized.spec.worker = Some(own.or(defaults));
    sized
}

/// The container's resources from the merged worker spec.
fn resources(spec: Option<&WorkerResources>) -> ResourceRequirements {
    let list = |amounts: Option<&ResourceAmounts>| {
        let a = amounts?;
        let list: BTreeMap<String, Quantity> = [("cpu", &a.cpu), ("memory", &a.memory)]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), Quantity(v.as_ref()?.0.clone()))))
            .collect();
        (!list.is_empty()).then_some(list)
    };
    ResourceRequirements {
        requests: list(spec.and_then(|r| r.requests.as_ref())),
        limits: list(spec.and_then(|r| r.limits.as_ref())),
        ..Default::default()
    }
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

/// The labels that select a Bridge's worker pods.
pub(super) fn pod_selector(bridge: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/component".to_string(), "worker".to_string()),
        (BRIDGE_LABEL.to_string(), bridge_label(bridge)),
    ])
}

/// The worker Deployment, with `meta` (the worker's name, namespace, labels
/// and owner); its pod template carries [`CONFIG_HASH`].
pub(super) fn deployment(
    bridge: &Bridge,
    endpoint: &Endpoint,
    inputs: &super::WorkerInputs,
    meta: ObjectMeta,
) -> Deployment {
    let super::WorkerInputs {
        image,
        config_hash,
        destinations,
        signed,
        ..
    } = *inputs;
    let ns = bridge.namespace().unwrap_or_default();
    let b = bridge.name_any();
    let name = meta.name.clone().unwrap_or_default();
    let selector = pod_selector(&b);
    let pod = bridge
        .spec
        .worker
        .clone()
        .unwrap_or_default()
        .or(&builtin_pod_defaults());
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
        env: Some(
            [
                worker_env(bridge, endpoint, destinations),
                inputs
                    .broker_url
                    .then(|| super::send_credential::broker_url_env(&b))
                    .into_iter()
                    .collect(),
                super::signing::signing_env(signed),
            ]
            .concat(),
        ),
        liveness_probe: Some(probe("/healthz")),
        readiness_probe: Some(probe("/readyz")),
        resources: Some(resources(pod.resources.as_ref())),
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
    // The user's labels first: ours (selector, ownership) win.
    let mut template_labels = pod.pod_labels.clone().unwrap_or_default();
    template_labels.extend(labels(&b));
    template_labels.extend(selector.clone());
    let mut annotations = pod.pod_annotations.clone().unwrap_or_default();
    annotations.insert(CONFIG_HASH.to_string(), config_hash.to_string());
    Deployment {
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
                    annotations: Some(annotations),
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
                    node_selector: pod.node_selector,
                    tolerations: pod.tolerations,
                    affinity: pod.affinity,
                    priority_class_name: pod.priority_class_name,
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
    }
}

#[cfg(test)]
mod tests {
    use super::super::{fixture, worker_objects};
    use super::*;

    #[test]
    fn deployment_is_restricted_and_owned() {
        let (b, e) = fixture();
        let w = worker_objects(&b, &e, "img:1", "abc", &DestinationPolicy::default(), None, &[]);
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
        let source = |n: &str| {
            let v = env.iter().find(|v| v.name == n).unwrap();
            v.value_from.clone().unwrap()
        };
        let secret = |n: &str| source(n).secret_key_ref.unwrap();
        for v in &env {
            if v.name.starts_with("WSBRIDGE_ENDPOINT") || v.name == "WSBRIDGE_BRIDGE_TOKEN" {
                assert!(v.value.is_none(), "{}", v.name);
            }
        }
        assert_eq!(secret("WSBRIDGE_ENDPOINT_HEADER_0").key, "ka");
        assert_eq!(secret("WSBRIDGE_ENDPOINT_TOKEN").optional, Some(true));
        assert_eq!(
            source("WSBRIDGE_ENDPOINT_CA").config_map_key_ref.unwrap().name,
            "ca"
        );
        assert_eq!(secret("WSBRIDGE_BRIDGE_TOKEN").name, "sub-token");
        let send = secret("WSBRIDGE_SEND_CREDENTIAL");
        assert_eq!(
            (send.name.as_str(), send.key.as_str(), send.optional),
            ("wsbridge-worker-feed", "send-credential", None)
        );
        assert!(
            env.iter()
                .all(|v| v.name != "WSBRIDGE_SEND_CREDENTIAL" || v.value.is_none())
        );
    }
}
