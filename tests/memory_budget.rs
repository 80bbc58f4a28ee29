//! Memory stays within its budget when a subscriber hangs: queues are
//! bounded in bytes, the process's budget counts each message once however
//! many queues share it, and what gives way is counted by reason while the
//! healthy subscribers get every message.

mod faults_support;
mod standalone_support;
mod support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use faults_support::{Answer, CountingSubscriber, Feed, metric_sum, proc_status_kib};
use standalone_support::{Standalone, TempDir, http_get};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsbridge_core::ChannelKey;
use wsbridge_dataplane::budget::MemoryBudget;
use wsbridge_dataplane::delivery::{DeliveryEngine, DeliveryPolicy, EngineConfig, SubscriberSpec};
use wsbridge_dataplane::{DataplaneMetrics, Message, Origin, Payload};

const WAIT: Duration = Duration::from_secs(120);

/// Frames the endpoint sends, and their size (under the default 1 MiB limit).
const MESSAGES: usize = 1000;
const MESSAGE_BYTES: usize = 1000 * 1024;
/// The memory limit given to the process: queued messages get half.
const MEMORY_LIMIT_MIB: u64 = 128;
/// Frames sent before waiting for the healthy subscribers to catch up
/// (their own queues hold 16 MiB by default).
const CHUNK: usize = 8;

fn frame(seq: usize) -> String {
    let head = format!("flood {seq} ");
    format!("{head}{}", "x".repeat(MESSAGE_BYTES - head.len()))
}

fn config(endpoint: &str, subscribers: &[(&str, &str, &str)]) -> String {
    let mut yaml = format!(
        r#"apiVersion: wsbridge.io/v1alpha1
kind: Endpoint
metadata: {{name: feed}}
spec: {{url: "{endpoint}"}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: ticker}}
spec: {{}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {{name: feed}}
spec: {{channel: ticker, endpoint: feed}}
"#
    );
    for (name, uri, delivery) in subscribers {
        yaml.push_str(&format!(
            r#"---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {{name: {name}}}
spec:
  channel: ticker
  subscriber: {{uri: "{uri}"}}
  delivery: {delivery}
"#
        ));
    }
    yaml
}

async fn metrics(standalone: &Standalone) -> Result<String> {
    let (code, body) = http_get(&standalone.url("/metrics"))
        .await
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(code == 200, "/metrics answered {code}");
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Waits until the standalone process's metrics satisfy `pred`.
async fn wait_metrics(standalone: &Standalone, what: &str, pred: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = metrics(standalone).await?;
        if pred(&m) {
            return Ok(m);
        }
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {WAIT:?}\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn dropped(m: &str, subscriber: &str, reason: &str) -> f64 {
    metric_sum(
        m,
        "wsbridge_messages_dropped_total",
        &[
            &format!("subscriber=\"default/{subscriber}\""),
            &format!("reason=\"{reason}\""),
        ],
    )
}

#[tokio::test]
async fn a_hung_subscriber_keeps_the_process_under_its_memory_limit_and_the_others_get_everything()
-> Result<()> {
    let feed = Feed::start().await?;
    let (a, b) = (CountingSubscriber::ok().await?, CountingSubscriber::ok().await?);
    let hung = CountingSubscriber::start(|_| Answer::Hang).await?;
    let greedy = CountingSubscriber::start(|_| Answer::Hang).await?;
    let stuck = "{timeout: 10m, retry: 0}";
    let dir = TempDir::new("memory-budget");
    let path = dir.write(
        "config.yaml",
        &config(
            &feed.url(),
            &[
                ("a", &a.uri, "{}"),
                ("b", &b.uri, "{}"),
                // Its own queue bound (16 MiB by default) bites first.
                ("hung", &hung.uri, stuck),
                // A queue allowed more than the process has: the process's
                // budget bites, and its oldest messages give way.
                (
                    "greedy",
                    &greedy.uri,
                    "{timeout: 10m, retry: 0, queueCapacity: 100000, queueCapacityBytes: 4294967296, overflowPolicy: dropOldest}",
                ),
            ],
        ),
    );
    let limit = format!("{MEMORY_LIMIT_MIB}Mi");
    let standalone = Standalone::start_with(&[&path], &dir.0, &["--memory-limit", &limit]).await;
    let pid = standalone.child.id();
    feed.wait_connections(1, WAIT).await?;
    faults_support::wait_routed(&feed, &[&a, &b]).await?;
    let flood = |s: &CountingSubscriber| s.count_prefix("flood ");

    for seq in 0..MESSAGES {
        if seq > 0 && seq % CHUNK == 0 {
            for sub in [&a, &b] {
                sub.wait_for("healthy subscriber catches up", WAIT, |s| flood(s) >= seq)
                    .await?;
            }
        }
        anyhow::ensure!(
            feed.send(WsMessage::Text(frame(seq).into())).await,
            "the connection dropped"
        );
    }
    for sub in [&a, &b] {
        sub.wait_for("every message delivered", WAIT, |s| flood(s) >= MESSAGES)
            .await?;
        assert_eq!(flood(sub), MESSAGES);
        assert_eq!(sub.duplicates(), 0);
    }
    // Every message is accounted for at both hung subscribers: one in
    // flight (never answered), the rest queued or given way.
    let m = wait_metrics(&standalone, "every message accounted for", |m| {
        let given_way = |s: &str| {
            dropped(m, s, "queue_bytes") + dropped(m, s, "queue_full") + dropped(m, s, "memory_budget")
        };
        let queued = |s: &str| {
            metric_sum(
                m,
                "wsbridge_subscriber_queued_bytes",
                &[&format!("subscriber=\"default/{s}\"")],
            )
        };
        let per_message = (MESSAGE_BYTES + 600) as f64;
        ["hung", "greedy"].iter().all(|s| {
            let held = (queued(s) / per_message).round();
            given_way(s) + held + 1.0 >= MESSAGES as f64
        })
    })
    .await?;
    let hwm_mib = proc_status_kib(pid, "VmHWM").unwrap_or(0) / 1024;
    let budget = metric_sum(&m, "wsbridge_memory_budget_bytes", &[]);
    let used = metric_sum(&m, "wsbridge_memory_budget_used_bytes", &[]);
    let queue_bytes = dropped(&m, "hung", "queue_bytes");
    let memory_budget = dropped(&m, "greedy", "memory_budget");
    eprintln!(
        "FIGURES memory budget: {MESSAGES} x {} KB with two hung subscribers; VmHWM {hwm_mib} MiB (limit {MEMORY_LIMIT_MIB} MiB); budget {} MiB, {} MiB in use at the end; hung: {queue_bytes} queue_bytes drops; greedy: {memory_budget} memory_budget drops",
        MESSAGE_BYTES / 1024,
        budget as u64 >> 20,
        used as u64 >> 20,
    );
    assert_eq!(budget, (MEMORY_LIMIT_MIB << 19) as f64, "half the limit");
    assert!(used <= budget, "{used} bytes in use over a budget of {budget}");
    assert!(
        queue_bytes >= (MESSAGES - 17) as f64,
        "the hung subscriber's 16 MiB queue held more than 16 messages: only {queue_bytes} dropped"
    );
    assert!(memory_budget > 0.0, "the greedy queue never gave way");
    for healthy in ["a", "b"] {
        let m = metric_sum(
            &m,
            "wsbridge_messages_dropped_total",
            &[&format!("subscriber=\"default/{healthy}\"")],
        );
        assert_eq!(m, 0.0, "{healthy} lost messages");
    }
    assert!(
        hwm_mib > 0 && hwm_mib < MEMORY_LIMIT_MIB,
        "VmHWM {hwm_mib} MiB over the {MEMORY_LIMIT_MIB} MiB limit"
    );
    Ok(())
}

#[tokio::test]
async fn a_message_shared_by_a_thousand_subscribers_is_counted_once() -> Result<()> {
    const SUBSCRIBERS: usize = 1000;
    const SENT: usize = 10;
    const BYTES: usize = 64 * 1024;
    let metrics = Arc::new(DataplaneMetrics::unregistered());
    // Room for every message once; a thousandth of what a per-subscriber
    // count would need.
    let budget = MemoryBudget::new(1 << 20);
    let engine = DeliveryEngine::new(
        EngineConfig {
            budget: budget.clone(),
            ..EngineConfig::default()
        },
        metrics.clone(),
    );
    let healthy = CountingSubscriber::ok().await?;
    let hung = CountingSubscriber::start(|_| Answer::Hang).await?;
    let policy = DeliveryPolicy {
        timeout: Duration::from_secs(600),
        retry: 0,
        ..DeliveryPolicy::default()
    };
    let spec = |i: usize, uri: &str| SubscriberSpec {
        id: format!("default/sub-{i}"),
        uri: uri.parse().unwrap(),
        policy: policy.clone(),
        signing: None,
    };
    let mut specs: Vec<SubscriberSpec> = (1..SUBSCRIBERS).map(|i| spec(i, &healthy.uri)).collect();
    specs.push(spec(0, &hung.uri));
    let channel = ChannelKey::new("default", "ticker");
    engine.set_subscribers(&channel, specs);

    let mut held = 0;
    for seq in 0..SENT {
        let body = format!("shared {seq} {}", "x".repeat(BYTES));
        let msg = Arc::new(Message::new(
            Payload::text(body),
            Origin::Endpoint,
            "/bridges/default/feed",
        ));
        held += msg.held_bytes();
        let report = engine.dispatch(&channel, msg);
        assert_eq!(report.overflowed, 0, "message {seq} did not fit");
    }
    let all = (SUBSCRIBERS - 1) * SENT;
    healthy
        .wait_for("every healthy subscriber gets every message", WAIT, |s| {
            s.requests.load(std::sync::atomic::Ordering::SeqCst) >= all
        })
        .await?;
    assert_eq!(healthy.requests.load(std::sync::atomic::Ordering::SeqCst), all);
    assert_eq!(engine.stats().dropped, 0);
    assert_eq!(metrics.dropped_total("memory_budget"), 0);
    // The hung subscriber still holds all of them, each charged once.
    assert_eq!(budget.used(), held);
    assert!(held < budget.limit());
    Ok(())
}

#[tokio::test]
async fn a_publish_the_budget_cannot_hold_gets_503_with_a_reason() -> Result<()> {
    // Four unanswered requests of 900 KB fill a 4 MiB budget (half of 8Mi):
    // in flight, nothing can give way, so the next publish is refused.
    let hung = CountingSubscriber::start(|_| Answer::Hang).await?;
    let dir = TempDir::new("memory-budget-publish");
    let yaml = format!(
        r#"apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: ticker}}
spec: {{allowAnonymousPublish: true}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {{name: hung}}
spec:
  channel: ticker
  subscriber: {{uri: "{}"}}
  delivery: {{timeout: 10m, retry: 0, ordering: unordered, maxInFlight: 64}}
"#,
        hung.uri
    );
    let path = dir.write("config.yaml", &yaml);
    let standalone = Standalone::start_with(&[&path], &dir.0, &["--memory-limit", "8Mi"]).await;
    let body = "x".repeat(900 * 1024);
    let mut accepted = 0;
    let refusal = loop {
        let (status, json) = standalone.publish("default/ticker", body.clone()).await;
        match status {
            202 => accepted += 1,
            503 => break json,
            other => panic!("publish answered {other}: {json}"),
        }
        assert!(accepted <= 5, "a 4 MiB budget took {accepted} messages of 900 KB");
    };
    assert_eq!(refusal["reason"], "MemoryBudgetExhausted", "{refusal}");
    assert!(accepted >= 3, "only {accepted} accepted before the refusal");
    Ok(())
}
