//! `Bridge`: connects one Channel to one Endpoint.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{DNS1123_SUBDOMAIN, KeySelector};

/// Connects one Channel to one Endpoint: what the endpoint sends is broadcast
/// to the channel's subscribers; what is published on the channel is sent to
/// the endpoint.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "wsbridge.io",
    version = "v1alpha1",
    kind = "Bridge",
    plural = "bridges",
    namespaced,
    cel,
    status = "BridgeStatus",
    shortname = "wsbr",
    shortname = "wsbridges",
    category = "wsbridge",
    selectable = ".spec.channel",
    selectable = ".spec.endpoint",
    doc = "Connects one Channel to one Endpoint: endpoint messages are broadcast to the channel's subscribers, published messages are sent to the endpoint.",
    printcolumn(name = "Channel", type_ = "string", json_path = ".spec.channel"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".spec.endpoint"),
    printcolumn(
        name = "Connected",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Connected\")].status"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // The worker's own word on the connection (EndpointUnreachable, ...)
    // where Ready says only NotConnected: `kubectl get -o wide`.
    printcolumn(
        name = "Connection",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Connected\")].reason",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BridgeSpec {
    /// Name of the Channel, in the same namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS1123_SUBDOMAIN))]
    pub channel: String,
    /// Name of the Endpoint, in the same namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS1123_SUBDOMAIN))]
    pub endpoint: String,
    /// A token in a Secret, sent to subscribers as `Authorization: Bearer
    /// <token>` with each endpoint message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<KeySelector>,
    /// The worker pod's resources and scheduling (node selector,
    /// tolerations, affinity, priority class, extra labels and
    /// annotations); unset fields take the defaults set for all workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<super::WorkerPodSpec>,
}

/// Observed state of a Bridge.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BridgeStatus {
    /// `Connected` (written by the worker) and `Ready` (worker available and
    /// connected, written by the controller).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The worker Deployment that holds the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Where the worker accepts messages to send out to the endpoint (the
    /// publish path). Written by the worker; internal to the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<super::Addressable>,
    /// When the worker last connected to the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_connected_time: Option<Time>,
}
