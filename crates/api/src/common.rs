//! Types shared by several kinds: references, durations, delivery options.

use std::borrow::Cow;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern of a DNS-1123 subdomain: the name of most namespaced objects
/// (`wsbridge_core::names::is_dns1123_subdomain` checks it without a regex).
pub const DNS1123_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Pattern of a DNS-1035 label: the name of a Service.
pub const DNS1035_LABEL: &str = r"^[a-z]([-a-z0-9]*[a-z0-9])?$";
/// Pattern of a key in a Secret or ConfigMap.
pub const CONFIG_KEY: &str = r"^[-._a-zA-Z0-9]+$";
/// Pattern of a Go duration as Kubernetes writes them (`200ms`, `5s`, `1m30s`).
pub const DURATION: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A duration written the Go way: `200ms`, `5s`, `1m30s`.
///
/// Kept as the user wrote it, so that what the API server stores round-trips
/// exactly; [`Duration::get`] parses it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(pub String);

impl Duration {
    /// The parsed value. Objects are validated before use, so an error here
    /// means the object skipped validation.
    pub fn get(&self) -> Result<std::time::Duration, String> {
        let parsed: kube::core::Duration = self
            .0
            .parse()
            .map_err(|e| format!("invalid duration {:?}: {e}", self.0))?;
        if parsed.is_negative() {
            return Err(format!("negative duration {:?}", self.0));
        }
        Ok(parsed.into())
    }
}

impl From<&str> for Duration {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "maxLength": 32,
            "pattern": DURATION,
        })
    }
}

/// A reference to an object by name, in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    /// Name of the object, in the namespace of the referring object.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS1123_SUBDOMAIN))]
    pub name: String,
}

/// A key of a Secret (or ConfigMap) in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeySelector {
    /// Name of the Secret or ConfigMap, in the namespace of the referring object.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS1123_SUBDOMAIN))]
    pub name: String,
    /// Key within it.
    #[schemars(length(min = 1, max = 253), regex(pattern = CONFIG_KEY))]
    pub key: String,
}

/// How the delay between retries grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackoffPolicy {
    /// `backoffDelay * attempt`.
    Linear,
    /// `backoffDelay * 2^(attempt-1)`.
    Exponential,
}

/// Whether a subscriber receives messages one at a time, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// One request in flight per subscriber; messages arrive in order.
    Ordered,
    /// Up to `maxInFlight` concurrent requests per subscriber; order is not kept.
    Unordered,
}

/// Which message gives way when a subscriber's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OverflowPolicy {
    /// The new message is refused; the queue keeps what it has.
    DropNewest,
    /// The oldest queued messages give way to the new one.
    DropOldest,
}

/// The kinds a destination reference may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DestinationKind {
    /// A core/v1 Service.
    Service,
}

/// A Service in the same namespace that receives HTTP POSTs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceReference {
    /// Kind of the referenced object. Only `Service` is supported.
    #[serde(default = "ServiceReference::default_kind")]
    pub kind: DestinationKind,
    /// Name of the Service, in the namespace of the referring object.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS1035_LABEL))]
    pub name: String,
    /// Port of the Service to deliver to. Defaults to 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

impl ServiceReference {
    fn default_kind() -> DestinationKind {
        DestinationKind::Service
    }
}

/// Where HTTP deliveries go: a Service in the same namespace, or an absolute URI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.ref) != has(self.uri)")
    .message("exactly one of ref or uri must be set"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.uri) || !has(self.path)")
    .message("path applies to ref only; put the path in uri"))]
pub struct Destination {
    /// A Service in the same namespace.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceReference>,
    /// An absolute `http://` or `https://` URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = kube::core::Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''")
        .message("uri must be an absolute http:// or https:// URL"))]
    pub uri: Option<String>,
    /// Path of the request on the referenced Service, starting with `/`. Defaults to `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[^\s]*$"))]
    pub path: Option<String>,
}

/// How messages are delivered to subscribers. Every field is optional: a
/// Subscription's value overrides its Channel's, which overrides the built-in
/// default given on each field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.maxInFlight) || !has(self.ordering) || self.ordering == 'unordered'")
    .message("maxInFlight applies only to unordered delivery")
    .field_path(".maxInFlight"))]
pub struct DeliverySpec {
    /// Retries after the first attempt before a message is dead-lettered. 0–100; default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub retry: Option<i32>,
    /// How the delay between retries grows: `linear` or `exponential` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_policy: Option<BackoffPolicy>,
    /// Base delay between retries, 1ms–1h; default `200ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("duration(self) >= duration('1ms') && duration(self) <= duration('1h')")
        .message("backoffDelay must be between 1ms and 1h"))]
    pub backoff_delay: Option<Duration>,
    /// Time limit of one delivery attempt, 1ms–10m; default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("duration(self) >= duration('1ms') && duration(self) <= duration('10m')")
        .message("timeout must be between 1ms and 10m"))]
    pub timeout: Option<Duration>,
    /// `ordered` (default: one request in flight, in order) or `unordered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<Ordering>,
    /// Concurrent requests per subscriber when unordered, 1–1024; default 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_in_flight: Option<i32>,
    /// Messages waiting per subscriber before the overflow is dead-lettered
    /// (or dropped), 1–100000; default 1024. Bounds memory under any load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub queue_capacity: Option<i32>,
    /// Bytes of messages waiting per subscriber before the overflow is
    /// dead-lettered (or dropped, reason `queue_bytes`), 1 KiB–4 GiB;
    /// default 16 MiB. The process as a whole also keeps to its memory
    /// budget (half its memory limit): beyond it, the subscribers furthest
    /// behind give way first (reason `memory_budget`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 4294967296_i64))]
    pub queue_capacity_bytes: Option<i64>,
    /// Which message gives way at the queue's bounds: `dropNewest`
    /// (default: the new message is refused) or `dropOldest` (the oldest
    /// queued ones make room). Either way it goes to the dead-letter sink
    /// where one is set, and is counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow_policy: Option<OverflowPolicy>,
    /// Where messages that cannot be delivered go. Without one they are
    /// dropped and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink: Option<Destination>,
}
