//! Durable channels against a real RabbitMQ (tests/support/rabbitmq.rs):
//! publishes confirmed by the broker reach a Subscription's HTTP subscriber
//! through its quorum queue and the delivery engine, acknowledged only
//! after delivery. A subscriber that was down gets its backlog, in order;
//! a broker restart loses nothing that was confirmed, refuses publishes
//! while it is down, and consuming resumes by itself.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use wsbridge_broker::consumer::ConsumerState;
use wsbridge_broker::topology::Backlog;
use wsbridge_broker::{
    Broker, BrokerOptions, BrokerUrl, ConsumerHandle, ConsumerSpec, PublishError, Publisher,
};
use wsbridge_core::{ChannelKey, ObjectKey};
use wsbridge_dataplane::delivery::{DeliveryEngine, DeliveryPolicy, EngineConfig, Ordering, SubscriberSpec};
use wsbridge_dataplane::{DataplaneMetrics, Message, Origin, Payload};

use support::rabbitmq::RabbitMq;

/// How long anything here may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// The pieces of one durable Subscription in one process: the broker
/// connection, a publisher, the delivery engine with the subscriber, and
/// the consumer of the Subscription's queue.
struct Durable {
    broker: Broker,
    publisher: Publisher,
    channel: ChannelKey,
    consumer: ConsumerHandle,
    _engine: DeliveryEngine,
}

impl Durable {
    fn start(url: &str, name: &str, subscriber: SocketAddr, ordering: Ordering) -> Self {
        Self::with_backlog(url, name, subscriber, ordering, Backlog::default())
    }

    fn with_backlog(
        url: &str,
        name: &str,
        subscriber: SocketAddr,
        ordering: Ordering,
        backlog: Backlog,
    ) -> Self {
        let broker = Broker::connect(
            BrokerUrl::parse(url).expect("the test broker's URL"),
            BrokerOptions::default(),
        );
        let publisher = Publisher::new(broker.clone(), Duration::from_secs(10));
        let channel = ChannelKey::new("durable", name);
        let subscription = ObjectKey::new("durable", format!("{name}-sub"));
        let engine = DeliveryEngine::new(EngineConfig::default(), Arc::new(DataplaneMetrics::default()));
        // The engine delivers this Subscription's messages under a key of
        // its own: the consumer hands in only what its queue holds.
        let key = ChannelKey::new(subscription.namespace.clone(), subscription.name.clone());
        engine.set_subscribers(
            &key,
            vec![SubscriberSpec {
                id: subscription.to_string(),
                uri: format!("http://{subscriber}/ingest").parse().unwrap(),
                policy: DeliveryPolicy {
                    retry: 2,
                    backoff_delay: Duration::from_millis(20),
                    timeout: Duration::from_secs(2),
                    ordering,
                    ..DeliveryPolicy::default()
                },
                signing: None,
            }],
        );
        let prefetch = match ordering {
            Ordering::Ordered => 1,
            Ordering::Unordered { max_in_flight } => max_in_flight as u16,
        };
        let deliver_to = engine.clone();
        let consumer = ConsumerHandle::spawn(
            broker.clone(),
            ConsumerSpec {
                channel: channel.clone(),
                subscription,
                backlog,
                prefetch,
                single_active_consumer: ordering == Ordering::Ordered,
            },
            Arc::new(move |msg| {
                let report = deliver_to.dispatch(&key, msg);
                report.subscribers == 1 && report.overflowed == 0
            }),
        );
        Self {
            broker,
            publisher,
            channel,
            consumer,
            _engine: engine,
        }
    }

    async fn publish(&self, text: &str) -> Result<String, PublishError> {
        let msg = Message::new(Payload::text(text), Origin::Published, "/test");
        self.publisher.publish(&self.channel, &msg).await?;
        Ok(msg.id().to_string())
    }

    async fn wait_consuming(&self) {
        tokio::time::timeout(PATIENCE, self.consumer.consuming())
            .await
            .expect("the consumer consumes");
    }
}

/// A loopback address nothing listens on (connections are refused).
fn refusing_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

/// An HTTP subscriber on a given address: every request's `ce-id`, in
/// arrival order, answered 200.
async fn serve_subscriber(listener: TcpListener) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let tx = tx.clone();
        async move {
            let id = headers
                .get("ce-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let _ = tx.send(id);
            axum::http::StatusCode::OK
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    rx
}

/// Receives until every id of `expected` arrived; returns everything
/// received, duplicates included, in arrival order.
async fn receive_all(rx: &mut mpsc::UnboundedReceiver<String>, expected: &[String]) -> Vec<String> {
    let mut missing: HashSet<&String> = expected.iter().collect();
    let mut got = Vec::new();
    while !missing.is_empty() {
        let id = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {} messages never arrived", missing.len(), expected.len()))
            .expect("the subscriber runs");
        missing.remove(&id);
        got.push(id);
    }
    got
}

#[tokio::test]
async fn a_subscriber_that_was_down_gets_its_backlog_in_order() {
    let rabbit = support::rabbitmq::shared().await;
    // The subscriber's address, with nothing listening yet: connections
    // are refused until it comes up.
    let addr = refusing_addr();
    let durable = Durable::start(&rabbit.amqp_url(), "backlog", addr, Ordering::Ordered);
    durable.wait_consuming().await;

    let mut sent = Vec::new();
    for i in 0..40 {
        sent.push(durable.publish(&format!("message {i}")).await.expect("confirmed"));
    }
    // The consumer has been trying (and returning the head message to the
    // queue) while the subscriber was down; now it comes up.
    let mut received = serve_subscriber(TcpListener::bind(addr).await.unwrap()).await;
    let got = receive_all(&mut received, &sent).await;

    let mut in_order = Vec::new();
    for id in got {
        if !in_order.contains(&id) {
            in_order.push(id);
        }
    }
    assert_eq!(in_order, sent, "every message, once each, in publish order");
}

#[tokio::test]
async fn a_broker_restart_loses_nothing_confirmed_and_refuses_publishes_while_down() {
    let rabbit = RabbitMq::start().await.expect("a broker of this test's own");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut received = serve_subscriber(listener).await;
    let durable = Durable::start(
        &rabbit.amqp_url(),
        "restart",
        addr,
        Ordering::Unordered { max_in_flight: 16 },
    );
    durable.wait_consuming().await;

    let mut confirmed = Vec::new();
    for i in 0..50 {
        confirmed.push(durable.publish(&format!("before {i}")).await.expect("confirmed"));
    }

    rabbit.stop().unwrap();
    support::wait_until("the client sees the broker gone", || {
        !durable.broker.is_connected()
    })
    .await;
    for i in 0..5 {
        match durable.publish(&format!("during {i}")).await {
            Err(PublishError::Unavailable(_)) => {}
            other => panic!("a publish while the broker is down must fail as unavailable: {other:?}"),
        }
    }

    rabbit.start_again().await.unwrap();
    tokio::time::timeout(PATIENCE, async {
        while !matches!(durable.consumer.state(), ConsumerState::Consuming { generation } if generation >= 2)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the consumer resumes on the new connection: broker {:?}, consumer {:?}",
            durable.broker.state(),
            durable.consumer.state()
        )
    });
    for i in 0..50 {
        confirmed.push(durable.publish(&format!("after {i}")).await.expect("confirmed"));
    }

    let got = receive_all(&mut received, &confirmed).await;
    let unique: HashSet<&String> = got.iter().collect();
    assert!(
        unique.iter().all(|id| confirmed.contains(id)),
        "only confirmed messages arrive (none of the refused ones)"
    );
    eprintln!(
        "{} confirmed, {} deliveries ({} duplicates after the restart)",
        confirmed.len(),
        got.len(),
        got.len() - unique.len()
    );
}

#[tokio::test]
async fn a_full_backlog_dead_letters_its_oldest_messages_and_never_refuses_a_publish() {
    let rabbit = support::rabbitmq::shared().await;
    let nobody = refusing_addr();
    let backlog = Backlog {
        max_bytes: 1 << 20,
        max_messages: 5,
    };
    let durable = Durable::with_backlog(&rabbit.amqp_url(), "overflow", nobody, Ordering::Ordered, backlog);
    durable.wait_consuming().await;
    for i in 0..20 {
        durable
            .publish(&format!("message {i}"))
            .await
            .expect("a full backlog never refuses a publish");
    }
    let subscription = ObjectKey::new("durable", "overflow-sub");
    let queue = wsbridge_broker::topology::subscription_queue(&subscription);
    let dead = wsbridge_broker::topology::dead_letter_queue(&subscription);
    // One message is held by the consumer (its subscriber is down); of the
    // other 19, the backlog keeps the newest 5 and the 14 others overflow to
    // the dead-letter queue, which is bounded the same way: it keeps the
    // newest 5 of them.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let backlog = durable.broker.queue_depth(&queue).await.unwrap();
        let overflowed = durable.broker.queue_depth(&dead).await.unwrap();
        if backlog == 5 && overflowed == 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backlog {backlog}, dead-letter queue {overflowed} (both bounded to 5)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn publishing_without_a_broker_is_unavailable_at_once() {
    let closed = refusing_addr();
    let broker = Broker::connect(
        BrokerUrl::parse(&format!("amqp://user:s3cret@{closed}/%2f")).unwrap(),
        BrokerOptions::default(),
    );
    let publisher = Publisher::new(broker.clone(), Duration::from_secs(5));
    let msg = Message::new(Payload::text("x"), Origin::Published, "/test");
    let err = publisher
        .publish(&ChannelKey::new("ns", "nowhere"), &msg)
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert!(!format!("{:?}", broker.state()).contains("s3cret"));
}
