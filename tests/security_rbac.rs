//! Least privilege, proven on the live installation: every rule of every
//! Role/ClusterRole that `deploy/` installs and that the controller writes
//! for a worker is listed, printed and checked; the API server's authorizer
//! is asked (`kubectl auth can-i --list`) as each ServiceAccount; the
//! controller's worker pod template is admitted under the `restricted` Pod
//! Security Standard. The chart's rendered rules are checked statically in
//! `tests/deploy_manifests.rs`.

mod support;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use kube::Api;
use kube::api::{ListParams, ObjectMeta, PostParams};
use support::install::SYSTEM_NAMESPACE;
use support::pods::wait_deployment;

const WAIT: Duration = Duration::from_secs(60);
/// Verbs that act on one named object, so `resourceNames` can scope them.
const NAMED_VERBS: [&str; 4] = ["get", "update", "patch", "delete"];

fn bridge_objects(ns: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: creds, namespace: {ns}}}
stringData: {{token: not-a-real-token}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Endpoint
metadata: {{name: feed, namespace: {ns}}}
spec: {{url: 'wss://feed.example/stream', auth: {{secretRef: {{name: creds}}}}}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: ticker, namespace: {ns}}}
spec: {{}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {{name: feed, namespace: {ns}}}
spec: {{channel: ticker, endpoint: feed, tokenSecretRef: {{name: creds, key: token}}}}
"#
    )
}

fn show(rule: &PolicyRule) -> String {
    let join = |v: Option<&Vec<String>>| v.map(|v| v.join(",")).unwrap_or_default();
    format!(
        "groups=[{}] resources=[{}] names=[{}] verbs=[{}]",
        join(rule.api_groups.as_ref()),
        join(rule.resources.as_ref()),
        join(rule.resource_names.as_ref()),
        rule.verbs.join(",")
    )
}

/// The checks every rule must pass; returns the problems.
fn problems(who: &str, rule: &PolicyRule) -> Vec<String> {
    let mut out = Vec::new();
    let fields = [
        rule.api_groups.clone().unwrap_or_default(),
        rule.resources.clone().unwrap_or_default(),
        rule.verbs.clone(),
        rule.resource_names.clone().unwrap_or_default(),
    ];
    if fields.iter().flatten().any(|s| s.contains('*')) {
        out.push(format!("{who}: wildcard in {}", show(rule)));
    }
    if rule.non_resource_urls.is_some() {
        out.push(format!("{who}: nonResourceURLs in {}", show(rule)));
    }
    for verb in ["escalate", "bind", "impersonate"] {
        if rule.verbs.iter().any(|v| v == verb) {
            out.push(format!("{who}: {verb} in {}", show(rule)));
        }
    }
    let core = rule.api_groups.iter().flatten().any(|g| g.is_empty());
    let secrets = core && rule.resources.iter().flatten().any(|r| r == "secrets");
    if secrets {
        // The controller writes Secrets with server-side apply (create and
        // patch) for the send path's credentials, and nothing else does;
        // nobody updates or deletes them (the garbage collector does).
        let writes = if who == "ClusterRole wsbridge-controller" {
            &["update", "delete", "deletecollection"][..]
        } else {
            &["create", "update", "patch", "delete", "deletecollection"][..]
        };
        if rule.verbs.iter().any(|v| writes.contains(&v.as_str())) {
            out.push(format!("{who}: writes Secrets: {}", show(rule)));
        }
        if who == "ClusterRole wsbridge-controller"
            && rule.verbs.iter().any(|v| v == "create" || v == "patch")
            && rule.resources.iter().flatten().any(|r| r != "secrets")
        {
            out.push(format!("{who}: Secret writes share a rule: {}", show(rule)));
        }
        let lists = rule.verbs.iter().any(|v| v == "list" || v == "watch");
        // The controller is the one exception, justified in the chart's
        // controller-rbac.yaml and docs/security.md.
        if lists && who != "ClusterRole wsbridge-controller" {
            out.push(format!("{who}: lists/watches Secrets: {}", show(rule)));
        }
    }
    out
}

/// `kubectl auth can-i --list` as a ServiceAccount: one line per rule.
fn can_i_list(cp: &support::ControlPlane, ns: &str, sa_ns: &str, sa: &str) -> Result<String> {
    let out = cp
        .kubectl()
        .args(["auth", "can-i", "--list", "-n", ns])
        .arg(format!("--as=system:serviceaccount:{sa_ns}:{sa}"))
        .output()
        .context("running kubectl")?;
    ensure!(
        out.status.success(),
        "kubectl auth can-i --list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The `Resources` column and the verbs of `can-i --list` lines that name `resource`.
fn can_i_lines<'a>(list: &'a str, resource: &str) -> Vec<&'a str> {
    list.lines()
        .filter(|l| {
            let first = l.split_whitespace().next().unwrap_or("");
            first == resource || first.starts_with(&format!("{resource}."))
        })
        .collect()
}

#[tokio::test]
async fn every_installed_and_generated_role_is_least_privilege() -> Result<()> {
    support::install::installed().await;
    let cp = support::shared().await;
    let client = cp.client();
    let ns = support::create_namespace(&client, "sec-rbac").await?;
    support::apply_yaml(&client, &bridge_objects(&ns), Some(&ns)).await?;
    let worker = "wsbridge-worker-feed";
    wait_deployment(&client, &ns, worker, WAIT).await?;

    let mut roles: Vec<(String, Vec<PolicyRule>)> = Vec::new();
    let labelled = ListParams::default().labels("app.kubernetes.io/name=wsbridge");
    for r in Api::<ClusterRole>::all(client.clone()).list(&labelled).await? {
        roles.push((
            format!("ClusterRole {}", r.metadata.name.unwrap_or_default()),
            r.rules.unwrap_or_default(),
        ));
    }
    for r in Api::<Role>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .list(&labelled)
        .await?
    {
        roles.push((
            format!("Role {SYSTEM_NAMESPACE}/{}", r.metadata.name.unwrap_or_default()),
            r.rules.unwrap_or_default(),
        ));
    }
    let worker_role = Api::<Role>::namespaced(client.clone(), &ns).get(worker).await?;
    let worker_who = format!("Role {ns}/{worker} (controller-generated)");
    roles.push((worker_who.clone(), worker_role.rules.clone().unwrap_or_default()));
    let names: Vec<&str> = roles.iter().map(|(w, _)| w.as_str()).collect();
    for expected in ["ClusterRole wsbridge-controller", "ClusterRole wsbridge-gateway"] {
        ensure!(names.contains(&expected), "{expected} installed: {names:?}");
    }
    ensure!(
        names
            .iter()
            .any(|n| n.ends_with("wsbridge-controller-leader-election")),
        "leader-election Role installed: {names:?}"
    );

    let mut found = Vec::new();
    println!("RBAC rules granted by deploy/ and the controller:");
    for (who, rules) in &roles {
        println!("{who}");
        for rule in rules {
            println!("  {}", show(rule));
            // Names are compared without the namespace for Roles.
            let short = who.split(" (").next().unwrap_or(who);
            found.extend(problems(short, rule));
        }
    }
    ensure!(
        found.is_empty(),
        "least-privilege violations:\n{}",
        found.join("\n")
    );

    // The worker's Role: no Secrets at all; named verbs scoped to its own
    // Bridge, Channel and Endpoint; only Subscriptions are listed unnamed
    // (the worker follows the channel's Subscriptions, whose names it cannot
    // know in advance), and Events are only created (their names are
    // generated, and the worker never changes one).
    for rule in worker_role.rules.iter().flatten() {
        let resources = rule.resources.clone().unwrap_or_default();
        if rule.api_groups.iter().flatten().any(|g| g == "events.k8s.io") {
            ensure!(
                resources == ["events"] && rule.verbs == ["create"],
                "worker may only create Events: {}",
                show(rule)
            );
            continue;
        }
        ensure!(
            rule.api_groups.iter().flatten().all(|g| g == "wsbridge.io"),
            "worker rule outside wsbridge.io: {}",
            show(rule)
        );
        let named_verb = rule.verbs.iter().any(|v| NAMED_VERBS.contains(&v.as_str()));
        if named_verb || resources.iter().any(|r| r != "subscriptions") {
            let names = rule.resource_names.clone().unwrap_or_default();
            ensure!(
                !names.is_empty(),
                "worker rule not scoped by resourceNames: {}",
                show(rule)
            );
        }
        if resources.iter().any(|r| r == "subscriptions") {
            ensure!(
                rule.verbs.iter().all(|v| v == "list" || v == "watch"),
                "worker may only list/watch Subscriptions: {}",
                show(rule)
            );
        }
    }
    let expected_names = [
        ("bridges", "feed"),
        ("channels", "ticker"),
        ("endpoints", "feed"),
        ("bridges/status", "feed"),
    ];
    for (resource, name) in expected_names {
        ensure!(
            worker_role.rules.iter().flatten().any(|r| {
                r.resources.iter().flatten().any(|x| x == resource)
                    && r.resource_names.iter().flatten().any(|n| n == name)
            }),
            "worker Role names {resource} {name}"
        );
    }

    // What the authorizer says, per ServiceAccount.
    let controller = can_i_list(cp, &ns, SYSTEM_NAMESPACE, "wsbridge-controller")?;
    let gateway = can_i_list(cp, &ns, SYSTEM_NAMESPACE, "wsbridge-gateway")?;
    let worker_list = can_i_list(cp, &ns, &ns, worker)?;
    println!("can-i --list as the controller in {ns}:\n{controller}");
    println!("can-i --list as the gateway in {ns}:\n{gateway}");
    println!("can-i --list as the worker in {ns}:\n{worker_list}");
    for (who, list) in [
        ("controller", &controller),
        ("gateway", &gateway),
        ("worker", &worker_list),
    ] {
        // Lines without a resource are the non-resource URLs every
        // authenticated user gets from the default discovery roles.
        for line in list.lines().skip(1).filter(|l| !l.starts_with(' ')) {
            ensure!(!line.contains('*'), "{who}: wildcard: {line}");
            let verbs = line.rsplit_once('[').map(|(_, v)| v).unwrap_or("");
            for verb in ["escalate", "bind", "impersonate"] {
                ensure!(
                    !verbs.split([' ', ']']).any(|v| v == verb),
                    "{who}: {verb}: {line}"
                );
            }
        }
    }
    ensure!(
        can_i_lines(&gateway, "secrets").is_empty(),
        "gateway reads Secrets"
    );
    ensure!(
        can_i_lines(&worker_list, "secrets").is_empty(),
        "worker reads Secrets"
    );
    // The controller reads Secrets and writes the send path's credentials
    // (create, patch); it never updates or deletes one.
    let controller_secrets = can_i_lines(&controller, "secrets");
    let mut verbs: Vec<&str> = controller_secrets
        .iter()
        .filter_map(|l| l.rsplit_once('[').map(|(_, v)| v.trim_end_matches(']')))
        .flat_map(str::split_whitespace)
        .collect();
    verbs.sort_unstable();
    verbs.dedup();
    ensure!(
        verbs == ["create", "get", "list", "patch", "watch"],
        "controller on Secrets: {controller_secrets:?}"
    );
    for line in can_i_lines(&worker_list, "bridges.wsbridge.io") {
        ensure!(line.contains("[feed]"), "worker on Bridges is named: {line}");
    }
    let worker_events = can_i_lines(&worker_list, "events.events.k8s.io");
    ensure!(
        worker_events.iter().any(|l| l.contains("[create]")),
        "worker creates Events: {worker_events:?}"
    );
    Ok(())
}

#[tokio::test]
async fn worker_pods_are_admitted_under_the_restricted_pod_security_standard() -> Result<()> {
    support::install::installed().await;
    let cp = support::shared().await;
    let client = cp.client();
    let ns = support::create_namespace(&client, "sec-restricted").await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut namespace = namespaces.get(&ns).await?;
    namespace
        .metadata
        .labels
        .get_or_insert_default()
        .insert("pod-security.kubernetes.io/enforce".into(), "restricted".into());
    namespaces
        .replace(&ns, &PostParams::default(), &namespace)
        .await?;
    support::apply_yaml(&client, &bridge_objects(&ns), Some(&ns)).await?;
    let d: Deployment = wait_deployment(&client, &ns, "wsbridge-worker-feed", WAIT).await?;
    let template = d.spec.context("spec")?.template;
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("worker-template".into()),
            namespace: Some(ns.clone()),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    pods.create(&dry_run, &pod)
        .await
        .context("the worker's pod template is refused under restricted")?;

    // The admission check is really on: weakened, the same pod is refused.
    let mut weak = pod.clone();
    let spec = weak.spec.as_mut().context("spec")?;
    spec.containers[0]
        .security_context
        .get_or_insert_default()
        .allow_privilege_escalation = Some(true);
    let err = pods
        .create(&dry_run, &weak)
        .await
        .expect_err("restricted namespace");
    ensure!(
        err.to_string().contains("violates PodSecurity \"restricted"),
        "{err}"
    );
    Ok(())
}
