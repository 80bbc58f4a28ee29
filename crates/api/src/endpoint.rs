//! `Endpoint`: an external WebSocket server to talk to.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{Duration, KeySelector, LocalObjectReference};

/// An external WebSocket server (`ws://` or `wss://`) that Bridges connect to.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "wsbridge.io",
    version = "v1alpha1",
    kind = "Endpoint",
    plural = "endpoints",
    namespaced,
    cel,
    status = "EndpointStatus",
    shortname = "wsep",
    shortname = "wsendpoint",
    category = "wsbridge",
    doc = "An external WebSocket server (ws:// or wss://) that Bridges connect to.",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url"),
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
pub struct EndpointSpec {
    /// The WebSocket URL: `ws://` or `wss://`, with host and optional path and
    /// query. Credentials belong in `auth`, never in the URL.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['ws', 'wss'] && url(self).getHostname() != ''")
        .message("url must be an absolute ws:// or wss:// URL"))]
    #[x_kube(validation = Rule::new("!self.matches('^[a-zA-Z]+://[^/?#]*@')")
        .message("url must not carry credentials; use auth.secretRef"))]
    pub url: String,

    /// Port to connect to, overriding the URL's (1–65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// Credentials sent in the opening handshake, read from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<EndpointAuth>,

    /// Extra headers sent in the opening handshake (not secret; use
    /// `auth.secretHeaders` for secret ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[A-Za-z0-9!#$%&*+.^_`|~-]{1,128}$'))")
        .message("header names must be HTTP tokens of at most 128 characters"))]
    #[x_kube(validation = Rule::new("self.all(k, !(k.lowerAscii() in ['host', 'authorization', 'connection', 'upgrade', 'sec-websocket-key', 'sec-websocket-version', 'sec-websocket-protocol', 'sec-websocket-extensions']))")
        .message("headers must not set Host, Authorization or handshake headers; use auth for credentials and subprotocols for the protocol"))]
    pub headers: Option<BTreeMap<String, HeaderValue>>,

    /// WebSocket subprotocols offered in `Sec-WebSocket-Protocol`, in order of preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub subprotocols: Option<Vec<Subprotocol>>,

    /// Text messages sent right after every connect, in order (many feeds
    /// need a subscribe message before they send anything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub open_messages: Option<Vec<OpenMessage>>,

    /// TLS settings for `wss://`: extra trusted CA and server name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EndpointTls>,

    /// Keep-alive pings and dead-connection detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<Keepalive>,

    /// Reconnect backoff: exponential with full jitter, forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect: Option<Reconnect>,

    /// Largest message accepted from or sent to the endpoint, in bytes
    /// (1 B – 64 MiB); default 1 MiB. Larger inbound messages are dropped and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 67108864))]
    pub max_message_bytes: Option<i64>,
}

/// A handshake header value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct HeaderValue(#[schemars(length(max = 4096))] pub String);

/// A WebSocket subprotocol name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Subprotocol(
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"))] pub String,
);

/// A text message sent after connecting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct OpenMessage(#[schemars(length(max = 65536))] pub String);

/// Credentials for the endpoint, from a Secret in the same namespace.
///
/// The Secret's keys decide the scheme: `token` is sent as
/// `Authorization: Bearer <token>`; `username` and `password` as basic auth.
/// `secretHeaders` sends further keys as headers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAuth {
    /// The Secret that holds the credentials.
    pub secret_ref: LocalObjectReference,
    /// Handshake headers whose values come from keys of the same Secret:
    /// header name → key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 16))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[A-Za-z0-9!#$%&*+.^_`|~-]{1,128}$'))")
        .message("header names must be HTTP tokens of at most 128 characters"))]
    pub secret_headers: Option<BTreeMap<String, SecretKeyName>>,
}

/// The key of a Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct SecretKeyName(
    #[schemars(length(min = 1, max = 253), regex(pattern = super::common::CONFIG_KEY))] pub String,
);

/// TLS settings for `wss://` endpoints. System roots are always trusted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.caSecretRef) && has(self.caConfigMapRef))")
    .message("set at most one of caSecretRef and caConfigMapRef"))]
pub struct EndpointTls {
    /// A PEM CA bundle in a Secret, trusted in addition to the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<KeySelector>,
    /// A PEM CA bundle in a ConfigMap, trusted in addition to the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_config_map_ref: Option<KeySelector>,
    /// Name to verify the server certificate against, when not the URL's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
}

/// Keep-alive pings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Keepalive {
    /// Time between pings, 1s–1h; default `20s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1h')")
        .message("interval must be between 1s and 1h"))]
    pub interval: Option<Duration>,
    /// How long to wait for a pong before the connection is declared dead and
    /// replaced, 100ms–10m; default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('100ms') && duration(self) <= duration('10m')")
        .message("timeout must be between 100ms and 10m"))]
    pub timeout: Option<Duration>,
}

/// Reconnect backoff.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.initialDelay) || !has(self.maxDelay) || duration(self.initialDelay) <= duration(self.maxDelay)")
    .message("initialDelay must not exceed maxDelay")
    .field_path(".initialDelay"))]
pub struct Reconnect {
    /// First delay before reconnecting, 1ms–10m; default `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1ms') && duration(self) <= duration('10m')")
        .message("initialDelay must be between 1ms and 10m"))]
    pub initial_delay: Option<Duration>,
    /// Longest delay between attempts, 1ms–1h; default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1ms') && duration(self) <= duration('1h')")
        .message("maxDelay must be between 1ms and 1h"))]
    pub max_delay: Option<Duration>,
}

/// Observed state of an Endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// `Ready` is true when the spec is usable: its Secrets exist with usable keys.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
