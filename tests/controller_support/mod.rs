//! Shared by the `controller_*` tests: CRDs, the controller as a child
//! process (the built binary), its metrics, and what a worker would write.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use wsbridge_api::{Bridge, conditions};

use crate::support::{self, ControlPlane};

/// Field manager the worker uses for `Connected` (what a test pretends to be).
pub const WORKER_MANAGER: &str = "wsbridge-worker";
pub const WAIT: Duration = Duration::from_secs(30);

/// Installs the CRDs (idempotent) and waits until they are served.
pub async fn install_crds(client: &Client) -> Result<()> {
    support::apply_yaml(client, &wsbridge_api::crds_yaml(), None).await?;
    let names: Vec<String> = wsbridge_api::crds()
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    support::wait_crds_established(client, &names, WAIT).await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const CHILD_ARGS: &str = "WSBRIDGE_TEST_CONTROLLER_ARGS";

#[derive(clap::Parser)]
struct ChildCli {
    #[command(flatten)]
    args: wsbridge::cli::ControllerArgs,
}

/// Body of the `controller_child_process` test every controller test file
/// declares: a no-op normally; when started by [`ControllerProcess`], runs
/// `wsbridge controller` (the library) until killed or its parent dies.
pub fn child_entry() {
    let Ok(argv) = std::env::var(CHILD_ARGS) else {
        return;
    };
    let argv: Vec<String> = serde_json::from_str(&argv).expect("controller args");
    let cli = <ChildCli as clap::Parser>::parse_from(std::iter::once("controller".to_string()).chain(argv));
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(500));
            if std::os::unix::process::parent_id() != parent {
                std::process::exit(0);
            }
        }
    });
    let options = cli.args.options().expect("controller options");
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(wsbridge_controller::run(options)) {
        eprintln!("controller failed: {e:#}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

/// A `wsbridge controller` child process; killed when dropped.
pub struct ControllerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl ControllerProcess {
    /// Starts the built binary against the test control plane with `args`
    /// added to `--listen`.
    pub async fn start(cp: &ControlPlane, name: &str, args: &[&str]) -> Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let log = cp
            .log_dir()
            .join(format!("controller-{name}-{}.log", addr.port()));
        let file = std::fs::File::create(&log)?;
        let mut argv = vec!["--listen".to_string(), addr.to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        // The test binary re-runs itself as the controller (see
        // `child_entry`): the shared `target/` may hold another branch's
        // `wsbridge` binary, this one is always the code under test.
        let child = Command::new(std::env::current_exe()?)
            .args([
                "--exact",
                "controller_child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ARGS, serde_json::to_string(&argv)?)
            .env("KUBECONFIG", cp.kubeconfig_path())
            .env("POD_NAME", name)
            .env("RUST_LOG", "info,kube_lease_manager=warn")
            // Every peer of these tests listens on loopback, which the
            // cluster roles deny by default (tests/security_self_loops.rs
            // turns it back off with --allow-loopback=false).
            .env("WSBRIDGE_ALLOW_LOOPBACK", "true")
            .env_remove("POD_NAMESPACE")
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .context("starting wsbridge controller")?;
        Ok(Self { child, addr, log })
    }

    /// Starts a controller for one namespace, without leader election, and
    /// waits until its caches are synced.
    pub async fn for_namespace(cp: &ControlPlane, ns: &str) -> Result<Self> {
        Self::for_namespace_with(cp, ns, &[]).await
    }

    /// [`ControllerProcess::for_namespace`] with more flags.
    pub async fn for_namespace_with(cp: &ControlPlane, ns: &str, extra: &[&str]) -> Result<Self> {
        let mut args = vec![
            "--namespace",
            ns,
            "--leader-election=false",
            "--worker-image",
            "wsbridge:test",
        ];
        args.extend_from_slice(extra);
        let p = Self::start(cp, ns, &args).await?;
        p.wait_ready().await?;
        Ok(p)
    }

    pub async fn wait_ready(&self) -> Result<()> {
        let addr = self.addr;
        support::eventually(WAIT, "controller /readyz", || async move {
            Ok(http_get(addr, "/readyz")
                .await
                .ok()
                .filter(|(code, _)| *code == 200))
        })
        .await
        .with_context(|| format!("log: {}", self.log.display()))?;
        Ok(())
    }

    pub async fn metrics(&self) -> Result<String> {
        let (code, body) = http_get(self.addr, "/metrics").await?;
        anyhow::ensure!(code == 200, "/metrics answered {code}");
        Ok(body)
    }

    /// Sum of a metric family's samples whose line contains every `filter`.
    pub async fn metric_sum(&self, name: &str, filters: &[&str]) -> Result<f64> {
        Ok(metric_sum(&self.metrics().await?, name, filters))
    }

    /// API requests that change something (create, patch, update, delete).
    pub async fn writes(&self) -> Result<f64> {
        let m = self.metrics().await?;
        Ok(["create", "patch", "update", "delete"]
            .iter()
            .map(|v| {
                let verb = format!("verb=\"{v}\"");
                metric_sum(&m, "wsbridge_controller_api_requests_total", &[&verb])
            })
            .sum())
    }
}

#[allow(unused_imports)]
pub use crate::support::metric_sum;

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await?;
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP answer"))?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// What a kubelet + deployment controller would report: the worker is available.
pub async fn mark_deployment_available(client: &Client, ns: &str, name: &str) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let generation = api.get(name).await?.metadata.generation;
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "observedGeneration": generation,
            "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                            "message": "test", "lastUpdateTime": now(), "lastTransitionTime": now()}],
        }})),
    )
    .await?;
    Ok(())
}

/// What the worker writes: `Connected`, with its own field manager.
pub async fn set_connected(client: &Client, ns: &str, bridge: &str, connected: bool) -> Result<()> {
    let api: Api<Bridge> = Api::namespaced(client.clone(), ns);
    let status = if connected { "True" } else { "False" };
    api.patch_status(
        bridge,
        &PatchParams::apply(WORKER_MANAGER).force(),
        &Patch::Apply(json!({
            "apiVersion": "wsbridge.io/v1alpha1", "kind": "Bridge",
            "status": {"conditions": [{"type": "Connected", "status": status,
                "reason": if connected { "Connected" } else { "Disconnected" },
                "message": "test", "lastTransitionTime": now()}]},
        })),
    )
    .await?;
    Ok(())
}

/// Waits until the object's `Ready` condition has `reason`.
pub async fn wait_reason<K, F>(api: &Api<K>, name: &str, reason: &str, conds: F) -> Result<K>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    F: Fn(&K) -> Vec<Condition>,
{
    let conds = &conds;
    let result = support::eventually(WAIT, &format!("{name} Ready reason {reason}"), || async move {
        let obj = api.get(name).await?;
        let c = conds(&obj);
        let found = conditions::find(&c, conditions::READY).map(|r| r.reason.clone());
        Ok((found.as_deref() == Some(reason)).then_some(obj))
    })
    .await;
    match result {
        Ok(o) => Ok(o),
        Err(e) => {
            let obj = api.get(name).await?;
            Err(e.context(format!("now: {:?}", conds(&obj))))
        }
    }
}

pub fn bridge_conditions(b: &Bridge) -> Vec<Condition> {
    b.status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default()
}
