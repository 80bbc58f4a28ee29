//! Fault soak (not a test): the real worker process, from the controller's
//! pod template, bridges an endpoint that crashes every few seconds to a
//! healthy subscriber, one that fails 30% of requests (retry 1, dead-letter
//! sink) and one that never answers, for a bounded time. Prints what was
//! sent, delivered, dead-lettered and dropped, reconnect times, and the
//! worker's memory over time; asserts nothing.
//!
//! Does nothing unless passed `--bench` (so `cargo test --all-targets` stays
//! fast): `cargo bench --bench soak_faults`, or without a release build
//! `cargo test --bench soak_faults -- --bench`. `WSBRIDGE_SOAK_SECONDS`
//! sets the duration (default 120).

#[path = "../tests/faults_support/mod.rs"]
mod faults_support;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use faults_support::*;
use rand::RngExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("soak_faults: pass --bench to run it");
        return Ok(());
    }
    tokio::runtime::Runtime::new()?.block_on(soak())
}

async fn soak() -> Result<()> {
    let seconds: u64 = std::env::var("WSBRIDGE_SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    support::install::installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "soak").await?;
    let feed = Feed::start().await?;
    let healthy = CountingSubscriber::ok().await?;
    let sink = CountingSubscriber::ok().await?;
    let flaky = CountingSubscriber::start(|_| {
        if rand::random::<f64>() < 0.3 {
            Answer::Status(503)
        } else {
            Answer::Status(200)
        }
    })
    .await?;
    let hung = CountingSubscriber::start(|_| Answer::Hang).await?;
    let flaky_delivery = format!(
        "{{retry: 1, backoffDelay: 5ms, queueCapacity: 4096, deadLetterSink: {{uri: '{}'}}}}",
        sink.uri
    );
    let yaml = objects(
        &ns,
        &feed.url(),
        "{}",
        &[
            ("healthy", &healthy.uri, "{queueCapacity: 4096}"),
            ("flaky", &flaky.uri, &flaky_delivery),
            ("hung", &hung.uri, "{timeout: 60s, retry: 0, queueCapacity: 256}"),
        ],
    );
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    let worker = start_worker(&ns, "feed").await?;
    let pid = worker.child.id();
    feed.wait_connections(1, WAIT).await?;
    wait_routed(&feed, &[&healthy, &flaky]).await?;
    println!("soak_faults: {seconds}s, worker pid {pid}");

    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut rng = rand::rng();
    let mut sent = BTreeSet::new();
    let mut seq = 0u64;
    let mut flaps = 0;
    let mut reconnects = Vec::new();
    let mut rss = Vec::new();
    let mut next_sample = started;
    while Instant::now() < end {
        // ~500 frames/s of 1 KiB for 1-5 s.
        let until = Instant::now() + Duration::from_millis(rng.random_range(1000..5000));
        while Instant::now() < until {
            let body = format!("{{\"seq\":{seq},\"pad\":\"{}\"}}", "x".repeat(1000));
            seq += 1;
            if feed.send(WsMessage::Text(body.into())).await {
                sent.insert(seq - 1);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            if Instant::now() >= next_sample {
                rss.push((
                    started.elapsed().as_secs(),
                    proc_status_kib(pid, "VmRSS").unwrap_or(0) / 1024,
                ));
                next_sample += Duration::from_secs(10);
            }
        }
        feed.kill().await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..500))).await;
        let back = Instant::now();
        feed.listen().await?;
        flaps += 1;
        let at = feed.wait_connections(flaps + 1, WAIT).await?;
        reconnects.push(at.saturating_duration_since(back));
    }
    let streamed = started.elapsed();

    // Let deliveries and dead letters settle, then count.
    let seq_ids = |bodies: Vec<String>| -> BTreeSet<u64> {
        bodies
            .iter()
            .filter_map(|b| b.strip_prefix("{\"seq\":")?.split(',').next()?.parse().ok())
            .collect()
    };
    let flaky_id = format!("{ns}/flaky");
    let settle = Instant::now() + Duration::from_secs(60);
    while Instant::now() < settle {
        let done = seq_ids(healthy.bodies()).len() >= sent.len()
            && seq_ids(flaky.bodies()).len() + seq_ids(sink.bodies_from(&flaky_id)).len() >= sent.len();
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let healthy_got = seq_ids(healthy.bodies());
    let flaky_got = seq_ids(flaky.bodies());
    let flaky_dead = seq_ids(sink.bodies_from(&flaky_id));
    let flaky_union: BTreeSet<u64> = flaky_got.union(&flaky_dead).copied().collect();
    let m = metrics(pod_addr(&worker)).await?;
    let hung_label = format!("subscriber=\"{ns}/hung\"");
    let (p50, p99, max) = percentiles(&mut reconnects);
    println!(
        "soak_faults: {:.0}s, {flaps} endpoint crashes, worker {}",
        streamed.as_secs_f64(),
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            "alive (same pid)"
        } else {
            "EXITED"
        }
    );
    println!(
        "  frames: attempted {seq}, flushed while connected {}",
        sent.len()
    );
    println!(
        "  healthy: delivered {} (missing {}, duplicates {})",
        healthy_got.len(),
        sent.difference(&healthy_got).count(),
        healthy.duplicates()
    );
    println!(
        "  flaky (30% 503, retry 1): delivered {} + dead-lettered {} = {} (missing {}, both {})",
        flaky_got.len(),
        flaky_dead.len(),
        flaky_got.len() + flaky_dead.len(),
        sent.difference(&flaky_union).count(),
        flaky_got.intersection(&flaky_dead).count()
    );
    println!(
        "  hung (queue 256): queue_full drops {}",
        metric_sum(
            &m,
            "wsbridge_messages_dropped_total",
            &[&hung_label, "reason=\"queue_full\""]
        )
    );
    println!(
        "  reconnect after restart: p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms; counted by the worker {}",
        metric_sum(&m, "wsbridge_endpoint_reconnects_total", &[])
    );
    println!(
        "  worker VmRSS MiB by second: {rss:?}; VmHWM {} MiB",
        proc_status_kib(pid, "VmHWM").unwrap_or(0) / 1024
    );
    Ok(())
}
