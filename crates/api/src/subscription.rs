//! `Subscription`: an HTTP subscriber of a Channel.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{DNS1123_SUBDOMAIN, DeliverySpec, Destination, KeySelector};

/// Subscribes an HTTP subscriber (a Service, or an absolute URI) to a Channel.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "wsbridge.io",
    version = "v1alpha1",
    kind = "Subscription",
    plural = "subscriptions",
    namespaced,
    cel,
    status = "SubscriptionStatus",
    shortname = "wssub",
    shortname = "wssubscription",
    category = "wsbridge",
    selectable = ".spec.channel",
    doc = "Subscribes an HTTP subscriber (a Service in the same namespace, or an absolute URI) to a Channel.",
    printcolumn(name = "Channel", type_ = "string", json_path = ".spec.channel"),
    printcolumn(name = "Subscriber", type_ = "string", json_path = ".status.subscriberUri"),
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
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionSpec {
    /// Name of the Channel, in the same namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS1123_SUBDOMAIN))]
    pub channel: String,
    /// Who receives the channel's messages as HTTP POSTs.
    pub subscriber: Destination,
    /// Delivery options; unset fields take the Channel's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    /// Signs every delivery as the Standard Webhooks specification defines
    /// it (`webhook-id`, `webhook-timestamp`, `webhook-signature`: HMAC-SHA256
    /// of `id.timestamp.body`) with the secret in this key of a Secret in the
    /// same namespace, written `whsec_` + base64 of 24 to 64 random bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_ref: Option<KeySelector>,
}

/// Observed state of a Subscription.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatus {
    /// The resolved address messages are POSTed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber_uri: Option<String>,
    /// The resolved dead-letter sink, when one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink_uri: Option<String>,
    /// `Ready` is true when the Channel and the subscriber resolve.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
