//! Remote clients at the gateway: `GET /channels/{ns}/{name}` with a
//! WebSocket upgrade and `GET /ws/{ns}` (the shared routes of
//! `wsbridge_http::websocket`), on the gateway's caches and access checks.
//!
//! Who may: a channel with `allowAnonymousSubscribe` (`allowAnonymousPublish`)
//! takes anonymous subscribers (publishers); otherwise the client's token
//! must pass a TokenReview and a SubjectAccessReview for the verb
//! `subscribe` (`publish`) on the channel, as an HTTP publish does.
//!
//! What they receive: a `memory` channel lives in its worker's and each
//! gateway replica's memory, so no replica sees all of its messages, and a
//! subscription is refused (409 `ChannelNotShared`) with what to do about
//! it. A `rabbitmq` channel is served: while this replica has at least one
//! client of it, it consumes an exclusive queue of its own bound to the
//! channel's exchange with `#`
//! ([`wsbridge_broker::topology::declare_channel_listener`]), which gets
//! everything the channel carries, whoever wrote it (endpoint messages,
//! publishes through any replica, MQTT and AMQP publishes), and broadcasts
//! it to this replica's clients; the listener stops a second or so after
//! the last client left (its queue goes with it). The replica's own
//! publishes come back through that queue too, so they are never handed to
//! clients directly: each client gets each message once. Without a broker
//! such a subscription is refused (503 `NoBroker`). Frames and `Publish`
//! commands are publishes on any channel.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use wsbridge_core::{ChannelKey, SecretString};
use wsbridge_dataplane::Payload;
use wsbridge_dataplane::clients::ClientFeed;
use wsbridge_http::publish;
use wsbridge_http::websocket::{self, ChannelHub, Connections, Refusal, Verb};

use super::GatewayState;
use super::access::Denied;

/// The largest frame of a multiplexed connection: the schema's largest
/// `maxMessageBytes`. Each publish is held to its channel's own limit.
const LARGEST_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The gateway's channels as remote clients reach them.
pub(crate) struct GatewayHub {
    pub shared: Arc<GatewayState>,
    pub connections: Connections,
}

/// The channel routes: on one path a POST publishes and a GET upgrades to a
/// WebSocket subscription (one method router, so that neither answers the
/// other's method with 405), and `GET /ws/{ns}` multiplexes.
pub(crate) fn router(hub: Arc<GatewayHub>) -> axum::Router {
    let publish_or_subscribe = axum::routing::post(crate::publish::handle)
        .with_state(hub.shared.clone())
        .merge(axum::routing::get(subscribe).with_state(hub.clone()));
    axum::Router::new()
        .route(publish::CHANNEL_ROUTE, publish_or_subscribe)
        .route(
            websocket::MULTIPLEX_ROUTE,
            axum::routing::get(multiplex).with_state(hub),
        )
        .layer(axum::middleware::from_fn(
            wsbridge_http::connection::close_unless_body_read,
        ))
}

/// `GET /channels/{namespace}/{name}`: a WebSocket subscription.
pub(crate) async fn subscribe(
    State(hub): State<Arc<GatewayHub>>,
    path: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Response {
    match publish::channel_key(path) {
        Ok(channel) => {
            let connections = hub.connections.clone();
            websocket::subscribe(hub, connections, channel, request).await
        }
        Err(rejection) => rejection,
    }
}

/// `GET /ws/{namespace}`: a multiplexed connection.
pub(crate) async fn multiplex(
    State(hub): State<Arc<GatewayHub>>,
    Path(namespace): Path<String>,
    request: Request,
) -> Response {
    let connections = hub.connections.clone();
    websocket::multiplex(hub, connections, namespace, request).await
}

impl ChannelHub for GatewayHub {
    fn max_message_bytes(&self, channel: &ChannelKey) -> Option<usize> {
        let channels = self.shared.channels.read().ok()?;
        channels.get(channel).map(|facts| facts.max_message_bytes)
    }

    fn max_message_bytes_in(&self, _namespace: &str) -> usize {
        LARGEST_MESSAGE_BYTES
    }

    async fn authorize(
        &self,
        verb: Verb,
        channel: &ChannelKey,
        token: Option<&SecretString>,
    ) -> Result<(), Refusal> {
        let facts = self
            .shared
            .channels
            .read()
            .ok()
            .and_then(|c| c.get(channel).copied())
            .ok_or_else(|| Refusal::channel_not_found(channel))?;
        let anonymous = match verb {
            Verb::Subscribe => facts.allow_anonymous_subscribe,
            Verb::Publish => facts.allow_anonymous_publish,
        };
        if anonymous {
            return Ok(());
        }
        let Some(token) = token else {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                format!(
                    "channel {channel} needs a Kubernetes token to {}: Authorization: Bearer, or from a browser the subprotocol base64url.bearer.authorization.k8s.io.<token> beside \"wsbridge\"",
                    verb.as_str()
                ),
            ));
        };
        self.shared
            .access
            .allows(verb.as_str(), token.expose(), channel)
            .await
            .map_err(refusal)
    }

    fn join(&self, channel: ChannelKey) -> Result<ClientFeed, Refusal> {
        if self.shared.is_durable(&channel) {
            let Some(durable) = self.shared.durable.as_ref() else {
                let refused = crate::publish::no_broker(&channel);
                return Err(Refusal::new(refused.status, refused.reason, refused.message));
            };
            let feed = self.shared.clients.join(channel.clone()).map_err(|e| {
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "TooManyClients", e.to_string())
            })?;
            // After the join: the sweep that stops listeners without
            // clients counts this one.
            self.shared.listen(durable, &channel);
            return Ok(feed);
        }
        Err(Refusal::new(
            StatusCode::CONFLICT,
            "ChannelNotShared",
            format!(
                "channel {channel} keeps its messages in memory (backend: memory), which gateway replicas do not share; remote subscribers need spec.backend: rabbitmq"
            ),
        ))
    }

    async fn publish(&self, channel: &ChannelKey, payload: Payload) -> Result<String, Refusal> {
        super::publish::publish_payload(&self.shared, channel, payload, None)
            .await
            .map(|published| published.id)
            .map_err(|refused| Refusal::new(refused.status, refused.reason, refused.message))
    }

    fn count_unresponsive(&self, channel: &ChannelKey) {
        self.shared.clients.count_unresponsive(channel);
    }
}

/// An access check's refusal as a remote client hears it.
fn refusal(denied: Denied) -> Refusal {
    let (status, reason) = denied.status_and_reason();
    Refusal::new(status, reason, denied.to_string())
}
