//! The HTTP/1.1 client used for deliveries and dead-letters.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tower::ServiceExt;

use super::h1::{self, Connection, HeaderLines, Stream};
use super::policy::AttemptOutcome;
use super::pool::{self, OriginPool};
use crate::destination::{DestinationDenied, DestinationPolicy, resolve_allowed};

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

/// Concurrent requests (and so connections) per origin, by default; every
/// connection opened is kept for reuse (see [`OriginPool`]).
pub const DEFAULT_CONNECTIONS_PER_ORIGIN: usize = 256;

type OriginKey = (bool, http::uri::Authority);

/// OriginPools remembered before unused ones are forgotten.
const MAX_REMEMBERED_ORIGINS: usize = 4096;

/// Every origin's pool.
struct OriginPools {
    per_origin: usize,
    pools: Mutex<HashMap<OriginKey, Arc<OriginPool>>>,
}

impl OriginPools {
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
async fn sweep(origins: Weak<OriginPools>) {
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
pub struct OriginRoute {
    pool: Option<Arc<OriginPool>>,
}

/// Why an exchange failed.
enum Failure {
    Connect(BoxError),
    Io(std::io::Error),
}

/// Keep-alive HTTP/1.1 connections shared by all subscribers: `http://`,
/// and `https://` verified against the system roots (`SSL_CERT_FILE` /
/// `SSL_CERT_DIR` add more).
#[derive(Clone)]
pub struct HttpSender {
    tcp: GuardedConnector,
    /// Built on the first `https://` connection: loading and parsing the
    /// system roots costs memory that plain-HTTP subscribers never need.
    tls: Arc<OnceLock<TlsConnector>>,
    origins: Arc<OriginPools>,
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
            tcp: GuardedConnector::new(policy),
            tls: Arc::default(),
            origins: Arc::new(OriginPools {
                per_origin: DEFAULT_CONNECTIONS_PER_ORIGIN,
                pools: Mutex::default(),
            }),
            sweeper: Arc::default(),
        }
    }

    fn tls_connector(&self) -> TlsConnector {
        self.tls
            .get_or_init(|| {
                let config = crate::endpoint::tls::client_config(None).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "no system roots for https subscribers");
                    Arc::new(
                        rustls::ClientConfig::builder_with_provider(Arc::new(
                            rustls::crypto::ring::default_provider(),
                        ))
                        .with_safe_default_protocol_versions()
                        .expect("ring supports the default protocol versions")
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                    )
                });
                TlsConnector::from(config)
            })
            .clone()
    }

    /// POSTs `body` with `headers` once a slot to the origin is free, then
    /// all within `timeout`. Reads (up to a small bound) and discards the
    /// response body so the connection can be reused.
    pub async fn post(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        timeout: Duration,
    ) -> AttemptOutcome {
        let lines = HeaderLines::from_map(headers);
        self.post_to(&self.origin(uri), uri, &lines, body, timeout).await
    }

    /// The origin of `uri`, for [`Self::post_to`].
    pub fn origin(&self, uri: &Uri) -> OriginRoute {
        // Started here, once per subscriber URI, not on every request.
        if self.sweeper.get().is_none() && tokio::runtime::Handle::try_current().is_ok() {
            self.sweeper
                .get_or_init(|| drop(tokio::spawn(sweep(Arc::downgrade(&self.origins)))));
        }
        OriginRoute {
            pool: self.origins.pool(uri),
        }
    }

    /// [`Self::post`] with the origin of `uri` already looked up.
    pub async fn post_to(
        &self,
        origin: &OriginRoute,
        uri: &Uri,
        headers: &HeaderLines,
        body: &[u8],
        timeout: Duration,
    ) -> AttemptOutcome {
        let Some(pool) = &origin.pool else {
            return AttemptOutcome::Network(format!("{uri} has no host"));
        };
        // Origin-form: the path and query only, as HTTP/1.1 servers expect.
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        // Waiting for a slot is not the subscriber's time: outside the timeout.
        let _slot = pool.slot().await;
        match tokio::time::timeout(timeout, self.exchange(pool, path, headers, body)).await {
            Err(_) => AttemptOutcome::Timeout,
            Ok(Ok(response)) => AttemptOutcome::Response {
                status: response.status,
                retry_after: response.retry_after,
            },
            Ok(Err(Failure::Connect(e))) => match denial_of(e.as_ref()) {
                Some(denied) => AttemptOutcome::Denied(denied.to_string()),
                None => AttemptOutcome::Network(describe(e.as_ref())),
            },
            Ok(Err(Failure::Io(e))) => AttemptOutcome::Network(describe(&e)),
        }
    }

    /// One request on an idle connection of `pool`, or a new one. A request
    /// that an idle connection failed before any of a response arrived (the
    /// server closed it meanwhile) goes once more, on a new connection; like
    /// every retry, that may deliver twice, which `ce-id` lets a subscriber
    /// detect.
    async fn exchange(
        &self,
        pool: &OriginPool,
        path: &str,
        headers: &HeaderLines,
        body: &[u8],
    ) -> Result<h1::Response, Failure> {
        let host = pool.host.as_bytes();
        if let Some(mut connection) = pool.take_idle() {
            match connection.post(host, path, headers, body).await {
                Ok(response) => return Ok(keep(pool, connection, response)),
                Err(e) if e.before_response => {}
                Err(e) => return Err(Failure::Io(e.error)),
            }
        }
        // Boxed: a new connection's future (TLS state included) would
        // otherwise make every request's future kilobytes.
        let mut connection = Box::pin(self.connect(pool)).await?;
        match connection.post(host, path, headers, body).await {
            Ok(response) => Ok(keep(pool, connection, response)),
            Err(e) => Err(Failure::Io(e.error)),
        }
    }

    /// A new connection to `pool`'s origin.
    async fn connect(&self, pool: &OriginPool) -> Result<Connection, Failure> {
        let tcp = self
            .tcp
            .clone()
            .oneshot(pool.connect_to.clone())
            .await
            .map_err(Failure::Connect)?
            .into_inner();
        let stream = match &pool.server_name {
            Some(name) => {
                let tls = self
                    .tls_connector()
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| Failure::Connect(Box::new(e)))?;
                Stream::Tls(Box::new(tls))
            }
            None => Stream::Plain(tcp),
        };
        Ok(Connection::new(stream))
    }
}

/// Gives a connection whose exchange ended cleanly back to its pool.
fn keep(pool: &OriginPool, connection: Connection, response: h1::Response) -> h1::Response {
    if response.reusable {
        pool.give_back(connection);
    }
    response
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
