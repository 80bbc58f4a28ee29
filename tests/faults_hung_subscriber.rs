//! A hung subscriber (accepts the connection, never answers) does not slow
//! the others down, and the worker's memory stays bounded: its queue
//! capacity is honoured and the overflow is counted. Prints both throughput
//! figures and the worker's VmHWM; asserts only loose bounds (the machine is
//! shared and noisy).

mod faults_support;
mod support;

use std::time::{Duration, Instant};

use anyhow::Result;
use faults_support::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Frames per throughput run.
const BURST: usize = 2000;
/// Bytes per frame in the throughput runs.
const SMALL: usize = 1024;
/// Frames and bytes per frame of the memory run (~160 MiB through the worker).
const FLOOD: usize = 10_000;
const LARGE: usize = 16 * 1024;
/// The hung subscriber's queue.
const QUEUE: usize = 256;
/// VmHWM the worker must stay under.
const MAX_HWM_MIB: u64 = 200;

fn frame(tag: &str, seq: usize, size: usize) -> String {
    let head = format!("{tag} {seq} ");
    format!("{head}{}", "x".repeat(size.saturating_sub(head.len())))
}

/// Sends `n` frames tagged `tag`, `chunk` at a time (waiting for the
/// subscribers to catch up in between), then waits until both subscribers
/// have them all; returns messages per second (per subscriber).
async fn run(
    feed: &Feed,
    subs: &[&CountingSubscriber],
    tag: &str,
    n: usize,
    size: usize,
    chunk: usize,
) -> Result<f64> {
    let tag = &format!("{tag} ");
    let count = |s: &CountingSubscriber| s.count_prefix(tag);
    let started = Instant::now();
    for seq in 0..n {
        if seq > 0 && seq % chunk == 0 {
            for sub in subs {
                sub.wait_for(tag, Duration::from_secs(40), |s| count(s) >= seq)
                    .await?;
            }
        }
        anyhow::ensure!(
            feed.send(WsMessage::Text(frame(tag, seq, size).into())).await,
            "the connection dropped"
        );
    }
    for sub in subs {
        sub.wait_for(tag, Duration::from_secs(40), |s| count(s) >= n)
            .await?;
        assert_eq!(count(sub), n, "{tag}");
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

#[tokio::test]
async fn a_hung_subscriber_neither_slows_the_others_nor_grows_the_workers_memory() -> Result<()> {
    support::install::installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "faults-hung").await?;
    let feed = Feed::start().await?;
    let (a, b) = (CountingSubscriber::ok().await?, CountingSubscriber::ok().await?);
    let hung = CountingSubscriber::start(|_| Answer::Hang).await?;
    // The healthy subscribers' queues take a whole burst, in messages and
    // in bytes (a flood chunk is 1,000 x 16 KiB, the default byte bound
    // 16 MiB): the endpoint sends faster than they answer, and a full queue
    // drops (by design).
    let roomy = "{queueCapacity: 4096, queueCapacityBytes: 67108864}";
    let yaml = objects(
        &ns,
        &feed.url(),
        "{}",
        &[("a", &a.uri, roomy), ("b", &b.uri, roomy)],
    );
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    let worker = start_worker(&ns, "feed").await?;
    let pid = worker.child.id();
    feed.wait_connections(1, WAIT).await?;
    wait_routed(&feed, &[&a, &b]).await?;

    // Without the hung subscriber, then with it.
    let warm = run(&feed, &[&a, &b], "warmup", 200, SMALL, BURST).await?;
    let baseline = run(&feed, &[&a, &b], "baseline", BURST, SMALL, BURST).await?;
    let hung_delivery = format!("{{timeout: 60s, retry: 0, queueCapacity: {QUEUE}}}");
    support::apply_yaml(
        &client,
        &subscription(&ns, "hung", &hung.uri, &hung_delivery),
        Some(&ns),
    )
    .await?;
    let deadline = Instant::now() + WAIT;
    while hung.requests.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the hung subscriber never got a request"
        );
        feed.send(WsMessage::Text("probe hung".into())).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let with_hung = run(&feed, &[&a, &b], "hung", BURST, SMALL, BURST).await?;

    // Memory: ~160 MiB flows through while one queue is stuck.
    let rss_before = proc_status_kib(pid, "VmRSS").unwrap_or(0);
    let flood = run(&feed, &[&a, &b], "flood", FLOOD, LARGE, 1000).await?;
    let hwm = proc_status_kib(pid, "VmHWM").unwrap_or(0);
    let rss_after = proc_status_kib(pid, "VmRSS").unwrap_or(0);

    let label = format!("subscriber=\"{ns}/hung\"");
    let hung_offered = BURST + FLOOD; // at least: probes come on top
    let queue_full = [label.as_str(), "reason=\"queue_full\""];
    // The worker counts a drop a moment after the frame went by.
    let m = support::eventually(WAIT, "the queue_full count to catch up", || {
        let addr = pod_addr(&worker);
        let queue_full = &queue_full;
        async move {
            let m = metrics(addr).await?;
            let overflow = metric_sum(&m, "wsbridge_messages_dropped_total", queue_full);
            Ok((overflow >= (hung_offered - QUEUE - 1) as f64).then_some(m))
        }
    })
    .await
    .unwrap_or_default();
    let overflow = metric_sum(&m, "wsbridge_messages_dropped_total", &queue_full);
    assert!(
        overflow >= (hung_offered - QUEUE - 1) as f64,
        "the hung subscriber's queue held more than {QUEUE}: only {overflow} of {hung_offered}+ counted as queue_full"
    );
    let others = metric_sum(&m, "wsbridge_messages_dropped_total", &[]) - overflow;
    assert_eq!(others, 0.0, "messages dropped for the healthy subscribers");
    let ratio = with_hung / baseline;
    eprintln!(
        "FIGURES hung subscriber: throughput per healthy subscriber ({BURST} x {SMALL} B) without the hung one {baseline:.0} msg/s, with it {with_hung:.0} msg/s ({:.0}% of baseline; warm-up {warm:.0} msg/s); flood {FLOOD} x {} KiB at {flood:.0} msg/s; worker VmRSS {} MiB before the flood, {} MiB after, VmHWM {} MiB (bound {MAX_HWM_MIB} MiB); hung queue capacity {QUEUE}, queue_full drops {overflow} (of {hung_offered}+ offered)",
        ratio * 100.0,
        LARGE / 1024,
        rss_before / 1024,
        rss_after / 1024,
        hwm / 1024,
    );
    assert!(
        ratio >= 0.5,
        "the hung subscriber slowed the others to {:.0}%",
        ratio * 100.0
    );
    assert!(hwm > 0 && hwm / 1024 < MAX_HWM_MIB, "VmHWM {} MiB", hwm / 1024);
    Ok(())
}
