//! Runs a Deployment's pod template as a local process: there is no kubelet,
//! so the tests do its job. The container's args and environment are taken
//! from the template as the controller wrote them; `valueFrom` references
//! are resolved the way the kubelet would (Secret and ConfigMap keys,
//! downward API with `POD_IP=127.0.0.1`), and the process authenticates as
//! the pod's ServiceAccount with a token from the TokenRequest API, so the
//! worker's Role is exercised for real. Secret volumes are written to a
//! local folder (and kept in sync with their Secret, as the kubelet does),
//! and their mount paths in the args and environment point there. Only the
//! listen address is overridden, since local processes share one network
//! namespace.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Secret};
use kube::api::Api;
use kube::{Client, ResourceExt};
use std::process::{Child, Command};

use super::ControlPlane;
use super::controlplane::random_hex;

/// A pod template running as a local process in its own process group;
/// killed on drop, and by the harness's reaper if the test binary dies.
pub struct LocalPod {
    pub child: Child,
    /// stdout and stderr of the process.
    pub log: PathBuf,
    /// The environment it was started with (resolved secrets included).
    pub env: BTreeMap<String, String>,
    pub args: Vec<String>,
    /// Set on drop: stops keeping the pod's Secret volumes in sync.
    volume_sync: Option<Arc<AtomicBool>>,
}

impl LocalPod {
    /// What the process has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait up to `grace` for a clean exit; returns the exit code.
    pub async fn terminate(&mut self, grace: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// SIGKILL: the process gets no chance to clean up (as an OOM kill or
    /// a node loss).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for LocalPod {
    fn drop(&mut self) {
        if let Some(stop) = self.volume_sync.take() {
            stop.store(true, Ordering::Relaxed);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = super::reaper::forget_process_group(self.child.id());
    }
}

/// Starts the first container of `deployment`'s pod template with
/// `overrides` applied on top of its environment.
pub async fn run_pod_template(
    cp: &'static ControlPlane,
    client: &Client,
    deployment: &Deployment,
    overrides: &[(&str, &str)],
) -> Result<LocalPod> {
    let ns = deployment.namespace().context("Deployment without namespace")?;
    let pod_name = format!("{}-local-{}", deployment.name_any(), random_hex(3));
    let template = deployment
        .spec
        .as_ref()
        .map(|s| &s.template)
        .context("Deployment without spec")?;
    let pod = template.spec.as_ref().context("pod template without spec")?;
    let container: &Container = pod
        .containers
        .first()
        .context("pod template without containers")?;

    let mut env = BTreeMap::new();
    for var in container.env.iter().flatten() {
        if let Some(value) = resolve_env(client, &ns, &pod_name, var).await? {
            env.insert(var.name.clone(), value);
        }
    }
    let dir = cp.temp_dir().join(&pod_name);
    std::fs::create_dir_all(&dir)?;
    let (mounts, volume_sync) = secret_volumes(cp, client, &ns, pod, container, &dir).await?;
    // A path under a mount, alone or as a flag's value (`--flag=PATH`).
    let local_path = |value: &str| {
        let (flag, path) = match value.split_once('=') {
            Some((flag, path)) if flag.starts_with("--") => (format!("{flag}="), path),
            _ => (String::new(), value),
        };
        let path = mounts.iter().fold(path.to_string(), |v, (mount, local)| {
            match v.strip_prefix(mount.as_str()) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("{local}{rest}"),
                _ => v,
            }
        });
        format!("{flag}{path}")
    };
    for value in env.values_mut() {
        *value = local_path(value);
    }
    // A local pod's network is this host's loopback (its POD_IP is
    // 127.0.0.1, its peers listen on 127.0.0.1): the explicit allow that the
    // cluster roles' denial of loopback destinations needs.
    env.insert("WSBRIDGE_ALLOW_LOOPBACK".into(), "true".into());
    for (k, v) in overrides {
        env.insert(k.to_string(), v.to_string());
    }

    let service_account = pod
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let token = super::mint_service_account_token(
        client,
        &ns,
        &service_account,
        &[super::API_AUDIENCE],
        Duration::from_secs(3600),
    )
    .await?;
    let ca = std::fs::read_to_string(cp.ca_path())?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        super::controlplane::kubeconfig_yaml(cp.server_url(), &ca, &service_account, &token),
    )?;

    let args: Vec<String> = container.args.iter().flatten().map(|a| local_path(a)).collect();
    let log = dir.join("output.log");
    let out = std::fs::File::create(&log)?;
    use std::os::unix::process::CommandExt;
    let child = Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KUBECONFIG", &kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("WSBRIDGE_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .envs(&env)
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out))
        .process_group(0)
        .spawn()
        .context("starting the pod's process")?;
    super::reaper::watch_process_group(child.id())?;
    Ok(LocalPod {
        child,
        log,
        env,
        args,
        volume_sync,
    })
}

/// Writes the container's Secret volumes under `dir` (waiting for a
/// Secret that is not optional, as the kubelet does) and keeps them in
/// sync on a thread of its own (the pod may outlive this test's runtime)
/// until the returned flag is set; returns each mount path with its local
/// folder.
async fn secret_volumes(
    cp: &'static ControlPlane,
    client: &Client,
    ns: &str,
    pod: &k8s_openapi::api::core::v1::PodSpec,
    container: &Container,
    dir: &std::path::Path,
) -> Result<(Vec<(String, String)>, Option<Arc<AtomicBool>>)> {
    let mut mounts = Vec::new();
    let mut synced = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let Some(source) = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .and_then(|v| v.secret.as_ref())
        else {
            continue;
        };
        let name = source
            .secret_name
            .clone()
            .context("secret volume without secretName")?;
        let local = dir.join("volumes").join(&mount.name);
        std::fs::create_dir_all(&local)?;
        let api = Api::<Secret>::namespaced(client.clone(), ns);
        if source.optional != Some(true) {
            super::eventually(
                Duration::from_secs(60),
                &format!("Secret {ns}/{name} of volume {}", mount.name),
                || {
                    let api = api.clone();
                    let name = name.clone();
                    async move { Ok(api.get_opt(&name).await?) }
                },
            )
            .await?;
        }
        write_secret_files(&api, &name, &local).await?;
        mounts.push((mount.mount_path.clone(), local.display().to_string()));
        synced.push((name, local));
    }
    if synced.is_empty() {
        return Ok((mounts, None));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the volume sync");
        runtime.block_on(async move {
            let api = Api::<Secret>::namespaced(cp.client(), &ns);
            while !stopped.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                for (name, local) in &synced {
                    let _ = write_secret_files(&api, name, local).await;
                }
            }
        });
    });
    Ok((mounts, Some(stop)))
}

/// The Secret's keys as files in `local` (unchanged files are not rewritten).
async fn write_secret_files(api: &Api<Secret>, name: &str, local: &std::path::Path) -> Result<()> {
    let data = api.get_opt(name).await?.and_then(|s| s.data).unwrap_or_default();
    // Keys gone from the Secret go from the folder too, as the kubelet does.
    for entry in std::fs::read_dir(local)?.flatten() {
        let file = entry.file_name().to_string_lossy().to_string();
        if !file.starts_with('.') && !data.contains_key(&file) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for (key, value) in data {
        let path = local.join(&key);
        if std::fs::read(&path).ok().as_deref() != Some(value.0.as_slice()) {
            let temp = local.join(format!(".{key}.tmp"));
            std::fs::write(&temp, &value.0)?;
            std::fs::rename(&temp, &path)?;
        }
    }
    Ok(())
}

async fn resolve_env(
    client: &Client,
    ns: &str,
    pod_name: &str,
    var: &k8s_openapi::api::core::v1::EnvVar,
) -> Result<Option<String>> {
    if let Some(value) = &var.value {
        return Ok(Some(value.clone()));
    }
    let Some(from) = &var.value_from else {
        return Ok(Some(String::new()));
    };
    if let Some(r) = &from.secret_key_ref {
        let secret = Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(&r.name)
            .await?;
        let value = secret.and_then(|s| s.data).and_then(|d| d.get(&r.key).cloned());
        return match value {
            Some(bytes) => Ok(Some(
                String::from_utf8(bytes.0).context("secret value is not UTF-8")?,
            )),
            None if r.optional == Some(true) => Ok(None),
            None => Err(anyhow!(
                "{}: Secret {}/{} key {} is missing (the kubelet would not start this pod)",
                var.name,
                ns,
                r.name,
                r.key
            )),
        };
    }
    if let Some(r) = &from.config_map_key_ref {
        let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(&r.name)
            .await?;
        let value = cm.and_then(|c| c.data).and_then(|d| d.get(&r.key).cloned());
        return match value {
            Some(v) => Ok(Some(v)),
            None if r.optional == Some(true) => Ok(None),
            None => Err(anyhow!(
                "{}: ConfigMap {}/{} key {} is missing",
                var.name,
                ns,
                r.name,
                r.key
            )),
        };
    }
    if let Some(f) = &from.field_ref {
        return Ok(Some(match f.field_path.as_str() {
            "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
            "metadata.name" => pod_name.into(),
            "metadata.namespace" => ns.into(),
            other => return Err(anyhow!("{}: unsupported fieldRef {other}", var.name)),
        }));
    }
    Err(anyhow!("{}: unsupported valueFrom", var.name))
}

/// Waits for the Deployment `name` to exist and returns it.
pub async fn wait_deployment(client: &Client, ns: &str, name: &str, timeout: Duration) -> Result<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    super::eventually(timeout, &format!("Deployment {ns}/{name}"), || {
        let api = api.clone();
        async move { Ok(api.get_opt(name).await?) }
    })
    .await
}

/// Runs the worker of Bridge `ns/bridge` from the Deployment the controller
/// wrote for it (waiting for it to appear), listening on a free loopback port.
pub async fn start_bridge_worker(ns: &str, bridge: &str) -> Result<LocalPod> {
    let cp = super::shared().await;
    let client = cp.client();
    let name = format!("wsbridge-worker-{bridge}");
    let deployment = wait_deployment(&client, ns, &name, Duration::from_secs(60)).await?;
    let listen = format!("127.0.0.1:{}", super::http::free_port());
    run_pod_template(cp, &client, &deployment, &[("WSBRIDGE_LISTEN", &listen)]).await
}
