//! Failing subscribers: a subscriber answers 503 to 30% of requests (at
//! random). With enough retries it gets every message exactly once (checked
//! on `ce-id`); with retries exhausted (`retry: 0` and `retry: 1`) every
//! message is either delivered or dead-lettered, exactly: the subscriber's,
//! the dead-letter sink's and the worker's `/metrics` counts add up to what
//! the endpoint sent. The real worker process delivers.

mod faults_support;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use faults_support::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const MESSAGES: usize = 300;
const FAILURE_RATE: f64 = 0.3;

fn flaky() -> impl Fn(usize) -> Answer + Send + Sync + 'static {
    |_| {
        if rand::random::<f64>() < FAILURE_RATE {
            Answer::Status(503)
        } else {
            Answer::Status(200)
        }
    }
}

fn seq_bodies(bodies: Vec<String>) -> BTreeSet<String> {
    bodies.into_iter().filter(|b| b.starts_with("{\"seq\"")).collect()
}

/// Sends `MESSAGES` frames as fast as the connection takes them.
async fn stream(feed: &Feed) -> Result<BTreeSet<String>> {
    let mut sent = BTreeSet::new();
    for seq in 0..MESSAGES {
        let body = format!("{{\"seq\":{seq}}}");
        anyhow::ensure!(
            feed.send(WsMessage::Text(body.clone().into())).await,
            "the connection dropped"
        );
        sent.insert(body);
    }
    Ok(sent)
}

#[tokio::test]
async fn with_enough_retries_a_subscriber_failing_30_percent_gets_every_message_exactly_once() -> Result<()> {
    support::install::installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "faults-retry").await?;
    let feed = Feed::start().await?;
    let flaky_sub = CountingSubscriber::start(flaky()).await?;
    let steady = CountingSubscriber::ok().await?;
    let yaml = objects(
        &ns,
        &feed.url(),
        "{}",
        &[
            (
                "flaky",
                &flaky_sub.uri,
                "{retry: 12, backoffPolicy: linear, backoffDelay: 5ms}",
            ),
            ("steady", &steady.uri, "{}"),
        ],
    );
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    let worker = start_worker(&ns, "feed").await?;
    feed.wait_connections(1, WAIT).await?;
    wait_routed(&feed, &[&flaky_sub, &steady]).await?;

    let started = std::time::Instant::now();
    let sent = stream(&feed).await?;
    for (name, sub) in [("flaky", &flaky_sub), ("steady", &steady)] {
        sub.wait_for(name, Duration::from_secs(45), |s| {
            seq_bodies(s.bodies()).len() >= MESSAGES
        })
        .await?;
        assert_eq!(seq_bodies(sub.bodies()), sent, "{name}");
        assert_eq!(sub.duplicates(), 0, "{name} got a message twice");
    }
    let took = started.elapsed();
    let label = format!("subscriber=\"{ns}/flaky\"");
    // The worker counts an answer a moment after the peer recorded it.
    let m = support::eventually(WAIT, "the delivered metric to catch up", || {
        let (addr, label, expected) = (pod_addr(&worker), &label, flaky_sub.delivered() as f64);
        async move {
            let m = metrics(addr).await?;
            Ok((metric_sum(&m, "wsbridge_messages_delivered_total", &[label]) >= expected).then_some(m))
        }
    })
    .await?;
    let delivered = metric_sum(&m, "wsbridge_messages_delivered_total", &[&label]);
    let retries = metric_sum(&m, "wsbridge_delivery_retries_total", &[&label]);
    let requests = flaky_sub.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(delivered, flaky_sub.delivered() as f64, "delivered metric");
    assert_eq!(
        retries as usize,
        requests - flaky_sub.delivered(),
        "every 503 was retried once"
    );
    assert_eq!(metric_sum(&m, "wsbridge_messages_dropped_total", &[]), 0.0);
    assert_eq!(metric_sum(&m, "wsbridge_messages_dead_lettered_total", &[]), 0.0);
    eprintln!(
        "FIGURES failing subscriber, retry 12: {MESSAGES} sent; flaky got {} distinct, 0 duplicates, after {requests} requests ({} answered 503, {:.1}%), {retries} retries counted; steady got {}; all delivered in {:.2}s",
        seq_bodies(flaky_sub.bodies()).len(),
        requests - flaky_sub.delivered(),
        100.0 * (requests - flaky_sub.delivered()) as f64 / requests as f64,
        seq_bodies(steady.bodies()).len(),
        took.as_secs_f64(),
    );
    Ok(())
}

#[tokio::test]
async fn with_retries_exhausted_delivered_plus_dead_lettered_equals_sent_exactly() -> Result<()> {
    support::install::installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "faults-dlq").await?;
    let feed = Feed::start().await?;
    let sink = CountingSubscriber::ok().await?;
    let r0 = CountingSubscriber::start(flaky()).await?;
    let r1 = CountingSubscriber::start(flaky()).await?;
    let d0 = format!("{{retry: 0, deadLetterSink: {{uri: '{}'}}}}", sink.uri);
    let d1 = format!(
        "{{retry: 1, backoffDelay: 5ms, deadLetterSink: {{uri: '{}'}}}}",
        sink.uri
    );
    let yaml = objects(
        &ns,
        &feed.url(),
        "{}",
        &[("r0", &r0.uri, &d0), ("r1", &r1.uri, &d1)],
    );
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    let worker = start_worker(&ns, "feed").await?;
    feed.wait_connections(1, WAIT).await?;
    wait_routed(&feed, &[&r0, &r1]).await?;

    let sent = stream(&feed).await?;
    let mut figures = Vec::new();
    for (name, sub) in [("r0", &r0), ("r1", &r1)] {
        let id = format!("{ns}/{name}");
        let accounted = |_: &CountingSubscriber| {
            seq_bodies(sub.bodies()).len() + seq_bodies(sink.bodies_from(&id)).len() >= MESSAGES
        };
        sink.wait_for(name, Duration::from_secs(45), accounted).await?;
        let delivered = seq_bodies(sub.bodies());
        let dead = seq_bodies(sink.bodies_from(&id));
        assert!(
            delivered.is_disjoint(&dead),
            "{name}: a message was both delivered and dead-lettered"
        );
        let all: BTreeSet<String> = delivered.union(&dead).cloned().collect();
        assert_eq!(all, sent, "{name}: delivered + dead-lettered != sent");
        assert_eq!(sub.duplicates(), 0, "{name} got a message twice");
        assert!(!dead.is_empty(), "{name}: 30% failures but nothing dead-lettered");
        figures.push(format!(
            "{name}: {} delivered + {} dead-lettered = {}",
            delivered.len(),
            dead.len(),
            delivered.len() + dead.len()
        ));
    }
    assert_eq!(sink.duplicates(), 0, "the sink got a message twice");

    // The worker's own counts agree with what the peers saw (probes included);
    // it counts an answer a moment after the peer recorded it.
    let settled = support::eventually(WAIT, "the worker's counts to catch up", || {
        let addr = pod_addr(&worker);
        let expected = [("r0", r0.delivered()), ("r1", r1.delivered())]
            .map(|(name, delivered)| (format!("{ns}/{name}"), delivered as f64));
        let sink = &sink;
        async move {
            let m = metrics(addr).await?;
            let caught_up = expected.iter().all(|(id, delivered)| {
                let label = format!("subscriber=\"{id}\"");
                metric_sum(&m, "wsbridge_messages_delivered_total", &[&label]) >= *delivered
                    && metric_sum(&m, "wsbridge_messages_dead_lettered_total", &[&label])
                        >= sink.bodies_from(id).len() as f64
            });
            Ok(caught_up.then_some(m))
        }
    });
    let m = settled.await?;
    for (name, sub) in [("r0", &r0), ("r1", &r1)] {
        let id = format!("{ns}/{name}");
        let label = format!("subscriber=\"{id}\"");
        let delivered = metric_sum(&m, "wsbridge_messages_delivered_total", &[&label]);
        let dead = metric_sum(&m, "wsbridge_messages_dead_lettered_total", &[&label]);
        let dropped = metric_sum(&m, "wsbridge_messages_dropped_total", &[&label]);
        assert_eq!(delivered, sub.delivered() as f64, "{name}: delivered metric");
        assert_eq!(
            dead,
            sink.bodies_from(&id).len() as f64,
            "{name}: dead-lettered metric"
        );
        assert_eq!(dropped, 0.0, "{name}: dropped metric");
        let exhausted = metric_sum(
            &m,
            "wsbridge_messages_dead_lettered_total",
            &[&label, "reason=\"retries_exhausted\""],
        );
        assert_eq!(exhausted, dead, "{name}: dead-letter reason");
        figures.push(format!(
            "{name} /metrics: delivered {delivered}, dead_lettered {dead}, dropped {dropped}"
        ));
    }
    eprintln!(
        "FIGURES failing subscribers, retries exhausted: {MESSAGES} sent; {}",
        figures.join("; ")
    );
    Ok(())
}
