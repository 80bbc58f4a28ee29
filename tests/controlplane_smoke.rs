//! The test control plane works the way later tests rely on it.

mod support;

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};

#[tokio::test]
async fn control_plane_answers_readyz_ok() -> Result<()> {
    let cp = support::shared().await;
    let client = cp.client();
    let body = client
        .request_text(http::Request::get("/readyz").body(Vec::new())?)
        .await?;
    assert_eq!(body.trim(), "ok");
    let version = client.apiserver_version().await?;
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "34")
    );
    assert!(cp.kubeconfig_path().is_file());
    assert!(cp.server_url().starts_with("https://127.0.0.1:"));
    Ok(())
}

#[tokio::test]
async fn a_fresh_namespace_can_be_created() -> Result<()> {
    let client = support::shared().await.client();
    let a = support::create_namespace(&client, "smoke").await?;
    let b = support::create_namespace(&client, "smoke").await?;
    assert_ne!(a, b);
    let ns = Api::<Namespace>::all(client).get(&a).await?;
    assert_eq!(ns.metadata.name.as_deref(), Some(a.as_str()));
    Ok(())
}

#[tokio::test]
async fn a_minted_service_account_token_passes_token_review() -> Result<()> {
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "tokenreview").await?;
    support::ensure_service_account(&client, &ns, "reader").await?;
    let token =
        support::mint_service_account_token(&client, &ns, "reader", &[], Duration::from_secs(600))
            .await?;

    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token),
            audiences: Some(vec![support::API_AUDIENCE.to_string()]),
        },
        ..Default::default()
    };
    let review = Api::<TokenReview>::all(client)
        .create(&PostParams::default(), &review)
        .await?;
    let status = review.status.expect("TokenReview status");
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    let user = status.user.expect("authenticated user");
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{ns}:reader").as_str())
    );
    Ok(())
}

#[tokio::test]
async fn a_token_for_another_audience_is_rejected_by_token_review() -> Result<()> {
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "audience").await?;
    support::ensure_service_account(&client, &ns, "reader").await?;
    let token = support::mint_service_account_token(
        &client,
        &ns,
        "reader",
        &["wsbridge"],
        Duration::from_secs(600),
    )
    .await?;
    let review = |audience: &str| TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.clone()),
            audiences: Some(vec![audience.to_string()]),
        },
        ..Default::default()
    };
    let reviews = Api::<TokenReview>::all(client);
    let ok = reviews
        .create(&PostParams::default(), &review("wsbridge"))
        .await?;
    assert_eq!(ok.status.and_then(|s| s.authenticated), Some(true));
    let wrong = reviews
        .create(&PostParams::default(), &review(support::API_AUDIENCE))
        .await?;
    assert_ne!(wrong.status.and_then(|s| s.authenticated), Some(true));
    Ok(())
}

#[tokio::test]
async fn subject_access_review_is_denied_until_a_role_binding_allows_it() -> Result<()> {
    let cp = support::shared().await;
    let client = cp.client();
    let ns = support::create_namespace(&client, "sar").await?;
    support::ensure_service_account(&client, &ns, "reader").await?;
    let user = format!("system:serviceaccount:{ns}:reader");

    let allowed = |client: Client, ns: String, user: String| async move {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user),
                groups: Some(vec![
                    "system:serviceaccounts".into(),
                    "system:authenticated".into(),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(ns),
                    verb: Some("list".into()),
                    resource: Some("configmaps".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let review = Api::<SubjectAccessReview>::all(client)
            .create(&PostParams::default(), &review)
            .await?;
        anyhow::Ok(review.status.map(|s| s.allowed).unwrap_or(false))
    };

    assert!(!allowed(client.clone(), ns.clone(), user.clone()).await?);
    // The SA's own token is refused as well.
    let token =
        support::mint_service_account_token(&client, &ns, "reader", &[], Duration::from_secs(600))
            .await?;
    let as_sa = cp.client_with_token(&token);
    let denied = Api::<ConfigMap>::namespaced(as_sa.clone(), &ns)
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(s)) if s.code == 403),
        "{denied:?}"
    );

    support::apply_yaml(
        &client,
        &format!(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: configmap-reader
rules:
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: reader-reads-configmaps
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: configmap-reader
subjects:
- kind: ServiceAccount
  name: reader
  namespace: {ns}
"#
        ),
        Some(&ns),
    )
    .await?;

    support::eventually(
        Duration::from_secs(10),
        "SubjectAccessReview allowed",
        || {
            let (client, ns, user) = (client.clone(), ns.clone(), user.clone());
            async move { Ok(allowed(client, ns, user).await?.then_some(())) }
        },
    )
    .await?;
    support::eventually(
        Duration::from_secs(10),
        "SA token may list configmaps",
        || {
            let api = Api::<ConfigMap>::namespaced(as_sa.clone(), &ns);
            async move { Ok(api.list(&ListParams::default()).await.ok().map(|_| ())) }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_custom_resource_definition_is_established_and_serves_objects() -> Result<()> {
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "crd").await?;
    let group = format!(
        "g{}.smoke.wsbridge.test",
        support::controlplane::random_hex(3)
    );
    let applied = support::apply_yaml(
        &client,
        &format!(
            r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {{type: integer}}
---
apiVersion: {group}/v1
kind: Widget
metadata:
  name: first
spec:
  size: 3
"#
        ),
        Some(&ns),
    )
    .await?;
    assert_eq!(applied.len(), 2);
    support::wait_crds_established(
        &client,
        &[&format!("widgets.{group}")],
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(applied[1].metadata.namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(applied[1].data["spec"]["size"], 3);
    Ok(())
}

#[tokio::test]
async fn an_owned_object_is_garbage_collected_after_its_owner_is_deleted() -> Result<()> {
    let client = support::shared_with_controller_manager().await.client();
    let ns = support::create_namespace(&client, "gc").await?;
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let owner = configmaps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    configmaps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owned".into()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "ConfigMap".into(),
                        name: "owner".into(),
                        uid: owner.metadata.uid.clone().expect("uid"),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    configmaps
        .delete("owner", &DeleteParams::background())
        .await?;
    support::eventually(
        Duration::from_secs(60),
        "owned ConfigMap garbage collected",
        || {
            let configmaps = configmaps.clone();
            async move { Ok(configmaps.get_opt("owned").await?.is_none().then_some(())) }
        },
    )
    .await?;
    Ok(())
}

/// Run in a child process by the test below: starts a control plane, prints
/// its process ids and temp dir, then waits to be killed.
#[tokio::test]
#[ignore = "helper, run as a child process by no_control_plane_process_survives_its_test_process"]
async fn helper_start_control_plane_and_wait() {
    let cp = support::shared_with_controller_manager().await;
    let pids: Vec<String> = cp.pids().iter().map(|(_, pid)| pid.to_string()).collect();
    println!("PIDS {} DIR {}", pids.join(","), cp.temp_dir().display());
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[test]
fn no_control_plane_process_survives_its_test_process() -> Result<()> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            "helper_start_control_plane_and_wait",
            "--nocapture",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("PIDS "));
    // Killed without any chance to clean up, like a crash or a CI timeout.
    child.kill()?;
    child.wait()?;
    let line = line.expect("the helper printed its control plane's pids");
    let (pids, dir) = line["PIDS ".len()..]
        .split_once(" DIR ")
        .expect("PIDS ... DIR ...");
    let pids: Vec<u32> = pids.split(',').map(str::parse).collect::<Result<_, _>>()?;
    assert_eq!(
        pids.len(),
        3,
        "etcd, kube-apiserver, kube-controller-manager"
    );

    let running = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            // A zombie waiting for a reaping init is dead already.
            .is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while pids.iter().any(running) || std::path::Path::new(dir).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {:?}, dir exists: {}",
            pids.iter().filter(|p| running(p)).collect::<Vec<_>>(),
            std::path::Path::new(dir).exists()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[tokio::test]
async fn kubectl_reaches_the_control_plane_as_admin() -> Result<()> {
    let cp = support::shared().await;
    let out = tokio::process::Command::from(cp.kubectl())
        .args(["auth", "can-i", "*", "*"])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");
    Ok(())
}

#[tokio::test]
async fn an_owned_control_plane_stops_when_dropped() -> Result<()> {
    let cp = support::ControlPlane::start(support::Options::default()).await?;
    let client = cp.client();
    support::create_namespace(&client, "owned").await?;
    let pids = cp.pids();
    let dir = cp.temp_dir().to_path_buf();
    drop(client);
    drop(cp);
    for (name, pid) in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "{name} ({pid}) still running"
        );
    }
    assert!(!dir.exists());
    Ok(())
}
