//! What a cluster admin installs — the Helm chart, the kustomize manifests
//! and the GitOps examples — lints, renders, passes the real API server's
//! validation and admission, and asks for least privilege only.
//!
//! helm is built from its Go module by `tests/tools/build.sh` and kubectl by
//! `tests/controlplane/build.sh` (both cached); both talk to the test API
//! server through the harness's admin kubeconfig.
//!
//! Over 500 lines as one job: the install surface's tests in one binary; helpers in deploy_support.

mod deploy_support;
mod support;

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Context, Result, anyhow, ensure};
use deploy_support::{
    ALL_FEATURES, CHART, crds_installed, documents, helm, helm_binary, installable_chart, kind, kubectl,
    name, namespace, of_kind, render, repo, run, same_files, server_dry_run, strings,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::Api;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// generated artefacts do not drift

#[test]
fn chart_and_deploy_crds_are_copies_of_crds() -> Result<()> {
    same_files(&repo().join("crds"), &repo().join("charts/wsbridge/crds"))?;
    same_files(&repo().join("crds"), &repo().join("deploy/crds"))
}

#[test]
fn deploy_manifests_are_the_rendered_chart() -> Result<()> {
    let out = std::env::temp_dir().join(format!("wsbridge-generate-{}", std::process::id()));
    std::fs::create_dir_all(out.join("deploy"))?;
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("deploy/generate.sh"))
        .arg(&out)
        .env("HELM", helm_binary());
    let result = run(cmd, None).and_then(|_| {
        let fresh = std::fs::read_to_string(out.join("deploy/wsbridge.yaml"))?;
        let checked_in = std::fs::read_to_string(repo().join("deploy/wsbridge.yaml"))?;
        ensure!(
            fresh == checked_in,
            "deploy/wsbridge.yaml is out of date with charts/wsbridge: run deploy/generate.sh"
        );
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&out);
    result
}

// ---------------------------------------------------------------------------
// the chart

#[test]
fn helm_lint_passes_strict() -> Result<()> {
    for strict in [false, true] {
        for set in [&[][..], ALL_FEATURES] {
            let mut cmd = helm(None);
            cmd.args(["lint", CHART]);
            if strict {
                cmd.arg("--strict");
            }
            for value in set {
                cmd.args(["--set", value]);
            }
            let out = run(cmd, None)?;
            assert!(out.contains("0 chart(s) failed"), "{out}");
        }
    }
    Ok(())
}

#[test]
fn values_schema_refuses_unknown_and_wrong_values() -> Result<()> {
    for bad in [
        "bogus=1",
        "controller.bogus=1",
        "image.pullPolicy=Sometimes",
        "controller.replicas=0",
        "gateway.service.port=70000",
        "metrics.serviceMonitor.interval=often",
    ] {
        let err = render("wsbridge", "wsbridge-system", &[bad]).expect_err(bad);
        assert!(
            format!("{err:#}").contains("values don't meet the specifications"),
            "{bad}: {err:#}"
        );
    }
    Ok(())
}

#[test]
fn chart_renders_the_documented_defaults() -> Result<()> {
    let docs = documents(&render("wsbridge", "wsbridge-system", &[])?)?;
    let controller = of_kind(&docs, "Deployment")
        .find(|d| name(d) == "wsbridge-controller")
        .ok_or_else(|| anyhow!("no controller Deployment"))?;
    assert_eq!(controller["spec"]["replicas"], 2);
    let container = &controller["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/wsbridge/wsbridge:0.1.0");
    assert_eq!(
        strings(&container["args"]),
        [
            "controller",
            "--gateway-url",
            "http://wsbridge-gateway.wsbridge-system.svc",
            "--worker-image",
            "ghcr.io/wsbridge/wsbridge:0.1.0",
            // sendKey: the installation key of the workers' send path.
            "--send-key-secret",
            "wsbridge-send-key",
            "--delivery-keys-secret",
            "wsbridge-delivery-keys",
            // controller.workerPod: every worker's default size.
            "--worker-pod-defaults",
            r#"{"resources":{"limits":{"cpu":"1","memory":"256Mi"},"requests":{"cpu":"50m","memory":"32Mi"}}}"#,
            "--own-service",
            "wsbridge-gateway.wsbridge-system",
            "--gateway-pod-labels",
            "app.kubernetes.io/name=wsbridge,app.kubernetes.io/instance=wsbridge,app.kubernetes.io/component=gateway",
        ]
    );
    let gateway = of_kind(&docs, "Deployment")
        .find(|d| name(d) == "wsbridge-gateway")
        .ok_or_else(|| anyhow!("no gateway Deployment"))?;
    assert_eq!(
        strings(&gateway["spec"]["template"]["spec"]["containers"][0]["args"]),
        [
            "gateway",
            "--own-service",
            "wsbridge-gateway.wsbridge-system",
            "--delivery-keys-dir",
            "/var/run/secrets/wsbridge/delivery-keys"
        ]
    );
    // The gateway reads the send key from the controller's Secret, mounted
    // (it has no Secret access through the API).
    let pod = &gateway["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let file = env
        .iter()
        .find(|e| e["name"] == "WSBRIDGE_SEND_KEY_FILE")
        .ok_or_else(|| anyhow!("no WSBRIDGE_SEND_KEY_FILE"))?;
    assert_eq!(file["value"], "/var/run/secrets/wsbridge/send-key/key");
    let mounts = pod["containers"][0]["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mount = mounts
        .iter()
        .find(|m| m["name"] == "send-key")
        .ok_or_else(|| anyhow!("no send-key mount: {mounts:?}"))?;
    assert_eq!(
        (&mount["mountPath"], &mount["readOnly"]),
        (
            &serde_json::json!("/var/run/secrets/wsbridge/send-key"),
            &serde_json::json!(true)
        )
    );
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "send-key")
        .ok_or_else(|| anyhow!("no send-key volume"))?;
    assert_eq!(volume["secret"]["secretName"], "wsbridge-send-key");
    let named = documents(&render(
        "wsbridge",
        "wsbridge-system",
        &["sendKey.secretName=my-key"],
    )?)?;
    let args = of_kind(&named, "Deployment")
        .find(|d| name(d) == "wsbridge-controller")
        .map(|d| strings(&d["spec"]["template"]["spec"]["containers"][0]["args"]).join(" "))
        .unwrap_or_default();
    assert!(args.contains("--send-key-secret my-key"), "{args}");
    let service = of_kind(&docs, "Service")
        .find(|d| name(d) == "wsbridge-gateway")
        .ok_or_else(|| anyhow!("no gateway Service"))?;
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    for doc in &docs {
        if let Some(ns) = doc["metadata"]["namespace"].as_str() {
            assert_eq!(ns, "wsbridge-system", "{} {}", kind(doc), name(doc));
        }
    }
    assert_eq!(
        of_kind(&docs, "ServiceMonitor").count(),
        0,
        "ServiceMonitor only when enabled"
    );
    assert_eq!(
        of_kind(&docs, "HorizontalPodAutoscaler").count(),
        0,
        "HPA only when enabled"
    );

    // Switching autoscaling on hands the gateway's replica count to the HPA.
    let docs = documents(&render("wsbridge", "wsbridge-system", ALL_FEATURES)?)?;
    let gateway = of_kind(&docs, "Deployment")
        .find(|d| name(d) == "wsbridge-gateway")
        .ok_or_else(|| anyhow!("no gateway Deployment"))?;
    assert!(gateway["spec"].get("replicas").is_none());
    assert_eq!(of_kind(&docs, "HorizontalPodAutoscaler").count(), 1);
    assert_eq!(of_kind(&docs, "ServiceMonitor").count(), 1);
    Ok(())
}

#[test]
fn destination_policy_values_become_controller_and_gateway_flags() -> Result<()> {
    let docs = documents(&render(
        "wsbridge",
        "wsbridge-system",
        &[
            "destinations.deny={127.0.0.2/32,.corp.example}",
            "destinations.allow={10.0.0.0/8}",
            "destinations.allowLinkLocal=true",
        ],
    )?)?;
    for d in of_kind(&docs, "Deployment") {
        let args = strings(&d["spec"]["template"]["spec"]["containers"][0]["args"]);
        let joined = args.join(" ");
        for expected in [
            "--destination-deny 127.0.0.2/32 --destination-deny .corp.example",
            "--destination-allow 10.0.0.0/8",
            "--allow-link-local",
        ] {
            assert!(joined.contains(expected), "{}: {joined}", name(d));
        }
    }
    let defaults = documents(&render("wsbridge", "wsbridge-system", &[])?)?;
    for d in of_kind(&defaults, "Deployment") {
        let args = strings(&d["spec"]["template"]["spec"]["containers"][0]["args"]);
        assert!(
            !args
                .iter()
                .any(|a| a.contains("destination") || a.contains("link-local")),
            "no flags by default (the built-in denials need none): {args:?}"
        );
    }
    Ok(())
}

#[test]
fn network_policies_admit_the_gateway_to_workers_and_the_scraper_to_metrics() -> Result<()> {
    let args_of = |docs: &[Value], deployment: &str| -> Result<Vec<String>> {
        let d = of_kind(docs, "Deployment")
            .find(|d| name(d) == deployment)
            .ok_or_else(|| anyhow!("no {deployment}"))?;
        let args = strings(&d["spec"]["template"]["spec"]["containers"][0]["args"]);
        Ok(args.into_iter().map(str::to_owned).collect())
    };
    let docs = documents(&render(
        "wsbridge",
        "wsbridge-system",
        &[
            "networkPolicy.metricsScraper.namespace=monitoring",
            "networkPolicy.metricsScraper.podLabels.app=prometheus",
        ],
    )?)?;
    // The workers' policies are the controller's: these flags describe them.
    let args = args_of(&docs, "wsbridge-controller")?.join(" ");
    assert!(
        args.contains(
            "--gateway-pod-labels app.kubernetes.io/name=wsbridge,app.kubernetes.io/instance=wsbridge,app.kubernetes.io/component=gateway \
             --metrics-scraper-namespace monitoring --metrics-scraper-pod-labels app=prometheus"
        ),
        "{args}"
    );
    let policy = |n: &str| {
        of_kind(&docs, "NetworkPolicy")
            .find(|d| name(d) == n)
            .cloned()
            .ok_or_else(|| anyhow!("no NetworkPolicy {n}"))
    };
    let controller = policy("wsbridge-controller")?;
    assert_eq!(
        controller["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "controller"
    );
    assert_eq!(
        controller["spec"]["ingress"],
        serde_json::json!([{
            "from": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app": "prometheus"}},
            }],
            "ports": [{"port": 8080, "protocol": "TCP"}],
        }])
    );
    let gateway = policy("wsbridge-gateway")?;
    assert_eq!(
        gateway["spec"]["ingress"],
        serde_json::json!([{"ports": [{"port": 8080, "protocol": "TCP"}]}]),
        "publishers from anywhere, on the gateway's port only"
    );

    let defaults = documents(&render("wsbridge", "wsbridge-system", &[])?)?;
    assert_eq!(
        policy_ingress(&defaults, "wsbridge-controller"),
        serde_json::json!([]),
        "no scraper configured: nothing reaches the controller"
    );
    let off = documents(&render(
        "wsbridge",
        "wsbridge-system",
        &["networkPolicy.enabled=false"],
    )?)?;
    assert_eq!(of_kind(&off, "NetworkPolicy").count(), 0);
    assert!(args_of(&off, "wsbridge-controller")?.contains(&"--worker-network-policy=false".to_string()));
    Ok(())
}

fn policy_ingress(docs: &[Value], n: &str) -> Value {
    of_kind(docs, "NetworkPolicy")
        .find(|d| name(d) == n)
        .map(|d| d["spec"]["ingress"].clone())
        .unwrap_or_default()
}

#[test]
fn chart_rbac_is_least_privilege() -> Result<()> {
    let docs = documents(&render("wsbridge", "wsbridge-system", ALL_FEATURES)?)?;
    let roles: Vec<&Value> = docs
        .iter()
        .filter(|d| matches!(kind(d), "Role" | "ClusterRole"))
        .collect();
    assert_eq!(
        roles.len(),
        3,
        "controller and gateway ClusterRoles, leader-election Role"
    );
    for role in roles {
        let who = format!("{} {}", kind(role), name(role));
        assert!(role.get("aggregationRule").is_none(), "{who}: aggregation");
        for rule in role["rules"].as_array().into_iter().flatten() {
            let verbs = strings(&rule["verbs"]);
            let resources = strings(&rule["resources"]);
            let groups = strings(&rule["apiGroups"]);
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "{who}: nonResourceURLs in {rule}"
            );
            for field in [&verbs, &resources, &groups] {
                assert!(
                    !field.iter().any(|s| s.contains('*')),
                    "{who}: wildcard in {rule}"
                );
            }
            for verb in ["escalate", "bind", "impersonate"] {
                assert!(!verbs.contains(&verb), "{who}: {verb} in {rule}");
            }
            let secrets = groups.contains(&"") && resources.contains(&"secrets");
            if secrets && (verbs.contains(&"list") || verbs.contains(&"watch")) {
                assert_eq!(
                    (kind(role), name(role)),
                    ("ClusterRole", "wsbridge-controller"),
                    "only the controller lists/watches Secrets: {rule}"
                );
            }
            if secrets {
                // Only the controller writes Secrets (the send path's
                // credentials), with server-side apply: create and patch, in
                // a rule of their own; never update or delete.
                let controller = (kind(role), name(role)) == ("ClusterRole", "wsbridge-controller");
                let writes: &[&str] = if controller {
                    &["update", "delete", "deletecollection"]
                } else {
                    &["create", "update", "patch", "delete", "deletecollection"]
                };
                assert!(
                    !writes.iter().any(|v| verbs.contains(v)),
                    "{who}: writes Secrets: {rule}"
                );
                if verbs.contains(&"create") || verbs.contains(&"patch") {
                    assert_eq!(
                        resources,
                        ["secrets"],
                        "{who}: Secret writes share a rule: {rule}"
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn every_container_runs_restricted() -> Result<()> {
    let docs = documents(&render("wsbridge", "wsbridge-system", ALL_FEATURES)?)?;
    let mut checked = 0;
    for doc in &docs {
        let Some(pod) = doc["spec"]["template"]["spec"].as_object() else {
            continue;
        };
        let who = format!("{} {}", kind(doc), name(doc));
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{who}");
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{who}");
        assert!(
            pod.get("hostNetwork").is_none() && pod.get("hostPID").is_none(),
            "{who}"
        );
        let containers = pod["containers"].as_array().into_iter().flatten();
        let init = pod
            .get("initContainers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for container in containers.chain(init) {
            let who = format!("{who} container {}", container["name"]);
            let sc = &container["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{who}");
            assert_eq!(sc["runAsUser"], 65532, "{who}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{who}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{who}");
            assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{who}");
            assert!(sc["capabilities"].get("add").is_none(), "{who}");
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{who}");
            assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz", "{who}");
            assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz", "{who}");
            assert_eq!(container["ports"][0]["containerPort"], 8080, "{who}");
            assert!(
                container["resources"]["requests"].is_object(),
                "{who}: no requests"
            );
            assert!(
                container["resources"]["limits"]["memory"].is_string(),
                "{who}: no memory limit"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 2, "controller and gateway");
    Ok(())
}

#[tokio::test]
async fn rendered_chart_passes_server_dry_run() -> Result<()> {
    let cp = support::shared().await;
    crds_installed(cp).await?;
    let ns = namespace(cp, "chart-dry-run", &[]).await?;
    for set in [&[][..], ALL_FEATURES] {
        let yaml = render("dry-run", &ns, set)?;
        let out = server_dry_run(cp, &yaml)?;
        assert!(
            out.contains("deployment.apps/dry-run-wsbridge-controller serverside-applied (server dry run)"),
            "{out}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn kustomize_manifests_pass_server_dry_run() -> Result<()> {
    let cp = support::shared().await;
    crds_installed(cp).await?;
    let mut build = kubectl(cp);
    build.args(["kustomize", "deploy/"]);
    let yaml = build_and_check_kustomize(run(build, None)?)?;
    // Objects in a namespace that does not exist yet are refused even in a
    // dry run, so create the namespace (only) for real first.
    let namespace: String = documents(&yaml)?
        .into_iter()
        .filter(|d| kind(d) == "Namespace")
        .map(|d| serde_norway::to_string(&d))
        .collect::<Result<_, _>>()?;
    support::apply_yaml(&cp.client(), &namespace, None).await?;
    let out = server_dry_run(cp, &yaml)?;
    assert!(
        out.contains("deployment.apps/wsbridge-gateway serverside-applied (server dry run)"),
        "{out}"
    );
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/bridges.wsbridge.io"),
        "{out}"
    );
    Ok(())
}

fn build_and_check_kustomize(yaml: String) -> Result<String> {
    let docs = documents(&yaml)?;
    let kinds: BTreeSet<&str> = docs.iter().map(kind).collect();
    for expected in [
        "CustomResourceDefinition",
        "Namespace",
        "Deployment",
        "ClusterRole",
        "Service",
    ] {
        ensure!(
            kinds.contains(expected),
            "kustomize output has no {expected}: {kinds:?}"
        );
    }
    for doc in &docs {
        let labels = &doc["metadata"]["labels"];
        ensure!(
            labels["app.kubernetes.io/managed-by"] == "kustomize" && labels.get("helm.sh/chart").is_none(),
            "{} {}: Helm labels in the kustomize manifests",
            kind(doc),
            name(doc)
        );
        if let Some(ns) = doc["metadata"]["namespace"].as_str() {
            ensure!(ns == "wsbridge-system", "{} {} in {ns}", kind(doc), name(doc));
        }
    }
    Ok(yaml)
}

#[tokio::test]
async fn pod_security_admission_accepts_the_chart_pods() -> Result<()> {
    let cp = support::shared().await;
    let ns = namespace(
        cp,
        "restricted",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await?;
    let docs = documents(&render("wsbridge", &ns, ALL_FEATURES)?)?;
    let mut pods = Vec::new();
    for deployment in of_kind(&docs, "Deployment") {
        let template = &deployment["spec"]["template"];
        pods.push(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name(deployment), "namespace": ns, "labels": template["metadata"]["labels"]},
            "spec": template["spec"],
        }));
    }
    assert_eq!(pods.len(), 2);
    for pod in &pods {
        let out = server_dry_run(cp, &serde_json::to_string(pod)?)?;
        assert!(out.contains("serverside-applied (server dry run)"), "{out}");
    }

    // The admission check is really on: the same pod without its security
    // context is refused.
    let mut weakened = pods[0].clone();
    weakened["spec"]["containers"][0]["securityContext"] = json!({"allowPrivilegeEscalation": true});
    let err = server_dry_run(cp, &serde_json::to_string(&weakened)?).expect_err("restricted namespace");
    assert!(
        format!("{err:#}").contains("violates PodSecurity \"restricted"),
        "{err:#}"
    );
    Ok(())
}

#[tokio::test]
async fn helm_install_creates_the_expected_objects() -> Result<()> {
    let cp = support::shared().await;
    crds_installed(cp).await?;
    let ns = namespace(cp, "helm-install", &[]).await?;
    let release = format!("it-{}", support::controlplane::random_hex(3));
    let mut install = helm(Some(cp));
    install
        .args(["install", &release])
        .arg(installable_chart(cp).await?)
        .args(["--namespace", &ns, "--timeout", "60s"]);
    let out = run(install, None)?;
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(
        out.contains(&format!("http://{release}-wsbridge-gateway.{ns}.svc")),
        "NOTES: {out}"
    );

    let client = cp.client();
    let prefix = format!("{release}-wsbridge");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    for role in ["controller", "gateway"] {
        let d = deployments.get(&format!("{prefix}-{role}")).await?;
        assert_eq!(d.spec.and_then(|s| s.replicas), Some(2), "{role}");
        Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .get(&format!("{prefix}-{role}"))
            .await?;
        Api::<Service>::namespaced(client.clone(), &ns)
            .get(&format!("{prefix}-{role}-metrics"))
            .await?;
        Api::<ClusterRole>::all(client.clone())
            .get(&format!("{prefix}-{role}"))
            .await?;
        let binding = Api::<ClusterRoleBinding>::all(client.clone())
            .get(&format!("{prefix}-{role}"))
            .await?;
        let subject = &binding.subjects.unwrap_or_default()[0];
        assert_eq!(
            (subject.name.as_str(), subject.namespace.as_deref()),
            (format!("{prefix}-{role}").as_str(), Some(ns.as_str()))
        );
    }
    let gateway = Api::<Service>::namespaced(client.clone(), &ns)
        .get(&format!("{prefix}-gateway"))
        .await?;
    let port = &gateway.spec.and_then(|s| s.ports).unwrap_or_default()[0];
    assert_eq!(port.port, 80);
    Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
        .get(&format!("{prefix}-gateway"))
        .await?;
    Api::<Role>::namespaced(client.clone(), &ns)
        .get(&format!("{prefix}-controller-leader-election"))
        .await?;
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .get(&format!("{prefix}-controller-leader-election"))
        .await?;

    // What the ServiceAccounts may do, asked of the API server's authorizer.
    let can = |role: &str, args: &[&str]| -> Result<bool> {
        let mut cmd = kubectl(cp);
        cmd.args(["auth", "can-i", "-n", &ns])
            .arg(format!("--as=system:serviceaccount:{ns}:{prefix}-{role}"))
            .args(args);
        match run(cmd, None) {
            Ok(out) => Ok(out.trim() == "yes"),
            Err(e) if format!("{e:#}").contains("\nno") => Ok(false),
            Err(e) => Err(e),
        }
    };
    assert!(can("controller", &["create", "deployments.apps"])?);
    assert!(can("controller", &["watch", "secrets"])?);
    assert!(can("controller", &["update", "leases.coordination.k8s.io"])?);
    // The send path's credentials: created and patched, never updated or deleted.
    assert!(can("controller", &["create", "secrets"])?);
    assert!(can("controller", &["patch", "secrets"])?);
    assert!(!can("controller", &["update", "secrets"])?);
    assert!(!can("controller", &["delete", "secrets"])?);
    assert!(!can(
        "controller",
        &["create", "clusterroles.rbac.authorization.k8s.io"]
    )?);
    assert!(!can(
        "controller",
        &["escalate", "roles.rbac.authorization.k8s.io"]
    )?);
    assert!(can("gateway", &["create", "tokenreviews.authentication.k8s.io"])?);
    assert!(can(
        "gateway",
        &["create", "subjectaccessreviews.authorization.k8s.io"]
    )?);
    assert!(can("gateway", &["watch", "channels.wsbridge.io"])?);
    assert!(!can("gateway", &["get", "secrets"])?);
    assert!(!can("gateway", &["create", "deployments.apps"])?);

    let mut uninstall = helm(Some(cp));
    uninstall.args(["uninstall", &release, "--namespace", &ns]);
    run(uninstall, None)?;
    let left = Api::<ClusterRole>::all(client.clone())
        .get_opt(&format!("{prefix}-controller"))
        .await?;
    assert!(left.is_none(), "helm uninstall leaves no ClusterRole behind");
    Ok(())
}

/// The controller creates one Role per Bridge granting what the worker needs;
/// RBAC lets it only because it holds those permissions itself (no
/// `escalate`). Proven by creating such a Role as the controller's
/// ServiceAccount, with exactly the rules docs/architecture.md gives workers.
#[tokio::test]
async fn controller_service_account_can_create_worker_rbac() -> Result<()> {
    let cp = support::shared().await;
    crds_installed(cp).await?;
    let home = namespace(cp, "wsbridge-home", &[]).await?;
    let tenant = namespace(cp, "tenant", &[]).await?;
    let release = format!("rbac-{}", support::controlplane::random_hex(3));
    let mut install = helm(Some(cp));
    install
        .args(["install", &release])
        .arg(installable_chart(cp).await?)
        .args(["--namespace", &home]);
    run(install, None)?;
    let controller = format!("system:serviceaccount:{home}:{release}-wsbridge-controller");

    let worker_rbac = format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: wsbridge-worker-feed, namespace: {tenant}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: wsbridge-worker-feed, namespace: {tenant}}}
rules:
- apiGroups: [wsbridge.io]
  resources: [bridges]
  resourceNames: [feed]
  verbs: [get, list, watch]
- apiGroups: [wsbridge.io]
  resources: [channels]
  resourceNames: [ticker]
  verbs: [get, list, watch]
- apiGroups: [wsbridge.io]
  resources: [endpoints]
  resourceNames: [market]
  verbs: [get, list, watch]
- apiGroups: [wsbridge.io]
  resources: [subscriptions]
  verbs: [list, watch]
- apiGroups: [wsbridge.io]
  resources: [bridges/status]
  resourceNames: [feed]
  verbs: [patch, update]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: wsbridge-worker-feed, namespace: {tenant}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: wsbridge-worker-feed}}
subjects:
- {{kind: ServiceAccount, name: wsbridge-worker-feed, namespace: {tenant}}}
"#
    );
    let mut apply = kubectl(cp);
    apply
        .args([
            "apply",
            "--server-side",
            "--field-manager=wsbridge-controller",
            "-f",
            "-",
        ])
        .arg(format!("--as={controller}"));
    let out = run(apply, Some(&worker_rbac))?;
    assert!(
        out.contains("role.rbac.authorization.k8s.io/wsbridge-worker-feed serverside-applied"),
        "{out}"
    );

    // A Role granting more than the controller holds is refused: no escalate.
    let greedy = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: greedy, namespace: {tenant}}}\n\
         rules:\n- apiGroups: ['']\n  resources: [secrets]\n  verbs: [delete]\n"
    );
    let mut apply = kubectl(cp);
    apply
        .args(["apply", "--server-side", "-f", "-"])
        .arg(format!("--as={controller}"));
    let err = run(apply, Some(&greedy)).expect_err("escalation");
    assert!(
        format!("{err:#}").contains("attempting to grant RBAC permissions not currently held"),
        "{err:#}"
    );

    let mut uninstall = helm(Some(cp));
    uninstall.args(["uninstall", &release, "--namespace", &home]);
    run(uninstall, None)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// GitOps examples

#[test]
fn gitops_examples_point_at_the_chart_and_the_manifests() -> Result<()> {
    let argo = documents(&std::fs::read_to_string(
        repo().join("examples/gitops/argocd-application.yaml"),
    )?)?;
    let app = argo
        .iter()
        .find(|d| kind(d) == "Application")
        .ok_or_else(|| anyhow!("no Argo CD Application"))?;
    assert_eq!(app["apiVersion"], "argoproj.io/v1alpha1");
    let path = app["spec"]["source"]["path"].as_str().unwrap_or_default();
    assert!(
        repo().join(path).join("Chart.yaml").is_file(),
        "Application path {path}"
    );
    assert_eq!(app["spec"]["destination"]["namespace"], "wsbridge-system");
    assert!(strings(&app["spec"]["syncPolicy"]["syncOptions"]).contains(&"ServerSideApply=true"));
    // Its values are valid chart values.
    let values = serde_norway::to_string(&app["spec"]["source"]["helm"]["valuesObject"])?;
    let values_file = std::env::temp_dir().join(format!("wsbridge-argo-values-{}.yaml", std::process::id()));
    std::fs::write(&values_file, values)?;
    let mut cmd = helm(None);
    cmd.args(["template", "wsbridge", CHART, "-n", "wsbridge-system", "-f"])
        .arg(&values_file);
    let rendered = run(cmd, None);
    let _ = std::fs::remove_file(&values_file);
    rendered?;

    let flux = documents(&std::fs::read_to_string(
        repo().join("examples/gitops/flux-kustomization.yaml"),
    )?)?;
    let source = of_kind(&flux, "GitRepository")
        .next()
        .ok_or_else(|| anyhow!("no GitRepository"))?;
    let kustomization = of_kind(&flux, "Kustomization")
        .next()
        .ok_or_else(|| anyhow!("no Flux Kustomization"))?;
    assert_eq!(kustomization["spec"]["sourceRef"]["name"], name(source));
    let path = kustomization["spec"]["path"].as_str().unwrap_or_default();
    assert!(
        repo().join(path).join("kustomization.yaml").is_file(),
        "Kustomization path {path}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------

/// After a real `helm install`, the controller — run from the release's own
/// pod template, as the release's ServiceAccount, with nothing but the
/// chart's RBAC — reconciles the market-feed example: worker objects
/// created, statuses written, Events recorded.
#[tokio::test]
async fn the_controller_reconciles_an_example_with_the_chart_rbac() -> Result<()> {
    use wsbridge_api::{Channel, Subscription, conditions};
    let cp = support::shared().await;
    crds_installed(cp).await?;
    let system = namespace(cp, "helm-controller", &[]).await?;
    let release = format!("rc-{}", support::controlplane::random_hex(3));
    let mut install = helm(Some(cp));
    install
        .args(["install", &release])
        .arg(installable_chart(cp).await?)
        .args(["--namespace", &system, "--timeout", "60s"]);
    run(install, None)?;
    let client = cp.client();
    let deployment = Api::<Deployment>::namespaced(client.clone(), &system)
        .get(&format!("{release}-wsbridge-controller"))
        .await?;
    let listen = format!("127.0.0.1:{}", support::http::free_port());
    let mut controller =
        support::pods::run_pod_template(cp, &client, &deployment, &[("WSBRIDGE_LISTEN", &listen)]).await?;

    let ns = namespace(cp, "helm-example", &[]).await?;
    support::apply_yaml_file(&client, repo().join("examples/market-feed.yaml"), Some(&ns)).await?;
    let wait = std::time::Duration::from_secs(60);
    let log = || controller.logs();
    support::pods::wait_deployment(&client, &ns, "wsbridge-worker-ticker-feed", wait)
        .await
        .with_context(|| format!("controller log:\n{}", log()))?;
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .get("wsbridge-worker-ticker-feed")
        .await?;
    let channels: Api<Channel> = Api::namespaced(client.clone(), &ns);
    let address = support::eventually(wait, "Channel address", || {
        let channels = channels.clone();
        async move {
            Ok(channels
                .get("ticker")
                .await?
                .status
                .and_then(|s| s.address)
                .map(|a| a.url))
        }
    })
    .await?;
    assert_eq!(
        address,
        format!("http://{release}-wsbridge-gateway.{system}.svc/channels/{ns}/ticker")
    );
    let subscriptions: Api<Subscription> = Api::namespaced(client.clone(), &ns);
    let reason = support::eventually(wait, "Subscription pricing Ready reason", || {
        let subscriptions = subscriptions.clone();
        async move {
            let s = subscriptions.get("pricing").await?;
            Ok(s.status
                .and_then(|s| conditions::find(&s.conditions, conditions::READY).map(|c| c.reason.clone())))
        }
    })
    .await?;
    assert_eq!(
        reason, "ServiceNotFound",
        "the example's Service does not exist here"
    );
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns);
    let recorded = support::eventually(wait, "an Event", || {
        let events = events.clone();
        async move { Ok(Some(events.list(&Default::default()).await?.items).filter(|e| !e.is_empty())) }
    })
    .await?;
    assert!(
        recorded
            .iter()
            .any(|e| e.reason.as_deref() == Some("ServiceNotFound")),
        "{recorded:?}"
    );
    assert_eq!(
        controller.terminate(std::time::Duration::from_secs(20)).await,
        Some(0),
        "{}",
        controller.logs()
    );
    Ok(())
}

/// `rabbitmq.enabled`: the chart runs a single-node broker for trying
/// durable channels out, writes the broker Secret the roles mount from the
/// same generated password, wires MQTT to the gateway's auth backend, and
/// its pod passes the restricted Pod Security Standard; it refuses a
/// `broker` given as well.
#[tokio::test]
async fn the_chart_can_run_a_broker_for_trying_it_out() -> Result<()> {
    let cp = support::shared().await;
    let ns = namespace(
        cp,
        "with-broker",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await?;
    let yaml = render("wsbridge", &ns, &["rabbitmq.enabled=true"])?;
    let docs = documents(&yaml)?;
    let secret = |n: &str| {
        of_kind(&docs, "Secret")
            .find(|d| name(d) == n)
            .cloned()
            .unwrap_or_else(|| panic!("Secret {n}"))
    };
    let broker = secret("wsbridge-rabbitmq");
    let password = broker["stringData"]["password"].as_str().unwrap().to_string();
    assert_eq!(password.len(), 32);
    let conf = broker["stringData"]["rabbitmq.conf"].as_str().unwrap();
    assert!(conf.contains(&format!("default_pass = {password}")), "{conf}");
    assert!(
        conf.contains(&format!(
            "auth_http.topic_path = http://wsbridge-gateway.{ns}.svc/auth/topic"
        )),
        "{conf}"
    );
    let url = secret("wsbridge-broker")["stringData"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        url,
        format!("amqp://wsbridge:{password}@wsbridge-rabbitmq.{ns}.svc:5672/%2f")
    );
    // Every role reads the URL from the mounted Secret; the dispatcher runs.
    let deployments: Vec<&str> = of_kind(&docs, "Deployment").map(name).collect();
    assert!(deployments.contains(&"wsbridge-dispatcher"), "{deployments:?}");
    let metrics = of_kind(&docs, "Service")
        .find(|d| name(d) == "wsbridge-dispatcher-metrics")
        .expect("the dispatcher's metrics Service (the ServiceMonitor selects it)");
    assert_eq!(metrics["metadata"]["labels"]["wsbridge.io/metrics"], "true");
    assert_eq!(
        metrics["spec"]["selector"]["app.kubernetes.io/component"],
        "dispatcher"
    );
    for d in of_kind(&docs, "Deployment") {
        let args = strings(&d["spec"]["template"]["spec"]["containers"][0]["args"]);
        assert!(args.contains(&"--rabbitmq-url-file"), "{}: {args:?}", name(d));
    }
    let statefulset = of_kind(&docs, "StatefulSet")
        .next()
        .expect("the broker's StatefulSet");
    let template = &statefulset["spec"]["template"];
    // The claim template's volume, as the StatefulSet controller adds it.
    let mut spec = template["spec"].clone();
    spec["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "data", "emptyDir": {}}));
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "rabbitmq", "namespace": ns, "labels": template["metadata"]["labels"]},
        "spec": spec,
    });
    let out = server_dry_run(cp, &serde_json::to_string(&pod)?)?;
    assert!(out.contains("serverside-applied (server dry run)"), "{out}");
    let out = server_dry_run(
        cp,
        &yaml.replace("namespace: wsbridge-system", &format!("namespace: {ns}")),
    )?;
    assert!(!out.contains("Error"), "{out}");

    let both = render(
        "wsbridge",
        &ns,
        &["rabbitmq.enabled=true", "broker.url=amqp://u:p@elsewhere:5672/"],
    );
    assert!(
        format!("{:#}", both.expect_err("a broker given twice")).contains("leave broker.url"),
        "refused with a reason"
    );
    Ok(())
}
