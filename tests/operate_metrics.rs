//! Every metric the Grafana dashboard and the alerts query is one wsbridge
//! really exports: the names are read from the chart's dashboard JSON and
//! its rendered PrometheusRule, and checked against the live `/metrics` of
//! every role, each a real process: the controller and the gateway
//! installed from `deploy/`, a bridge worker run from the Deployment the
//! controller wrote (connected to a WebSocket endpoint on loopback), and
//! `wsbridge standalone`.

#[allow(dead_code)] // shared with deploy_manifests, which uses all of it
mod deploy_support;
mod operate_support;
mod standalone_support;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use operate_support::{dashboard, dashboard_queries, exposed_names, metric_names, rendered_rule, rules};
use support::peers::{Reply, ServerOpts, Subscriber, WsServer};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const WAIT: Duration = Duration::from_secs(60);

async fn metrics(addr: SocketAddr) -> Result<String> {
    let (code, body) = support::http::get(addr, "/metrics").await?;
    anyhow::ensure!(code == 200, "GET http://{addr}/metrics: {code}");
    Ok(body)
}

/// Admission refuses this Bridge's worker Deployment, so the controller's
/// reconciles of it fail (a ValidatingAdmissionPolicy, as a cluster's
/// policy engine would).
const REFUSED: &str = "refused";

fn refusing_policy(ns: &str) -> String {
    format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: refuse-{ns}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {{apiGroups: [apps], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [deployments]}}
  validations:
  - {{expression: "object.metadata.name != 'wsbridge-worker-{REFUSED}'", message: refused by the test}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: refuse-{ns}}}
spec:
  policyName: refuse-{ns}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {ns}}}
"#
    )
}

/// Waits until admission refuses the refused Bridge's worker Deployment
/// (a policy takes effect a moment after it is created).
async fn policy_enforced(client: &kube::Client, ns: &str) -> Result<()> {
    let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> = kube::Api::namespaced(client.clone(), ns);
    let probe: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("wsbridge-worker-{REFUSED}")},
        "spec": {"selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}
    }))?;
    let dry_run = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    support::eventually(WAIT, "the admission policy refuses the worker", || {
        let (api, probe, dry_run) = (api.clone(), probe.clone(), dry_run.clone());
        async move { Ok(api.create(&dry_run, &probe).await.is_err().then_some(())) }
    })
    .await
}

fn cluster_objects(endpoint: &str, subscribers: &Subscribers) -> String {
    let subscription = |name: &str, uri: &http::Uri, sink: Option<&http::Uri>| {
        let sink = sink
            .map(|s| format!(", deadLetterSink: {{uri: '{s}'}}"))
            .unwrap_or_default();
        format!(
            "---\napiVersion: wsbridge.io/v1alpha1\nkind: Subscription\nmetadata: {{name: {name}}}\n\
             spec: {{channel: ticks, subscriber: {{uri: '{uri}'}}, delivery: {{retry: 1, backoffDelay: 10ms{sink}}}}}\n"
        )
    };
    format!(
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {{name: ticks}}\nspec: {{allowAnonymousPublish: true}}\n\
         ---\napiVersion: wsbridge.io/v1alpha1\nkind: Endpoint\nmetadata: {{name: feed}}\n\
         spec: {{url: '{endpoint}', reconnect: {{initialDelay: 50ms, maxDelay: 500ms}}}}\n\
         ---\napiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {{name: feed}}\nspec: {{channel: ticks, endpoint: feed}}\n\
         ---\napiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {{name: {REFUSED}}}\nspec: {{channel: spare, endpoint: feed}}\n\
         ---\napiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {{name: spare}}\nspec: {{}}\n\
         {}{}{}",
        subscription("flaky", &subscribers.flaky.uri, None),
        subscription("refusing", &subscribers.refusing.uri, Some(&subscribers.sink.uri)),
        subscription("refusing-without-sink", &subscribers.refusing.uri, None),
    )
}

/// A subscriber that fails its first request (a retry), one that refuses
/// everything (a dead letter, or a drop without a sink) and the sink.
struct Subscribers {
    flaky: Subscriber,
    refusing: Subscriber,
    sink: Subscriber,
}

/// Exercises every series the dashboard and the alerts read: a worker that
/// receives, delivers (after a retry), dead-letters, drops, reconnects and
/// sends a publish out; a gateway publish; a controller reconcile that fails.
/// Returns the worker's address (the worker and the peers stay up).
async fn traffic(keep: &mut Vec<Box<dyn std::any::Any>>) -> Result<SocketAddr> {
    let installed = support::install::installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "operate-metrics").await?;
    let mut endpoint = WsServer::start(ServerOpts::default()).await;
    let mut subscribers = Subscribers {
        flaky: Subscriber::start(|n| Reply::Status(if n == 0 { 503 } else { 200 })).await,
        refusing: Subscriber::start(|_| Reply::Status(400)).await,
        sink: Subscriber::ok().await,
    };
    support::apply_yaml(&client, &refusing_policy(&ns), None).await?;
    policy_enforced(&client, &ns).await?;
    support::apply_yaml(
        &client,
        &cluster_objects(&endpoint.url(), &subscribers),
        Some(&ns),
    )
    .await?;
    let worker = support::pods::start_bridge_worker(&ns, "feed").await?;
    let addr: SocketAddr = worker.env["WSBRIDGE_LISTEN"].parse()?;
    endpoint.next_connected().await;
    // The worker's /metrics is its own: one endpoint, its Bridge's.
    let connected = || async move {
        let m = metrics(addr).await?;
        Ok((support::metric_sum(&m, "wsbridge_endpoint_connected", &[]) == 1.0).then_some(()))
    };
    support::eventually(WAIT, "the worker reports its connection", connected)
        .await
        .with_context(|| format!("worker log:\n{}", worker.logs()))?;

    endpoint.send(WsMessage::Text("tick".into()));
    assert_eq!(subscribers.flaky.next().await.body.as_ref(), b"tick");
    assert_eq!(
        subscribers.flaky.next().await.body.as_ref(),
        b"tick",
        "delivered on its retry"
    );
    assert_eq!(
        subscribers.sink.next().await.body.as_ref(),
        b"tick",
        "dead-lettered"
    );

    endpoint.restart().await;
    endpoint.next_connected().await;
    support::eventually(WAIT, "the worker reconnected", connected).await?;

    let channel = format!("/channels/{ns}/ticks");
    support::eventually(WAIT, "a publish through the gateway", || {
        let channel = channel.clone();
        async move {
            let (code, _) = support::http::request(
                installed.gateway_addr,
                "POST",
                &channel,
                &[("Content-Type", "application/json")],
                b"{}",
            )
            .await?;
            Ok((code == 202).then_some(()))
        }
    })
    .await?;
    keep.push(Box::new((
        worker,
        endpoint,
        subscribers.flaky,
        subscribers.refusing,
        subscribers.sink,
    )));
    Ok(addr)
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_query_is_exported_by_a_running_role() -> Result<()> {
    // What the dashboard and the alerts use.
    let mut used: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for query in dashboard_queries(&dashboard()?) {
        for name in metric_names(&query) {
            used.entry(name).or_default().insert("dashboard");
        }
    }
    let rule = rendered_rule()?;
    for r in rules(&rule) {
        for name in metric_names(r["expr"].as_str().unwrap_or_default()) {
            used.entry(name).or_default().insert("alerts");
        }
    }
    assert!(used.len() >= 15, "too few names found: {used:?}");

    // What every role exports, live, once each series has a sample (an
    // empty family is not exposed at all).
    let installed = support::install::installed().await;
    let mut keep = Vec::new();
    let worker_addr = traffic(&mut keep).await?;
    let dir = standalone_support::TempDir::new("operate-metrics");
    let config = dir.write(
        "channel.yaml",
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: ticks}\nspec: {allowAnonymousPublish: true}\n",
    );
    let standalone = standalone_support::Standalone::start(&[&config], &dir.0).await;
    let roles = [
        ("controller", installed.controller_addr),
        ("gateway", installed.gateway_addr),
        ("worker", worker_addr),
        ("standalone", standalone.addr),
    ];
    let scrape = || async {
        let mut exported: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (role, addr) in roles {
            exported.insert(role, exposed_names(&metrics(addr).await?));
        }
        Ok::<_, anyhow::Error>(exported)
    };
    let all_there = |exported: &BTreeMap<&str, BTreeSet<String>>| {
        used.keys()
            .all(|name| exported.values().any(|names| names.contains(name)))
    };
    // Counters that move after the traffic (the controller's retried
    // failures) are waited for; a name never exported fails below.
    let _ = support::eventually(WAIT, "every series exported", || async {
        let exported = scrape().await?;
        Ok(all_there(&exported).then_some(()))
    })
    .await;
    let exported = scrape().await?;
    for (role, name) in [
        ("controller", "wsbridge_controller_leader"),
        ("controller", "wsbridge_controller_reconcile_failures_total"),
        ("gateway", "wsbridge_gateway_publishes_total"),
        ("worker", "wsbridge_endpoint_reconnects_total"),
        ("worker", "wsbridge_messages_dead_lettered_total"),
        ("worker", "wsbridge_messages_dropped_total"),
    ] {
        assert!(
            exported[role].contains(name),
            "{role} lacks {name}: {:?}",
            exported[role]
        );
    }

    let missing: Vec<String> = used
        .iter()
        .filter(|(name, _)| !exported.values().any(|names| names.contains(*name)))
        .map(|(name, by)| format!("{name} (used by {by:?})"))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but exported by no role: {missing:?}\nexported: {exported:#?}"
    );
    Ok(())
}

#[test]
fn names_are_read_with_their_type_suffixes() {
    let exposition = "# HELP wsbridge_messages_delivered Messages delivered.\n\
        # TYPE wsbridge_messages_delivered counter\n\
        wsbridge_messages_delivered_total{channel=\"a/b\",subscriber=\"a/s\"} 3\n\
        # TYPE wsbridge_delivery_latency_seconds histogram\n\
        # TYPE wsbridge_endpoint_connected gauge\n# EOF\n";
    let names = exposed_names(exposition);
    for name in [
        "wsbridge_messages_delivered_total",
        "wsbridge_delivery_latency_seconds_bucket",
        "wsbridge_delivery_latency_seconds_count",
        "wsbridge_endpoint_connected",
    ] {
        assert!(names.contains(name), "{name} not in {names:?}");
    }
    // A counter without `_total`, or a histogram by its bare name, is no series.
    assert!(!names.contains("wsbridge_messages_delivered"));
    assert!(!names.contains("wsbridge_delivery_latency_seconds"));
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le) (rate(wsbridge_delivery_latency_seconds_bucket{channel=~"$namespace/.*"}[5m]))) > 1 unless absent(wsbridge_controller_leader)"#
        ),
        BTreeSet::from([
            "wsbridge_delivery_latency_seconds_bucket".to_string(),
            "wsbridge_controller_leader".to_string()
        ])
    );
}
