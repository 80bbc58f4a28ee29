//! `wsbridge standalone` with a broker (`--rabbitmq-url-file`): the real
//! binary as a child process, a real RabbitMQ (tests/support/rabbitmq.rs),
//! a WebSocket endpoint and HTTP subscribers on loopback. A `backend:
//! rabbitmq` Channel's publishes are accepted only once confirmed, each
//! Subscription has a durable backlog, and bridged endpoints get publishes
//! through the broker; without a broker such a Channel is refused.

mod standalone_support;
mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use standalone_support::{Delivery, Endpoint, Standalone, Subscriber, TempDir, free_addr, http_get};
use support::rabbitmq::RabbitMq;
use tokio::net::TcpListener;

/// How long anything here may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// A name no other test (or earlier run on the same broker) uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// An Endpoint at `endpoint_url`, a `rabbitmq` Channel `channel` bridged to
/// it, and one ordered Subscription per `(name, uri)` that retries fast.
fn durable_config(endpoint_url: &str, channel: &str, subscribers: &[(&str, String)]) -> String {
    let mut yaml = standalone_support::bridged_channel_yaml_with(
        endpoint_url,
        channel,
        "{backend: rabbitmq, allowAnonymousPublish: true, \
         delivery: {retry: 1, backoffPolicy: linear, backoffDelay: 20ms, timeout: 2s}}",
    );
    for (name, uri) in subscribers {
        yaml.push_str(&standalone_support::subscription_yaml(
            name,
            channel,
            uri,
            "  delivery: {ordering: ordered}\n",
        ));
    }
    yaml
}

/// The broker's URL in a file of `dir` (never on a command line).
fn url_file(dir: &TempDir, rabbit: &RabbitMq) -> PathBuf {
    dir.write("rabbitmq-url", &format!("{}\n", rabbit.amqp_url()))
}

async fn start(config: &Path, dir: &TempDir, url: &Path) -> Standalone {
    let url = url.to_str().unwrap();
    Standalone::start_with(&[config], &dir.0, &["--rabbitmq-url-file", url]).await
}

/// A loopback address nothing listens on yet (connections are refused).
fn refusing_addr() -> SocketAddr {
    free_addr()
}

/// Receives until a delivery of every body in `expected` arrived; returns
/// the bodies in arrival order with duplicates (at least once) removed.
async fn receive_all(subscriber: &mut Subscriber, expected: &[String]) -> Vec<String> {
    receive_deliveries(subscriber, expected)
        .await
        .into_iter()
        .map(|d| d.body)
        .collect()
}

/// [`receive_all`], with each body's first delivery.
async fn receive_deliveries(subscriber: &mut Subscriber, expected: &[String]) -> Vec<Delivery> {
    let mut missing: HashSet<&String> = expected.iter().collect();
    let mut got: Vec<Delivery> = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !missing.is_empty() {
        let Ok(Some(delivery)) = tokio::time::timeout_at(deadline, subscriber.rx.recv()).await else {
            panic!(
                "{} of {} messages never arrived, e.g. {:?}",
                missing.len(),
                expected.len(),
                missing.iter().next()
            );
        };
        missing.remove(&delivery.body);
        if !got.iter().any(|d| d.body == delivery.body) {
            got.push(delivery);
        }
    }
    got
}

async fn publish_confirmed(standalone: &Standalone, channel: &str, body: &str) -> serde_json::Value {
    let (status, json) = standalone
        .publish(&format!("default/{channel}"), body.to_string())
        .await;
    assert_eq!(status, 202, "{json}\n{}", standalone.logs());
    json
}

#[tokio::test]
async fn a_subscriber_that_was_down_gets_every_message_in_order_and_the_endpoint_gets_publishes() {
    let rabbit = support::rabbitmq::shared().await;
    let dir = TempDir::new("standalone-rabbitmq-down");
    let mut endpoint = Endpoint::start().await;
    let mut live = Subscriber::start(Duration::ZERO).await;
    let late_addr = refusing_addr();
    let channel = unique("ticker");
    // The Bridge presents a token to subscribers: the broker never holds
    // it, so it is stamped again on what comes back.
    let config = durable_config(
        &endpoint.url(),
        &channel,
        &[
            ("live", live.uri("/live")),
            ("late", format!("http://{late_addr}/late")),
        ],
    )
    .replace(
        "endpoint: feed}",
        "endpoint: feed, tokenSecretRef: {name: bridge-token, key: token}}",
    ) + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: bridge-token}\nstringData: {token: s3cret-token}\n";
    let config = dir.write("config.yaml", &config);
    let url = url_file(&dir, rabbit);
    let standalone = start(&config, &dir, &url).await;

    // Endpoint messages, each published to the broker with confirms.
    let mut sent = Vec::new();
    for i in 0..50 {
        let text = format!("{{\"endpoint\":{i}}}");
        endpoint.send(&text).await;
        sent.push(text);
    }
    let deliveries = receive_deliveries(&mut live, &sent).await;
    let bodies: Vec<&String> = deliveries.iter().map(|d| &d.body).collect();
    assert_eq!(
        bodies,
        sent.iter().collect::<Vec<_>>(),
        "endpoint messages, in order"
    );
    for d in &deliveries {
        assert_eq!(d.headers["authorization"], "Bearer s3cret-token", "{d:?}");
    }

    // Publishes: 202 only once confirmed, for both Subscriptions.
    let mut published = Vec::new();
    for i in 0..20 {
        let text = format!("{{\"published\":{i}}}");
        let json = publish_confirmed(&standalone, &channel, &text).await;
        assert_eq!(json["subscribers"], 2, "{json}");
        published.push(text);
    }
    let deliveries = receive_deliveries(&mut live, &published).await;
    let bodies: Vec<&String> = deliveries.iter().map(|d| &d.body).collect();
    assert_eq!(bodies, published.iter().collect::<Vec<_>>());
    assert!(
        deliveries
            .iter()
            .all(|d| !d.headers.contains_key("authorization")),
        "publishes carry no Bridge token"
    );
    // Publishes reach the bridged endpoint through the broker, in order;
    // endpoint messages never go back out to it.
    for text in &published {
        let got = endpoint
            .next(PATIENCE)
            .await
            .expect("the endpoint gets every publish");
        assert_eq!(&got, text);
    }

    // The subscriber that was down all along comes back on its address.
    let mut late = Subscriber::start_on(TcpListener::bind(late_addr).await.unwrap(), Duration::ZERO);
    let everything: Vec<String> = sent.iter().chain(&published).cloned().collect();
    assert_eq!(
        receive_all(&mut late, &everything).await,
        everything,
        "every message the subscriber missed, once each, in order"
    );

    let (_, metrics) = http_get(&standalone.url("/metrics")).await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("wsbridge_broker_connected 1"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "wsbridge_broker_publishes_total{{channel=\"default/{channel}\",result=\"confirmed\"}} 70"
        )),
        "{metrics}"
    );
    assert!(
        !standalone.logs().contains(rabbit.password()),
        "the password is never logged"
    );

    // SIGTERM: consumers stop, deliveries drain, exit 0.
    let mut standalone = standalone;
    standalone.terminate();
    assert!(
        standalone.wait_exit(PATIENCE).await.success(),
        "{}",
        standalone.logs()
    );
}

#[tokio::test]
async fn a_restart_loses_nothing_that_was_confirmed() {
    let rabbit = support::rabbitmq::shared().await;
    let dir = TempDir::new("standalone-rabbitmq-restart");
    let endpoint = Endpoint::start().await;
    let addr = refusing_addr();
    let channel = unique("orders");
    let config = dir.write(
        "config.yaml",
        &durable_config(
            &endpoint.url(),
            &channel,
            &[("audit", format!("http://{addr}/audit"))],
        ),
    );
    let url = url_file(&dir, rabbit);

    let mut first = start(&config, &dir, &url).await;
    let mut confirmed = Vec::new();
    for i in 0..30 {
        let text = format!("{{\"order\":{i}}}");
        publish_confirmed(&first, &channel, &text).await;
        confirmed.push(text);
    }
    // Killed outright: nothing is drained or flushed by the process.
    first.child.kill().unwrap();
    first.wait_exit(PATIENCE).await;

    let second = start(&config, &dir, &url).await;
    for i in 30..40 {
        let text = format!("{{\"order\":{i}}}");
        publish_confirmed(&second, &channel, &text).await;
        confirmed.push(text);
    }
    // The backlog is in the metrics (asked every few seconds; the message
    // the consumer holds is not counted as ready).
    let gauge = "wsbridge_broker_backlog_messages{queue=\"wsbridge.subscription.default.audit\"} ";
    wait_for(&second, "/metrics", "a backlog of 35 or more", |_, metrics| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(gauge).and_then(|n| n.trim().parse::<u64>().ok()))
            .is_some_and(|n| n >= 35)
    })
    .await;
    let mut subscriber = Subscriber::start_on(TcpListener::bind(addr).await.unwrap(), Duration::ZERO);
    assert_eq!(
        receive_all(&mut subscriber, &confirmed).await,
        confirmed,
        "every confirmed message, from before and after the restart, in order"
    );
}

#[tokio::test]
async fn a_publish_while_the_broker_is_stopped_gets_503() {
    let rabbit = RabbitMq::start().await.expect("a broker of this test's own");
    let dir = TempDir::new("standalone-rabbitmq-outage");
    let endpoint = Endpoint::start().await;
    let mut subscriber = Subscriber::start(Duration::ZERO).await;
    let channel = unique("alerts");
    let config = dir.write(
        "config.yaml",
        &durable_config(&endpoint.url(), &channel, &[("pager", subscriber.uri("/pager"))]),
    );
    let url = url_file(&dir, &rabbit);
    let standalone = start(&config, &dir, &url).await;

    let mut confirmed = vec!["{\"alert\":\"before\"}".to_string()];
    publish_confirmed(&standalone, &channel, &confirmed[0]).await;

    rabbit.stop().unwrap();
    wait_ready(&standalone, 503).await;
    for i in 0..3 {
        let (status, json) = standalone
            .publish(
                &format!("default/{channel}"),
                format!("{{\"alert\":\"during {i}\"}}"),
            )
            .await;
        assert_eq!(status, 503, "{json}");
        assert_eq!(json["reason"], "BrokerUnavailable", "{json}");
        assert!(json["error"].as_str().unwrap().contains("not accepted"), "{json}");
    }
    let (_, metrics) = http_get(&standalone.url("/metrics")).await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("wsbridge_broker_connected 0"), "{metrics}");

    rabbit.start_again().await.unwrap();
    wait_ready(&standalone, 200).await;
    confirmed.push("{\"alert\":\"after\"}".to_string());
    publish_confirmed(&standalone, &channel, &confirmed[1]).await;
    assert_eq!(receive_all(&mut subscriber, &confirmed).await, confirmed);
    let extra = subscriber.drain(Duration::from_millis(500)).await;
    assert!(
        extra.iter().all(|d| !d.body.contains("during")),
        "a refused publish is never delivered: {extra:?}"
    );
}

/// Waits until `/readyz` answers `status` (it follows the broker).
async fn wait_ready(standalone: &Standalone, status: u16) {
    let what = format!("/readyz answering {status}");
    wait_for(standalone, "/readyz", &what, |s, _| s == status).await;
}

/// Polls `path` until `done` holds for its status and body.
async fn wait_for(standalone: &Standalone, path: &str, what: &str, done: impl Fn(u16, &str) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok((status, body)) = http_get(&standalone.url(path)).await
            && done(status, &String::from_utf8_lossy(&body))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {what}:\n{}",
            standalone.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_rabbitmq_channel_without_a_broker_is_refused_naming_the_file_object_and_field() {
    let dir = TempDir::new("standalone-rabbitmq-none");
    let config = dir.write(
        "config.yaml",
        &durable_config("ws://127.0.0.1:9/feed", "durable", &[]),
    );
    for args in [vec!["--check"], vec!["--listen", "127.0.0.1:0"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsbridge"))
            .arg("standalone")
            .arg("-f")
            .arg(&config)
            .args(&args)
            .env_remove("WSBRIDGE_RABBITMQ_URL")
            .env_remove("WSBRIDGE_RABBITMQ_URL_FILE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        for part in [
            config.to_str().unwrap(),
            "Channel default/durable",
            "spec.backend",
            "--rabbitmq-url",
        ] {
            assert!(stderr.contains(part), "{args:?}: {part:?} missing in {stderr}");
        }
    }
}

/// Waits until the metrics say the consumer of `queue` consumes.
async fn wait_consuming(standalone: &Standalone, queue: &str) {
    let line = format!("wsbridge_broker_consuming{{queue=\"{queue}\"}} 1");
    wait_for(standalone, "/metrics", &line, |_, metrics| {
        metrics.contains(&line)
    })
    .await;
}

#[tokio::test]
async fn a_reload_moves_a_memory_channel_to_the_broker_and_a_new_subscription_gets_its_backlog() {
    let rabbit = support::rabbitmq::shared().await;
    let dir = TempDir::new("standalone-rabbitmq-reload");
    let endpoint = Endpoint::start().await;
    let mut first = Subscriber::start(Duration::ZERO).await;
    let channel = unique("prices");
    let memory = standalone_support::bridged_channel_yaml(&endpoint.url(), &channel)
        + &standalone_support::subscription_yaml("first", &channel, &first.uri("/first"), "");
    let config = dir.write("config.yaml", &memory);
    let url = url_file(&dir, rabbit);
    let standalone = start(&config, &dir, &url).await;
    let before = "{\"memory\":true}".to_string();
    standalone
        .publish_accepted(&format!("default/{channel}"), &before)
        .await;
    let expected = std::slice::from_ref(&before);
    assert_eq!(receive_all(&mut first, expected).await, expected);

    // The same channel on the broker, with a second Subscription that is down.
    let second_addr = refusing_addr();
    dir.write(
        "config.yaml",
        &durable_config(
            &endpoint.url(),
            &channel,
            &[
                ("first", first.uri("/first")),
                ("second", format!("http://{second_addr}/second")),
            ],
        ),
    );
    standalone
        .wait_log("configuration changed; applying", PATIENCE)
        .await;
    for subscription in ["first", "second"] {
        wait_consuming(
            &standalone,
            &format!("wsbridge.subscription.default.{subscription}"),
        )
        .await;
    }
    let mut after = Vec::new();
    for i in 0..5 {
        let text = format!("{{\"durable\":{i}}}");
        publish_confirmed(&standalone, &channel, &text).await;
        after.push(text);
    }
    assert_eq!(receive_all(&mut first, &after).await, after);
    let mut second = Subscriber::start_on(TcpListener::bind(second_addr).await.unwrap(), Duration::ZERO);
    assert_eq!(
        receive_all(&mut second, &after).await,
        after,
        "what was published since it was added, in order"
    );
    assert!(
        second
            .drain(Duration::from_millis(300))
            .await
            .iter()
            .all(|d| d.body != before),
        "nothing from before the channel moved to the broker"
    );
}

#[tokio::test]
async fn a_reload_to_a_rabbitmq_channel_without_a_broker_is_rejected_and_the_running_one_kept() {
    let dir = TempDir::new("standalone-rabbitmq-reject");
    let endpoint = Endpoint::start().await;
    let mut subscriber = Subscriber::start(Duration::ZERO).await;
    let yaml = standalone_support::bridged_channel_yaml(&endpoint.url(), "kept")
        + &standalone_support::subscription_yaml("sub", "kept", &subscriber.uri("/"), "");
    let config = dir.write("config.yaml", &yaml);
    let standalone = Standalone::start(&[&config], &dir.0).await;
    dir.write("config.yaml", &durable_config(&endpoint.url(), "kept", &[]));
    let logs = standalone
        .wait_log("configuration change rejected", PATIENCE)
        .await;
    assert!(logs.contains("spec.backend"), "{logs}");
    standalone.publish_accepted("default/kept", "still memory").await;
    subscriber.next_containing("still memory", PATIENCE).await;
}

#[tokio::test]
async fn websocket_clients_publish_through_the_broker_and_get_confirmed_messages() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Frame;

    let rabbit = support::rabbitmq::shared().await;
    let dir = TempDir::new("standalone-rabbitmq-websocket");
    let mut endpoint = Endpoint::start().await;
    let mut subscriber = Subscriber::start(Duration::ZERO).await;
    let channel = unique("chat");
    let config = dir.write(
        "config.yaml",
        &durable_config(&endpoint.url(), &channel, &[("log", subscriber.uri("/log"))]),
    );
    let url = url_file(&dir, rabbit);
    let standalone = start(&config, &dir, &url).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/channels/default/{channel}", standalone.addr))
            .await
            .expect("WebSocket upgrade");

    // A frame the client sends is a publish: through the broker to the
    // Subscription and out to the bridged endpoint.
    ws.send(Frame::text("{\"from\":\"ws\"}")).await.unwrap();
    subscriber.next_containing("\"from\":\"ws\"", PATIENCE).await;
    assert_eq!(
        endpoint.next(PATIENCE).await.as_deref(),
        Some("{\"from\":\"ws\"}")
    );

    // Endpoint messages reach the client once the broker confirmed them.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        endpoint.send("{\"from\":\"endpoint\"}").await;
        match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
            Ok(Some(Ok(Frame::Text(text)))) if text.contains("endpoint") => break,
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "no frame from the endpoint"
            ),
        }
    }
}
