//! No loops through wsbridge itself: the cluster roles deny loopback (and
//! their own address and Services) as destinations by default, and the
//! controller says so on the object (by address and by name; names that
//! resolve to a denied address in `resolution`'s tests).
//! Local development and the tests allow loopback explicitly.

mod controller_support;
mod support;

use anyhow::Result;
use controller_support::*;
use kube::Api;
use wsbridge_api::{Endpoint, Subscription};

const CHANNEL: &str = "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: ticker}\nspec: {}\n";

#[test]
fn controller_child_process() {
    controller_support::child_entry();
}

fn subscription(name: &str, uri: &str) -> String {
    format!(
        "apiVersion: wsbridge.io/v1alpha1\nkind: Subscription\nmetadata: {{name: {name}}}\nspec: {{channel: ticker, subscriber: {{uri: '{uri}'}}}}\n"
    )
}

fn subscription_conditions(
    s: &Subscription,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    s.status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default()
}

fn endpoint_conditions(e: &Endpoint) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    e.status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default()
}

fn ready_message(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> String {
    wsbridge_api::conditions::find(conditions, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn loopback_destinations_are_denied_by_default_by_address_and_by_name() -> Result<()> {
    let cp = support::shared().await;
    let client = cp.client();
    install_crds(&client).await?;
    let ns = support::create_namespace(&client, "loops").await?;
    // The default of a cluster role: the harness allows loopback for every
    // other test, this one takes it back.
    let _controller = ControllerProcess::for_namespace_with(cp, &ns, &["--allow-loopback=false"]).await?;
    let yaml = [
        CHANNEL.to_string(),
        subscription("echo", "http://127.0.0.1:8080/v1/send"),
        subscription("by-name", "http://localhost:9/hook"),
        "apiVersion: wsbridge.io/v1alpha1\nkind: Endpoint\nmetadata: {name: local}\nspec: {url: 'ws://localhost:9/feed'}\n".into(),
    ]
    .join("---\n");
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;

    let subscriptions: Api<Subscription> = Api::namespaced(client.clone(), &ns);
    let echo = wait_reason(
        &subscriptions,
        "echo",
        "DestinationDenied",
        subscription_conditions,
    )
    .await?;
    assert!(
        ready_message(&subscription_conditions(&echo)).contains("127.0.0.1"),
        "{:?}",
        subscription_conditions(&echo)
    );
    let by_name = wait_reason(
        &subscriptions,
        "by-name",
        "DestinationDenied",
        subscription_conditions,
    )
    .await?;
    let message = ready_message(&subscription_conditions(&by_name));
    // `localhost` is denied by name; other names that resolve only to
    // denied addresses are looked up (the controller's unit tests).
    assert!(message.contains("localhost"), "{message}");

    let endpoints: Api<Endpoint> = Api::namespaced(client.clone(), &ns);
    let local = wait_reason(&endpoints, "local", "DestinationDenied", endpoint_conditions).await?;
    assert!(
        ready_message(&endpoint_conditions(&local)).contains("localhost"),
        "{:?}",
        endpoint_conditions(&local)
    );
    Ok(())
}

#[tokio::test]
async fn loopback_is_allowed_when_asked_for_explicitly() -> Result<()> {
    let cp = support::shared().await;
    let client = cp.client();
    install_crds(&client).await?;
    let ns = support::create_namespace(&client, "loops-allowed").await?;
    // As the harness runs every controller: WSBRIDGE_ALLOW_LOOPBACK=true,
    // the environment form of --allow-loopback.
    let _controller = ControllerProcess::for_namespace(cp, &ns).await?;
    let yaml = [
        CHANNEL.to_string(),
        subscription("by-name", "http://localhost:9/hook"),
    ]
    .join("---\n");
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    let subscriptions: Api<Subscription> = Api::namespaced(client.clone(), &ns);
    wait_reason(&subscriptions, "by-name", "Ready", subscription_conditions).await?;
    Ok(())
}
