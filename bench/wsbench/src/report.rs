//! The Markdown report: the side-by-side table, ratios to wsbridge, the
//! targets (reported, not asserted) and notes.

use crate::run::Opts;
use crate::scenarios::{Ceiling, Phase, RelayResult, Sizes};
use std::collections::BTreeMap;
use std::fmt::Write as _;

pub fn fmt_rate(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub fn fmt_ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

pub fn fmt_mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

pub fn phase_cell(p: &Option<Phase>) -> String {
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

fn pct(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.0}%", 100.0 * a / b),
        _ => "n/a".into(),
    }
}

/// The zero-loss rate, or below which rate it lies when no probe passed.
fn zero_loss_cell(r: &RelayResult) -> String {
    match r.zero_loss {
        None => "n/a".into(),
        // Every probe passed: the relay sustains at least this much.
        Some(z) if z.rate > 0.0 && z.failed_at.is_none() => format!("≥ {}", fmt_rate(z.rate)),
        Some(z) if z.rate > 0.0 => fmt_rate(z.rate),
        Some(z) => z.failed_at.map_or("n/a".into(), |f| format!("< {}", fmt_rate(f))),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => format!("{:.2}×", a / b),
        _ => "n/a".into(),
    }
}

pub fn render(o: &Opts, s: &Sizes, results: &BTreeMap<String, RelayResult>, ceiling: &Ceiling, started: &str, load: (String, String)) -> String {
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
    let zero_loss = |r: &RelayResult| r.zero_loss.filter(|z| z.rate > 0.0).map(|z| z.rate);
    let ceiling1 = ceiling.tp1.map(|c| c.0);

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
         The zero-loss sustained rate is the highest paced 1→1 rate at which every message arrived within {} ms \
         of being sent, found by bisection ({} probes of {} s each, between 0 and 2× the relay's unpaced rate; ≥ when even the top probe passed); \
         the unpaced throughput counts what arrived, so a relay that sheds load scores higher there than its zero-loss rate. \
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
        crate::zero_loss::LATE_BOUND_US / 1000,
        s.zero_loss_probes,
        s.zero_loss_probe.as_secs(),
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
    row(&mut out, "1→1 zero-loss sustained (msg/s)", &|r| zero_loss_cell(r), "—".into());
    row(&mut out, "1→1 zero-loss share of ceiling", &|r| pct(zero_loss(r), ceiling1), "—".into());
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
    type Getter<'a> = &'a dyn Fn(&RelayResult) -> Option<f64>;
    let rows: [(&str, Getter, bool, String); 10] = [
        ("1→1 throughput", &tp1, true, pct(tp1(&w), ceiling1)),
        ("1→1 zero-loss sustained", &zero_loss, true, pct(zero_loss(&w), ceiling1)),
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
