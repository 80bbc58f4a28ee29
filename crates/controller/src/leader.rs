//! Leader election: one replica reconciles, the others wait. kube has none
//! built in; `kube-lease-manager` holds a Lease by server-side apply.

use std::future::Future;

use kube::Client;
use tokio::sync::watch;
use tracing::{info, warn};

use super::Options;
use wsbridge_http::ops::Readiness;

/// Waits for the Lease, runs `reconcile` while holding it, stops it when the
/// Lease is lost, and releases the Lease on shutdown. A standby replica
/// reports ready: it is healthy and waiting.
pub(crate) async fn run_while_leading<F, Fut>(
    client: &Client,
    args: &Options,
    identity: &str,
    readiness: &Readiness,
    mut stop: watch::Receiver<bool>,
    reconcile: F,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(identity)
        .with_duration(args.lease_duration_seconds)
        .with_grace(args.lease_grace_seconds)
        .with_field_manager(format!("wsbridge-controller-lease-{identity}"))
        .build()
        .await?;
    let (mut leader, lease_task) = manager.watch().await;
    let mut result = Ok(());
    loop {
        readiness.set(true);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = leader.wait_for(|l| *l) => if r.is_err() { result = Err(anyhow::anyhow!("lease manager stopped")); break },
        }
        info!(identity = %identity, lease = %args.lease_name, "acquired the lease; reconciling");
        // Ready again once the caches are synced.
        readiness.set(false);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = leader.wait_for(|l| !*l) => {
                if r.is_err() { result = Err(anyhow::anyhow!("lease manager stopped")); break }
                warn!("lost the lease; stopped reconciling");
            }
            r = reconcile() => { result = r; break }
        }
    }
    drop(leader);
    match lease_task.await {
        Ok(Ok(manager)) => {
            if let Err(e) = manager.release().await {
                warn!(error = %e, "releasing the lease failed");
            }
        }
        Ok(Err(e)) => warn!(error = %e, "lease manager failed"),
        Err(e) => warn!(error = %e, "lease manager task failed"),
    }
    result
}
