//! `Channel`: a named pub/sub channel.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::DeliverySpec;

/// A named pub/sub channel. What is published on it, or arrives from a
/// bridged endpoint, is broadcast to every subscriber.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "wsbridge.io",
    version = "v1alpha1",
    kind = "Channel",
    plural = "channels",
    namespaced,
    cel,
    status = "ChannelStatus",
    shortname = "wsch",
    shortname = "wschannel",
    category = "wsbridge",
    doc = "A named pub/sub channel; what is published on it, or arrives from a bridged endpoint, is broadcast to every subscriber.",
    printcolumn(name = "Address", type_ = "string", json_path = ".status.address.url"),
    printcolumn(name = "Bridges", type_ = "integer", json_path = ".status.bridges"),
    printcolumn(
        name = "Subscriptions",
        type_ = "integer",
        json_path = ".status.subscriptions"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ChannelSpec {
    /// Accept publishes without a Kubernetes bearer token. Default false:
    /// publishers need RBAC permission for the verb `publish` on this channel.
    #[serde(default)]
    pub allow_anonymous_publish: bool,
    /// Accept remote subscribers (WebSocket clients of the gateway; MQTT and
    /// AMQP clients of RabbitMQ) without a token. Default false: they need
    /// RBAC permission for the verb `subscribe` on this channel. In a
    /// cluster, remote subscribers need `backend: rabbitmq`.
    #[serde(default)]
    pub allow_anonymous_subscribe: bool,
    /// Delivery defaults for this channel's Subscriptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    /// Largest message accepted by the publish gateway, in bytes (1 B – 64 MiB);
    /// default 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 67108864))]
    pub max_message_bytes: Option<i64>,
    /// Where the channel's messages live between arrival and delivery:
    /// `memory` (default) in the process that received them; `rabbitmq` in
    /// the installation's RabbitMQ, durably (a publish is accepted only once
    /// the broker confirmed it, and each Subscription has a backlog of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<ChannelBackend>,
}

/// Where a channel's messages live between arrival and delivery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChannelBackend {
    /// In the memory of the process that received them: fast, lost on a
    /// restart, one process's fan-out.
    #[default]
    Memory,
    /// In RabbitMQ: confirmed before accepted, a durable backlog per
    /// Subscription, delivered after restarts.
    Rabbitmq,
}

impl ChannelSpec {
    /// The backend, `memory` when unset.
    pub fn backend(&self) -> ChannelBackend {
        self.backend.unwrap_or_default()
    }
}

/// Where publishers send messages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Addressable {
    /// `POST` a message here to publish it.
    pub url: String,
}

/// Observed state of a Channel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    /// The publish address (the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    /// Bridges that connect this channel to an endpoint.
    #[serde(default)]
    pub bridges: i32,
    /// Subscriptions on this channel.
    #[serde(default)]
    pub subscriptions: i32,
    /// `Ready` is true when the channel has an address.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
