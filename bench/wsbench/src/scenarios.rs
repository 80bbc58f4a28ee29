//! The scenarios each relay runs — idle, latency at a fixed rate, throughput
//! to 1 and to 100 subscribers — and the sink's own ceiling with the direct
//! load generator; their sizes (quick or full) and the best-of-rounds merge.

use crate::msg;
use crate::procs::{Proc, cpu_per, cpu_us, mem_kib, self_cmd};
use crate::relays::{Relay, http_head, launch};
use crate::run::Opts;
use crate::sink::Stats;
use crate::zero_loss::{self, ZeroLoss};
use anyhow::{Result, bail};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub msg_size: usize,
    pub warm: u64,
    pub tp1: u64,
    pub tp100: u64,
    pub subs100: usize,
    pub lat: u64,
    pub lat_rate: u64,
    pub settle: Duration,
    pub phase_limit: Duration,
    pub stall: Duration,
    pub connect_limit: Duration,
    pub poll: Duration,
    pub ceiling_conns: &'static [usize],
    /// Traffic of one zero-loss probe, and how many probes the search makes.
    pub zero_loss_probe: Duration,
    pub zero_loss_probes: u32,
}

impl Sizes {
    pub fn new(quick: bool) -> Self {
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
                zero_loss_probe: Duration::from_secs(1),
                zero_loss_probes: 2,
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
                zero_loss_probe: Duration::from_secs(4),
                zero_loss_probes: 6,
            }
        }
    }
}

#[derive(Default, Debug, Clone)]
pub struct Phase {
    pub stats: Stats,
    pub expected: u64,
    pub rate: f64,
    #[allow(dead_code)] // sampled VmRSS; the report uses VmHWM
    pub peak_rss_kib: u64,
    pub timed_out: bool,
}

/// Polls the sink until `expected` deliveries arrived, progress stalls, or
/// the phase limit passes; samples the relay's RSS meanwhile.
pub async fn wait_for(sink: &mut Proc, relay: Option<&mut Relay>, expected: u64, start_ns: u64, s: &Sizes) -> Result<Phase> {
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
pub struct RelayResult {
    pub idle_rss_kib: Option<u64>,
    pub lat: Option<Phase>,
    pub tp1: Option<Phase>,
    pub hwm1_kib: Option<u64>,
    pub cpu1_us: Option<f64>,
    pub cpu100_us: Option<f64>,
    pub tp100: Option<Phase>,
    pub hwm100_kib: Option<u64>,
    pub zero_loss: Option<ZeroLoss>,
    pub errors: Vec<String>,
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
pub async fn wait_connected(src: &mut Proc, relay: &mut Relay, limit: Duration) -> Result<()> {
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
            if let Ok(Ok(head)) = tokio::time::timeout(Duration::from_secs(2), http_head(port, "/readyz")).await
                && (head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"))
            {
                break;
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

pub async fn bench_relay_one(o: &Opts, s: &Sizes, name: &str, r: &mut RelayResult) -> Result<()> {
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
        let unpaced = r.tp1.as_ref().map_or(0.0, |p| p.rate);
        match zero_loss::search(&mut src, &mut sink, &mut relay, unpaced, s).await {
            Ok(z) => r.zero_loss = Some(z),
            Err(e) => r.errors.push(format!("1→1 zero-loss search: {e:#}")),
        }
        anyhow::Ok(())
    }
    .await;
    relay.stop().await;
    res
}

pub async fn bench_relay_many(o: &Opts, s: &Sizes, name: &str, r: &mut RelayResult) -> Result<()> {
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
pub struct Ceiling {
    pub tp1: Option<(f64, usize)>,
    pub tp100: Option<f64>,
    pub errors: Vec<String>,
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

pub async fn bench_ceiling(o: &Opts, s: &Sizes) -> Ceiling {
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
    pub fn best(self, o: RelayResult) -> RelayResult {
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
            zero_loss: match (self.zero_loss, o.zero_loss) {
                (Some(x), Some(y)) => Some(if y.rate > x.rate { y } else { x }),
                (x, y) => x.or(y),
            },
            errors,
        }
    }
}

impl Ceiling {
    pub fn best(self, o: Ceiling) -> Ceiling {
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
