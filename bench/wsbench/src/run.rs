//! The side-by-side runner: for each relay, starts a fresh source and sink
//! (this same binary, as child processes), starts the relay, and measures
//! idle RSS, latency at a fixed rate, and throughput to 1 and 100
//! subscribers; then measures the sink's own ceiling with the direct load
//! generator, and prints a Markdown table. Figures only: nothing asserts a
//! timing. Every wait has a deadline; every child is killed on the way out.

use crate::msg;
use crate::sink::Stats;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

#[derive(Clone, Debug)]
pub struct Opts {
    pub quick: bool,
    pub relays: Vec<String>,
    pub wsbridge: Option<PathBuf>,
    pub benthos: Option<PathBuf>,
    pub node: Option<PathBuf>,
    pub node_relay: Option<PathBuf>,
    pub python: Option<PathBuf>,
    pub python_relay: Option<PathBuf>,
    pub work: PathBuf,
    pub out: Option<PathBuf>,
    pub command_line: String,
    /// Rounds over all relays (interleaved); each figure is the best round's.
    pub repeat: usize,
}

#[derive(Clone, Copy, Debug)]
struct Sizes {
    msg_size: usize,
    warm: u64,
    tp1: u64,
    tp100: u64,
    subs100: usize,
    lat: u64,
    lat_rate: u64,
    settle: Duration,
    phase_limit: Duration,
    stall: Duration,
    connect_limit: Duration,
    poll: Duration,
    ceiling_conns: &'static [usize],
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                msg_size: 256,
                warm: 20,
                tp1: 2_000,
                tp100: 20,
                subs100: 100,
                lat: 300,
                lat_rate: 1_000,
                settle: Duration::from_millis(500),
                phase_limit: Duration::from_secs(15),
                stall: Duration::from_secs(5),
                connect_limit: Duration::from_secs(20),
                poll: Duration::from_millis(50),
                ceiling_conns: &[64],
            }
        } else {
            Sizes {
                msg_size: 256,
                warm: 200,
                tp1: 200_000,
                tp100: 1_000,
                subs100: 100,
                lat: 10_000,
                lat_rate: 1_000,
                settle: Duration::from_secs(3),
                phase_limit: Duration::from_secs(120),
                stall: Duration::from_secs(10),
                connect_limit: Duration::from_secs(60),
                poll: Duration::from_millis(100),
                ceiling_conns: &[16, 64],
            }
        }
    }
}

/// A child process driven by line commands on stdin, answering on stdout.
#[allow(dead_code)] // `child` is held so that kill_on_drop ends it with the Proc.
struct Proc {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    connects: u64,
}

impl Proc {
    fn spawn(mut cmd: Command, log: &Path) -> Result<Proc> {
        let errlog = std::fs::File::create(log)?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(errlog).kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Proc { child, stdin, lines: rx, connects: 0 })
    }

    async fn send(&mut self, line: &str) -> Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Next line starting with `prefix` (other lines are noted and skipped).
    async fn expect(&mut self, prefix: &str, limit: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .map_err(|_| anyhow!("timed out after {limit:?} waiting for `{prefix}`"))?
                .ok_or_else(|| anyhow!("process ended while waiting for `{prefix}`"))?;
            if line.starts_with("connected") {
                self.connects += 1;
            }
            if line.starts_with(prefix) {
                return Ok(line);
            }
            if line.starts_with("error") && prefix != "error" {
                bail!("child said: {line}");
            }
        }
    }

    async fn port(&mut self) -> Result<u16> {
        let l = self.expect("listening", Duration::from_secs(10)).await?;
        Ok(l.split_whitespace().nth(1).unwrap_or("").parse()?)
    }

    async fn stats(&mut self) -> Result<Stats> {
        self.send("stats").await?;
        let l = self.expect("{", Duration::from_secs(10)).await?;
        Ok(serde_json::from_str(&l)?)
    }

    async fn reset(&mut self) -> Result<()> {
        self.send("reset").await?;
        self.expect("ok", Duration::from_secs(10)).await?;
        Ok(())
    }
}

fn self_cmd(args: &[&str]) -> Result<Command> {
    let mut c = Command::new(std::env::current_exe()?);
    c.args(args);
    Ok(c)
}

/// VmRSS and VmHWM of a process, in KiB.
fn mem_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// User + system CPU time of a process so far, in microseconds.
fn cpu_us(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name `(…)`: state is field 3, utime 14, stime 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = 100; // USER_HZ, fixed at 100 on Linux for /proc
    Some(ticks * 1_000_000 / hz)
}

/// CPU microseconds the relay spent per delivery since `before`.
fn cpu_per(pid: u32, before: Option<u64>, deliveries: u64) -> Option<f64> {
    let (b, a) = (before?, cpu_us(pid)?);
    (deliveries > 0).then(|| a.saturating_sub(b) as f64 / deliveries as f64)
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

// ---------------------------------------------------------------- relays

struct Relay {
    child: Child,
    log: PathBuf,
    /// wsbridge's listener, for `/metrics`.
    metrics_port: Option<u16>,
}

impl Relay {
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(8)..].join(" | ")
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(st)) = self.child.try_wait() {
            bail!("relay exited ({st}); log: {}", self.log_tail());
        }
        Ok(())
    }

    /// wsbridge's counters whose name says something was lost or retried,
    /// non-zero ones only; the whole scrape is kept beside the relay log.
    async fn loss_metrics(&self) -> Vec<String> {
        let Some(port) = self.metrics_port else { return Vec::new() };
        let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(5), http_get(port, "/metrics")).await else {
            return vec!["could not scrape /metrics".into()];
        };
        let _ = std::fs::write(self.log.with_file_name("metrics.txt"), &text);
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| ["drop", "dead", "retr", "fail", "reconnect"].iter().any(|k| l.split(['{', ' ']).next().unwrap_or("").contains(k)))
            .filter(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 0.0))
            .map(String::from)
            .collect()
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_ok() {
                return;
            }
        }
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

async fn http_head(port: u16, path: &str) -> Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut buf).await?;
    Ok(String::from_utf8_lossy(&buf).lines().next().unwrap_or("").to_string())
}

async fn http_get(port: u16, path: &str) -> Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    Ok(text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or(text))
}

fn sink_uri(sink_port: u16, i: usize) -> String {
    format!("http://127.0.0.1:{sink_port}/in/{i}")
}

fn launch(o: &Opts, relay: &str, dir: &Path, ws_port: u16, sink_port: u16, subs: usize) -> Result<Relay> {
    std::fs::create_dir_all(dir)?;
    let ws_url = format!("ws://127.0.0.1:{ws_port}/feed");
    let log = dir.join("relay.log");
    let mut metrics_port = None;
    let mut cmd = match relay {
        "wsbridge" => {
            let bin = o.wsbridge.as_ref().ok_or_else(|| anyhow!("no wsbridge binary"))?;
            let cfg = dir.join("config");
            std::fs::create_dir_all(&cfg)?;
            let mut y = String::new();
            let _ = write!(
                y,
                "apiVersion: wsbridge.io/v1alpha1\nkind: Endpoint\nmetadata: {{name: source}}\nspec: {{url: \"{ws_url}\"}}\n---\n\
                 apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {{name: bench}}\nspec: {{allowAnonymousPublish: true}}\n---\n\
                 apiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {{name: bench}}\nspec: {{channel: bench, endpoint: source}}\n"
            );
            for i in 0..subs {
                let _ = write!(
                    y,
                    "---\napiVersion: wsbridge.io/v1alpha1\nkind: Subscription\nmetadata: {{name: sink-{i}}}\nspec:\n  channel: bench\n  \
                     subscriber: {{uri: \"{}\"}}\n  delivery: {{ordering: unordered, maxInFlight: 64, queueCapacity: 100000}}\n",
                    sink_uri(sink_port, i)
                );
            }
            std::fs::write(cfg.join("bench.yaml"), y)?;
            let port = free_port()?;
            metrics_port = Some(port);
            let mut c = Command::new(bin);
            c.arg("standalone").arg("-f").arg(&cfg).arg("--listen").arg(format!("127.0.0.1:{port}"));
            c.env("RUST_LOG", std::env::var("WSBENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()));
            c
        }
        "benthos" => {
            let bin = o.benthos.as_ref().ok_or_else(|| anyhow!("no benthos binary"))?;
            let mut y = format!(
                "http: {{enabled: false}}\nlogger: {{level: WARN}}\ninput:\n  websocket:\n    url: \"{ws_url}\"\n\
                 output:\n  broker:\n    pattern: fan_out\n    outputs:\n"
            );
            for i in 0..subs {
                let _ = write!(
                    y,
                    "      - http_client:\n          url: \"{}\"\n          verb: POST\n          \
                     headers: {{Content-Type: application/json}}\n          max_in_flight: 64\n",
                    sink_uri(sink_port, i)
                );
            }
            let f = dir.join("benthos.yaml");
            std::fs::write(&f, y)?;
            let mut c = Command::new(bin);
            c.arg("run").arg(&f);
            c
        }
        "node" | "python" => {
            let cfg = serde_json::json!({
                "source": ws_url,
                "sinks": (0..subs).map(|i| sink_uri(sink_port, i)).collect::<Vec<_>>(),
                "maxInFlight": 64,
            });
            let f = dir.join("relay.json");
            std::fs::write(&f, serde_json::to_vec_pretty(&cfg)?)?;
            let (bin, script) = if relay == "node" {
                (o.node.clone().unwrap_or_else(|| "node".into()), o.node_relay.as_ref())
            } else {
                (o.python.clone().unwrap_or_else(|| "python3".into()), o.python_relay.as_ref())
            };
            let script = script.ok_or_else(|| anyhow!("no {relay} relay script"))?;
            let mut c = Command::new(bin);
            c.arg(script).arg(&f);
            c
        }
        other => bail!("unknown relay {other}"),
    };
    let out = std::fs::File::create(&log)?;
    cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("start {relay}"))?;
    Ok(Relay { child, log, metrics_port })
}

// ---------------------------------------------------------------- measuring

#[derive(Default, Debug, Clone)]
struct Phase {
    stats: Stats,
    expected: u64,
    rate: f64,
    #[allow(dead_code)] // sampled VmRSS; the report uses VmHWM
    peak_rss_kib: u64,
    timed_out: bool,
}

/// Polls the sink until `expected` deliveries arrived, progress stalls, or
/// the phase limit passes; samples the relay's RSS meanwhile.
async fn wait_for(sink: &mut Proc, relay: Option<&mut Relay>, expected: u64, start_ns: u64, s: &Sizes) -> Result<Phase> {
    let begin = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_count = 0;
    let mut peak = 0;
    let mut relay = relay;
    loop {
        tokio::time::sleep(s.poll).await;
        if let Some(r) = relay.as_deref_mut() {
            if let Some((rss, _)) = mem_kib(r.pid()) {
                peak = peak.max(rss);
            }
            r.check_alive()?;
        }
        let st = sink.stats().await?;
        if st.count > last_count {
            last_count = st.count;
            last_progress = Instant::now();
        }
        let timed_out = begin.elapsed() > s.phase_limit || last_progress.elapsed() > s.stall;
        if st.count >= expected || timed_out {
            let secs = (st.last_ns.saturating_sub(start_ns)) as f64 / 1e9;
            let rate = if secs > 0.0 { st.count as f64 / secs } else { 0.0 };
            let timed_out = st.count < expected;
            return Ok(Phase { stats: st, expected, rate, peak_rss_kib: peak, timed_out });
        }
    }
}

#[derive(Default, Debug, Clone)]
struct RelayResult {
    idle_rss_kib: Option<u64>,
    lat: Option<Phase>,
    tp1: Option<Phase>,
    hwm1_kib: Option<u64>,
    cpu1_us: Option<f64>,
    cpu100_us: Option<f64>,
    tp100: Option<Phase>,
    hwm100_kib: Option<u64>,
    errors: Vec<String>,
}

async fn start_pair(dir: &Path) -> Result<(Proc, u16, Proc, u16)> {
    std::fs::create_dir_all(dir)?;
    let mut sink = Proc::spawn(self_cmd(&["sink"])?, &dir.join("sink.log"))?;
    let sink_port = sink.port().await?;
    let mut src = Proc::spawn(self_cmd(&["source"])?, &dir.join("source.log"))?;
    let ws_port = src.port().await?;
    Ok((sink, sink_port, src, ws_port))
}

/// Waits until the relay has connected to the source and, for wsbridge,
/// until `/readyz` answers 200 (subscriptions loaded), so that no warm-up
/// message meets a relay that is still starting.
async fn wait_connected(src: &mut Proc, relay: &mut Relay, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        relay.check_alive()?;
        match src.expect("connected", Duration::from_millis(250)).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => continue,
            Err(_) => bail!("relay did not connect within {limit:?}; log: {}", relay.log_tail()),
        }
    }
    if let Some(port) = relay.metrics_port {
        loop {
            relay.check_alive()?;
            if let Ok(Ok(head)) = tokio::time::timeout(Duration::from_secs(2), http_head(port, "/readyz")).await {
                if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("relay not ready within {limit:?}; log: {}", relay.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn warm_up(src: &mut Proc, sink: &mut Proc, relay: &mut Relay, n: u64, subs: usize, s: &Sizes) -> Result<()> {
    src.send(&format!("send {n} 0")).await?;
    let p = wait_for(sink, Some(relay), n * subs as u64, msg::now_ns(), s).await?;
    if p.timed_out {
        bail!("warm-up delivered {}/{}; log: {}", p.stats.count, p.expected, relay.log_tail());
    }
    sink.reset().await
}

async fn bench_relay_one(o: &Opts, s: &Sizes, name: &str, r: &mut RelayResult) -> Result<()> {
    let dir = o.work.join(name).join("one");
    let (mut sink, sink_port, mut src, ws_port) = start_pair(&dir).await?;
    let mut relay = launch(o, name, &dir, ws_port, sink_port, 1)?;
    let res = async {
        wait_connected(&mut src, &mut relay, s.connect_limit).await?;
        tokio::time::sleep(s.settle).await;
        r.idle_rss_kib = mem_kib(relay.pid()).map(|m| m.0);
        warm_up(&mut src, &mut sink, &mut relay, s.warm, 1, s).await?;

        let start = msg::now_ns();
        src.send(&format!("send {} {}", s.lat, s.lat_rate)).await?;
        r.lat = Some(wait_for(&mut sink, Some(&mut relay), s.lat, start, s).await?);
        src.expect("sent", Duration::from_secs(10)).await?;
        sink.reset().await?;

        let cpu0 = cpu_us(relay.pid());
        let start = msg::now_ns();
        src.send(&format!("send {} 0", s.tp1)).await?;
        let p = wait_for(&mut sink, Some(&mut relay), s.tp1, start, s).await?;
        r.cpu1_us = cpu_per(relay.pid(), cpu0, p.stats.count);
        r.tp1 = Some(p);
        r.hwm1_kib = mem_kib(relay.pid()).map(|m| m.1);
        for m in relay.loss_metrics().await {
            r.errors.push(format!("1→1 relay metric: {m}"));
        }
        anyhow::Ok(())
    }
    .await;
    relay.stop().await;
    res
}

async fn bench_relay_many(o: &Opts, s: &Sizes, name: &str, r: &mut RelayResult) -> Result<()> {
    let dir = o.work.join(name).join("many");
    let (mut sink, sink_port, mut src, ws_port) = start_pair(&dir).await?;
    let mut relay = launch(o, name, &dir, ws_port, sink_port, s.subs100)?;
    let res = async {
        wait_connected(&mut src, &mut relay, s.connect_limit).await?;
        tokio::time::sleep(s.settle).await;
        warm_up(&mut src, &mut sink, &mut relay, (s.warm / 10).max(2), s.subs100, s).await?;
        let cpu0 = cpu_us(relay.pid());
        let start = msg::now_ns();
        src.send(&format!("send {} 0", s.tp100)).await?;
        let p = wait_for(&mut sink, Some(&mut relay), s.tp100 * s.subs100 as u64, start, s).await?;
        r.cpu100_us = cpu_per(relay.pid(), cpu0, p.stats.count);
        r.tp100 = Some(p);
        r.hwm100_kib = mem_kib(relay.pid()).map(|m| m.1);
        for m in relay.loss_metrics().await {
            r.errors.push(format!("1→100 relay metric: {m}"));
        }
        anyhow::Ok(())
    }
    .await;
    relay.stop().await;
    res
}

#[derive(Default, Debug, Clone)]
struct Ceiling {
    tp1: Option<(f64, usize)>,
    tp100: Option<f64>,
    errors: Vec<String>,
}

async fn run_load(sink: &mut Proc, sink_port: u16, paths: usize, conns: usize, count: u64, s: &Sizes, log: &Path) -> Result<f64> {
    sink.reset().await?;
    let limit = s.phase_limit.as_secs().to_string();
    let mut load = Proc::spawn(
        self_cmd(&[
            "load",
            "--port",
            &sink_port.to_string(),
            "--paths",
            &paths.to_string(),
            "--conns",
            &conns.to_string(),
            "--count",
            &count.to_string(),
            "--limit-secs",
            &limit,
        ])?,
        log,
    )?;
    let l = load.expect("done", s.phase_limit + Duration::from_secs(10)).await?;
    let f: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let (done, start, _end, errors) = (f[0], f[1], f[2], f[3]);
    let st = sink.stats().await?;
    if errors > 0 {
        bail!("load generator saw {errors} errors ({done}/{count} done)");
    }
    let secs = st.last_ns.saturating_sub(start) as f64 / 1e9;
    Ok(if secs > 0.0 { st.count as f64 / secs } else { 0.0 })
}

async fn bench_ceiling(o: &Opts, s: &Sizes) -> Ceiling {
    let mut c = Ceiling::default();
    let dir = o.work.join("ceiling");
    let res = async {
        std::fs::create_dir_all(&dir)?;
        let mut sink = Proc::spawn(self_cmd(&["sink"])?, &dir.join("sink.log"))?;
        let port = sink.port().await?;
        for &conns in s.ceiling_conns {
            match run_load(&mut sink, port, 1, conns, s.tp1, s, &dir.join(format!("load-1-{conns}.log"))).await {
                Ok(rate) => {
                    if c.tp1.is_none_or(|(best, _)| rate > best) {
                        c.tp1 = Some((rate, conns));
                    }
                }
                Err(e) => c.errors.push(format!("ceiling 1→1 with {conns} connections: {e:#}")),
            }
        }
        let n = s.tp100 * s.subs100 as u64;
        match run_load(&mut sink, port, s.subs100, s.subs100, n, s, &dir.join("load-100.log")).await {
            Ok(rate) => c.tp100 = Some(rate),
            Err(e) => c.errors.push(format!("ceiling 1→100: {e:#}")),
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = res {
        c.errors.push(format!("ceiling: {e:#}"));
    }
    c
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn min_opt<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y < x { y } else { x }),
        (x, y) => x.or(y),
    }
}

fn best_phase(a: Option<Phase>, b: Option<Phase>, better: impl Fn(&Phase, &Phase) -> bool) -> Option<Phase> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if better(&y, &x) { y } else { x }),
        (x, y) => x.or(y),
    }
}

impl RelayResult {
    /// Per figure, the better of two rounds.
    fn best(self, o: RelayResult) -> RelayResult {
        let mut errors = self.errors;
        for e in o.errors {
            if !errors.contains(&e) {
                errors.push(e);
            }
        }
        RelayResult {
            idle_rss_kib: min_opt(self.idle_rss_kib, o.idle_rss_kib),
            lat: best_phase(self.lat, o.lat, |y, x| y.stats.count > 0 && (x.stats.count == 0 || y.stats.p99_us < x.stats.p99_us)),
            tp1: best_phase(self.tp1, o.tp1, |y, x| y.rate > x.rate),
            hwm1_kib: min_opt(self.hwm1_kib, o.hwm1_kib),
            cpu1_us: min_opt(self.cpu1_us, o.cpu1_us),
            cpu100_us: min_opt(self.cpu100_us, o.cpu100_us),
            tp100: best_phase(self.tp100, o.tp100, |y, x| y.rate > x.rate),
            hwm100_kib: min_opt(self.hwm100_kib, o.hwm100_kib),
            errors,
        }
    }
}

impl Ceiling {
    fn best(self, o: Ceiling) -> Ceiling {
        let tp1 = match (self.tp1, o.tp1) {
            (Some(x), Some(y)) => Some(if y.0 > x.0 { y } else { x }),
            (x, y) => x.or(y),
        };
        let tp100 = match (self.tp100, o.tp100) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        let mut errors = self.errors;
        errors.extend(o.errors);
        Ceiling { tp1, tp100, errors }
    }
}

// ---------------------------------------------------------------- report

fn fmt_rate(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn fmt_ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn fmt_mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn phase_cell(p: &Option<Phase>) -> String {
    match p {
        None => "n/a".into(),
        Some(p) => {
            let mut s = fmt_rate(p.rate);
            if p.timed_out {
                let _ = write!(s, " (delivered {} of {})", p.stats.count, p.expected);
            }
            s
        }
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => format!("{:.2}×", a / b),
        _ => "n/a".into(),
    }
}

fn render(o: &Opts, s: &Sizes, results: &BTreeMap<String, RelayResult>, ceiling: &Ceiling, started: &str, load: (String, String)) -> String {
    let relays = &o.relays;
    let get = |name: &str| results.get(name).cloned().unwrap_or_default();
    let tp1 = |r: &RelayResult| r.tp1.as_ref().filter(|p| p.rate > 0.0).map(|p| p.rate);
    let tp100 = |r: &RelayResult| r.tp100.as_ref().filter(|p| p.rate > 0.0).map(|p| p.rate);
    let p50 = |r: &RelayResult| r.lat.as_ref().filter(|p| p.stats.count > 0).map(|p| p.stats.p50_us as f64);
    let p99 = |r: &RelayResult| r.lat.as_ref().filter(|p| p.stats.count > 0).map(|p| p.stats.p99_us as f64);
    let idle = |r: &RelayResult| r.idle_rss_kib.map(|v| v as f64);
    let hwm1 = |r: &RelayResult| r.hwm1_kib.map(|v| v as f64);
    let hwm100 = |r: &RelayResult| r.hwm100_kib.map(|v| v as f64);
    let cpu1 = |r: &RelayResult| r.cpu1_us;
    let cpu100 = |r: &RelayResult| r.cpu100_us;

    let mut out = String::new();
    let _ = writeln!(out, "# wsbridge data-plane benchmark\n");
    let _ = writeln!(
        out,
        "Run {started} with `{}`; {} cores; {} mode. Messages are {} bytes of JSON text. \
         Throughput runs send {} messages (1→1) and {} messages to {} subscribers (1→100) as fast as the source can; \
         latency is end to end (source send → sink receipt) at a fixed {} msg/s for {} messages, 1 subscriber. \
         RSS is the relay process's VmRSS after connecting (idle) and its VmHWM after each load; \
         CPU per delivery is the relay process's user + system time over the throughput run ÷ deliveries \
         (less sensitive to a noisy neighbour than a rate). \
         The machine is shared and noisy (load average {} before, {} after): these are figures, not assertions. \
         {}\n",
        o.command_line,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        if o.quick { "quick (smoke-test sizes, not meaningful)" } else { "full" },
        s.msg_size,
        s.tp1,
        s.tp100,
        s.subs100,
        s.lat_rate,
        s.lat,
        load.0,
        load.1,
        if o.repeat > 1 {
            format!("Each figure is the best of {} interleaved rounds (highest rate, lowest latency, RSS and CPU).", o.repeat)
        } else {
            "One round.".to_string()
        },
    );
    if let Ok(build) = std::env::var("WSBENCH_WSBRIDGE_BUILD") {
        let _ = writeln!(out, "wsbridge build measured: {build}.\n");
    }
    let _ = write!(out, "| scenario |");
    for r in relays {
        let _ = write!(out, " {r} |");
    }
    let _ = writeln!(out, " ceiling |");
    let _ = write!(out, "|---|");
    for _ in relays {
        let _ = write!(out, "---:|");
    }
    let _ = writeln!(out, "---:|");
    let row = |out: &mut String, label: &str, f: &dyn Fn(&RelayResult) -> String, ceil: String| {
        let _ = write!(out, "| {label} |");
        for r in relays {
            let _ = write!(out, " {} |", f(&get(r)));
        }
        let _ = writeln!(out, " {ceil} |");
    };
    let ceil1 = ceiling.tp1.map(|(v, c)| format!("{} ({c} conns)", fmt_rate(v))).unwrap_or("n/a".into());
    let ceil100 = ceiling.tp100.map(fmt_rate).unwrap_or("n/a".into());
    row(&mut out, "1→1 throughput (msg/s)", &|r| phase_cell(&r.tp1), ceil1);
    row(&mut out, "1→100 throughput (deliveries/s)", &|r| phase_cell(&r.tp100), ceil100);
    let opt = |v: Option<String>| v.unwrap_or("n/a".into());
    row(&mut out, "latency p50 @1k msg/s (ms)", &|r| opt(p50(r).map(|v| fmt_ms(v as u64))), "—".into());
    row(&mut out, "latency p99 @1k msg/s (ms)", &|r| opt(p99(r).map(|v| fmt_ms(v as u64))), "—".into());
    row(
        &mut out,
        "latency max @1k msg/s (ms)",
        &|r| opt(r.lat.as_ref().filter(|p| p.stats.count > 0).map(|p| fmt_ms(p.stats.max_us))),
        "—".into(),
    );
    row(&mut out, "RSS idle (MiB)", &|r| opt(idle(r).map(|v| fmt_mib(v as u64))), "—".into());
    row(&mut out, "RSS peak 1→1 (MiB)", &|r| opt(hwm1(r).map(|v| fmt_mib(v as u64))), "—".into());
    row(&mut out, "RSS peak 1→100 (MiB)", &|r| opt(hwm100(r).map(|v| fmt_mib(v as u64))), "—".into());
    row(&mut out, "relay CPU per delivery 1→1 (µs)", &|r| opt(cpu1(r).map(|v| format!("{v:.1}"))), "—".into());
    row(&mut out, "relay CPU per delivery 1→100 (µs)", &|r| opt(cpu100(r).map(|v| format!("{v:.1}"))), "—".into());

    // Ratios: how many times better wsbridge is (>1 = wsbridge better).
    let w = get("wsbridge");
    let peers: Vec<&String> = relays.iter().filter(|r| r.as_str() != "wsbridge").collect();
    let _ = writeln!(out, "\nRatio to wsbridge (> 1× means wsbridge is better: its throughput ÷ the peer's; the peer's latency or RSS ÷ its own); ceiling column is wsbridge's share of the ceiling:\n");
    let _ = write!(out, "| ratio |");
    for p in &peers {
        let _ = write!(out, " vs {p} |");
    }
    let _ = writeln!(out, " of ceiling |");
    let _ = write!(out, "|---|");
    for _ in &peers {
        let _ = write!(out, "---:|");
    }
    let _ = writeln!(out, "---:|");
    let pct = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.0}%", 100.0 * a / b),
        _ => "n/a".into(),
    };
    type Getter<'a> = &'a dyn Fn(&RelayResult) -> Option<f64>;
    let rows: [(&str, Getter, bool, String); 9] = [
        ("1→1 throughput", &tp1, true, pct(tp1(&w), ceiling.tp1.map(|c| c.0))),
        ("1→100 throughput", &tp100, true, pct(tp100(&w), ceiling.tp100)),
        ("latency p50", &p50, false, "—".into()),
        ("latency p99", &p99, false, "—".into()),
        ("RSS idle", &idle, false, "—".into()),
        ("RSS peak 1→1", &hwm1, false, "—".into()),
        ("RSS peak 1→100", &hwm100, false, "—".into()),
        ("CPU per delivery 1→1", &cpu1, false, "—".into()),
        ("CPU per delivery 1→100", &cpu100, false, "—".into()),
    ];
    for (label, f, higher_better, ceil) in rows {
        let _ = write!(out, "| {label} |");
        for p in &peers {
            let pr = get(p);
            let cell = if higher_better { ratio(f(&w), f(&pr)) } else { ratio(f(&pr), f(&w)) };
            let _ = write!(out, " {cell} |");
        }
        let _ = writeln!(out, " {ceil} |");
    }

    // Targets.
    let judge = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "not met",
        None => "n/a",
    };
    let bt = get("benthos");
    let tgt_benthos = match (tp1(&w), tp1(&bt)) {
        (Some(a), Some(b)) => Some(a >= 3.0 * b),
        _ => None,
    };
    let tgt_ceiling = match (tp1(&w), ceiling.tp1) {
        (Some(a), Some((c, _))) => Some(a >= 0.7 * c),
        _ => None,
    };
    let tgt_p99 = p99(&w).map(|v| v < 1000.0);
    let tgt_idle = idle(&w).map(|v| v < 10.0 * 1024.0);
    let _ = writeln!(out, "\nTargets for wsbridge (reported, not asserted):\n");
    let _ = writeln!(out, "- ≥ 3× Benthos throughput (1→1): {}", judge(tgt_benthos));
    let _ = writeln!(out, "- ≥ 70% of the ceiling (1→1): {}", judge(tgt_ceiling));
    let _ = writeln!(out, "- p99 < 1 ms at 1k msg/s: {}", judge(tgt_p99));
    let _ = writeln!(out, "- idle RSS < 10 MiB: {}", judge(tgt_idle));

    let mut notes = Vec::new();
    for r in relays {
        for e in &get(r).errors {
            notes.push(format!("{r}: {e}"));
        }
        let g = get(r);
        for (label, p) in [("1→1", &g.tp1), ("1→100", &g.tp100), ("latency", &g.lat)] {
            if let Some(p) = p {
                if p.stats.bad > 0 {
                    notes.push(format!("{r} {label}: {} deliveries had no parsable timestamp", p.stats.bad));
                }
                if p.stats.count > p.expected {
                    notes.push(format!("{r} {label}: {} deliveries for {} expected (duplicates)", p.stats.count, p.expected));
                }
            }
        }
    }
    notes.extend(ceiling.errors.iter().cloned());
    if !notes.is_empty() {
        let _ = writeln!(out, "\nNotes:\n");
        for n in notes {
            // No machine paths in the committed report.
            let n = n.replace('\n', " ").replace(&*o.work.to_string_lossy(), "<work>");
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

pub async fn main(o: Opts) -> Result<()> {
    let s = Sizes::new(o.quick);
    std::fs::create_dir_all(&o.work)?;
    let started = {
        let out = std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC").output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
    };
    let load_before = loadavg();
    let mut results: BTreeMap<String, RelayResult> = BTreeMap::new();
    let mut ceiling = Ceiling::default();
    for round in 1..=o.repeat.max(1) {
        let ro = Opts { work: o.work.join(format!("round-{round}")), ..o.clone() };
        for name in &o.relays {
            eprintln!("== {name} (round {round}/{})", o.repeat.max(1));
            let mut r = RelayResult::default();
            let t = Instant::now();
            if let Err(e) = bench_relay_one(&ro, &s, name, &mut r).await {
                eprintln!("   {name} 1→1: {e:#}");
                r.errors.push(format!("1→1/latency/idle: {e:#}"));
            }
            if let Err(e) = bench_relay_many(&ro, &s, name, &mut r).await {
                eprintln!("   {name} 1→100: {e:#}");
                r.errors.push(format!("1→100: {e:#}"));
            }
            eprintln!(
                "   {name}: 1→1 {} msg/s, 1→100 {} deliveries/s, p50 {} p99 {} ms, idle {} MiB ({:.0?})",
                phase_cell(&r.tp1),
                phase_cell(&r.tp100),
                r.lat.as_ref().map(|p| fmt_ms(p.stats.p50_us)).unwrap_or("n/a".into()),
                r.lat.as_ref().map(|p| fmt_ms(p.stats.p99_us)).unwrap_or("n/a".into()),
                r.idle_rss_kib.map(fmt_mib).unwrap_or("n/a".into()),
                t.elapsed()
            );
            let best = results.remove(name).map(|b| b.best(r.clone())).unwrap_or(r);
            results.insert(name.clone(), best);
        }
        eprintln!("== ceiling (round {round})");
        let c = bench_ceiling(&ro, &s).await;
        ceiling = ceiling.best(c);
    }
    let load = (load_before, loadavg());
    let table = render(&o, &s, &results, &ceiling, &started, load);
    println!("{table}");
    if let Some(out) = &o.out {
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(out, &table)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
