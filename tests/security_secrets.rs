//! No secret value anywhere: known, unique credential values are planted in
//! Secrets, the whole system runs end to end (controller and gateway from
//! `deploy/`, the worker from the controller's pod template, all logging at
//! `trace`), through a refused handshake, failing subscribers, dead-letters,
//! publish errors and a Secret rotation; then every output is searched for
//! the values, in plain text and base64.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::{Discovery, Scope, verbs};
use serde_json::json;
use support::peers::{Reply, ServerOpts, Subscriber, WsServer};
use support::pods::{LocalPod, run_pod_template, wait_deployment};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const WAIT: Duration = Duration::from_secs(60);
const CONFIG_HASH: &str = "wsbridge.io/config-hash";

/// One set of planted values; every one is unique to this test.
struct Planted {
    endpoint_token: Option<&'static str>,
    username: &'static str,
    password: &'static str,
    api_key: &'static str,
    bridge_token: &'static str,
}

const ROUND_1: Planted = Planted {
    endpoint_token: Some("plant-endpoint-token-9c1e55a7"),
    username: "plant-user-3b7f21",
    password: "plant-password-d04e8a61",
    api_key: "plant-apikey-71c2f0b9",
    bridge_token: "plant-bridge-token-5e9a3d14",
};

/// After the rotation: basic auth (no token) and new values everywhere.
const ROUND_2: Planted = Planted {
    endpoint_token: None,
    username: "plant-user-rot-8a2c4e",
    password: "plant-password-rot-6f13b7c2",
    api_key: "plant-apikey-rot-2d8e5a90",
    bridge_token: "plant-bridge-token-rot-c47b1e03",
};

/// A publisher's bearer token (not a Kubernetes token): the gateway must
/// not echo or log it either.
const PUBLISHER_TOKEN: &str = "plant-publisher-token-0e6d2b83";

impl Planted {
    fn secrets_yaml(&self, ns: &str) -> String {
        let token = self
            .endpoint_token
            .map(|t| format!("  token: {t}\n"))
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: feed-credentials, namespace: {ns}}}\nstringData:\n{token}  username: {}\n  password: {}\n  apikey: {}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: subscriber-token, namespace: {ns}}}\nstringData: {{token: {}}}\n",
            self.username, self.password, self.api_key, self.bridge_token
        )
    }

    /// Every value, plus what a value turns into on the wire (basic auth).
    fn needles(&self) -> Vec<(String, String)> {
        let mut values: Vec<(&str, String)> = vec![
            ("username", self.username.into()),
            ("password", self.password.into()),
            ("secretHeaders value", self.api_key.into()),
            ("bridge token", self.bridge_token.into()),
            (
                "basic credentials",
                format!("{}:{}", self.username, self.password),
            ),
        ];
        if let Some(t) = self.endpoint_token {
            values.push(("endpoint token", t.into()));
        }
        expand(values)
    }
}

/// The value, its base64 forms (standard and URL-safe, with and without
/// padding) and its hex SHA-256 (a bare unsalted digest is no better than
/// the value for a short secret).
fn expand(values: Vec<(&str, String)>) -> Vec<(String, String)> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use sha2::Digest;
    let mut out = Vec::new();
    for (what, v) in values {
        out.push((what.to_string(), v.clone()));
        for (enc, name) in [
            (STANDARD.encode(&v), "base64"),
            (STANDARD_NO_PAD.encode(&v), "base64 (no padding)"),
            (URL_SAFE.encode(&v), "base64url"),
            (URL_SAFE_NO_PAD.encode(&v), "base64url (no padding)"),
        ] {
            out.push((format!("{what} as {name}"), enc));
        }
        out.push((
            format!("{what} as sha256"),
            hex::encode(sha2::Sha256::digest(v.as_bytes())),
        ));
    }
    out
}

/// Fails with every place a needle was found.
fn assert_no_secrets(outputs: &[(String, String)], needles: &[(String, String)]) {
    let mut found = Vec::new();
    for (source, text) in outputs {
        for (what, needle) in needles {
            if let Some(at) = text.find(needle.as_str()) {
                let start = text[..at].char_indices().rev().nth(80).map_or(0, |(i, _)| i);
                let end = (at + needle.len() + 80).min(text.len());
                let end = (end..=text.len())
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(text.len());
                found.push(format!("{what} in {source}: ...{}...", &text[start..end]));
            }
        }
    }
    assert!(found.is_empty(), "secret values leaked:\n{}", found.join("\n"));
}

fn objects(
    ns: &str,
    endpoint_url: &str,
    ok: &str,
    failing: &str,
    failing2: &str,
    dlq: &str,
    dlq_bad: &str,
) -> String {
    format!(
        r#"
apiVersion: wsbridge.io/v1alpha1
kind: Endpoint
metadata: {{name: market-feed, namespace: {ns}}}
spec:
  url: {endpoint_url}
  auth:
    secretRef: {{name: feed-credentials}}
    secretHeaders: {{X-Api-Key: apikey}}
  openMessages: ['{{"op":"subscribe"}}']
  reconnect: {{initialDelay: 50ms, maxDelay: 300ms}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: ticker, namespace: {ns}}}
spec:
  allowAnonymousPublish: false
  delivery: {{retry: 1, backoffDelay: 20ms, timeout: 2s}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {{name: ticker-feed, namespace: {ns}}}
spec:
  channel: ticker
  endpoint: market-feed
  tokenSecretRef: {{name: subscriber-token, key: token}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {{name: ok, namespace: {ns}}}
spec: {{channel: ticker, subscriber: {{uri: '{ok}'}}}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {{name: failing, namespace: {ns}}}
spec:
  channel: ticker
  subscriber: {{uri: '{failing}'}}
  delivery: {{deadLetterSink: {{uri: '{dlq}'}}}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {{name: failing-dlq-too, namespace: {ns}}}
spec:
  channel: ticker
  subscriber: {{uri: '{failing2}'}}
  delivery: {{deadLetterSink: {{uri: '{dlq_bad}'}}}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {{name: missing-service, namespace: {ns}}}
spec: {{channel: ticker, subscriber: {{ref: {{kind: Service, name: nowhere}}}}}}
"#
    )
}

async fn start_worker(ns: &str, deployment: &Deployment) -> Result<(LocalPod, SocketAddr)> {
    let cp = support::shared().await;
    let port = support::http::free_port();
    let listen = format!("127.0.0.1:{port}");
    let pod = run_pod_template(
        cp,
        &cp.client(),
        deployment,
        &[("WSBRIDGE_LISTEN", &listen), ("RUST_LOG", "trace")],
    )
    .await
    .with_context(|| format!("worker in {ns}"))?;
    Ok((pod, listen.parse()?))
}

/// The worker Deployment once its config hash differs from `not`.
async fn worker_deployment(ns: &str, not: Option<&str>) -> Result<Deployment> {
    let client = support::shared().await.client();
    let name = "wsbridge-worker-ticker-feed";
    wait_deployment(&client, ns, name, WAIT).await?;
    let api: Api<Deployment> = Api::namespaced(client, ns);
    support::eventually(WAIT, "worker Deployment with a new config hash", || {
        let api = api.clone();
        async move {
            let d = api.get(name).await?;
            Ok((config_hash(&d).as_deref() != not).then_some(d))
        }
    })
    .await
}

fn config_hash(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(CONFIG_HASH)
        .cloned()
}

/// Secrets reach the worker only through `secretKeyRef`; the config hash is
/// a hash.
fn check_pod_template(d: &Deployment) {
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    for c in &pod.containers {
        for var in c.env.iter().flatten() {
            let secret = var.name.starts_with("WSBRIDGE_ENDPOINT_") && var.name != "WSBRIDGE_ENDPOINT_CA"
                || var.name == "WSBRIDGE_BRIDGE_TOKEN";
            if secret {
                assert!(var.value.is_none(), "{} has a value", var.name);
                assert!(
                    var.value_from
                        .as_ref()
                        .and_then(|f| f.secret_key_ref.as_ref())
                        .is_some(),
                    "{} is not a secretKeyRef",
                    var.name
                );
            }
        }
        assert!(c.env_from.is_none(), "envFrom would expose whole Secrets");
    }
    assert!(
        pod.volumes
            .iter()
            .flatten()
            .all(|v| v.secret.is_none() && v.projected.is_none()),
        "no Secret volumes"
    );
    let hash = config_hash(d).expect("config hash");
    assert!(
        hash.len() == 32 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "config hash is a hash: {hash}"
    );
}

/// Every object of every listable kind in every namespace, Secrets
/// excepted (their data is the value), as JSON: statuses, annotations,
/// Events, pod templates, Leases, ConfigMaps...
async fn every_object(client: &kube::Client) -> Result<Vec<(String, String)>> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if !caps.supports_operation(verbs::LIST) || ar.kind == "Secret" {
                continue;
            }
            let api: Api<DynamicObject> = match caps.scope {
                Scope::Cluster => Api::all_with(client.clone(), &ar),
                Scope::Namespaced => Api::all_with(client.clone(), &ar),
            };
            let Ok(list) = api.list(&ListParams::default()).await else {
                continue;
            };
            for obj in list {
                let id = format!(
                    "{} {}/{}",
                    ar.kind,
                    obj.metadata.namespace.as_deref().unwrap_or(""),
                    obj.metadata.name.as_deref().unwrap_or("")
                );
                out.push((id, serde_json::to_string(&obj)?));
            }
        }
    }
    Ok(out)
}

async fn metrics(what: &str, addr: SocketAddr) -> Result<(String, String)> {
    let (code, body) = support::http::get(addr, "/metrics").await?;
    anyhow::ensure!(code == 200, "{what} /metrics answered {code}");
    Ok((format!("{what} /metrics"), body))
}

/// Publishes through the gateway; returns the status and body.
async fn publish(gateway: SocketAddr, path: &str, token: Option<&str>, body: &[u8]) -> Result<(u16, String)> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "text/plain")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    support::http::request(gateway, "POST", path, &headers, body).await
}

#[tokio::test]
async fn no_secret_value_reaches_logs_events_status_metrics_or_errors() -> Result<()> {
    let install = support::install::installed_with_log("trace").await;
    let cp = support::shared().await;
    let client = cp.client();
    let ns = support::create_namespace(&client, "sec-secrets").await?;
    let mut outputs: Vec<(String, String)> = Vec::new();

    let mut endpoint = WsServer::start(ServerOpts {
        refuse_first_with: Some(401),
        ..Default::default()
    })
    .await;
    let mut ok = Subscriber::ok().await;
    let failing = Subscriber::start(|_| Reply::Status(500)).await;
    let failing2 = Subscriber::start(|_| Reply::Status(503)).await;
    let mut dlq = Subscriber::ok().await;
    let dlq_bad = Subscriber::start(|_| Reply::Status(500)).await;
    support::apply_yaml(&client, &ROUND_1.secrets_yaml(&ns), Some(&ns)).await?;
    support::apply_yaml(
        &client,
        &objects(
            &ns,
            &endpoint.url(),
            &ok.uri.to_string(),
            &failing.uri.to_string(),
            &failing2.uri.to_string(),
            &dlq.uri.to_string(),
            &dlq_bad.uri.to_string(),
        ),
        Some(&ns),
    )
    .await?;

    // Round 1: bearer token; the endpoint refuses the first handshake (401).
    let d1 = worker_deployment(&ns, None).await?;
    check_pod_template(&d1);
    let (mut worker, worker_addr) = start_worker(&ns, &d1).await?;
    let (n, headers) = endpoint.next_connected().await;
    assert_eq!(n, 2, "the first handshake was refused");
    assert_eq!(
        headers.get("authorization").and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {}", ROUND_1.endpoint_token.unwrap()).as_str())
    );
    assert_eq!(
        headers.get("x-api-key").and_then(|v| v.to_str().ok()),
        Some(ROUND_1.api_key)
    );
    endpoint.send(WsMessage::text(r#"{"tick":1}"#));
    let got = ok.next().await;
    assert_eq!(
        got.headers.get("authorization").and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {}", ROUND_1.bridge_token).as_str())
    );
    let dead = dlq.next().await;
    assert_eq!(
        dead.headers
            .get("x-wsbridge-dead-letter-reason")
            .and_then(|v| v.to_str().ok()),
        Some("retries_exhausted")
    );
    // The sink that fails too: give its retries time to finish.
    support::eventually(WAIT, "the failing dead-letter sink tried", || {
        let n = dlq_bad.requests();
        async move { Ok((n >= 3).then_some(())) }
    })
    .await?;

    // Error bodies: the worker's send path and the gateway's publish errors
    // (no token, a bogus bearer token, no such channel).
    let (code, body) = support::http::request(worker_addr, "GET", "/v1/send", &[], b"").await?;
    outputs.push((format!("worker GET /v1/send ({code})"), body));
    let gateway = install.gateway_addr;
    let path = format!("/channels/{ns}/ticker");
    for (what, path, token, body) in [
        ("no token", path.as_str(), None, b"x".to_vec()),
        ("bogus token", path.as_str(), Some(PUBLISHER_TOKEN), b"x".to_vec()),
        (
            "no channel",
            "/channels/nowhere/none",
            Some(PUBLISHER_TOKEN),
            b"x".to_vec(),
        ),
    ] {
        let (code, body) = publish(gateway, path, token, &body).await?;
        assert!(code >= 400, "{what}: {code} {body}");
        outputs.push((format!("gateway publish, {what} ({code})"), body));
    }
    outputs.push(metrics("worker (round 1)", worker_addr).await?);

    // Rotation: new values everywhere, basic auth instead of the token. The
    // controller rolls the pod template; the kubelet's part (a new pod) is
    // ours.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .patch(
            "feed-credentials",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"token": null}})),
        )
        .await?;
    support::apply_yaml(&client, &ROUND_2.secrets_yaml(&ns), Some(&ns)).await?;
    let d2 = worker_deployment(&ns, config_hash(&d1).as_deref()).await?;
    check_pod_template(&d2);
    assert_eq!(worker.terminate(Duration::from_secs(15)).await, Some(0));
    outputs.push(("worker log (round 1)".into(), worker.logs()));
    let (mut worker, worker_addr) = start_worker(&ns, &d2).await?;
    let (_, headers) = endpoint.next_connected().await;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", ROUND_2.username, ROUND_2.password));
    assert_eq!(
        headers.get("authorization").and_then(|v| v.to_str().ok()),
        Some(format!("Basic {basic}").as_str()),
        "the rotated credentials reached the new worker"
    );
    endpoint.send(WsMessage::text(r#"{"tick":2}"#));
    loop {
        let got = ok.next().await;
        if got.body.as_ref() == br#"{"tick":2}"# {
            assert_eq!(
                got.headers.get("authorization").and_then(|v| v.to_str().ok()),
                Some(format!("Bearer {}", ROUND_2.bridge_token).as_str())
            );
            break;
        }
    }
    outputs.push(metrics("worker (round 2)", worker_addr).await?);
    outputs.push(metrics("controller", install.controller_addr).await?);
    outputs.push(metrics("gateway", install.gateway_addr).await?);
    // Give Events and statuses a moment to settle, then read everything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    outputs.extend(every_object(&client).await?);
    assert_eq!(worker.terminate(Duration::from_secs(15)).await, Some(0));
    outputs.push(("worker log (round 2)".into(), worker.logs()));
    outputs.push(("controller log".into(), install.controller.lock().unwrap().logs()));
    outputs.push(("gateway log".into(), install.gateway.lock().unwrap().logs()));

    // The logs really are at trace level and cover the paths exercised.
    let all_logs: String = outputs
        .iter()
        .filter(|(s, _)| s.contains(" log"))
        .map(|(_, t)| t.as_str())
        .collect();
    for expected in [
        "TRACE",
        "401",
        "message not delivered",
        "dead-letter sink did not accept",
    ] {
        assert!(all_logs.contains(expected), "logs mention {expected:?}");
    }
    let total: usize = outputs.iter().map(|(_, t)| t.len()).sum();
    eprintln!("searched {} outputs, {total} bytes", outputs.len());

    let mut needles = ROUND_1.needles();
    needles.extend(ROUND_2.needles());
    needles.extend(expand(vec![("publisher token", PUBLISHER_TOKEN.into())]));
    assert_no_secrets(&outputs, &needles);
    Ok(())
}

/// The search itself works: a planted value is found in plain text and as
/// base64.
#[test]
fn the_search_finds_plain_and_encoded_values() {
    let needles = expand(vec![("x", "plant-probe-value".into())]);
    let encoded = base64::engine::general_purpose::STANDARD.encode("plant-probe-value");
    for text in ["a plant-probe-value b".to_string(), format!("data: {encoded}")] {
        let caught = std::panic::catch_unwind(|| assert_no_secrets(&[("t".into(), text.clone())], &needles));
        assert!(caught.is_err(), "{text}");
    }
    assert_no_secrets(&[("t".into(), "nothing here".into())], &needles);
}
