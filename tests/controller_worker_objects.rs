//! The worker objects against a real API server: a hand edit is reverted,
//! an object of a worker name that the Bridge does not own is never taken
//! over, and each worker gets a NetworkPolicy owned by its Bridge.

mod controller_support;
mod support;

use anyhow::Result;
use controller_support::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use wsbridge_api::{Bridge, Endpoint};
use wsbridge_controller::worker_objects::{self, PodsIn, WorkerIngress, drift};
use wsbridge_dataplane::DestinationPolicy;

const OBJECTS: &str = "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: ticker}\nspec: {}\n---\napiVersion: wsbridge.io/v1alpha1\nkind: Endpoint\nmetadata: {name: market}\nspec: {url: 'wss://feed.example.com/v2'}\n---\napiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {name: feed}\nspec: {channel: ticker, endpoint: market}\n";
const WORKER: &str = "wsbridge-worker-feed";

#[test]
fn controller_child_process() {
    controller_support::child_entry();
}

async fn setup(prefix: &str) -> Result<(Client, String, ControllerProcess)> {
    let cp = support::shared().await;
    let client = cp.client();
    install_crds(&client).await?;
    let ns = support::create_namespace(&client, prefix).await?;
    let controller = ControllerProcess::for_namespace(cp, &ns).await?;
    Ok((client, ns, controller))
}

async fn applied<K>(api: &Api<K>, what: &str, check: impl Fn(&K) -> bool) -> Result<K>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let check = &check;
    support::eventually(WAIT, what, || async move {
        Ok(api.get_opt(WORKER).await?.filter(|o| check(o)))
    })
    .await
}

fn container_security(d: &Deployment) -> Option<serde_json::Value> {
    let spec = d.spec.as_ref()?.template.spec.as_ref()?;
    spec.containers[0]
        .security_context
        .as_ref()
        .map(|s| serde_json::to_value(s).unwrap())
}

#[tokio::test]
async fn hand_edits_to_worker_objects_are_reverted() -> Result<()> {
    let (client, ns, _controller) = setup("ctl-drift").await?;
    support::apply_yaml(&client, OBJECTS, Some(&ns)).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let first = applied(&deployments, "worker Deployment", |d| {
        container_security(d).is_some()
    })
    .await?;
    let wanted = container_security(&first).unwrap();
    assert_eq!(wanted["readOnlyRootFilesystem"], true);

    // What `kubectl edit` does: an update by another manager, the applied
    // hash annotation untouched.
    deployments
        .patch(
            WORKER,
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(json!([
                {"op": "remove", "path": "/spec/template/spec/containers/0/securityContext"}
            ]))?),
        )
        .await?;
    let edited = deployments.get(WORKER).await?;
    assert!(container_security(&edited).is_none(), "the edit took");
    let reverted = applied(&deployments, "securityContext restored", |d| {
        container_security(d).as_ref() == Some(&wanted)
    })
    .await?;
    assert_eq!(reverted.uid(), first.uid(), "put back in place, not recreated");

    let roles: Api<Role> = Api::namespaced(client.clone(), &ns);
    let role = applied(&roles, "worker Role", |_| true).await?;
    roles
        .patch(
            WORKER,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]}),
            ),
        )
        .await?;
    applied(&roles, "Role rules restored", |r| r.rules == role.rules).await?;
    Ok(())
}

#[tokio::test]
async fn an_object_of_the_worker_name_that_the_bridge_does_not_own_is_never_taken_over() -> Result<()> {
    let (client, ns, _controller) = setup("ctl-foreign").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let foreign: Deployment = serde_json::from_value(json!({
        "metadata": {"name": WORKER},
        "spec": {
            "selector": {"matchLabels": {"app": "mine"}},
            "template": {"metadata": {"labels": {"app": "mine"}},
                         "spec": {"containers": [{"name": "app", "image": "example.com/mine:1"}]}}
        }
    }))?;
    let created = deployments.create(&PostParams::default(), &foreign).await?;
    support::apply_yaml(&client, OBJECTS, Some(&ns)).await?;
    let bridges: Api<Bridge> = Api::namespaced(client.clone(), &ns);
    let bridge = wait_reason(&bridges, "feed", "WorkerObjectConflict", bridge_conditions).await?;
    let ready = &bridge_conditions(&bridge)[0];
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains(&format!("Deployment {WORKER}")),
        "{}",
        ready.message
    );
    let after = deployments.get(WORKER).await?;
    assert_eq!(
        after.resource_version(),
        created.resource_version(),
        "left untouched"
    );
    assert!(after.owner_references().is_empty());

    // Once the other object is gone, the Bridge gets its own worker.
    deployments.delete(WORKER, &DeleteParams::default()).await?;
    let own = applied(&deployments, "the Bridge's own worker", |d| {
        d.owner_references().iter().any(|o| o.name == "feed")
    })
    .await?;
    assert_ne!(own.uid(), created.uid());
    wait_reason(&bridges, "feed", "WorkerUnavailable", bridge_conditions).await?;
    Ok(())
}

#[tokio::test]
async fn each_worker_gets_a_network_policy_owned_by_its_bridge_admitting_only_the_gateway() -> Result<()> {
    let (client, ns, _controller) = setup("ctl-netpol").await?;
    support::apply_yaml(&client, OBJECTS, Some(&ns)).await?;
    let bridge = Api::<Bridge>::namespaced(client.clone(), &ns).get("feed").await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let policy = applied(&policies, "worker NetworkPolicy", |_| true).await?;
    let owner = &policy.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("Bridge", bridge.uid().unwrap().as_str(), Some(true))
    );
    let spec = policy.spec.clone().unwrap();
    // The policy may be written before the worker's Deployment.
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let worker = applied(&deployments, "the worker Deployment", |_| true).await?;
    let pod_labels = worker.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    for (k, v) in spec.pod_selector.clone().unwrap().match_labels.unwrap() {
        assert_eq!(pod_labels.get(&k), Some(&v), "selects the worker's pods ({k})");
    }
    assert_eq!(spec.policy_types.as_deref(), Some(&["Ingress".to_string()][..]));
    let rules = serde_json::to_value(spec.ingress.unwrap())?;
    assert_eq!(
        rules,
        json!([{
            "from": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "wsbridge-system"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway", "app.kubernetes.io/name": "wsbridge"}},
            }],
            "ports": [{"port": 8080, "protocol": "TCP"}],
        }])
    );

    // What the API server stores (defaults filled in) is not drift: an
    // unchanged worker costs no apply on the next reconcile.
    let endpoint = Api::<Endpoint>::namespaced(client.clone(), &ns)
        .get("market")
        .await?;
    let ingress = WorkerIngress {
        gateway: PodsIn {
            namespace: "wsbridge-system".into(),
            labels: [
                ("app.kubernetes.io/name".to_string(), "wsbridge".to_string()),
                ("app.kubernetes.io/component".to_string(), "gateway".to_string()),
            ]
            .into(),
        },
        scraper: None,
    };
    // As the controller builds them: the Bridge with the (default) worker
    // pod defaults, its config hash over its send credential (derived from
    // the send key the controller created in its namespace).
    let sized = worker_objects::with_pod_defaults(&bridge, &Default::default());
    let key = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), "default")
        .get("wsbridge-send-key")
        .await?
        .data
        .and_then(|d| d.get("key").cloned())
        .expect("the send key");
    let credential = wsbridge_dataplane::send_auth::credential(&key.0, &bridge.uid().unwrap());
    let desired = worker_objects::worker_objects(
        &sized,
        &endpoint,
        "wsbridge:test",
        &worker_objects::config_hash(&[worker_objects::send_credential::config_entry(
            &bridge.name_any(),
            &credential,
        )]),
        &DestinationPolicy::default(),
        Some(&ingress),
        &[],
    );
    let pairs = [
        (
            serde_json::to_value(&desired.deployment)?,
            (serde_json::to_value(
                Api::<Deployment>::namespaced(client.clone(), &ns)
                    .get(WORKER)
                    .await?,
            )?),
        ),
        (
            serde_json::to_value(&desired.role)?,
            (serde_json::to_value(Api::<Role>::namespaced(client.clone(), &ns).get(WORKER).await?)?),
        ),
        (
            serde_json::to_value(&desired.role_binding)?,
            serde_json::to_value(
                Api::<RoleBinding>::namespaced(client.clone(), &ns)
                    .get(WORKER)
                    .await?,
            )?,
        ),
        (
            serde_json::to_value(&desired.service_account)?,
            serde_json::to_value(
                Api::<ServiceAccount>::namespaced(client.clone(), &ns)
                    .get(WORKER)
                    .await?,
            )?,
        ),
        (
            serde_json::to_value(desired.network_policy.as_ref().unwrap())?,
            serde_json::to_value(&policy)?,
        ),
    ];
    for (want, have) in pairs {
        assert!(
            !drift::drifted(&want, &have),
            "{} as stored differs from what is applied:\n{want:#}\n{have:#}",
            want["kind"]
        );
    }

    // Deleted by hand: put back.
    policies.delete(WORKER, &DeleteParams::default()).await?;
    let again = applied(&policies, "NetworkPolicy recreated", |p| p.uid() != policy.uid()).await?;
    assert_eq!(again.spec, policy.spec);
    Ok(())
}
