//! The worker's NetworkPolicy: its port admits the gateway's pods (the
//! publish path) and, when configured, the metrics scraper's, and nothing
//! else. Kubelet probes are node traffic, which NetworkPolicies do not
//! restrict.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Pods in one namespace, by label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodsIn {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// Who may reach a worker's port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerIngress {
    /// The gateway's pods.
    pub gateway: PodsIn,
    /// The metrics scraper's pods, if it scrapes workers directly.
    pub scraper: Option<PodsIn>,
}

/// Label every namespace carries with its own name (Kubernetes 1.21+).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn peer(pods: &PodsIn) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                pods.namespace.clone(),
            )])),
            match_expressions: None,
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(pods.labels.clone()),
            match_expressions: None,
        }),
        ip_block: None,
    }
}

/// The policy over the worker pods `pod_labels` select, listening on `port`.
pub(super) fn network_policy(
    meta: ObjectMeta,
    pod_labels: BTreeMap<String, String>,
    port: i32,
    ingress: &WorkerIngress,
) -> NetworkPolicy {
    let from: Vec<NetworkPolicyPeer> = std::iter::once(&ingress.gateway)
        .chain(ingress.scraper.as_ref())
        .map(peer)
        .collect();
    NetworkPolicy {
        metadata: meta,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(pod_labels),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(port)),
                    protocol: Some("TCP".into()),
                    end_port: None,
                }]),
            }]),
            egress: None,
        }),
    }
}
