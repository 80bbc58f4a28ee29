//! The channel routes of standalone mode: `POST /channels/{namespace}/{name}`
//! publishes; `GET` with a WebSocket upgrade subscribes, and `GET /ws/{namespace}`
//! multiplexes channels (see [`super::websocket`]).
//!
//! Standalone mode has no Kubernetes API to review tokens against, so
//! publishing is open to whoever can reach the listener (loopback by
//! default), whatever the Channel's `allowAnonymousPublish` says.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};

use wsbridge_dataplane::delivery::{Publication, publish_key};
use wsbridge_http::connection;
use wsbridge_http::publish::{self, SentOut};

use tokio::sync::watch;

use super::runtime::{PublishError, Runtime};
use super::websocket;

/// What the channel routes need: the data plane, and the process's stop
/// signal (WebSocket clients are closed with "going away" on it).
#[derive(Clone)]
pub struct ChannelRoutes {
    /// The running data plane.
    pub runtime: Arc<Runtime>,
    /// True once the process stops.
    pub stop: watch::Receiver<bool>,
    /// How WebSocket subscribers are checked for life.
    pub keepalive: ClientKeepalive,
}

pub use wsbridge_http::websocket::ClientKeepalive;

/// `POST` publishes, `GET` with a WebSocket upgrade subscribes; to merge
/// with the ops routes.
pub fn router(routes: ChannelRoutes) -> Router {
    Router::new()
        .route(publish::CHANNEL_ROUTE, post(handle).get(websocket::subscribe))
        .route(
            wsbridge_http::websocket::MULTIPLEX_ROUTE,
            get(websocket::multiplex),
        )
        .layer(axum::middleware::from_fn(connection::close_unless_body_read))
        .with_state(routes)
}

async fn handle(
    State(ChannelRoutes { runtime, .. }): State<ChannelRoutes>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let channel = match publish::channel_key(path) {
        Ok(channel) => channel,
        Err(rejection) => return rejection,
    };
    let Some(max) = runtime.max_message_bytes(&channel) else {
        return publish::channel_not_found(&channel);
    };
    let key = match publish_key(&headers) {
        Ok(key) => key,
        Err(e) => return publish::error(StatusCode::BAD_REQUEST, "InvalidIdempotencyKey", e.to_string()),
    };
    let payload = match publish::read_message(&headers, body, max).await {
        Ok(payload) => payload,
        Err(rejection) => return rejection,
    };
    // A retried publish (same key) waits for the first and picks up where it ended.
    let published = match &key {
        Some(key) => {
            let mut record = runtime.recent_publishes().lock(&channel, key).await;
            runtime.publish_any(&channel, payload, &mut record).await
        }
        None => {
            runtime
                .publish_any(&channel, payload, &mut Publication::default())
                .await
        }
    };
    match published {
        Ok(published) => publish::accepted(
            &published.id,
            &channel,
            published.subscribers,
            SentOut::Endpoints(published.endpoints),
        ),
        // A reload removed the channel after it was looked up.
        Err(PublishError::NotFound(channel)) => publish::channel_not_found(&channel),
        Err(PublishError::TooLarge { size, max }) => publish::too_large(Some(size), max),
        Err(e @ PublishError::Unavailable { .. }) => publish::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "EndpointUnavailable",
            e.to_string(),
        ),
        Err(e @ PublishError::OverBudget(_)) => publish::error(
            StatusCode::SERVICE_UNAVAILABLE,
            publish::MEMORY_BUDGET_EXHAUSTED,
            e.to_string(),
        ),
        Err(e @ PublishError::Broker(_)) => {
            publish::error(StatusCode::SERVICE_UNAVAILABLE, BROKER_UNAVAILABLE, e.to_string())
        }
    }
}

/// The reason of a `503` for a message of a `rabbitmq` channel that the
/// broker did not confirm.
pub const BROKER_UNAVAILABLE: &str = "BrokerUnavailable";
