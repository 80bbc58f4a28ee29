//! Endpoint flaps: the WebSocket server crashes (listener and connection
//! dropped, no close frame) and comes back on the same port 50 times during
//! a steady stream. The real worker process (from the controller's pod
//! template) never exits, reconnects each time within its backoff bound, and
//! every frame the server flushed while connected reaches every subscriber,
//! exactly once.

mod faults_support;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use faults_support::*;
use rand::RngExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const FLAPS: usize = 50;
/// The Endpoint's `reconnect.maxDelay`.
const MAX_DELAY: Duration = Duration::from_millis(500);
/// Slack on top of the backoff bound for the handshake on a busy machine.
const SLACK: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn the_worker_survives_50_endpoint_crashes_and_delivers_everything_sent_while_connected() -> Result<()>
{
    support::install::installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "faults-flaps").await?;
    let feed = Feed::start().await?;
    let subs = [CountingSubscriber::ok().await?, CountingSubscriber::ok().await?];
    let delivery = "{retry: 5, backoffDelay: 20ms}";
    let yaml = objects(
        &ns,
        &feed.url(),
        "{}",
        &[("a", &subs[0].uri, delivery), ("b", &subs[1].uri, delivery)],
    );
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    let mut worker = start_worker(&ns, "feed").await?;
    feed.wait_connections(1, WAIT).await?;
    wait_routed(&feed, &[&subs[0], &subs[1]]).await?;

    let started = Instant::now();
    let mut sent = BTreeSet::new();
    let mut attempted = 0u64;
    let mut reconnects = Vec::new();
    let mut rng = rand::rng();
    for flap in 0..=FLAPS {
        // A steady stream for a while: one frame every 2 ms.
        let until = Instant::now() + Duration::from_millis(rng.random_range(100..250));
        while Instant::now() < until {
            let seq = attempted;
            attempted += 1;
            if feed
                .send(WsMessage::Text(format!("{{\"seq\":{seq}}}").into()))
                .await
            {
                sent.insert(seq);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if flap == FLAPS {
            break;
        }
        // Crash, stay down for a while, come back on the same port.
        feed.kill().await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
        assert!(
            worker.is_running(),
            "the worker exited at flap {flap}:\n{}",
            worker.logs()
        );
        let back = Instant::now();
        feed.listen().await?;
        let connected = feed.wait_connections(flap + 2, WAIT).await?;
        let took = connected.saturating_duration_since(back);
        assert!(
            took <= MAX_DELAY + SLACK,
            "flap {flap}: reconnected after {took:?}, bound {MAX_DELAY:?} + {SLACK:?}"
        );
        reconnects.push(took);
    }
    let streamed = started.elapsed();
    // At least one frame in each connected period, or the test proves nothing.
    assert!(
        sent.len() > FLAPS,
        "only {} of {attempted} frames went out while connected",
        sent.len()
    );

    // Everything flushed while connected arrives, once, at both subscribers.
    let expected: BTreeSet<String> = sent.iter().map(|s| format!("{{\"seq\":{s}}}")).collect();
    let got = |s: &CountingSubscriber| -> BTreeSet<String> {
        s.bodies()
            .into_iter()
            .filter(|b| b.starts_with("{\"seq\""))
            .collect()
    };
    for (name, sub) in ["a", "b"].iter().zip(&subs) {
        let waited = sub
            .wait_for("all frames delivered", Duration::from_secs(30), |s| {
                got(s).len() >= expected.len()
            })
            .await;
        let received = got(sub);
        let missing: Vec<_> = expected.difference(&received).take(10).collect();
        let extra: Vec<_> = received.difference(&expected).take(10).collect();
        assert!(
            waited.is_ok() && missing.is_empty() && extra.is_empty(),
            "subscriber {name}: {} sent while connected, {} delivered; missing {missing:?}, unexpected {extra:?}",
            expected.len(),
            received.len()
        );
        assert_eq!(sub.duplicates(), 0, "subscriber {name} got duplicates");
    }
    assert!(worker.is_running(), "the worker exited:\n{}", worker.logs());
    let m = metrics(pod_addr(&worker)).await?;
    let counted = metric_sum(&m, "wsbridge_endpoint_reconnects_total", &[]);
    assert_eq!(counted, FLAPS as f64, "reconnects counted by the worker");
    let dropped = metric_sum(&m, "wsbridge_messages_dropped_total", &[]);
    assert_eq!(dropped, 0.0, "the worker dropped messages");

    let (p50, p99, max) = percentiles(&mut reconnects);
    eprintln!(
        "FIGURES endpoint flaps: {FLAPS} crashes in {:.1}s; frames attempted {attempted}, flushed while connected {}, delivered per subscriber {} / {}, duplicates 0; reconnect after restart p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms (bound {} ms = maxDelay + slack); worker reconnects counted {counted}; worker pid {} alive",
        streamed.as_secs_f64(),
        expected.len(),
        got(&subs[0]).len(),
        got(&subs[1]).len(),
        (MAX_DELAY + SLACK).as_millis(),
        worker.child.id(),
    );
    Ok(())
}

/// What the worker's `POST /v1/send` answered 202 for sits in the
/// connection's outbound queue: closing the connection (SIGTERM, a changed
/// Bridge) sends it first, before the close frame.
#[tokio::test]
async fn closing_the_connection_sends_every_message_already_accepted_first() -> Result<()> {
    use std::sync::Arc;
    use wsbridge_dataplane::endpoint::{EndpointConfig, EndpointHandle, EndpointOptions};
    use wsbridge_dataplane::{DataplaneMetrics, Message, Origin, Payload};

    let feed = Feed::start().await?;
    let metrics = Arc::new(DataplaneMetrics::unregistered());
    let (_config, config_rx) = tokio::sync::watch::channel(EndpointConfig::new(feed.url()));
    let (inbound, _inbound_rx) = tokio::sync::mpsc::channel(16);
    let handle = EndpointHandle::spawn(EndpointOptions::new("default/feed"), config_rx, inbound, metrics);
    assert!(handle.wait_connected(Duration::from_secs(10)).await);
    let mut accepted = 0;
    for n in 0..500 {
        let payload = Payload::text(format!("out {n}"));
        if handle
            .try_send(Arc::new(Message::new(payload, Origin::Published, "test")))
            .is_ok()
        {
            accepted += 1;
        }
    }
    assert!(accepted > 0, "no send was accepted");
    handle.shutdown().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while feed.frames.lock().unwrap().len() < accepted && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let written = feed.frames.lock().unwrap().len();
    eprintln!("FIGURES endpoint close: {accepted} sends accepted, {written} written before the close frame");
    assert_eq!(
        written, accepted,
        "accepted sends lost when the connection closed"
    );
    Ok(())
}
