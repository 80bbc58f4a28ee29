//! Shared by `deploy_manifests`: running helm and kubectl (helm built by
//! `tests/tools/build.sh`, kubectl from the control plane build), rendering
//! the chart and reading its documents, installing the CRDs, namespaces and
//! server-side dry runs against the test API server, and comparing the
//! generated copies of the CRDs.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use kube::Api;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::support::{self, ControlPlane};

pub const CHART: &str = "charts/wsbridge";
pub const CRD_NAMES: [&str; 4] = [
    "bridges.wsbridge.io",
    "channels.wsbridge.io",
    "endpoints.wsbridge.io",
    "subscriptions.wsbridge.io",
];

/// Values that switch on every optional part of the chart.
pub const ALL_FEATURES: &[&str] = &[
    "gateway.autoscaling.enabled=true",
    "gateway.podDisruptionBudget.enabled=true",
    "metrics.serviceMonitor.enabled=true",
];

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The helm binary, built by `tests/tools/build.sh` on first use (a no-op
/// when its stamp matches).
pub fn helm_binary() -> &'static Path {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = HELM.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("tests/tools/build.sh"))
            .env("CARGO_TARGET_DIR", support::binaries::target_dir())
            .output()
            .map_err(|e| format!("running tests/tools/build.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tests/tools/build.sh failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let helm = match std::env::var_os("WSBRIDGE_TOOLS_BIN") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => support::binaries::target_dir().join("tools/bin"),
        }
        .join("helm");
        Ok(helm)
    });
    match built {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    }
}

/// A helm command with its own config/cache/data dirs (nothing touches the
/// user's), run from the repository root, pointed at `cp` when given.
pub fn helm(cp: Option<&ControlPlane>) -> Command {
    let home = support::binaries::target_dir().join("tools/helm-home");
    let mut cmd = Command::new(helm_binary());
    cmd.current_dir(repo())
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG");
    if let Some(cp) = cp {
        cmd.arg("--kubeconfig").arg(cp.kubeconfig_path());
    }
    cmd
}

/// kubectl from the control plane build, with the admin kubeconfig.
pub fn kubectl(cp: &ControlPlane) -> Command {
    let mut cmd = Command::new(cp.binary("kubectl"));
    cmd.current_dir(repo())
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path());
    cmd
}

/// Runs `cmd` (feeding `stdin` when given) and returns its stdout; fails with
/// the command line, stdout and stderr when it exits non-zero.
pub fn run(mut cmd: Command, stdin: Option<&str>) -> Result<String> {
    let line = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {line}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes()).context("writing stdin")?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {line}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{line} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// `helm template <release> charts/wsbridge -n <namespace> --set ...`.
pub fn render(release: &str, namespace: &str, set: &[&str]) -> Result<String> {
    let mut cmd = helm(None);
    cmd.args(["template", release, CHART, "--namespace", namespace]);
    for value in set {
        cmd.args(["--set", value]);
    }
    run(cmd, None)
}

/// The documents of a multi-document YAML stream, as JSON (empty ones skipped).
pub fn documents(yaml: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for document in serde_norway::Deserializer::from_str(yaml) {
        let value = serde_norway::Value::deserialize(document).context("parsing YAML")?;
        if !value.is_null() {
            docs.push(serde_json::to_value(&value)?);
        }
    }
    Ok(docs)
}

pub fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

pub fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

pub fn of_kind<'a>(docs: &'a [Value], k: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    docs.iter().filter(move |d| kind(d) == k)
}

pub fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Installs the wsbridge CRDs for real (once per test binary), plus a
/// minimal stand-in for the Prometheus Operator's ServiceMonitor CRD so that
/// the chart's optional ServiceMonitor has a served kind to be checked against.
pub async fn crds_installed(cp: &ControlPlane) -> Result<()> {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_try_init(|| async {
        let mut apply = kubectl(cp);
        apply.args([
            "apply",
            "--server-side",
            "--field-manager=wsbridge-tests",
            "-f",
            "crds/",
        ]);
        run(apply, None)?;
        let client = cp.client();
        support::apply_yaml(&client, SERVICE_MONITOR_CRD, None).await?;
        let mut names = CRD_NAMES.to_vec();
        names.push("servicemonitors.monitoring.coreos.com");
        support::wait_crds_established(&client, &names, Duration::from_secs(30)).await?;
        Ok::<(), anyhow::Error>(())
    })
    .await?;
    Ok(())
}

/// Just enough of the Prometheus Operator's CRD to serve the kind.
pub const SERVICE_MONITOR_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

/// A fresh namespace, created through the harness, optionally labelled.
pub async fn namespace(cp: &ControlPlane, prefix: &str, labels: &[(&str, &str)]) -> Result<String> {
    let client = cp.client();
    let ns = support::create_namespace(&client, prefix).await?;
    if !labels.is_empty() {
        let labels: serde_json::Map<String, Value> =
            labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
        api.patch(
            &ns,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": labels}})),
        )
        .await?;
    }
    Ok(ns)
}

pub fn server_dry_run(cp: &ControlPlane, yaml: &str) -> Result<String> {
    let mut cmd = kubectl(cp);
    cmd.args([
        "apply",
        "--server-side",
        "--field-manager=wsbridge-tests",
        "--dry-run=server",
        "-f",
        "-",
    ]);
    run(cmd, Some(yaml))
}

/// The chart to `helm install` into the test API server. Its kube-apiserver,
/// built from Go modules without release ldflags, reports gitVersion
/// `v0.0.0-master+...`, which no `kubeVersion` constraint accepts; only then
/// the chart is installed from a copy whose Chart.yaml lacks `kubeVersion`
/// (everything else identical). Remove once tests/controlplane/build.sh
/// stamps the Kubernetes version.
pub async fn installable_chart(cp: &ControlPlane) -> Result<PathBuf> {
    let git_version = cp.client().apiserver_version().await?.git_version;
    if !git_version.starts_with("v0.0.0") {
        return Ok(repo().join(CHART));
    }
    eprintln!(
        "test API server reports {git_version}: installing the chart without its kubeVersion constraint"
    );
    let copy = support::binaries::target_dir()
        .join("tools/chart-copies")
        .join(support::controlplane::random_hex(6))
        .join("wsbridge");
    copy_dir(&repo().join(CHART), &copy)?;
    let chart_yaml = std::fs::read_to_string(copy.join("Chart.yaml"))?;
    let without: String = chart_yaml
        .lines()
        .filter(|l| !l.starts_with("kubeVersion:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(copy.join("Chart.yaml"), without)?;
    Ok(copy)
}

pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

pub fn same_files(a: &Path, b: &Path) -> Result<()> {
    let list = |dir: &Path| -> Result<BTreeSet<String>> {
        Ok(std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?)
    };
    let (left, right) = (list(a)?, list(b)?);
    ensure!(
        left == right,
        "{} holds {left:?} but {} holds {right:?}: run deploy/generate.sh",
        a.display(),
        b.display()
    );
    for file in &left {
        let (x, y) = (std::fs::read(a.join(file))?, std::fs::read(b.join(file))?);
        ensure!(
            x == y,
            "{} differs from {}: run deploy/generate.sh",
            b.join(file).display(),
            a.join(file).display()
        );
    }
    Ok(())
}
