//! Real peers on loopback for tests: a WebSocket endpoint server (plain or
//! TLS) that records handshakes and frames and can be restarted, and an HTTP
//! subscriber that records deliveries and answers as told.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

#[derive(Debug)]
pub enum Event {
    Connected { n: usize, headers: HeaderMap },
    Frame { n: usize, msg: WsMessage },
}

#[derive(Clone, Default)]
pub struct ServerOpts {
    /// Select the first offered subprotocol.
    pub select_subprotocol: bool,
    /// Never read from the first connection (so pings go unanswered).
    pub mute_first: bool,
    /// Refuse every handshake with this HTTP status.
    pub refuse_with: Option<u16>,
    /// Refuse only the first handshake with this HTTP status.
    pub refuse_first_with: Option<u16>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Sent on every connection right after the handshake, the way feeds
    /// send a snapshot before any update.
    pub greeting: Option<WsMessage>,
}

pub struct WsServer {
    pub addr: SocketAddr,
    pub opts: ServerOpts,
    pub events_tx: mpsc::UnboundedSender<Event>,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub out: broadcast::Sender<WsMessage>,
    pub connections: Arc<AtomicUsize>,
    pub tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl WsServer {
    pub async fn start(opts: ServerOpts) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (events_tx, events) = mpsc::unbounded_channel();
        let server = Self {
            addr: listener.local_addr().unwrap(),
            opts,
            events_tx,
            events,
            out: broadcast::channel(64).0,
            connections: Arc::new(AtomicUsize::new(0)),
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        server.serve(listener);
        server
    }

    pub fn url(&self) -> String {
        let scheme = if self.opts.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://127.0.0.1:{}/stream", self.addr.port())
    }

    pub fn serve(&self, listener: TcpListener) {
        let opts = self.opts.clone();
        let events = self.events_tx.clone();
        let out = self.out.clone();
        let connections = self.connections.clone();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let n = connections.fetch_add(1, AtomicOrdering::SeqCst) + 1;
                let (opts, events, out_rx) = (opts.clone(), events.clone(), out.subscribe());
                let conn = tokio::spawn(async move {
                    match opts.tls.clone() {
                        Some(cfg) => {
                            let Ok(tls) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await else {
                                return;
                            };
                            serve_connection(tls, n, opts, events, out_rx).await
                        }
                        None => serve_connection(tcp, n, opts, events, out_rx).await,
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Kills the listener and every connection.
    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Stops, then listens again on the same port.
    pub async fn restart(&self) {
        self.stop();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    pub fn send(&self, msg: WsMessage) {
        self.out.send(msg).unwrap();
    }

    pub async fn next_event(&mut self) -> Event {
        tokio::time::timeout(Duration::from_secs(20), self.events.recv())
            .await
            .expect("no server event within 20s")
            .unwrap()
    }

    pub async fn next_connected(&mut self) -> (usize, HeaderMap) {
        loop {
            if let Event::Connected { n, headers } = self.next_event().await {
                return (n, headers);
            }
        }
    }

    pub async fn next_frame(&mut self) -> (usize, WsMessage) {
        loop {
            if let Event::Frame { n, msg } = self.next_event().await {
                return (n, msg);
            }
        }
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

// The handshake callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    n: usize,
    opts: ServerOpts,
    events: mpsc::UnboundedSender<Event>,
    mut out: broadcast::Receiver<WsMessage>,
) {
    let seen = Arc::new(Mutex::new(HeaderMap::new()));
    let seen2 = seen.clone();
    let refuse = opts.refuse_with.or(opts.refuse_first_with.filter(|_| n == 1));
    let select = opts.select_subprotocol;
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        *seen2.lock().unwrap() = req.headers().clone();
        if let Some(code) = refuse {
            let mut e = ErrorResponse::new(Some("refused".into()));
            *e.status_mut() = http::StatusCode::from_u16(code).unwrap();
            return Err(e);
        }
        if select && let Some(offered) = req.headers().get("sec-websocket-protocol") {
            let first = offered
                .to_str()
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .trim()
                .to_string();
            resp.headers_mut()
                .insert("sec-websocket-protocol", first.parse().unwrap());
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let headers = seen.lock().unwrap().clone();
    let _ = events.send(Event::Connected { n, headers });
    if let Some(greeting) = opts.greeting.clone()
        && ws.send(greeting).await.is_err()
    {
        return;
    }
    if opts.mute_first && n == 1 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return;
    }
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(msg @ (WsMessage::Text(_) | WsMessage::Binary(_)))) => {
                    let _ = events.send(Event::Frame { n, msg });
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            msg = out.recv() => match msg {
                Ok(msg) => if ws.send(msg).await.is_err() { return },
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            },
        }
    }
}

/// What a test subscriber answers to its n-th request (0-based).
#[derive(Clone)]
pub enum Reply {
    Status(u16),
    RetryAfter(u16, u64),
    Hang,
}

pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

pub struct Subscriber {
    pub uri: http::Uri,
    pub received: mpsc::UnboundedReceiver<Received>,
    pub requests: Arc<AtomicUsize>,
}

impl Subscriber {
    pub async fn start(reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let reply = Arc::new(reply);
        let app = Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            let n = counter.fetch_add(1, AtomicOrdering::SeqCst);
            let reply = reply.clone();
            async move {
                let _ = tx.send(Received {
                    headers,
                    body,
                    at: Instant::now(),
                });
                match reply(n) {
                    Reply::Status(code) => (StatusCode::from_u16(code).unwrap(), HeaderMap::new()),
                    Reply::RetryAfter(code, secs) => {
                        let mut h = HeaderMap::new();
                        h.insert("retry-after", secs.to_string().parse().unwrap());
                        (StatusCode::from_u16(code).unwrap(), h)
                    }
                    Reply::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        (StatusCode::OK, HeaderMap::new())
                    }
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            uri: format!("http://{addr}/ingest").parse().unwrap(),
            received: rx,
            requests,
        }
    }

    pub async fn ok() -> Self {
        Self::start(|_| Reply::Status(200)).await
    }

    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(20), self.received.recv())
            .await
            .expect("subscriber got nothing within 20s")
            .expect("subscriber stopped")
    }

    pub fn requests(&self) -> usize {
        self.requests.load(AtomicOrdering::SeqCst)
    }

    /// Asserts nothing more arrives within `d`.
    pub async fn assert_quiet(&mut self, d: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(d, self.received.recv()).await {
            panic!("unexpected request with body {:?}", r.body);
        }
    }
}

/// A test CA (PEM) and a rustls server config with a certificate it signed
/// for `localhost` and `127.0.0.1`.
pub fn tls_material() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wsbridge test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let server =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
    (ca.pem(), Arc::new(server))
}
