//! The `rabbitmq` scenario: endpoint → broker → dispatcher → sink on a
//! `backend: rabbitmq` Channel, side by side with RabbitMQ's own PerfTest
//! for the same shape, on one broker (started by `bench/rabbitmq.sh`).
//!
//! - the *publisher*: `wsbridge standalone --rabbitmq-url-file` with the
//!   Endpoint, Channel (`backend: rabbitmq`) and Bridge, no Subscription:
//!   endpoint messages go to the channel's exchange with publisher
//!   confirms (persistent), what the worker role does;
//! - R *dispatchers*: with an API server (`--kubeconfig`, started by
//!   `bench/tools/controlplane.sh`), `wsbridge dispatcher` itself, the
//!   Channel and its N Subscriptions applied there; without one,
//!   `wsbridge standalone` processes with the Channel and Subscriptions in
//!   a file and no Endpoint, running the same consumer and delivery engine
//!   (`Durable::consume_subscription`). Each consumes every Subscription's
//!   quorum queue (prefetch = `maxInFlight`) into the delivery engine and
//!   acknowledges after the sink's 2xx. With R = 2 the replicas compete on
//!   each queue (`unordered`).
//!
//! PerfTest (`com.rabbitmq.perf.PerfTest`): one producer, N quorum queues
//! bound to one fanout exchange, one consumer per queue, persistent
//! 256-byte messages, at most 256 unconfirmed (wsbridge's publisher
//! window), prefetch 64; end-to-end rate = its "receiving rate avg".

use crate::msg;
use crate::procs::{Proc, cpu_us, free_port, self_cmd};
use crate::relays::{Relay, http_get, http_head};
use crate::scenarios::{Phase, Sizes, wait_connected};
use anyhow::{Context, Result, anyhow, bail};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// Prefetch of every consumer, wsbridge's and PerfTest's (`maxInFlight`).
pub const PREFETCH: u32 = 64;
/// Unconfirmed publishes at once: wsbridge's `MAX_UNCONFIRMED`, PerfTest's `-c`.
pub const CONFIRM_WINDOW: u32 = 256;

pub struct Opts {
    pub wsbridge: PathBuf,
    pub url_file: PathBuf,
    pub broker_pgid: Option<u32>,
    pub perftest_cp: Option<String>,
    pub java: String,
    pub work: PathBuf,
    pub out: Option<PathBuf>,
    /// Messages sent per run, by subscriber count.
    pub messages_1: u64,
    pub messages_10: u64,
    pub command_line: String,
    pub quick: bool,
    /// An API server (`bench/tools/controlplane.sh`): the dispatchers are
    /// then `wsbridge dispatcher` processes watching it; without one,
    /// `wsbridge standalone` processes with the Subscriptions in a file.
    pub cluster: Option<Cluster>,
}

/// The bench's API server.
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
}

/// The namespace of the bench's Channels and Subscriptions: standalone's
/// (the publisher's objects have none), which the API server creates.
const NAMESPACE: &str = "default";

impl Cluster {
    /// `kubectl ARGS` with `stdin`, failing with its output.
    async fn kubectl(&self, args: &[&str], stdin: &str) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut c = Command::new(&self.kubectl);
        c.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().context("start kubectl")?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.as_bytes()).await?;
        }
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    async fn apply(&self, yaml: &str) -> Result<()> {
        self.kubectl(&["apply", "-n", NAMESPACE, "-f", "-"], yaml).await
    }

    /// Removes the run's objects: the next run's dispatchers consume only
    /// their own Subscriptions.
    async fn delete_all(&self) -> Result<()> {
        self.kubectl(&["delete", "-n", NAMESPACE, "subscriptions,channels", "--all", "--wait=true"], "")
            .await
    }
}

/// A `wsbridge dispatcher` process, the role itself, following `NAMESPACE`.
fn spawn_dispatcher(o: &Opts, cluster: &Cluster, dir: &Path, name: &str) -> Result<Relay> {
    // The bench's sink is on loopback, which the cluster roles refuse by
    // default.
    let args = ["dispatcher", "--namespace", NAMESPACE, "--allow-loopback"].map(OsStr::new);
    spawn_wsbridge(o, dir, name, &args, Some(&cluster.kubeconfig))
}

#[derive(Default, Debug, Clone)]
pub struct WsResult {
    pub subs: usize,
    pub replicas: usize,
    pub phase: Option<Phase>,
    /// Dispatcher processes' CPU (sum), publisher's, broker's; µs per delivery.
    pub dispatcher_cpu_us: Option<f64>,
    pub publisher_cpu_us: Option<f64>,
    pub broker_cpu_us: Option<f64>,
    pub notes: Vec<String>,
}

#[derive(Default, Debug, Clone)]
pub struct PtResult {
    pub subs: usize,
    pub sent_rate: Option<f64>,
    pub recv_rate: Option<f64>,
    pub received: u64,
    pub expected: u64,
    /// Consumer latency median and 99th percentile, µs.
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub perftest_cpu_us: Option<f64>,
    pub broker_cpu_us: Option<f64>,
    pub notes: Vec<String>,
}

/// User + system CPU time, µs, of every process in process group `pgid`.
fn group_cpu_us(pgid: u32) -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else { continue };
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // After `(comm)`: state, ppid, pgrp (field 5 of the whole line).
        if f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
            total += cpu_us(pid).unwrap_or(0);
        }
    }
    Some(total)
}

fn per(before: Option<u64>, after: Option<u64>, n: u64) -> Option<f64> {
    let (b, a) = (before?, after?);
    (n > 0).then(|| a.saturating_sub(b) as f64 / n as f64)
}

fn yaml_channel(channel: &str) -> String {
    format!(
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {{name: {channel}}}\nspec: {{backend: rabbitmq}}\n"
    )
}

fn spawn_standalone(o: &Opts, dir: &Path, name: &str, yaml: &str) -> Result<Relay> {
    let cfg = dir.join(format!("{name}-config"));
    std::fs::create_dir_all(&cfg)?;
    std::fs::write(cfg.join("bench.yaml"), yaml)?;
    spawn_wsbridge(o, dir, name, &[OsStr::new("standalone"), OsStr::new("-f"), cfg.as_os_str()], None)
}

/// `wsbridge ARGS --listen 127.0.0.1:PORT --rabbitmq-url-file F` (with
/// `KUBECONFIG` when given), its output in `{name}.log`, `/metrics` on PORT.
fn spawn_wsbridge(o: &Opts, dir: &Path, name: &str, args: &[&OsStr], kubeconfig: Option<&Path>) -> Result<Relay> {
    let port = free_port()?;
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log)?;
    let mut c = Command::new(&o.wsbridge);
    c.args(args)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--rabbitmq-url-file")
        .arg(&o.url_file)
        .env(
            "RUST_LOG",
            std::env::var("WSBENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true);
    if let Some(kubeconfig) = kubeconfig {
        c.env("KUBECONFIG", kubeconfig);
    }
    let child = c.spawn().with_context(|| format!("start {name}"))?;
    Ok(Relay {
        child,
        log,
        metrics_port: Some(port),
    })
}

async fn wait_ready(r: &mut Relay, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let port = r.metrics_port.unwrap_or(0);
    loop {
        r.check_alive()?;
        if let Ok(Ok(head)) = tokio::time::timeout(Duration::from_secs(2), http_head(port, "/readyz")).await
            && head.contains(" 200")
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not ready within {limit:?}; log: {}", r.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `r` consumes `queues` queues (its `wsbridge_broker_consuming`
/// gauges): a dispatcher is ready once it is connected and has listed the
/// Subscriptions, and declares and consumes their queues right after; a
/// message published before a queue is bound would reach no one.
async fn wait_consuming(r: &mut Relay, queues: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let port = r.metrics_port.unwrap_or(0);
    loop {
        r.check_alive()?;
        let consuming = match tokio::time::timeout(Duration::from_secs(2), http_get(port, "/metrics")).await {
            Ok(Ok(text)) => text
                .lines()
                .filter(|l| l.starts_with("wsbridge_broker_consuming{") && l.ends_with(" 1"))
                .count(),
            _ => 0,
        };
        if consuming >= queues {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("consuming {consuming} of {queues} queues after {limit:?}; log: {}", r.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One wsbridge run: `subs` Subscriptions, `replicas` dispatcher processes.
pub async fn run_wsbridge(
    o: &Opts,
    s: &Sizes,
    run: &str,
    subs: usize,
    replicas: usize,
    messages: u64,
) -> WsResult {
    let mut r = WsResult {
        subs,
        replicas,
        ..Default::default()
    };
    if let Err(e) = wsbridge_inner(o, s, run, subs, replicas, messages, &mut r).await {
        r.notes.push(format!("{e:#}"));
    }
    r
}

async fn wsbridge_inner(
    o: &Opts,
    s: &Sizes,
    run: &str,
    subs: usize,
    replicas: usize,
    messages: u64,
    r: &mut WsResult,
) -> Result<()> {
    let dir = o.work.join(run);
    std::fs::create_dir_all(&dir)?;
    let mut sink = Proc::spawn(self_cmd(&["sink"])?, &dir.join("sink.log"))?;
    let sink_port = sink.port().await?;
    let mut src = Proc::spawn(self_cmd(&["source"])?, &dir.join("source.log"))?;
    let ws_port = src.port().await?;
    // Names of their own per run: fresh exchange and queues.
    let channel = run.to_string();
    let mut subs_yaml = yaml_channel(&channel);
    for i in 0..subs {
        let _ = write!(
            subs_yaml,
            "---\napiVersion: wsbridge.io/v1alpha1\nkind: Subscription\nmetadata: {{name: {run}-sink-{i}}}\nspec:\n  channel: {channel}\n  \
             subscriber: {{uri: \"http://127.0.0.1:{sink_port}/in/{i}\"}}\n  \
             delivery: {{ordering: unordered, maxInFlight: {PREFETCH}, queueCapacity: 100000}}\n"
        );
    }
    let mut dispatchers = Vec::new();
    if let Some(cluster) = &o.cluster {
        cluster.apply(&subs_yaml).await?;
    }
    for k in 0..replicas {
        let name = format!("dispatcher-{k}");
        dispatchers.push(match &o.cluster {
            Some(cluster) => spawn_dispatcher(o, cluster, &dir, &name)?,
            None => spawn_standalone(o, &dir, &name, &subs_yaml)?,
        });
    }
    let res = async {
        for d in dispatchers.iter_mut() {
            wait_ready(d, s.connect_limit).await?;
            wait_consuming(d, subs, s.connect_limit).await?;
        }
        let pub_yaml = format!(
            "apiVersion: wsbridge.io/v1alpha1\nkind: Endpoint\nmetadata: {{name: source}}\nspec: {{url: \"ws://127.0.0.1:{ws_port}/feed\"}}\n---\n{}---\n\
             apiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {{name: {run}}}\nspec: {{channel: {channel}, endpoint: source}}\n",
            yaml_channel(&channel)
        );
        let mut publisher = spawn_standalone(o, &dir, "publisher", &pub_yaml)?;
        let res = async {
            wait_connected(&mut src, &mut publisher, s.connect_limit).await?;
            tokio::time::sleep(s.settle).await;
            // Warm-up: every process has its connections and queues.
            let warm = 200;
            src.send(&format!("send {warm} 0")).await?;
            let w = crate::scenarios::wait_for(&mut sink, Some(&mut dispatchers[0]), warm * subs as u64, msg::now_ns(), s).await?;
            if w.timed_out {
                bail!("warm-up delivered {}/{}; log: {}", w.stats.count, w.expected, dispatchers[0].log_tail());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            sink.reset().await?;

            let d0: Vec<Option<u64>> = dispatchers.iter().map(|d| cpu_us(d.pid())).collect();
            let p0 = cpu_us(publisher.pid());
            let b0 = o.broker_pgid.and_then(group_cpu_us);
            let start = msg::now_ns();
            src.send(&format!("send {messages} 0")).await?;
            let p = crate::scenarios::wait_for(&mut sink, Some(&mut dispatchers[0]), messages * subs as u64, start, s).await?;
            let n = p.stats.count;
            let d1: Vec<Option<u64>> = dispatchers.iter().map(|d| cpu_us(d.pid())).collect();
            let before: Option<u64> = d0.iter().copied().sum();
            let after: Option<u64> = d1.iter().copied().sum();
            r.dispatcher_cpu_us = per(before, after, n);
            r.publisher_cpu_us = per(p0, cpu_us(publisher.pid()), n);
            r.broker_cpu_us = per(b0, o.broker_pgid.and_then(group_cpu_us), n);
            if replicas > 1 {
                let shares: Vec<String> = d0
                    .iter()
                    .zip(&d1)
                    .map(|(b, a)| match (b, a) {
                        (Some(b), Some(a)) => format!("{:.1} s", (a - b) as f64 / 1e6),
                        _ => "?".into(),
                    })
                    .collect();
                r.notes.push(format!("CPU of each dispatcher replica: {}", shares.join(", ")));
            }
            r.phase = Some(p);
            for d in &dispatchers {
                for m in d.loss_metrics().await {
                    r.notes.push(format!("dispatcher metric: {m}"));
                }
            }
            for m in publisher.loss_metrics().await {
                r.notes.push(format!("publisher metric: {m}"));
            }
            anyhow::Ok(())
        }
        .await;
        publisher.stop().await;
        res
    }
    .await;
    for d in dispatchers {
        d.stop().await;
    }
    // The run's own error, if any, is the one to report.
    let deleted = match &o.cluster {
        Some(cluster) => cluster.delete_all().await,
        None => Ok(()),
    };
    res.and(deleted)
}

/// One PerfTest run of the same shape.
pub async fn run_perftest(o: &Opts, run: &str, subs: usize, messages: u64) -> PtResult {
    let mut r = PtResult {
        subs,
        expected: messages * subs as u64,
        ..Default::default()
    };
    if let Err(e) = perftest_inner(o, run, subs, messages, &mut r).await {
        r.notes.push(format!("{e:#}"));
    }
    r
}

/// `prefix N msg/s` → N.
fn rate_after(text: &str, prefix: &str) -> Option<f64> {
    let line = text.lines().rev().find(|l| l.contains(prefix))?;
    let rest = &line[line.find(prefix)? + prefix.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// PerfTest's summary `consumer latency min/median/75th/95th/99th a/b/c/d/e µs`.
fn latency(text: &str) -> Option<(u64, u64)> {
    let key = "consumer latency min/median/75th/95th/99th ";
    let line = text.lines().rev().find(|l| l.contains(key))?;
    let v: Vec<u64> = line[line.find(key)? + key.len()..]
        .split_whitespace()
        .next()?
        .split('/')
        .filter_map(|x| x.parse().ok())
        .collect();
    Some((*v.get(1)?, *v.get(4)?))
}

async fn perftest_inner(o: &Opts, run: &str, subs: usize, messages: u64, r: &mut PtResult) -> Result<()> {
    let cp = o
        .perftest_cp
        .as_ref()
        .ok_or_else(|| anyhow!("PerfTest not installed (bench/tools/perftest.sh failed)"))?;
    let dir = o.work.join(run);
    std::fs::create_dir_all(&dir)?;
    let url = std::fs::read_to_string(&o.url_file)?.trim().to_string();
    let log = dir.join("perftest.log");
    let out = std::fs::File::create(&log)?;
    let limit = if o.quick { 60 } else { 300 };
    let mut c = Command::new(&o.java);
    c.arg("-cp").arg(cp).arg("com.rabbitmq.perf.PerfTest");
    c.arg("--uri").arg(&url);
    for (k, v) in [
        ("--producers", "1".to_string()),
        ("--consumers", subs.to_string()),
        ("--size", "256".into()),
        ("--flag", "persistent".into()),
        ("--confirm", CONFIRM_WINDOW.to_string()),
        ("--qos", PREFETCH.to_string()),
        ("--pmessages", messages.to_string()),
        ("--cmessages", messages.to_string()),
        ("--exchange", run.to_string()),
        ("--type", "fanout".into()),
        ("--queue-pattern", format!("{run}.%d")),
        ("--queue-pattern-from", "1".into()),
        ("--queue-pattern-to", subs.to_string()),
        ("--time", limit.to_string()),
    ] {
        c.arg(k).arg(v);
    }
    c.arg("--quorum-queue");
    c.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true);
    let b0 = o.broker_pgid.and_then(group_cpu_us);
    let mut child = c.spawn().context("start PerfTest (java)")?;
    let pid = child.id().unwrap_or(0);
    // The JVM's CPU, read just before it exits: poll it while it runs.
    let mut last_cpu = None;
    let status = loop {
        if let Some(c) = cpu_us(pid) {
            last_cpu = Some(c);
        }
        match tokio::time::timeout(Duration::from_millis(100), child.wait()).await {
            Ok(st) => break st?,
            Err(_) => continue,
        }
    };
    let b1 = o.broker_pgid.and_then(group_cpu_us);
    let text = std::fs::read_to_string(&log)?;
    r.sent_rate = rate_after(&text, "sending rate avg: ");
    r.recv_rate = rate_after(&text, "receiving rate avg: ");
    if let Some((p50, p99)) = latency(&text) {
        r.p50_us = Some(p50);
        r.p99_us = Some(p99);
    }
    if text.contains("Consumer reached message limit") {
        r.received = r.expected;
    } else {
        r.notes.push(format!(
            "PerfTest stopped before every consumer got {messages} ({status}); see {}",
            log.display()
        ));
    }
    r.perftest_cpu_us = per(Some(0), last_cpu, r.received.max(1));
    r.broker_cpu_us = per(b0, b1, r.received.max(1));
    if !status.success() || r.recv_rate.is_none() {
        bail!(
            "PerfTest failed ({status}): {}",
            text.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(())
}

pub async fn main(o: Opts) -> Result<()> {
    let mut s = Sizes::new(o.quick);
    s.phase_limit = if o.quick {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(300)
    };
    s.stall = Duration::from_secs(if o.quick { 15 } else { 30 });
    std::fs::create_dir_all(&o.work)?;
    let started = {
        let out = std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d %H:%M UTC")
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let load_before = crate::run::loadavg();
    let tag = std::process::id();
    let mut ws = Vec::new();
    let mut pt = Vec::new();
    for (subs, messages) in [(1usize, o.messages_1), (10, o.messages_10)] {
        eprintln!("== PerfTest 1→{subs} ({messages} messages)");
        let p = run_perftest(&o, &format!("wsbench-perftest-{tag}-s{subs}"), subs, messages).await;
        eprintln!("   {:?} deliveries/s {:?}", p.recv_rate, p.notes);
        pt.push(p);
        for replicas in [1usize, 2] {
            eprintln!("== wsbridge 1→{subs}, {replicas} dispatcher(s) ({messages} messages)");
            let w = run_wsbridge(
                &o,
                &s,
                &format!("wsbench-{tag}-s{subs}-r{replicas}"),
                subs,
                replicas,
                messages,
            )
            .await;
            eprintln!(
                "   {:?} deliveries/s {:?}",
                w.phase.as_ref().map(|p| p.rate),
                w.notes
            );
            ws.push(w);
        }
    }
    let load = (load_before, crate::run::loadavg());
    let report = render(&o, &started, load, &ws, &pt);
    println!("{report}");
    if let Some(out) = &o.out {
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(out, &report)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// What each side runs, for the report.
fn what(cluster: bool) -> String {
    let dispatchers = if cluster {
        "Each *dispatcher* is the `wsbridge dispatcher` role itself (`--namespace default --allow-loopback`), \
watching a real API server (etcd and kube-apiserver built from source by `tests/controlplane/build.sh`, started by \
`bench/tools/controlplane.sh`, the CRDs installed), where the bench applied the Channel and the N Subscriptions \
(`unordered`, `maxInFlight: 64`): it consumes each Subscription's quorum queue (prefetch 64) into the delivery engine, \
POSTs to the bench's HTTP sink (hyper, answers 200) and acknowledges after the 2xx (in batches: `crates/broker/src/acks.rs`). \
No controller runs: the dispatcher declares what it consumes, and the bench waits until each replica consumes every queue."
    } else {
        "Each *dispatcher* process is `wsbridge standalone` with the same Channel and the N Subscriptions (`unordered`, \
`maxInFlight: 64`) and no Endpoint: it consumes each Subscription's quorum queue (prefetch 64) into the delivery engine, \
POSTs to the bench's HTTP sink (hyper, answers 200) and acknowledges after the 2xx. That is the broker consumer and \
delivery engine of `wsbridge dispatcher` (both call `Durable::consume_subscription`), without the dispatcher's \
Kubernetes watch of Channels and Subscriptions: **the `wsbridge dispatcher` role itself was not run** (no API server: \
`bench/tools/controlplane.sh` failed or was skipped)."
    };
    format!(
        "**What was measured.** wsbridge: the *publisher* is `wsbridge standalone --rabbitmq-url-file` with the Endpoint \
(the bench's WebSocket source, sending N messages as fast as it is read), the Channel (`backend: rabbitmq`) and the \
Bridge, and no Subscription: each endpoint message is published persistent to the channel's exchange with publisher \
confirms (at most 256 unconfirmed), as the worker role does. {dispatchers} With 2 dispatcher processes both consume \
every queue (competing consumers). PerfTest: one producer, N quorum queues bound to one fanout exchange (each queue \
gets every message, as each Subscription's queue bound with `#` to the channel's topic exchange does; the fanout \
exchange is PerfTest's way to get one-to-N with named quorum queues), one consumer per queue (prefetch 64, ack per \
message), persistent 256-byte messages, `--confirm 256`. Fresh exchange and queues per run; a warm-up of 200 messages \
before each wsbridge run (PerfTest's JVM gets none)."
    )
}

fn f0(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.0}")).unwrap_or_else(|| "n/a".into())
}
fn f1(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.1}")).unwrap_or_else(|| "n/a".into())
}
fn ms(us: Option<u64>) -> String {
    us.map(|v| format!("{:.1}", v as f64 / 1000.0))
        .unwrap_or_else(|| "n/a".into())
}

pub fn render(o: &Opts, started: &str, load: (String, String), ws: &[WsResult], pt: &[PtResult]) -> String {
    let mut t = String::new();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let _ = writeln!(
        t,
        "# Data-plane bench: `rabbitmq` Channels against RabbitMQ PerfTest\n"
    );
    let _ = writeln!(
        t,
        "`{}` — {started}, {cpus} CPUs, load average {} before, {} after; broker, wsbridge, PerfTest, source and sink all on 127.0.0.1 sharing the CPUs (the machine is shared and noisy: figures move by tens of percent between runs).\n",
        o.command_line, load.0, load.1
    );
    let _ = writeln!(
        t,
        "Shape: one producer, 1 or 10 subscribers each with a quorum queue bound to one exchange, persistent 256-byte messages, publisher confirms (at most {CONFIRM_WINDOW} unconfirmed), prefetch {PREFETCH}, ack after delivery. Rate = deliveries ÷ (last delivery − first send); PerfTest's is its `receiving rate avg`.\n"
    );
    let perftest = o
        .perftest_cp
        .as_deref()
        .and_then(|cp| cp.split("/perftest/").nth(1))
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("n/a");
    let _ = writeln!(
        t,
        "RabbitMQ {} (Debian's package, one node, its own data dir); PerfTest {perftest} (`com.rabbitmq:perf-test` from Maven Central, Java {}); wsbridge: {}.\n",
        std::env::var("WSBENCH_RABBITMQ_VERSION").unwrap_or_else(|_| "?".into()),
        std::env::var("WSBENCH_JAVA_VERSION").unwrap_or_else(|_| "?".into()),
        std::env::var("WSBENCH_WSBRIDGE_BUILD").unwrap_or_else(|_| "release build".into()),
    );
    let _ = writeln!(t, "{}\n", what(o.cluster.is_some()));
    let _ = writeln!(
        t,
        "| shape | wsbridge, 1 dispatcher: deliveries/s | wsbridge, 2 dispatchers: deliveries/s | PerfTest: deliveries/s | wsbridge ÷ PerfTest (1 / 2 dispatchers; target ≥ 0.60) | 1 → 2 dispatchers | delivered (1 / 2 dispatchers / PerfTest) |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|");
    for p in pt {
        let w1 = ws.iter().find(|w| w.subs == p.subs && w.replicas == 1);
        let w2 = ws.iter().find(|w| w.subs == p.subs && w.replicas == 2);
        let rate = |w: Option<&WsResult>| w.and_then(|w| w.phase.as_ref()).map(|p| p.rate);
        let (r1, r2) = (rate(w1), rate(w2));
        let ratio = |r: Option<f64>| match (r, p.recv_rate) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "n/a".into(),
        };
        let scale = match (r1, r2) {
            (Some(a), Some(b)) if a > 0.0 => format!("×{:.2}", b / a),
            _ => "n/a".into(),
        };
        let got = |w: Option<&WsResult>| {
            w.and_then(|w| w.phase.as_ref())
                .map(|p| format!("{} of {}", p.stats.count, p.expected))
                .unwrap_or_else(|| "n/a".into())
        };
        let _ = writeln!(
            t,
            "| 1→{} | {} | {} | {} | {} / {} | {} | {}, {}, {} of {} |",
            p.subs,
            f0(r1),
            f0(r2),
            f0(p.recv_rate),
            ratio(r1),
            ratio(r2),
            scale,
            got(w1),
            got(w2),
            p.received,
            p.expected
        );
    }
    let _ = writeln!(t, "\n## CPU and latency\n");
    let _ = writeln!(
        t,
        "CPU is user + system time from `/proc` over the measured run, in µs per delivery; the broker's is the whole RabbitMQ process group. Latency: wsbridge's is source send → sink receipt, PerfTest's its consumer latency (publish → consume); both include the time spent queued when the producer is ahead.\n"
    );
    let _ = writeln!(
        t,
        "| run | deliveries/s | dispatcher CPU µs/delivery | publisher CPU µs/delivery | PerfTest JVM CPU µs/delivery | broker CPU µs/delivery | p50 / p99 ms |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|");
    for p in pt {
        for w in ws.iter().filter(|w| w.subs == p.subs) {
            let ph = w.phase.as_ref();
            let _ = writeln!(
                t,
                "| wsbridge 1→{}, {} dispatcher{} | {} | {} | {} | — | {} | {} / {} |",
                w.subs,
                w.replicas,
                if w.replicas > 1 { "s" } else { "" },
                f0(ph.map(|p| p.rate)),
                f1(w.dispatcher_cpu_us),
                f1(w.publisher_cpu_us),
                f1(w.broker_cpu_us),
                ms(ph.map(|p| p.stats.p50_us)),
                ms(ph.map(|p| p.stats.p99_us)),
            );
        }
        let _ = writeln!(
            t,
            "| PerfTest 1→{} | {} | — | — | {} | {} | {} / {} |",
            p.subs,
            f0(p.recv_rate),
            f1(p.perftest_cpu_us),
            f1(p.broker_cpu_us),
            ms(p.p50_us),
            ms(p.p99_us)
        );
    }
    let notes: Vec<String> = ws
        .iter()
        .flat_map(|w| {
            w.notes
                .iter()
                .map(move |n| format!("wsbridge 1→{} ×{}: {n}", w.subs, w.replicas))
        })
        .chain(
            pt.iter()
                .flat_map(|p| p.notes.iter().map(move |n| format!("PerfTest 1→{}: {n}", p.subs))),
        )
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(t, "\n## Notes\n");
        for n in notes {
            let _ = writeln!(t, "- {n}");
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = "id: test-1, sending rate avg: 1096 msg/s\n\
        id: test-1, receiving rate avg: 10962 msg/s\n\
        id: test-1, consumer latency min/median/75th/95th/99th 34740/1483543/1569035/1708219/1740721 µs\n\
        id: test-1, confirm latency min/median/75th/95th/99th 1378/104368/154590/222205/252790 µs\n";

    #[test]
    fn reads_perftest_summary() {
        assert_eq!(rate_after(SUMMARY, "sending rate avg: "), Some(1096.0));
        assert_eq!(rate_after(SUMMARY, "receiving rate avg: "), Some(10962.0));
        assert_eq!(latency(SUMMARY), Some((1483543, 1740721)));
    }

    #[test]
    fn report_shows_ratio_and_scaling() {
        let o = Opts {
            wsbridge: "wsbridge".into(),
            url_file: "url".into(),
            broker_pgid: None,
            perftest_cp: None,
            java: "java".into(),
            work: "w".into(),
            out: None,
            messages_1: 10,
            messages_10: 10,
            command_line: "bash bench/rabbitmq.sh".into(),
            quick: true,
            cluster: None,
        };
        let phase = |rate: f64| Phase {
            rate,
            expected: 10,
            ..Default::default()
        };
        let ws = vec![
            WsResult {
                subs: 1,
                replicas: 1,
                phase: Some(phase(1000.0)),
                ..Default::default()
            },
            WsResult {
                subs: 1,
                replicas: 2,
                phase: Some(phase(1500.0)),
                ..Default::default()
            },
        ];
        let pt = vec![PtResult {
            subs: 1,
            recv_rate: Some(2000.0),
            expected: 10,
            received: 10,
            ..Default::default()
        }];
        let t = render(&o, "now", ("1".into(), "2".into()), &ws, &pt);
        assert!(
            t.contains("| 1→1 | 1000 | 1500 | 2000 | 0.50 / 0.75 | ×1.50 |"),
            "{t}"
        );
    }
}
