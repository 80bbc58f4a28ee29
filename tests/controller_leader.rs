//! Two controller processes share one Lease: one reconciles, the other
//! waits; when the leader is killed (SIGKILL, no release) the standby takes
//! over once the Lease expires.

mod controller_support;
mod support;

use std::time::{Duration, Instant};

use anyhow::Result;
use controller_support::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use wsbridge_api::Channel;

#[test]
fn controller_child_process() {
    controller_support::child_entry();
}

async fn holder(leases: &Api<Lease>) -> Result<Option<String>> {
    Ok(leases
        .get_opt("test-lease")
        .await?
        .and_then(|l| l.spec?.holder_identity))
}

async fn addressed(channels: &Api<Channel>, name: &str) -> Result<()> {
    support::eventually(WAIT, &format!("channel {name} address"), || async move {
        let c = channels.get(name).await?;
        Ok(c.status.and_then(|s| s.address).map(|_| ()))
    })
    .await
}

#[tokio::test]
async fn one_leader_reconciles_and_the_standby_takes_over_when_it_dies() -> Result<()> {
    let cp = support::shared().await;
    let client = cp.client();
    install_crds(&client).await?;
    let ns = support::create_namespace(&client, "ctl-lease").await?;
    let args = [
        "--namespace",
        &ns,
        "--lease-namespace",
        &ns,
        "--lease-name",
        "test-lease",
        "--lease-duration-seconds",
        "4",
        "--lease-grace-seconds",
        "1",
    ];
    let a_name = format!("a-{ns}");
    let b_name = format!("b-{ns}");
    let mut a = ControllerProcess::start(cp, &a_name, &args).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let first = support::eventually(WAIT, "a lease holder", || {
        let leases = leases.clone();
        async move { holder(&leases).await }
    })
    .await?;
    assert_eq!(first, a_name);
    let mut b = ControllerProcess::start(cp, &b_name, &args).await?;
    a.wait_ready().await?;
    b.wait_ready().await?; // a standby is ready too: healthy and waiting

    support::apply_yaml(
        &client,
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: one}\nspec: {}\n",
        Some(&ns),
    )
    .await?;
    let channels: Api<Channel> = Api::namespaced(client.clone(), &ns);
    addressed(&channels, "one").await?;
    let reconciles = "wsbridge_controller_reconciles_total";
    support::eventually(WAIT, "the leader counts its reconciles", || {
        let a = &a;
        async move { Ok((a.metric_sum(reconciles, &[]).await? > 0.0).then_some(())) }
    })
    .await?;
    assert_eq!(
        b.metric_sum(reconciles, &[]).await?,
        0.0,
        "the standby reconciled"
    );
    assert_eq!(holder(&leases).await?.as_deref(), Some(a_name.as_str()));

    a.child.kill().await?; // SIGKILL: the lease is not released
    let next = support::eventually(WAIT, "the standby holds the lease", || {
        let leases = leases.clone();
        let a_name = a_name.clone();
        async move { Ok(holder(&leases).await?.filter(|h| *h != a_name)) }
    })
    .await?;
    assert_eq!(next, b_name);
    support::apply_yaml(
        &client,
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: two}\nspec: {}\n",
        Some(&ns),
    )
    .await?;
    addressed(&channels, "two").await?;
    assert!(b.metric_sum(reconciles, &[]).await? > 0.0);
    b.child.kill().await?;
    Ok(())
}

#[tokio::test]
async fn a_leader_stopped_with_sigterm_releases_the_lease() -> Result<()> {
    let cp = support::shared().await;
    let client = cp.client();
    install_crds(&client).await?;
    let ns = support::create_namespace(&client, "ctl-release").await?;
    // The standby sleeps until the Lease would expire (kube-lease-manager
    // does not watch it), so a release frees the Lease at once and the
    // standby picks it up at the latest when it would have expired.
    let args = [
        "--namespace",
        &ns,
        "--lease-namespace",
        &ns,
        "--lease-name",
        "test-lease",
        "--lease-duration-seconds",
        "6",
        "--lease-grace-seconds",
        "2",
    ];
    let a_name = format!("a-{ns}");
    let b_name = format!("b-{ns}");
    let mut a = ControllerProcess::start(cp, &a_name, &args).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    support::eventually(WAIT, "a holds the lease", || {
        let leases = leases.clone();
        let a_name = a_name.clone();
        async move { Ok(holder(&leases).await?.filter(|h| *h == a_name)) }
    })
    .await?;
    let b = ControllerProcess::start(cp, &b_name, &args).await?;
    b.wait_ready().await?;
    let pid = a.child.id().expect("pid").to_string();
    let stopped = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()?
            .success()
    );
    let exit = tokio::time::timeout(WAIT, a.child.wait()).await??;
    assert!(exit.success(), "graceful exit: {exit:?}");
    assert_ne!(
        holder(&leases).await?.as_deref(),
        Some(a_name.as_str()),
        "released"
    );
    support::eventually(WAIT, "b holds the lease", || {
        let leases = leases.clone();
        let b_name = b_name.clone();
        async move { Ok(holder(&leases).await?.filter(|h| *h == b_name)) }
    })
    .await?;
    assert!(
        stopped.elapsed() < Duration::from_secs(30),
        "{:?}",
        stopped.elapsed()
    );
    support::apply_yaml(
        &client,
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: one}\nspec: {}\n",
        Some(&ns),
    )
    .await?;
    addressed(&Api::namespaced(client.clone(), &ns), "one").await?;
    Ok(())
}
