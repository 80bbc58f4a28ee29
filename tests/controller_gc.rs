//! Deleting a Bridge removes its worker objects: they carry a controller
//! owner reference, and kube-controller-manager's garbage collector (started
//! by the harness) deletes them. No finalizer is involved.

mod controller_support;
mod support;

use anyhow::Result;
use controller_support::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use wsbridge_api::Bridge;

#[test]
fn controller_child_process() {
    controller_support::child_entry();
}

#[tokio::test]
async fn deleting_a_bridge_removes_its_worker_objects() -> Result<()> {
    let cp = support::shared_with_controller_manager().await;
    let client = cp.client();
    install_crds(&client).await?;
    let ns = support::create_namespace(&client, "ctl-gc").await?;
    let _controller = ControllerProcess::for_namespace(cp, &ns).await?;
    support::apply_yaml(
        &client,
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: ticker}\nspec: {}\n---\napiVersion: wsbridge.io/v1alpha1\nkind: Endpoint\nmetadata: {name: market}\nspec: {url: 'ws://feed.example/'}\n---\napiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {name: feed}\nspec: {channel: ticker, endpoint: market}\n",
        Some(&ns),
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
    // The Bridge's send credential.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let name = "wsbridge-worker-feed";
    support::eventually(WAIT, "worker objects", || {
        let (d, s, r, b) = (deployments.clone(), sas.clone(), roles.clone(), bindings.clone());
        let c = secrets.clone();
        async move {
            let all = d.get_opt(name).await?.is_some()
                && s.get_opt(name).await?.is_some()
                && r.get_opt(name).await?.is_some()
                && b.get_opt(name).await?.is_some()
                && c.get_opt(name).await?.is_some();
            Ok(all.then_some(()))
        }
    })
    .await?;
    let bridge = Api::<Bridge>::namespaced(client.clone(), &ns).get("feed").await?;
    assert!(bridge.finalizers().is_empty(), "no finalizer needed");
    Api::<Bridge>::namespaced(client.clone(), &ns)
        .delete("feed", &DeleteParams::foreground())
        .await?;
    support::eventually(
        std::time::Duration::from_secs(60),
        "worker objects deleted",
        || {
            let (d, s, r, b) = (deployments.clone(), sas.clone(), roles.clone(), bindings.clone());
            let c = secrets.clone();
            async move {
                let none = d.get_opt(name).await?.is_none()
                    && s.get_opt(name).await?.is_none()
                    && r.get_opt(name).await?.is_none()
                    && b.get_opt(name).await?.is_none()
                    && c.get_opt(name).await?.is_none();
                Ok(none.then_some(()))
            }
        },
    )
    .await?;
    Ok(())
}
