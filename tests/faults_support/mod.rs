//! Shared by the `faults_*` tests: a WebSocket feed that can be killed and
//! restarted on the same port and counts exactly what it wrote, an HTTP
//! subscriber that counts 2xx answers per `ce-id`, the worker started from
//! the controller's pod template, and `/metrics` and `/proc` readers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::http::StatusCode;
use bytes::Bytes;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use http::HeaderMap;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::support;
use crate::support::pods::{LocalPod, run_pod_template, wait_deployment};

pub const WAIT: Duration = Duration::from_secs(60);

type Sink = SplitSink<WebSocketStream<TcpStream>, WsMessage>;

/// A WebSocket endpoint with one live connection at a time. `kill` drops the
/// listener and the connection without a close frame (a crashed server);
/// `listen` starts it again on the same port.
pub struct Feed {
    pub addr: SocketAddr,
    conn: Arc<tokio::sync::Mutex<Option<Sink>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// When each WebSocket handshake completed.
    pub connects: Arc<Mutex<Vec<Instant>>>,
    /// Text frames received from the worker (the publish path).
    pub frames: Arc<Mutex<Vec<String>>>,
    /// Set once the worker sent a close frame: from then on `send` refuses,
    /// as a server does once it is closing.
    pub closing: Arc<std::sync::atomic::AtomicBool>,
}

impl Feed {
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let feed = Self {
            addr: listener.local_addr()?,
            conn: Arc::default(),
            tasks: Arc::default(),
            connects: Arc::default(),
            frames: Arc::default(),
            closing: Arc::default(),
        };
        feed.serve(listener);
        Ok(feed)
    }

    pub fn url(&self) -> String {
        format!("ws://{}/stream", self.addr)
    }

    /// Listens again on the same port (after [`Feed::kill`]).
    pub async fn listen(&self) -> Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    fn serve(&self, listener: TcpListener) {
        let (conn, tasks, connects, frames, closing) = (
            self.conn.clone(),
            self.tasks.clone(),
            self.connects.clone(),
            self.frames.clone(),
            self.closing.clone(),
        );
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    continue;
                };
                let (sink, mut stream) = ws.split();
                closing.store(false, Ordering::SeqCst);
                *conn.lock().await = Some(sink);
                connects.lock().unwrap().push(Instant::now());
                let (frames, closing, conn) = (frames.clone(), closing.clone(), conn.clone());
                let reader = tokio::spawn(async move {
                    while let Some(Ok(msg)) = stream.next().await {
                        match msg {
                            WsMessage::Text(t) => frames.lock().unwrap().push(t.to_string()),
                            WsMessage::Close(_) => {
                                // Nothing more is sent once the peer closes;
                                // the reply goes out with the next read.
                                closing.store(true, Ordering::SeqCst);
                                if let Some(mut sink) = conn.lock().await.take() {
                                    let _ = sink.close().await;
                                }
                            }
                            _ => {}
                        }
                    }
                });
                tasks.lock().unwrap().push(reader);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Drops the listener and the connection, no close frame.
    pub async fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        self.conn.lock().await.take();
    }

    /// Writes one frame on the live connection; true when it was flushed.
    pub async fn send(&self, msg: WsMessage) -> bool {
        let mut conn = self.conn.lock().await;
        if self.closing.load(Ordering::SeqCst) {
            return false;
        }
        let Some(sink) = conn.as_mut() else {
            return false;
        };
        match tokio::time::timeout(Duration::from_secs(5), sink.send(msg)).await {
            Ok(Ok(())) => true,
            _ => {
                conn.take();
                false
            }
        }
    }

    pub fn connections(&self) -> usize {
        self.connects.lock().unwrap().len()
    }

    /// Waits until `n` handshakes have completed; returns when the n-th did.
    pub async fn wait_connections(&self, n: usize, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.connects.lock().unwrap().get(n - 1) {
                return Ok(*at);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "connection {n} not made within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// What a [`Sink`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    Hang,
}

/// 2xx answers, the body's first 64 bytes, the dead-letter reason header.
pub type Record = (u32, Bytes, Option<String>);

/// An HTTP subscriber that records, per `ce-id`, how many requests it
/// answered with a 2xx, and the body.
pub struct CountingSubscriber {
    pub uri: String,
    pub requests: Arc<AtomicUsize>,
    /// ce-id (`ce-id|subscriber` at a dead-letter sink) → (2xx answers,
    /// body, dead-letter reason header).
    pub ok: Arc<Mutex<HashMap<String, Record>>>,
    task: JoinHandle<()>,
}

impl CountingSubscriber {
    pub async fn start(answer: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Result<Self> {
        let requests = Arc::new(AtomicUsize::new(0));
        let ok: Arc<Mutex<HashMap<String, Record>>> = Arc::default();
        let answer = Arc::new(answer);
        let (counter, record) = (requests.clone(), ok.clone());
        let app = Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let (answer, record) = (answer.clone(), record.clone());
            async move {
                match answer(n) {
                    Answer::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        StatusCode::OK
                    }
                    Answer::Status(code) => {
                        let status = StatusCode::from_u16(code).unwrap();
                        if status.is_success() {
                            let header =
                                |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_owned);
                            // A dead-letter sink gets the same ce-id once per subscriber.
                            let id = match header("x-wsbridge-subscriber") {
                                Some(sub) => format!("{}|{sub}", header("ce-id").unwrap_or_default()),
                                None => header("ce-id").unwrap_or_default(),
                            };
                            let reason = header("x-wsbridge-dead-letter-reason");
                            let mut map = record.lock().unwrap();
                            // Keep a prefix only: floods would otherwise pile up here.
                            let body = Bytes::copy_from_slice(&body[..body.len().min(64)]);
                            let entry = map.entry(id).or_insert((0, body, reason));
                            entry.0 += 1;
                        }
                        status
                    }
                }
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            uri: format!("http://{addr}/ingest"),
            requests,
            ok,
            task,
        })
    }

    pub async fn ok() -> Result<Self> {
        Self::start(|_| Answer::Status(200)).await
    }

    /// Distinct ce-ids answered with a 2xx.
    pub fn delivered(&self) -> usize {
        self.ok.lock().unwrap().len()
    }

    /// 2xx answers beyond the first for the same ce-id.
    pub fn duplicates(&self) -> u32 {
        self.ok.lock().unwrap().values().map(|(n, _, _)| n - 1).sum()
    }

    /// Distinct messages answered with a 2xx whose body starts with `prefix`.
    pub fn count_prefix(&self, prefix: &str) -> usize {
        let prefix = prefix.as_bytes();
        self.ok
            .lock()
            .unwrap()
            .values()
            .filter(|(_, b, _)| b.starts_with(prefix))
            .count()
    }

    /// Bodies (their first 64 bytes) of the distinct messages answered with a 2xx.
    pub fn bodies(&self) -> Vec<String> {
        self.ok
            .lock()
            .unwrap()
            .values()
            .map(|(_, b, _)| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    pub fn ids(&self) -> std::collections::BTreeSet<String> {
        self.ok.lock().unwrap().keys().cloned().collect()
    }

    /// Bodies answered with a 2xx whose key ends with `|suffix` (what a
    /// dead-letter sink got from one subscriber).
    pub fn bodies_from(&self, subscriber: &str) -> Vec<String> {
        let suffix = format!("|{subscriber}");
        self.ok
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.ends_with(&suffix))
            .map(|(_, (_, b, _))| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    /// Waits until `pred(self)` holds.
    pub async fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Self) -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !pred(self) {
            anyhow::ensure!(Instant::now() < deadline, "{what}: not within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for CountingSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The objects of one bridged channel: Endpoint `feed` (fast reconnects),
/// Channel `ch` with `channel_spec`, Bridge `feed`, and one Subscription per
/// `(name, uri, delivery)`.
pub fn objects(ns: &str, endpoint_url: &str, channel_spec: &str, subs: &[(&str, &str, &str)]) -> String {
    let mut yaml = format!(
        r#"apiVersion: wsbridge.io/v1alpha1
kind: Endpoint
metadata: {{name: feed, namespace: {ns}}}
spec:
  url: '{endpoint_url}'
  reconnect: {{initialDelay: 50ms, maxDelay: 500ms}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: ch, namespace: {ns}}}
spec: {channel_spec}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {{name: feed, namespace: {ns}}}
spec: {{channel: ch, endpoint: feed}}
"#
    );
    for (name, uri, delivery) in subs {
        yaml.push_str(&subscription(ns, name, uri, delivery));
    }
    yaml
}

pub fn subscription(ns: &str, name: &str, uri: &str, delivery: &str) -> String {
    format!(
        "---\napiVersion: wsbridge.io/v1alpha1\nkind: Subscription\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  channel: ch\n  subscriber: {{uri: '{uri}'}}\n  delivery: {delivery}\n"
    )
}

/// Runs the worker of `bridge` from the Deployment the controller wrote.
pub async fn start_worker(ns: &str, bridge: &str) -> Result<LocalPod> {
    let cp = support::shared().await;
    let client = cp.client();
    let deployment = wait_deployment(&client, ns, &format!("wsbridge-worker-{bridge}"), WAIT).await?;
    let listen = format!("127.0.0.1:{}", support::http::free_port());
    run_pod_template(cp, &client, &deployment, &[("WSBRIDGE_LISTEN", &listen)]).await
}

/// The HTTP address a local pod listens on.
pub fn pod_addr(pod: &LocalPod) -> SocketAddr {
    pod.env["WSBRIDGE_LISTEN"].parse().expect("WSBRIDGE_LISTEN")
}

pub async fn metrics(addr: SocketAddr) -> Result<String> {
    let (code, body) = support::http::get(addr, "/metrics").await?;
    anyhow::ensure!(code == 200, "/metrics answered {code}");
    Ok(body)
}

#[allow(unused_imports)]
pub use crate::support::metric_sum;

/// A `/proc/PID/status` field in kB (`VmHWM`, `VmRSS`).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Sends probe frames until every subscriber has answered one with a 2xx:
/// the worker has connected and follows every Subscription. Returns the
/// number of probes sent.
pub async fn wait_routed(feed: &Feed, subs: &[&CountingSubscriber]) -> Result<usize> {
    let deadline = Instant::now() + WAIT;
    let mut probes = 0;
    loop {
        if subs
            .iter()
            .all(|s| s.bodies().iter().any(|b| b.starts_with("probe")))
        {
            return Ok(probes);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the worker did not route probes within {WAIT:?}"
        );
        if feed.send(WsMessage::Text(format!("probe {probes}").into())).await {
            probes += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the pod's `/readyz` answers 200.
pub async fn wait_ready(pod: &LocalPod) -> Result<()> {
    let addr = pod_addr(pod);
    support::eventually(WAIT, "pod /readyz", || async move {
        Ok(support::http::get(addr, "/readyz")
            .await
            .ok()
            .filter(|(c, _)| *c == 200))
    })
    .await
    .with_context(|| format!("log:\n{}", pod.logs()))?;
    Ok(())
}

/// p50, p99 and max of `samples`, in milliseconds.
pub fn percentiles(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if samples.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (ms(at(0.5)), ms(at(0.99)), ms(*samples.last().unwrap()))
}

/// A log line without its terminal colour codes.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
