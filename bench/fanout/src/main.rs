//! WebSocket fan-out, wsbridge standalone against Centrifugo, with one load
//! generator for both: N subscribers on one channel, a publisher at a fixed
//! rate and then flat out, the same 64-byte JSON message carrying its send
//! time. Figures only, printed and written as Markdown; nothing asserted.
//!
//! ```text
//! fanout --wsbridge BIN --centrifugo BIN [--clients 1000,10000] [--work DIR] [--out FILE]
//!        [--rate-deliveries 20000] [--seconds 10] [--flat-deliveries 2000000]
//! ```

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The message every publish carries: `{"ts":<unix ns>,"seq":N,"pad":"…"}`.
const MESSAGE_BYTES: usize = 64;
/// Centrifugo's HTTP API key in the bench's config.
const API_KEY: &str = "fanout-bench-key";
/// Messages published flat out may run this far ahead of delivery.
const WINDOW: u64 = 64;
/// Longest wait for anything (connects, deliveries).
const LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Wsbridge,
    Centrifugo,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Wsbridge => "wsbridge",
            Kind::Centrifugo => "Centrifugo",
        }
    }
}

struct Opts {
    wsbridge: Option<PathBuf>,
    centrifugo: Option<PathBuf>,
    clients: Vec<usize>,
    work: PathBuf,
    out: Option<PathBuf>,
    rate_deliveries: u64,
    seconds: u64,
    flat_deliveries: u64,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        wsbridge: None,
        centrifugo: None,
        clients: vec![1000, 10000],
        work: std::env::temp_dir().join(format!("fanout-{}", std::process::id())),
        out: None,
        rate_deliveries: 20_000,
        seconds: 10,
        flat_deliveries: 2_000_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--wsbridge" => o.wsbridge = Some(v()?.into()),
            "--centrifugo" => o.centrifugo = Some(v()?.into()),
            "--clients" => {
                o.clients = v()?
                    .split(',')
                    .map(|s| s.parse().context("--clients"))
                    .collect::<Result<_>>()?
            }
            "--work" => o.work = v()?.into(),
            "--out" => o.out = Some(v()?.into()),
            "--rate-deliveries" => o.rate_deliveries = v()?.parse()?,
            "--seconds" => o.seconds = v()?.parse()?,
            "--flat-deliveries" => o.flat_deliveries = v()?.parse()?,
            "-h" | "--help" => {
                println!("see the doc comment of bench/fanout/src/main.rs");
                std::process::exit(0)
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(o)
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Message `seq`, exactly [`MESSAGE_BYTES`] long, valid JSON.
fn message(seq: u64) -> String {
    let head = format!(r#"{{"ts":{},"seq":{seq},"pad":""#, now_ns());
    let pad = MESSAGE_BYTES.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// The send time in a received text, if any.
fn sent_at(text: &str) -> Option<u64> {
    let at = text.find(r#""ts":"#)? + 5;
    let digits = &text[at..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// A server under test, as a child process.
struct Server {
    kind: Kind,
    child: Child,
    port: u16,
    pid: u32,
    log: PathBuf,
}

impl Server {
    async fn start(kind: Kind, bin: &Path, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port();
        let log = dir.join("server.log");
        let mut cmd = Command::new(bin);
        match kind {
            Kind::Wsbridge => {
                let cfg = dir.join("channel.yaml");
                std::fs::write(
                    &cfg,
                    "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: ticker}\nspec: {allowAnonymousPublish: true}\n",
                )?;
                cmd.arg("standalone")
                    .arg("-f")
                    .arg(&cfg)
                    .args(["--listen", &format!("127.0.0.1:{port}")])
                    .args(["--max-clients", "100000", "--max-clients-per-channel", "100000"])
                    // An event-loop thread per CPU, as Centrifugo runs (Go
                    // uses every CPU) and as the gateway does by default:
                    // standalone's default of one thread suits a bridge's
                    // HTTP deliveries, not writes to thousands of sockets.
                    .args(["--threads", "0"])
                    .env("RUST_LOG", "warn");
            }
            Kind::Centrifugo => {
                let cfg = dir.join("config.json");
                std::fs::write(
                    &cfg,
                    format!(
                        r#"{{
  "http_server": {{"address": "127.0.0.1", "port": {port}}},
  "log": {{"level": "warn"}},
  "client": {{"allow_anonymous_connect_without_token": true, "allowed_origins": ["*"]}},
  "channel": {{"without_namespace": {{"allow_subscribe_for_anonymous": true, "allow_subscribe_for_client": true}}}},
  "http_api": {{"key": "{API_KEY}"}},
  "health": {{"enabled": true}},
  "usage_stats": {{"disabled": true}}
}}
"#
                    ),
                )?;
                cmd.arg("--config").arg(&cfg);
            }
        }
        cmd.stdout(std::fs::File::create(dir.join("server.out"))?)
            .stderr(std::fs::File::create(&log)?)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("pid")?;
        let mut server = Self {
            kind,
            child,
            port,
            pid,
            log,
        };
        let health = match kind {
            Kind::Wsbridge => "/readyz",
            Kind::Centrifugo => "/health",
        };
        let client = http_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let req = hyper::Request::get(format!("http://127.0.0.1:{port}{health}"))
                .body(Full::new(Bytes::new()))?;
            if let Ok(Ok(res)) = tokio::time::timeout(Duration::from_secs(2), client.request(req)).await
                && res.status() == 200
            {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("{} exited with {status}: {}", kind.name(), server.logs());
            }
            if Instant::now() > deadline {
                bail!("{} never became ready: {}", kind.name(), server.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ws_url(&self) -> String {
        match self.kind {
            Kind::Wsbridge => format!("ws://127.0.0.1:{}/channels/default/ticker", self.port),
            Kind::Centrifugo => format!("ws://127.0.0.1:{}/connection/websocket", self.port),
        }
    }

    /// User + system CPU seconds of the server process so far.
    fn cpu(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the command name (which may hold spaces): state is 3rd.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<u64> = rest.split_whitespace().map(|w| w.parse().unwrap_or(0)).collect();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
        let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        ticks as f64 / clock_ticks() as f64
    }

    /// VmRSS in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

type HttpClient =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// One publish of `msg`; an error unless the server accepted it.
async fn publish(client: &HttpClient, server: &Server, msg: String) -> Result<()> {
    let req = match server.kind {
        Kind::Wsbridge => hyper::Request::post(format!(
            "http://127.0.0.1:{}/channels/default/ticker",
            server.port
        ))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(msg)))?,
        Kind::Centrifugo => hyper::Request::post(format!("http://127.0.0.1:{}/api/publish", server.port))
            .header("content-type", "application/json")
            .header("X-API-Key", API_KEY)
            .body(Full::new(Bytes::from(format!(
                r#"{{"channel":"ticker","data":{msg}}}"#
            ))))?,
    };
    let res = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .context("publish timed out")??;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    let ok = match server.kind {
        Kind::Wsbridge => status == 202,
        Kind::Centrifugo => status == 200 && !body.windows(7).any(|w| w == b"\"error\""),
    };
    if !ok {
        bail!("publish refused: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// What the subscribers saw.
struct Seen {
    deliveries: AtomicU64,
    last_ns: AtomicU64,
    ready: AtomicUsize,
    failed: AtomicUsize,
    latency: Vec<Mutex<Histogram<u64>>>,
}

impl Seen {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            deliveries: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            latency: (0..32)
                .map(|_| Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).unwrap()))
                .collect(),
        })
    }

    fn record(&self, shard: usize, text: &str) {
        let Some(ts) = sent_at(text) else { return };
        let now = now_ns();
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        self.last_ns.fetch_max(now, Ordering::Relaxed);
        let micros = (now.saturating_sub(ts) / 1000).max(1);
        let _ = self.latency[shard % self.latency.len()]
            .lock()
            .unwrap()
            .record(micros);
    }

    fn reset_latency(&self) {
        for h in &self.latency {
            h.lock().unwrap().reset();
        }
    }

    /// p50 and p99 in milliseconds.
    fn percentiles(&self) -> (f64, f64) {
        let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        for h in &self.latency {
            all.add(&*h.lock().unwrap()).unwrap();
        }
        (
            all.value_at_quantile(0.5) as f64 / 1000.0,
            all.value_at_quantile(0.99) as f64 / 1000.0,
        )
    }
}

/// One subscriber: connects, subscribes, then counts what arrives (and, on
/// Centrifugo, answers its pings `{}` with `{}`).
async fn subscriber(kind: Kind, url: String, shard: usize, seen: Arc<Seen>, gate: Arc<Semaphore>) {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let ws = {
        let _permit = gate.acquire().await.unwrap();
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async_with_config(url, Some(config), false).await
        else {
            seen.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if kind == Kind::Centrifugo {
            let connect = ws.send(Frame::text(r#"{"id":1,"connect":{}}"#)).await;
            let subscribe = ws
                .send(Frame::text(r#"{"id":2,"subscribe":{"channel":"ticker"}}"#))
                .await;
            if connect.is_err() || subscribe.is_err() {
                seen.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // Replies to both (possibly in one frame, a line each).
            let mut replies = 0;
            while replies < 2 {
                match ws.next().await {
                    Some(Ok(Frame::Text(t))) => {
                        for line in t.lines() {
                            if line.contains("\"error\"") {
                                eprintln!("centrifugo refused: {line}");
                                seen.failed.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            if line.starts_with(r#"{"id":"#) {
                                replies += 1;
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => {
                        seen.failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
        ws
    };
    seen.ready.fetch_add(1, Ordering::Relaxed);
    let mut ws = ws;
    while let Some(frame) = ws.next().await {
        match frame {
            Ok(Frame::Text(t)) => {
                for line in t.lines() {
                    if line == "{}" {
                        let _ = ws.send(Frame::text("{}")).await;
                    } else {
                        seen.record(shard, line);
                    }
                }
            }
            Ok(Frame::Binary(b)) => seen.record(shard, &String::from_utf8_lossy(&b)),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    seen.failed.fetch_add(1, Ordering::Relaxed);
}

/// Figures of one server with N subscribers.
#[derive(Default, Clone)]
struct Figures {
    connect_failed: usize,
    rss_base: u64,
    rss_idle: u64,
    rss_load: u64,
    fixed_rate: f64,
    fixed_delivered: u64,
    fixed_expected: u64,
    fixed_cpu_per_delivery_us: f64,
    fixed_p50: f64,
    fixed_p99: f64,
    flat_rate: f64,
    flat_delivered: u64,
    flat_expected: u64,
    flat_cpu: f64,
    flat_cpu_per_delivery_us: f64,
    flat_p50: f64,
    flat_p99: f64,
    note: String,
}

impl Figures {
    fn idle_per_conn(&self, n: usize) -> f64 {
        self.rss_idle.saturating_sub(self.rss_base) as f64 / n as f64 / 1024.0
    }
    fn load_per_conn(&self, n: usize) -> f64 {
        self.rss_load.saturating_sub(self.rss_base) as f64 / n as f64 / 1024.0
    }
    fn deliveries_per_cpu_second(&self) -> f64 {
        if self.flat_cpu > 0.0 {
            self.flat_delivered as f64 / self.flat_cpu
        } else {
            0.0
        }
    }
}

/// Waits until `deliveries` reaches `want`, or nothing arrives for 5 s, or
/// the limit; samples the server's RSS meanwhile (max into `rss`).
async fn wait_deliveries(seen: &Seen, want: u64, server: &Server, rss: &mut u64) {
    let deadline = Instant::now() + LIMIT;
    let mut last = (seen.deliveries.load(Ordering::Relaxed), Instant::now());
    loop {
        let now = seen.deliveries.load(Ordering::Relaxed);
        *rss = (*rss).max(server.rss());
        if now >= want || Instant::now() > deadline {
            return;
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn measure(kind: Kind, bin: &Path, n: usize, o: &Opts) -> Result<Figures> {
    let dir = o.work.join(format!("{}-{n}", kind.name().to_lowercase()));
    let server = Server::start(kind, bin, &dir).await?;
    let mut f = Figures {
        rss_base: server.rss(),
        ..Figures::default()
    };
    let seen = Seen::new();
    let gate = Arc::new(Semaphore::new(200));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tasks.push(tokio::spawn(subscriber(
            kind,
            server.ws_url(),
            i,
            seen.clone(),
            gate.clone(),
        )));
    }
    let deadline = Instant::now() + LIMIT;
    while seen.ready.load(Ordering::Relaxed) + seen.failed.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            bail!(
                "{}: only {} of {n} subscribers ready",
                kind.name(),
                seen.ready.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.connect_failed = seen.failed.load(Ordering::Relaxed);
    let ready = seen.ready.load(Ordering::Relaxed) as u64;
    eprintln!("[fanout] {} {n}: {ready} subscribers ready", kind.name());
    // Let both settle (Go's GC, allocator caches) before the idle figure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.rss_idle = server.rss();
    f.rss_load = f.rss_idle;
    let client = http_client();

    // A warm-up message, then the fixed rate.
    publish(&client, &server, message(0)).await?;
    wait_deliveries(&seen, ready, &server, &mut 0).await;
    seen.reset_latency();
    let per_second = (o.rate_deliveries as f64 / n as f64).max(1.0);
    let count = (per_second * o.seconds as f64).round() as u64;
    let start_deliveries = seen.deliveries.load(Ordering::Relaxed);
    let cpu0 = server.cpu();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    for seq in 1..=count {
        tick.tick().await;
        publish(&client, &server, message(seq)).await?;
    }
    f.fixed_expected = count * ready;
    let mut rss = 0;
    wait_deliveries(&seen, start_deliveries + f.fixed_expected, &server, &mut rss).await;
    f.fixed_delivered = seen.deliveries.load(Ordering::Relaxed) - start_deliveries;
    f.fixed_rate = per_second * n as f64;
    f.fixed_cpu_per_delivery_us = (server.cpu() - cpu0) * 1e6 / f.fixed_delivered.max(1) as f64;
    (f.fixed_p50, f.fixed_p99) = seen.percentiles();
    eprintln!(
        "[fanout] {} {n}: fixed rate {per_second:.1} msg/s: {} of {} delivered",
        kind.name(),
        f.fixed_delivered,
        f.fixed_expected
    );

    // Flat out: four publishers, at most WINDOW messages ahead of delivery.
    seen.reset_latency();
    let messages = (o.flat_deliveries / n as u64).max(10);
    f.flat_expected = messages * ready;
    let base = seen.deliveries.load(Ordering::Relaxed);
    let cpu0 = server.cpu();
    let t0 = now_ns();
    let next = Arc::new(AtomicU64::new(0));
    let server = Arc::new(server);
    let mut publishers = Vec::new();
    for _ in 0..4 {
        let (seen, next, server, client) = (seen.clone(), next.clone(), server.clone(), client.clone());
        publishers.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= messages {
                    return Ok::<_, anyhow::Error>(());
                }
                let deadline = Instant::now() + LIMIT;
                while seen.deliveries.load(Ordering::Relaxed) < base + k.saturating_sub(WINDOW) * ready {
                    if Instant::now() > deadline {
                        bail!("deliveries stalled at message {k}");
                    }
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
                publish(&client, &server, message(k)).await?;
            }
        }));
    }
    let mut rss = f.rss_load;
    for p in publishers {
        if let Err(e) = p.await? {
            f.note = format!("flat out: {e}");
        }
    }
    wait_deliveries(&seen, base + f.flat_expected, &server, &mut rss).await;
    f.rss_load = rss;
    f.flat_delivered = seen.deliveries.load(Ordering::Relaxed) - base;
    let elapsed = seen.last_ns.load(Ordering::Relaxed).saturating_sub(t0) as f64 / 1e9;
    f.flat_rate = f.flat_delivered as f64 / elapsed.max(1e-9);
    f.flat_cpu = server.cpu() - cpu0;
    f.flat_cpu_per_delivery_us = f.flat_cpu * 1e6 / f.flat_delivered.max(1) as f64;
    (f.flat_p50, f.flat_p99) = seen.percentiles();
    eprintln!(
        "[fanout] {} {n}: flat out {} of {} delivered, {:.0}/s",
        kind.name(),
        f.flat_delivered,
        f.flat_expected,
        f.flat_rate
    );
    for t in tasks {
        t.abort();
    }
    Ok(f)
}

fn kib(v: f64) -> String {
    format!("{v:.1} KiB")
}

fn report(o: &Opts, results: &[(usize, Kind, Result<Figures>)]) -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut s = String::new();
    s += "# WebSocket fan-out: wsbridge against Centrifugo\n\n";
    s += &format!(
        "One run on this machine ({cpus} CPUs, load average before: {}), server and load generator on 127.0.0.1 sharing the CPUs. \
         Message: {MESSAGE_BYTES}-byte JSON `{{\"ts\":…,\"seq\":…,\"pad\":…}}`. Fixed rate: {} deliveries/s for {} s. \
         Flat out: {} deliveries, 4 publishers at most {WINDOW} messages ahead of delivery. \
         wsbridge standalone runs an event-loop thread per CPU (`--threads 0`), Centrifugo its default (every CPU). \
         CPU is the server process's user + system time; RSS per connection is (VmRSS − VmRSS before any client) ÷ N.\n\n",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        o.rate_deliveries,
        o.seconds,
        o.flat_deliveries
    );
    s += "| N | server | idle RSS/conn | load RSS/conn | fixed: CPU µs/delivery | fixed: p50 / p99 ms | flat out: deliveries/s | flat out: CPU µs/delivery | deliveries per CPU-second | flat out: p50 / p99 ms | delivered |\n";
    s += "|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (n, kind, r) in results {
        match r {
            Ok(f) => {
                s += &format!(
                    "| {n} | {} | {} | {} | {:.2} | {:.2} / {:.2} | {:.0} | {:.2} | {:.0} | {:.2} / {:.2} | {} of {} (fixed), {} of {} (flat){} |\n",
                    kind.name(),
                    kib(f.idle_per_conn(*n)),
                    kib(f.load_per_conn(*n)),
                    f.fixed_cpu_per_delivery_us,
                    f.fixed_p50,
                    f.fixed_p99,
                    f.flat_rate,
                    f.flat_cpu_per_delivery_us,
                    f.deliveries_per_cpu_second(),
                    f.flat_p50,
                    f.flat_p99,
                    f.fixed_delivered,
                    f.fixed_expected,
                    f.flat_delivered,
                    f.flat_expected,
                    if f.connect_failed > 0 {
                        format!("; {} connects failed", f.connect_failed)
                    } else {
                        String::new()
                    }
                );
            }
            Err(e) => s += &format!("| {n} | {} | n/a: {e:#} | | | | | | | | |\n", kind.name()),
        }
    }
    s += "\n## Against the targets\n\n";
    s += "| N | deliveries per CPU-second, wsbridge ÷ Centrifugo (target ≥ 2) | idle memory per connection, wsbridge ÷ Centrifugo (target ≤ 0.5) | memory per connection under load (target ≤ 0.5) | p99 fixed rate, wsbridge vs Centrifugo (target lower) | p99 flat out |\n";
    s += "|---|---|---|---|---|---|\n";
    for n in &o.clients {
        let find = |k: Kind| {
            results
                .iter()
                .find(|(m, kind, _)| m == n && *kind == k)
                .and_then(|(_, _, r)| r.as_ref().ok())
        };
        if let (Some(w), Some(c)) = (find(Kind::Wsbridge), find(Kind::Centrifugo)) {
            s += &format!(
                "| {n} | {:.2} | {:.2} | {:.2} | {:.2} ms vs {:.2} ms | {:.2} ms vs {:.2} ms |\n",
                w.deliveries_per_cpu_second() / c.deliveries_per_cpu_second().max(1e-9),
                w.idle_per_conn(*n) / c.idle_per_conn(*n).max(1e-9),
                w.load_per_conn(*n) / c.load_per_conn(*n).max(1e-9),
                w.fixed_p99,
                c.fixed_p99,
                w.flat_p99,
                c.flat_p99
            );
        }
    }
    for (n, kind, r) in results {
        if let Ok(f) = r
            && !f.note.is_empty()
        {
            s += &format!("\n- {} {n}: {}\n", kind.name(), f.note);
        }
    }
    s
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let o = opts()?;
    std::fs::create_dir_all(&o.work)?;
    let mut results = Vec::new();
    for &n in &o.clients {
        for (kind, bin) in [(Kind::Wsbridge, &o.wsbridge), (Kind::Centrifugo, &o.centrifugo)] {
            let r = match bin {
                Some(bin) => measure(kind, bin, n, &o).await,
                None => Err(anyhow::anyhow!("no binary given")),
            };
            if let Err(e) = &r {
                eprintln!("[fanout] {} {n}: {e:#}", kind.name());
            }
            results.push((n, kind, r));
        }
    }
    let text = report(&o, &results);
    println!("{text}");
    if let Some(out) = &o.out {
        std::fs::write(out, &text)?;
    }
    Ok(())
}
