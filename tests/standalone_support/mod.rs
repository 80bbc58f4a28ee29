//! Helpers for the standalone tests: the built binary as a child process,
//! a WebSocket endpoint and HTTP subscribers on loopback.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "wsbridge-{prefix}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        // Write then rename, as editors do, so a poll never sees half a file.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port (bound, then released).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `wsbridge standalone` as a child process; killed on drop.
pub struct Standalone {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Standalone {
    /// Starts `wsbridge standalone -f PATH... --listen ADDR` and waits for `/readyz`.
    pub async fn start(paths: &[&Path], log_dir: &Path) -> Self {
        Self::start_with(paths, log_dir, &[]).await
    }

    /// [`Standalone::start`] with more command-line arguments.
    pub async fn start_with(paths: &[&Path], log_dir: &Path, args: &[&str]) -> Self {
        Self::start_on(free_addr(), paths, log_dir, args).await
    }

    /// [`Standalone::start_with`] listening on `addr` (a free address
    /// something else was told about before it started).
    pub async fn start_on(addr: SocketAddr, paths: &[&Path], log_dir: &Path, args: &[&str]) -> Self {
        let log = log_dir.join(format!("standalone-{}.log", addr.port()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsbridge"));
        cmd.arg("standalone");
        for p in paths {
            cmd.arg("-f").arg(p);
        }
        cmd.args(["--listen", &addr.to_string()])
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().unwrap();
        let mut me = Self { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http_get(&format!("http://{addr}/readyz")).await
                && r.0 == 200
            {
                break;
            }
            if let Some(status) = me.child.try_wait().unwrap() {
                panic!("standalone exited with {status}:\n{}", me.logs());
            }
            assert!(
                Instant::now() < deadline,
                "standalone never became ready:\n{}",
                me.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        me
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Publishes `body` on `namespace/name`; returns status and JSON body.
    pub async fn publish(&self, channel: &str, body: impl Into<Bytes>) -> (u16, serde_json::Value) {
        let (status, body) = http_post(&self.url(&format!("/channels/{channel}")), body.into()).await;
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Publishes until it is accepted (bridges connect asynchronously).
    pub async fn publish_accepted(&self, channel: &str, body: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, json) = self.publish(channel, body.to_string()).await;
            if status == 202 {
                return json;
            }
            assert!(
                Instant::now() < deadline,
                "publish never accepted: {status} {json}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "standalone did not exit:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the log contains `text`.
    pub async fn wait_log(&self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if logs.contains(text) {
                return logs;
            }
            assert!(Instant::now() < deadline, "log never showed {text:?}:\n{logs}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET; returns status and body.
pub async fn http_get(url: &str) -> Result<(u16, Bytes), String> {
    request(http::Method::GET, url, Bytes::new()).await
}

/// A POST; returns status and body.
pub async fn http_post(url: &str, body: Bytes) -> (u16, Bytes) {
    request(http::Method::POST, url, body).await.unwrap()
}

async fn request(method: http::Method, url: &str, body: Bytes) -> Result<(u16, Bytes), String> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// One POST a subscriber received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub path: String,
    pub headers: HeaderMap,
    pub body: String,
}

/// An HTTP subscriber that records every POST (after an optional delay).
pub struct Subscriber {
    pub addr: SocketAddr,
    pub rx: mpsc::UnboundedReceiver<Delivery>,
}

impl Subscriber {
    pub async fn start(delay: Duration) -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), delay)
    }

    /// [`Subscriber::start`] on a given listener (a subscriber that comes
    /// back on the address it had).
    pub fn start_on(listener: TcpListener, delay: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(Delivery {
                    path: uri.path().to_string(),
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                "ok"
            }
        });
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, rx }
    }

    pub fn uri(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next delivery whose body contains `needle`.
    pub async fn next_containing(&mut self, needle: &str, timeout: Duration) -> Delivery {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(d)) if d.body.contains(needle) => return d,
                Ok(Some(_)) => continue,
                _ => panic!("no delivery containing {needle:?} within {timeout:?}"),
            }
        }
    }

    /// Everything delivered within `window`.
    pub async fn drain(&mut self, window: Duration) -> Vec<Delivery> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(d)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.push(d);
        }
        out
    }
}

/// A WebSocket endpoint: records text frames it receives, sends what it is told.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub received: mpsc::UnboundedReceiver<String>,
    send: broadcast::Sender<String>,
    pub connections: Arc<Mutex<usize>>,
}

impl Endpoint {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (rx_tx, received) = mpsc::unbounded_channel();
        let (send, _) = broadcast::channel::<String>(64);
        let connections = Arc::new(Mutex::new(0));
        let (send2, conns) = (send.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let rx_tx = rx_tx.clone();
                let mut out = send2.subscribe();
                let conns = conns.clone();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    *conns.lock().unwrap() += 1;
                    loop {
                        tokio::select! {
                            msg = out.recv() => match msg {
                                Ok(text) => { if ws.send(WsMessage::text(text)).await.is_err() { break; } }
                                Err(_) => break,
                            },
                            frame = ws.next() => match frame {
                                Some(Ok(WsMessage::Text(t))) => { let _ = rx_tx.send(t.to_string()); }
                                Some(Ok(_)) => {}
                                _ => break,
                            },
                        }
                    }
                });
            }
        });
        Self {
            addr,
            received,
            send,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/feed", self.addr)
    }

    /// Waits for a client, then sends `text` to every connected client.
    pub async fn send(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.send.receiver_count() == 0 {
            assert!(Instant::now() < deadline, "nobody connected to the endpoint");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.send.send(text.to_string()).unwrap();
    }

    pub async fn next(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.received.recv())
            .await
            .ok()
            .flatten()
    }
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// An Endpoint `feed` at `endpoint_url` (reconnecting fast), a Channel
/// `channel` open to anonymous publishers and its Bridge `{channel}-feed`,
/// as standalone YAML; append Subscriptions with [`subscription_yaml`].
pub fn bridged_channel_yaml(endpoint_url: &str, channel: &str) -> String {
    bridged_channel_yaml_with(endpoint_url, channel, "{allowAnonymousPublish: true}")
}

/// [`bridged_channel_yaml`] with the Channel's `spec` given (YAML flow
/// mapping, e.g. `{backend: rabbitmq, allowAnonymousPublish: true}`).
pub fn bridged_channel_yaml_with(endpoint_url: &str, channel: &str, channel_spec: &str) -> String {
    format!(
        r#"
apiVersion: wsbridge.io/v1alpha1
kind: Endpoint
metadata: {{name: feed}}
spec:
  url: {endpoint_url}
  reconnect: {{initialDelay: 50ms, maxDelay: 500ms}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: {channel}}}
spec: {channel_spec}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {{name: {channel}-feed}}
spec: {{channel: {channel}, endpoint: feed}}
"#
    )
}

/// A Subscription `name` of `channel` to `uri`, with `extra` spec lines
/// (two-space indented YAML, may be empty), as a YAML document.
pub fn subscription_yaml(name: &str, channel: &str, uri: &str, extra: &str) -> String {
    format!(
        r#"---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {{name: {name}}}
spec:
  channel: {channel}
  subscriber: {{uri: "{uri}"}}
{extra}"#
    )
}
