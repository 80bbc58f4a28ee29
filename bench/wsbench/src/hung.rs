//! The hung-subscriber scenario: each relay has two subscribers, one healthy
//! (the sink) and one that accepts connections, reads requests and never
//! answers; the source sends `total` bytes in messages of `size`. Reports
//! each relay's peak RSS (VmHWM) and what the healthy subscriber got: a
//! relay that queues without a byte bound grows by what the hung one holds.
//!
//! wsbench hung [--relays ...] [--total-mib N] [--size B] [--out FILE] ...

use crate::procs::{Proc, mem_kib, self_cmd};
use crate::relays::{Relay, launch_to};
use crate::run::Opts;
use crate::scenarios::wait_connected;
use anyhow::Result;
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// One relay's figures.
struct Outcome {
    relay: String,
    hwm_kib: Option<u64>,
    delivered: u64,
    sent: u64,
    secs: f64,
    note: String,
}

/// A subscriber that takes every request and never answers (it reads, so
/// the relay is not held back by TCP flow control, only by the missing
/// response).
async fn hung_subscriber() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    Ok(port)
}

async fn one(o: &Opts, name: &str, count: u64, size: usize) -> Result<Outcome> {
    let dir = o.work.join(name).join("hung");
    std::fs::create_dir_all(&dir)?;
    let mut sink = Proc::spawn(self_cmd(&["sink"])?, &dir.join("sink.log"))?;
    let sink_port = sink.port().await?;
    let size_arg = size.to_string();
    let mut src = Proc::spawn(
        self_cmd(&["source", "--size", &size_arg])?,
        &dir.join("source.log"),
    )?;
    let ws_port = src.port().await?;
    let hung_port = hung_subscriber().await?;
    let uris = [
        format!("http://127.0.0.1:{sink_port}/in/0"),
        format!("http://127.0.0.1:{hung_port}/in/1"),
    ];
    let mut relay: Relay = launch_to(o, name, &dir, ws_port, &uris)?;
    let result = async {
        wait_connected(&mut src, &mut relay, Duration::from_secs(30)).await?;
        let start = Instant::now();
        src.send(&format!("send {count} 0")).await?;
        // Until the healthy subscriber has everything, or nothing more came
        // for 10 s (a relay that sheds or stalls), or 10 minutes.
        let mut last = 0;
        let mut since = Instant::now();
        let mut hwm = None;
        let mut note = String::new();
        while last < count
            && since.elapsed() < Duration::from_secs(10)
            && start.elapsed() < Duration::from_secs(600)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            hwm = mem_kib(relay.pid()).map(|m| m.1).or(hwm);
            if let Err(e) = relay.check_alive() {
                note = format!("relay exited: {e}");
                break;
            }
            let n = sink.stats().await?.count;
            if n > last {
                since = Instant::now();
            }
            last = n;
        }
        hwm = mem_kib(relay.pid()).map(|m| m.1).or(hwm);
        if note.is_empty() {
            note = relay.loss_metrics().await.join("; ");
        }
        Ok::<_, anyhow::Error>(Outcome {
            relay: name.to_string(),
            hwm_kib: hwm,
            delivered: last,
            sent: count,
            secs: start.elapsed().as_secs_f64(),
            note,
        })
    }
    .await;
    relay.stop().await;
    let _ = src.send("quit").await;
    result
}

/// Runs the scenario for every relay of `o` and writes the Markdown table.
pub async fn main(o: Opts, total_mib: u64, size: usize) -> Result<()> {
    let count = (total_mib << 20) / size as u64;
    let mut rows = Vec::new();
    for name in &o.relays {
        eprintln!("hung subscriber: {name}, {count} x {size} B");
        match one(&o, name, count, size).await {
            Ok(r) => rows.push(r),
            Err(e) => rows.push(Outcome {
                relay: name.clone(),
                hwm_kib: None,
                delivered: 0,
                sent: count,
                secs: 0.0,
                note: format!("failed: {e}"),
            }),
        }
    }
    let mut md = format!(
        "# One hung subscriber of two\n\n`{}`\n\nThe source sends {count} messages of {size} bytes ({} MiB) as fast as it can; each relay delivers them to a healthy HTTP subscriber and to one that reads requests and never answers. Peak RSS is the relay's VmHWM.\n\n| relay | peak RSS | healthy subscriber got | time | loss counters / note |\n|---|---|---|---|---|\n",
        o.command_line,
        (count * size as u64) >> 20,
    );
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} / {} | {:.1} s | {} |",
            r.relay,
            r.hwm_kib
                .map(|k| format!("{} MiB", k / 1024))
                .unwrap_or_else(|| "n/a".into()),
            r.delivered,
            r.sent,
            r.secs,
            if r.note.is_empty() { "-" } else { &r.note },
        );
    }
    print!("{md}");
    if let Some(out) = &o.out {
        std::fs::write(out, md)?;
    }
    Ok(())
}
