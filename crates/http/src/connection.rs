//! `Connection: close` on every answer given before its request's body was
//! read to the end (RFC 9112 §9.6).
//!
//! A publish refused early (413 on its declared length, 404, 401, ...) is
//! answered without reading the body, and hyper then closes the connection
//! rather than read what may be a large body. A keep-alive client that is
//! not told so sends its next request on that connection and gets a write
//! error instead of an answer. Neither hyper nor tower-http marks such
//! answers, so the request body is watched for its end here.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// Middleware (`axum::middleware::from_fn`): adds `Connection: close` to the
/// response when the handler left the request body unread.
pub async fn close_unless_body_read(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let ended = Arc::new(AtomicBool::new(body.is_end_stream()));
    let body = Body::new(Watched {
        inner: body,
        ended: ended.clone(),
    });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if !ended.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that records reaching its end.
struct Watched {
    inner: Body,
    ended: Arc<AtomicBool>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.ended.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::post;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn app() -> Router {
        Router::new()
            .route("/early", post(|| async { StatusCode::PAYLOAD_TOO_LARGE }))
            .route(
                "/read",
                post(|body: Body| async move {
                    body.collect().await.unwrap();
                    StatusCode::ACCEPTED
                }),
            )
            .layer(axum::middleware::from_fn(close_unless_body_read))
    }

    async fn connection_header(path: &str, body: &'static str) -> Option<HeaderValue> {
        let request = Request::post(path).body(Body::from(body)).unwrap();
        let response = app().oneshot(request).await.unwrap();
        response.headers().get(header::CONNECTION).cloned()
    }

    #[tokio::test]
    async fn only_answers_that_left_the_body_unread_close_the_connection() {
        assert_eq!(connection_header("/early", "unread").await.unwrap(), "close");
        assert_eq!(connection_header("/read", "read").await, None);
        // An empty body has nothing left to read.
        assert_eq!(connection_header("/early", "").await, None);
    }
}
