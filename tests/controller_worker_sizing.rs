//! A Bridge sizes and places its worker: resources and scheduling fields
//! reach the worker Deployment the controller writes (real API server), the
//! controller's defaults fill what a Bridge leaves unset, and the schema
//! refuses what a pod could not run with.

mod controller_support;
mod support;

use anyhow::Result;
use controller_support::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodSpec;
use kube::Api;

const OBJECTS: &str = r#"apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {name: ticker}
spec: {}
---
apiVersion: wsbridge.io/v1alpha1
kind: Endpoint
metadata: {name: market}
spec: {url: "wss://feed.example.com/v2"}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {name: plain}
spec: {channel: ticker, endpoint: market}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {name: busy}
spec:
  channel: ticker
  endpoint: market
  worker:
    resources:
      requests: {cpu: 250m, memory: 256Mi}
      limits: {memory: 1Gi}
    nodeSelector: {pool: bridges}
    tolerations:
      - {key: dedicated, operator: Equal, value: bridges, effect: NoSchedule}
    affinity:
      nodeAffinity:
        requiredDuringSchedulingIgnoredDuringExecution:
          nodeSelectorTerms:
            - matchExpressions:
                - {key: kubernetes.io/arch, operator: In, values: [amd64]}
    priorityClassName: bridges-high
    podLabels: {team: markets}
    podAnnotations: {example.com/owner: markets}
"#;

/// The controller's defaults for every worker (the chart's `controller.workerPod`).
const DEFAULTS: &str = r#"{"resources":{"limits":{"cpu":"2","memory":"384Mi"}},"tolerations":[{"key":"spot","operator":"Exists"}],"podLabels":{"tier":"bridge"}}"#;

#[test]
fn controller_child_process() {
    controller_support::child_entry();
}

async fn pod_of(api: &Api<Deployment>, name: &str) -> Result<(PodSpec, Deployment)> {
    let d = support::eventually(WAIT, "worker Deployment", || {
        let api = api.clone();
        async move { Ok(api.get_opt(name).await?) }
    })
    .await?;
    Ok((d.spec.clone().unwrap().template.spec.unwrap(), d))
}

fn amount(pod: &PodSpec, kind: &str, resource: &str) -> Option<String> {
    let r = pod.containers[0].resources.as_ref()?;
    let list = if kind == "limits" { &r.limits } else { &r.requests };
    list.as_ref()?.get(resource).map(|q| q.0.clone())
}

#[tokio::test]
async fn a_bridges_resources_and_scheduling_reach_its_worker_and_defaults_fill_the_rest() -> Result<()> {
    let cp = support::shared().await;
    let client = cp.client();
    install_crds(&client).await?;
    let ns = support::create_namespace(&client, "ctl-sizing").await?;
    let _controller =
        ControllerProcess::for_namespace_with(cp, &ns, &["--worker-pod-defaults", DEFAULTS]).await?;
    support::apply_yaml(&client, OBJECTS, Some(&ns)).await?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    let (busy, deployment) = pod_of(&api, "wsbridge-worker-busy").await?;
    assert_eq!(amount(&busy, "requests", "cpu").as_deref(), Some("250m"));
    assert_eq!(amount(&busy, "requests", "memory").as_deref(), Some("256Mi"));
    assert_eq!(amount(&busy, "limits", "memory").as_deref(), Some("1Gi"));
    // Unset in the Bridge: the controller's default.
    assert_eq!(amount(&busy, "limits", "cpu").as_deref(), Some("2"));
    assert_eq!(busy.node_selector.as_ref().unwrap()["pool"], "bridges");
    let tolerations = busy.tolerations.as_ref().unwrap();
    assert_eq!(
        tolerations.len(),
        1,
        "the Bridge's tolerations replace the defaults"
    );
    assert_eq!(tolerations[0].key.as_deref(), Some("dedicated"));
    let required = busy
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
        .unwrap();
    assert_eq!(
        required.node_selector_terms[0]
            .match_expressions
            .as_ref()
            .unwrap()[0]
            .key,
        "kubernetes.io/arch"
    );
    assert_eq!(busy.priority_class_name.as_deref(), Some("bridges-high"));
    let meta = deployment.spec.unwrap().template.metadata.unwrap();
    let labels = meta.labels.unwrap();
    assert_eq!(labels["team"], "markets");
    assert_eq!(
        labels["wsbridge.io/bridge"], "busy",
        "the selector label stays ours"
    );
    let annotations = meta.annotations.unwrap();
    assert_eq!(annotations["example.com/owner"], "markets");
    assert!(annotations.contains_key("wsbridge.io/config-hash"));

    let (plain, _) = pod_of(&api, "wsbridge-worker-plain").await?;
    assert_eq!(amount(&plain, "limits", "memory").as_deref(), Some("384Mi"));
    assert_eq!(amount(&plain, "limits", "cpu").as_deref(), Some("2"));
    // Unset by both: the built-in requests.
    assert_eq!(amount(&plain, "requests", "memory").as_deref(), Some("32Mi"));
    assert_eq!(
        plain.tolerations.as_ref().unwrap()[0].key.as_deref(),
        Some("spot")
    );
    assert!(plain.node_selector.is_none() && plain.priority_class_name.is_none());

    // The schema refuses a limit the worker's budget could not live in.
    let refused = support::apply_yaml(
        &client,
        "apiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {name: tiny}\nspec: {channel: ticker, endpoint: market, worker: {resources: {limits: {memory: 16Mi}}}}\n",
        Some(&ns),
    )
    .await
    .expect_err("a 16Mi limit is refused");
    assert!(format!("{refused:#}").contains("limits.memory"), "{refused:#}");
    Ok(())
}
