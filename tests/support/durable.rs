//! wsbridge installed from the chart with a RabbitMQ broker
//! (`broker.existingSecret`), into the test control plane: the chart is
//! rendered with helm, applied, the broker's Secret written with the test
//! broker's URL, and the controller, the gateway and each dispatcher replica
//! run as local processes from their Deployments' pod templates (the
//! Secret volume with the URL materialised as the kubelet would). What the
//! chart renders for a broker is proven with the binaries.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::install::{SYSTEM_NAMESPACE, start_deployment, wait_ready};
use super::pods::LocalPod;

/// The Secret holding the broker's URL (key `url`).
pub const BROKER_SECRET: &str = "wsbridge-broker";

/// A running role of the installation.
pub struct Role {
    pub addr: SocketAddr,
    pub pod: LocalPod,
}

/// The installation's processes.
pub struct DurableInstallation {
    pub controller: Role,
    pub gateway: Role,
    pub dispatchers: Vec<Role>,
}

/// The chart rendered for a broker in [`BROKER_SECRET`], release
/// `wsbridge` in [`SYSTEM_NAMESPACE`], with `sets` (`key=value`) on top.
pub fn render_chart(sets: &[&str]) -> Result<String> {
    let repo = super::binaries::repo_root();
    let helm = match std::env::var_os("WSBRIDGE_TOOLS_BIN") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => super::binaries::target_dir().join("tools/bin"),
    }
    .join("helm");
    if !helm.exists() {
        let built = Command::new("bash")
            .arg(repo.join("tests/tools/build.sh"))
            .arg("helm")
            .env("CARGO_TARGET_DIR", super::binaries::target_dir())
            .status()?;
        if !built.success() {
            bail!("tests/tools/build.sh helm failed");
        }
    }
    let home = super::binaries::target_dir().join("tools/helm-home");
    let mut cmd = Command::new(&helm);
    cmd.current_dir(&repo)
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .args([
            "template",
            "wsbridge",
            "charts/wsbridge",
            "--namespace",
            SYSTEM_NAMESPACE,
        ])
        .args(["--skip-crds", "--set"])
        .arg(format!("broker.existingSecret={BROKER_SECRET}"));
    for set in sets {
        cmd.args(["--set", set]);
    }
    let out = cmd.output().context("running helm template")?;
    if !out.status.success() {
        bail!("helm template failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Installs the CRDs and the chart rendered for a broker at `amqp_url`,
/// then starts the controller, the gateway and `dispatchers` dispatcher
/// replicas, and waits until each is ready. One installation per test
/// binary (the roles serve every namespace).
pub async fn install(amqp_url: &str, dispatchers: usize) -> Result<DurableInstallation> {
    let cp = super::shared().await;
    let client = cp.client();
    super::install_crds(&client).await?;
    let repo = super::binaries::repo_root();
    super::apply_yaml_file(&client, repo.join("deploy/namespace.yaml"), None).await?;
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {BROKER_SECRET}}}\nstringData: {{url: '{amqp_url}'}}\n"
    );
    super::apply_yaml(&client, &secret, Some(SYSTEM_NAMESPACE)).await?;
    let manifests = render_chart(&[])?;
    super::apply_yaml(&client, &manifests, Some(SYSTEM_NAMESPACE)).await?;

    let start = |name: &'static str| async move {
        let (addr, pod) = start_deployment(name, None).await?;
        Ok::<_, anyhow::Error>(Role { addr, pod })
    };
    // The controller first: it creates the Secrets the gateway mounts.
    let controller = start("wsbridge-controller").await?;
    wait_ready("controller", controller.addr, &controller.pod).await?;
    let gateway = start("wsbridge-gateway")
        .await
        .with_context(|| format!("controller log:\n{}", controller.pod.logs()))?;
    let mut replicas = Vec::new();
    for _ in 0..dispatchers {
        replicas.push(start("wsbridge-dispatcher").await?);
    }
    wait_ready("gateway", gateway.addr, &gateway.pod).await?;
    for (i, d) in replicas.iter().enumerate() {
        wait_ready(&format!("dispatcher {i}"), d.addr, &d.pod).await?;
    }
    Ok(DurableInstallation {
        controller,
        gateway,
        dispatchers: replicas,
    })
}
