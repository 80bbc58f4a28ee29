//! A real etcd + kube-apiserver (+ optional kube-controller-manager) on
//! loopback, started from the binaries `tests/controlplane/build.sh` builds:
//! the [`ControlPlane`] handle, its start-up and the instance shared by a
//! test binary. Its child processes are handled in `processes.rs`, its
//! credentials and kubeconfigs in `kubeconfig.rs`.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use kube::{Client, Config};
use tokio::sync::OnceCell;

use super::kubeconfig::{config_from_kubeconfig, install_crypto_provider};
pub use super::kubeconfig::{kubeconfig_yaml, random_hex};
use super::{binaries, reaper};

/// Audience of ServiceAccount tokens minted without an explicit audience
/// (the apiserver's `--api-audiences`), and the SA token issuer.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// Service CIDR handed to the apiserver and the controller manager.
const SERVICE_CIDR: &str = "10.0.0.0/24";

/// How long the apiserver gets to answer `/readyz` with `ok`.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What to start besides etcd and kube-apiserver.
#[derive(Debug, Clone, Default)]
pub struct Options {
    controller_manager: bool,
}

impl Options {
    /// Also start kube-controller-manager (garbage collector, namespace,
    /// deployment/replicaset, endpointslice, serviceaccount controllers...).
    pub fn with_controller_manager(mut self) -> Self {
        self.controller_manager = true;
        self
    }
}

/// A running control plane. It holds nothing tied to a tokio runtime: make a
/// client for the runtime you are on with [`ControlPlane::client`].
///
/// Dropping it kills its processes and removes its temp dir; a control plane
/// that is never dropped (the shared one) is cleaned up by the reaper when
/// the test process exits.
pub struct ControlPlane {
    pub(super) dir: PathBuf,
    pub(super) log_dir: PathBuf,
    pub(super) bin_dir: PathBuf,
    server_url: String,
    admin_token: String,
    controller_manager_token: String,
    kubeconfig_path: PathBuf,
    config: Config,
    startup: Duration,
    pub(super) children: Mutex<Vec<(&'static str, Child)>>,
    /// The arguments each child was started with (for [`ControlPlane::restart`]).
    pub(super) args: Mutex<Vec<(&'static str, Vec<String>)>>,
    controller_manager: OnceCell<()>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server_url", &self.server_url)
            .field("kubeconfig_path", &self.kubeconfig_path)
            .field("log_dir", &self.log_dir)
            .finish_non_exhaustive()
    }
}

static SHARED: OnceCell<Result<ControlPlane, String>> = OnceCell::const_new();

/// The control plane shared by every test of this test binary, started on
/// first use. Panics (with the log locations) if it cannot start.
pub async fn shared() -> &'static ControlPlane {
    let result = SHARED
        .get_or_init(|| async {
            ControlPlane::start(Options::default())
                .await
                .map_err(|e| format!("{e:#}"))
        })
        .await;
    match result {
        Ok(cp) => cp,
        Err(e) => panic!("test control plane failed to start: {e}"),
    }
}

/// [`shared`], plus a kube-controller-manager started on first use.
pub async fn shared_with_controller_manager() -> &'static ControlPlane {
    let cp = shared().await;
    if let Err(e) = cp.ensure_controller_manager().await {
        panic!("kube-controller-manager failed to start: {e:#}");
    }
    cp
}

impl ControlPlane {
    /// Builds the binaries if needed, starts etcd and kube-apiserver on free
    /// loopback ports and waits for `/readyz`. Retries with fresh ports when
    /// a port was taken between choosing and binding it.
    pub async fn start(options: Options) -> Result<ControlPlane> {
        let started = Instant::now();
        let bin_dir = tokio::task::spawn_blocking(binaries::ensure_binaries)
            .await
            .context("building the control plane panicked")??;
        let mut last_error = None;
        for _ in 0..3 {
            match Self::start_once(&bin_dir, started).await {
                Ok(cp) => {
                    if options.controller_manager {
                        cp.ensure_controller_manager().await?;
                    }
                    return Ok(cp);
                }
                Err(StartError::Retry(e)) => last_error = Some(e),
                Err(StartError::Fatal(e)) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("control plane did not start")))
    }

    async fn start_once(bin_dir: &Path, started: Instant) -> Result<ControlPlane, StartError> {
        let id = format!("{}-{}", std::process::id(), random_hex(4));
        let dir = std::env::temp_dir().join(format!("wsbridge-cp-{id}"));
        let log_dir = binaries::controlplane_dir().join("logs").join(&id);
        fs::create_dir_all(dir.join("certs")).map_err(fatal("creating the temp dir"))?;
        fs::create_dir_all(&log_dir).map_err(fatal("creating the log dir"))?;
        reaper::remove_dir_at_exit(&dir).map_err(StartError::Fatal)?;
        prune_old_logs(&log_dir);
        prune_orphaned_temp_dirs();

        let [etcd_port, etcd_peer_port, api_port] = free_ports().map_err(StartError::Fatal)?;
        let server_url = format!("https://127.0.0.1:{api_port}");
        let admin_token = random_hex(24);
        let controller_manager_token = random_hex(24);

        // Service-account signing key (ECDSA P-256).
        let sa_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| StartError::Fatal(anyhow!("generating the SA key: {e}")))?;
        write(&dir.join("sa.key"), &sa_key.serialize_pem())?;
        write(&dir.join("sa.pub"), &sa_key.public_key_pem())?;
        write(
            &dir.join("tokens.csv"),
            &format!(
                "{admin_token},wsbridge-test-admin,wsbridge-test-admin,\"system:masters\"\n\
                 {controller_manager_token},system:kube-controller-manager,system:kube-controller-manager\n"
            ),
        )?;

        let mut cp = ControlPlane {
            kubeconfig_path: dir.join("kubeconfig"),
            dir,
            log_dir,
            bin_dir: bin_dir.to_path_buf(),
            server_url,
            admin_token,
            controller_manager_token,
            config: Config::new(http::Uri::from_static("https://127.0.0.1")),
            startup: Duration::ZERO,
            children: Mutex::new(Vec::new()),
            args: Mutex::new(Vec::new()),
            controller_manager: OnceCell::new(),
        };
        let d = |name: &str| cp.dir.join(name).display().to_string();

        cp.spawn(
            "etcd",
            &[
                "--name=default".into(),
                format!("--data-dir={}", d("etcd")),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer_port}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
        )
        .map_err(StartError::Fatal)?;

        cp.spawn(
            "kube-apiserver",
            &[
                "--advertise-address=127.0.0.1".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--cert-dir={}", d("certs")),
                format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                format!("--service-account-issuer={API_AUDIENCE}"),
                format!("--api-audiences={API_AUDIENCE}"),
                format!("--service-account-key-file={}", d("sa.pub")),
                format!("--service-account-signing-key-file={}", d("sa.key")),
                format!("--token-auth-file={}", d("tokens.csv")),
                "--authorization-mode=RBAC".into(),
                "--disable-admission-plugins=ServiceAccount".into(),
                "--allow-privileged=true".into(),
                "--enable-priority-and-fairness=false".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ],
        )
        .map_err(StartError::Fatal)?;

        // The apiserver writes its self-signed serving cert (with its CA)
        // before it listens; wait for it, then trust exactly that.
        let ca_path = cp.dir.join("certs/apiserver.crt");
        let deadline = Instant::now() + READY_TIMEOUT;
        let ca_pem = loop {
            if let Ok(pem) = fs::read_to_string(&ca_path)
                && pem.trim_end().ends_with("-----END CERTIFICATE-----")
            {
                break pem;
            }
            cp.check_alive()?;
            if Instant::now() > deadline {
                return Err(StartError::Fatal(cp.failure("apiserver wrote no serving cert")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };

        let kubeconfig = kubeconfig_yaml(&cp.server_url, &ca_pem, "wsbridge-test-admin", &cp.admin_token);
        write(&cp.kubeconfig_path, &kubeconfig)?;
        cp.config = config_from_kubeconfig(&cp.kubeconfig_path)
            .await
            .map_err(StartError::Fatal)?;

        cp.wait_ready(deadline).await?;
        cp.startup = started.elapsed();
        eprintln!(
            "test control plane ready at {} in {:.1}s; kubeconfig {}; logs {}",
            cp.server_url,
            cp.startup.as_secs_f64(),
            cp.kubeconfig_path.display(),
            cp.log_dir.display()
        );
        Ok(cp)
    }

    pub(super) async fn wait_ready(&self, deadline: Instant) -> Result<(), StartError> {
        let client = self.client();
        loop {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("static request");
            let last = match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(StartError::Fatal(
                    self.failure(&format!("/readyz not ok after {READY_TIMEOUT:?}: {last}")),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts kube-controller-manager once (no-op if already running) and
    /// waits until its controllers act (the `default` ServiceAccount appears).
    pub async fn ensure_controller_manager(&self) -> Result<()> {
        self.controller_manager
            .get_or_try_init(|| self.start_controller_manager())
            .await
            .map(|_| ())
    }

    async fn start_controller_manager(&self) -> Result<()> {
        let started = Instant::now();
        let ca_pem = fs::read_to_string(self.dir.join("certs/apiserver.crt"))?;
        let kubeconfig_path = self.dir.join("controller-manager.kubeconfig");
        let kubeconfig = kubeconfig_yaml(
            &self.server_url,
            &ca_pem,
            "system:kube-controller-manager",
            &self.controller_manager_token,
        );
        fs::write(&kubeconfig_path, kubeconfig)?;
        let kubeconfig_arg = format!("--kubeconfig={}", kubeconfig_path.display());
        self.spawn(
            "kube-controller-manager",
            &[
                kubeconfig_arg,
                "--leader-elect=false".into(),
                "--use-service-account-credentials=true".into(),
                "--secure-port=0".into(),
                format!(
                    "--root-ca-file={}",
                    self.dir.join("certs/apiserver.crt").display()
                ),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--controllers=*".into(),
                "--v=1".into(),
            ],
        )?;

        // The serviceaccount controller creating `default/default` shows the
        // controllers run with working credentials.
        let client = self.client();
        let sas: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
            kube::Api::namespaced(client, "default");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if sas.get_opt("default").await?.is_some() {
                eprintln!(
                    "test kube-controller-manager running in {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            self.check_alive().map_err(StartError::into_inner)?;
            if Instant::now() > deadline {
                return Err(self.failure("kube-controller-manager created no default ServiceAccount"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A cluster-admin client bound to the current tokio runtime. Call it on
    /// each runtime (each `#[tokio::test]`) that needs one.
    pub fn client(&self) -> Client {
        install_crypto_provider();
        Client::try_from(self.config.clone()).expect("kube client from the test kubeconfig")
    }

    /// A client on the current runtime that authenticates with `token`
    /// (e.g. a ServiceAccount token) instead of the admin token.
    pub fn client_with_token(&self, token: &str) -> Client {
        install_crypto_provider();
        let mut config = self.config.clone();
        config.auth_info.token = Some(token.to_string().into());
        Client::try_from(config).expect("kube client with a bearer token")
    }

    /// The admin kube config (clone it to tweak timeouts or credentials).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Kubeconfig file for the admin user (for kubectl or a child process).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// Bearer token of a `system:masters` user.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// PEM of the apiserver's serving cert and its CA (what the kubeconfig trusts).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("certs/apiserver.crt")
    }

    /// Where etcd/apiserver/controller-manager logs are written (kept after the run).
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// A `kubectl` command already pointed at this control plane as admin.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig_path.display()));
        cmd
    }

    /// Path of a built control-plane binary (e.g. `kubectl`).
    pub fn binary(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Names and process ids of the running control-plane processes.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        let children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children.iter().map(|(name, child)| (*name, child.id())).collect()
    }

    /// Temp dir holding etcd's data, certs, keys and kubeconfigs (removed at exit).
    pub fn temp_dir(&self) -> &Path {
        &self.dir
    }

    /// Time from `start` to `/readyz` ok (including the cached build check).
    pub fn startup_time(&self) -> Duration {
        self.startup
    }
}

pub(super) enum StartError {
    /// Probably a port clash: try again with new ports.
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

impl StartError {
    pub(super) fn into_inner(self) -> anyhow::Error {
        match self {
            StartError::Retry(e) | StartError::Fatal(e) => e,
        }
    }
}

fn fatal<E: Into<anyhow::Error>>(what: &'static str) -> impl FnOnce(E) -> StartError {
    move |e| StartError::Fatal(e.into().context(what))
}

fn write(path: &Path, contents: &str) -> Result<(), StartError> {
    fs::write(path, contents)
        .with_context(|| format!("writing {}", path.display()))
        .map_err(StartError::Fatal)
}

/// Three distinct free loopback ports (held together so they differ).
fn free_ports() -> Result<[u16; 3]> {
    let listeners = [
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
    ];
    let mut ports = [0; 3];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// Removes `wsbridge-cp-<pid>-*` temp dirs whose test process is gone (left
/// behind only if the reaper itself was killed).
fn prune_orphaned_temp_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("wsbridge-cp-")) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Keeps the logs of the most recent runs only.
fn prune_old_logs(current: &Path) {
    const KEEP: usize = 20;
    let Some(parent) = current.parent() else {
        return;
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let mut dirs: Vec<_> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if dirs.len() <= KEEP {
        return;
    }
    dirs.sort();
    for (_, path) in &dirs[..dirs.len() - KEEP] {
        if path != current {
            let _ = fs::remove_dir_all(path);
        }
    }
}
