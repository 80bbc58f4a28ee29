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
    install_with(amqp_url, dispatchers, None).await
}

/// [`install`], with the gateway listening on `gateway_listen` when given
/// (an address chosen before the broker starts, for a broker that asks the
/// gateway's `/auth/*`), else on a free port.
pub async fn install_with(
    amqp_url: &str,
    dispatchers: usize,
    gateway_listen: Option<SocketAddr>,
) -> Result<DurableInstallation> {
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
    let gateway = match gateway_listen {
        Some(addr) => start_at("wsbridge-gateway", addr)
            .await
            .map(|pod| Role { addr, pod }),
        None => start("wsbridge-gateway").await,
    }
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

/// Runs one replica of the installed Deployment `name` from its pod
/// template, listening on `addr`.
async fn start_at(name: &str, addr: SocketAddr) -> Result<LocalPod> {
    use k8s_openapi::api::apps::v1::Deployment;
    let cp = super::shared().await;
    let client = cp.client();
    let deployment = kube::Api::<Deployment>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .get(name)
        .await
        .with_context(|| format!("Deployment {name}"))?;
    let listen = addr.to_string();
    super::pods::run_pod_template(cp, &client, &deployment, &[("WSBRIDGE_LISTEN", listen.as_str())]).await
}

/// A quorum queue of the test's own bound to every message of a channel:
/// what the broker accepted there (and confirmed), to compare deliveries
/// with. Declared before traffic starts; drained at the end.
pub struct Witness {
    _connection: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
}

impl Witness {
    pub async fn declare(amqp_url: &str, ns: &str, channel: &str) -> Result<Self> {
        use lapin::options::{QueueBindOptions, QueueDeclareOptions};
        use lapin::types::{AMQPValue, FieldTable, LongString};
        let connection = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await?;
        let ch = connection.create_channel().await?;
        let key = wsbridge_core::ChannelKey::new(ns, channel);
        wsbridge_broker::topology::declare_channel(&ch, &key).await?;
        let queue = format!("test.witness.{ns}.{channel}");
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
        ch.queue_bind(
            queue.as_str().into(),
            wsbridge_broker::topology::channel_exchange(&key).into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(Self {
            _connection: connection,
            channel: ch,
            queue,
        })
    }

    /// Every body the queue holds, taken out (connects again when the
    /// broker restarted since).
    pub async fn drain(amqp_url: &str, ns: &str, channel: &str) -> Result<Vec<String>> {
        use lapin::options::{BasicAckOptions, BasicGetOptions};
        let witness = Self::declare(amqp_url, ns, channel).await?;
        let mut bodies = Vec::new();
        while let Some(message) = witness
            .channel
            .basic_get(witness.queue.as_str().into(), BasicGetOptions::default())
            .await?
        {
            bodies.push(String::from_utf8_lossy(&message.delivery.data).to_string());
            message.delivery.ack(BasicAckOptions::default()).await?;
        }
        Ok(bodies)
    }
}

/// Messages sent at a steady pace while roles are killed: the endpoint
/// sends `e-N`, a publisher posts `p-N` through whichever gateway is
/// current; the publishes answered 202 are recorded, and every other
/// answer must be a JSON reason or a refused connection.
pub struct Traffic {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Publishes answered 202.
    pub accepted: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Publishes refused with 503 and a JSON reason.
    pub refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Endpoint messages sent.
    pub sent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Traffic {
    /// Starts sending every `every` on `endpoint` and publishing on
    /// `ns/channel` through `gateway` (replaced when the gateway restarts).
    pub fn start(
        endpoint: tokio::sync::broadcast::Sender<tokio_tungstenite::tungstenite::Message>,
        gateway: std::sync::Arc<std::sync::Mutex<SocketAddr>>,
        ns: &str,
        channel: &str,
        every: std::time::Duration,
    ) -> Self {
        use std::sync::atomic::Ordering;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        let (counter, mut halt) = (sent.clone(), stopped.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !*halt.borrow_and_update() {
                n += 1;
                let _ = endpoint.send(tokio_tungstenite::tungstenite::Message::text(format!("e-{n}")));
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(every).await;
            }
        }));
        let path = format!("/channels/{ns}/{channel}");
        let (ok, no, mut halt) = (accepted.clone(), refused.clone(), stopped);
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !*halt.borrow_and_update() {
                n += 1;
                let body = format!("p-{n}");
                let addr = *gateway.lock().unwrap();
                let answer = tokio::time::timeout(
                    std::time::Duration::from_secs(15),
                    super::http::request(
                        addr,
                        "POST",
                        &path,
                        &[("Content-Type", "text/plain")],
                        body.as_bytes(),
                    ),
                )
                .await;
                match answer {
                    Ok(Ok((202, _))) => ok.lock().unwrap().push(body),
                    Ok(Ok((code, text))) => {
                        assert!(
                            serde_json::from_str::<serde_json::Value>(&text).is_ok(),
                            "{code} without a JSON reason: {text}"
                        );
                        no.fetch_add(1, Ordering::SeqCst);
                    }
                    // The gateway is down (being restarted) or cut off mid-answer.
                    Ok(Err(_)) | Err(_) => {}
                }
                tokio::time::sleep(every).await;
            }
        }));
        Self {
            stop,
            tasks,
            accepted,
            refused,
            sent,
        }
    }

    /// Stops sending and waits for the senders.
    pub async fn stop(self) -> (Vec<String>, usize, usize) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.expect("a sender panicked");
        }
        let accepted = self.accepted.lock().unwrap().clone();
        (
            accepted,
            self.refused.load(std::sync::atomic::Ordering::SeqCst),
            self.sent.load(std::sync::atomic::Ordering::SeqCst),
        )
    }
}

/// What a subscriber received: each body once, and how many repeats.
#[derive(Default, Debug)]
pub struct Received {
    pub bodies: std::collections::BTreeSet<String>,
    pub duplicates: usize,
}

impl Received {
    /// Takes what `sub` received so far without waiting.
    pub fn take(&mut self, sub: &mut super::peers::Subscriber) {
        while let Ok(r) = sub.received.try_recv() {
            let body = String::from_utf8_lossy(&r.body).to_string();
            if !self.bodies.insert(body) {
                self.duplicates += 1;
            }
        }
    }
}

/// A `rabbitmq` Channel `feed` open to anonymous publishers, an Endpoint
/// and a Bridge `upstream` to `endpoint_url`, and a Subscription per
/// `(name, subscriber URI, delivery)`, the delivery a YAML flow map or "".
pub fn feed_yaml(endpoint_url: &str, subscriptions: &[(&str, &str, &str)]) -> String {
    let mut yaml = format!(
        "apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: feed}}
spec: {{backend: rabbitmq, allowAnonymousPublish: true}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Endpoint
metadata: {{name: upstream}}
spec: {{url: '{endpoint_url}', reconnect: {{initialDelay: 50ms, maxDelay: 500ms}}}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {{name: upstream}}
spec: {{channel: feed, endpoint: upstream}}
"
    );
    for (name, uri, delivery) in subscriptions {
        yaml.push_str(&format!(
            "---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {{name: {name}}}
spec:
  channel: feed
  subscriber: {{uri: '{uri}'}}
"
        ));
        if !delivery.is_empty() {
            yaml.push_str(&format!("  delivery: {delivery}\n"));
        }
    }
    yaml
}

/// Declares the witness of `ns/feed` (before any traffic), applies `yaml`
/// (see [`feed_yaml`]) and starts the Bridge `upstream`'s worker from the
/// pod template the controller wrote; returns once `endpoint` saw it
/// connect.
pub async fn start_feed(
    amqp_url: &str,
    ns: &str,
    yaml: &str,
    endpoint: &mut super::peers::WsServer,
) -> Result<(Witness, LocalPod)> {
    let witness = Witness::declare(amqp_url, ns, "feed").await?;
    let client = super::shared().await.client();
    super::apply_yaml(&client, yaml, Some(ns)).await?;
    let worker = super::pods::start_bridge_worker(ns, "upstream").await?;
    endpoint.next_connected().await;
    Ok((witness, worker))
}
