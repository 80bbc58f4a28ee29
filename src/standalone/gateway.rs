//! The publish path of standalone mode: `POST /channels/{namespace}/{name}`.
//!
//! Standalone mode has no Kubernetes API to review tokens against, so
//! publishing is open to whoever can reach the listener (loopback by
//! default), whatever the Channel's `allowAnonymousPublish` says.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use super::runtime::{PublishError, Runtime};
use crate::dataplane::Payload;
use crate::dataplane::routing::ChannelKey;

/// The publish routes, to merge with the ops routes.
pub fn router(runtime: Arc<Runtime>) -> Router {
    Router::new()
        .route("/channels/{namespace}/{name}", post(publish))
        .with_state(runtime)
}

fn error(status: StatusCode, reason: &str, message: String) -> Response {
    (
        status,
        axum::Json(json!({"error": message, "reason": reason, "code": status.as_u16()})),
    )
        .into_response()
}

fn too_large(size: Option<usize>, max: usize) -> Response {
    let message = match size {
        Some(size) => format!("message of {size} bytes exceeds the limit of {max} bytes"),
        None => format!("message exceeds the limit of {max} bytes"),
    };
    error(StatusCode::PAYLOAD_TOO_LARGE, "MessageTooLarge", message)
}

async fn publish(
    State(runtime): State<Arc<Runtime>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let channel = ChannelKey::new(namespace, name);
    let Some(max) = runtime.max_message_bytes(&channel) else {
        return error(
            StatusCode::NOT_FOUND,
            "ChannelNotFound",
            format!("channel {channel} not found"),
        );
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = declared.filter(|s| *s > max) {
        return too_large(Some(size), max);
    }
    // Never reads more than the limit.
    let bytes: Bytes = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return too_large(None, max),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadMessage",
                format!("could not read the message: {e}"),
            );
        }
    };
    if bytes.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "EmptyMessage",
            "the message is empty: POST the message as the request body".into(),
        );
    }
    let binary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/octet-stream"));
    let payload = if binary {
        Payload::binary(bytes)
    } else {
        Payload::text_from_bytes(bytes.clone()).unwrap_or_else(|_| Payload::binary(bytes))
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
        Err(e @ PublishError::NotFound(_)) => {
            error(StatusCode::NOT_FOUND, "ChannelNotFound", e.to_string())
        }
        Err(PublishError::TooLarge { size, max }) => too_large(Some(size), max),
        Err(e @ PublishError::Unavailable { .. }) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "EndpointUnavailable",
            e.to_string(),
        ),
    }
}
