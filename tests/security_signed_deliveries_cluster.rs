//! Signed deliveries in a cluster, on the real API server: the controller
//! (running from the `deploy/` manifests) points the worker's pod template
//! at each signed Subscription's Secret key; the worker runs from that
//! template (its `secretKeyRef`s resolved as the kubelet would) and signs
//! what it delivers. The `standardwebhooks` package from PyPI verifies the
//! deliveries; a subscriber holding another secret refuses them; a Secret
//! whose value is not a `whsec_` secret, or that does not exist, is a
//! `Ready=False` Subscription naming `spec.signingSecretRef` (never the
//! value) that gets nothing; a rotated secret rolls the worker. Messages
//! published through the gateway are delivered by the gateway, signed with
//! the controller's copy of the secret (its delivery keys Secret, mounted
//! into the gateway), before and after a rotation.

mod support;
mod webhook_support;

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::peers::{ServerOpts, Subscriber, WsServer};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use webhook_support::{Verifier, new_secret};
use wsbridge_api::{Bridge, Subscription, conditions};

const WAIT: Duration = Duration::from_secs(60);
const WORKER: &str = "wsbridge-worker-ticker-feed";
const NOT_A_SECRET: &str = "not-a-whsec-secret-5e1f";

fn objects(ns: &str, endpoint_url: &str, secret: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: hook-signing, namespace: {ns}}}
stringData: {{secret: '{secret}'}}
---
apiVersion: v1
kind: Secret
metadata: {{name: plain-password, namespace: {ns}}}
stringData: {{secret: {NOT_A_SECRET}}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Endpoint
metadata: {{name: market-feed, namespace: {ns}}}
spec:
  url: {endpoint_url}
  reconnect: {{initialDelay: 50ms, maxDelay: 500ms}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: ticker, namespace: {ns}}}
spec: {{delivery: {{retry: 0, timeout: 2s}}}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {{name: ticker-feed, namespace: {ns}}}
spec: {{channel: ticker, endpoint: market-feed}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: notices, namespace: {ns}}}
spec: {{allowAnonymousPublish: true, delivery: {{retry: 0, timeout: 2s}}}}
"#
    )
}

fn subscription(ns: &str, name: &str, uri: &str, secret: &str) -> String {
    subscription_to(ns, "ticker", name, uri, secret)
}

fn subscription_to(ns: &str, channel: &str, name: &str, uri: &str, secret: &str) -> String {
    format!(
        "---\napiVersion: wsbridge.io/v1alpha1\nkind: Subscription\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  channel: {channel}\n  subscriber: {{uri: '{uri}'}}\n  signingSecretRef: {{name: {secret}, key: secret}}\n"
    )
}

fn worker_container(d: &Deployment) -> Option<&Container> {
    d.spec.as_ref()?.template.spec.as_ref()?.containers.first()
}

fn env_names(d: &Deployment) -> Vec<String> {
    worker_container(d)
        .and_then(|c| c.env.as_ref())
        .map(|env| env.iter().map(|v| v.name.clone()).collect())
        .unwrap_or_default()
}

fn config_hash(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get("wsbridge.io/config-hash")
        .cloned()
}

/// The worker Deployment once its environment names exactly the signed
/// Subscriptions `want` (and `other` than `hash` when one is given).
async fn worker_deployment(
    client: &kube::Client,
    ns: &str,
    want: &[&str],
    hash: Option<&str>,
) -> Result<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let mut want: Vec<String> = want
        .iter()
        .map(|s| wsbridge_api::worker_env::signing_secret_var(s))
        .collect();
    want.sort();
    support::eventually(WAIT, &format!("worker env signing {want:?}"), || {
        let (api, want) = (api.clone(), want.clone());
        async move {
            let Some(d) = api.get_opt(WORKER).await? else {
                return Ok(None);
            };
            let mut signing: Vec<String> = env_names(&d)
                .into_iter()
                .filter(|n| n.starts_with(wsbridge_api::worker_env::SIGNING_SECRET_PREFIX))
                .collect();
            signing.sort();
            let rolled = hash.is_none_or(|h| config_hash(&d).as_deref() != Some(h));
            Ok((signing == want && rolled).then_some(d))
        }
    })
    .await
}

/// Subscription `name`'s Ready condition once it is `want` and, when
/// given, has `reason` (the controller may say something else first, e.g.
/// before its cache holds the Channel).
async fn subscription_ready(
    client: &kube::Client,
    ns: &str,
    name: &str,
    want: bool,
    reason: Option<&str>,
) -> Result<Condition> {
    let api: Api<Subscription> = Api::namespaced(client.clone(), ns);
    support::eventually(
        WAIT,
        &format!("Subscription {name} Ready={want} {reason:?}"),
        || {
            let api = api.clone();
            async move {
                let s = api.get(name).await?;
                let conds = s.status.map(|s| s.conditions).unwrap_or_default();
                Ok(conditions::find(&conds, conditions::READY)
                    .filter(|c| (c.status == "True") == want && reason.is_none_or(|r| c.reason == r))
                    .cloned())
            }
        },
    )
    .await
}

#[tokio::test]
async fn worker_deliveries_verify_with_the_standardwebhooks_package_and_bad_secrets_are_conditions()
-> Result<()> {
    support::install::installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "signed").await?;
    let secret = new_secret(32);
    let mut trusting = Verifier::start(&secret).await;
    let mut doubting = Verifier::start(&new_secret(32)).await;
    let mut unsigned = Subscriber::ok().await;
    let mut endpoint = WsServer::start(ServerOpts::default()).await;
    let mut yaml = objects(&ns, &endpoint.url(), &secret);
    yaml.push_str(&subscription(&ns, "trusting", &trusting.uri(), "hook-signing"));
    yaml.push_str(&subscription(&ns, "doubting", &doubting.uri(), "hook-signing"));
    yaml.push_str(&subscription(
        &ns,
        "plain",
        &unsigned.uri.to_string(),
        "plain-password",
    ));
    yaml.push_str(&subscription(
        &ns,
        "absent",
        &unsigned.uri.to_string(),
        "no-such-secret",
    ));
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;

    // A value that is not a Standard Webhooks secret, and a Secret that does
    // not exist: Ready=False naming the field, never the value.
    let plain = subscription_ready(&client, &ns, "plain", false, Some("SigningSecretInvalid")).await?;
    assert_eq!(plain.reason, "SigningSecretInvalid", "{plain:?}");
    assert!(
        plain.message.contains("spec.signingSecretRef"),
        "{}",
        plain.message
    );
    assert!(plain.message.contains("whsec_"), "{}", plain.message);
    assert!(
        !plain.message.contains(NOT_A_SECRET),
        "the value is in the condition"
    );
    let absent = subscription_ready(&client, &ns, "absent", false, Some("SecretNotFound")).await?;
    assert_eq!(absent.reason, "SecretNotFound", "{absent:?}");
    assert!(
        absent.message.contains("spec.signingSecretRef"),
        "{}",
        absent.message
    );
    let ready = subscription_ready(&client, &ns, "trusting", true, None).await?;
    assert!(
        ready
            .message
            .contains("deliveries are signed with spec.signingSecretRef"),
        "{}",
        ready.message
    );

    // Only the usable signing secrets reach the worker, by reference.
    let d = worker_deployment(&client, &ns, &["doubting", "trusting"], None).await?;
    let text = serde_json::to_string(&d)?;
    assert!(
        !text.contains(&secret[6..]),
        "a signing secret is in the Deployment"
    );
    let hash = config_hash(&d).context("config hash")?;

    let mut worker = support::pods::start_bridge_worker(&ns, "ticker-feed").await?;
    endpoint.next_connected().await;
    let api: Api<Bridge> = Api::namespaced(client.clone(), &ns);
    support::eventually(WAIT, "Bridge Connected", || {
        let api = api.clone();
        async move {
            let b = api.get("ticker-feed").await?;
            let conds = b.status.map(|s| s.conditions).unwrap_or_default();
            Ok(conditions::is_true(&conds, conditions::CONNECTED).then_some(()))
        }
    })
    .await
    .with_context(|| format!("worker log:\n{}", worker.logs()))?;

    // The worker connects once it knows its subscribers: what the endpoint
    // sends now is delivered, signed.
    endpoint.send(WsMessage::Text(r#"{"price":101.5}"#.into()));
    let verdict = trusting.next().await;
    assert!(
        verdict.starts_with("verified ") && verdict.ends_with(r#" {"price":101.5}"#),
        "{verdict}; worker log:\n{}",
        worker.logs()
    );
    let refused = doubting.next().await;
    assert!(refused.starts_with("refused No matching signature"), "{refused}");
    // The Subscriptions without a usable secret get nothing, not even unsigned.
    unsigned.assert_quiet(Duration::from_secs(1)).await;

    // A publish is delivered by the gateway, signed with the controller's
    // copy of the secret: until the copy reached the gateway, the
    // Subscription gets nothing from it (never an unsigned delivery).
    let mut noticed = Verifier::start(&secret).await;
    let yaml = subscription_to(&ns, "notices", "noticed", &noticed.uri(), "hook-signing");
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    let gateway = support::install::installed().await.gateway_addr;
    publish_until_delivered(gateway, &ns, "before rotation").await?;
    let verdict = noticed.next().await;
    assert!(
        verdict.starts_with("verified ") && verdict.ends_with(" before rotation"),
        "{verdict}"
    );
    let copy = Api::<Secret>::namespaced(client.clone(), support::install::SYSTEM_NAMESPACE)
        .get("wsbridge-delivery-keys")
        .await?;
    let keys: Vec<&String> = copy.data.as_ref().map(|d| d.keys().collect()).unwrap_or_default();
    assert!(
        keys.contains(&&format!("{ns}.noticed")) && keys.contains(&&format!("{ns}.trusting")),
        "the copy holds the usable secrets of signed Subscriptions: {keys:?}"
    );
    assert!(
        !keys
            .iter()
            .any(|k| k.ends_with(".plain") || k.ends_with(".absent")),
        "and only those: {keys:?}"
    );

    // A rotated secret rolls the worker (its config hash changes), and the
    // new pod signs with the new secret.
    let rotated = new_secret(32);
    Api::<Secret>::namespaced(client.clone(), &ns)
        .patch(
            "hook-signing",
            &PatchParams::apply("test").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "hook-signing"},
                "stringData": {"secret": rotated}
            })),
        )
        .await?;
    worker_deployment(&client, &ns, &["doubting", "trusting"], Some(&hash)).await?;
    assert_eq!(
        worker.terminate(Duration::from_secs(20)).await,
        Some(0),
        "log:\n{}",
        worker.logs()
    );
    let logs = worker.logs();
    assert!(
        !logs.contains(&secret[6..]),
        "the signing secret is in the worker's log"
    );
    let mut renewed = Verifier::start(&rotated).await;
    let mut yaml = String::new();
    yaml.push_str(&subscription(&ns, "trusting", &renewed.uri(), "hook-signing"));
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    let _worker = support::pods::start_bridge_worker(&ns, "ticker-feed").await?;
    endpoint.next_connected().await;
    // The gateway signs with the rotated secret once its copy arrived.
    let mut rotated_notices = Verifier::start(&rotated).await;
    let yaml = subscription_to(&ns, "notices", "noticed", &rotated_notices.uri(), "hook-signing");
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    // Publishes signed with the old secret before the copy arrived are
    // refused; one signed with the new secret comes next.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        publish_until_delivered(gateway, &ns, "after rotation").await?;
        match rotated_notices.next_within(Duration::from_secs(5)).await {
            Some(verdict) if verdict.starts_with("verified ") => break,
            Some(verdict) => assert!(verdict.starts_with("refused "), "{verdict}"),
            // It went to the Subscription's previous address: the gateway
            // had not seen the new one yet.
            None => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway never signed with the rotated secret"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Sent until one arrives: the new worker may still be listing its subscribers.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        endpoint.send(WsMessage::Text("after rotation".into()));
        match tokio::time::timeout(Duration::from_millis(500), renewed.next()).await {
            Ok(verdict) => {
                assert!(verdict.starts_with("verified "), "{verdict}");
                break;
            }
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "nothing verified after the rotation"
            ),
        }
    }
    Ok(())
}

/// Publishes `body` on `notices` until the gateway delivered it to its one
/// Subscription (it reaches none while the gateway lacks its signing key).
async fn publish_until_delivered(gateway: std::net::SocketAddr, ns: &str, body: &str) -> Result<()> {
    let path = format!("/channels/{ns}/notices");
    support::eventually(WAIT, "the gateway delivers a publish on notices", || {
        let path = path.clone();
        async move {
            let (code, answer) = support::http::request(gateway, "POST", &path, &[], body.as_bytes()).await?;
            let reached = serde_json::from_str::<serde_json::Value>(&answer)
                .ok()
                .and_then(|v| v["subscribers"].as_u64());
            Ok((code == 202 && reached == Some(1)).then_some(()))
        }
    })
    .await
}
