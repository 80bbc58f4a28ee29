//! MQTT clients of `backend: rabbitmq` Channels in a cluster, let in by
//! Kubernetes: a real RabbitMQ with the MQTT plugin and the HTTP auth
//! backend pointing at the gateway (`/auth/*`), wsbridge installed from the
//! chart on the real API server, paho-mqtt clients
//! (tests/peers/mqtt_client.py) with real ServiceAccount tokens as their
//! password. A token allowed to `subscribe` on a channel receives it and
//! nothing else; one allowed to `publish` publishes to every subscriber of
//! the channel (an MQTT one, and an HTTP Subscription through the
//! dispatcher); a token without rights, a bad token or someone else's user
//! name get nothing; anonymous clients get what the Channel's flags allow.

#[path = "support/python.rs"]
mod python;
mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Result;
use support::durable::DurableInstallation;
use support::peers::Subscriber;
use support::rabbitmq::RabbitMq;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tokio::sync::OnceCell;

const WAIT: Duration = Duration::from_secs(90);

const MQTT_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/mqtt_client.py");

struct World {
    broker: RabbitMq,
    installation: DurableInstallation,
}

/// The gateway's address is chosen first, the broker started asking it,
/// then wsbridge installed with the gateway there (and one dispatcher).
async fn world() -> &'static World {
    static WORLD: OnceCell<World> = OnceCell::const_new();
    WORLD
        .get_or_try_init(|| async {
            let gateway: SocketAddr = format!("127.0.0.1:{}", support::http::free_port()).parse()?;
            let broker = RabbitMq::start_with_mqtt_auth(&format!("http://{gateway}")).await?;
            let installation = support::durable::install_with(&broker.amqp_url(), 1, Some(gateway)).await?;
            Ok::<_, anyhow::Error>(World { broker, installation })
        })
        .await
        .expect("a broker asking the gateway, and wsbridge installed with it")
}

/// Who an MQTT client says it is.
#[derive(Clone, Copy)]
enum Login<'a> {
    Anonymous,
    /// User name and token.
    Token(&'a str, &'a str),
}

/// A paho-mqtt client of the broker.
fn mqtt(broker: &RabbitMq, login: Login<'_>, args: &[&str]) -> tokio::process::Command {
    let addr = broker.mqtt_addr();
    let mut command = python::python3_with(&["paho.mqtt.client"]);
    command
        .arg(MQTT_CLIENT)
        .args([addr.ip().to_string(), addr.port().to_string()])
        .args(args)
        .stdout(Stdio::piped());
    if let Login::Token(user, token) = login {
        command.env("MQTT_USERNAME", user).env("MQTT_PASSWORD", token);
    }
    command
}

/// A subscriber that the broker granted its subscription.
struct MqttSubscriber {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl MqttSubscriber {
    /// Subscribes; the first line the client prints (`subscribed`,
    /// `refused subscribe`, `refused RC`) and the subscriber when granted.
    async fn try_start(broker: &RabbitMq, login: Login<'_>, topic: &str) -> (String, Option<Self>) {
        let mut child = mqtt(broker, login, &["subscribe", topic]).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = match tokio::time::timeout(WAIT, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => format!("no answer: {other:?}"),
        };
        let granted = first == "subscribed";
        (first, granted.then_some(Self { _child: child, lines }))
    }

    /// Subscribes, again until granted (the gateway's caches catch up
    /// with the Channel).
    async fn start(broker: &RabbitMq, login: Login<'_>, topic: &str) -> Self {
        let mut last = String::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            match Self::try_start(broker, login, topic).await {
                (_, Some(subscriber)) => return subscriber,
                (first, None) => last = first,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("{topic}: never subscribed; last answer {last}");
    }

    /// The next payload on `topic`.
    async fn next(&mut self, topic: &str) -> String {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a message in time")
            .unwrap()
            .expect("the subscriber stays up");
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["topic"], topic, "{json}");
        json["payload"].as_str().unwrap().to_string()
    }
}

/// Asserts the broker refuses `login` a subscription to `topic`, saying
/// how: `refused RC` (CONNACK), `refused subscribe` (SUBACK failure) or
/// `disconnected` (RabbitMQ 3.10 closes the connection on a denied
/// subscribe; paho may see a refused CONNECT that way too, both lines
/// printed at once from its two threads).
async fn refused_subscribe(broker: &RabbitMq, login: Login<'_>, topic: &str) -> String {
    let (first, granted) = MqttSubscriber::try_start(broker, login, topic).await;
    assert!(granted.is_none(), "{topic}: the subscription was granted");
    assert!(
        first.contains("refused ") || first.contains("disconnected"),
        "{topic}: {first}"
    );
    first
}

/// Publishes `message` on `topic` at QoS 1; whether the broker took it.
async fn mqtt_publish(broker: &RabbitMq, login: Login<'_>, topic: &str, message: &str) -> bool {
    let out = tokio::time::timeout(WAIT, mqtt(broker, login, &["publish", topic, message]).output())
        .await
        .expect("the publisher ends")
        .unwrap();
    out.status.success()
}

/// `wsbridge_gateway_broker_auth_total{resource,decision}` at the gateway.
async fn counter(gateway: SocketAddr, resource: &str, decision: &str) -> Result<f64> {
    let (code, metrics) = support::http::get(gateway, "/metrics").await?;
    anyhow::ensure!(code == 200, "/metrics answered {code}");
    let series =
        format!("wsbridge_gateway_broker_auth_total{{resource=\"{resource}\",decision=\"{decision}\"}} ");
    Ok(metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(Ok(0.0), str::parse)?)
}

fn channels(ns: &str, subscriber_uri: &str) -> String {
    format!(
        r#"apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: ticker}}
spec: {{backend: rabbitmq}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: other}}
spec: {{backend: rabbitmq}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: lobby}}
spec: {{backend: rabbitmq, allowAnonymousSubscribe: true}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {{name: ticker-http}}
spec: {{channel: ticker, subscriber: {{uri: '{subscriber_uri}'}}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: subscribe-other}}
rules:
  - apiGroups: ["wsbridge.io"]
    resources: ["channels"]
    resourceNames: ["other"]
    verbs: ["subscribe"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: publisher-subscribes-to-other}}
subjects:
  - {{kind: ServiceAccount, name: publisher, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: subscribe-other}}
"#
    )
}

/// The MQTT user name of ServiceAccount `ns/name`: its Kubernetes user
/// name with each `:` written `.` (the MQTT plugin reads `vhost:user` from
/// a name with a colon).
fn mqtt_user(ns: &str, name: &str) -> String {
    format!("system.serviceaccount.{ns}.{name}")
}

/// A new namespace with the test's channels (HTTP subscriber `http`) and the
/// example subscriber and publisher Roles on `ticker`.
async fn namespace_with_channels(client: &kube::Client, prefix: &str, http: &Subscriber) -> Result<String> {
    let ns = support::create_namespace(client, prefix).await?;
    let mut yaml = channels(&ns, &http.uri.to_string());
    for role in [
        support::example_role("subscriber-role.yaml", "ticker", &ns)?,
        support::example_role("publisher-role.yaml", "ticker", &ns)?,
    ] {
        yaml.push_str("---\n");
        yaml.push_str(&role);
    }
    support::apply_yaml(client, &yaml, Some(&ns)).await?;
    Ok(ns)
}

#[tokio::test]
async fn mqtt_clients_read_and_write_rabbitmq_channels_as_kubernetes_rbac_and_the_flags_allow() -> Result<()>
{
    let world = world().await;
    let broker = &world.broker;
    let cp = support::shared().await;
    let client = cp.client();
    let mut http = Subscriber::ok().await;
    let ns = namespace_with_channels(&client, "broker-auth", &http).await?;
    support::ensure_service_account(&client, &ns, "stranger").await?;
    let subscriber = support::service_account_token(&client, &ns, "subscriber").await?;
    let publisher = support::service_account_token(&client, &ns, "publisher").await?;
    let stranger = support::service_account_token(&client, &ns, "stranger").await?;
    let (subscriber_user, publisher_user, stranger_user) = (
        mqtt_user(&ns, "subscriber"),
        mqtt_user(&ns, "publisher"),
        mqtt_user(&ns, "stranger"),
    );
    let as_subscriber = Login::Token(&subscriber_user, &subscriber);
    let as_publisher = Login::Token(&publisher_user, &publisher);
    let ticker = format!("{ns}/ticker");
    let other = format!("{ns}/other");
    let lobby = format!("{ns}/lobby");

    // The controller declared the channels' exchanges (bound to amq.topic).
    let api: kube::Api<wsbridge_api::Channel> = kube::Api::namespaced(client.clone(), &ns);
    for name in ["ticker", "other", "lobby"] {
        support::eventually(WAIT, &format!("{name} BrokerReady"), || {
            let api = api.clone();
            async move {
                let status = api.get(name).await?.status.unwrap_or_default();
                Ok(wsbridge_api::conditions::is_true(&status.conditions, "BrokerReady").then_some(()))
            }
        })
        .await?;
    }

    // ... and the HTTP Subscription's backlog, for the dispatcher.
    let backlogs = wsbridge_broker::Broker::connect(
        wsbridge_broker::BrokerUrl::parse(&broker.amqp_url())?,
        wsbridge_broker::BrokerOptions::default(),
    );
    let queue = format!("wsbridge.subscription.{ns}.ticker-http");
    support::eventually(WAIT, "the Subscription's queue", || {
        let (backlogs, queue) = (backlogs.clone(), queue.clone());
        async move { Ok(backlogs.queue_depth(&queue).await.ok()) }
    })
    .await?;

    // A token allowed to subscribe on ticker subscribes there (once the
    // gateway knows the channel); the gateway knows `other` too, where the
    // publisher's token may subscribe.
    let mut mqtt_sub = MqttSubscriber::start(broker, as_subscriber, &ticker).await;
    drop(MqttSubscriber::start(broker, as_publisher, &other).await);

    // The same subscriber token may not subscribe to another channel, nor
    // to every channel at once.
    for topic in [other.as_str(), &format!("{ns}/+"), "#", &format!("{ns}/missing")] {
        let how = refused_subscribe(broker, as_subscriber, topic).await;
        assert!(
            matches!(how.as_str(), "refused subscribe" | "disconnected"),
            "{topic}: {how}"
        );
    }
    // A valid token without rights connects, and is refused the channel.
    let how = refused_subscribe(broker, Login::Token(&stranger_user, &stranger), &ticker).await;
    assert!(
        matches!(how.as_str(), "refused subscribe" | "disconnected"),
        "{how}"
    );
    // A bad token, or a good one under another identity's name, is refused
    // at connect: the gateway denied each login.
    let gateway = world.installation.gateway.addr;
    let logins_denied = counter(gateway, "user", "deny").await?;
    for login in [
        Login::Token(&subscriber_user, "not-a-token"),
        Login::Token(&publisher_user, &subscriber),
        Login::Token("sa", &subscriber),
    ] {
        let how = refused_subscribe(broker, login, &ticker).await;
        assert_ne!(how, "refused subscribe", "refused at connect, not at subscribe");
    }
    assert!(counter(gateway, "user", "deny").await? >= logins_denied + 3.0);
    // Anonymous clients: where allowAnonymousSubscribe is set, only.
    drop(MqttSubscriber::start(broker, Login::Anonymous, &lobby).await);
    refused_subscribe(broker, Login::Anonymous, &ticker).await;

    // The same questions as a form (`auth_http.http_method = post`); the
    // broker's own queues, another vhost, a user without a token: denied.
    let ask = |path: &'static str, form: String| async move {
        let (code, answer) = support::http::request(
            gateway,
            "POST",
            path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            form.as_bytes(),
        )
        .await?;
        anyhow::ensure!(code == 200, "{path}: {code} {answer}");
        Ok::<_, anyhow::Error>(answer)
    };
    let anonymous = "username=anonymous&vhost=%2F";
    let topic = "resource=topic&name=amq.topic";
    assert_eq!(
        ask(
            "/auth/topic",
            format!("{anonymous}&{topic}&permission=read&routing_key={ns}.lobby")
        )
        .await?,
        "allow"
    );
    assert_eq!(
        ask(
            "/auth/topic",
            format!("{anonymous}&{topic}&permission=write&routing_key={ns}.lobby")
        )
        .await?,
        "deny"
    );
    assert_eq!(
        ask(
            "/auth/resource",
            format!("{anonymous}&resource=queue&name=wsbridge.subscription.{ns}.ticker-http&permission=read")
        )
        .await?,
        "deny"
    );
    assert_eq!(
        ask("/auth/vhost", "username=anonymous&vhost=other".into()).await?,
        "deny"
    );
    assert_eq!(
        ask("/auth/user", format!("username={subscriber_user}")).await?,
        "deny"
    );

    // A token allowed to publish on ticker does: the MQTT subscriber and
    // the HTTP Subscription (through the dispatcher) get it.
    assert!(mqtt_publish(broker, as_publisher, &ticker, "{\"price\":1}").await);
    assert_eq!(mqtt_sub.next(&ticker).await, "{\"price\":1}");
    let delivered = tokio::time::timeout(WAIT, http.received.recv())
        .await
        .expect("the HTTP subscriber gets the MQTT publish")
        .expect("subscriber up");
    assert_eq!(String::from_utf8_lossy(&delivered.body), "{\"price\":1}");
    // The subscriber's token may not publish there (the broker closes the
    // connection), nor may anonymous clients; nothing more arrives.
    assert!(!mqtt_publish(broker, as_subscriber, &ticker, "{\"forged\":1}").await);
    assert!(!mqtt_publish(broker, Login::Anonymous, &ticker, "{\"forged\":2}").await);
    assert!(mqtt_publish(broker, as_publisher, &ticker, "{\"price\":2}").await);
    assert_eq!(mqtt_sub.next(&ticker).await, "{\"price\":2}");

    // Every answer counted; no token in the gateway's log.
    for (resource, decision) in [
        ("user", "allow"),
        ("vhost", "allow"),
        ("resource", "allow"),
        ("topic", "allow"),
        ("topic", "deny"),
    ] {
        assert!(
            counter(gateway, resource, decision).await? > 0.0,
            "{resource} {decision}"
        );
    }
    let logs = world.installation.gateway.pod.logs();
    for token in [&subscriber, &publisher, &stranger] {
        assert!(!logs.contains(token.as_str()), "a token in the gateway's log");
    }
    Ok(())
}

const AMQP_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/amqp_client.py");

/// A pika subscriber of `ns.channel` on `amq.topic` (a server-named
/// exclusive queue bound with the channel's key), logged in as
/// ServiceAccount `ns/name` with `token`: its first line (`subscribed`
/// once the broker took the binding), the process and its output.
async fn amqp_subscriber(
    broker: &RabbitMq,
    ns: &str,
    name: &str,
    token: &str,
    channel: &str,
) -> (String, Child, Lines<BufReader<ChildStdout>>) {
    // Kubernetes' own user name: AMQP has no `vhost:user` reading of a colon.
    let user = format!("system%3Aserviceaccount%3A{ns}%3A{name}");
    let url = format!("amqp://{user}:{token}@{}/%2f", broker.amqp_addr());
    let mut child = python::python3_with(&["pika"])
        .arg(AMQP_CLIENT)
        .args(["subscribe", "amq.topic", &format!("{ns}.{channel}")])
        .env("AMQP_URL", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = match tokio::time::timeout(WAIT, lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        other => format!("no answer: {other:?}"),
    };
    (first, child, lines)
}

/// AMQP 0-9-1 clients log in with a token too: a token allowed to
/// `subscribe` binds its own server-named queue to the channel's key and
/// gets an MQTT client's publish; the same token cannot bind another
/// channel's key (the broker refuses the binding: a topic read the gateway
/// denied).
#[tokio::test]
async fn amqp_clients_subscribe_with_a_token_where_rbac_allows() -> Result<()> {
    let world = world().await;
    let broker = &world.broker;
    let client = support::shared().await.client();
    let http = Subscriber::ok().await;
    let ns = namespace_with_channels(&client, "broker-auth-amqp", &http).await?;
    let subscriber = support::service_account_token(&client, &ns, "subscriber").await?;
    let publisher = support::service_account_token(&client, &ns, "publisher").await?;
    let publisher_user = mqtt_user(&ns, "publisher");

    // Bound once the gateway knows the channel (its caches catch up).
    let deadline = tokio::time::Instant::now() + WAIT;
    let (_child, mut lines) = loop {
        let (first, child, lines) = amqp_subscriber(broker, &ns, "subscriber", &subscriber, "ticker").await;
        if first == "subscribed" {
            break (child, lines);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never subscribed: {first}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let body = format!("amqp-{ns}");
    assert!(
        mqtt_publish(
            broker,
            Login::Token(&publisher_user, &publisher),
            &format!("{ns}/ticker"),
            &body
        )
        .await,
        "the publisher's token publishes"
    );
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("a message in time")?
        .expect("the subscriber stays up");
    let json: serde_json::Value = serde_json::from_str(&line)?;
    assert_eq!(json["payload"], body.as_str(), "{json}");
    assert_eq!(json["topic"], format!("{ns}.ticker"), "{json}");

    // Not on a channel the token may not subscribe to.
    let (first, mut child, _) = amqp_subscriber(broker, &ns, "subscriber", &subscriber, "other").await;
    assert_ne!(first, "subscribed", "bound to a channel without the right");
    let status = tokio::time::timeout(WAIT, child.wait()).await??;
    assert!(!status.success(), "the refused client ends with an error");
    Ok(())
}
