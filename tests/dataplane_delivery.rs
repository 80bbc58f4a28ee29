//! Delivery engine scenarios against real HTTP subscribers on loopback.

mod support;

use std::sync::Arc;
use std::time::Duration;
use support::wait_until;

use support::peers::{Reply, Subscriber};
use tokio::time::Instant;
use wsbridge_core::ChannelKey;
use wsbridge_core::SecretString;
use wsbridge_dataplane::delivery::{
    BackoffPolicy, DeliveryEngine, DeliveryPolicy, EngineConfig, Ordering, SubscriberSpec,
};
use wsbridge_dataplane::{DataplaneMetrics, Message, Origin, Payload};

fn fast_policy() -> DeliveryPolicy {
    DeliveryPolicy {
        retry: 3,
        backoff_policy: BackoffPolicy::Linear,
        backoff_delay: Duration::from_millis(20),
        timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

fn spec(id: &str, uri: &http::Uri, policy: DeliveryPolicy) -> SubscriberSpec {
    SubscriberSpec {
        id: id.to_string(),
        uri: uri.clone(),
        policy,
        signing: None,
    }
}

fn engine() -> (DeliveryEngine, Arc<DataplaneMetrics>) {
    let metrics = Arc::new(DataplaneMetrics::unregistered());
    (
        DeliveryEngine::new(EngineConfig::default(), metrics.clone()),
        metrics,
    )
}

fn channel() -> ChannelKey {
    ChannelKey::new("default", "ticker")
}

fn text(s: &str) -> Arc<Message> {
    Arc::new(Message::new(
        Payload::text(s),
        Origin::Endpoint,
        "/bridges/default/feed",
    ))
}

#[tokio::test]
async fn text_json_and_binary_are_broadcast_to_three_subscribers_with_cloudevents_headers() {
    let (engine, metrics) = engine();
    let mut subs = vec![
        Subscriber::ok().await,
        Subscriber::ok().await,
        Subscriber::ok().await,
    ];
    let specs = subs
        .iter()
        .enumerate()
        .map(|(i, s)| spec(&format!("default/s{i}"), &s.uri, fast_policy()))
        .collect();
    engine.set_subscribers(&channel(), specs);

    let messages = [
        Arc::new(Message::new(
            Payload::text("hello world"),
            Origin::Endpoint,
            "/bridges/default/feed",
        )),
        Arc::new(Message::new(
            Payload::text(r#"{"price":42.5}"#),
            Origin::Endpoint,
            "/bridges/default/feed",
        )),
        Arc::new(Message::new(
            Payload::binary(vec![0u8, 159, 146, 150]),
            Origin::Published,
            "/channels/default/ticker",
        )),
    ];
    for m in &messages {
        let report = engine.dispatch(&channel(), m.clone());
        assert_eq!(report.subscribers, 3);
        assert_eq!(report.overflowed, 0);
    }
    let expected = [
        (
            "text/plain; charset=utf-8",
            &b"hello world"[..],
            "io.wsbridge.endpoint.message",
        ),
        (
            "application/json",
            &br#"{"price":42.5}"#[..],
            "io.wsbridge.endpoint.message",
        ),
        (
            "application/octet-stream",
            &[0u8, 159, 146, 150][..],
            "io.wsbridge.channel.published",
        ),
    ];
    for sub in &mut subs {
        for (m, (content_type, body, ce_type)) in messages.iter().zip(expected) {
            let r = sub.next().await;
            assert_eq!(r.headers["content-type"], content_type);
            assert_eq!(&r.body[..], body);
            assert_eq!(r.headers["ce-specversion"], "1.0");
            assert_eq!(r.headers["ce-id"], m.id());
            assert_eq!(r.headers["ce-source"], m.source());
            assert_eq!(r.headers["ce-type"], ce_type);
            let time = r.headers["ce-time"].to_str().unwrap();
            assert!(
                humantime::parse_rfc3339(time).is_ok(),
                "ce-time {time} is RFC 3339"
            );
            assert!(r.headers.get("authorization").is_none(), "no token configured");
        }
    }
    wait_until("9 deliveries counted", || engine.stats().delivered == 9).await;
    let labels = wsbridge_dataplane::metrics::SubscriberLabels {
        channel: "default/ticker".into(),
        subscriber: "default/s0".into(),
    };
    assert_eq!(metrics.delivered.get_or_create(&labels).get(), 3);
}

#[tokio::test]
async fn the_bridge_token_is_presented_to_subscribers_as_a_bearer_token() {
    let (engine, _) = engine();
    let mut sub = Subscriber::ok().await;
    engine.set_subscribers(&channel(), vec![spec("default/s", &sub.uri, fast_policy())]);
    let token = SecretString::new("bridge-token-7f3a");
    let msg = Message::new(Payload::text("x"), Origin::Endpoint, "/b").with_subscriber_token(Some(&token));
    engine.dispatch(&channel(), Arc::new(msg));
    let r = sub.next().await;
    assert_eq!(r.headers["authorization"], "Bearer bridge-token-7f3a");
}

#[tokio::test]
async fn a_subscriber_answering_500_then_200_gets_the_message_exactly_once() {
    let (engine, _) = engine();
    let mut sub = Subscriber::start(|n| {
        if n == 0 {
            Reply::Status(500)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    engine.set_subscribers(&channel(), vec![spec("default/s", &sub.uri, fast_policy())]);
    let msg = text("once");
    engine.dispatch(&channel(), msg.clone());
    let first = sub.next().await;
    let second = sub.next().await;
    assert_eq!(first.headers["ce-id"], msg.id());
    assert_eq!(second.headers["ce-id"], msg.id(), "the retry carries the same id");
    sub.assert_quiet(Duration::from_millis(500)).await;
    assert_eq!(sub.requests(), 2);
    let stats = engine.stats();
    assert_eq!(
        (stats.delivered, stats.retried, stats.dead_lettered, stats.dropped),
        (1, 1, 0, 0)
    );
}

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    let (engine, _) = engine();
    let mut sub = Subscriber::start(|n| {
        if n == 0 {
            Reply::RetryAfter(429, 2)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    // Without Retry-After the retry would come after 20ms.
    engine.set_subscribers(&channel(), vec![spec("default/s", &sub.uri, fast_policy())]);
    engine.dispatch(&channel(), text("slow down"));
    let first = sub.next().await;
    let second = sub.next().await;
    let gap = second.at - first.at;
    assert!(
        gap >= Duration::from_millis(1800),
        "retried after {gap:?}, expected about 2s"
    );
    wait_until("delivered", || engine.stats().delivered == 1).await;
}

#[tokio::test]
async fn a_400_is_not_retried_and_goes_to_the_dead_letter_sink() {
    let (engine, metrics) = engine();
    let mut sub = Subscriber::start(|_| Reply::Status(400)).await;
    let mut dlq = Subscriber::ok().await;
    let policy = DeliveryPolicy {
        dead_letter_sink: Some(dlq.uri.clone()),
        ..fast_policy()
    };
    engine.set_subscribers(&channel(), vec![spec("default/s", &sub.uri, policy)]);
    let msg = text(r#"{"bad":true}"#);
    engine.dispatch(&channel(), msg.clone());
    let dead = dlq.next().await;
    assert_eq!(&dead.body[..], br#"{"bad":true}"#);
    assert_eq!(dead.headers["ce-id"], msg.id());
    assert_eq!(dead.headers["content-type"], "application/json");
    assert_eq!(dead.headers["x-wsbridge-dead-letter-reason"], "rejected");
    assert_eq!(dead.headers["ce-wsbridgefailure"], "rejected");
    assert_eq!(dead.headers["x-wsbridge-last-status"], "400");
    assert_eq!(dead.headers["x-wsbridge-attempts"], "1");
    assert_eq!(dead.headers["x-wsbridge-subscriber"], "default/s");
    sub.next().await;
    sub.assert_quiet(Duration::from_millis(500)).await;
    assert_eq!(sub.requests(), 1, "a 400 is never retried");
    wait_until("dead-letter counted", || engine.stats().dead_lettered == 1).await;
    assert_eq!(engine.stats().retried, 0);
    assert_eq!(metrics.dead_lettered_total("rejected"), 1);
}

#[tokio::test]
async fn a_subscriber_that_always_fails_ends_in_the_dead_letter_sink() {
    let (engine, metrics) = engine();
    let sub = Subscriber::start(|_| Reply::Status(503)).await;
    let mut dlq = Subscriber::ok().await;
    let policy = DeliveryPolicy {
        retry: 2,
        dead_letter_sink: Some(dlq.uri.clone()),
        ..fast_policy()
    };
    engine.set_subscribers(&channel(), vec![spec("default/s", &sub.uri, policy)]);
    engine.dispatch(&channel(), text("doomed"));
    let dead = dlq.next().await;
    assert_eq!(&dead.body[..], b"doomed");
    assert_eq!(dead.headers["x-wsbridge-dead-letter-reason"], "retries_exhausted");
    assert_eq!(dead.headers["x-wsbridge-last-status"], "503");
    assert_eq!(dead.headers["x-wsbridge-attempts"], "3");
    assert_eq!(sub.requests(), 3, "first attempt plus two retries");
    wait_until("counted", || engine.stats().dead_lettered == 1).await;
    assert_eq!(engine.stats().retried, 2);
    assert_eq!(metrics.dead_lettered_total("retries_exhausted"), 1);
}

#[tokio::test]
async fn without_a_dead_letter_sink_a_failed_message_is_dropped_and_counted() {
    let (engine, metrics) = engine();
    let sub = Subscriber::start(|_| Reply::Status(404)).await;
    engine.set_subscribers(&channel(), vec![spec("default/s", &sub.uri, fast_policy())]);
    engine.dispatch(&channel(), text("nowhere"));
    wait_until("drop counted", || engine.stats().dropped == 1).await;
    assert_eq!(metrics.dropped_total("rejected"), 1);
    assert_eq!(sub.requests(), 1);
}

#[tokio::test]
async fn a_hung_subscriber_does_not_delay_the_others() {
    let (engine, _) = engine();
    let hung = Subscriber::start(|_| Reply::Hang).await;
    let mut a = Subscriber::ok().await;
    let mut b = Subscriber::ok().await;
    let slow = DeliveryPolicy {
        timeout: Duration::from_secs(120),
        ..fast_policy()
    };
    engine.set_subscribers(
        &channel(),
        vec![
            spec("default/hung", &hung.uri, slow),
            spec("default/a", &a.uri, fast_policy()),
            spec("default/b", &b.uri, fast_policy()),
        ],
    );
    let started = Instant::now();
    for i in 0..20 {
        engine.dispatch(&channel(), text(&format!("m{i}")));
    }
    for sub in [&mut a, &mut b] {
        for i in 0..20 {
            let r = sub.next().await;
            assert_eq!(r.body, format!("m{i}"), "ordered delivery keeps the order");
        }
    }
    // The hung subscriber holds its first message; everyone else is done
    // long before its 120s timeout.
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(hung.requests(), 1);
    wait_until("40 deliveries counted", || engine.stats().delivered == 40).await;
}

#[tokio::test]
async fn queue_overflow_is_dead_lettered_and_counted() {
    let (engine, metrics) = engine();
    let hung = Subscriber::start(|_| Reply::Hang).await;
    let mut dlq = Subscriber::ok().await;
    let policy = DeliveryPolicy {
        queue_capacity: 2,
        timeout: Duration::from_secs(120),
        dead_letter_sink: Some(dlq.uri.clone()),
        ..fast_policy()
    };
    engine.set_subscribers(&channel(), vec![spec("default/hung", &hung.uri, policy)]);
    // The first message goes in flight; wait for it so the queue is empty.
    engine.dispatch(&channel(), text("m0"));
    wait_until("first in flight", || hung.requests() == 1).await;
    let mut overflowed = 0;
    for i in 1..=10 {
        overflowed += engine.dispatch(&channel(), text(&format!("m{i}"))).overflowed;
    }
    assert_eq!(overflowed, 8, "2 fit in the queue, 8 overflow");
    let mut bodies = Vec::new();
    for _ in 0..8 {
        let d = dlq.next().await;
        assert_eq!(d.headers["x-wsbridge-dead-letter-reason"], "queue_full");
        bodies.push(String::from_utf8(d.body.to_vec()).unwrap());
    }
    bodies.sort();
    let mut expected: Vec<String> = (3..=10).map(|i| format!("m{i}")).collect();
    expected.sort();
    assert_eq!(bodies, expected);
    wait_until("counted", || metrics.dead_lettered_total("queue_full") == 8).await;
}

#[tokio::test]
async fn queue_overflow_without_a_sink_is_dropped_and_counted() {
    let (engine, metrics) = engine();
    let hung = Subscriber::start(|_| Reply::Hang).await;
    let policy = DeliveryPolicy {
        queue_capacity: 3,
        timeout: Duration::from_secs(120),
        ..fast_policy()
    };
    engine.set_subscribers(&channel(), vec![spec("default/hung", &hung.uri, policy)]);
    engine.dispatch(&channel(), text("m0"));
    wait_until("first in flight", || hung.requests() == 1).await;
    for i in 1..=100 {
        engine.dispatch(&channel(), text(&format!("m{i}")));
    }
    assert_eq!(engine.stats().dropped, 97);
    assert_eq!(metrics.dropped_total("queue_full"), 97);
}

#[tokio::test]
async fn unordered_subscribers_get_up_to_max_in_flight_concurrent_deliveries() {
    let (engine, _) = engine();
    let hung = Subscriber::start(|_| Reply::Hang).await;
    let policy = DeliveryPolicy {
        ordering: Ordering::Unordered { max_in_flight: 4 },
        timeout: Duration::from_secs(120),
        ..fast_policy()
    };
    engine.set_subscribers(&channel(), vec![spec("default/hung", &hung.uri, policy)]);
    for i in 0..10 {
        engine.dispatch(&channel(), text(&format!("m{i}")));
    }
    wait_until("4 in flight", || hung.requests() == 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hung.requests(), 4, "never more than maxInFlight");
}

#[tokio::test]
async fn subscriber_changes_apply_live_without_disturbing_unchanged_ones() {
    let (engine, _) = engine();
    let mut keep = Subscriber::ok().await;
    let mut gone = Subscriber::ok().await;
    let mut added = Subscriber::ok().await;
    engine.set_subscribers(
        &channel(),
        vec![
            spec("default/keep", &keep.uri, fast_policy()),
            spec("default/gone", &gone.uri, fast_policy()),
        ],
    );
    engine.dispatch(&channel(), text("one"));
    assert_eq!(keep.next().await.body, "one");
    assert_eq!(gone.next().await.body, "one");

    engine.set_subscribers(
        &channel(),
        vec![
            spec("default/keep", &keep.uri, fast_policy()),
            spec("default/added", &added.uri, fast_policy()),
        ],
    );
    assert_eq!(engine.subscribers(&channel()), ["default/keep", "default/added"]);
    engine.dispatch(&channel(), text("two"));
    assert_eq!(keep.next().await.body, "two");
    assert_eq!(added.next().await.body, "two");
    gone.assert_quiet(Duration::from_millis(500)).await;

    // A changed URI takes effect for the next message.
    let mut moved = Subscriber::ok().await;
    engine.set_subscribers(&channel(), vec![spec("default/keep", &moved.uri, fast_policy())]);
    engine.dispatch(&channel(), text("three"));
    assert_eq!(moved.next().await.body, "three");
    keep.assert_quiet(Duration::from_millis(300)).await;
    added.assert_quiet(Duration::from_millis(300)).await;

    engine.set_subscribers(&channel(), vec![]);
    assert_eq!(engine.dispatch(&channel(), text("four")).subscribers, 0);
}

#[tokio::test]
async fn shutdown_delivers_what_it_can_and_dead_letters_the_rest_within_the_deadline() {
    let (engine, _) = engine();
    let mut ok = Subscriber::ok().await;
    let hung = Subscriber::start(|_| Reply::Hang).await;
    let mut dlq = Subscriber::ok().await;
    let policy = DeliveryPolicy {
        timeout: Duration::from_secs(120),
        dead_letter_sink: Some(dlq.uri.clone()),
        ..fast_policy()
    };
    engine.set_subscribers(
        &channel(),
        vec![
            spec("default/ok", &ok.uri, fast_policy()),
            spec("default/hung", &hung.uri, policy),
        ],
    );
    for i in 0..3 {
        engine.dispatch(&channel(), text(&format!("m{i}")));
    }
    wait_until("hung has one in flight", || hung.requests() == 1).await;
    let started = Instant::now();
    let report = engine.shutdown(Duration::from_secs(3)).await;
    assert!(started.elapsed() < Duration::from_secs(10), "shutdown is bounded");
    for i in 0..3 {
        assert_eq!(ok.next().await.body, format!("m{i}"));
    }
    let mut dead = Vec::new();
    for _ in 0..3 {
        let d = dlq.next().await;
        assert_eq!(d.headers["x-wsbridge-dead-letter-reason"], "shutdown");
        dead.push(d.body);
    }
    assert_eq!(report.dead_lettered, 3, "{report:?}");
    assert_eq!(report.abandoned, 0, "{report:?}");
    assert_eq!(engine.stats().delivered, 3);
    assert_eq!(engine.dispatch(&channel(), text("late")).subscribers, 0);
}

#[tokio::test]
async fn the_engine_follows_the_routing_index() {
    use wsbridge_core::ObjectKey;
    use wsbridge_dataplane::routing::{ChannelInfo, RoutingIndex, SubscriptionInfo};
    let (engine, _) = engine();
    let index = RoutingIndex::default();
    let mut sub = Subscriber::ok().await;
    index.apply_channel(channel(), ChannelInfo::default());
    let follower = engine.follow(index.watch(&channel()));
    index.apply_subscription(
        ObjectKey::new("default", "pricing"),
        SubscriptionInfo {
            channel: "ticker".into(),
            subscriber_uri: sub.uri.clone(),
            delivery: Default::default(),
            signing: None,
        },
    );
    wait_until("subscriber applied", || {
        engine.subscribers(&channel()) == ["default/pricing"]
    })
    .await;
    engine.dispatch(&channel(), text("routed"));
    assert_eq!(sub.next().await.body, "routed");
    index.delete_subscription(&ObjectKey::new("default", "pricing"));
    wait_until("subscriber removed", || engine.subscribers(&channel()).is_empty()).await;
    follower.abort();
}

#[tokio::test]
async fn a_subscriber_dropping_for_memory_is_announced_once_until_its_counts_are_taken() {
    let (notices_tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    let metrics = Arc::new(DataplaneMetrics::unregistered());
    let engine = DeliveryEngine::new(
        EngineConfig {
            drop_notices: Some(notices_tx),
            ..EngineConfig::default()
        },
        metrics.clone(),
    );
    let hung = Subscriber::start(|_| Reply::Hang).await;
    let full = Subscriber::start(|_| Reply::Hang).await;
    let size = text("m00").held_bytes();
    let newest = DeliveryPolicy {
        queue_bytes: 2 * size,
        timeout: Duration::from_secs(120),
        ..fast_policy()
    };
    let oldest = DeliveryPolicy {
        overflow: wsbridge_dataplane::delivery::Overflow::DropOldest,
        ..newest.clone()
    };
    // A full queue in messages is not about memory: no notice.
    let by_count = DeliveryPolicy {
        queue_capacity: 1,
        ..newest.clone()
    };
    engine.set_subscribers(
        &channel(),
        vec![
            spec("default/full", &full.uri, by_count),
            spec("default/hung", &hung.uri, newest),
            spec("default/oldest", &hung.uri, oldest),
        ],
    );
    engine.dispatch(&channel(), text("m00"));
    wait_until("first in flight", || hung.requests() == 2 && full.requests() == 1).await;
    for i in 1..=12 {
        engine.dispatch(&channel(), text(&format!("m{i:02}")));
    }
    let mut announced = Vec::new();
    while let Ok(n) = notices.try_recv() {
        announced.push((n.subscriber.to_string(), n.drops.take()));
    }
    announced.sort_by(|a, b| a.0.cmp(&b.0));
    let counts = |n| wsbridge_dataplane::delivery::MemoryDropCounts {
        queue_bytes: n,
        memory_budget: 0,
    };
    assert_eq!(
        announced,
        [
            ("default/hung".to_string(), counts(10)),
            ("default/oldest".to_string(), counts(10))
        ]
    );
    assert_eq!(metrics.dropped_total("queue_bytes"), 20);
    assert_eq!(metrics.dropped_total("queue_full"), 11);
    // Taken: the next drop is announced again.
    engine.dispatch(&channel(), text("m13"));
    let again: Vec<_> = std::iter::from_fn(|| notices.try_recv().ok()).collect();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|n| n.drops.take() == counts(1)));
}
