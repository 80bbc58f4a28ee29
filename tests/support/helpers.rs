//! Cluster helpers for tests: namespaces, server-side apply of YAML, CRD
//! readiness and ServiceAccount tokens.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;

use super::controlplane::random_hex;

/// Field manager used by [`apply_yaml`].
pub const FIELD_MANAGER: &str = "wsbridge-tests";

/// Creates a namespace named `<prefix>-<random>` and returns its name.
pub async fn create_namespace(client: &Client, prefix: &str) -> Result<String> {
    let name = format!("{prefix}-{}", random_hex(4));
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            labels: Some([("wsbridge.test/namespace".to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(name)
}

/// Server-side applies (with `force`) every document of a multi-document
/// YAML string, in order, through the dynamic API. Namespaced objects without
/// a namespace go to `namespace` (an error if `None`). Kinds that are not
/// served yet (a CRD applied just before its objects) are retried for a while.
pub async fn apply_yaml(client: &Client, yaml: &str, namespace: Option<&str>) -> Result<Vec<DynamicObject>> {
    let mut applied = Vec::new();
    for document in serde_norway::Deserializer::from_str(yaml) {
        let value = serde_norway::Value::deserialize(document).context("parsing YAML")?;
        if value.is_null() {
            continue;
        }
        let json = serde_json::to_value(&value).context("converting YAML to JSON")?;
        let obj: DynamicObject =
            serde_json::from_value(json).context("YAML document is not a Kubernetes object")?;
        applied.push(apply_object(client, obj, namespace).await?);
    }
    Ok(applied)
}

/// [`apply_yaml`] for a file.
pub async fn apply_yaml_file(
    client: &Client,
    path: impl AsRef<Path>,
    namespace: Option<&str>,
) -> Result<Vec<DynamicObject>> {
    let path = path.as_ref();
    let yaml = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    apply_yaml(client, &yaml, namespace)
        .await
        .with_context(|| format!("applying {}", path.display()))
}

async fn apply_object(
    client: &Client,
    mut obj: DynamicObject,
    namespace: Option<&str>,
) -> Result<DynamicObject> {
    let types = obj
        .types
        .clone()
        .ok_or_else(|| anyhow!("object without apiVersion/kind"))?;
    let gvk = GroupVersionKind::try_from(&types)
        .map_err(|e| anyhow!("bad apiVersion {}: {e}", types.api_version))?;
    let name = obj.name_any();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (resource, caps) = loop {
        match discovery::pinned_kind(client, &gvk).await {
            Ok(found) => break found,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(%e, kind = %types.kind, "kind not served yet");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => bail!("{} {}: kind not served: {e}", types.kind, types.api_version),
        }
    };
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        Scope::Namespaced => {
            let ns = obj
                .metadata
                .namespace
                .clone()
                .or_else(|| namespace.map(str::to_string))
                .ok_or_else(|| anyhow!("{} {name} is namespaced but has no namespace", types.kind))?;
            obj.metadata.namespace = Some(ns.clone());
            Api::namespaced_with(client.clone(), &ns, &resource)
        }
    };
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .with_context(|| format!("applying {} {name}", types.kind))
}

/// Waits until every named CRD has the `Established` condition.
pub async fn wait_crds_established(client: &Client, names: &[&str], timeout: Duration) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in names {
        tokio::time::timeout(
            timeout,
            await_condition(api.clone(), name, conditions::is_crd_established()),
        )
        .await
        .map_err(|_| anyhow!("CRD {name} not Established after {timeout:?}"))?
        .with_context(|| format!("watching CRD {name}"))?;
    }
    Ok(())
}

/// Mints a token for ServiceAccount `namespace/name` through the TokenRequest
/// API. Empty `audiences` means the apiserver's own audience
/// ([`super::API_AUDIENCE`]).
pub async fn mint_service_account_token(
    client: &Client,
    namespace: &str,
    name: &str,
    audiences: &[&str],
    expiration: Duration,
) -> Result<String> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: Some(i64::try_from(expiration.as_secs()).unwrap_or(i64::MAX)),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let response = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for {namespace}/{name}"))?;
    response
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow!("TokenRequest for {namespace}/{name} returned no token"))
}

/// A Role from `examples/` (`publisher-role.yaml`, `subscriber-role.yaml`)
/// for `channel` in namespace `ns`, as the example tells users to edit it.
pub fn example_role(file: &str, channel: &str, ns: &str) -> Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(file);
    let yaml = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(yaml
        .replace("channel-name", channel)
        .replace("namespace: default", &format!("namespace: {ns}")))
}

/// A token of ServiceAccount `ns/name` for the API server's audience,
/// valid for ten minutes.
pub async fn service_account_token(client: &Client, ns: &str, name: &str) -> Result<String> {
    mint_service_account_token(client, ns, name, &[super::API_AUDIENCE], Duration::from_secs(600)).await
}

/// Creates ServiceAccount `namespace/name` (no-op if it exists).
pub async fn ensure_service_account(client: &Client, namespace: &str, name: &str) -> Result<()> {
    let sa = ServiceAccount {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &sa)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating ServiceAccount {namespace}/{name}")),
    }
}

/// Polls `check` every 100 ms until it returns `Ok(Some(_))`, failing with
/// the last error (or "condition not met") after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => anyhow!("condition not met"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(last.context(format!("{what}: not true after {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
