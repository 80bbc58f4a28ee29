//! Installs the wsbridge CRDs (generated from the Rust types) into a control plane.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, PatchParams};
use tokio::sync::OnceCell;

static INSTALLED: OnceCell<()> = OnceCell::const_new();

/// Applies the four CRDs once per test binary and waits until they are Established.
pub async fn install_crds(client: &Client) -> Result<()> {
    INSTALLED
        .get_or_try_init(|| async {
            let api: Api<CustomResourceDefinition> = Api::all(client.clone());
            let mut names = Vec::new();
            for crd in wsbridge_api::crds() {
                let name = crd.metadata.name.clone().expect("CRDs are named");
                api.patch(
                    &name,
                    &PatchParams::apply(super::FIELD_MANAGER).force(),
                    &kube::api::Patch::Apply(&crd),
                )
                .await?;
                names.push(name);
            }
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            super::wait_crds_established(client, &names, Duration::from_secs(60)).await?;
            // Discovery lags Established by a moment; wait until the kinds are served.
            super::eventually(Duration::from_secs(30), "wsbridge kinds served", || async {
                let list: Api<wsbridge_api::Subscription> = Api::all(client.clone());
                Ok(list.list(&Default::default()).await.ok().map(|_| ()))
            })
            .await
        })
        .await
        .copied()
}
