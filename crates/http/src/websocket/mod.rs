//! WebSocket remote clients of channels, for every role that serves them.
//!
//! Two forms, one behaviour:
//! - `GET /channels/{namespace}/{name}` with an upgrade ([`subscribe`]):
//!   the connection is one channel; each channel message is one frame
//!   (text stays text, binary stays binary) and each frame the client sends
//!   is a publish.
//! - `GET /ws/{namespace}` ([`multiplex`]): one connection, many channels of
//!   a namespace, driven by the JSON commands of [`commands`].
//!
//! A role plugs its channels in through [`ChannelHub`]: standalone serves
//! them from its process; the gateway reviews tokens and serves the
//! channels its broker carries. Tokens come as `Authorization: Bearer` or,
//! from browsers (which cannot set headers on a WebSocket), as the
//! Kubernetes subprotocol `base64url.bearer.authorization.k8s.io.<token>`
//! (see [`handshake`]).
//!
//! The upgrade is answered on hyper's upgrade and tokio-tungstenite rather
//! than through axum's `ws` extractor, which would bring a second version of
//! tungstenite into the binary next to the endpoint client's.

pub mod commands;
mod connection;
pub mod handshake;
mod multiplexed;
mod single;

use std::future::Future;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wsbridge_core::{ChannelKey, SecretString};
use wsbridge_dataplane::Payload;
use wsbridge_dataplane::clients::ClientFeed;

pub use multiplexed::{MULTIPLEX_ROUTE, multiplex};
pub use single::subscribe;

/// What a remote client asks to do on a channel: the custom RBAC verbs on
/// `channels.wsbridge.io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Receive the channel's messages.
    Subscribe,
    /// Send messages on the channel.
    Publish,
}

impl Verb {
    /// The RBAC verb.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Subscribe => "subscribe",
            Verb::Publish => "publish",
        }
    }
}

/// Why a remote client's request was refused: an HTTP status before the
/// upgrade, an error reply or a close code after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status that says it (401, 403, 404, 413, 503, ...).
    pub status: StatusCode,
    /// A machine-readable reason (`Forbidden`, `ChannelNotFound`, ...).
    pub reason: &'static str,
    /// What a human needs to know; never a token.
    pub message: String,
}

impl Refusal {
    /// A refusal with `status`, `reason` and `message`.
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }

    /// 404 for a channel that does not exist.
    pub fn channel_not_found(channel: &ChannelKey) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ChannelNotFound",
            format!("channel {channel} not found"),
        )
    }

    /// The JSON error response (before the upgrade).
    pub fn into_response(self) -> Response {
        crate::publish::error(self.status, self.reason, self.message)
    }

    /// The close code that says it on an open connection.
    fn close_code(&self) -> CloseCode {
        match self.status {
            StatusCode::PAYLOAD_TOO_LARGE => CloseCode::Size,
            StatusCode::SERVICE_UNAVAILABLE => CloseCode::Again,
            _ => CloseCode::Policy,
        }
    }
}

/// The channels of a role, as its remote clients reach them.
pub trait ChannelHub: Send + Sync + 'static {
    /// The largest message `channel` takes; `None` when there is no such
    /// channel.
    fn max_message_bytes(&self, channel: &ChannelKey) -> Option<usize>;

    /// The largest message any channel of `namespace` takes: bounds the
    /// frames of a multiplexed connection.
    fn max_message_bytes_in(&self, namespace: &str) -> usize;

    /// Whether the holder of `token` (none: an anonymous client) may `verb`
    /// on `channel`.
    fn authorize(
        &self,
        verb: Verb,
        channel: &ChannelKey,
        token: Option<&SecretString>,
    ) -> impl Future<Output = Result<(), Refusal>> + Send;

    /// Adds a client of `channel`: its feed yields every message of the
    /// channel from now on.
    fn join(&self, channel: ChannelKey) -> Result<ClientFeed, Refusal>;

    /// Publishes what a client sent; the message id.
    fn publish(
        &self,
        channel: &ChannelKey,
        payload: Payload,
    ) -> impl Future<Output = Result<String, Refusal>> + Send;

    /// Counts a client of `channel` dropped for not answering pings.
    fn count_unresponsive(&self, channel: &ChannelKey);
}

/// Pings that find remote clients that are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientKeepalive {
    /// Time between pings.
    pub interval: Duration,
    /// How long a ping may go unanswered, and a frame unwritten.
    pub timeout: Duration,
}

impl Default for ClientKeepalive {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(20),
            timeout: Duration::from_secs(10),
        }
    }
}

/// How a role's remote client connections run.
#[derive(Clone)]
pub struct Connections {
    /// Liveness checks.
    pub keepalive: ClientKeepalive,
    /// True once the process stops: clients are closed with 1001.
    pub stop: watch::Receiver<bool>,
}
