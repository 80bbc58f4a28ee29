//! A `backend: rabbitmq` Channel in an installation without a broker (the
//! chart's `broker` values unset): the Channel and its Bridge are
//! `Ready=False` with reason `NoBroker` and a message that says what to
//! set, on the real API server; its worker, run from the pod template the
//! controller wrote (no broker URL in it), connects nothing and delivers
//! nothing from memory: `Connected=False` with reason `NoBroker`. A test
//! binary of its own: the installation of `broker_worker` has a broker and
//! serves every namespace.

mod controller_support;
mod support;

use anyhow::Result;
use controller_support::{ControllerProcess, WAIT};
use kube::Api;
use wsbridge_api::conditions::{self, CONNECTED, READY};
use wsbridge_api::{Bridge, Channel};

#[test]
fn controller_child_process() {
    controller_support::child_entry();
}

const OBJECTS: &str = "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: prices}\nspec: {backend: rabbitmq}\n\
    ---\napiVersion: wsbridge.io/v1alpha1\nkind: Endpoint\nmetadata: {name: market}\nspec: {url: 'ws://127.0.0.1:9/'}\n\
    ---\napiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {name: feed}\nspec: {channel: prices, endpoint: market}\n";

/// The reason and message of condition `type_`, once it says `False`.
fn is_false(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<(String, String)> {
    conditions::find(conditions, type_)
        .filter(|c| c.status == "False")
        .map(|c| (c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn without_a_broker_a_rabbitmq_channel_and_its_bridge_are_not_ready() -> Result<()> {
    let cp = support::shared().await;
    let client = cp.client();
    controller_support::install_crds(&client).await?;
    let ns = support::create_namespace(&client, "no-broker").await?;
    let controller = ControllerProcess::for_namespace(cp, &ns).await?;
    support::apply_yaml(&client, OBJECTS, Some(&ns)).await?;

    let bridges: Api<Bridge> = Api::namespaced(client.clone(), &ns);
    let (reason, message) = support::eventually(WAIT, "the Bridge's Ready=False NoBroker", || {
        let bridges = bridges.clone();
        async move {
            let bridge = bridges.get("feed").await?;
            let status = bridge.status.unwrap_or_default();
            Ok(is_false(&status.conditions, READY).filter(|(reason, _)| reason == "NoBroker"))
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}; controller log: {}", controller.log.display()))?;
    assert_eq!(reason, "NoBroker");
    assert!(
        message.contains("\"prices\"") && message.contains("`broker` values"),
        "{message}"
    );

    let channels: Api<Channel> = Api::namespaced(client.clone(), &ns);
    let (_, message) = support::eventually(WAIT, "the Channel's Ready=False NoBroker", || {
        let channels = channels.clone();
        async move {
            let channel = channels.get("prices").await?;
            let status = channel.status.unwrap_or_default();
            Ok(is_false(&status.conditions, READY).filter(|(reason, _)| reason == "NoBroker"))
        }
    })
    .await?;
    assert!(message.contains("broker.url"), "{message}");

    // The worker of that Bridge has no broker URL: it says so on the
    // Bridge, is not ready, and takes no sends.
    let worker = support::pods::start_bridge_worker(&ns, "feed").await?;
    let (_, message) = support::eventually(WAIT, "the worker's Connected=False NoBroker", || {
        let bridges = bridges.clone();
        async move {
            let status = bridges.get("feed").await?.status.unwrap_or_default();
            Ok(is_false(&status.conditions, CONNECTED).filter(|(reason, _)| reason == "NoBroker"))
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}; worker log:\n{}", worker.logs()))?;
    assert!(
        message.contains("WSBRIDGE_RABBITMQ_URL") && message.contains("not delivering from memory"),
        "{message}"
    );
    let addr: std::net::SocketAddr = worker.env["WSBRIDGE_LISTEN"].parse()?;
    let (code, _) = support::http::get(addr, "/readyz").await?;
    assert_eq!(code, 503, "not ready without its broker");
    let credential = &worker.env["WSBRIDGE_SEND_CREDENTIAL"];
    let (code, answer) = support::http::request(
        addr,
        "POST",
        "/v1/send",
        &[("Authorization", &format!("Bearer {credential}"))],
        b"x",
    )
    .await?;
    assert!(
        code == 409 && answer.contains("ChannelIsDurable"),
        "{code} {answer}"
    );
    Ok(())
}
