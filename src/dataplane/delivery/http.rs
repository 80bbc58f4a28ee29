//! The pooled HTTP/1.1 client used for deliveries and dead-letters.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::policy::{AttemptOutcome, parse_retry_after};

/// Response bodies beyond this are not read (the connection is then not reused).
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// A keep-alive connection pool shared by all subscribers.
#[derive(Clone)]
pub struct HttpSender {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpSender {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpSender {
    /// A pooled HTTP/1.1 client (plain `http://`).
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector);
        Self { client }
    }

    /// POSTs `body` with `headers`, all within `timeout`. Reads (up to a
    /// small bound) and discards the response body so the connection can be
    /// reused.
    pub async fn post(&self, uri: &Uri, headers: HeaderMap, body: Bytes, timeout: Duration) -> AttemptOutcome {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = headers;
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(parse_retry_after);
            let _ = Limited::new(response.into_body(), MAX_RESPONSE_BODY).collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(AttemptOutcome::Response { status, retry_after })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => AttemptOutcome::Timeout,
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => AttemptOutcome::Network(describe(&e)),
        }
    }
}

fn describe(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
