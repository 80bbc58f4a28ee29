//! The HTTP surface every publish path shares (standalone, the gateway and
//! the worker's send endpoint): reading a message without buffering more
//! than the limit, and JSON errors with a reason.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use crate::dataplane::Payload;

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

/// Whether the request declares a binary message.
pub fn is_binary(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("application/octet-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::PayloadKind;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        h
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
