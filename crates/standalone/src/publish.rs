//! The publish path of standalone mode: `POST /channels/{namespace}/{name}`.
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
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use wsbridge_http::publish::{self, error, too_large};

use super::runtime::{PublishError, Runtime};

/// The publish routes, to merge with the ops routes.
pub fn router(runtime: Arc<Runtime>) -> Router {
    Router::new()
        .route("/channels/{namespace}/{name}", post(publish))
        .with_state(runtime)
}

async fn publish(
    State(runtime): State<Arc<Runtime>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let channel = match publish::channel_key(path) {
        Ok(channel) => channel,
        Err(rejection) => return rejection,
    };
    let Some(max) = runtime.max_message_bytes(&channel) else {
        return error(
            StatusCode::NOT_FOUND,
            "ChannelNotFound",
            format!("channel {channel} not found"),
        );
    };
    let payload = match publish::read_message(&headers, body, max).await {
        Ok(payload) => payload,
        Err(rejection) => return rejection,
    };
    match runtime.publish(&channel, payload) {
        Ok(published) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({
                "id": published.id,
                "channel": channel.to_string(),
                "subscribers": published.subscribers,
                "endpoints": published.endpoints,
            })),
        )
            .into_response(),
        Err(e @ PublishError::NotFound(_)) => error(StatusCode::NOT_FOUND, "ChannelNotFound", e.to_string()),
        Err(PublishError::TooLarge { size, max }) => too_large(Some(size), max),
        Err(e @ PublishError::Unavailable { .. }) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "EndpointUnavailable",
            e.to_string(),
        ),
    }
}
