//! MQTT and AMQP clients of a `backend: rabbitmq` Channel in `wsbridge
//! standalone`, through RabbitMQ's own listeners (AMQP 0-9-1, and MQTT with
//! the `rabbitmq_mqtt` plugin): the channel is MQTT topic
//! `{namespace}/{channel}`, and routing key `{namespace}.{channel}` on
//! `amq.topic` for AMQP clients. The clients are paho-mqtt
//! (tests/peers/mqtt_client.py) and pika (tests/peers/amqp_client.py),
//! the broker a real RabbitMQ
//! (tests/support/rabbitmq.rs), standalone the real binary; the endpoint
//! and the HTTP subscriber are servers on loopback. Each subscriber gets
//! each message exactly once, and an endpoint never gets its own messages
//! back.

#[path = "support/python.rs"]
mod python;
mod standalone_support;
mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use standalone_support::{Endpoint, Standalone, Subscriber, TempDir, http_get};
use support::rabbitmq::RabbitMq;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tokio::sync::OnceCell;
use tokio_tungstenite::tungstenite::Message as Frame;

/// How long anything here may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// How long to listen for a message delivered twice.
const QUIET: Duration = Duration::from_secs(2);

const MQTT_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/mqtt_client.py");
const AMQP_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/amqp_client.py");

static BROKER: OnceCell<RabbitMq> = OnceCell::const_new();

/// This binary's broker, with the MQTT plugin.
async fn broker() -> &'static RabbitMq {
    BROKER
        .get_or_init(|| async {
            RabbitMq::start_with_mqtt()
                .await
                .expect("test RabbitMQ with MQTT")
        })
        .await
}

/// A name no other test (or earlier run on the same broker) uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// A `rabbitmq` Channel bridged to `endpoint_url` with one Subscription
/// (named after the channel: queue names are the broker's, shared by the
/// tests running at once).
fn config(endpoint_url: &str, channel: &str, subscriber_uri: &str) -> String {
    standalone_support::bridged_channel_yaml_with(
        endpoint_url,
        channel,
        "{backend: rabbitmq, allowAnonymousPublish: true, allowAnonymousSubscribe: true, \
         delivery: {retry: 1, backoffPolicy: linear, backoffDelay: 20ms, timeout: 2s}}",
    ) + &standalone_support::subscription_yaml(
        &format!("{channel}-live"),
        channel,
        subscriber_uri,
        "  delivery: {ordering: ordered}\n",
    )
}

async fn start(dir: &TempDir, config: &str, rabbit: &RabbitMq) -> Standalone {
    let config = dir.write("config.yaml", config);
    let url = dir.write("rabbitmq-url", &format!("{}\n", rabbit.amqp_url()));
    let standalone = Standalone::start_with(
        &[&config],
        &dir.0,
        &["--rabbitmq-url-file", url.to_str().unwrap()],
    )
    .await;
    wait_ready(&standalone).await;
    standalone
}

/// Waits until `/readyz` answers 200: the channel's topology is declared
/// and its queues consumed.
async fn wait_ready(standalone: &Standalone) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok((200, _)) = http_get(&standalone.url("/readyz")).await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready:\n{}",
            standalone.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A paho-mqtt client.
fn mqtt(rabbit: &RabbitMq, args: &[&str]) -> tokio::process::Command {
    let addr = rabbit.mqtt_addr();
    let mut command = python::python3_with(&["paho.mqtt.client"]);
    command
        .arg(MQTT_CLIENT)
        .args([addr.ip().to_string(), addr.port().to_string()])
        .args(args)
        .stdout(Stdio::piped());
    command
}

/// A paho-mqtt client speaking MQTT over a WebSocket to the broker's
/// `rabbitmq_web_mqtt` listener.
fn mqtt_over_websocket(rabbit: &RabbitMq, args: &[&str]) -> tokio::process::Command {
    let addr = rabbit.web_mqtt_addr();
    let mut command = python::python3_with(&["paho.mqtt.client"]);
    command
        .arg(MQTT_CLIENT)
        .args([addr.ip().to_string(), addr.port().to_string()])
        .args(args)
        .env("MQTT_TRANSPORT", "websockets")
        .stdout(Stdio::piped());
    command
}

/// A pika client, with the broker's URL in its environment.
fn amqp(rabbit: &RabbitMq, args: &[&str]) -> tokio::process::Command {
    let mut command = python::python3_with(&["pika"]);
    command
        .arg(AMQP_CLIENT)
        .args(args)
        .env("AMQP_URL", rabbit.amqp_url())
        .stdout(Stdio::piped());
    command
}

/// A paho-mqtt or pika subscriber, once the broker granted it.
struct RemoteSubscriber {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl RemoteSubscriber {
    /// A paho-mqtt subscriber of `topic`.
    async fn mqtt(rabbit: &RabbitMq, topic: &str) -> Self {
        Self::start(mqtt(rabbit, &["subscribe", topic])).await
    }

    /// A pika client's queue bound to `amq.topic` with `key`.
    async fn amqp(rabbit: &RabbitMq, key: &str) -> Self {
        Self::start(amqp(rabbit, &["subscribe", "amq.topic", key])).await
    }

    async fn start(mut command: tokio::process::Command) -> Self {
        let mut child = command.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(PATIENCE, lines.next_line()).await;
        assert!(
            matches!(&first, Ok(Ok(Some(line))) if line == "subscribed"),
            "the subscriber did not subscribe: {first:?}"
        );
        Self { _child: child, lines }
    }

    /// The payloads of the messages on `topic` that arrive within `window`.
    async fn receive(&mut self, topic: &str, window: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + window;
        let mut got = Vec::new();
        while let Ok(line) = tokio::time::timeout_at(deadline, self.lines.next_line()).await {
            let line = line.unwrap().expect("the subscriber stays up");
            let json: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(json["topic"], topic, "{json}");
            got.push(json["payload"].as_str().unwrap().to_string());
        }
        got
    }
}

/// Publishes `messages` with a paho-mqtt client on `topic` (QoS 1).
async fn mqtt_publish(rabbit: &RabbitMq, topic: &str, messages: &[String]) {
    let mut args = vec!["publish", topic];
    args.extend(messages.iter().map(String::as_str));
    run(mqtt(rabbit, &args)).await;
}

/// Publishes `messages` with a pika client to `amq.topic` with `key`
/// (persistent, confirmed).
async fn amqp_publish(rabbit: &RabbitMq, key: &str, messages: &[String]) {
    let mut args = vec!["publish", "amq.topic", key];
    args.extend(messages.iter().map(String::as_str));
    run(amqp(rabbit, &args)).await;
}

async fn run(mut command: tokio::process::Command) {
    let out = command.output().await.unwrap();
    assert!(
        out.status.success(),
        "the publisher failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// How many times each body occurs.
fn counts<'a>(bodies: impl IntoIterator<Item = &'a String>) -> BTreeMap<&'a str, usize> {
    let mut counts = BTreeMap::new();
    for body in bodies {
        *counts.entry(body.as_str()).or_default() += 1;
    }
    counts
}

fn once_each(expected: &[String]) -> BTreeMap<&str, usize> {
    counts(expected)
}

/// Every message the HTTP subscriber gets until it has `expected` and
/// [`QUIET`] passed.
async fn http_received(subscriber: &mut Subscriber, expected: &[String]) -> Vec<String> {
    let mut got: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !expected.iter().all(|e| got.contains(e)) {
        let Ok(Some(d)) = tokio::time::timeout_at(deadline, subscriber.rx.recv()).await else {
            panic!("the HTTP subscriber got only {got:?} of {expected:?}");
        };
        got.push(d.body);
    }
    got.extend(subscriber.drain(QUIET).await.into_iter().map(|d| d.body));
    got
}

/// Every message the endpoint gets until it has `expected` and [`QUIET`]
/// passed.
async fn endpoint_received(endpoint: &mut Endpoint, expected: &[String]) -> Vec<String> {
    let mut got: Vec<String> = Vec::new();
    while !expected.iter().all(|e| got.contains(e)) {
        let Some(text) = endpoint.next(PATIENCE).await else {
            panic!("the endpoint got only {got:?} of {expected:?}");
        };
        got.push(text);
    }
    while let Some(text) = endpoint.next(QUIET).await {
        got.push(text);
    }
    got
}

/// `{"tag":0}` … `{"tag":4}`: five distinct messages from one source.
fn numbered(tag: &str) -> Vec<String> {
    (0..5).map(|i| format!("{{\"{tag}\":{i}}}")).collect()
}

/// Sends `from_endpoint` from the bridged endpoint and publishes
/// `from_http` over HTTP (each answered 202).
async fn send_from_endpoint_and_http(
    endpoint: &mut Endpoint,
    standalone: &Standalone,
    topic: &str,
    from_endpoint: &[String],
    from_http: &[String],
) {
    for text in from_endpoint {
        endpoint.send(text).await;
    }
    for text in from_http {
        let (status, json) = standalone.publish(topic, text.clone()).await;
        assert_eq!(status, 202, "{json}\n{}", standalone.logs());
    }
}

/// A remote client's publish is a channel publish: the HTTP subscriber and
/// the bridged endpoint get each message once.
async fn assert_http_and_endpoint_get_once_each(
    http: &mut Subscriber,
    endpoint: &mut Endpoint,
    messages: &[String],
) {
    assert_eq!(
        counts(&http_received(http, messages).await),
        once_each(messages),
        "the HTTP subscriber, once each"
    );
    assert_eq!(
        counts(&endpoint_received(endpoint, messages).await),
        once_each(messages),
        "the bridged endpoint, once each"
    );
}

#[tokio::test]
async fn an_mqtt_subscriber_gets_the_whole_channel_and_an_mqtt_publish_reaches_everyone_once() {
    let rabbit = broker().await;
    let dir = TempDir::new("standalone-mqtt");
    let mut endpoint = Endpoint::start().await;
    let mut http = Subscriber::start(Duration::ZERO).await;
    let channel = unique("ticker");
    let topic = format!("default/{channel}");
    let standalone = start(
        &dir,
        &config(&endpoint.url(), &channel, &http.uri("/live")),
        rabbit,
    )
    .await;
    let mut mqtt_sub = RemoteSubscriber::mqtt(rabbit, &topic).await;

    // Endpoint messages and HTTP publishes reach the MQTT subscriber once
    // each (and the HTTP subscriber, as before).
    let from_endpoint: Vec<String> = numbered("endpoint");
    let from_http: Vec<String> = numbered("http");
    send_from_endpoint_and_http(&mut endpoint, &standalone, &topic, &from_endpoint, &from_http).await;
    let first: Vec<String> = from_endpoint.iter().chain(&from_http).cloned().collect();
    let got = remote_until(&mut mqtt_sub, &topic, &first).await;
    assert_eq!(counts(&got), once_each(&first), "the MQTT subscriber, once each");
    assert_eq!(
        counts(&http_received(&mut http, &first).await),
        once_each(&first),
        "the HTTP subscriber, once each"
    );
    assert_eq!(
        counts(&endpoint_received(&mut endpoint, &from_http).await),
        once_each(&from_http),
        "the endpoint gets the publishes once each, never its own messages"
    );

    // An MQTT publish is a channel publish: the HTTP subscriber, the
    // bridged endpoint and MQTT subscribers get it once each.
    let from_mqtt: Vec<String> = numbered("mqtt");
    mqtt_publish(rabbit, &topic, &from_mqtt).await;
    assert_http_and_endpoint_get_once_each(&mut http, &mut endpoint, &from_mqtt).await;
    let got = remote_until(&mut mqtt_sub, &topic, &from_mqtt).await;
    assert_eq!(
        counts(&got),
        once_each(&from_mqtt),
        "the MQTT subscriber, once each"
    );

    // Standalone's WebSocket clients of the channel get MQTT publishes
    // too, and everything else once, as before.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/channels/{topic}", standalone.addr))
        .await
        .expect("WebSocket upgrade");
    let from_mqtt_again: Vec<String> = (0..3).map(|i| format!("{{\"mqtt-ws\":{i}}}")).collect();
    mqtt_publish(rabbit, &topic, &from_mqtt_again).await;
    let (status, json) = standalone.publish(&topic, "{\"http-ws\":0}".to_string()).await;
    assert_eq!(status, 202, "{json}");
    endpoint.send("{\"endpoint-ws\":0}").await;
    let mut expected = from_mqtt_again.clone();
    expected.extend(["{\"http-ws\":0}".to_string(), "{\"endpoint-ws\":0}".to_string()]);
    let mut got: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let done = expected.iter().all(|e| got.contains(e));
        let until = if done {
            tokio::time::Instant::now() + QUIET
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(Frame::Text(text)))) => got.push(text.to_string()),
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("the WebSocket client ended: {other:?}"),
            Err(_) if done => break,
            Err(_) => panic!("the WebSocket client got only {got:?} of {expected:?}"),
        }
    }
    assert_eq!(
        counts(&got),
        once_each(&expected),
        "the WebSocket client, once each"
    );

    // Another channel's topic carries none of it.
    let other = unique("other");
    let mut other_sub = RemoteSubscriber::mqtt(rabbit, &format!("default/{other}")).await;
    endpoint.send("{\"after\":1}").await;
    remote_until(&mut mqtt_sub, &topic, &["{\"after\":1}".to_string()]).await;
    assert!(
        other_sub
            .receive(&format!("default/{other}"), QUIET)
            .await
            .is_empty()
    );
    drop(standalone);
}

/// Every payload the MQTT subscriber gets until it has `expected` and
/// [`QUIET`] passed.
async fn remote_until(sub: &mut RemoteSubscriber, topic: &str, expected: &[String]) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut got: Vec<String> = Vec::new();
    while !expected.iter().all(|e| got.contains(e)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscriber got only {got:?} of {expected:?}"
        );
        got.extend(sub.receive(topic, Duration::from_millis(500)).await);
    }
    got.extend(sub.receive(topic, QUIET).await);
    got
}

#[tokio::test]
async fn an_amqp_client_on_amq_topic_gets_the_whole_channel_and_its_publish_reaches_everyone_once() {
    let rabbit = broker().await;
    let dir = TempDir::new("standalone-amqp");
    let mut endpoint = Endpoint::start().await;
    let mut http = Subscriber::start(Duration::ZERO).await;
    let channel = unique("orders");
    let topic = format!("default/{channel}");
    let key = format!("default.{channel}");
    let standalone = start(
        &dir,
        &config(&endpoint.url(), &channel, &http.uri("/live")),
        rabbit,
    )
    .await;
    let mut amqp_sub = RemoteSubscriber::amqp(rabbit, &key).await;
    let mut mqtt_sub = RemoteSubscriber::mqtt(rabbit, &topic).await;

    // Endpoint messages and HTTP publishes reach the AMQP client's queue
    // once each, under the channel's routing key.
    let from_endpoint: Vec<String> = numbered("endpoint");
    let from_http: Vec<String> = numbered("http");
    send_from_endpoint_and_http(&mut endpoint, &standalone, &topic, &from_endpoint, &from_http).await;
    let first: Vec<String> = from_endpoint.iter().chain(&from_http).cloned().collect();
    let got = remote_until(&mut amqp_sub, &key, &first).await;
    assert_eq!(counts(&got), once_each(&first), "the AMQP subscriber, once each");
    assert_eq!(
        counts(&http_received(&mut http, &first).await),
        once_each(&first),
        "the HTTP subscriber, once each"
    );
    assert_eq!(
        counts(&endpoint_received(&mut endpoint, &from_http).await),
        once_each(&from_http),
        "the endpoint gets the publishes once each, never its own messages"
    );

    // An AMQP publish to amq.topic is a channel publish: the HTTP
    // subscriber, the bridged endpoint, the AMQP and the MQTT subscribers
    // get it once each.
    let from_amqp: Vec<String> = numbered("amqp");
    amqp_publish(rabbit, &key, &from_amqp).await;
    assert_http_and_endpoint_get_once_each(&mut http, &mut endpoint, &from_amqp).await;
    let got = remote_until(&mut amqp_sub, &key, &from_amqp).await;
    assert_eq!(
        counts(&got),
        once_each(&from_amqp),
        "the AMQP subscriber, once each"
    );
    let everything: Vec<String> = first.iter().chain(&from_amqp).cloned().collect();
    let got = remote_until(&mut mqtt_sub, &topic, &everything).await;
    assert_eq!(
        counts(&got),
        once_each(&everything),
        "the MQTT subscriber, once each"
    );
    drop(standalone);
}

/// Whether a paho-mqtt subscriber of `topic` is refused (a SUBACK failure
/// or a closed connection).
async fn mqtt_subscribe_refused(rabbit: &RabbitMq, topic: &str) -> String {
    let out = tokio::time::timeout(PATIENCE, mqtt(rabbit, &["subscribe", topic]).output())
        .await
        .expect("the refused subscriber ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success() && !stdout.contains("subscribed\n"),
        "{topic}: {stdout}"
    );
    stdout
}

#[tokio::test]
async fn anonymous_mqtt_clients_get_what_the_channel_flags_allow_and_nothing_else() {
    // Standalone serves the broker's HTTP auth backend: its address is
    // chosen before the broker starts.
    let addr = standalone_support::free_addr();
    let rabbit = RabbitMq::start_with_mqtt_auth(&format!("http://{addr}"))
        .await
        .expect("test RabbitMQ with MQTT and the HTTP auth backend");
    let dir = TempDir::new("standalone-mqtt-auth");
    let mut endpoint = Endpoint::start().await;
    let mut watched = Subscriber::start(Duration::ZERO).await;
    let mut inbox = Subscriber::start(Duration::ZERO).await;
    // `watched` may be subscribed to, not published to; `inbox` the reverse.
    let yaml = standalone_support::bridged_channel_yaml_with(
        &endpoint.url(),
        "watched",
        "{backend: rabbitmq, allowAnonymousSubscribe: true}",
    ) + &standalone_support::subscription_yaml("watched-live", "watched", &watched.uri("/w"), "")
        + "---\napiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: inbox}\n\
           spec: {backend: rabbitmq, allowAnonymousPublish: true}\n"
        + &standalone_support::subscription_yaml("inbox-live", "inbox", &inbox.uri("/i"), "")
        + "---\napiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: local}\n\
           spec: {allowAnonymousSubscribe: true, allowAnonymousPublish: true}\n";
    let config = dir.write("config.yaml", &yaml);
    let url = dir.write("rabbitmq-url", &format!("{}\n", rabbit.amqp_url()));
    let standalone = Standalone::start_on(
        addr,
        &[&config],
        &dir.0,
        &["--rabbitmq-url-file", url.to_str().unwrap()],
    )
    .await;
    wait_ready(&standalone).await;

    // Subscribing where allowAnonymousSubscribe is true works.
    let mut sub = RemoteSubscriber::mqtt(&rabbit, "default/watched").await;
    endpoint.send("{\"tick\":1}").await;
    let got = remote_until(&mut sub, "default/watched", &["{\"tick\":1}".to_string()]).await;
    assert_eq!(got, ["{\"tick\":1}"]);

    // Nowhere else: a channel without the flag, a memory channel, one that
    // does not exist, wildcards.
    for topic in [
        "default/inbox",
        "default/local",
        "default/nothing",
        "#",
        "default/+",
    ] {
        mqtt_subscribe_refused(&rabbit, topic).await;
    }

    // Publishing where allowAnonymousPublish is true is a channel publish.
    mqtt_publish(&rabbit, "default/inbox", &["{\"order\":1}".to_string()]).await;
    assert_eq!(
        counts(&http_received(&mut inbox, &["{\"order\":1}".to_string()]).await),
        once_each(&["{\"order\":1}".to_string()])
    );

    // Not where it is false: the broker closes the connection, and nothing
    // is delivered.
    for topic in ["default/watched", "default/local", "default/nothing"] {
        let out = tokio::time::timeout(
            PATIENCE,
            mqtt(&rabbit, &["publish", topic, "{\"forged\":1}"]).output(),
        )
        .await
        .expect("the refused publisher ends")
        .unwrap();
        assert!(
            !out.status.success(),
            "{topic}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(
        watched
            .drain(QUIET)
            .await
            .iter()
            .all(|d| !d.body.contains("forged"))
    );
    assert!(endpoint.next(QUIET).await.is_none(), "the endpoint gets nothing");
    assert!(sub.receive("default/watched", QUIET).await.is_empty());
    drop(standalone);
}

/// MQTT over WebSocket (RabbitMQ's `rabbitmq_web_mqtt`, what browsers and
/// some devices use): a subscriber there gets the channel's endpoint
/// messages and HTTP publishes once each, and its publish reaches the HTTP
/// subscriber and the endpoint once each.
#[tokio::test]
async fn an_mqtt_over_websocket_client_subscribes_and_publishes_like_any_mqtt_client() {
    let rabbit = broker().await;
    let dir = TempDir::new("standalone-web-mqtt");
    let mut endpoint = Endpoint::start().await;
    let mut http = Subscriber::start(Duration::ZERO).await;
    let channel = unique("ticker");
    let topic = format!("default/{channel}");
    let standalone = start(
        &dir,
        &config(&endpoint.url(), &channel, &http.uri("/live")),
        rabbit,
    )
    .await;
    let mut sub = RemoteSubscriber::start(mqtt_over_websocket(rabbit, &["subscribe", &topic])).await;

    let from_endpoint: Vec<String> = numbered("endpoint");
    let from_http: Vec<String> = numbered("http");
    send_from_endpoint_and_http(&mut endpoint, &standalone, &topic, &from_endpoint, &from_http).await;
    let first: Vec<String> = from_endpoint.iter().chain(&from_http).cloned().collect();
    let got = remote_until(&mut sub, &topic, &first).await;
    assert_eq!(counts(&got), once_each(&first), "over a WebSocket, once each");
    assert_eq!(counts(&http_received(&mut http, &first).await), once_each(&first));
    assert_eq!(
        counts(&endpoint_received(&mut endpoint, &from_http).await),
        once_each(&from_http)
    );

    let from_web: Vec<String> = numbered("web-mqtt");
    let mut args = vec!["publish", topic.as_str()];
    args.extend(from_web.iter().map(String::as_str));
    run(mqtt_over_websocket(rabbit, &args)).await;
    assert_http_and_endpoint_get_once_each(&mut http, &mut endpoint, &from_web).await;
}
