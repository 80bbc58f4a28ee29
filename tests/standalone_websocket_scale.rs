//! WebSocket remote clients of `wsbridge standalone` at scale: a client
//! that never reads is cut off while a thousand others get every message,
//! and ten thousand idle connections stay up with bounded memory. The built
//! binary runs as a child process; the clients are tokio-tungstenite on
//! real loopback sockets. Nothing here measures time: every wait is for a
//! condition, with a deadline; memory is a resource bound, read from
//! `/proc`.

mod standalone_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use standalone_support::{Standalone, TempDir};
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long any one condition may take to come true on a busy machine.
const WAIT: Duration = Duration::from_secs(60);

/// The two tests open thousands of sockets each and share two cores with
/// the server: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CONFIG: &str = r#"
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {name: ticker}
spec: {allowAnonymousPublish: true}
"#;

/// The soft and hard limits on open files of process `pid` ("self" too).
fn nofile(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut words = line.split_whitespace().skip(3);
    let mut next = || {
        let w = words.next().unwrap();
        if w == "unlimited" {
            u64::MAX
        } else {
            w.parse().unwrap()
        }
    };
    (next(), next())
}

/// Raises this process's soft limit on open files to its hard limit when it
/// is below `need` (children started afterwards inherit it); panics, saying
/// what to raise, when even the hard limit is too low.
fn ensure_fds(need: u64) {
    let (soft, hard) = nofile("self");
    if soft >= need {
        return;
    }
    assert!(
        hard >= need,
        "this test needs {need} open files per process; the hard limit is {hard} (raise it: ulimit -Hn)"
    );
    // util-linux prlimit(1) sets the limit of this very process.
    let status = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={hard}:{hard}"))
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit failed: {status}");
    assert!(nofile("self").0 >= need, "the soft limit did not rise");
}

/// VmRSS of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("a VmRSS line");
    kib * 1024
}

/// The value of the metric line `name` in the process's `/metrics`, if any.
async fn metric(standalone: &Standalone, name: &str) -> Option<f64> {
    let (_, body) = standalone_support::http_get(&standalone.url("/metrics"))
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

const CONNECTED: &str = r#"wsbridge_remote_clients{channel="default/ticker"}"#;
const SLOW: &str = r#"wsbridge_remote_clients_disconnected_total{channel="default/ticker",reason="slow"}"#;

/// Waits until the gauge of connected clients says `n`.
async fn wait_connected(standalone: &Standalone, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = metric(standalone, CONNECTED).await;
        if now == Some(n as f64) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gauge never said {n} clients (last: {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts standalone with the channel `ticker` and `args`.
async fn start(dir: &TempDir, args: &[&str]) -> Standalone {
    let file = dir.write("config.yaml", CONFIG);
    Standalone::start_with(&[&file], &dir.0, args).await
}

fn url(standalone: &Standalone) -> String {
    format!("ws://{}/channels/default/ticker", standalone.addr)
}

/// A client whose buffers are small: thousands of them stay cheap in the
/// test process.
async fn connect(url: &str) -> Client {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, response) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
        .await
        .expect("WebSocket upgrade");
    assert_eq!(response.status(), 101);
    ws
}

/// Publishes `body` on the channel; it must be accepted.
async fn publish(standalone: &Standalone, body: String) {
    let (status, json) = standalone.publish("default/ticker", body).await;
    assert_eq!(status, 202, "publish refused: {json}");
}

/// What the reading clients of a test have received.
#[derive(Default)]
struct Progress {
    /// Messages received, per client.
    counts: Vec<AtomicUsize>,
    /// Told whenever a count moves or a client fails.
    moved: Notify,
    /// What went wrong, per client (out of order, closed, failed).
    errors: std::sync::Mutex<Vec<String>>,
}

impl Progress {
    fn new(clients: usize) -> Arc<Self> {
        Arc::new(Self {
            counts: (0..clients).map(|_| AtomicUsize::new(0)).collect(),
            ..Self::default()
        })
    }

    fn min(&self) -> usize {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    fn fail(&self, error: String) {
        self.errors.lock().unwrap().push(error);
        self.moved.notify_waiters();
    }

    /// Waits until every client has `n` messages (or one failed).
    async fn wait_all(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            let errors = self.errors.lock().unwrap().clone();
            assert!(
                errors.is_empty(),
                "clients failed: {:?}",
                &errors[..errors.len().min(5)]
            );
            if self.min() >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                let behind = self
                    .counts
                    .iter()
                    .filter(|c| c.load(Ordering::Acquire) < n)
                    .count();
                panic!(
                    "{behind} clients never received {n} messages (slowest: {})",
                    self.min()
                );
            }
        }
    }
}

/// Reads client `i`'s frames: each text frame must carry the next sequence
/// number (its first 8 characters).
async fn read_in_order(mut ws: Client, i: usize, progress: Arc<Progress>) {
    loop {
        match ws.next().await {
            Some(Ok(Frame::Text(text))) => {
                let expected = progress.counts[i].load(Ordering::Acquire);
                let seq = text.get(..8).and_then(|s| s.parse::<usize>().ok());
                if seq != Some(expected) {
                    return progress.fail(format!("client {i}: expected #{expected}, got {seq:?}"));
                }
                progress.counts[i].fetch_add(1, Ordering::AcqRel);
                progress.moved.notify_waiters();
            }
            Some(Ok(Frame::Close(close))) => return progress.fail(format!("client {i} closed: {close:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return progress.fail(format!("client {i} failed: {e}")),
            None => return progress.fail(format!("client {i}: connection ended")),
        }
    }
}

/// Message `seq`: its number, then padding up to `size` bytes.
fn message(seq: usize, size: usize) -> String {
    let mut m = format!("{seq:08} ");
    m.extend(std::iter::repeat_n('x', size - m.len()));
    m
}

/// `clients` WebSocket clients of `url`, at most `concurrency` connecting
/// at a time, each reading in order (see [`read_in_order`]).
fn spawn_readers(
    url: &str,
    clients: usize,
    concurrency: usize,
) -> (Arc<Progress>, Vec<tokio::task::JoinHandle<()>>) {
    let progress = Progress::new(clients);
    let gate = Arc::new(Semaphore::new(concurrency));
    let readers = (0..clients)
        .map(|i| {
            let (progress, gate, url) = (progress.clone(), gate.clone(), url.to_owned());
            tokio::spawn(async move {
                let ws = {
                    let _permit = gate.acquire().await.unwrap();
                    connect(&url).await
                };
                read_in_order(ws, i, progress).await;
            })
        })
        .collect();
    (progress, readers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_that_never_reads_is_cut_off_while_a_thousand_others_get_every_message() {
    const CLIENTS: usize = 1_000;
    // Large messages: the kernel sizes the server's send buffer for the
    // slow client by segments (64 KiB each on loopback), not by its small
    // receive window, and holds about a MiB before wsbridge's buffer for it
    // starts to fill; large messages get there in few publishes.
    const SIZE: usize = 16 * 1024;
    const BUFFER: usize = 128 * 1024;
    // At most this many messages in flight to the slowest reading client:
    // 64 KiB, half its send buffer however slowly this busy machine lets it
    // read, so no reading client can be evicted.
    const WINDOW: usize = 4;
    // Messages published after the slow client is gone.
    const AFTER: usize = 50;
    let _serial = SERIAL.lock().await;
    ensure_fds(CLIENTS as u64 + 512);
    let dir = TempDir::new("ws-scale-slow");
    let buffer = BUFFER.to_string();
    let standalone = start(
        &dir,
        &[
            "--client-buffer-bytes",
            &buffer,
            "--max-clients-per-channel",
            "2000",
        ],
    )
    .await;
    let url = url(&standalone);

    // The slow client asks for a small receive window (which also turns off
    // the kernel's autotuning, up to tens of MiB on loopback), so its
    // backlog soon reaches wsbridge's buffer for it.
    let slow = {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(standalone.addr).await.unwrap();
        let (ws, response) = tokio_tungstenite::client_async(url.as_str(), stream)
            .await
            .expect("WebSocket upgrade");
        assert_eq!(response.status(), 101);
        ws
    };

    let (progress, readers) = spawn_readers(&url, CLIENTS, 100);
    wait_connected(&standalone, CLIENTS + 1).await;

    // Publish, never more than WINDOW ahead of the slowest reader, until
    // wsbridge reports the slow client evicted; then AFTER more.
    let mut sent: usize = 0;
    let mut evicted_at = None;
    while evicted_at.is_none_or(|at| sent < at + AFTER) {
        progress.wait_all((sent + 1).saturating_sub(WINDOW)).await;
        publish(&standalone, message(sent, SIZE)).await;
        sent += 1;
        if evicted_at.is_none() && metric(&standalone, SLOW).await == Some(1.0) {
            evicted_at = Some(sent);
        }
        assert!(
            sent < 20_000,
            "the client that never reads was not evicted after {sent} messages of {SIZE} bytes\n{}",
            standalone.logs()
        );
    }

    // Reading now, the slow client finds what the kernel held for it, then
    // the close frame that says why it was cut off.
    let slow_reader = tokio::spawn(async move {
        let mut slow = slow;
        let mut received = 0;
        loop {
            match tokio::time::timeout(WAIT, slow.next()).await {
                Ok(Some(Ok(Frame::Text(_)))) => received += 1,
                Ok(Some(Ok(Frame::Close(close)))) => return (received, close),
                Ok(Some(Ok(_))) => {}
                other => panic!("expected frames then a close frame, got {other:?} after {received}"),
            }
        }
    });

    // Every reading client got every message, in order, and is still here.
    progress.wait_all(sent).await;
    for (i, count) in progress.counts.iter().enumerate() {
        assert_eq!(count.load(Ordering::Acquire), sent, "client {i}");
    }
    wait_connected(&standalone, CLIENTS).await;
    assert_eq!(
        metric(&standalone, SLOW).await,
        Some(1.0),
        "exactly one client was too slow"
    );

    let (received, close) = slow_reader.await.unwrap();
    assert!(
        received < sent,
        "the slow client was cut off ({received} of {sent})"
    );
    let close = close.expect("a close frame with a code");
    assert_eq!(close.code, CloseCode::Policy);
    assert!(close.reason.contains("too slow"), "{}", close.reason);
    eprintln!(
        "{CLIENTS} clients got all {sent} messages; the slow one was evicted after {} and had read {received}",
        evicted_at.unwrap()
    );
    for reader in readers {
        reader.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_stay_up_with_bounded_memory() {
    const CLIENTS: usize = 10_000;
    // Measured at about 8 KiB per connection (it was 132 KiB while
    // tungstenite's 128 KiB read buffer was zero-filled for each); the
    // bound leaves four times that for allocator and kernel noise.
    const MAX_RSS_PER_CONNECTION: u64 = 32 * 1024;
    let _serial = SERIAL.lock().await;
    let need = CLIENTS as u64 + 512;
    ensure_fds(need);
    let dir = TempDir::new("ws-scale-idle");
    let standalone = start(
        &dir,
        &["--max-clients", "20000", "--max-clients-per-channel", "20000"],
    )
    .await;
    let pid = standalone.child.id();
    let (soft, _) = nofile(&pid.to_string());
    assert!(
        soft >= need,
        "the server may open {soft} files, not the {need} it needs"
    );
    let url = url(&standalone);

    // Memory before: a first client has come and gone, so what a connection
    // costs once is counted in the baseline, not spread over the others.
    drop(connect(&url).await);
    wait_connected(&standalone, 0).await;
    let before = rss(pid);

    let (progress, readers) = spawn_readers(&url, CLIENTS, 200);
    wait_connected(&standalone, CLIENTS).await;
    let connected = rss(pid);
    let per_connection = connected.saturating_sub(before) / CLIENTS as u64;

    // Still all up: one broadcast reaches every one of them.
    publish(&standalone, message(0, 64)).await;
    progress.wait_all(1).await;
    wait_connected(&standalone, CLIENTS).await;
    let after_broadcast = rss(pid);
    eprintln!(
        "RSS: {} KiB before, {} KiB with {CLIENTS} clients ({} B per connection), {} KiB after a broadcast",
        before / 1024,
        connected / 1024,
        per_connection,
        after_broadcast / 1024
    );
    assert!(
        per_connection < MAX_RSS_PER_CONNECTION,
        "{per_connection} bytes of RSS per idle connection (bound {MAX_RSS_PER_CONNECTION})"
    );
    let per_connection_after = after_broadcast.saturating_sub(before) / CLIENTS as u64;
    assert!(
        per_connection_after < MAX_RSS_PER_CONNECTION,
        "{per_connection_after} bytes of RSS per connection after a broadcast (bound {MAX_RSS_PER_CONNECTION})"
    );
    for reader in readers {
        reader.abort();
    }
}
