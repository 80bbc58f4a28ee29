//! The HTTP/1.1 client used for deliveries and dead-letters.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::policy::{AttemptOutcome, parse_retry_after};
use super::pool::{self, OriginPool};
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

/// Concurrent requests (and so connections) per origin, by default; every
/// connection opened is kept for reuse (see [`OriginPool`]).
pub const DEFAULT_CONNECTIONS_PER_ORIGIN: usize = 256;

type OriginKey = (bool, http::uri::Authority);

/// Origins remembered before unused ones are forgotten.
const MAX_REMEMBERED_ORIGINS: usize = 4096;

/// Every origin's pool.
struct Origins {
    per_origin: usize,
    pools: Mutex<HashMap<OriginKey, Arc<OriginPool>>>,
}

impl Origins {
    fn pool(&self, uri: &Uri) -> Option<Arc<OriginPool>> {
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let key = (https, uri.authority()?.clone());
        let mut pools = self.lock();
        if let Some(pool) = pools.get(&key) {
            return Some(pool.clone());
        }
        if pools.len() >= MAX_REMEMBERED_ORIGINS {
            let slots = self.per_origin;
            pools.retain(|_, p| !p.unused(slots));
        }
        let pool = Arc::new(OriginPool::new(https, uri, self.per_origin)?);
        pools.insert(key, pool.clone());
        Some(pool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OriginKey, Arc<OriginPool>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Closes expired idle connections every so often, until the sender is gone.
async fn sweep(origins: Weak<Origins>) {
    let mut every = tokio::time::interval(pool::IDLE_TIMEOUT / 3);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(origins) = origins.upgrade() else { return };
        let pools: Vec<_> = origins.lock().values().cloned().collect();
        for pool in pools {
            pool.close_expired();
        }
    }
}

/// Where a URI's requests go: its origin's pool. Looked up once per
/// subscriber URI rather than once per request.
#[derive(Clone)]
pub struct Origin {
    pool: Option<Arc<OriginPool>>,
}

/// Why an exchange failed.
enum Failure {
    Connect(BoxError),
    Http(hyper::Error),
}

/// Keep-alive HTTP/1.1 connections shared by all subscribers: `http://`,
/// and `https://` verified against the system roots (`SSL_CERT_FILE` /
/// `SSL_CERT_DIR` add more).
#[derive(Clone)]
pub struct HttpSender {
    plain: GuardedConnector,
    /// Built on the first `https://` connection: loading and parsing the
    /// system roots costs memory that plain-HTTP subscribers never need.
    tls: Arc<OnceLock<HttpsConnector<GuardedConnector>>>,
    policy: Arc<DestinationPolicy>,
    origins: Arc<Origins>,
    sweeper: Arc<OnceLock<()>>,
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
        Self {
            plain: GuardedConnector::new(policy.clone()),
            tls: Arc::default(),
            policy,
            origins: Arc::new(Origins {
                per_origin: DEFAULT_CONNECTIONS_PER_ORIGIN,
                pools: Mutex::default(),
            }),
            sweeper: Arc::default(),
        }
    }

    fn tls_connector(&self) -> HttpsConnector<GuardedConnector> {
        self.tls
            .get_or_init(|| {
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
                HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_only()
                    .enable_http1()
                    .wrap_connector(GuardedConnector::new(self.policy.clone()))
            })
            .clone()
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
        // Started here, once per subscriber URI, not on every request.
        if self.sweeper.get().is_none() && tokio::runtime::Handle::try_current().is_ok() {
            self.sweeper
                .get_or_init(|| drop(tokio::spawn(sweep(Arc::downgrade(&self.origins)))));
        }
        Origin {
            pool: self.origins.pool(uri),
        }
    }

    /// [`Self::post`] with the origin of `uri` already looked up.
    pub async fn post_to(
        &self,
        origin: &Origin,
        uri: &Uri,
        mut headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> AttemptOutcome {
        let Some(pool) = &origin.pool else {
            return AttemptOutcome::Network(format!("{uri} has no host"));
        };
        headers.insert(http::header::HOST, pool.host.clone());
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        // Origin-form: the path and query only, as HTTP/1.1 servers expect.
        *request.uri_mut() = uri.path_and_query().cloned().map(Uri::from).unwrap_or_default();
        *request.headers_mut() = headers;
        // Waiting for a slot is not the subscriber's time: outside the timeout.
        let _slot = pool.slot().await;
        match tokio::time::timeout(timeout, self.exchange(pool, request)).await {
            Err(_) => AttemptOutcome::Timeout,
            Ok(Ok(outcome)) => outcome,
            Ok(Err(Failure::Connect(e))) => match denial_of(e.as_ref()) {
                Some(denied) => AttemptOutcome::Denied(denied.to_string()),
                None => AttemptOutcome::Network(describe(e.as_ref())),
            },
            Ok(Err(Failure::Http(e))) => AttemptOutcome::Network(describe(&e)),
        }
    }

    /// One request on an idle connection of `pool`, or a new one. A request
    /// that an idle connection closed under it never sent goes once more, on
    /// a new connection.
    async fn exchange(
        &self,
        pool: &OriginPool,
        request: Request<Full<Bytes>>,
    ) -> Result<AttemptOutcome, Failure> {
        // The rare paths are boxed: a new connection's future (TLS state
        // included) would otherwise make every request's future kilobytes.
        let (sender, response) = match pool.take_idle().await {
            Some(mut sender) => match sender.try_send_request(request).await {
                Ok(response) => (sender, response),
                Err(mut e) => match e.take_message() {
                    Some(request) => Box::pin(self.send_on_new_connection(pool, request)).await?,
                    None => return Err(Failure::Http(e.into_error())),
                },
            },
            None => Box::pin(self.send_on_new_connection(pool, request)).await?,
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(parse_retry_after);
        // A body read to its end leaves the connection ready for the next request.
        if read_to_end(response.into_body()).await {
            pool.give_back(sender);
        }
        Ok(AttemptOutcome::Response { status, retry_after })
    }

    async fn send_on_new_connection(
        &self,
        pool: &OriginPool,
        request: Request<Full<Bytes>>,
    ) -> Result<(pool::Sender, hyper::Response<Incoming>), Failure> {
        let mut sender = self.connect(pool).await?;
        let response = sender.send_request(request).await.map_err(Failure::Http)?;
        Ok((sender, response))
    }

    /// A new connection to `pool`'s origin, its protocol task running.
    async fn connect(&self, pool: &OriginPool) -> Result<pool::Sender, Failure> {
        let target = pool.connect_to.clone();
        if pool.https {
            let io = self
                .tls_connector()
                .oneshot(target)
                .await
                .map_err(Failure::Connect)?;
            handshake(io).await
        } else {
            let io = self
                .plain
                .clone()
                .oneshot(target)
                .await
                .map_err(Failure::Connect)?;
            handshake(io).await
        }
    }
}

/// Reads a response body to its end, keeping none of it: false past
/// [`MAX_RESPONSE_BODY`] or on an error.
async fn read_to_end(mut body: Incoming) -> bool {
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return false };
        read += frame.data_ref().map_or(0, Bytes::len);
        if read > MAX_RESPONSE_BODY {
            return false;
        }
    }
    true
}

async fn handshake<T>(io: T) -> Result<pool::Sender, Failure>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(Failure::Http)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "subscriber connection ended");
        }
    });
    Ok(sender)
}

fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
