//! The zero-loss sustained rate of a relay (1→1): the highest paced rate
//! at which every message arrives, none later than [`LATE_BOUND_US`] after
//! the source sent it. Throughput "as fast as the source can" counts what
//! arrived; a relay that sheds load (wsbridge's `queue_full`) and one that
//! applies backpressure are not compared like for like by it. This is.
//!
//! Found by bisection between 0 and twice the relay's unpaced rate (a relay
//! that sheds load can sustain more than its unpaced throughput counts; if
//! even the top probe passes, the figure is a lower bound). Each probe sends
//! `rate × probe duration` messages paced at `rate` on the warmed-up relay,
//! waits until they are all in or nothing arrived for the bound, then lets
//! the relay drain before the next probe.

use crate::procs::Proc;
use crate::relays::Relay;
use crate::scenarios::Sizes;
use anyhow::Result;
use std::time::{Duration, Instant};

/// How late a message may arrive and still count (source send → sink).
pub const LATE_BOUND_US: u64 = 500_000;

/// The search's answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct ZeroLoss {
    /// The highest rate that passed (0 when none did).
    pub rate: f64,
    /// The lowest rate that failed; the true figure lies below it.
    pub failed_at: Option<f64>,
    pub probes: u32,
}

/// One paced probe: did every message arrive in time?
async fn probe(src: &mut Proc, sink: &mut Proc, relay: &mut Relay, rate: u64, s: &Sizes) -> Result<bool> {
    sink.reset().await?;
    let n = (rate as f64 * s.zero_loss_probe.as_secs_f64()).ceil() as u64;
    src.send(&format!("send {n} {rate}")).await?;
    src.expect("sent", s.zero_loss_probe * 4 + Duration::from_secs(10)).await?;
    let late = Duration::from_micros(LATE_BOUND_US);
    let st = quiet(sink, relay, n, late, s).await?;
    let passed = st.0 == n && st.1 <= LATE_BOUND_US;
    // Whatever is still queued in the relay drains before the next probe.
    quiet(sink, relay, u64::MAX, Duration::from_secs(1), s).await?;
    Ok(passed)
}

/// Waits until `expected` deliveries are in or none arrived for `quiet`;
/// the count and the largest latency seen.
async fn quiet(sink: &mut Proc, relay: &mut Relay, expected: u64, quiet: Duration, s: &Sizes) -> Result<(u64, u64)> {
    let begin = Instant::now();
    let mut last = sink.stats().await?;
    let mut since = Instant::now();
    while last.count < expected && since.elapsed() < quiet && begin.elapsed() < s.phase_limit {
        tokio::time::sleep(s.poll).await;
        relay.check_alive()?;
        let st = sink.stats().await?;
        if st.count > last.count {
            since = Instant::now();
        }
        last = st;
    }
    Ok((last.count, last.max_us))
}

/// Bisects for the zero-loss sustained rate, up to `unpaced × 2`.
pub async fn search(src: &mut Proc, sink: &mut Proc, relay: &mut Relay, unpaced: f64, s: &Sizes) -> Result<ZeroLoss> {
    let mut out = ZeroLoss::default();
    let (mut lo, mut hi) = (0.0_f64, (unpaced * 2.0).max(1_000.0));
    for _ in 0..s.zero_loss_probes {
        let rate = ((lo + hi) / 2.0).round().max(1.0);
        out.probes += 1;
        let passed = probe(src, sink, relay, rate as u64, s).await?;
        eprintln!("   zero-loss probe at {rate} msg/s: {}", if passed { "passed" } else { "failed" });
        if passed {
            lo = rate;
        } else {
            hi = rate;
            out.failed_at = Some(rate);
        }
    }
    out.rate = lo;
    sink.reset().await?;
    Ok(out)
}
