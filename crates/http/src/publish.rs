//! The HTTP surface every publish path shares (standalone, the gateway and
//! the worker's send endpoint): the channel named by the path, reading a
//! message without buffering more than the limit, the 202 answer, and JSON
//! errors with a reason.

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use wsbridge_core::ChannelKey;
use wsbridge_dataplane::Payload;

pub use wsbridge_core::names::{is_dns1123_label, is_dns1123_subdomain};

/// The publish route of standalone mode and the gateway.
pub const CHANNEL_ROUTE: &str = "/channels/{namespace}/{name}";

/// What a published message was sent out to besides subscribers, counted
/// under its name in the 202 answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentOut {
    /// `"bridges"`: the bridges whose workers took it (the gateway).
    Bridges(usize),
    /// `"endpoints"`: the endpoint connections it was sent on (standalone).
    Endpoints(usize),
}

/// 202: `{"id", "channel", "subscribers"}` and the count of `sent_out`.
pub fn accepted(id: &str, channel: &ChannelKey, subscribers: usize, sent_out: SentOut) -> Response {
    let (name, count) = match sent_out {
        SentOut::Bridges(n) => ("bridges", n),
        SentOut::Endpoints(n) => ("endpoints", n),
    };
    let mut body = json!({
        "id": id,
        "channel": channel.to_string(),
        "subscribers": subscribers,
    });
    body[name] = count.into();
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

/// 404 for a channel that does not exist (or is not known yet).
pub fn channel_not_found(channel: &ChannelKey) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "ChannelNotFound",
        format!("channel {channel} not found"),
    )
}

/// Reason of the 503 for a message the process's memory budget cannot
/// hold now (the subscribers are behind; retry later).
pub const MEMORY_BUDGET_EXHAUSTED: &str = "MemoryBudgetExhausted";

/// A JSON error: `{"code": 404, "reason": "ChannelNotFound", "error": "..."}`.
pub fn error(status: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let message: String = message.into();
    (
        status,
        axum::Json(json!({"code": status.as_u16(), "reason": reason, "error": message})),
    )
        .into_response()
}

/// 413 with the limit.
pub fn too_large(size: Option<usize>, max: usize) -> Response {
    let message = match size {
        Some(size) => format!("message of {size} bytes exceeds the limit of {max} bytes"),
        None => format!("message exceeds the limit of {max} bytes"),
    };
    error(StatusCode::PAYLOAD_TOO_LARGE, "MessageTooLarge", message)
}

/// Reads the request body as a message of at most `max` bytes. Binary when
/// the Content-Type says `application/octet-stream`, text otherwise (text
/// that is not UTF-8 is refused). Never reads past the limit.
pub async fn read_message(headers: &HeaderMap, body: Body, max: usize) -> Result<Payload, Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = declared.filter(|s| *s > max) {
        return Err(too_large(Some(size), max));
    }
    let bytes: Bytes = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large(None, max)),
        Err(e) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "BadMessage",
                format!("could not read the message: {e}"),
            ));
        }
    };
    if bytes.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "EmptyMessage",
            "the message is empty: POST the message as the request body",
        ));
    }
    if is_binary(headers) {
        return Ok(Payload::binary(bytes));
    }
    Payload::text_from_bytes(bytes).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "InvalidText",
            "the message is not UTF-8 text: send binary messages with Content-Type: application/octet-stream",
        )
    })
}

/// Whether the request declares a binary message: its media type is
/// `application/octet-stream`, in any case, with or without parameters.
pub fn is_binary(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let media_type = ct.split(';').next().unwrap_or_default().trim();
            media_type.eq_ignore_ascii_case("application/octet-stream")
        })
}

/// The channel named by `/channels/{namespace}/{name}`: 400 with a JSON
/// reason when the path cannot name a Channel (not percent-decodable, not
/// lowercase DNS-1123), rather than a lookup that could never succeed.
// A rejection is the response itself, as axum's extractors have it.
#[allow(clippy::result_large_err)]
pub fn channel_key(path: Result<Path<(String, String)>, PathRejection>) -> Result<ChannelKey, Response> {
    let Path((namespace, name)) = path.map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "InvalidChannel",
            format!("the path does not name a channel: {}", e.body_text()),
        )
    })?;
    if !is_dns1123_label(&namespace) || !is_dns1123_subdomain(&name) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "InvalidChannel",
            format!(
                "{}/{} cannot name a channel: POST to /channels/{{namespace}}/{{name}} with a lowercase DNS-1123 namespace and name",
                shorten(&namespace),
                shorten(&name)
            ),
        ));
    }
    Ok(ChannelKey::new(namespace, name))
}

/// At most 64 characters of something a client sent, for error messages.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// 404 for every path no route serves.
pub async fn not_found(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "no such path {}: publish with POST /channels/{{namespace}}/{{name}}",
            shorten(uri.path())
        ),
    )
}

/// 405 for a path served with other methods (axum adds the `Allow` header).
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{method} is not allowed on {}", shorten(uri.path())),
    )
}

/// `router` with JSON answers for unknown paths and methods.
pub fn with_json_errors(router: Router) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsbridge_dataplane::PayloadKind;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        h
    }

    async fn json_of(response: Response) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn the_202_answer_counts_what_the_message_was_sent_out_to() {
        let channel = ChannelKey::new("default", "ticker");
        let gateway = accepted("m1", &channel, 2, SentOut::Bridges(1));
        assert_eq!(gateway.status(), StatusCode::ACCEPTED);
        assert_eq!(
            json_of(gateway).await,
            json!({"id": "m1", "channel": "default/ticker", "subscribers": 2, "bridges": 1})
        );
        let standalone = accepted("m2", &channel, 0, SentOut::Endpoints(3));
        assert_eq!(
            json_of(standalone).await,
            json!({"id": "m2", "channel": "default/ticker", "subscribers": 0, "endpoints": 3})
        );
        let missing = channel_not_found(&channel);
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            json_of(missing).await,
            json!({"code": 404, "reason": "ChannelNotFound", "error": "channel default/ticker not found"})
        );
    }

    #[tokio::test]
    async fn text_binary_empty_oversize_and_invalid_utf8() {
        let text = read_message(&headers("application/json"), Body::from("{\"a\":1}"), 64)
            .await
            .unwrap();
        assert_eq!(text.kind(), PayloadKind::Text);
        let binary = read_message(
            &headers("application/octet-stream"),
            Body::from(vec![0u8, 159, 146]),
            64,
        )
        .await
        .unwrap();
        assert_eq!(binary.kind(), PayloadKind::Binary);
        let status = |r: Result<Payload, Response>| r.err().map(|r| r.status());
        assert_eq!(
            status(read_message(&headers("text/plain"), Body::empty(), 64).await),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            status(read_message(&headers("text/plain"), Body::from("x".repeat(65)), 64).await),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
        assert_eq!(
            status(read_message(&headers("text/plain"), Body::from(vec![0xffu8, 0xfe]), 64).await),
            Some(StatusCode::BAD_REQUEST)
        );
    }
}
