//! The CRDs against a real kube-apiserver: they install, accept every example,
//! refuse every object of the invalid corpus with a message naming the field,
//! and publish their descriptions in the OpenAPI v3 document.

mod support;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use support::yaml_files;

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn documents(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect()
}

fn api_for(client: &kube::Client, ns: &str, obj: &serde_json::Value) -> Api<DynamicObject> {
    let (group, version) = match obj["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (String::new(), obj["apiVersion"].as_str().unwrap().to_owned()),
    };
    let kind = obj["kind"].as_str().unwrap();
    let gvk = GroupVersionKind::gvk(&group, &version, kind);
    let plural = format!("{}s", kind.to_lowercase());
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, &plural),
    )
}

async fn apply(
    client: &kube::Client,
    ns: &str,
    obj: &serde_json::Value,
) -> Result<DynamicObject, kube::Error> {
    let name = obj["metadata"]["name"].as_str().unwrap();
    let params = PatchParams::apply("wsbridge-test").force().validation_strict();
    api_for(client, ns, obj)
        .patch(name, &params, &Patch::Apply(obj))
        .await
}

/// Creates the object the way `kubectl create` does: POST with strict field validation.
async fn create_strict(
    client: &kube::Client,
    ns: &str,
    obj: &serde_json::Value,
) -> Result<serde_json::Value, kube::Error> {
    let kind = obj["kind"].as_str().unwrap().to_lowercase();
    let url = format!(
        "/apis/{}/namespaces/{ns}/{kind}s?fieldValidation=Strict&dryRun=All",
        obj["apiVersion"].as_str().unwrap()
    );
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(obj).unwrap())
        .unwrap();
    client.request(request).await
}

/// The kinds our examples use that this control plane serves.
fn is_installable(obj: &serde_json::Value) -> bool {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    api_version.starts_with("wsbridge.io/")
        || api_version == "v1"
        || api_version.starts_with("rbac.authorization.k8s.io/")
}

#[tokio::test]
async fn crds_install_and_become_established() -> Result<()> {
    let client = support::shared().await.client();
    support::install_crds(&client).await?;
    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(client);
    for name in ["bridges", "channels", "endpoints", "subscriptions"] {
        let crd = crds.get(&format!("{name}.wsbridge.io")).await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "{name} is not Established");
        assert!(
            crd.spec
                .names
                .categories
                .unwrap_or_default()
                .contains(&"wsbridge".to_string())
        );
    }
    Ok(())
}

#[tokio::test]
async fn every_example_is_accepted() -> Result<()> {
    let client = support::shared().await.client();
    support::install_crds(&client).await?;
    let mut applied = 0;
    for file in yaml_files(&repo_path("examples")) {
        if file.components().any(|c| c.as_os_str() == "gitops") {
            continue;
        }
        let ns = support::create_namespace(&client, "example").await?;
        for obj in documents(&file).iter().filter(|o| is_installable(o)) {
            apply(&client, &ns, obj).await.with_context(|| {
                format!(
                    "{} {} in {}",
                    obj["kind"],
                    obj["metadata"]["name"],
                    file.display()
                )
            })?;
            applied += 1;
        }
    }
    assert!(applied >= 5, "only {applied} example objects found");
    Ok(())
}

#[tokio::test]
async fn every_invalid_object_is_refused_naming_its_field() -> Result<()> {
    let client = support::shared().await.client();
    support::install_crds(&client).await?;
    let ns = support::create_namespace(&client, "invalid").await?;
    let files = yaml_files(&repo_path("tests/corpus/invalid"));
    assert!(
        files.len() >= 20,
        "the invalid corpus has only {} objects",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        let field = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .with_context(|| format!("{} lacks an `# expect: FIELD` line", file.display()))?
            .trim();
        let obj = &documents(file)[0];
        match create_strict(&client, &ns, obj).await {
            Ok(_) => failures.push(format!("{}: accepted", file.display())),
            Err(kube::Error::Api(status)) => {
                if status.code != 422 && status.code != 400 {
                    failures.push(format!(
                        "{}: HTTP {} {}",
                        file.display(),
                        status.code,
                        status.message
                    ));
                } else if !status.message.contains(field) {
                    failures.push(format!(
                        "{}: message does not name {field}: {}",
                        file.display(),
                        status.message
                    ));
                }
            }
            Err(other) => failures.push(format!("{}: {other}", file.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid objects misjudged:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn a_subscriptions_backlog_bound_is_fixed_once_it_exists() -> Result<()> {
    let client = support::shared().await.client();
    support::install_crds(&client).await?;
    let ns = support::create_namespace(&client, "backlog").await?;
    let subscription = |backlog: serde_json::Value, subscriber: &str| {
        let mut spec = serde_json::json!({"channel": "orders", "subscriber": {"uri": subscriber}});
        if !backlog.is_null() {
            spec["backlog"] = backlog;
        }
        serde_json::json!({
            "apiVersion": "wsbridge.io/v1alpha1",
            "kind": "Subscription",
            "metadata": {"name": "audit"},
            "spec": spec,
        })
    };
    let bound = serde_json::json!({"maxMessages": 1000});
    apply(&client, &ns, &subscription(bound.clone(), "http://audit/a")).await?;
    // Other fields still change.
    apply(&client, &ns, &subscription(bound, "http://audit/b")).await?;
    for (what, backlog) in [
        ("a changed bound", serde_json::json!({"maxMessages": 2000})),
        (
            "an added bound",
            serde_json::json!({"maxMessages": 1000, "maxBytes": 4096}),
        ),
        ("a removed bound", serde_json::Value::Null),
    ] {
        match apply(&client, &ns, &subscription(backlog, "http://audit/b")).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{what}: {}", status.message);
                assert!(
                    status.message.contains("spec.backlog cannot change"),
                    "{what}: {}",
                    status.message
                );
            }
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn openapi_v3_carries_field_descriptions() -> Result<()> {
    let client = support::shared().await.client();
    support::install_crds(&client).await?;
    let doc = support::eventually(
        std::time::Duration::from_secs(30),
        "OpenAPI v3 for wsbridge.io",
        || {
            let client = client.clone();
            async move {
                let request = http::Request::get("/openapi/v3/apis/wsbridge.io/v1alpha1").body(Vec::new())?;
                Ok(client.request::<serde_json::Value>(request).await.ok())
            }
        },
    )
    .await?;
    let schemas = &doc["components"]["schemas"];
    let endpoint =
        schemas["io.wsbridge.v1alpha1.Endpoint"]["properties"]["spec"]["properties"]["url"]["description"]
            .as_str()
            .unwrap_or_default();
    assert!(
        endpoint.contains("ws://"),
        "Endpoint spec.url description missing: {endpoint:?}"
    );
    let retry = schemas["io.wsbridge.v1alpha1.Subscription"]["properties"]["spec"]["properties"]["delivery"]
        ["properties"]["retry"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        retry.contains("Retries"),
        "Subscription delivery.retry description missing: {retry:?}"
    );
    Ok(())
}
