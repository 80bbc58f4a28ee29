//! The pooled HTTP/1.1 client used for deliveries and dead-letters.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::policy::{AttemptOutcome, parse_retry_after};
use crate::dataplane::destination::{DestinationDenied, DestinationPolicy, resolve_allowed};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Resolves names with the system resolver and keeps only the addresses the
/// policy allows; a name with none left fails with [`DestinationDenied`].
#[derive(Clone)]
struct GuardedResolver {
    policy: Arc<DestinationPolicy>,
}

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            // Port 0: the connector sets the URI's port on every address.
            let allowed = resolve_allowed(&policy, name.as_str(), 0).await?;
            Ok(allowed.into_iter())
        })
    }
}

/// An [`HttpConnector`] that enforces a [`DestinationPolicy`] before any
/// connection is made: on the host name, on IP literals (which the inner
/// connector would not resolve) and, through [`GuardedResolver`], on every
/// address a name resolves to.
#[derive(Clone)]
pub struct GuardedConnector {
    inner: HttpConnector<GuardedResolver>,
    policy: Arc<DestinationPolicy>,
}

impl GuardedConnector {
    fn new(policy: Arc<DestinationPolicy>) -> Self {
        let mut inner = HttpConnector::new_with_resolver(GuardedResolver {
            policy: policy.clone(),
        });
        // TLS is layered on top (https); this connector only makes the TCP connection.
        inner.enforce_http(false);
        inner.set_nodelay(true);
        inner.set_keepalive(Some(Duration::from_secs(60)));
        Self { inner, policy }
    }
}

impl tower::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        if let Err(denied) = dst.host().map_or(Ok(()), |h| self.policy.check_host(h)) {
            return Box::pin(std::future::ready(Err(Box::new(denied) as BoxError)));
        }
        let connecting = self.inner.call(dst);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The [`DestinationDenied`] somewhere in an error's source chain.
fn denial_of<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a DestinationDenied> {
    let mut current: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(d) = err.downcast_ref::<DestinationDenied>() {
            return Some(d);
        }
        // `io::Error::source` skips its own inner error: look at it directly.
        if let Some(d) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<DestinationDenied>())
        {
            return Some(d);
        }
        current = err.source();
    }
    None
}

/// Response bodies beyond this are not read (the connection is then not reused).
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Concurrent requests (and so connections) per origin, by default. Also
/// the number of idle connections the pool keeps per origin: with no more
/// requests in flight than connections kept, every connection opened is
/// reused, and a burst to many subscribers of one Service never opens and
/// closes a connection per message.
pub const DEFAULT_CONNECTIONS_PER_ORIGIN: usize = 256;

type OriginKey = (bool, http::uri::Authority);

/// One semaphore per origin (scheme and authority) bounding requests in flight.
struct OriginLimits {
    per_origin: usize,
    origins: Mutex<HashMap<OriginKey, Arc<Semaphore>>>,
}

/// Origins remembered before idle ones are forgotten.
const MAX_REMEMBERED_ORIGINS: usize = 4096;

impl OriginLimits {
    fn new(per_origin: usize) -> Self {
        Self {
            per_origin,
            origins: Mutex::new(HashMap::new()),
        }
    }

    /// The slots of `uri`'s origin.
    fn slots(&self, https: bool, uri: &Uri) -> Option<Arc<Semaphore>> {
        let key = (https, uri.authority()?.clone());
        let mut origins = self.origins.lock().unwrap_or_else(|p| p.into_inner());
        if !origins.contains_key(&key) && origins.len() >= MAX_REMEMBERED_ORIGINS {
            let idle = self.per_origin;
            origins.retain(|_, s| s.available_permits() < idle);
        }
        Some(
            origins
                .entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_origin)))
                .clone(),
        )
    }
}

/// Where a URI's requests go: its scheme and the slots of its origin.
/// Looked up once per subscriber URI rather than once per request.
#[derive(Clone)]
pub struct Origin {
    https: bool,
    slots: Option<Arc<Semaphore>>,
}

impl Origin {
    /// Waits for a free slot (FIFO among waiters).
    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone()?.acquire_owned().await.ok()
    }
}

type PlainClient = Client<GuardedConnector, Full<Bytes>>;
type TlsClient = Client<HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// A keep-alive connection pool shared by all subscribers: `http://`, and
/// `https://` verified against the system roots (`SSL_CERT_FILE` /
/// `SSL_CERT_DIR` add more).
#[derive(Clone)]
pub struct HttpSender {
    plain: PlainClient,
    /// Built on the first `https://` request: loading and parsing the system
    /// roots costs memory that plain-HTTP subscribers never need.
    tls: Arc<OnceLock<TlsClient>>,
    policy: Arc<DestinationPolicy>,
    per_origin: usize,
    limits: Arc<OriginLimits>,
}

impl Default for HttpSender {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpSender {
    /// A pooled HTTP/1.1 client (`http://` and `https://`) with the default
    /// [`DestinationPolicy`] (link-local and cloud metadata denied).
    pub fn new() -> Self {
        Self::with_policy(Arc::new(DestinationPolicy::default()))
    }

    /// A pooled HTTP/1.1 client that connects only where `policy` allows,
    /// with at most [`DEFAULT_CONNECTIONS_PER_ORIGIN`] requests in flight to
    /// each origin.
    pub fn with_policy(policy: Arc<DestinationPolicy>) -> Self {
        let per_origin = DEFAULT_CONNECTIONS_PER_ORIGIN;
        Self {
            plain: pooled(GuardedConnector::new(policy.clone()), per_origin),
            tls: Arc::default(),
            policy,
            per_origin,
            limits: Arc::new(OriginLimits::new(per_origin)),
        }
    }

    fn tls_client(&self) -> &TlsClient {
        self.tls.get_or_init(|| {
            // The policy is enforced underneath TLS, on the TCP connection.
            let tls = crate::dataplane::endpoint::tls::client_config(None)
                .map(|c| (*c).clone())
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "no system roots for https subscribers");
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
                });
            let connector = HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(GuardedConnector::new(self.policy.clone()));
            pooled(connector, self.per_origin)
        })
    }

    /// POSTs `body` with `headers` once a slot to the origin is free, then
    /// all within `timeout`. Reads (up to a small bound) and discards the
    /// response body so the connection can be reused.
    pub async fn post(
        &self,
        uri: &Uri,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> AttemptOutcome {
        self.post_to(&self.origin(uri), uri, headers, body, timeout).await
    }

    /// The origin of `uri`, for [`Self::post_to`].
    pub fn origin(&self, uri: &Uri) -> Origin {
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        Origin {
            https,
            slots: self.limits.slots(https, uri),
        }
    }

    /// [`Self::post`] with the origin of `uri` already looked up.
    pub async fn post_to(
        &self,
        origin: &Origin,
        uri: &Uri,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> AttemptOutcome {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = headers;
        let https = origin.https;
        // Waiting for a slot is not the subscriber's time: outside the timeout.
        let _slot = origin.acquire().await;
        let exchange = async {
            let response = if https {
                self.tls_client().request(request).await?
            } else {
                self.plain.request(request).await?
            };
            let status = response.status();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(parse_retry_after);
            let _ = Limited::new(response.into_body(), MAX_RESPONSE_BODY)
                .collect()
                .await;
            Ok::<_, hyper_util::client::legacy::Error>(AttemptOutcome::Response { status, retry_after })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => AttemptOutcome::Timeout,
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => match denial_of(&e) {
                Some(denied) => AttemptOutcome::Denied(denied.to_string()),
                None => AttemptOutcome::Network(describe(&e)),
            },
        }
    }
}

/// A client keeping up to `per_origin` idle connections per origin.
fn pooled<C>(connector: C, per_origin: usize) -> Client<C, Full<Bytes>>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(per_origin)
        .build(connector)
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
