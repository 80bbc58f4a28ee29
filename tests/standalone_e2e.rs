//! `wsbridge standalone` end to end: the built binary as a child process,
//! a WebSocket endpoint and HTTP subscribers on loopback.

mod standalone_support;

use std::time::Duration;

use standalone_support::{Endpoint, Standalone, Subscriber, TempDir};

const SECOND: Duration = Duration::from_secs(1);

/// An Endpoint, a Channel bridged to it with a token, and one Subscription
/// per `(name, uri)`.
fn config(endpoint_url: &str, subscribers: &[(&str, String)]) -> String {
    let mut yaml = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: subscriber-token}}
data: {{token: c2VjcmV0LXRva2Vu}}   # secret-token
---
apiVersion: wsbridge.io/v1alpha1
kind: Endpoint
metadata: {{name: feed}}
spec:
  url: {endpoint_url}
  reconnect: {{initialDelay: 50ms, maxDelay: 500ms}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: ticker}}
spec: {{allowAnonymousPublish: true}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {{name: ticker-feed}}
spec:
  channel: ticker
  endpoint: feed
  tokenSecretRef: {{name: subscriber-token, key: token}}
"#
    );
    for (name, uri) in subscribers {
        yaml.push_str(&subscription(name, "ticker", uri));
    }
    yaml
}

fn subscription(name: &str, channel: &str, uri: &str) -> String {
    format!(
        r#"---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {{name: {name}}}
spec:
  channel: {channel}
  subscriber: {{uri: "{uri}"}}
"#
    )
}

#[tokio::test]
async fn endpoint_messages_reach_both_subscribers_with_the_bridge_token() {
    let dir = TempDir::new("e2e-inbound");
    let endpoint = Endpoint::start().await;
    let mut a = Subscriber::start(Duration::ZERO).await;
    let mut b = Subscriber::start(Duration::ZERO).await;
    let file = dir.write(
        "wsbridge.yaml",
        &config(&endpoint.url(), &[("a", a.uri("/a")), ("b", b.uri("/b"))]),
    );
    let _standalone = Standalone::start(&[&file], &dir.0).await;

    endpoint.send(r#"{"price": 42}"#).await;
    for (sub, path) in [(&mut a, "/a"), (&mut b, "/b")] {
        let d = sub.next_containing("42", 10 * SECOND).await;
        assert_eq!(d.path, path);
        assert_eq!(d.body, r#"{"price": 42}"#);
        assert_eq!(d.headers["authorization"], "Bearer secret-token");
        assert_eq!(d.headers["content-type"], "application/json");
        assert_eq!(d.headers["ce-type"], "io.wsbridge.endpoint.message");
        assert_eq!(d.headers["ce-source"], "/namespaces/default/bridges/ticker-feed");
        assert!(d.headers.contains_key("ce-id"));
    }
}

#[tokio::test]
async fn published_messages_reach_subscribers_and_the_endpoint_and_never_loop_back() {
    let dir = TempDir::new("e2e-publish");
    let mut endpoint = Endpoint::start().await;
    let mut a = Subscriber::start(Duration::ZERO).await;
    let mut b = Subscriber::start(Duration::ZERO).await;
    let file = dir.write(
        "wsbridge.yaml",
        &config(&endpoint.url(), &[("a", a.uri("/a")), ("b", b.uri("/b"))]),
    );
    let standalone = Standalone::start(&[&file], &dir.0).await;

    let accepted = standalone
        .publish_accepted("default/ticker", "hello out there")
        .await;
    assert_eq!(accepted["channel"], "default/ticker");
    let id = accepted["id"].as_str().expect("an id").to_string();
    assert_eq!(
        endpoint.next(10 * SECOND).await.as_deref(),
        Some("hello out there")
    );
    for sub in [&mut a, &mut b] {
        let d = sub.next_containing("hello out there", 10 * SECOND).await;
        assert_eq!(d.headers["ce-id"], id.as_str());
        assert_eq!(d.headers["ce-type"], "io.wsbridge.channel.published");
        assert!(
            d.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        assert!(!d.headers.contains_key("authorization"));
    }

    // An endpoint message goes to the subscribers only, never back out.
    endpoint.send("from the endpoint").await;
    a.next_containing("from the endpoint", 10 * SECOND).await;
    b.next_containing("from the endpoint", 10 * SECOND).await;
    assert_eq!(
        endpoint.next(SECOND).await,
        None,
        "a message looped back to the endpoint"
    );
}

#[tokio::test]
async fn publish_errors_are_json_404_413_400_and_503() {
    let dir = TempDir::new("e2e-errors");
    let endpoint = Endpoint::start().await;
    // Nothing listens on this port: the bridge of `offline` never connects.
    let dead = standalone_support::free_addr();
    let mut yaml = config(&endpoint.url(), &[]);
    yaml.push_str(&format!(
        r#"---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: small}}
spec: {{maxMessageBytes: 16}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Endpoint
metadata: {{name: gone}}
spec: {{url: "ws://{dead}/"}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: offline}}
spec: {{}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {{name: offline}}
spec: {{channel: offline, endpoint: gone}}
"#
    ));
    let file = dir.write("wsbridge.yaml", &yaml);
    let standalone = Standalone::start(&[&file], &dir.0).await;
    standalone.publish_accepted("default/ticker", "ok").await;

    let (status, json) = standalone.publish("default/nope", "x").await;
    assert_eq!(status, 404);
    assert!(json["error"].as_str().unwrap().contains("default/nope"), "{json}");

    let (status, json) = standalone.publish("default/small", "x".repeat(17)).await;
    assert_eq!(status, 413);
    assert!(json["error"].as_str().unwrap().contains("16 bytes"), "{json}");
    let (status, _) = standalone.publish("default/small", "x".repeat(16)).await;
    assert_eq!(status, 202);
    // A large body is refused from its Content-Length, before it is read.
    let large = axum::body::Bytes::from(vec![b'y'; 64 * 1024]);
    let (status, _) = standalone.publish("default/small", large).await;
    assert_eq!(status, 413);

    let (status, json) = standalone.publish("default/ticker", "").await;
    assert_eq!(status, 400);
    assert!(json["error"].as_str().unwrap().contains("empty"), "{json}");

    let (status, json) = standalone.publish("default/offline", "x").await;
    assert_eq!(status, 503);
    assert!(
        json["error"].as_str().unwrap().contains("not connected"),
        "{json}"
    );
}

#[tokio::test]
async fn a_reload_adds_a_subscriber_live_and_an_invalid_edit_keeps_the_running_config() {
    let dir = TempDir::new("e2e-reload");
    let endpoint = Endpoint::start().await;
    let mut a = Subscriber::start(Duration::ZERO).await;
    let mut b = Subscriber::start(Duration::ZERO).await;
    let base = config(&endpoint.url(), &[("a", a.uri("/a"))]);
    let file = dir.write("wsbridge.yaml", &base);
    let standalone = Standalone::start(&[&dir.0], &dir.0).await;

    endpoint.send("before").await;
    a.next_containing("before", 10 * SECOND).await;

    // A new file with a second Subscription: b starts receiving, a is undisturbed.
    dir.write("more.yml", &subscription("b", "ticker", &b.uri("/b")));
    standalone
        .wait_log("configuration changed; applying", 10 * SECOND)
        .await;
    endpoint.send("after-add").await;
    a.next_containing("after-add", 10 * SECOND).await;
    b.next_containing("after-add", 10 * SECOND).await;

    // An invalid edit is refused, naming file, object and field...
    let broken = base.replace(
        "reconnect: {initialDelay: 50ms",
        "port: 70000\n  reconnect: {initialDelay: 50ms",
    );
    dir.write("wsbridge.yaml", &broken);
    let logs = standalone
        .wait_log("configuration change rejected", 10 * SECOND)
        .await;
    let expected = format!(
        "{}: Endpoint default/feed: spec.port: must be <= 65535",
        file.display()
    );
    assert!(logs.contains(&expected), "expected {expected:?} in:\n{logs}");
    // ...and the running configuration goes on: same connection, both subscribers.
    endpoint.send("after-bad-edit").await;
    a.next_containing("after-bad-edit", 10 * SECOND).await;
    b.next_containing("after-bad-edit", 10 * SECOND).await;
    assert_eq!(
        *endpoint.connections.lock().unwrap(),
        1,
        "the endpoint was reconnected"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_deliveries_then_exits_0() {
    let dir = TempDir::new("e2e-drain");
    let mut slow = Subscriber::start(Duration::from_millis(700)).await;
    let yaml = format!(
        r#"
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: jobs}}
spec: {{}}
{}"#,
        subscription("slow", "jobs", &slow.uri("/slow"))
    );
    let file = dir.write("wsbridge.yaml", &yaml);
    let mut standalone = Standalone::start(&[&file], &dir.0).await;
    for i in 0..3 {
        let (status, _) = standalone.publish("default/jobs", format!("job-{i}")).await;
        assert_eq!(status, 202);
    }
    // Ordered delivery: about 2 seconds of work is queued when SIGTERM comes.
    standalone.terminate();
    let status = standalone.wait_exit(15 * SECOND).await;
    assert!(status.success(), "exit status {status}:\n{}", standalone.logs());
    let delivered: Vec<String> = slow.drain(SECOND).await.into_iter().map(|d| d.body).collect();
    assert_eq!(delivered, ["job-0", "job-1", "job-2"], "{}", standalone.logs());
}
