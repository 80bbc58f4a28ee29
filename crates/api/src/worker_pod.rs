//! `Bridge.spec.worker`: how a Bridge's worker pod is sized and scheduled.
//! Unset fields take the defaults the controller was given for every worker
//! (the chart's `worker` values).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Toleration};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::DNS1123_SUBDOMAIN;

/// Pattern of a Kubernetes quantity without a sign (`500m`, `1`, `256Mi`, `1e3`).
pub const QUANTITY: &str = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// The smallest memory limit a worker may have: its memory budget (half its
/// limit) must hold a few queued messages of the default largest size.
pub const MIN_WORKER_MEMORY: &str = "64Mi";

/// A quantity as Kubernetes writes it: `500m`, `2`, `256Mi`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Quantity(#[schemars(length(max = 32), regex(pattern = QUANTITY))] pub String);

/// CPU and memory of the worker container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAmounts {
    /// CPU, e.g. `100m` or `2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory, e.g. `128Mi` or `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// Requests and limits of the worker container. The memory limit sizes the
/// worker's memory budget: queued messages may hold half of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.limits) || !has(self.limits.memory) || quantity(self.limits.memory).compareTo(quantity('64Mi')) >= 0"
).message("limits.memory must be at least 64Mi (queued messages may hold half of it)").field_path(".limits.memory"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.requests) || !has(self.limits) || !has(self.requests.memory) || !has(self.limits.memory) || quantity(self.requests.memory).compareTo(quantity(self.limits.memory)) <= 0"
).message("requests.memory must not exceed limits.memory").field_path(".requests.memory"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.requests) || !has(self.limits) || !has(self.requests.cpu) || !has(self.limits.cpu) || quantity(self.requests.cpu).compareTo(quantity(self.limits.cpu)) <= 0"
).message("requests.cpu must not exceed limits.cpu").field_path(".requests.cpu"))]
pub struct WorkerResources {
    /// What the scheduler reserves for the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceAmounts>,
    /// The most the worker may use; over the memory limit it is OOM-killed,
    /// which its memory budget keeps it from reaching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceAmounts>,
}

/// How the worker pod of a Bridge is sized and scheduled. Every field is
/// optional; unset fields take the defaults set for all workers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.podLabels) || !('app.kubernetes.io/component' in self.podLabels || 'wsbridge.io/bridge' in self.podLabels || 'app.kubernetes.io/name' in self.podLabels || 'app.kubernetes.io/managed-by' in self.podLabels)"
).message("podLabels may not set the labels the worker's selector and ownership use").field_path(".podLabels"))]
pub struct WorkerPodSpec {
    /// CPU and memory requests and limits of the worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<WorkerResources>,
    /// Nodes the worker may run on, by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 63}))]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the worker tolerates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub tolerations: Option<Vec<Toleration>>,
    /// Node and pod affinity of the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// The worker pod's PriorityClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS1123_SUBDOMAIN))]
    pub priority_class_name: Option<String>,
    /// Extra labels of the worker pod (not those of its selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 63, "pattern": "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"}))]
    pub pod_labels: Option<BTreeMap<String, String>>,
    /// Extra annotations of the worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 4096}))]
    pub pod_annotations: Option<BTreeMap<String, String>>,
}

impl WorkerPodSpec {
    /// Parses the JSON of a `spec.worker` object (the controller's
    /// defaults for every worker come as such a flag).
    pub fn from_json(json: &str) -> Result<Self, String> {
        serde_json::from_str(json).map_err(|e| format!("not a Bridge spec.worker object: {e}"))
    }

    /// `self` where set, else `defaults` (field by field; `resources`
    /// requests and limits amount by amount).
    pub fn or(&self, defaults: &WorkerPodSpec) -> WorkerPodSpec {
        let amounts = |mine: Option<&ResourceAmounts>, base: Option<&ResourceAmounts>| match (mine, base) {
            (None, None) => None,
            (m, b) => {
                let (m, b) = (m.cloned().unwrap_or_default(), b.cloned().unwrap_or_default());
                Some(ResourceAmounts {
                    cpu: m.cpu.or(b.cpu),
                    memory: m.memory.or(b.memory),
                })
            }
        };
        let resources = match (&self.resources, &defaults.resources) {
            (None, None) => None,
            (m, b) => {
                let (m, b) = (m.clone().unwrap_or_default(), b.clone().unwrap_or_default());
                Some(WorkerResources {
                    requests: amounts(m.requests.as_ref(), b.requests.as_ref()),
                    limits: amounts(m.limits.as_ref(), b.limits.as_ref()),
                })
            }
        };
        WorkerPodSpec {
            resources,
            node_selector: self
                .node_selector
                .clone()
                .or_else(|| defaults.node_selector.clone()),
            tolerations: self.tolerations.clone().or_else(|| defaults.tolerations.clone()),
            affinity: self.affinity.clone().or_else(|| defaults.affinity.clone()),
            priority_class_name: self
                .priority_class_name
                .clone()
                .or_else(|| defaults.priority_class_name.clone()),
            pod_labels: self.pod_labels.clone().or_else(|| defaults.pod_labels.clone()),
            pod_annotations: self
                .pod_annotations
                .clone()
                .or_else(|| defaults.pod_annotations.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_overrides_the_defaults_field_by_field() {
        let defaults: WorkerPodSpec = serde_json::from_value(serde_json::json!({
            "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
            "nodeSelector": {"pool": "default"},
            "priorityClassName": "low"
        }))
        .unwrap();
        let mine: WorkerPodSpec = serde_json::from_value(serde_json::json!({
            "resources": {"limits": {"memory": "1Gi"}},
            "priorityClassName": "high"
        }))
        .unwrap();
        let merged = mine.or(&defaults);
        let r = merged.resources.unwrap();
        assert_eq!(r.limits.unwrap().memory.unwrap().0, "1Gi");
        assert_eq!(r.requests.unwrap().cpu.unwrap().0, "50m");
        assert_eq!(merged.priority_class_name.as_deref(), Some("high"));
        assert_eq!(merged.node_selector.unwrap()["pool"], "default");
    }
}
