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
#[x_kube(validation = kube::core::Rule::new(
    "has(self.backlog) == has(oldSelf.backlog) && (!has(self.backlog) || self.backlog == oldSelf.backlog)"
).message(
    "spec.backlog cannot change once the Subscription exists: it is the bound of its broker queue, fixed when the queue is created; to change it, create a Subscription with another name and delete this one"
).field_path(".backlog"))]
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
    /// same namespace, written `whsec_` + base64 of 24 to 64 random bytes. In
    /// a cluster the bridge workers sign endpoint messages; messages
    /// published through the gateway are delivered unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_ref: Option<KeySelector>,
    /// The bound of this Subscription's durable backlog, on a Channel with
    /// `backend: rabbitmq` (ignored on `memory`, whose queue is
    /// `delivery.queueCapacity`). Beyond it the oldest messages are
    /// dead-lettered to the broker's `wsbridge.dead-letter.{namespace}.{name}`
    /// queue, so that a subscriber that stays away never slows the others.
    /// Fixed once the Subscription exists: it is the broker queue's bound,
    /// set when the queue is created (as the Messaging Topology Operator
    /// keeps a Queue's arguments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<BacklogSpec>,
}

/// How much a Subscription's durable backlog holds; whichever bound is
/// reached first applies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BacklogSpec {
    /// Bytes of message bodies, 1 KiB – 1 TiB; default 1 GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 1099511627776_i64))]
    pub max_bytes: Option<i64>,
    /// Messages, 1 – 100,000,000; default 1,000,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000000))]
    pub max_messages: Option<i64>,
}

impl BacklogSpec {
    /// Default bound in bytes: an hour of a busy feed, well within a broker's disk.
    pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
    /// Default bound in messages.
    pub const DEFAULT_MAX_MESSAGES: u64 = 1_000_000;

    /// The bound in bytes, the default when unset.
    pub fn max_bytes(spec: Option<&Self>) -> u64 {
        spec.and_then(|b| b.max_bytes)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(Self::DEFAULT_MAX_BYTES)
    }

    /// The bound in messages, the default when unset.
    pub fn max_messages(spec: Option<&Self>) -> u64 {
        spec.and_then(|b| b.max_messages)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(Self::DEFAULT_MAX_MESSAGES)
    }
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

#[cfg(test)]
mod tests {
    use super::BacklogSpec;

    #[test]
    fn an_unset_backlog_bound_takes_the_default() {
        assert_eq!(BacklogSpec::max_bytes(None), 1 << 30);
        assert_eq!(BacklogSpec::max_messages(None), 1_000_000);
        let half_set = BacklogSpec {
            max_bytes: Some(4096),
            max_messages: None,
        };
        assert_eq!(BacklogSpec::max_bytes(Some(&half_set)), 4096);
        assert_eq!(BacklogSpec::max_messages(Some(&half_set)), 1_000_000);
    }
}
