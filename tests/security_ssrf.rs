//! The outbound destination policy (SSRF guard): the controller refuses
//! denied subscriber, dead-letter and endpoint addresses with
//! `Ready=False`/`DestinationDenied` on the real API server; the data plane
//! refuses them at connect time on the *resolved* addresses, with real
//! sockets. 169.254.169.254 cannot be bound here, so the connect-time tests
//! deny loopback addresses instead (`127.0.0.2/32`, and `localhost`, a name
//! that resolves to loopback) and prove that not even a TCP connection is
//! made.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::wait_until;

use anyhow::Result;
use kube::Api;
use support::peers::{ServerOpts, Subscriber, WsServer};
use tokio::net::TcpListener;
use wsbridge_api::{Endpoint, Subscription, conditions};
use wsbridge_core::ChannelKey;
use wsbridge_dataplane::delivery::{DeliveryEngine, DeliveryPolicy, EngineConfig, SubscriberSpec};
use wsbridge_dataplane::endpoint::{ConnectionState, EndpointConfig, EndpointHandle, EndpointOptions};
use wsbridge_dataplane::{DataplaneMetrics, DestinationPolicy, Message, Origin, Payload};

const WAIT: Duration = Duration::from_secs(60);

fn policy(deny: &[&str]) -> Arc<DestinationPolicy> {
    let deny: Vec<String> = deny.iter().map(|s| s.to_string()).collect();
    Arc::new(DestinationPolicy::from_rules(&deny, &[], false).unwrap())
}

fn engine(destinations: Arc<DestinationPolicy>) -> (DeliveryEngine, Arc<DataplaneMetrics>) {
    let metrics = Arc::new(DataplaneMetrics::unregistered());
    let config = EngineConfig {
        destinations,
        ..EngineConfig::default()
    };
    (DeliveryEngine::new(config, metrics.clone()), metrics)
}

fn spec(uri: &str, sink: Option<&http::Uri>) -> SubscriberSpec {
    SubscriberSpec {
        id: "default/sub".into(),
        uri: uri.parse().unwrap(),
        policy: DeliveryPolicy {
            retry: 3,
            backoff_delay: Duration::from_millis(10),
            dead_letter_sink: sink.cloned(),
            ..Default::default()
        },
        signing: None,
    }
}

fn message() -> Arc<Message> {
    Arc::new(Message::new(
        Payload::text("{\"tick\":1}"),
        Origin::Endpoint,
        "/bridges/default/feed",
    ))
}

/// A listener that must never see a connection.
async fn untouched(addr: &str) -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind(addr).await.expect("bind a loopback address");
    let a = l.local_addr().unwrap();
    (l, a)
}

async fn assert_no_connection(l: &TcpListener) {
    let accepted = tokio::time::timeout(Duration::from_millis(300), l.accept()).await;
    assert!(accepted.is_err(), "a connection reached a denied destination");
}

#[tokio::test]
async fn a_denied_address_is_never_connected_and_the_message_is_dead_lettered_as_destination_denied() {
    let (listener, addr) = untouched("127.0.0.2:0").await;
    let mut sink = Subscriber::ok().await;
    let (engine, metrics) = engine(policy(&["127.0.0.2/32"]));
    let channel = ChannelKey::new("default", "ticker");
    engine.set_subscribers(
        &channel,
        vec![spec(&format!("http://{addr}/ingest"), Some(&sink.uri))],
    );
    engine.dispatch(&channel, message());
    let dead = sink.next().await;
    assert_eq!(
        dead.headers
            .get("x-wsbridge-dead-letter-reason")
            .and_then(|v| v.to_str().ok()),
        Some("destination_denied")
    );
    assert_eq!(
        dead.headers
            .get("x-wsbridge-attempts")
            .and_then(|v| v.to_str().ok()),
        Some("1"),
        "a denial is not retried"
    );
    wait_until("counted", || {
        metrics.dead_lettered_total("destination_denied") == 1
    })
    .await;
    assert_eq!(engine.stats().retried, 0);
    assert_no_connection(&listener).await;
}

#[tokio::test]
async fn a_name_that_resolves_to_a_denied_address_is_refused_too() {
    // `localhost` is not on the list; what it resolves to is.
    let (listener, addr) = untouched("127.0.0.1:0").await;
    let (engine, metrics) = engine(policy(&["127.0.0.0/8", "::1/128"]));
    let channel = ChannelKey::new("default", "ticker");
    engine.set_subscribers(
        &channel,
        vec![spec(&format!("http://localhost:{}/ingest", addr.port()), None)],
    );
    engine.dispatch(&channel, message());
    wait_until("dropped as destination_denied", || {
        metrics.dropped_total("destination_denied") == 1
    })
    .await;
    assert_eq!(engine.stats().delivered, 0);
    assert_no_connection(&listener).await;
}

#[tokio::test]
async fn a_denied_dead_letter_sink_drops_the_message_as_destination_denied() {
    let failing = Subscriber::start(|_| support::peers::Reply::Status(400)).await;
    let (listener, sink) = untouched("127.0.0.2:0").await;
    let sink: http::Uri = format!("http://{sink}/dlq").parse().unwrap();
    let (engine, metrics) = engine(policy(&["127.0.0.2"]));
    let channel = ChannelKey::new("default", "ticker");
    engine.set_subscribers(&channel, vec![spec(&failing.uri.to_string(), Some(&sink))]);
    engine.dispatch(&channel, message());
    wait_until("dropped as destination_denied", || {
        metrics.dropped_total("destination_denied") == 1
    })
    .await;
    assert_eq!(failing.requests(), 1, "the allowed subscriber was tried");
    assert_no_connection(&listener).await;
}

#[tokio::test]
async fn the_default_policy_still_delivers_to_loopback_subscribers() {
    let mut sub = Subscriber::ok().await;
    let (engine, _) = engine(Arc::default());
    let channel = ChannelKey::new("default", "ticker");
    engine.set_subscribers(&channel, vec![spec(&sub.uri.to_string(), None)]);
    engine.dispatch(&channel, message());
    sub.next().await;
}

#[tokio::test]
async fn the_endpoint_client_refuses_a_denied_endpoint_before_connecting() {
    let server = WsServer::start(ServerOpts::default()).await;
    let metrics = Arc::new(DataplaneMetrics::unregistered());
    let url = format!("ws://localhost:{}/stream", server.addr.port());
    let (_config, rx) = tokio::sync::watch::channel(EndpointConfig::new(url));
    let (tx, _inbound) = tokio::sync::mpsc::channel(8);
    let options = EndpointOptions {
        destinations: policy(&["127.0.0.0/8", "::1/128"]),
        ..EndpointOptions::new("default/feed")
    };
    let handle = EndpointHandle::spawn(options, rx, tx, metrics);
    let mut state = handle.state();
    let reason = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let ConnectionState::Disconnected { reason, .. } = &*state.borrow_and_update() {
                return reason.clone();
            }
            state.changed().await.unwrap();
        }
    })
    .await
    .expect("a Disconnected state");
    assert!(reason.contains("denied"), "{reason}");
    assert!(!handle.is_connected());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no TCP connection reached the endpoint"
    );
}

async fn ready_reason<K>(api: &Api<K>, name: &str) -> Result<(String, String)>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    support::eventually(WAIT, &format!("{name} Ready=False"), || {
        let api = api.clone();
        async move {
            let obj = serde_json::to_value(api.get(name).await?)?;
            let conds: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> =
                serde_json::from_value(obj["status"]["conditions"].clone()).unwrap_or_default();
            Ok(conditions::find(&conds, "Ready")
                .filter(|c| c.status == "False" && c.reason == "DestinationDenied")
                .map(|c| (c.reason.clone(), c.message.clone())))
        }
    })
    .await
}

#[tokio::test]
async fn the_controller_reports_denied_subscribers_sinks_and_endpoints() -> Result<()> {
    support::install::installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "sec-ssrf").await?;
    let yaml = format!(
        r#"
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: ticker, namespace: {ns}}}
spec: {{}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {{name: metadata-ip, namespace: {ns}}}
spec: {{channel: ticker, subscriber: {{uri: 'http://169.254.169.254/latest/meta-data/'}}}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {{name: link-local-v6, namespace: {ns}}}
spec: {{channel: ticker, subscriber: {{uri: 'http://[fe80::1]:8080/'}}}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {{name: metadata-sink, namespace: {ns}}}
spec:
  channel: ticker
  subscriber: {{uri: 'http://pricing.example:8080/'}}
  delivery: {{deadLetterSink: {{uri: 'http://metadata.google.internal/computeMetadata/v1/'}}}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {{name: fine, namespace: {ns}}}
spec: {{channel: ticker, subscriber: {{uri: 'http://pricing.example:8080/'}}}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Endpoint
metadata: {{name: metadata-feed, namespace: {ns}}}
spec: {{url: 'ws://169.254.169.254/stream'}}
"#
    );
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    let subs: Api<Subscription> = Api::namespaced(client.clone(), &ns);
    for name in ["metadata-ip", "link-local-v6", "metadata-sink"] {
        let (_, message) = ready_reason(&subs, name).await?;
        println!("{name}: {message}");
    }
    let (_, message) = ready_reason(&subs, "metadata-sink").await?;
    assert!(message.contains("deadLetterSink"), "{message}");
    let denied = subs.get("metadata-ip").await?;
    assert_eq!(
        denied.status.and_then(|s| s.subscriber_uri),
        None,
        "a denied URI never reaches the data plane"
    );
    let endpoints: Api<Endpoint> = Api::namespaced(client.clone(), &ns);
    ready_reason(&endpoints, "metadata-feed").await?;
    support::eventually(WAIT, "the allowed Subscription is Ready", || {
        let subs = subs.clone();
        async move {
            let s = subs.get("fine").await?;
            let conds = s.status.map(|s| s.conditions).unwrap_or_default();
            Ok(conditions::is_true(&conds, "Ready").then_some(()))
        }
    })
    .await?;
    Ok(())
}
