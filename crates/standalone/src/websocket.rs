//! Remote clients of standalone mode: the process's channels as a
//! [`ChannelHub`], served by the shared WebSocket routes
//! (`GET /channels/{namespace}/{name}` and `GET /ws/{namespace}`).
//!
//! Like publishing, subscribing is open in standalone mode: there is no
//! Kubernetes API to review tokens against, so a token a client sends is
//! accepted and ignored.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use wsbridge_core::{ChannelKey, SecretString};
use wsbridge_dataplane::Payload;
use wsbridge_dataplane::clients::ClientFeed;
use wsbridge_dataplane::delivery::Publication;
use wsbridge_http::publish;
use wsbridge_http::websocket::{self, ChannelHub, Connections, Refusal, Verb};

use super::publish::ChannelRoutes;
use super::runtime::{PublishError, Runtime};

/// `GET /channels/{namespace}/{name}`: upgrades to a WebSocket subscription.
pub async fn subscribe(
    State(routes): State<ChannelRoutes>,
    path: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Response {
    match publish::channel_key(path) {
        Ok(channel) => {
            websocket::subscribe(routes.runtime.clone(), connections(&routes), channel, request).await
        }
        Err(rejection) => rejection,
    }
}

/// `GET /ws/{namespace}`: a multiplexed connection.
pub async fn multiplex(
    State(routes): State<ChannelRoutes>,
    Path(namespace): Path<String>,
    request: Request,
) -> Response {
    websocket::multiplex(routes.runtime.clone(), connections(&routes), namespace, request).await
}

fn connections(routes: &ChannelRoutes) -> Connections {
    Connections {
        keepalive: routes.keepalive,
        stop: routes.stop.clone(),
    }
}

impl ChannelHub for Runtime {
    fn max_message_bytes(&self, channel: &ChannelKey) -> Option<usize> {
        Runtime::max_message_bytes(self, channel)
    }

    fn max_message_bytes_in(&self, namespace: &str) -> usize {
        self.max_message_bytes_in(namespace)
    }

    async fn authorize(&self, _: Verb, _: &ChannelKey, _: Option<&SecretString>) -> Result<(), Refusal> {
        Ok(())
    }

    fn join(&self, channel: ChannelKey) -> Result<ClientFeed, Refusal> {
        self.clients()
            .join(channel)
            .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "TooManyClients", e.to_string()))
    }

    async fn publish(&self, channel: &ChannelKey, payload: Payload) -> Result<String, Refusal> {
        self.publish_any(channel, payload, &mut Publication::default())
            .await
            .map(|published| published.id)
            .map_err(refusal)
    }

    fn count_unresponsive(&self, channel: &ChannelKey) {
        self.clients().count_unresponsive(channel);
    }
}

/// A refused publish as a remote client hears it.
fn refusal(e: PublishError) -> Refusal {
    let message = e.to_string();
    match e {
        PublishError::NotFound(channel) => Refusal::channel_not_found(&channel),
        PublishError::TooLarge { .. } => {
            Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "MessageTooLarge", message)
        }
        PublishError::Unavailable { .. } => {
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "EndpointUnavailable", message)
        }
        PublishError::OverBudget(_) => Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            publish::MEMORY_BUDGET_EXHAUSTED,
            message,
        ),
        PublishError::Broker(_) => Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            super::publish::BROKER_UNAVAILABLE,
            message,
        ),
    }
}
