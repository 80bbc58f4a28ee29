//! `wsbridge dispatcher` against the real API server and a real RabbitMQ:
//! the chart rendered with a broker (`broker.existingSecret`), applied, the
//! broker's Secret written, and two dispatcher replicas run from the
//! dispatcher Deployment's pod template (its Secret volume with the URL
//! materialised as the kubelet would, its ServiceAccount's token: the
//! chart's RBAC is what it runs with). Messages are published onto a
//! `rabbitmq` Channel's exchange with the broker crate's Publisher (the
//! gateway's and the worker's paths are tested elsewhere) and reach real
//! HTTP subscribers through each Subscription's backlog.
//!
//! Each test has its namespace and its own two replicas, which follow
//! only that namespace (`WSBRIDGE_WATCH_NAMESPACE`), so one test killing a
//! replica or its broker touches no other.

mod support;
mod webhook_support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use support::peers::{Received, Reply, Subscriber};
use support::pods::{LocalPod, run_pod_template};
use support::rabbitmq::RabbitMq;
use tokio::sync::OnceCell;
use webhook_support::{Verifier, new_secret};
use wsbridge_api::Subscription;
use wsbridge_broker::{Broker, BrokerOptions, BrokerUrl, Publisher};
use wsbridge_core::ChannelKey;
use wsbridge_dataplane::{Message, Origin, Payload};

/// How long anything here may take on a loaded machine.
const WAIT: Duration = Duration::from_secs(120);

/// Namespace and release of the chart.
const SYSTEM: &str = "wsbridge-system";

/// The Secret the chart is rendered for (key `url`).
const BROKER_SECRET: &str = "wsbridge-broker";

/// The chart with a broker, applied once per test binary, its Secret
/// pointing at the shared test broker.
async fn chart_installed() -> &'static RabbitMq {
    static DONE: OnceCell<()> = OnceCell::const_new();
    let broker = support::rabbitmq::shared().await;
    DONE.get_or_try_init(|| async {
        let cp = support::shared().await;
        let client = cp.client();
        support::install_crds(&client).await?;
        let repo = support::binaries::repo_root();
        support::apply_yaml_file(&client, repo.join("deploy/namespace.yaml"), None).await?;
        write_broker_secret(BROKER_SECRET, &broker.amqp_url()).await?;
        // The controller's copy of signing secrets and Bridge tokens (the
        // controller does not run here: tests add their keys to it).
        let keys = format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: {DELIVERY_KEYS}}}\n");
        support::apply_yaml(&client, &keys, Some(SYSTEM)).await?;
        let manifests = support::durable::render_chart(&[])?;
        support::apply_yaml(&client, &manifests, Some(SYSTEM)).await?;
        Ok::<_, anyhow::Error>(())
    })
    .await
    .expect("the chart installed with a broker");
    broker
}

/// The delivery keys Secret the chart mounts into the dispatcher.
const DELIVERY_KEYS: &str = "wsbridge-delivery-keys";

/// Adds `key` = `value` to the delivery keys Secret (merged: the keys of
/// tests running at the same time stay).
async fn add_delivery_key(key: &str, value: &str) -> Result<()> {
    let client = support::shared().await.client();
    Api::<Secret>::namespaced(client, SYSTEM)
        .patch(
            DELIVERY_KEYS,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"stringData": {key: value}})),
        )
        .await?;
    Ok(())
}

async fn write_broker_secret(name: &str, url: &str) -> Result<()> {
    let client = support::shared().await.client();
    let secret =
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {{url: '{url}'}}\n");
    support::apply_yaml(&client, &secret, Some(SYSTEM)).await?;
    Ok(())
}

/// One dispatcher replica, run from the chart's pod template.
struct Replica {
    addr: SocketAddr,
    pod: LocalPod,
}

impl Replica {
    /// Starts a replica following only `ns`, with the broker URL of the
    /// Secret `secret` (the chart's, or another broker's for a test that
    /// stops it: only the volume's Secret differs from the template).
    async fn start(ns: &str, secret: &str) -> Result<Self> {
        let cp = support::shared().await;
        let client = cp.client();
        let mut deployment = Api::<Deployment>::namespaced(client.clone(), SYSTEM)
            .get("wsbridge-dispatcher")
            .await
            .context("the chart's dispatcher Deployment")?;
        if secret != BROKER_SECRET {
            let volumes = deployment
                .spec
                .as_mut()
                .and_then(|s| s.template.spec.as_mut())
                .and_then(|p| p.volumes.as_mut())
                .context("pod volumes")?;
            let broker = volumes
                .iter_mut()
                .find(|v| v.name == "broker")
                .and_then(|v| v.secret.as_mut())
                .context("the broker volume")?;
            broker.secret_name = Some(secret.into());
        }
        let addr: SocketAddr = format!("127.0.0.1:{}", support::http::free_port()).parse()?;
        let listen = addr.to_string();
        let pod = run_pod_template(
            cp,
            &client,
            &deployment,
            &[
                ("WSBRIDGE_LISTEN", listen.as_str()),
                ("WSBRIDGE_WATCH_NAMESPACE", ns),
            ],
        )
        .await?;
        Ok(Self { addr, pod })
    }

    async fn readyz(&self) -> Option<u16> {
        support::http::get(self.addr, "/readyz")
            .await
            .ok()
            .map(|(code, _)| code)
    }

    async fn wait_readyz(&self, code: u16) -> Result<()> {
        support::eventually(WAIT, &format!("dispatcher /readyz {code}"), || async {
            Ok((self.readyz().await == Some(code)).then_some(()))
        })
        .await
        .with_context(|| format!("dispatcher log:\n{}", self.pod.logs()))
    }

    async fn metrics(&self) -> String {
        support::http::get(self.addr, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// Messages this replica delivered to the Subscription `ns/name`.
    async fn delivered(&self, ns: &str, name: &str) -> f64 {
        let filter = format!("subscriber=\"{ns}/{name}\"");
        support::metric_sum(
            &self.metrics().await,
            "wsbridge_messages_delivered_total",
            &[&filter],
        )
    }

    /// Whether this replica has a consumer on `queue` that consumes.
    async fn consuming(&self, queue: &str) -> bool {
        let filter = format!("queue=\"{queue}\"");
        support::metric_sum(&self.metrics().await, "wsbridge_broker_consuming", &[&filter]) == 1.0
    }

    /// Whether this replica has any consumer of `queue` (consuming or not).
    async fn has_consumer(&self, queue: &str) -> bool {
        let filter = format!("queue=\"{queue}\"");
        self.metrics()
            .await
            .lines()
            .any(|l| l.starts_with("wsbridge_broker_consuming{") && l.contains(&filter))
    }
}

/// Two replicas of `ns`, both ready.
async fn two_replicas(ns: &str, secret: &str) -> Result<[Replica; 2]> {
    let replicas = [
        Replica::start(ns, secret).await?,
        Replica::start(ns, secret).await?,
    ];
    for r in &replicas {
        r.wait_readyz(200).await?;
    }
    Ok(replicas)
}

/// Publishes onto a channel's exchange, confirmed, on a connection of its own.
struct Publishing {
    publisher: Publisher,
    channel: ChannelKey,
    _broker: Broker,
}

impl Publishing {
    fn new(url: &str, ns: &str, channel: &str) -> Self {
        let broker = Broker::connect(
            BrokerUrl::parse(url).expect("the test broker's URL"),
            BrokerOptions::default(),
        );
        Self {
            publisher: Publisher::new(broker.clone(), Duration::from_secs(10)),
            channel: ChannelKey::new(ns, channel),
            _broker: broker,
        }
    }

    /// Publishes `text` until the broker confirms it.
    async fn publish(&self, text: &str) -> Result<()> {
        let msg = Message::new(Payload::text(text), Origin::Published, "/test/dispatcher");
        support::eventually(WAIT, &format!("the broker confirms {text}"), || async {
            Ok(self.publisher.publish(&self.channel, &msg).await.ok())
        })
        .await
    }

    async fn publish_all(&self, texts: &[String]) -> Result<()> {
        for t in texts {
            self.publish(t).await?;
        }
        Ok(())
    }
}

fn messages(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

fn body(r: &Received) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The next request's body, within [`WAIT`].
async fn next_body(sub: &mut Subscriber) -> String {
    let next = tokio::time::timeout(WAIT, sub.received.recv())
        .await
        .unwrap_or_else(|_| panic!("no request within {WAIT:?}"))
        .expect("the subscriber stopped");
    body(&next)
}

/// Receives until `want` distinct bodies have arrived; returns every body
/// in arrival order (duplicates included).
async fn receive_distinct(sub: &mut Subscriber, want: usize) -> Vec<String> {
    let mut all = Vec::new();
    let mut distinct = HashSet::new();
    while distinct.len() < want {
        let next = tokio::time::timeout(WAIT, sub.received.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {want} distinct messages after {WAIT:?}", distinct.len()))
            .expect("the subscriber stopped");
        let text = body(&next);
        distinct.insert(text.clone());
        all.push(text);
    }
    all
}

/// The order of first arrival.
fn first_occurrences(all: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    all.iter()
        .filter(|t| seen.insert((*t).clone()))
        .cloned()
        .collect()
}

fn channel_yaml(name: &str) -> String {
    format!(
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {{name: {name}}}\nspec: {{backend: rabbitmq}}\n"
    )
}

fn subscription_yaml(name: &str, channel: &str, uri: &http::Uri, delivery: &str) -> String {
    format!(
        "apiVersion: wsbridge.io/v1alpha1\nkind: Subscription\nmetadata: {{name: {name}}}\n\
         spec:\n  channel: {channel}\n  subscriber: {{uri: '{uri}'}}\n  delivery: {delivery}\n"
    )
}

fn queue(ns: &str, subscription: &str) -> String {
    format!("wsbridge.subscription.{ns}.{subscription}")
}

/// Waits until one of `replicas` consumes `queue` (its queue exists, so
/// what is published from now on lands there).
async fn wait_consumed(replicas: &[Replica], queue: &str) -> Result<()> {
    support::eventually(WAIT, &format!("a consumer of {queue}"), || async {
        for r in replicas {
            if r.consuming(queue).await {
                return Ok(Some(()));
            }
        }
        Ok(None)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_delivered_once_and_unordered_work_spreads_over_both_replicas() -> Result<()> {
    let broker = chart_installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "dispatch-once").await?;
    let replicas = two_replicas(&ns, BROKER_SECRET).await?;
    let mut fast = Subscriber::ok().await;
    let mut ordered = Subscriber::ok().await;
    let yaml = channel_yaml("ticks")
        + "---\n"
        + &subscription_yaml(
            "fast",
            "ticks",
            &fast.uri,
            "{ordering: unordered, maxInFlight: 4}",
        )
        + "---\n"
        + &subscription_yaml("ordered", "ticks", &ordered.uri, "{ordering: ordered}");
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    for r in &replicas {
        // Unordered: every replica consumes the queue.
        support::eventually(WAIT, "both replicas consume the unordered backlog", || async {
            Ok(r.consuming(&queue(&ns, "fast")).await.then_some(()))
        })
        .await?;
    }
    wait_consumed(&replicas, &queue(&ns, "ordered")).await?;

    let sent = messages("once", 200);
    Publishing::new(&broker.amqp_url(), &ns, "ticks")
        .publish_all(&sent)
        .await?;

    let got = receive_distinct(&mut fast, sent.len()).await;
    let got_ordered = receive_distinct(&mut ordered, sent.len()).await;
    fast.assert_quiet(Duration::from_secs(2)).await;
    ordered.assert_quiet(Duration::from_millis(200)).await;
    assert_eq!(got.len(), sent.len(), "a message arrived twice");
    assert_eq!(
        got.iter().cloned().collect::<HashSet<_>>(),
        sent.iter().cloned().collect::<HashSet<_>>()
    );
    assert_eq!(
        got_ordered, sent,
        "the ordered subscriber gets each once, in order"
    );

    // The unordered backlog was shared; the ordered one had one active
    // consumer (single active consumer), so one replica delivered it all.
    let mut fast_counts = Vec::new();
    let mut ordered_counts = Vec::new();
    for r in &replicas {
        fast_counts.push(r.delivered(&ns, "fast").await);
        ordered_counts.push(r.delivered(&ns, "ordered").await);
    }
    assert_eq!(
        fast_counts.iter().sum::<f64>(),
        sent.len() as f64,
        "{fast_counts:?}"
    );
    assert!(
        fast_counts.iter().all(|n| *n > 0.0),
        "both replicas delivered unordered messages: {fast_counts:?}"
    );
    ordered_counts.sort_by(f64::total_cmp);
    assert_eq!(ordered_counts, vec![0.0, sent.len() as f64]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_subscriber_that_fails_for_a_while_gets_every_message_in_order() -> Result<()> {
    let broker = chart_installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "dispatch-down").await?;
    let replicas = two_replicas(&ns, BROKER_SECRET).await?;
    // Down for its first 12 requests: each of those is a 503.
    const FAILURES: usize = 12;
    let mut sub = Subscriber::start(|n| Reply::Status(if n < FAILURES { 503 } else { 200 })).await;
    let yaml = channel_yaml("ticks")
        + "---\n"
        + &subscription_yaml(
            "flaky",
            "ticks",
            &sub.uri,
            "{ordering: ordered, retry: 1, backoffPolicy: linear, backoffDelay: 50ms}",
        );
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    wait_consumed(&replicas, &queue(&ns, "flaky")).await?;

    let sent = messages("down", 30);
    Publishing::new(&broker.amqp_url(), &ns, "ticks")
        .publish_all(&sent)
        .await?;

    // Every request in order: the failures (the first message, again and
    // again: it stayed in the backlog), then each message once, in order.
    let mut requests = Vec::new();
    while requests.len() < FAILURES + sent.len() {
        requests.push(body(&sub.next().await));
    }
    sub.assert_quiet(Duration::from_secs(3)).await;
    assert!(
        requests[..FAILURES].iter().all(|b| *b == sent[0]),
        "only the first message is tried while the subscriber is down: {:?}",
        &requests[..FAILURES]
    );
    assert_eq!(
        requests[FAILURES..],
        sent[..],
        "each message once, in order, after recovery"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_active_consumer_mid_stream_loses_nothing_and_keeps_the_order() -> Result<()> {
    let broker = chart_installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "dispatch-kill").await?;
    let mut replicas = two_replicas(&ns, BROKER_SECRET).await?;
    let mut sub = Subscriber::ok().await;
    let yaml = channel_yaml("ticks")
        + "---\n"
        + &subscription_yaml("ordered", "ticks", &sub.uri, "{ordering: ordered}");
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    wait_consumed(&replicas, &queue(&ns, "ordered")).await?;

    // Published steadily while the active replica is killed.
    let sent = messages("kill", 300);
    let publishing = Publishing::new(&broker.amqp_url(), &ns, "ticks");
    let texts = sent.clone();
    let publisher = tokio::spawn(async move {
        for t in &texts {
            publishing.publish(t).await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok::<_, anyhow::Error>(())
    });

    let mut all = Vec::new();
    while all.len() < 50 {
        all.push(body(&sub.next().await));
    }
    let mut active = None;
    for (i, r) in replicas.iter().enumerate() {
        if r.delivered(&ns, "ordered").await > 0.0 {
            active = Some(i);
        }
    }
    let active = active.context("a replica delivered the first messages")?;
    replicas[active].pod.kill();
    let survivor = &replicas[1 - active];

    let mut distinct: HashSet<String> = all.iter().cloned().collect();
    while distinct.len() < sent.len() {
        let next = next_body(&mut sub).await;
        distinct.insert(next.clone());
        all.push(next);
    }
    publisher.await??;
    sub.assert_quiet(Duration::from_secs(2)).await;

    assert_eq!(
        first_occurrences(&all),
        sent,
        "nothing lost, first arrivals in order"
    );
    let duplicates = all.len() - sent.len();
    assert!(
        duplicates <= 2,
        "only what was in flight at the kill may come twice: {duplicates}"
    );
    assert!(
        survivor.delivered(&ns, "ordered").await > 0.0,
        "the other replica took over"
    );
    assert_eq!(survivor.readyz().await, Some(200));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_subscription_is_no_longer_consumed() -> Result<()> {
    let broker = chart_installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "dispatch-delete").await?;
    let replicas = two_replicas(&ns, BROKER_SECRET).await?;
    let mut kept = Subscriber::ok().await;
    let mut deleted = Subscriber::ok().await;
    let yaml = channel_yaml("ticks")
        + "---\n"
        + &subscription_yaml("kept", "ticks", &kept.uri, "{ordering: ordered}")
        + "---\n"
        + &subscription_yaml("deleted", "ticks", &deleted.uri, "{ordering: ordered}");
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    wait_consumed(&replicas, &queue(&ns, "kept")).await?;
    wait_consumed(&replicas, &queue(&ns, "deleted")).await?;
    let publishing = Publishing::new(&broker.amqp_url(), &ns, "ticks");

    let before = messages("before", 10);
    publishing.publish_all(&before).await?;
    assert_eq!(receive_distinct(&mut kept, 10).await, before);
    assert_eq!(receive_distinct(&mut deleted, 10).await, before);
    let depth = Broker::connect(BrokerUrl::parse(&broker.amqp_url())?, BrokerOptions::default());
    let gone = queue(&ns, "deleted");
    support::eventually(WAIT, "every message acknowledged before the deletion", || async {
        Ok(depth.queue_depth(&gone).await.ok().filter(|n| *n == 0))
    })
    .await?;

    Api::<Subscription>::namespaced(client.clone(), &ns)
        .delete("deleted", &DeleteParams::default())
        .await?;
    support::eventually(WAIT, "no replica consumes the deleted subscription", || async {
        for r in &replicas {
            if r.has_consumer(&gone).await {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;

    let after = messages("after", 10);
    publishing.publish_all(&after).await?;
    assert_eq!(receive_distinct(&mut kept, 10).await, after);
    deleted.assert_quiet(Duration::from_secs(3)).await;
    // Nothing took them from its backlog (deleting the queue is the
    // controller's job, which does not run here).
    support::eventually(
        WAIT,
        "the deleted subscription's backlog holds what came after",
        || async { Ok(depth.queue_depth(&gone).await.ok().filter(|n| *n == 10)) },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_subscription_is_held_until_its_key_arrives_then_delivered_signed_never_unsigned()
-> Result<()> {
    let broker = chart_installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "dispatch-signed").await?;
    let replicas = two_replicas(&ns, BROKER_SECRET).await?;
    let mut plain = Subscriber::ok().await;
    let secret = new_secret(32);
    // A subscriber that verifies every request with the standardwebhooks
    // package: an unsigned delivery would print `refused`.
    let mut verifier = Verifier::start(&secret).await;
    let yaml = channel_yaml("ticks")
        + "---\n"
        + &subscription_yaml("plain", "ticks", &plain.uri, "{ordering: ordered}")
        + "---\n"
        + &subscription_yaml("signed", "ticks", &verifier.uri().parse()?, "{ordering: ordered}")
        + "  signingSecretRef: {name: hooks, key: secret}\n";
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    wait_consumed(&replicas, &queue(&ns, "plain")).await?;
    let held = format!("subscription=\"{ns}/signed\"");
    let held_on = |r: &Replica| {
        let held = held.clone();
        let addr = r.addr;
        async move {
            let metrics = support::http::get(addr, "/metrics")
                .await
                .map(|(_, b)| b)
                .unwrap_or_default();
            support::metric_sum(
                &metrics,
                "wsbridge_dispatcher_held_subscriptions",
                &[&held, "reason=\"SigningUnavailable\""],
            )
        }
    };
    for r in &replicas {
        support::eventually(WAIT, "the signed subscription is held", || async {
            Ok((held_on(r).await == 1.0).then_some(()))
        })
        .await?;
    }
    let depth = Broker::connect(BrokerUrl::parse(&broker.amqp_url())?, BrokerOptions::default());
    let signed_queue = queue(&ns, "signed");
    support::eventually(WAIT, "the held subscription's backlog is declared", || async {
        Ok(depth.queue_depth(&signed_queue).await.ok())
    })
    .await?;

    let sent = messages("signed", 10);
    Publishing::new(&broker.amqp_url(), &ns, "ticks")
        .publish_all(&sent)
        .await?;
    assert_eq!(receive_distinct(&mut plain, 10).await, sent);
    assert!(
        tokio::time::timeout(Duration::from_secs(3), verifier.next())
            .await
            .is_err(),
        "nothing reaches the signed subscriber without its key"
    );
    support::eventually(WAIT, "the held backlog keeps every message", || async {
        Ok(depth.queue_depth(&signed_queue).await.ok().filter(|n| *n == 10))
    })
    .await?;
    for r in &replicas {
        assert_eq!(
            r.readyz().await,
            Some(200),
            "a held subscription is not a failure"
        );
    }

    // The controller's copy of the key arrives in the delivery keys
    // Secret (written here: the controller does not run in these tests).
    add_delivery_key(&format!("{ns}.signed"), &secret).await?;
    let mut verdicts = Vec::new();
    while verdicts.len() < sent.len() {
        verdicts.push(verifier.next().await);
    }
    for (verdict, text) in verdicts.iter().zip(&sent) {
        assert!(
            verdict.starts_with("verified ") && verdict.ends_with(&format!(" {text}")),
            "signed, verified, in order: {verdict:?} for {text}"
        );
    }
    for r in &replicas {
        support::eventually(WAIT, "no longer held", || async {
            Ok((held_on(r).await == 0.0).then_some(()))
        })
        .await?;
    }
    support::eventually(WAIT, "the backlog is drained", || async {
        Ok(depth.queue_depth(&signed_queue).await.ok().filter(|n| *n == 0))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_broker_is_down_and_consuming_resumes_after() -> Result<()> {
    chart_installed().await;
    let own = RabbitMq::start().await?;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "dispatch-outage").await?;
    let secret = format!("wsbridge-broker-{ns}");
    write_broker_secret(&secret, &own.amqp_url()).await?;
    let replicas = two_replicas(&ns, &secret).await?;
    let mut sub = Subscriber::ok().await;
    let yaml = channel_yaml("ticks")
        + "---\n"
        + &subscription_yaml("ordered", "ticks", &sub.uri, "{ordering: ordered}");
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    wait_consumed(&replicas, &queue(&ns, "ordered")).await?;
    let publishing = Publishing::new(&own.amqp_url(), &ns, "ticks");

    let before = messages("before", 10);
    publishing.publish_all(&before).await?;
    assert_eq!(receive_distinct(&mut sub, 10).await, before);

    // Stopped as a node drain would (SIGTERM): a single-node quorum queue
    // of RabbitMQ 3.10 can stay without a leader after a SIGKILL
    // (rabbitmq-server#10070), which is the broker's problem, not ours.
    own.stop()?;
    for r in &replicas {
        r.wait_readyz(503).await?;
        support::eventually(WAIT, "the metrics say the broker is not connected", || async {
            let metrics = r.metrics().await;
            let connected = support::metric_sum(&metrics, "wsbridge_broker_connected", &[]);
            Ok((connected == 0.0 && r.readyz().await == Some(503)).then_some(()))
        })
        .await?;
    }
    own.start_again().await?;
    for r in &replicas {
        r.wait_readyz(200).await?;
    }

    let after = messages("after", 10);
    publishing.publish_all(&after).await?;
    let got = receive_distinct(&mut sub, 10).await;
    assert_eq!(first_occurrences(&got), after, "consuming resumed, in order");
    for r in &replicas {
        let metrics = r.metrics().await;
        assert!(
            support::metric_sum(&metrics, "wsbridge_broker_connections", &[]) >= 2.0,
            "reconnected"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_finishes_the_delivery_under_way_and_the_other_replica_takes_over_without_duplicates()
-> Result<()> {
    let broker = chart_installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "dispatch-drain").await?;
    let mut replicas = two_replicas(&ns, BROKER_SECRET).await?;
    let mut sub = Subscriber::ok().await;
    let yaml = channel_yaml("ticks")
        + "---\n"
        + &subscription_yaml("ordered", "ticks", &sub.uri, "{ordering: ordered}");
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    wait_consumed(&replicas, &queue(&ns, "ordered")).await?;

    let sent = messages("drain", 300);
    let publishing = Publishing::new(&broker.amqp_url(), &ns, "ticks");
    let texts = sent.clone();
    let publisher = tokio::spawn(async move {
        for t in &texts {
            publishing.publish(t).await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok::<_, anyhow::Error>(())
    });
    let mut all = Vec::new();
    while all.len() < 50 {
        all.push(next_body(&mut sub).await);
    }
    let mut active = None;
    for (i, r) in replicas.iter().enumerate() {
        if r.delivered(&ns, "ordered").await > 0.0 {
            active = Some(i);
        }
    }
    let active = active.context("a replica delivered the first messages")?;
    let code = replicas[active].pod.terminate(Duration::from_secs(30)).await;
    assert_eq!(
        code,
        Some(0),
        "a clean exit within the grace period; log:\n{}",
        replicas[active].pod.logs()
    );

    let mut distinct: HashSet<String> = all.iter().cloned().collect();
    while distinct.len() < sent.len() {
        let next = next_body(&mut sub).await;
        distinct.insert(next.clone());
        all.push(next);
    }
    publisher.await??;
    sub.assert_quiet(Duration::from_secs(2)).await;
    // The message under way at the stop was delivered and acknowledged
    // before the connection closed: nothing twice, nothing lost, in order.
    assert_eq!(all, sent);
    assert!(replicas[1 - active].delivered(&ns, "ordered").await > 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_messages_carry_their_bridges_token_and_wait_for_it_in_the_backlog() -> Result<()> {
    let broker = chart_installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "dispatch-token").await?;
    let replicas = two_replicas(&ns, BROKER_SECRET).await?;
    let mut sub = Subscriber::ok().await;
    // A Bridge of the channel that names a token (no worker runs: its
    // endpoint messages are published here as the worker writes them).
    let yaml = channel_yaml("ticks")
        + "---\n"
        + &subscription_yaml("ordered", "ticks", &sub.uri, "{ordering: ordered}")
        + "---\napiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {name: feed}\n\
           spec: {channel: ticks, endpoint: exchange, tokenSecretRef: {name: feed-token, key: token}}\n";
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    let held = format!("subscription=\"{ns}/ordered\"");
    for r in &replicas {
        support::eventually(WAIT, "held until the Bridge's token is there", || async {
            let n = support::metric_sum(
                &r.metrics().await,
                "wsbridge_dispatcher_held_subscriptions",
                &[&held, "reason=\"BridgeTokenUnavailable\""],
            );
            Ok((n == 1.0).then_some(()))
        })
        .await?;
    }
    let depth = Broker::connect(BrokerUrl::parse(&broker.amqp_url())?, BrokerOptions::default());
    let backlog = queue(&ns, "ordered");
    support::eventually(WAIT, "the held backlog is declared", || async {
        Ok(depth.queue_depth(&backlog).await.ok())
    })
    .await?;

    let publishing = Publishing::new(&broker.amqp_url(), &ns, "ticks");
    let source = wsbridge_translate::bridge_source(&ns, "feed");
    let sent = messages("endpoint", 5);
    for text in &sent {
        let msg = Message::new(Payload::text(text.clone()), Origin::Endpoint, source.clone());
        support::eventually(WAIT, "the broker confirms", || async {
            Ok(publishing.publisher.publish(&publishing.channel, &msg).await.ok())
        })
        .await?;
    }
    sub.assert_quiet(Duration::from_secs(3)).await;

    let token = "feed-token-value-7f3a";
    add_delivery_key(&format!("bridge_{ns}.feed"), token).await?;
    for text in &sent {
        let got = sub.next().await;
        assert_eq!(body(&got), *text, "in order");
        assert_eq!(
            got.headers.get("authorization").and_then(|v| v.to_str().ok()),
            Some(format!("Bearer {token}").as_str()),
            "the Bridge's token, as its worker presents it"
        );
    }
    sub.assert_quiet(Duration::from_secs(2)).await;
    Ok(())
}

/// The chart's dispatcher objects, rendered with `sets` on top of a broker.
fn dispatcher_objects(sets: &[&str]) -> Result<Vec<serde_json::Value>> {
    let yaml = support::durable::render_chart(sets)?;
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&yaml) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if value["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("-dispatcher"))
        {
            docs.push(value);
        }
    }
    Ok(docs)
}

#[test]
fn the_chart_renders_the_dispatcher_only_with_a_broker_and_with_least_privilege() -> Result<()> {
    // deploy/wsbridge.yaml is the chart with its defaults: no broker.
    let defaults = std::fs::read_to_string(support::binaries::repo_root().join("deploy/wsbridge.yaml"))?;
    assert!(!defaults.contains("dispatcher"), "no dispatcher without a broker");
    let docs = dispatcher_objects(&[])?;
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in [
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    assert!(
        !kinds.contains(&"HorizontalPodAutoscaler"),
        "autoscaling is off by default"
    );
    let of = |kind: &str| docs.iter().find(|d| d["kind"] == kind).expect("rendered");

    let deployment = of("Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(args.first(), Some(&"dispatcher"));
    assert!(
        args.contains(&"--rabbitmq-url-file") || args.iter().any(|a| a.starts_with("--rabbitmq-url-file="))
    );
    assert!(
        args.contains(&"--own-service"),
        "the gateway's Service is denied: {args:?}"
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);

    // Reads three kinds, writes nothing, never a Secret.
    let rules = of("ClusterRole")["rules"].as_array().cloned().unwrap_or_default();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0]["apiGroups"], serde_json::json!(["wsbridge.io"]));
    assert_eq!(
        rules[0]["resources"],
        serde_json::json!(["channels", "bridges", "subscriptions"])
    );
    assert_eq!(rules[0]["verbs"], serde_json::json!(["get", "list", "watch"]));

    // Only the metrics scraper (none configured: nobody) reaches its pods.
    assert_eq!(of("NetworkPolicy")["spec"]["ingress"], serde_json::json!([]));

    let autoscaled = dispatcher_objects(&[
        "dispatcher.autoscaling.enabled=true",
        "dispatcher.autoscaling.maxReplicas=7",
    ])?;
    let hpa = autoscaled
        .iter()
        .find(|d| d["kind"] == "HorizontalPodAutoscaler")
        .context("an HPA with autoscaling on")?;
    assert_eq!(hpa["spec"]["maxReplicas"], 7);
    let deployment = autoscaled
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .context("Deployment")?;
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "the HPA owns the replicas"
    );
    Ok(())
}
