//! The bridge worker of a `backend: rabbitmq` Channel, on the real API
//! server and a real RabbitMQ: wsbridge installed from the chart with a
//! broker (the controller reads the URL from the mounted Secret), the
//! worker run from the pod template the controller wrote (its
//! `secretKeyRef`s resolved from the real Secrets). Endpoint messages land
//! in a Subscription's backlog, in order, confirmed by the broker; messages
//! published on the channel reach the endpoint through the Bridge's queue,
//! also one published while the worker was killed. The URL lives in the
//! Bridge's Secret and the pod template only refers to it.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use support::durable::DurableInstallation;
use support::peers::{ServerOpts, WsServer};
use support::rabbitmq::RabbitMq;
use tokio::sync::OnceCell;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsbridge_broker::topology::{self, Backlog};
use wsbridge_broker::{Broker, BrokerOptions, BrokerUrl, Publisher};
use wsbridge_core::{ChannelKey, ObjectKey};
use wsbridge_dataplane::{Message, Origin, Payload};

const WAIT: Duration = Duration::from_secs(90);

struct World {
    broker: RabbitMq,
    _installation: DurableInstallation,
}

/// One broker and one installation (no dispatcher: nothing consumes the
/// Subscription backlogs but the test) for this test binary.
async fn world() -> &'static World {
    static WORLD: OnceCell<World> = OnceCell::const_new();
    WORLD
        .get_or_try_init(|| async {
            let broker = RabbitMq::start().await?;
            let installation = support::durable::install(&broker.amqp_url(), 0).await?;
            Ok::<_, anyhow::Error>(World {
                broker,
                _installation: installation,
            })
        })
        .await
        .expect("a broker and wsbridge installed with it")
}

fn objects(ns: &str, endpoint_url: &str) -> String {
    format!(
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {{name: prices, namespace: {ns}}}\nspec: {{backend: rabbitmq}}\n\
         ---\napiVersion: wsbridge.io/v1alpha1\nkind: Endpoint\nmetadata: {{name: market, namespace: {ns}}}\nspec: {{url: '{endpoint_url}', reconnect: {{initialDelay: 50ms, maxDelay: 500ms}}}}\n\
         ---\napiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {{name: feed, namespace: {ns}}}\nspec: {{channel: prices, endpoint: market}}\n"
    )
}

/// The worker's HTTP address, as the local pod was told to listen.
fn worker_addr(pod: &support::pods::LocalPod) -> Result<SocketAddr> {
    Ok(pod
        .env
        .get("WSBRIDGE_LISTEN")
        .context("the worker's listen address")?
        .parse()?)
}

async fn wait_worker_ready(pod: &support::pods::LocalPod) -> Result<()> {
    let addr = worker_addr(pod)?;
    support::eventually(
        WAIT,
        "the worker's /readyz (broker connected, queue consumed)",
        || async move {
            Ok(support::http::get(addr, "/readyz")
                .await
                .ok()
                .filter(|(code, _)| *code == 200))
        },
    )
    .await
    .with_context(|| format!("worker log:\n{}", pod.logs()))?;
    Ok(())
}

/// The next text frame the endpoint receives.
async fn next_text(endpoint: &mut WsServer) -> Result<String> {
    let (_, frame) = tokio::time::timeout(WAIT, endpoint.next_frame())
        .await
        .context("a frame at the endpoint")?;
    match frame {
        WsMessage::Text(text) => Ok(text.to_string()),
        other => anyhow::bail!("not a text frame: {other:?}"),
    }
}

/// Publishes `text` on the channel's exchange as the gateway would
/// (routing key `published`), retried until the broker confirms it.
async fn publish(publisher: &Publisher, channel: &ChannelKey, text: &str) -> Result<()> {
    let msg = &Message::new(Payload::text(text), Origin::Published, "/test/publisher");
    support::eventually(WAIT, &format!("a confirmed publish of {text}"), || async move {
        Ok(publisher.publish(channel, msg).await.ok())
    })
    .await
}

#[tokio::test]
async fn a_bridge_on_a_rabbitmq_channel_goes_through_the_broker_both_ways() -> Result<()> {
    let world = world().await;
    let url = world.broker.amqp_url();
    let cp = support::shared().await;
    let client = cp.client();
    let ns = support::create_namespace(&client, "broker-worker").await?;
    let channel = ChannelKey::new(ns.clone(), "prices");

    // A Subscription's backlog, declared the way its dispatcher would:
    // what the worker publishes for the channel lands there.
    let amqp = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
    let reader = amqp.create_channel().await?;
    let audit = ObjectKey::new(ns.clone(), "audit");
    topology::declare_subscription(&reader, &channel, &audit, Backlog::default(), false).await?;

    let mut endpoint = WsServer::start(ServerOpts::default()).await;
    support::apply_yaml(&client, &objects(&ns, &endpoint.url()), Some(&ns)).await?;

    // (d) The Bridge's Secret holds the URL; the pod template refers to it.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let stored = support::eventually(WAIT, "the broker URL in the Bridge's Secret", || {
        let secrets = secrets.clone();
        async move {
            Ok(secrets
                .get_opt("wsbridge-worker-feed")
                .await?
                .and_then(|s| s.data)
                .and_then(|d| d.get("rabbitmq-url").cloned()))
        }
    })
    .await?;
    let stored = String::from_utf8(stored.0)?;
    ensure!(
        BrokerUrl::parse(&stored)? == BrokerUrl::parse(&url)?,
        "the Secret holds the installation's broker"
    );
    let deployment = support::pods::wait_deployment(&client, &ns, "wsbridge-worker-feed", WAIT).await?;
    let container = &deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    let var = container
        .env
        .iter()
        .flatten()
        .find(|v| v.name == "WSBRIDGE_RABBITMQ_URL")
        .context("the broker URL variable")?;
    ensure!(
        var.value.is_none(),
        "the URL is never a value in the pod template"
    );
    let reference = var
        .value_from
        .as_ref()
        .and_then(|f| f.secret_key_ref.as_ref())
        .context("a secretKeyRef")?;
    ensure!(reference.name == "wsbridge-worker-feed" && reference.key == "rabbitmq-url");
    let applied = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("wsbridge-worker-feed")
        .await?;
    let serialized = serde_json::to_string(&applied)?;
    ensure!(
        !serialized.contains(world.broker.password()),
        "the broker's password appears nowhere in the Deployment"
    );

    let mut worker = support::pods::start_bridge_worker(&ns, "feed").await?;
    tokio::time::timeout(WAIT, endpoint.next_connected())
        .await
        .context("the worker connects to the endpoint")?;
    wait_worker_ready(&worker).await?;

    // (a) Endpoint messages → the broker → the Subscription's backlog, in order.
    let sent: Vec<String> = (0..20).map(|i| format!("tick-{i}")).collect();
    for text in &sent {
        endpoint.send(WsMessage::Text(text.clone().into()));
    }
    let mut backlog = Vec::new();
    let queue = topology::subscription_queue(&audit);
    let deadline = tokio::time::Instant::now() + WAIT;
    while backlog.len() < sent.len() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "only {backlog:?} in the backlog; worker log:\n{}",
            worker.logs()
        );
        let Some(got) = reader
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await?
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let msg = wsbridge_broker::decode(got.delivery.data.clone(), &got.delivery.properties);
        ensure!(msg.origin() == Origin::Endpoint, "an endpoint message");
        backlog.push(msg.payload().as_text().unwrap_or_default().to_string());
        got.delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    assert_eq!(backlog, sent, "in the order the endpoint sent them, once each");

    // The worker takes no sends on a rabbitmq channel: the gateway publishes.
    let credential = worker.env["WSBRIDGE_SEND_CREDENTIAL"].clone();
    let (code, answer) = support::http::request(
        worker_addr(&worker)?,
        "POST",
        "/v1/send",
        &[
            ("Authorization", &format!("Bearer {credential}")),
            ("Content-Type", "text/plain"),
        ],
        b"direct",
    )
    .await?;
    ensure!(
        code == 409 && answer.contains("ChannelIsDurable"),
        "{code} {answer}"
    );
    let (_, metrics) = support::http::get(worker_addr(&worker)?, "/metrics").await?;
    let confirmed = support::metric_sum(
        &metrics,
        "wsbridge_broker_publishes_total",
        &["result=\"confirmed\""],
    );
    ensure!(
        confirmed >= sent.len() as f64,
        "confirmed publishes counted: {confirmed}"
    );
    ensure!(
        support::metric_sum(&metrics, "wsbridge_broker_connected", &[]) == 1.0,
        "{metrics}"
    );

    // (b) Published on the channel → the Bridge's queue → the endpoint.
    let broker = Broker::connect(BrokerUrl::parse(&url)?, BrokerOptions::default());
    let publisher = Publisher::new(broker.clone(), Duration::from_secs(10));
    publish(&publisher, &channel, "published-1").await?;
    assert_eq!(next_text(&mut endpoint).await?, "published-1");

    // One published while the worker is gone waits in the Bridge's queue
    // (with, maybe, one whose acknowledgement the kill cut off) and is sent
    // once the worker is back.
    worker.kill();
    publish(&publisher, &channel, "while-away").await?;
    let bridge_queue = topology::bridge_queue(&ObjectKey::new(ns.clone(), "feed"));
    let (depth_of, queue) = (&broker, &bridge_queue);
    support::eventually(WAIT, "the publish waiting in the Bridge's queue", || async move {
        Ok(depth_of.queue_depth(queue).await.ok().filter(|d| *d >= 1))
    })
    .await?;
    let worker = support::pods::start_bridge_worker(&ns, "feed").await?;
    // At least once: the kill may have cut off the acknowledgement of the
    // message sent just before it, which then comes again first.
    let mut after_restart = Vec::new();
    while after_restart.last().is_none_or(|t| t != "while-away") {
        let text = next_text(&mut endpoint)
            .await
            .with_context(|| format!("got {after_restart:?}; worker log:\n{}", worker.logs()))?;
        after_restart.push(text);
    }
    ensure!(
        after_restart[..after_restart.len() - 1]
            .iter()
            .all(|t| t == "published-1"),
        "only a redelivery before it: {after_restart:?}"
    );
    publish(&publisher, &channel, "published-2").await?;
    assert_eq!(next_text(&mut endpoint).await?, "published-2");

    // The Channel back on memory: the running worker replaces its session
    // in-process and takes the gateway's sends again.
    support::apply_yaml(
        &client,
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: prices}\nspec: {backend: memory}\n",
        Some(&ns),
    )
    .await?;
    let credential = worker.env["WSBRIDGE_SEND_CREDENTIAL"].clone();
    let addr = worker_addr(&worker)?;
    let authorization = format!("Bearer {credential}");
    support::eventually(WAIT, "a send taken on the memory channel", || {
        let authorization = authorization.clone();
        async move {
            let headers = [
                ("Authorization", authorization.as_str()),
                ("Content-Type", "text/plain"),
            ];
            let (code, _) =
                support::http::request(addr, "POST", "/v1/send", &headers, b"sent-directly").await?;
            Ok((code == 202).then_some(()))
        }
    })
    .await
    .with_context(|| format!("worker log:\n{}", worker.logs()))?;
    assert_eq!(next_text(&mut endpoint).await?, "sent-directly");
    Ok(())
}
