//! `wsbridge controller`: reconciles Endpoints, Channels, Bridges and
//! Subscriptions, and applies one worker Deployment per Bridge.
//!
//! Shape:
//! - one watch per kind (`caches`), feeding a shared cache
//!   ([`reconcile::Stores`]) and the four kube-runtime `Controller`s
//!   (`controllers`: primary streams and the `triggers` mapped to them:
//!   Channel → Bridges/Subscriptions, Endpoint → Bridges, Secret/ConfigMap →
//!   Endpoints/Bridges, Service → Subscriptions, worker Deployment → its
//!   Bridge, Bridge/Subscription → their Channel);
//! - pure status decisions in [`status`], worker objects in
//!   [`worker_objects`], the reconcilers in [`reconcile`];
//! - writes only when something changed, so an idle cluster costs no writes
//!   (`status_write`);
//! - a Lease elects the one replica that reconciles (`leader`); every
//!   replica serves `/healthz`, `/readyz` and `/metrics`.
//!
//! Everything the controller creates in the cluster is owned by its Bridge
//! (controller owner reference) and removed by the garbage collector;
//! statuses live on the objects themselves. The one thing outside the
//! cluster is the broker topology of `rabbitmq` Channels
//! ([`broker_topology`]), deleted through a finalizer.
#![forbid(unsafe_code)]

mod broker_topology;
mod caches;
mod controllers;
pub mod delivery_keys;
mod leader;
pub mod metrics;
pub mod reconcile;
mod resolution;
pub mod send_key;
pub mod status;
mod status_write;
mod triggers;
pub mod worker_objects;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::info;

use metrics::Metrics;
pub use reconcile::Error;
use wsbridge_dataplane::DestinationPolicy;
use wsbridge_http::ops::{self, LogFormat, Readiness};

/// The default worker image: this crate's version.
pub const DEFAULT_WORKER_IMAGE: &str = concat!("ghcr.io/wsbridge/wsbridge:", env!("CARGO_PKG_VERSION"));

/// How the controller runs (the binary fills it from `wsbridge controller`'s flags).
#[derive(Clone, Debug)]
pub struct Options {
    /// Image of the bridge worker Deployments.
    pub worker_image: String,
    /// Base URL of the publish gateway; Channel addresses are
    /// `{gateway-url}/channels/NAMESPACE/NAME`.
    pub gateway_url: String,
    /// Cluster DNS domain used in resolved Service addresses.
    pub cluster_domain: String,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// Elect one active replica with a Lease (`--leader-election=false` to
    /// reconcile unconditionally).
    pub leader_election: bool,
    /// Namespace of the Lease.
    pub lease_namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// Seconds a Lease is valid without renewal.
    pub lease_duration_seconds: u64,
    /// Seconds before expiry when the holder renews.
    pub lease_grace_seconds: u64,
    /// Watch only this namespace (default: all namespaces).
    pub namespace: Option<String>,
    /// Reconciles running at once, per kind.
    pub concurrency: u16,
    /// Outbound destination policy (subscribers, dead-letter sinks,
    /// endpoints); passed on to every worker.
    pub destinations: Arc<DestinationPolicy>,
    /// Who may reach a worker's port, written as a NetworkPolicy with each
    /// worker; `None` writes none.
    pub worker_ingress: Option<worker_objects::WorkerIngress>,
    /// Resources and scheduling of every worker pod whose Bridge leaves
    /// them unset (the chart's `controller.workerPod`).
    pub worker_pod_defaults: wsbridge_api::WorkerPodSpec,
    /// The Secret holding the installation key of the workers' send
    /// credentials (created when absent).
    pub send_key: send_key::SendKeySecret,
    /// The broker of `backend: rabbitmq` Channels, when the installation
    /// has one.
    pub broker: Option<wsbridge_broker::BrokerUrl>,
    /// The Secret where the controller keeps a copy of the usable signing
    /// secrets for the gateway and the dispatcher ([`delivery_keys`]).
    pub delivery_keys: send_key::SendKeySecret,
}

/// Runs the controller until SIGINT/SIGTERM.
pub async fn run(args: Options) -> anyhow::Result<()> {
    // A no-op when the binary already set logging up (tests call `run` directly).
    ops::init_logging(LogFormat::Text);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let config = kube::Config::infer().await?;
    let counting = metrics.clone();
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&tower::util::MapRequestLayer::new(
            move |req: http::Request<kube::client::Body>| {
                counting.request(&req);
                req
            },
        ))
        .build();
    let readiness = Readiness::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        ops::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut server_stop = stop_rx.clone();
    let (addr, server) = ops::serve(
        args.listen,
        ops::router(Arc::new(registry), readiness.clone()),
        async move {
            let _ = server_stop.wait_for(|s| *s).await;
        },
    )
    .await?;
    info!(%addr, "serving /healthz, /readyz and /metrics");
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let reconcile = || async {
        let _leading = metrics.leading();
        controllers::run(&client, &args, &metrics, &readiness, &identity).await
    };
    let result = if args.leader_election {
        leader::run_while_leading(&client, &args, &identity, &readiness, stop_rx, reconcile).await
    } else {
        let mut stop = stop_rx;
        tokio::select! {
            r = reconcile() => r,
            _ = stop.wait_for(|s| *s) => Ok(()),
        }
    };
    readiness.set(false);
    server.abort();
    info!("stopped");
    result
}
