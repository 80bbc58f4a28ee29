//! wsbridge installed into the test control plane from `deploy/` (the
//! kustomize manifests), with the controller and the gateway running as
//! local processes from their Deployments' pod templates, as their own
//! ServiceAccounts: the manifests, their RBAC and the binaries are proven
//! together. One installation per test binary.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use tokio::sync::OnceCell;

use super::pods::{LocalPod, run_pod_template};

/// Namespace of the installation.
pub const SYSTEM_NAMESPACE: &str = "wsbridge-system";

pub struct Installation {
    pub controller_addr: SocketAddr,
    pub gateway_addr: SocketAddr,
    pub controller: Mutex<LocalPod>,
    pub gateway: Mutex<LocalPod>,
}

static INSTALLED: OnceCell<Installation> = OnceCell::const_new();
static LOG_FILTER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Like [`installed`], with the controller and the gateway logging with
/// `filter` (`RUST_LOG` syntax, e.g. `trace`) instead of the chart's level.
/// Takes effect only if this test binary has not installed yet.
pub async fn installed_with_log(filter: &str) -> &'static Installation {
    let _ = LOG_FILTER.set(filter.to_string());
    installed().await
}

/// Installs once per test binary and waits until both roles are ready.
pub async fn installed() -> &'static Installation {
    INSTALLED
        .get_or_try_init(install)
        .await
        .expect("installing wsbridge into the test control plane")
}

async fn install() -> Result<Installation> {
    let cp = super::shared().await;
    let client = cp.client();
    super::install_crds(&client).await?;
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    super::apply_yaml_file(&client, deploy.join("namespace.yaml"), None).await?;
    super::apply_yaml_file(&client, deploy.join("wsbridge.yaml"), Some(SYSTEM_NAMESPACE)).await?;
    let filter = LOG_FILTER.get().map(String::as_str);
    let (controller_addr, controller) = start_deployment("wsbridge-controller", filter).await?;
    let (gateway_addr, gateway) = start_deployment("wsbridge-gateway", filter).await?;
    wait_ready("controller", controller_addr, &controller).await?;
    wait_ready("gateway", gateway_addr, &gateway).await?;
    Ok(Installation {
        controller_addr,
        gateway_addr,
        controller: Mutex::new(controller),
        gateway: Mutex::new(gateway),
    })
}

/// Runs one replica of the installed Deployment `name` (in
/// [`SYSTEM_NAMESPACE`]) from its pod template, listening on a free
/// loopback port (`WSBRIDGE_LISTEN`), logging with `log_filter` when given.
pub async fn start_deployment(name: &str, log_filter: Option<&str>) -> Result<(SocketAddr, LocalPod)> {
    let cp = super::shared().await;
    let client = cp.client();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let port = super::http::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let deployment = deployments
        .get(name)
        .await
        .with_context(|| format!("Deployment {name}"))?;
    let listen = addr.to_string();
    let mut overrides = vec![("WSBRIDGE_LISTEN", listen.as_str())];
    if let Some(filter) = log_filter {
        overrides.push(("RUST_LOG", filter));
    }
    let pod = run_pod_template(cp, &client, &deployment, &overrides).await?;
    Ok((addr, pod))
}

/// Waits until the role at `addr` answers `/readyz` with 200.
pub async fn wait_ready(what: &str, addr: SocketAddr, pod: &LocalPod) -> Result<()> {
    super::eventually(
        Duration::from_secs(60),
        &format!("{what} /readyz"),
        || async move {
            Ok(super::http::get(addr, "/readyz")
                .await
                .ok()
                .filter(|(code, _)| *code == 200))
        },
    )
    .await
    .map(|_| ())
    .with_context(|| format!("{what} log:\n{}", pod.logs()))
}
