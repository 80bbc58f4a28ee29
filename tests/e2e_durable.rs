//! A `backend: rabbitmq` Channel end to end, on the real API server and a
//! real RabbitMQ: the chart installed with a broker, the controller, the
//! gateway and two dispatcher replicas run from their pod templates, the
//! bridge worker from the template the controller wrote. One Bridge and
//! three Subscriptions: one fast, one failing (its dead-letter sink gets
//! everything), one down for a while (it gets its whole backlog when it is
//! back, in order). A worker killed with SIGKILL loses nothing published
//! meanwhile; deleting a Subscription deletes its queue.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use support::durable::DurableInstallation;
use support::peers::{Reply, ServerOpts, Subscriber, WsServer};
use support::rabbitmq::RabbitMq;
use tokio::sync::OnceCell;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const WAIT: Duration = Duration::from_secs(90);

struct World {
    broker: RabbitMq,
    installation: DurableInstallation,
}

/// One broker and one installation for this test binary.
async fn world() -> &'static World {
    static WORLD: OnceCell<World> = OnceCell::const_new();
    WORLD
        .get_or_try_init(|| async {
            let broker = RabbitMq::start().await?;
            let installation = support::durable::install(&broker.amqp_url(), 2).await?;
            Ok::<_, anyhow::Error>(World { broker, installation })
        })
        .await
        .expect("a broker and wsbridge installed with it")
}

async fn publish(gateway: SocketAddr, channel: &str, body: &str) -> Result<(u16, String)> {
    support::http::request(
        gateway,
        "POST",
        &format!("/channels/{channel}"),
        &[("Content-Type", "text/plain")],
        body.as_bytes(),
    )
    .await
}

/// Publishes `body` until the gateway accepts it (its caches caught up
/// with the Channel); every answer but 202 must be a JSON reason.
async fn publish_accepted(gateway: SocketAddr, channel: &str, body: &str) -> Result<()> {
    support::eventually(WAIT, &format!("a 202 for {body}"), || async move {
        let (code, answer) = publish(gateway, channel, body).await?;
        if code != 202 {
            serde_json::from_str::<serde_json::Value>(&answer)
                .with_context(|| format!("{code} without a JSON reason: {answer}"))?;
        }
        Ok((code == 202).then_some(()))
    })
    .await
}

/// The bodies `sub` received, in order, until `expected` distinct ones
/// arrived.
async fn bodies(sub: &mut Subscriber, expected: usize) -> Vec<String> {
    let mut got = Vec::new();
    let mut distinct = BTreeSet::new();
    while distinct.len() < expected {
        let received = tokio::time::timeout(WAIT, sub.received.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {expected} messages arrived: {got:?}", distinct.len()))
            .expect("subscriber stopped");
        let body = String::from_utf8_lossy(&received.body).to_string();
        distinct.insert(body.clone());
        got.push(body);
    }
    got
}

/// `got` with repeats removed (a delivery may be repeated when the
/// dispatcher holding it went away; it is never lost).
fn first_occurrences(got: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    got.iter()
        .filter(|b| seen.insert((*b).clone()))
        .cloned()
        .collect()
}

async fn endpoint_texts(endpoint: &mut WsServer, expected: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < expected {
        let frame = tokio::time::timeout(WAIT, endpoint.next_frame())
            .await
            .unwrap_or_else(|_| panic!("the endpoint got only {got:?}"));
        if let (_, WsMessage::Text(t)) = frame {
            got.push(t.to_string());
        }
    }
    got
}

#[tokio::test]
async fn a_durable_channel_delivers_everything_to_every_subscription_once_through_restarts() -> Result<()> {
    let world = world().await;
    let gateway = world.installation.gateway.addr;
    let cp = support::shared().await;
    let client = cp.client();
    let ns = support::create_namespace(&client, "durable").await?;

    let mut endpoint = WsServer::start(ServerOpts::default()).await;
    let mut fast = Subscriber::ok().await;
    let failing = Subscriber::start(|_| Reply::Status(500)).await;
    let mut dead_letters = Subscriber::ok().await;
    let up = Arc::new(AtomicBool::new(false));
    let flag = up.clone();
    let mut down =
        Subscriber::start(move |_| Reply::Status(if flag.load(Ordering::SeqCst) { 200 } else { 503 })).await;
    let yaml = support::durable::feed_yaml(
        &endpoint.url(),
        &[
            ("fast", &fast.uri.to_string(), ""),
            (
                "failing",
                &failing.uri.to_string(),
                &format!(
                    "{{retry: 1, backoffDelay: 10ms, deadLetterSink: {{uri: '{}'}}}}",
                    dead_letters.uri
                ),
            ),
            ("down", &down.uri.to_string(), "{retry: 1, backoffDelay: 10ms}"),
        ],
    );
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    let mut worker = support::pods::start_bridge_worker(&ns, "upstream").await?;
    endpoint.next_connected().await;
    let channel = format!("{ns}/feed");

    // A first publish through the gateway, once its caches know the Channel
    // and the controller declared the queues: every Subscription gets it.
    publish_accepted(gateway, &channel, "p-0").await?;
    let mut expected = vec!["p-0".to_string()];
    // The Channel says its exchanges are on the broker, and is Ready.
    let channels: kube::Api<wsbridge_api::Channel> = kube::Api::namespaced(client.clone(), &ns);
    support::eventually(WAIT, "the Channel BrokerReady and Ready", || {
        let channels = channels.clone();
        async move {
            let status = channels.get("feed").await?.status.unwrap_or_default();
            let broker = wsbridge_api::conditions::find(&status.conditions, "BrokerReady").cloned();
            Ok((wsbridge_api::conditions::is_true(&status.conditions, "Ready")
                && broker.is_some_and(|c| c.status == "True" && c.reason == "Declared"))
            .then_some(()))
        }
    })
    .await?;
    assert_eq!(endpoint_texts(&mut endpoint, 1).await, ["p-0"]);
    for i in 1..=20 {
        endpoint.send(WsMessage::text(format!("e-{i}")));
        expected.push(format!("e-{i}"));
    }
    for i in 1..=10 {
        publish_accepted(gateway, &channel, &format!("p-{i}")).await?;
        expected.push(format!("p-{i}"));
    }
    let published: Vec<String> = (1..=10).map(|i| format!("p-{i}")).collect();
    assert_eq!(
        endpoint_texts(&mut endpoint, 10).await,
        published,
        "publishes reach the endpoint in order"
    );

    let all: BTreeSet<String> = expected.iter().cloned().collect();
    let got = bodies(&mut fast, all.len()).await;
    assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), all);
    let dead = bodies(&mut dead_letters, all.len()).await;
    assert_eq!(
        dead.iter().cloned().collect::<BTreeSet<_>>(),
        all,
        "the failing subscriber's messages are dead-lettered"
    );
    assert!(
        failing.requests() >= all.len(),
        "each was tried at the failing subscriber first"
    );

    // The worker dies without a chance to clean up; what is published
    // meanwhile waits in its Bridge's queue.
    worker.kill();
    for i in 11..=15 {
        publish_accepted(gateway, &channel, &format!("p-{i}")).await?;
        expected.push(format!("p-{i}"));
    }
    let _worker = support::pods::start_bridge_worker(&ns, "upstream").await?;
    let after: Vec<String> = (11..=15).map(|i| format!("p-{i}")).collect();
    assert_eq!(
        endpoint_texts(&mut endpoint, 5).await,
        after,
        "what was published while the worker was down is sent when it is back"
    );

    // The subscriber that was down gets its whole backlog, in order (the
    // endpoint's messages in the order it sent them, the publishes in the
    // order they were accepted).
    up.store(true, Ordering::SeqCst);
    let got = first_occurrences(&bodies(&mut down, expected.len()).await);
    let order =
        |prefix: &str| -> Vec<String> { got.iter().filter(|b| b.starts_with(prefix)).cloned().collect() };
    let want = |prefix: &str| -> Vec<String> {
        expected
            .iter()
            .filter(|b| b.starts_with(prefix))
            .cloned()
            .collect()
    };
    assert_eq!(order("e-"), want("e-"));
    assert_eq!(order("p-"), want("p-"));

    // Deleting a Subscription deletes its backlog in the broker, then the
    // object (the finalizer goes last).
    let subs: kube::Api<wsbridge_api::Subscription> = kube::Api::namespaced(client.clone(), &ns);
    let queue = format!("wsbridge.subscription.{ns}.fast");
    let broker = wsbridge_broker::Broker::connect(
        wsbridge_broker::BrokerUrl::parse(&world.broker.amqp_url())?,
        wsbridge_broker::BrokerOptions::default(),
    );
    support::eventually(WAIT, "the backlog, while the Subscription exists", || {
        let (broker, queue) = (broker.clone(), queue.clone());
        async move { Ok(broker.queue_depth(&queue).await.ok()) }
    })
    .await?;
    subs.delete("fast", &Default::default()).await?;
    support::eventually(WAIT, "the Subscription and its queue gone", || {
        let (subs, broker, queue) = (subs.clone(), broker.clone(), queue.clone());
        async move {
            let gone = subs.get_opt("fast").await?.is_none();
            Ok((gone && broker.queue_depth(&queue).await.is_err()).then_some(()))
        }
    })
    .await?;
    Ok(())
}
