//! The controller against a real API server: worker objects, statuses,
//! missing references that recover, Secret rotation, Events, idle writes.
//! The controller runs as the built binary, one per test, scoped to the
//! test's namespace. There is no kubelet: tests mark the worker Deployment
//! available by patching its status, and write `Connected` the way the
//! worker does (server-side apply, its own field manager).
//!
//! Over 500 lines as one job: the reconcile scenario family; shared fixtures live in controller_support.

mod controller_support;
mod support;

use std::time::Duration;

use anyhow::Result;
use controller_support::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use wsbridge_api::conditions::{self, CONNECTED, READY};
use wsbridge_api::{Bridge, Channel, Endpoint, Subscription};

const CHANNEL: &str = "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: ticker}\nspec: {}\n";
const ENDPOINT: &str = "apiVersion: wsbridge.io/v1alpha1\nkind: Endpoint\nmetadata: {name: market}\nspec:\n  url: wss://feed.example.com/v2\n  auth: {secretRef: {name: creds}}\n";
const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {token: one}\n";
const BRIDGE: &str = "apiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {name: feed}\nspec: {channel: ticker, endpoint: market}\n";

struct Env {
    client: Client,
    ns: String,
    controller: ControllerProcess,
}

async fn setup(prefix: &str) -> Result<Env> {
    let cp = support::shared().await;
    let client = cp.client();
    install_crds(&client).await?;
    let ns = support::create_namespace(&client, prefix).await?;
    let controller = ControllerProcess::for_namespace(cp, &ns).await?;
    Ok(Env {
        client,
        ns,
        controller,
    })
}

impl Env {
    async fn apply(&self, yaml: &str) -> Result<()> {
        support::apply_yaml(&self.client, yaml, Some(&self.ns)).await?;
        Ok(())
    }
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    async fn bridge_reason(&self, name: &str, reason: &str) -> Result<Bridge> {
        wait_reason(&self.api::<Bridge>(), name, reason, bridge_conditions).await
    }
    async fn worker(&self, name: &str) -> Result<Deployment> {
        let api = self.api::<Deployment>();
        support::eventually(WAIT, "worker Deployment", || {
            let api = api.clone();
            async move { Ok(api.get_opt(name).await?) }
        })
        .await
    }
}

#[test]
fn controller_child_process() {
    controller_support::child_entry();
}

fn config_hash(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()["wsbridge.io/config-hash"]
        .clone()
}

#[tokio::test]
async fn a_bridge_gets_restricted_worker_objects_owned_by_it() -> Result<()> {
    let env = setup("ctl-worker").await?;
    env.apply(&[SECRET, CHANNEL, ENDPOINT, BRIDGE].join("---\n"))
        .await?;
    let d = env.worker("wsbridge-worker-feed").await?;
    let bridge = env.api::<Bridge>().get("feed").await?;
    let owner = &d.owner_references()[0];
    assert_eq!(
        (
            owner.kind.as_str(),
            owner.name.as_str(),
            owner.uid.as_str(),
            owner.controller
        ),
        ("Bridge", "feed", bridge.uid().unwrap().as_str(), Some(true))
    );
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.strategy.as_ref().unwrap().type_.as_deref(), Some("Recreate"));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("wsbridge-worker-feed"));
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("wsbridge:test"));
    let expected_args = vec![
        "worker".to_string(),
        "--bridge".into(),
        format!("{}/feed", env.ns),
    ];
    assert_eq!(c.args.as_ref().unwrap(), &expected_args);
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert_eq!(
        c.liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    let res = c.resources.as_ref().unwrap();
    assert!(res.requests.is_some() && res.limits.is_some());
    // Secret values never copied: the token comes from a secretKeyRef.
    let env_vars = c.env.as_ref().unwrap();
    let token = env_vars
        .iter()
        .find(|v| v.name == "WSBRIDGE_ENDPOINT_TOKEN")
        .unwrap();
    assert!(token.value.is_none());
    assert_eq!(
        token
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .name,
        "creds"
    );
    let yaml = serde_json::to_string(&d)?;
    assert!(
        !yaml.contains("\"one\""),
        "the secret value leaked into the Deployment"
    );

    for owners in [
        env.api::<ServiceAccount>()
            .get("wsbridge-worker-feed")
            .await?
            .owner_references()
            .to_vec(),
        env.api::<Role>()
            .get("wsbridge-worker-feed")
            .await?
            .owner_references()
            .to_vec(),
        env.api::<RoleBinding>()
            .get("wsbridge-worker-feed")
            .await?
            .owner_references()
            .to_vec(),
    ] {
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].name.as_str(), owners[0].controller),
            ("feed", Some(true))
        );
    }
    let role = env.api::<Role>().get("wsbridge-worker-feed").await?;
    let rules = role.rules.unwrap();
    assert!(
        !rules
            .iter()
            .any(|r| r.resources.iter().flatten().any(|x| x == "secrets"))
    );
    let status_rule = rules
        .iter()
        .find(|r| r.resources.iter().flatten().any(|x| x == "bridges/status"))
        .unwrap();
    assert_eq!(
        status_rule.resource_names.as_deref(),
        Some(&["feed".to_string()][..])
    );
    Ok(())
}

#[tokio::test]
async fn a_bridge_is_ready_only_when_available_and_connected() -> Result<()> {
    let env = setup("ctl-ready").await?;
    env.apply(&[SECRET, CHANNEL, ENDPOINT, BRIDGE].join("---\n"))
        .await?;
    env.bridge_reason("feed", "WorkerUnavailable").await?;
    set_connected(&env.client, &env.ns, "feed", true).await?;
    // Connected alone is not enough.
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.bridge_reason("feed", "WorkerUnavailable").await?;
    mark_deployment_available(&env.client, &env.ns, "wsbridge-worker-feed").await?;
    let b = env.bridge_reason("feed", "Ready").await?;
    let c = bridge_conditions(&b);
    assert!(conditions::is_true(&c, READY));
    assert!(
        conditions::is_true(&c, CONNECTED),
        "the controller clobbered Connected: {c:?}"
    );
    assert_eq!(
        conditions::find(&c, READY).unwrap().observed_generation,
        b.metadata.generation
    );
    assert_eq!(
        b.status.as_ref().unwrap().worker.as_deref(),
        Some("wsbridge-worker-feed")
    );
    set_connected(&env.client, &env.ns, "feed", false).await?;
    env.bridge_reason("feed", "NotConnected").await?;
    Ok(())
}

#[tokio::test]
async fn a_missing_channel_and_endpoint_recover_by_themselves() -> Result<()> {
    let env = setup("ctl-missing").await?;
    env.apply(&[SECRET, BRIDGE].join("---\n")).await?;
    env.bridge_reason("feed", "ChannelNotFound").await?;
    env.apply(CHANNEL).await?;
    env.bridge_reason("feed", "EndpointNotFound").await?;
    env.apply(ENDPOINT).await?;
    env.bridge_reason("feed", "WorkerUnavailable").await?;
    env.worker("wsbridge-worker-feed").await?;
    env.api::<Channel>()
        .delete("ticker", &DeleteParams::default())
        .await?;
    env.bridge_reason("feed", "ChannelNotFound").await?;
    Ok(())
}

#[tokio::test]
async fn a_missing_secret_recovers_by_itself() -> Result<()> {
    let env = setup("ctl-secret").await?;
    env.apply(&[CHANNEL, ENDPOINT, BRIDGE].join("---\n")).await?;
    let ep = wait_reason(
        &env.api::<Endpoint>(),
        "market",
        "SecretNotFound",
        |e: &Endpoint| {
            e.status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default()
        },
    )
    .await?;
    assert!(ep.status.unwrap().observed_generation.is_some());
    env.bridge_reason("feed", "EndpointNotReady").await?;
    env.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {other: x}\n")
        .await?;
    wait_reason(
        &env.api::<Endpoint>(),
        "market",
        "SecretKeyMissing",
        |e: &Endpoint| {
            e.status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default()
        },
    )
    .await?;
    env.apply(SECRET).await?;
    wait_reason(&env.api::<Endpoint>(), "market", "Ready", |e: &Endpoint| {
        e.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    })
    .await?;
    env.bridge_reason("feed", "WorkerUnavailable").await?;
    env.worker("wsbridge-worker-feed").await?;
    Ok(())
}

#[tokio::test]
async fn secret_rotation_and_spec_changes_update_the_worker_in_place() -> Result<()> {
    let env = setup("ctl-rotate").await?;
    env.apply(&[SECRET, CHANNEL, ENDPOINT, BRIDGE].join("---\n"))
        .await?;
    let first = env.worker("wsbridge-worker-feed").await?;
    let hash = config_hash(&first);
    env.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {token: two}\n")
        .await?;
    let api = env.api::<Deployment>();
    let rolled = support::eventually(WAIT, "config hash changes", || {
        let api = api.clone();
        let hash = hash.clone();
        async move {
            let d = api.get("wsbridge-worker-feed").await?;
            Ok((config_hash(&d) != hash).then_some(d))
        }
    })
    .await?;
    assert_eq!(rolled.uid(), first.uid(), "updated in place");
    // A spec change (a bridge token) updates the same Deployment.
    env.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: subtoken}\nstringData: {token: t}\n---\napiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {name: feed}\nspec: {channel: ticker, endpoint: market, tokenSecretRef: {name: subtoken, key: token}}\n").await?;
    let updated = support::eventually(WAIT, "bridge token env", || {
        let api = api.clone();
        async move {
            let d = api.get("wsbridge-worker-feed").await?;
            let has = d
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .env
                .iter()
                .flatten()
                .any(|v| v.name == "WSBRIDGE_BRIDGE_TOKEN");
            Ok(has.then_some(d))
        }
    })
    .await?;
    assert_eq!(updated.uid(), first.uid());
    Ok(())
}

#[tokio::test]
async fn subscriptions_resolve_services_and_recover_when_they_appear() -> Result<()> {
    let env = setup("ctl-sub").await?;
    env.apply(CHANNEL).await?;
    env.apply("apiVersion: wsbridge.io/v1alpha1\nkind: Subscription\nmetadata: {name: pricing}\nspec:\n  channel: ticker\n  subscriber: {ref: {kind: Service, name: pricing, port: 8080}, path: /ingest}\n  delivery: {deadLetterSink: {uri: 'http://dlq.example:9/'}}\n---\napiVersion: wsbridge.io/v1alpha1\nkind: Subscription\nmetadata: {name: orphan}\nspec:\n  channel: nope\n  subscriber: {uri: 'http://x.example/'}\n").await?;
    let subs = env.api::<Subscription>();
    let conds = |s: &Subscription| {
        s.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    };
    wait_reason(&subs, "pricing", "ServiceNotFound", conds).await?;
    wait_reason(&subs, "orphan", "ChannelNotFound", conds).await?;
    env.apply("apiVersion: v1\nkind: Service\nmetadata: {name: pricing}\nspec: {ports: [{port: 80}]}\n")
        .await?;
    wait_reason(&subs, "pricing", "ServicePortNotFound", conds).await?;
    env.apply("apiVersion: v1\nkind: Service\nmetadata: {name: pricing}\nspec: {ports: [{port: 8080}]}\n")
        .await?;
    let s = wait_reason(&subs, "pricing", "Ready", conds).await?;
    let status = s.status.unwrap();
    assert_eq!(
        status.subscriber_uri.as_deref(),
        Some(format!("http://pricing.{}.svc.cluster.local:8080/ingest", env.ns).as_str())
    );
    assert_eq!(
        status.dead_letter_sink_uri.as_deref(),
        Some("http://dlq.example:9/")
    );
    env.apply("apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: nope}\nspec: {}\n")
        .await?;
    let s = wait_reason(&subs, "orphan", "Ready", conds).await?;
    assert_eq!(
        s.status.unwrap().subscriber_uri.as_deref(),
        Some("http://x.example/")
    );
    Ok(())
}

#[tokio::test]
async fn a_channel_publishes_its_address_and_counts() -> Result<()> {
    let env = setup("ctl-channel").await?;
    env.apply(&[CHANNEL, BRIDGE].join("---\n")).await?;
    env.apply("apiVersion: wsbridge.io/v1alpha1\nkind: Subscription\nmetadata: {name: a}\nspec: {channel: ticker, subscriber: {uri: 'http://a.example/'}}\n---\napiVersion: wsbridge.io/v1alpha1\nkind: Subscription\nmetadata: {name: b}\nspec: {channel: ticker, subscriber: {uri: 'http://b.example/'}}\n").await?;
    let api = env.api::<Channel>();
    let ch = support::eventually(WAIT, "channel counts", || {
        let api = api.clone();
        async move {
            let c = api.get("ticker").await?;
            let s = c.status.clone().unwrap_or_default();
            Ok((s.bridges == 1 && s.subscriptions == 2).then_some(c))
        }
    })
    .await?;
    let status = ch.status.unwrap();
    assert_eq!(
        status.address.unwrap().url,
        format!(
            "http://wsbridge-gateway.wsbridge-system.svc/channels/{}/ticker",
            env.ns
        )
    );
    assert!(conditions::is_true(&status.conditions, READY));
    assert_eq!(status.observed_generation, ch.metadata.generation);
    env.api::<Subscription>()
        .delete("a", &DeleteParams::default())
        .await?;
    support::eventually(WAIT, "count after delete", || {
        let api = api.clone();
        async move { Ok((api.get("ticker").await?.status.unwrap_or_default().subscriptions == 1).then_some(())) }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn transitions_are_reported_as_events() -> Result<()> {
    let env = setup("ctl-events").await?;
    env.apply(&[SECRET, BRIDGE].join("---\n")).await?;
    env.bridge_reason("feed", "ChannelNotFound").await?;
    env.apply(&[CHANNEL, ENDPOINT].join("---\n")).await?;
    env.bridge_reason("feed", "WorkerUnavailable").await?;
    let events: Api<Event> = env.api();
    let reasons = support::eventually(WAIT, "events", || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await?;
            let reasons: Vec<String> = list
                .items
                .iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("feed"))
                .filter_map(|e| e.reason.clone())
                .collect();
            let done = reasons.iter().any(|r| r == "WorkerUnavailable");
            Ok(done.then_some(reasons))
        }
    })
    .await?;
    assert!(reasons.iter().any(|r| r == "ChannelNotFound"), "{reasons:?}");
    for e in events.list(&ListParams::default()).await?.items {
        assert!(e.note.unwrap_or_default().len() < 1024);
    }
    Ok(())
}

#[tokio::test]
async fn an_idle_controller_makes_no_writes() -> Result<()> {
    let env = setup("ctl-idle").await?;
    env.apply(&[SECRET, CHANNEL, ENDPOINT, BRIDGE].join("---\n"))
        .await?;
    env.apply("apiVersion: v1\nkind: Service\nmetadata: {name: pricing}\nspec: {ports: [{port: 80}]}\n---\napiVersion: wsbridge.io/v1alpha1\nkind: Subscription\nmetadata: {name: s}\nspec: {channel: ticker, subscriber: {ref: {kind: Service, name: pricing}}}\n").await?;
    env.worker("wsbridge-worker-feed").await?;
    mark_deployment_available(&env.client, &env.ns, "wsbridge-worker-feed").await?;
    set_connected(&env.client, &env.ns, "feed", true).await?;
    env.bridge_reason("feed", "Ready").await?;
    wait_reason(&env.api::<Subscription>(), "s", "Ready", |s: &Subscription| {
        s.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    })
    .await?;
    // Once the last reconciles have drained (the count holds still), an
    // idle period: nothing may happen in it, which only a window can show.
    let reconciles = || {
        env.controller
            .metric_sum("wsbridge_controller_reconciles_total", &[])
    };
    let mut reconciles_before = reconciles().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = reconciles().await?;
        if now == reconciles_before {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the controller never settled"
        );
        reconciles_before = now;
    }
    let before = env.controller.writes().await?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = env.controller.writes().await?;
    assert_eq!(before, after, "writes while idle");
    assert!(before > 0.0);
    // The resource versions did not move either.
    let rv = env.api::<Bridge>().get("feed").await?.resource_version();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.api::<Bridge>().get("feed").await?.resource_version(), rv);
    // Nothing changed, so nothing woke the controller (its resync is hourly).
    assert!(reconciles_before > 0.0, "no reconcile counted at all");
    assert_eq!(reconciles().await?, reconciles_before, "reconciles while idle");
    // The ops endpoints answer.
    assert_eq!(http_get(env.controller.addr, "/healthz").await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn deleted_worker_objects_are_put_back() -> Result<()> {
    let env = setup("ctl-heal").await?;
    env.apply(&[SECRET, CHANNEL, ENDPOINT, BRIDGE].join("---\n"))
        .await?;
    let first = env.worker("wsbridge-worker-feed").await?;
    let roles = env.api::<Role>();
    support::eventually(WAIT, "role", || {
        let roles = roles.clone();
        async move { Ok(roles.get_opt("wsbridge-worker-feed").await?) }
    })
    .await?;
    let role_uid = roles.get("wsbridge-worker-feed").await?.uid();
    roles
        .delete("wsbridge-worker-feed", &DeleteParams::default())
        .await?;
    env.api::<Deployment>()
        .delete("wsbridge-worker-feed", &DeleteParams::default())
        .await?;
    let again = support::eventually(WAIT, "role recreated", || {
        let roles = roles.clone();
        let role_uid = role_uid.clone();
        async move {
            Ok(roles
                .get_opt("wsbridge-worker-feed")
                .await?
                .filter(|r| r.uid() != role_uid))
        }
    })
    .await?;
    assert_eq!(again.owner_references()[0].name, "feed");
    let d = env.worker("wsbridge-worker-feed").await?;
    assert_ne!(d.uid(), first.uid());
    Ok(())
}

#[tokio::test]
async fn an_endpoint_ca_config_map_is_checked_and_recovers() -> Result<()> {
    let env = setup("ctl-ca").await?;
    env.apply("apiVersion: wsbridge.io/v1alpha1\nkind: Endpoint\nmetadata: {name: tls}\nspec:\n  url: wss://feed.example.com/\n  tls: {caConfigMapRef: {name: feed-ca, key: ca.crt}}\n").await?;
    let conds = |e: &Endpoint| {
        e.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    };
    let api = env.api::<Endpoint>();
    wait_reason(&api, "tls", "ConfigMapNotFound", conds).await?;
    env.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: feed-ca}\ndata: {other: x}\n")
        .await?;
    wait_reason(&api, "tls", "ConfigMapKeyMissing", conds).await?;
    env.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: feed-ca}\ndata: {ca.crt: pem}\n")
        .await?;
    wait_reason(&api, "tls", "Ready", conds).await?;
    Ok(())
}
