//! The side-by-side runner: for each relay, starts a fresh source and sink
//! (this same binary, as child processes), starts the relay, and measures
//! idle RSS, latency at a fixed rate, and throughput to 1 and 100
//! subscribers; then measures the sink's own ceiling with the direct load
//! generator, and prints a Markdown table. Figures only: nothing asserts a
//! timing. Every wait has a deadline; every child is killed on the way out.
//!
//! The parts: `procs` (child processes, /proc), `relays` (the relays under
//! test), `scenarios` (what is measured), `report` (the Markdown) and `svg`
//! (its chart).

use crate::report::{fmt_mib, fmt_ms, phase_cell, render};
use crate::scenarios::{Ceiling, RelayResult, Sizes, bench_ceiling, bench_relay_many, bench_relay_one};
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

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
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
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
        write_chart(&table, &out.with_extension("svg"))?;
    }
    Ok(())
}

/// Writes the SVG chart of a Markdown report to `out`.
pub fn write_chart(report: &str, out: &std::path::Path) -> Result<()> {
    std::fs::write(out, crate::svg::from_report(report)?)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
