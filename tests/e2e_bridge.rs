//! End to end on the real API server: the controller (running from the
//! `deploy/` manifests) writes a worker Deployment for a Bridge; the worker
//! runs from that pod template's command and environment, as its own
//! ServiceAccount, connects to a real WebSocket endpoint and delivers to real
//! HTTP subscribers.

mod support;

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use support::peers::{ServerOpts, Subscriber, WsServer};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsbridge_api::{Bridge, conditions};

const WAIT: Duration = Duration::from_secs(60);
const FEED_TOKEN: &str = "feed-secret-7f3a9c2e";
const SUBSCRIBER_TOKEN: &str = "subscriber-secret-41d8b6";

/// No kubelet: report the worker Deployment available, as the kubelet would
/// once the pod is ready.
async fn mark_available(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let generation = api.get(name).await?.metadata.generation;
    let status = json!({"status": {
        "observedGeneration": generation, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "test"}]
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

async fn bridge_condition(
    client: &kube::Client,
    ns: &str,
    name: &str,
    type_: &str,
    want: bool,
) -> Result<Bridge> {
    let api: Api<Bridge> = Api::namespaced(client.clone(), ns);
    support::eventually(WAIT, &format!("Bridge {name} {type_}={want}"), || {
        let api = api.clone();
        async move {
            let b = api.get(name).await?;
            let conds = b
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            Ok(
                (conditions::is_true(&conds, type_) == want && conditions::find(&conds, type_).is_some())
                    .then_some(b),
            )
        }
    })
    .await
}

fn objects(ns: &str, endpoint_url: &str, subscribers: &[&str]) -> String {
    let mut yaml = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: feed-credentials, namespace: {ns}}}
stringData: {{token: {FEED_TOKEN}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: subscriber-token, namespace: {ns}}}
stringData: {{token: {SUBSCRIBER_TOKEN}}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Endpoint
metadata: {{name: market-feed, namespace: {ns}}}
spec:
  url: {endpoint_url}
  auth: {{secretRef: {{name: feed-credentials}}}}
  subprotocols: [feed.v1]
  openMessages: ['{{"op":"subscribe","channel":"ticker"}}']
  reconnect: {{initialDelay: 50ms, maxDelay: 500ms}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: ticker, namespace: {ns}}}
spec: {{delivery: {{retry: 2, backoffDelay: 50ms, timeout: 2s}}}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {{name: ticker-feed, namespace: {ns}}}
spec:
  channel: ticker
  endpoint: market-feed
  tokenSecretRef: {{name: subscriber-token, key: token}}
"#
    );
    for (i, uri) in subscribers.iter().enumerate() {
        yaml.push_str(&subscription(ns, &format!("sub-{i}"), uri));
    }
    yaml
}

fn subscription(ns: &str, name: &str, uri: &str) -> String {
    format!(
        "---\napiVersion: wsbridge.io/v1alpha1\nkind: Subscription\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  channel: ticker\n  subscriber: {{uri: '{uri}'}}\n"
    )
}

#[tokio::test]
async fn a_worker_started_from_the_controllers_pod_template_bridges_the_endpoint_to_every_subscriber()
-> Result<()> {
    support::install::installed().await;
    let cp = support::shared().await;
    let client = cp.client();
    let ns = support::create_namespace(&client, "e2e-bridge").await?;
    let mut endpoint = WsServer::start(ServerOpts {
        select_subprotocol: true,
        greeting: Some(WsMessage::Text(r#"{"snapshot":true}"#.into())),
        ..Default::default()
    })
    .await;
    let mut subs = [Subscriber::ok().await, Subscriber::ok().await];
    let uris: Vec<String> = subs.iter().map(|s| s.uri.to_string()).collect();
    let uri_refs: Vec<&str> = uris.iter().map(String::as_str).collect();
    support::apply_yaml(&client, &objects(&ns, &endpoint.url(), &uri_refs), Some(&ns)).await?;

    let mut worker = support::pods::start_bridge_worker(&ns, "ticker-feed").await?;

    // The handshake carries the credentials and subprotocol; the open message follows.
    let (_, headers) = endpoint.next_connected().await;
    assert_eq!(
        headers.get("authorization").unwrap(),
        &format!("Bearer {FEED_TOKEN}")
    );
    assert!(
        headers
            .get("sec-websocket-protocol")
            .unwrap()
            .to_str()?
            .contains("feed.v1")
    );
    let (_, open) = endpoint.next_frame().await;
    assert_eq!(
        open,
        WsMessage::Text(r#"{"op":"subscribe","channel":"ticker"}"#.into())
    );

    // The worker reports Connected and its publish address on the Bridge.
    let bridge = bridge_condition(&client, &ns, "ticker-feed", conditions::CONNECTED, true)
        .await
        .with_context(|| format!("worker log:\n{}", worker.logs()))?;
    let address = bridge
        .status
        .and_then(|s| s.address)
        .context("no status.address")?;
    assert!(address.url.starts_with("http://127.0.0.1:"), "{}", address.url);
    // Ready once the Deployment is available too (no kubelet: the test says so).
    mark_available(&client, &ns, "wsbridge-worker-ticker-feed").await?;
    bridge_condition(&client, &ns, "ticker-feed", conditions::READY, true).await?;

    // The worker follows the subscriptions' watch: wait until both are served.
    support::eventually(WAIT, "worker ready", || async {
        let port = worker.env["WSBRIDGE_LISTEN"]
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()?;
        Ok(support::http::get(([127, 0, 0, 1], port).into(), "/readyz")
            .await
            .ok()
            .filter(|(c, _)| *c == 200))
    })
    .await?;

    // What the endpoint sends the moment the connection opens is not lost:
    // the worker connects only once it knows its subscribers.
    for sub in subs.iter_mut() {
        assert_eq!(sub.next().await.body.as_ref(), br#"{"snapshot":true}"#);
    }

    // Text, JSON and binary messages reach both subscribers with the bridge token.
    endpoint.send(WsMessage::Text(r#"{"price":101.5}"#.into()));
    endpoint.send(WsMessage::Text("plain tick".into()));
    endpoint.send(WsMessage::Binary(vec![0u8, 1, 2, 254].into()));
    for sub in subs.iter_mut() {
        let expected: [(&str, &[u8]); 3] = [
            ("application/json", br#"{"price":101.5}"#),
            ("text/plain", b"plain tick"),
            ("application/octet-stream", &[0, 1, 2, 254]),
        ];
        for (content_type, body) in expected {
            let got = sub.next().await;
            assert_eq!(got.body.as_ref(), body);
            assert!(got.headers["content-type"].to_str()?.starts_with(content_type));
            assert_eq!(got.headers["authorization"], format!("Bearer {SUBSCRIBER_TOKEN}"));
            assert_eq!(got.headers["ce-specversion"], "1.0");
            assert!(got.headers["ce-source"].to_str()?.contains(&ns));
            assert!(!got.headers["ce-id"].is_empty());
        }
    }

    // A new Subscription is followed live; a deleted one stops receiving.
    let mut third = Subscriber::ok().await;
    support::apply_yaml(
        &client,
        &subscription(&ns, "sub-late", &third.uri.to_string()),
        Some(&ns),
    )
    .await?;
    support::eventually(WAIT, "late subscriber served", || {
        let endpoint = &endpoint;
        let third = &third;
        async move {
            endpoint.send(WsMessage::Text("probe".into()));
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok((third.requests() > 0).then_some(()))
        }
    })
    .await?;
    let subs_api: Api<wsbridge_api::Subscription> = Api::namespaced(client.clone(), &ns);
    subs_api.delete("sub-0", &DeleteParams::default()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    while tokio::time::timeout(Duration::from_millis(300), subs[0].received.recv())
        .await
        .is_ok_and(|r| r.is_some())
    {}
    endpoint.send(WsMessage::Text("after delete".into()));
    loop {
        let got = third.next().await;
        if got.body.as_ref() == b"after delete" {
            break;
        }
    }
    subs[0].assert_quiet(Duration::from_secs(1)).await;

    // Endpoint messages never go back out to the endpoint.
    let extra = tokio::time::timeout(Duration::from_millis(500), endpoint.next_frame()).await;
    assert!(
        extra.is_err(),
        "the worker sent something back to the endpoint: {extra:?}"
    );

    // A clean SIGTERM, and no secret value in anything it logged.
    assert_eq!(
        worker.terminate(Duration::from_secs(20)).await,
        Some(0),
        "log:\n{}",
        worker.logs()
    );
    let logs = worker.logs();
    for secret in [FEED_TOKEN, SUBSCRIBER_TOKEN] {
        assert!(
            !logs.contains(secret),
            "a secret value leaked into the worker's log"
        );
    }
    bridge_condition(&client, &ns, "ticker-feed", conditions::CONNECTED, false).await?;
    Ok(())
}

#[tokio::test]
async fn the_open_message_is_sent_again_after_the_endpoint_restarts() -> Result<()> {
    support::install::installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "e2e-restart").await?;
    let mut endpoint = WsServer::start(ServerOpts {
        select_subprotocol: true,
        ..Default::default()
    })
    .await;
    let sub = Subscriber::ok().await;
    support::apply_yaml(
        &client,
        &objects(&ns, &endpoint.url(), &[&sub.uri.to_string()]),
        Some(&ns),
    )
    .await?;
    let _worker = support::pods::start_bridge_worker(&ns, "ticker-feed").await?;
    for round in 1..=3 {
        endpoint.next_connected().await;
        let (_, open) = endpoint.next_frame().await;
        assert_eq!(
            open,
            WsMessage::Text(r#"{"op":"subscribe","channel":"ticker"}"#.into()),
            "round {round}"
        );
        endpoint.restart().await;
    }
    Ok(())
}
