//! The gateway's side of `backend: rabbitmq` Channels, on the real API
//! server with real ServiceAccount tokens and a real RabbitMQ: the chart is
//! rendered with helm for a broker (`broker.existingSecret`), applied, the
//! broker's Secret written, and the gateway run from its Deployment's pod
//! template (the URL read from the mounted Secret, as in a pod). No
//! controller and no worker: a rabbitmq publish needs neither.
//!
//! - a publish is answered 202 only once the broker confirmed it, and is in
//!   a Subscription's queue with its CloudEvents attributes; a retry with
//!   the same Idempotency-Key is not written again;
//! - with the broker killed a publish gets 503 `BrokerUnavailable` (JSON,
//!   Retry-After) while `/readyz` stays 200 (memory channels still work),
//!   and once the broker is back publishes are accepted again;
//! - WebSocket clients (one channel per connection, and multiplexed) get an
//!   endpoint message written to the channel's exchange and an HTTP publish
//!   through the gateway, once each, through the replica's own queue, which
//!   exists only while the replica has clients of the channel;
//! - a `memory` channel still refuses remote subscribers (409
//!   `ChannelNotShared`); a gateway without a broker answers 503 `NoBroker`.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use serde_json::{Value, json};
use tokio::sync::{OnceCell, mpsc};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as Frame};
use wsbridge_broker::topology::Backlog;
use wsbridge_broker::{Broker, BrokerOptions, BrokerUrl, ConsumerHandle, ConsumerSpec, Publisher};
use wsbridge_core::{ChannelKey, ObjectKey};
use wsbridge_dataplane::delivery::Settlement;
use wsbridge_dataplane::{Message, Origin, Payload};

use support::pods::{LocalPod, run_pod_template};
use support::rabbitmq::RabbitMq;

/// How long anything here may take on a loaded machine.
const WAIT: Duration = Duration::from_secs(90);

type WsClient = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A gateway installed from the chart, running from its pod template.
struct Gateway {
    addr: SocketAddr,
    pod: std::sync::Mutex<LocalPod>,
}

impl Gateway {
    fn logs(&self) -> String {
        self.pod.lock().unwrap().logs()
    }
}

/// Renders the chart as release `release` in `namespace` (with the broker's
/// URL in Secret `wsbridge-broker` when `broker`), applies it with that
/// Secret and the send key Secret the controller would create, and starts
/// the gateway from its Deployment's pod template.
async fn install(release: &str, namespace: &str, broker: Option<&str>) -> Result<Gateway> {
    let cp = support::shared().await;
    let client = cp.client();
    support::install_crds(&client).await?;
    support::apply_yaml(
        &client,
        &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n"),
        None,
    )
    .await?;
    let mut secrets = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {release}-send-key}}\nstringData: {{key: '{}'}}\n",
        support::controlplane::random_hex(32)
    );
    if let Some(url) = broker {
        secrets.push_str(&format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: wsbridge-broker}}\nstringData: {{url: '{url}'}}\n"
        ));
    }
    support::apply_yaml(&client, &secrets, Some(namespace)).await?;

    let mut args = vec![
        "template",
        release,
        "charts/wsbridge",
        "-n",
        namespace,
        "--skip-crds",
    ];
    if broker.is_some() {
        args.extend(["--set", "broker.existingSecret=wsbridge-broker"]);
    }
    let manifests = helm(&args)?;
    support::apply_yaml(&client, &manifests, Some(namespace)).await?;

    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(&format!("{release}-gateway"))
        .await
        .context("the gateway's Deployment")?;
    let args = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.args.clone())
        .unwrap_or_default();
    assert_eq!(
        args.iter().any(|a| a.starts_with("--rabbitmq-url-file")),
        broker.is_some(),
        "the gateway reads the broker's URL from the mounted Secret exactly when there is one: {args:?}"
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", support::http::free_port()).parse()?;
    let listen = addr.to_string();
    let pod = run_pod_template(cp, &client, &deployment, &[("WSBRIDGE_LISTEN", listen.as_str())]).await?;
    support::eventually(WAIT, "gateway /readyz", || async move {
        Ok(support::http::get(addr, "/readyz")
            .await
            .ok()
            .filter(|(code, _)| *code == 200))
    })
    .await
    .with_context(|| format!("gateway log:\n{}", pod.logs()))?;
    Ok(Gateway {
        addr,
        pod: std::sync::Mutex::new(pod),
    })
}

/// `target/tools/bin/helm` (built by `tests/tools/build.sh` when absent),
/// with its own config, cache and data folders, from the repository root.
fn helm(args: &[&str]) -> Result<String> {
    let repo = support::binaries::repo_root();
    let target = support::binaries::target_dir();
    let helm = match std::env::var_os("WSBRIDGE_TOOLS_BIN") {
        Some(dir) if !dir.is_empty() => std::path::PathBuf::from(dir),
        _ => target.join("tools/bin"),
    }
    .join("helm");
    if !helm.exists() {
        let built = std::process::Command::new("bash")
            .arg(repo.join("tests/tools/build.sh"))
            .arg("helm")
            .env("CARGO_TARGET_DIR", &target)
            .status()?;
        anyhow::ensure!(built.success(), "tests/tools/build.sh helm failed");
    }
    let home = target.join("tools/helm-home");
    let out = std::process::Command::new(&helm)
        .current_dir(&repo)
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .args(args)
        .output()
        .context("running helm")?;
    if !out.status.success() {
        bail!("helm {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The installation most tests share: release `wsbridge` in
/// `wsbridge-system`, on this binary's shared broker.
async fn gateway() -> &'static Gateway {
    static GATEWAY: OnceCell<Gateway> = OnceCell::const_new();
    GATEWAY
        .get_or_init(|| async {
            let broker = support::rabbitmq::shared().await;
            install("wsbridge", "wsbridge-system", Some(&broker.amqp_url()))
                .await
                .expect("installing the gateway with a broker")
        })
        .await
}

/// One POST with its full answer (headers included).
async fn post(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Result<support::http::Answer> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (k, v) in extra {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    support::http::exchange(&mut stream, &bytes).await
}

fn json_of(answer: &support::http::Answer) -> Value {
    serde_json::from_str(&answer.body).unwrap_or(Value::Null)
}

/// Publishes until the gateway knows the channel (not 404), and returns
/// the first other answer.
async fn publish_when_known(
    addr: SocketAddr,
    channel: &str,
    token: Option<&str>,
    body: &[u8],
) -> Result<support::http::Answer> {
    let path = format!("/channels/{channel}");
    support::eventually(WAIT, &format!("the gateway knows {channel}"), || {
        let path = path.clone();
        async move {
            let answer = post(addr, &path, token, &[], body).await?;
            Ok((answer.status != 404).then_some(answer))
        }
    })
    .await
}

/// A connection to the test broker of our own, with what a Subscription's
/// backlog holds arriving on a channel.
struct Backlogged {
    _broker: Broker,
    _consumer: ConsumerHandle,
    messages: mpsc::UnboundedReceiver<Message>,
}

/// Declares `subscription`'s queue on `channel` (the controller's job in a
/// cluster; `topology::declare_subscription`, which the consumer calls
/// before it consumes) and consumes it.
async fn backlog(url: &str, channel: &ChannelKey, subscription: &ObjectKey) -> Backlogged {
    let broker = Broker::connect(
        BrokerUrl::parse(url).expect("the test broker's URL"),
        BrokerOptions::default(),
    );
    let (tx, messages) = mpsc::unbounded_channel();
    let consumer = ConsumerHandle::spawn(
        broker.clone(),
        ConsumerSpec {
            channel: channel.clone(),
            subscription: subscription.clone(),
            backlog: Backlog::default(),
            prefetch: 16,
            single_active_consumer: false,
        },
        Arc::new(move |msg: Arc<Message>| {
            let _ = tx.send((*msg).clone());
            msg.settle(Settlement::Delivered);
            true
        }),
    );
    tokio::time::timeout(WAIT, consumer.consuming())
        .await
        .expect("the Subscription's queue is consumed");
    Backlogged {
        _broker: broker,
        _consumer: consumer,
        messages,
    }
}

async fn next_message(backlog: &mut Backlogged) -> Message {
    tokio::time::timeout(WAIT, backlog.messages.recv())
        .await
        .expect("a message in the backlog in time")
        .expect("the consumer is running")
}

/// Channels, roles and tokens of one test namespace: a publisher allowed to
/// publish on and a subscriber allowed to subscribe to `channel`.
async fn namespace_with(prefix: &str, yaml: &str, channel: &str) -> Result<(String, String, String)> {
    let cp = support::shared().await;
    let client = cp.client();
    let ns = support::create_namespace(&client, prefix).await?;
    let mut all = yaml.replace("NAMESPACE", &ns);
    for role in ["publisher-role.yaml", "subscriber-role.yaml"] {
        all.push_str("---\n");
        all.push_str(&support::example_role(role, channel, &ns)?);
    }
    support::apply_yaml(&client, &all, Some(&ns)).await?;
    let publisher = support::service_account_token(&client, &ns, "publisher").await?;
    let subscriber = support::service_account_token(&client, &ns, "subscriber").await?;
    Ok((ns, publisher, subscriber))
}

fn rabbitmq_channel(name: &str) -> String {
    format!(
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {{name: {name}, namespace: NAMESPACE}}\nspec: {{backend: rabbitmq}}\n"
    )
}

#[tokio::test]
async fn a_publish_is_accepted_once_the_broker_confirmed_it_and_lands_in_each_subscription_queue()
-> Result<()> {
    let gw = gateway().await;
    let broker = support::rabbitmq::shared().await;
    let (ns, publisher, _) = namespace_with("gw-durable", &rabbitmq_channel("orders"), "orders").await?;
    let channel = ChannelKey::new(ns.clone(), "orders");
    let mut audit = backlog(&broker.amqp_url(), &channel, &ObjectKey::new(ns.clone(), "audit")).await;

    // Without a token, and with one that may not publish: refused as before.
    let first = publish_when_known(gw.addr, &format!("{ns}/orders"), None, b"{}").await?;
    assert_eq!(first.status, 401, "{}", first.body);
    let client = support::shared().await.client();
    support::ensure_service_account(&client, &ns, "stranger").await?;
    let stranger = support::service_account_token(&client, &ns, "stranger").await?;
    let path = format!("/channels/{ns}/orders");
    let denied = post(gw.addr, &path, Some(&stranger), &[], b"{}").await?;
    assert_eq!(denied.status, 403, "{}", denied.body);

    let body = br#"{"order":1}"#;
    let accepted = post(
        gw.addr,
        &path,
        Some(&publisher),
        &[("Idempotency-Key", "order-1")],
        body,
    )
    .await?;
    let answer = json_of(&accepted);
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert_eq!(answer["accepted"], true, "{answer}");
    assert_eq!(answer["durable"], true, "{answer}");
    let id = answer["id"].as_str().context("an id")?.to_owned();

    let got = next_message(&mut audit).await;
    assert_eq!(got.id(), id, "the 202's id is the message's ce-id");
    assert_eq!(got.payload(), &Payload::text(r#"{"order":1}"#));
    assert_eq!(got.origin(), Origin::Published);
    assert_eq!(got.source(), format!("/namespaces/{ns}/channels/orders"));
    assert_eq!(got.content_type(), "application/json");
    let fresh = Message::new(Payload::text("x"), Origin::Published, "/x");
    assert_eq!(got.event_type(), fresh.event_type());

    // A retry of the same publish is answered with the same id and not
    // written again: the next message in the queue is the next publish.
    let retried = post(
        gw.addr,
        &path,
        Some(&publisher),
        &[("Idempotency-Key", "order-1")],
        body,
    )
    .await?;
    assert_eq!(retried.status, 202, "{}", retried.body);
    assert_eq!(json_of(&retried)["id"], id.as_str());
    let next = post(gw.addr, &path, Some(&publisher), &[], br#"{"order":2}"#).await?;
    assert_eq!(next.status, 202, "{}", next.body);
    let got = next_message(&mut audit).await;
    assert_eq!(
        got.payload(),
        &Payload::text(r#"{"order":2}"#),
        "no duplicate before it"
    );
    assert_eq!(got.id(), json_of(&next)["id"].as_str().unwrap());

    let metrics = support::http::get(gw.addr, "/metrics").await?.1;
    let confirmed = support::metric_sum(
        &metrics,
        "wsbridge_broker_publishes_total",
        &[&format!("channel=\"{ns}/orders\""), "result=\"confirmed\""],
    );
    assert_eq!(confirmed, 2.0, "{metrics}");
    assert_eq!(
        support::metric_sum(&metrics, "wsbridge_broker_connected", &[]),
        1.0,
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn with_the_broker_killed_a_publish_gets_503_and_after_it_returns_202_again() -> Result<()> {
    let broker = RabbitMq::start().await?;
    let gw = install("wsbridge-kill", "wsbridge-kill-system", Some(&broker.amqp_url())).await?;
    let (ns, publisher, subscriber) =
        namespace_with("gw-kill", &rabbitmq_channel("alerts"), "alerts").await?;
    let path = format!("/channels/{ns}/alerts");
    let first = publish_when_known(gw.addr, &format!("{ns}/alerts"), Some(&publisher), b"{}").await?;
    assert_eq!(first.status, 202, "{}", first.body);
    // A WebSocket client that stays connected through the outage.
    let (mut client, _) = tokio_tungstenite::connect_async(ws_request(gw.addr, &path, &subscriber)).await?;
    let queue = format!("queue=\"wsbridge.gateway.{ns}.alerts\"");
    let consuming = |want: f64| {
        let queue = queue.clone();
        async move {
            support::eventually(WAIT, &format!("wsbridge_broker_consuming {want}"), || {
                let queue = queue.clone();
                async move {
                    let metrics = support::http::get(gw.addr, "/metrics").await?.1;
                    Ok(
                        (support::metric_sum(&metrics, "wsbridge_broker_consuming", &[&queue]) == want)
                            .then_some(()),
                    )
                }
            })
            .await
        }
    };
    consuming(1.0).await?;

    broker.kill()?;
    let accepted_while_down = std::sync::atomic::AtomicBool::new(false);
    let refused = support::eventually(WAIT, "a publish refused while the broker is down", || {
        let (path, publisher, accepted) = (path.clone(), publisher.clone(), &accepted_while_down);
        async move {
            let answer = post(gw.addr, &path, Some(&publisher), &[], br#"{"down":true}"#).await?;
            if answer.status == 202 {
                accepted.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok((answer.status == 503).then_some(answer))
        }
    })
    .await?;
    assert!(
        !accepted_while_down.into_inner(),
        "no publish is accepted with the broker killed"
    );
    let reason = json_of(&refused);
    assert_eq!(reason["reason"], "BrokerUnavailable", "{}", refused.body);
    assert_eq!(reason["code"], 503, "{reason}");
    assert!(refused.header("retry-after").is_some(), "{}", refused.head);
    // Ready all along: the gateway serves memory channels without a broker.
    assert_eq!(support::http::get(gw.addr, "/readyz").await?.0, 200);
    support::eventually(WAIT, "wsbridge_broker_connected 0", || async move {
        let metrics = support::http::get(gw.addr, "/metrics").await?.1;
        Ok((support::metric_sum(&metrics, "wsbridge_broker_connected", &[]) == 0.0).then_some(()))
    })
    .await?;

    consuming(0.0).await?;

    broker.start_again().await?;
    // The replica's listener declares its queue again and resumes.
    consuming(1.0).await?;
    let back = support::eventually(WAIT, "a publish accepted once the broker is back", || {
        let (path, publisher) = (path.clone(), publisher.clone());
        async move {
            let answer = post(gw.addr, &path, Some(&publisher), &[], br#"{"up":true}"#).await?;
            Ok((answer.status == 202).then_some(answer))
        }
    })
    .await
    .with_context(|| format!("gateway log:\n{}", gw.logs()))?;
    assert_eq!(json_of(&back)["durable"], true, "{}", back.body);
    // The client, connected all along, gets it: the first publish since it
    // connected that was accepted.
    assert_eq!(next_text(&mut client).await, r#"{"up":true}"#);
    let metrics = support::http::get(gw.addr, "/metrics").await?.1;
    assert!(
        support::metric_sum(&metrics, "wsbridge_broker_connections", &[]) >= 2.0,
        "reconnected: {metrics}"
    );
    assert!(
        !gw.logs().contains(broker.password()),
        "the broker's password is never logged"
    );
    Ok(())
}

/// A WebSocket subscription at `path`, once the gateway knows the channel
/// (404 before).
async fn subscribe_when_known(addr: SocketAddr, path: &str, token: &str) -> Result<WsClient> {
    support::eventually(WAIT, "a WebSocket subscription", || async move {
        match tokio_tungstenite::connect_async(ws_request(addr, path, token)).await {
            Ok((ws, _)) => Ok(Some(ws)),
            Err(WsError::Http(r)) if r.status() == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await
}

fn ws_request(addr: SocketAddr, path: &str, token: &str) -> http::Request<()> {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The next text frame (pings skipped).
async fn next_text(ws: &mut WsClient) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Frame::Text(text))) => return text.as_str().to_owned(),
            Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The code and reason of the close frame that comes next (pings skipped).
async fn next_close(ws: &mut WsClient) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Frame::Close(Some(close)))) => {
                return (close.code.into(), close.reason.as_str().to_owned());
            }
            Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// The next pushed message of a multiplexed connection, as its data.
async fn next_pushed(ws: &mut WsClient) -> String {
    loop {
        let frame: Value = serde_json::from_str(&next_text(ws).await).unwrap();
        if frame.get("result").is_some() || frame.get("error").is_some() {
            continue; // a reply to a command
        }
        assert_eq!(frame["method"], "Message", "{frame}");
        return match &frame["params"]["message"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
    }
}

#[tokio::test]
async fn websocket_clients_of_a_rabbitmq_channel_get_endpoint_messages_and_publishes_once_each() -> Result<()>
{
    let gw = gateway().await;
    let broker = support::rabbitmq::shared().await;
    let (ns, publisher, subscriber) =
        namespace_with("gw-clients", &rabbitmq_channel("ticker"), "ticker").await?;
    let channel = ChannelKey::new(ns.clone(), "ticker");
    let path = format!("/channels/{ns}/ticker");

    // Subscribed once the gateway knows the channel (404 before).
    let mut single = subscribe_when_known(gw.addr, &path, &subscriber).await?;
    let (mut multiplexed, _) =
        tokio_tungstenite::connect_async(ws_request(gw.addr, &format!("/ws/{ns}"), &subscriber)).await?;
    multiplexed
        .send(Frame::text(
            json!({"method":"Subscribe","params":{"channel":"ticker"},"id":1}).to_string(),
        ))
        .await?;
    let reply: Value = serde_json::from_str(&next_text(&mut multiplexed).await)?;
    assert!(reply.get("error").is_none(), "{reply}");

    // The replica consumes its queue of the channel while it has clients.
    let queue = format!("queue=\"wsbridge.gateway.{ns}.ticker\"");
    support::eventually(WAIT, "the replica's listener consumes", || {
        let queue = queue.clone();
        async move {
            let metrics = support::http::get(gw.addr, "/metrics").await?.1;
            Ok((support::metric_sum(&metrics, "wsbridge_broker_consuming", &[&queue]) == 1.0).then_some(()))
        }
    })
    .await?;

    // An endpoint message, as a worker writes it to the channel's exchange.
    let endpoint = Publisher::new(
        Broker::connect(BrokerUrl::parse(&broker.amqp_url())?, BrokerOptions::default()),
        Duration::from_secs(30),
    );
    let from_endpoint = Message::new(
        Payload::text(r#"{"from":"endpoint"}"#),
        Origin::Endpoint,
        format!("/namespaces/{ns}/bridges/feed"),
    );
    support::eventually(WAIT, "the endpoint message confirmed", || async {
        Ok(endpoint.publish(&channel, &from_endpoint).await.ok())
    })
    .await?;
    // A publish through the gateway.
    let published = post(gw.addr, &path, Some(&publisher), &[], br#"{"from":"http"}"#).await?;
    assert_eq!(published.status, 202, "{}", published.body);
    // A publish by a WebSocket client (a publisher's multiplexed connection).
    let (mut sender, _) =
        tokio_tungstenite::connect_async(ws_request(gw.addr, &format!("/ws/{ns}"), &publisher)).await?;
    sender
        .send(Frame::text(
            json!({"method":"Publish","params":{"channel":"ticker","message":{"from":"websocket"}},"id":7})
                .to_string(),
        ))
        .await?;
    let reply: Value = serde_json::from_str(&next_text(&mut sender).await)?;
    assert!(reply["result"]["id"].is_string(), "{reply}");
    // Then a marker: each source was confirmed before the next was sent, so
    // whatever came twice would come before it.
    let marker = post(gw.addr, &path, Some(&publisher), &[], br#"{"from":"marker"}"#).await?;
    assert_eq!(marker.status, 202, "{}", marker.body);

    for (what, ws) in [("single", &mut single), ("multiplexed", &mut multiplexed)] {
        let mut seen: HashMap<String, usize> = HashMap::new();
        loop {
            let text = if what == "single" {
                next_text(ws).await
            } else {
                next_pushed(ws).await
            };
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
            let from = value["from"].as_str().unwrap_or(&text).to_owned();
            *seen.entry(from.clone()).or_default() += 1;
            if from == "marker" {
                break;
            }
        }
        assert_eq!(
            seen,
            HashMap::from([
                ("endpoint".to_string(), 1),
                ("http".to_string(), 1),
                ("websocket".to_string(), 1),
                ("marker".to_string(), 1)
            ]),
            "{what}: each message once"
        );
    }

    // The Channel deleted under connected clients: each hears it (a close
    // 1001 with why; the multiplexed connection an `Unsubscribed` push and
    // stays open), and the replica stops listening.
    let client = support::shared().await.client();
    let channels: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::discovery::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("wsbridge.io", "v1alpha1", "Channel"),
            "channels",
        ),
    );
    channels.delete("ticker", &Default::default()).await?;
    let deleted = format!("channel {ns}/ticker was deleted");
    assert_eq!(next_close(&mut single).await, (1001, deleted.clone()));
    let unsubscribed: Value = serde_json::from_str(&next_text(&mut multiplexed).await)?;
    assert_eq!(
        unsubscribed,
        json!({"method": "Unsubscribed", "params": {"channel": "ticker", "reason": "ChannelDeleted", "message": deleted}})
    );
    support::eventually(WAIT, "the listener of the deleted channel stopped", || {
        let queue = queue.clone();
        async move {
            let metrics = support::http::get(gw.addr, "/metrics").await?.1;
            Ok((!metrics.contains(&queue)).then_some(()))
        }
    })
    .await?;

    // Created again: a client that reconnects gets the next publish.
    support::apply_yaml(
        &client,
        &rabbitmq_channel("ticker").replace("NAMESPACE", &ns),
        Some(&ns),
    )
    .await?;
    let mut single = subscribe_when_known(gw.addr, &path, &subscriber).await?;
    support::eventually(WAIT, "the recreated channel's listener consumes", || {
        let queue = queue.clone();
        async move {
            let metrics = support::http::get(gw.addr, "/metrics").await?.1;
            Ok((support::metric_sum(&metrics, "wsbridge_broker_consuming", &[&queue]) == 1.0).then_some(()))
        }
    })
    .await?;
    let again = post(gw.addr, &path, Some(&publisher), &[], br#"{"from":"again"}"#).await?;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(next_text(&mut single).await, r#"{"from":"again"}"#);

    // Switched to memory, which replicas do not share: its client is told.
    channels
        .patch(
            "ticker",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"backend": "memory"}})),
        )
        .await?;
    let (code, reason) = next_close(&mut single).await;
    assert_eq!(code, 1001);
    assert!(reason.contains("switched to backend: memory"), "{reason}");

    // The last client gone, the replica stops consuming (its queue goes too).
    multiplexed.close(None).await?;
    sender.close(None).await?;
    drop((single, multiplexed, sender));
    support::eventually(WAIT, "the replica's listener stopped", || {
        let queue = queue.clone();
        async move {
            let metrics = support::http::get(gw.addr, "/metrics").await?.1;
            Ok((!metrics.contains(&queue)).then_some(()))
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_memory_channel_still_refuses_remote_subscribers() -> Result<()> {
    let gw = gateway().await;
    let yaml = "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: quotes, namespace: NAMESPACE}\nspec: {}\n";
    let (ns, _, subscriber) = namespace_with("gw-memory", yaml, "quotes").await?;
    let path = format!("/channels/{ns}/quotes");
    let (code, body) = support::eventually(WAIT, "the gateway knows the channel", || {
        let (path, subscriber) = (path.clone(), subscriber.clone());
        async move {
            match tokio_tungstenite::connect_async(ws_request(gw.addr, &path, &subscriber)).await {
                Err(WsError::Http(r)) if r.status() == 404 => Ok(None),
                Err(WsError::Http(r)) => {
                    let body: Value = serde_json::from_slice(r.body().as_deref().unwrap_or_default())
                        .unwrap_or(Value::Null);
                    Ok(Some((r.status().as_u16(), body)))
                }
                Ok(_) => bail!("the upgrade was accepted"),
                Err(e) => Err(e.into()),
            }
        }
    })
    .await?;
    assert_eq!(
        (code, body["reason"].as_str()),
        (409, Some("ChannelNotShared")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("backend: rabbitmq")
    );
    Ok(())
}

#[tokio::test]
async fn a_gateway_without_a_broker_answers_no_broker_on_a_rabbitmq_channel() -> Result<()> {
    let gw = install("wsbridge-plain", "wsbridge-plain-system", None).await?;
    let (ns, publisher, subscriber) =
        namespace_with("gw-nobroker", &rabbitmq_channel("events"), "events").await?;
    let answer = publish_when_known(gw.addr, &format!("{ns}/events"), Some(&publisher), b"{}").await?;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(json_of(&answer)["reason"], "NoBroker", "{}", answer.body);
    match tokio_tungstenite::connect_async(ws_request(
        gw.addr,
        &format!("/channels/{ns}/events"),
        &subscriber,
    ))
    .await
    {
        Err(WsError::Http(r)) => {
            let body: Value = serde_json::from_slice(r.body().as_deref().unwrap_or_default())?;
            assert_eq!(
                (r.status().as_u16(), body["reason"].as_str()),
                (503, Some("NoBroker")),
                "{body}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    Ok(())
}
