//! On the real API server: a worker whose subscriber hangs, with a small
//! `queueCapacityBytes`, tells users with a Warning Event on the Bridge
//! (reason `SubscriberDroppingForMemory`) which subscriber is dropping
//! messages, how many and why, at most once a minute. The worker runs from
//! the controller's pod template as its own ServiceAccount, so its Role's
//! permission to create Events is exercised too.

mod support;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use support::peers::{Reply, ServerOpts, Subscriber, WsServer};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsbridge_api::Bridge;

const WAIT: Duration = Duration::from_secs(60);
const REASON: &str = "SubscriberDroppingForMemory";
/// Frames the endpoint sends at once, each about 1 KB: a queue of 4 KiB
/// holds two (each also counts 512 bytes of overhead), one is in flight.
const MESSAGES: usize = 20;

fn objects(ns: &str, endpoint_url: &str, subscriber: &str) -> String {
    format!(
        r#"
apiVersion: wsbridge.io/v1alpha1
kind: Endpoint
metadata: {{name: feed, namespace: {ns}}}
spec: {{url: '{endpoint_url}', reconnect: {{initialDelay: 50ms, maxDelay: 500ms}}}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: ticker, namespace: {ns}}}
spec: {{}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {{name: feed, namespace: {ns}}}
spec: {{channel: ticker, endpoint: feed}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {{name: slow, namespace: {ns}}}
spec:
  channel: ticker
  subscriber: {{uri: '{subscriber}'}}
  delivery: {{timeout: 10m, retry: 0, queueCapacityBytes: 4096}}
"#
    )
}

/// The Events about memory drops whose `regarding` is the Bridge.
async fn drop_events(events: &Api<Event>, bridge: &Bridge) -> Result<Vec<Event>> {
    let uid = bridge.metadata.uid.as_deref();
    Ok(events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(REASON)
                && e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("Bridge")
                        && r.name.as_deref() == Some("feed")
                        && r.uid.as_deref() == uid
                })
        })
        .collect())
}

fn flood(endpoint: &WsServer, round: &str) {
    for i in 0..MESSAGES {
        let head = format!("{round} {i} ");
        endpoint.send(WsMessage::Text(
            format!("{head}{}", "x".repeat(1000 - head.len())).into(),
        ));
    }
}

#[tokio::test]
async fn a_subscriber_dropping_for_memory_is_a_warning_event_on_the_bridge() -> Result<()> {
    support::install::installed().await;
    let cp = support::shared().await;
    let client = cp.client();
    let ns = support::create_namespace(&client, "e2e-memdrop").await?;
    let mut endpoint = WsServer::start(ServerOpts::default()).await;
    let hung = Subscriber::start(|_| Reply::Hang).await;
    support::apply_yaml(
        &client,
        &objects(&ns, &endpoint.url(), &hung.uri.to_string()),
        Some(&ns),
    )
    .await?;
    let worker = support::pods::start_bridge_worker(&ns, "feed").await?;
    // The connection opens once the worker knows its subscribers.
    tokio::time::timeout(WAIT, endpoint.next_connected())
        .await
        .with_context(|| format!("the worker never connected; log:\n{}", worker.logs()))?;

    flood(&endpoint, "first");
    let bridge = Api::<Bridge>::namespaced(client.clone(), &ns).get("feed").await?;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let found = support::eventually(WAIT, "a SubscriberDroppingForMemory Event on the Bridge", || {
        let (events, bridge) = (&events, &bridge);
        async move { Ok(Some(drop_events(events, bridge).await?).filter(|e| !e.is_empty())) }
    })
    .await
    .with_context(|| format!("worker log:\n{}", worker.logs()))?;
    ensure!(found.len() == 1, "one Event: {found:#?}");
    let event = &found[0];
    let note = event.note.as_deref().unwrap_or_default();
    println!("Event note: {note}");
    ensure!(event.type_.as_deref() == Some("Warning"), "{event:#?}");
    ensure!(
        event.reporting_controller.as_deref() == Some("wsbridge-worker"),
        "{event:#?}"
    );
    ensure!(
        note.starts_with(&format!("subscriber {ns}/slow of channel {ns}/ticker: ")),
        "{note}"
    );
    ensure!(note.contains("queue_bytes: "), "{note}");
    ensure!(note.contains("queueCapacityBytes"), "{note}");
    let related = event.related.as_ref().context("no related object")?;
    ensure!(
        (related.kind.as_deref(), related.name.as_deref()) == (Some("Subscription"), Some("slow")),
        "{related:?}"
    );

    // The runbook's query finds it (core/v1 view, field selector on reason).
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    let by_reason = core
        .list(&ListParams::default().fields(&format!("reason={REASON}")))
        .await?;
    ensure!(
        by_reason
            .items
            .iter()
            .any(|e| e.involved_object.name.as_deref() == Some("feed")),
        "{by_reason:#?}"
    );

    // More drops within the minute: no second Event yet.
    flood(&endpoint, "second");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = drop_events(&events, &bridge).await?;
    ensure!(after.len() == 1, "at most one Event a minute: {after:#?}");
    Ok(())
}
