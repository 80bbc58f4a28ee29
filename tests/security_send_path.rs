//! The worker's send path is authenticated (docs/security.md, "Worker send
//! path"), proven with the real API server and real processes: the
//! controller and the gateway installed from `deploy/`, each Bridge's worker
//! run from the pod template the controller wrote. Each Bridge's credential
//! is an HMAC of the installation key (a Secret the controller creates) and
//! the Bridge's UID, kept in a Secret owned by the Bridge that the worker
//! reads through `secretKeyRef`; the gateway derives it from the mounted key.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use support::install::SYSTEM_NAMESPACE;
use support::peers::{ServerOpts, WsServer};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsbridge_api::Bridge;
use wsbridge_core::SecretString;
use wsbridge_dataplane::send_auth;

const WAIT: Duration = Duration::from_secs(60);
const SEND_KEY: &str = "wsbridge-send-key";

/// The rotation test changes the installation's key, which every Bridge's
/// credential depends on: it runs alone.
static KEY_IN_USE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn objects(ns: &str, bridge: &str, url: &str) -> String {
    format!(
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {{name: orders, namespace: {ns}}}\nspec: {{allowAnonymousPublish: true}}\n\
         ---\napiVersion: wsbridge.io/v1alpha1\nkind: Endpoint\nmetadata: {{name: {bridge}, namespace: {ns}}}\nspec: {{url: '{url}', reconnect: {{initialDelay: 50ms, maxDelay: 500ms}}}}\n\
         ---\napiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {{name: {bridge}, namespace: {ns}}}\nspec: {{channel: orders, endpoint: {bridge}}}\n"
    )
}

/// Publishes through the gateway until it is routed to the bridge (202).
async fn publish_when_routed(channel: &str, body: &[u8]) -> Result<()> {
    let gateway = support::install::installed().await.gateway_addr;
    let path = format!("/channels/{channel}");
    support::eventually(WAIT, &format!("a routed publish on {channel}"), || {
        let path = path.clone();
        async move {
            let (code, answer) = support::http::request(gateway, "POST", &path, &[], body).await?;
            ensure!(code == 202 || code == 503, "publish: {code} {answer}");
            Ok((code == 202).then_some(()))
        }
    })
    .await
}

/// `POST /v1/send` straight to a worker, with `authorization` if given.
async fn direct_send(worker: SocketAddr, authorization: Option<&str>, body: &[u8]) -> Result<(u16, String)> {
    let mut headers = vec![("Content-Type", "text/plain")];
    if let Some(a) = authorization {
        headers.push(("Authorization", a));
    }
    support::http::request(worker, "POST", "/v1/send", &headers, body).await
}

async fn next_text(endpoint: &mut WsServer) -> String {
    loop {
        if let (_, WsMessage::Text(t)) = endpoint.next_frame().await {
            return t.to_string();
        }
    }
}

/// No frame reaches the endpoint for `d`.
async fn assert_endpoint_quiet(endpoint: &mut WsServer, d: Duration) {
    if let Ok((_, frame)) = tokio::time::timeout(d, endpoint.next_frame()).await {
        panic!("the endpoint got a frame it should not have: {frame:?}");
    }
}

async fn installation_key(client: &Client) -> Result<Vec<u8>> {
    let secret = Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .get(SEND_KEY)
        .await
        .context("the controller creates the send key Secret")?;
    secret
        .data
        .and_then(|d| d.get("key").map(|v| v.0.clone()))
        .context("send key Secret without `key`")
}

/// The Bridge's credential Secret's value, once it is `expected`.
async fn wait_credential(client: &Client, ns: &str, bridge: &str, expected: &SecretString) -> Result<Secret> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let name = format!("wsbridge-worker-{bridge}");
    support::eventually(
        WAIT,
        &format!("Secret {ns}/{name} with the expected credential"),
        || {
            let (secrets, name) = (secrets.clone(), name.clone());
            async move {
                let secret = secrets.get_opt(&name).await?;
                Ok(secret.filter(|s| {
                    s.data
                        .as_ref()
                        .and_then(|d| d.get("send-credential"))
                        .is_some_and(|v| v.0 == expected.expose().as_bytes())
                }))
            }
        },
    )
    .await
}

#[tokio::test]
async fn only_the_gateway_can_make_a_worker_send_to_its_endpoint() -> Result<()> {
    let _key = KEY_IN_USE.read().await;
    support::install::installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "sec-send").await?;
    let mut endpoint = WsServer::start(ServerOpts::default()).await;
    support::apply_yaml(&client, &objects(&ns, "exchange", &endpoint.url()), Some(&ns)).await?;
    let bridge = support::eventually(WAIT, "the Bridge's UID", || {
        let bridges: Api<Bridge> = Api::namespaced(client.clone(), &ns);
        async move { Ok(bridges.get("exchange").await?.uid()) }
    })
    .await?;

    // The credential: an HMAC of the installation key and the Bridge's UID,
    // in a Secret owned by the Bridge.
    let credential = send_auth::credential(&installation_key(&client).await?, &bridge);
    let secret = wait_credential(&client, &ns, "exchange", &credential).await?;
    let owner = secret
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .context("the credential Secret has a controller owner")?;
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Bridge", "exchange"));
    assert_eq!(owner.uid, bridge);
    // The worker reads it through secretKeyRef, never as a value.
    let deployment = support::pods::wait_deployment(&client, &ns, "wsbridge-worker-exchange", WAIT).await?;
    let container = &deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    let var = container
        .env
        .iter()
        .flatten()
        .find(|v| v.name == "WSBRIDGE_SEND_CREDENTIAL")
        .context("the worker's env has WSBRIDGE_SEND_CREDENTIAL")?;
    assert!(var.value.is_none(), "a reference, not a value");
    let source = var
        .value_from
        .as_ref()
        .and_then(|f| f.secret_key_ref.as_ref())
        .context("WSBRIDGE_SEND_CREDENTIAL comes from a secretKeyRef")?;
    assert_eq!(
        (source.name.as_str(), source.key.as_str()),
        ("wsbridge-worker-exchange", "send-credential")
    );

    let worker = support::pods::start_bridge_worker(&ns, "exchange").await?;
    let worker_addr: SocketAddr = worker.env["WSBRIDGE_LISTEN"].parse()?;
    endpoint.next_connected().await;

    // Through the gateway: reaches the endpoint.
    let channel = format!("{ns}/orders");
    publish_when_routed(&channel, b"through-the-gateway").await?;
    assert_eq!(next_text(&mut endpoint).await, "through-the-gateway");
    // Earlier probes that were answered 503 never reached it; drain any
    // later duplicate of ours before the quiet checks.
    while tokio::time::timeout(Duration::from_millis(300), endpoint.next_frame())
        .await
        .is_ok()
    {}

    // Straight to the worker: without the credential, with a wrong one, with
    // another Bridge's, or with this one's under another key: 401, nothing sent.
    let other_bridge = send_auth::credential(&installation_key(&client).await?, "some-other-uid");
    let other_key = send_auth::credential(b"not the installation key", &bridge);
    let wrong = [
        None,
        Some("Bearer not-the-credential".to_string()),
        Some(credential.expose().to_string()),
        Some(send_auth::authorization(&other_bridge)),
        Some(send_auth::authorization(&other_key)),
    ];
    for authorization in &wrong {
        let (code, body) = direct_send(worker_addr, authorization.as_deref(), b"bypass").await?;
        assert_eq!(code, 401, "{authorization:?}: {body}");
        let answer: serde_json::Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        assert_eq!(answer["reason"], "Unauthorized", "{body}");
        assert!(
            !body.contains(credential.expose()),
            "the answer never holds the credential"
        );
    }
    assert_endpoint_quiet(&mut endpoint, Duration::from_millis(500)).await;
    ensure!(
        !worker.logs().contains(credential.expose()),
        "the worker never logs the credential"
    );

    // The right credential is what makes the difference.
    let (code, body) = direct_send(
        worker_addr,
        Some(&send_auth::authorization(&credential)),
        b"with-the-credential",
    )
    .await?;
    assert_eq!(code, 202, "{body}");
    assert_eq!(next_text(&mut endpoint).await, "with-the-credential");

    // A hand edit of the credential Secret is put back.
    Api::<Secret>::namespaced(client.clone(), &ns)
        .patch(
            "wsbridge-worker-exchange",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"stringData": {"send-credential": "guessed"}})),
        )
        .await?;
    wait_credential(&client, &ns, "exchange", &credential).await?;
    Ok(())
}

#[tokio::test]
async fn a_new_send_key_rotates_every_credential_and_rolls_the_worker() -> Result<()> {
    let _key = KEY_IN_USE.write().await;
    support::install::installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "sec-rotate").await?;
    let mut endpoint = WsServer::start(ServerOpts::default()).await;
    support::apply_yaml(&client, &objects(&ns, "feed", &endpoint.url()), Some(&ns)).await?;
    let bridge = support::eventually(WAIT, "the Bridge's UID", || {
        let bridges: Api<Bridge> = Api::namespaced(client.clone(), &ns);
        async move { Ok(bridges.get("feed").await?.uid()) }
    })
    .await?;
    let old = send_auth::credential(&installation_key(&client).await?, &bridge);
    wait_credential(&client, &ns, "feed", &old).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let config_hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("wsbridge.io/config-hash").cloned())
    };
    let before =
        config_hash(&support::pods::wait_deployment(&client, &ns, "wsbridge-worker-feed", WAIT).await?);
    let mut worker = support::pods::start_bridge_worker(&ns, "feed").await?;
    endpoint.next_connected().await;
    let channel = format!("{ns}/orders");
    publish_when_routed(&channel, b"before").await?;
    assert_eq!(next_text(&mut endpoint).await, "before");

    // The operator writes a new key.
    let new_key = send_auth::new_installation_key();
    Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .patch(
            SEND_KEY,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"stringData": {"key": new_key}})),
        )
        .await?;
    let new = send_auth::credential(new_key.as_bytes(), &bridge);
    assert_ne!(old, new);
    wait_credential(&client, &ns, "feed", &new).await?;
    // The worker rolls: its pod template's config hash changed.
    support::eventually(WAIT, "the worker's pod template rolled", || {
        let deployments = deployments.clone();
        let before = before.clone();
        async move {
            let d = deployments.get("wsbridge-worker-feed").await?;
            Ok((config_hash(&d) != before).then_some(()))
        }
    })
    .await?;

    // Until its pod is replaced, the old worker still gets the gateway's
    // sends (the gateway keeps the key before the new one).
    publish_when_routed(&channel, b"while-rolling").await?;
    assert_eq!(next_text(&mut endpoint).await, "while-rolling");

    // The new pod (what the kubelet starts from the new template) holds the
    // new credential; the gateway sends with the new key.
    worker.terminate(Duration::from_secs(10)).await;
    drop(worker);
    let worker = support::pods::start_bridge_worker(&ns, "feed").await?;
    assert_eq!(worker.env["WSBRIDGE_SEND_CREDENTIAL"], new.expose());
    let worker_addr: SocketAddr = worker.env["WSBRIDGE_LISTEN"].parse()?;
    endpoint.next_connected().await;
    publish_when_routed(&channel, b"after").await?;
    assert_eq!(next_text(&mut endpoint).await, "after");
    // The old credential is worth nothing now.
    let (code, body) = direct_send(worker_addr, Some(&send_auth::authorization(&old)), b"stale").await?;
    assert_eq!(code, 401, "{body}");
    assert_endpoint_quiet(&mut endpoint, Duration::from_millis(500)).await;

    // Deleting the key Secret is a rotation too: the controller creates a
    // new random key and every credential follows.
    let keys: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    keys.delete(SEND_KEY, &Default::default()).await?;
    let recreated = support::eventually(WAIT, "a new send key", || {
        let client = client.clone();
        let new_key = new_key.clone();
        async move {
            Ok(installation_key(&client)
                .await
                .ok()
                .filter(|k| k.as_slice() != new_key.as_bytes()))
        }
    })
    .await?;
    assert_eq!(recreated.len(), 64, "32 random bytes, hex");
    wait_credential(&client, &ns, "feed", &send_auth::credential(&recreated, &bridge)).await?;
    Ok(())
}
