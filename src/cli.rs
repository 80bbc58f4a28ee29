//! The `wsbridge` command line: every flag of every role, parsed with clap
//! and turned into the plain options each role's crate takes. Only the
//! binary knows about clap; the roles and the data plane never see it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use wsbridge_core::ObjectKey;
use wsbridge_dataplane::DestinationPolicy;
use wsbridge_dataplane::clients::ClientLimits;
use wsbridge_dataplane::destination::{ENV_ALLOW, ENV_ALLOW_LINK_LOCAL, ENV_DENY};
use wsbridge_http::ops::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "wsbridge",
    version,
    about = "Bridges external WebSocket endpoints to in-cluster HTTP services"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormatArg::Text, env = "WSBRIDGE_LOG_FORMAT")]
    pub log_format: LogFormatArg,
    /// Event-loop threads; 0 means one per CPU. Default: 1 for `worker` and
    /// `standalone`, one per CPU for `gateway`, `dispatcher` and `controller`.
    #[arg(long, global = true, value_name = "N", env = "WSBRIDGE_THREADS")]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// One event loop for the data plane: a bridge's messages arrive in
    /// order on one connection and fan out as I/O, which one thread drives
    /// at tens of thousands of deliveries a second, with less CPU per
    /// delivery than threads handing work to each other (see
    /// `bench/results/latest.md`). Roles serving many clients at once get a
    /// thread per CPU.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let data_plane = matches!(
            self.command,
            Command::Worker { .. }
                | Command::Standalone { .. }
                | Command::DemoFeed { .. }
                | Command::DemoSubscriber { .. }
        );
        match self.threads.unwrap_or(if data_plane { 1 } else { 0 }) {
            1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
            0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
            n => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(n)
                .enable_all()
                .build(),
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions as YAML.
    Crd {
        /// Write one file per CRD into this folder instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Print a Markdown reference of every field instead.
        #[arg(long, conflicts_with = "out_dir")]
        reference: bool,
    },
    /// Run one bridge worker (what the worker pod runs).
    Worker {
        /// The Bridge to serve, as NAMESPACE/NAME.
        #[arg(long, value_name = "NAMESPACE/NAME")]
        bridge: ObjectKey,
        /// Address of the worker's HTTP server (probes, metrics, publish path).
        #[arg(long, env = wsbridge_api::worker_env::LISTEN, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// The pod's IP, advertised on the Bridge's status as the publish address.
        #[arg(long, env = wsbridge_api::worker_env::POD_IP)]
        pod_ip: Option<std::net::IpAddr>,
        /// Outbound destination policy (the controller sets it through the
        /// environment).
        #[command(flatten)]
        destinations: DestinationArgs,
        /// Destinations that would loop through wsbridge itself.
        #[command(flatten)]
        loops: SelfLoopArgs,
        #[command(flatten)]
        memory: MemoryArgs,
        /// The broker of a `rabbitmq` Channel (the controller sets
        /// WSBRIDGE_RABBITMQ_URL from the Bridge's Secret).
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Run the publish gateway.
    Gateway {
        /// Address of the gateway's HTTP server.
        #[arg(long, env = "WSBRIDGE_LISTEN", default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Serve only this namespace's channels (default: all namespaces).
        #[arg(long, env = "WSBRIDGE_WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// How long token and access reviews are reused.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        auth_cache_ttl: std::time::Duration,
        /// Audience publisher tokens must carry (default: the API server's).
        #[arg(long = "token-audience")]
        token_audiences: Vec<String>,
        /// Outbound destination policy for deliveries to subscribers and
        /// dead-letter sinks.
        #[command(flatten)]
        destinations: DestinationArgs,
        /// Destinations that would loop through wsbridge itself.
        #[command(flatten)]
        loops: SelfLoopArgs,
        #[command(flatten)]
        memory: MemoryArgs,
        /// File holding the installation key that each Bridge's send
        /// credential is derived from (the controller's send key Secret,
        /// mounted); read again when it changes. Without it, workers refuse
        /// the gateway's sends.
        #[arg(long, value_name = "PATH", env = "WSBRIDGE_SEND_KEY_FILE")]
        send_key_file: Option<PathBuf>,
        /// The broker of `backend: rabbitmq` Channels: their publishes are
        /// confirmed by it and their WebSocket clients served from it.
        #[command(flatten)]
        broker: BrokerArgs,
        /// Folder of the controller's copy of the signing secrets (its
        /// delivery keys Secret, mounted), one file per signed
        /// Subscription; read again when it changes. Without it, signed
        /// Subscriptions get nothing from the gateway.
        #[arg(long, value_name = "DIR", env = "WSBRIDGE_DELIVERY_KEYS_DIR")]
        delivery_keys_dir: Option<PathBuf>,
    },
    /// Run a dispatcher: consumes the backlog of every Subscription of a
    /// `backend: rabbitmq` Channel and delivers it to its subscriber.
    /// Stateless; run as many replicas as the load needs.
    Dispatcher {
        /// Address of `/healthz`, `/readyz` and `/metrics`.
        #[arg(long, env = "WSBRIDGE_LISTEN", default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Consume only this namespace's Subscriptions (default: all namespaces).
        #[arg(long, env = "WSBRIDGE_WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// How long deliveries under way may take to finish at shutdown;
        /// what is not delivered by then goes back to its queue.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
        drain_timeout: Duration,
        /// Outbound destination policy for deliveries to subscribers and
        /// dead-letter sinks.
        #[command(flatten)]
        destinations: DestinationArgs,
        /// Destinations that would loop through wsbridge itself.
        #[command(flatten)]
        loops: SelfLoopArgs,
        #[command(flatten)]
        memory: MemoryArgs,
        /// The broker whose backlogs it consumes (required).
        #[command(flatten)]
        broker: BrokerArgs,
        /// The signing keys of signed Subscriptions (the controller's
        /// delivery keys Secret, mounted), one file per Subscription; read
        /// again when it changes. A signed Subscription without its key is
        /// held: nothing is delivered to it unsigned.
        #[arg(long, value_name = "DIR", env = "WSBRIDGE_DELIVERY_KEYS_DIR")]
        delivery_keys_dir: Option<PathBuf>,
    },
    /// Run bridges, the publish gateway and delivery in one process, from
    /// YAML files of Endpoints, Channels, Bridges, Subscriptions and Secrets.
    /// Publishing is not authenticated in this mode.
    Standalone {
        /// A YAML file (multi-document) or a folder searched recursively for
        /// *.yaml and *.yml. Repeatable.
        #[arg(short = 'f', long = "file", value_name = "PATH", required = true)]
        files: Vec<PathBuf>,
        /// Address of the publish, health and metrics listener.
        #[arg(long, env = "WSBRIDGE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Validate the files, print a summary and exit (non-zero when invalid).
        #[arg(long)]
        check: bool,
        /// How long queued deliveries may take to finish at shutdown.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
        drain_timeout: Duration,
        /// Bytes a WebSocket subscriber may have waiting to be written before
        /// it is disconnected as too slow.
        #[arg(long, value_name = "BYTES", env = "WSBRIDGE_CLIENT_BUFFER_BYTES", default_value_t = ClientLimits::default().buffer_bytes)]
        client_buffer_bytes: usize,
        /// WebSocket subscribers of one channel.
        #[arg(long, value_name = "N", default_value_t = ClientLimits::default().per_channel)]
        max_clients_per_channel: usize,
        /// WebSocket subscribers of the whole process.
        #[arg(long, value_name = "N", default_value_t = ClientLimits::default().total)]
        max_clients: usize,
        /// Time between pings to each WebSocket subscriber.
        #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = humantime::parse_duration)]
        client_ping_interval: Duration,
        /// How long a subscriber may leave a ping unanswered (or a frame
        /// unread) before it is disconnected.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
        client_pong_timeout: Duration,
        /// Outbound destination policy (subscribers, dead-letter sinks,
        /// endpoints).
        #[command(flatten)]
        destinations: DestinationArgs,
        #[command(flatten)]
        memory: MemoryArgs,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Validates configuration texts given as JSON on stdin and prints the
    /// verdict as JSON: the child process `standalone` validates reloads in.
    #[command(name = "validate-config", hide = true)]
    ValidateConfig,
    /// Demo WebSocket feed for the quickstart: sends a JSON tick every
    /// second and echoes what it receives.
    #[command(hide = true)]
    DemoFeed {
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Demo HTTP subscriber for the quickstart: prints every delivery.
    #[command(hide = true)]
    DemoSubscriber {
        #[arg(long, default_value = "127.0.0.1:9002")]
        listen: SocketAddr,
        /// The bearer token deliveries are expected to carry.
        #[arg(long)]
        expect_token: Option<String>,
    },
    /// Run the controller against the cluster of the current kubeconfig or
    /// in-cluster config.
    Controller(ControllerArgs),
    /// Print a channel's messages live, one per line (binary as `base64:...`),
    /// through the gateway or a standalone process.
    Tail {
        /// The channel, as NAMESPACE/NAME.
        #[arg(value_name = "NAMESPACE/CHANNEL")]
        channel: ObjectKey,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Publish a message on a channel (or each line of standard input, with
    /// `-` or no message) and print the answers.
    Publish {
        /// The channel, as NAMESPACE/NAME.
        #[arg(value_name = "NAMESPACE/CHANNEL")]
        channel: ObjectKey,
        /// The message; `-` or nothing reads standard input, one message a line.
        #[arg(value_name = "MESSAGE|-")]
        message: Option<String>,
        /// Send as binary (`application/octet-stream`) instead of text.
        #[arg(long)]
        binary: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Where `tail` and `publish` find a channel, and how they authenticate.
#[derive(clap::Args, Clone, Debug)]
pub struct ServerArgs {
    /// Base URL of the gateway or standalone process; the channel's address
    /// is `{server}/channels/NAMESPACE/NAME`.
    #[arg(long, env = "WSBRIDGE_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Bearer token (a Kubernetes token, for the gateway). Default: the
    /// kubeconfig's current user's token, if it has one.
    #[arg(long, env = "WSBRIDGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The RabbitMQ broker of `backend: rabbitmq` channels. The URL carries
/// credentials: give it in the environment or in a file (a mounted Secret),
/// not on a command line that process listings and shell histories show.
#[derive(clap::Args, Clone, Default, PartialEq, Eq)]
pub struct BrokerArgs {
    /// `amqp://` or `amqps://` URL of the broker, with user and password.
    /// Prefer the environment variable or --rabbitmq-url-file.
    #[arg(
        long,
        value_name = "URL",
        env = "WSBRIDGE_RABBITMQ_URL",
        hide_env_values = true
    )]
    pub rabbitmq_url: Option<String>,
    /// A file holding the broker's URL (surrounding whitespace ignored).
    #[arg(long, value_name = "PATH", env = "WSBRIDGE_RABBITMQ_URL_FILE")]
    pub rabbitmq_url_file: Option<PathBuf>,
}

impl std::fmt::Debug for BrokerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerArgs")
            .field("rabbitmq_url", &self.rabbitmq_url.as_ref().map(|_| "(redacted)"))
            .field("rabbitmq_url_file", &self.rabbitmq_url_file)
            .finish()
    }
}

impl BrokerArgs {
    /// The broker's URL, when one is given (errors never show it).
    pub fn url(&self) -> anyhow::Result<Option<wsbridge_broker::BrokerUrl>> {
        let text = match (&self.rabbitmq_url, &self.rabbitmq_url_file) {
            (Some(_), Some(_)) => {
                anyhow::bail!(
                    "give the RabbitMQ URL once: --rabbitmq-url (WSBRIDGE_RABBITMQ_URL) or --rabbitmq-url-file"
                )
            }
            (Some(url), None) => url.trim().to_string(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read the RabbitMQ URL from {}: {e}", path.display()))?
                .trim()
                .to_string(),
            (None, None) => return Ok(None),
        };
        Ok(Some(wsbridge_broker::BrokerUrl::parse(&text)?))
    }
}

/// The memory a data plane role may use.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryArgs {
    /// Memory this process may use, in bytes or with a Kubernetes binary
    /// suffix (`512Mi`, `2Gi`). Queued messages (every subscriber queue,
    /// the dead-letter and send queues) may hold half of it, each message
    /// counted once. Default: the cgroup's memory limit (the pod's), else 2Gi.
    #[arg(long, value_name = "BYTES", env = "WSBRIDGE_MEMORY_LIMIT", value_parser = parse_bytes)]
    pub memory_limit: Option<u64>,
}

/// Bytes, plain or with a Kubernetes binary suffix (`Ki`, `Mi`, `Gi`,
/// `Ti`): the spelling of the pod's memory limit, which is what this flag
/// stands in for. Ten lines; a byte-size crate would accept other spellings
/// (`MB`, `MiB`) that mean something else to a Kubernetes reader.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let (digits, shift) = match text.len().checked_sub(2).map(|i| text.split_at(i)) {
        Some((n, "Ki")) => (n, 10),
        Some((n, "Mi")) => (n, 20),
        Some((n, "Gi")) => (n, 30),
        Some((n, "Ti")) => (n, 40),
        _ => (text, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size in bytes (e.g. 268435456, 256Mi, 2Gi)"))?;
    n.checked_mul(1 << shift)
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("{text:?} is out of range"))
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(arg: LogFormatArg) -> Self {
        match arg {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

/// `wsbridge controller` flags.
#[derive(clap::Args, Clone, Debug)]
pub struct ControllerArgs {
    /// Image of the bridge worker Deployments.
    #[arg(long, env = "WSBRIDGE_WORKER_IMAGE", default_value = wsbridge_controller::DEFAULT_WORKER_IMAGE)]
    pub worker_image: String,
    /// Base URL of the publish gateway; Channel addresses are
    /// `{gateway-url}/channels/NAMESPACE/NAME`.
    #[arg(
        long,
        env = "WSBRIDGE_GATEWAY_URL",
        default_value = "http://wsbridge-gateway.wsbridge-system.svc"
    )]
    pub gateway_url: String,
    /// Cluster DNS domain used in resolved Service addresses.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "WSBRIDGE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Elect one active replica with a Lease (`--leader-election=false` to
    /// reconcile unconditionally).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, default_value = "wsbridge-controller")]
    pub lease_name: String,
    /// Seconds a Lease is valid without renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Seconds before expiry when the holder renews.
    #[arg(long, default_value_t = 5)]
    pub lease_grace_seconds: u64,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WSBRIDGE_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Reconciles running at once, per kind.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
    /// Outbound destination policy (subscribers, dead-letter sinks,
    /// endpoints); passed on to every worker.
    #[command(flatten)]
    pub destinations: DestinationArgs,
    /// Destinations that would loop through wsbridge itself.
    #[command(flatten)]
    pub loops: SelfLoopArgs,
    /// Who may reach the workers' port (a NetworkPolicy with each worker).
    #[command(flatten)]
    pub worker_ingress: WorkerIngressArgs,
    /// Resources and scheduling of every worker pod, as the JSON of a
    /// Bridge's `spec.worker` (`{"resources": {"limits": {"memory": "512Mi"}}}`);
    /// a Bridge's own fields win. Unset resources: 50m/32Mi requests, 1/256Mi limits.
    #[arg(long, value_name = "JSON", env = "WSBRIDGE_WORKER_POD_DEFAULTS", value_parser = parse_worker_pod)]
    pub worker_pod_defaults: Option<Box<wsbridge_api::WorkerPodSpec>>,
    /// The installation key of the workers' send path (boxed: it would
    /// make every subcommand as large).
    #[command(flatten)]
    pub send_key: Box<SendKeyArgs>,
    /// The broker of `backend: rabbitmq` Channels: the controller declares
    /// and deletes their exchanges and queues, and hands the URL to their
    /// workers.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Secret, in the controller's namespace, where the controller keeps a
    /// copy of every usable signing secret (one key per signed
    /// Subscription) for the gateway and the dispatcher, which mount it.
    #[arg(
        long,
        env = "WSBRIDGE_DELIVERY_KEYS_SECRET",
        default_value = "wsbridge-delivery-keys"
    )]
    pub delivery_keys_secret: String,
}

/// Where the controller keeps the installation key of the workers' send
/// path (docs/security.md, "Worker send path").
#[derive(clap::Args, Clone, Debug)]
pub struct SendKeyArgs {
    /// Secret holding the installation key that each Bridge's send
    /// credential is derived from (key `key`); created with a random key
    /// when absent. The gateway mounts the same Secret.
    #[arg(long, env = "WSBRIDGE_SEND_KEY_SECRET", default_value = "wsbridge-send-key")]
    pub send_key_secret: String,
    /// Namespace of the send key Secret: the controller's own (like the
    /// Lease's).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub send_key_namespace: String,
}

/// Boxed: the spec (affinity above all) would make every subcommand as large.
fn parse_worker_pod(json: &str) -> Result<Box<wsbridge_api::WorkerPodSpec>, String> {
    wsbridge_api::WorkerPodSpec::from_json(json).map(Box::new)
}

/// Who may reach a worker's port: the flags of the NetworkPolicy the
/// controller writes with each worker.
#[derive(clap::Args, Clone, Debug)]
pub struct WorkerIngressArgs {
    /// Write a NetworkPolicy with each worker that admits only the gateway
    /// (and the metrics scraper, when given) to its port.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub worker_network_policy: bool,
    /// Namespace of the gateway's pods.
    #[arg(long, env = "POD_NAMESPACE", default_value = "wsbridge-system")]
    pub gateway_namespace: String,
    /// Labels of the gateway's pods, as KEY=VALUE (comma-separated or repeated).
    #[arg(
        long,
        value_name = "KEY=VALUE",
        value_delimiter = ',',
        default_value = "app.kubernetes.io/name=wsbridge,app.kubernetes.io/component=gateway"
    )]
    pub gateway_pod_labels: Vec<String>,
    /// Namespace of a metrics scraper that scrapes workers directly (none by default).
    #[arg(long)]
    pub metrics_scraper_namespace: Option<String>,
    /// Labels of the metrics scraper's pods, as KEY=VALUE (default: every
    /// pod of `--metrics-scraper-namespace`).
    #[arg(
        long,
        value_name = "KEY=VALUE",
        value_delimiter = ',',
        requires = "metrics_scraper_namespace"
    )]
    pub metrics_scraper_pod_labels: Vec<String>,
}

impl WorkerIngressArgs {
    /// `None` when no NetworkPolicies are to be written.
    pub fn ingress(&self) -> anyhow::Result<Option<wsbridge_controller::worker_objects::WorkerIngress>> {
        use wsbridge_controller::worker_objects::{PodsIn, WorkerIngress};
        if !self.worker_network_policy {
            return Ok(None);
        }
        let labels = |flag: &str, pairs: &[String]| {
            pairs
                .iter()
                .map(|p| match p.split_once('=') {
                    Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
                    _ => Err(anyhow::anyhow!("--{flag}: {p:?} is not KEY=VALUE")),
                })
                .collect::<anyhow::Result<std::collections::BTreeMap<_, _>>>()
        };
        Ok(Some(WorkerIngress {
            gateway: PodsIn {
                namespace: self.gateway_namespace.clone(),
                labels: labels("gateway-pod-labels", &self.gateway_pod_labels)?,
            },
            scraper: match &self.metrics_scraper_namespace {
                Some(ns) => Some(PodsIn {
                    namespace: ns.clone(),
                    labels: labels("metrics-scraper-pod-labels", &self.metrics_scraper_pod_labels)?,
                }),
                None => None,
            },
        }))
    }
}

impl ControllerArgs {
    /// The controller's options these flags describe.
    pub fn options(self) -> anyhow::Result<wsbridge_controller::Options> {
        Ok(wsbridge_controller::Options {
            broker: self.broker.url()?,
            worker_ingress: self.worker_ingress.ingress()?,
            worker_pod_defaults: self.worker_pod_defaults.map(|spec| *spec).unwrap_or_default(),
            destinations: Arc::new(self.loops.policy(&self.destinations, &self.cluster_domain)?),
            delivery_keys: wsbridge_controller::send_key::SendKeySecret {
                namespace: self.send_key.send_key_namespace.clone(),
                name: self.delivery_keys_secret,
            },
            send_key: wsbridge_controller::send_key::SendKeySecret {
                namespace: self.send_key.send_key_namespace,
                name: self.send_key.send_key_secret,
            },
            worker_image: self.worker_image,
            gateway_url: self.gateway_url,
            cluster_domain: self.cluster_domain,
            listen: self.listen,
            leader_election: self.leader_election,
            lease_namespace: self.lease_namespace,
            lease_name: self.lease_name,
            lease_duration_seconds: self.lease_duration_seconds,
            lease_grace_seconds: self.lease_grace_seconds,
            namespace: self.namespace,
            concurrency: self.concurrency,
        })
    }
}

/// The command-line flags of the policy, shared by every role.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct DestinationArgs {
    /// Refuse requests to this network (CIDR or address) or host name
    /// (`.suffix` for a whole domain). Repeatable; checked before
    /// `--destination-allow`. Link-local and cloud metadata addresses are
    /// denied without it.
    #[arg(long = "destination-deny", value_name = "CIDR|HOST", env = ENV_DENY, value_delimiter = ',')]
    pub deny: Vec<String>,
    /// Allow requests only to these networks or host names (and lift the
    /// built-in link-local/metadata denial for them). Repeatable.
    #[arg(long = "destination-allow", value_name = "CIDR|HOST", env = ENV_ALLOW, value_delimiter = ',')]
    pub allow: Vec<String>,
    /// Allow link-local destinations (169.254.0.0/16, fe80::/10); the cloud
    /// metadata addresses stay denied.
    #[arg(long, env = ENV_ALLOW_LINK_LOCAL, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub allow_link_local: bool,
}

/// Destinations that would send wsbridge's traffic back through itself: a
/// subscriber at `http://127.0.0.1:8080/v1/send` makes a worker echo its
/// endpoint's messages back out, one at the gateway's publish path loops on
/// anonymous channels. Denied by default in the cluster roles (controller,
/// gateway, worker); standalone has no such flags and allows loopback.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct SelfLoopArgs {
    /// Allow loopback addresses (and `localhost`) and this pod's own address
    /// as destinations: for development and tests, where every process runs
    /// on one host.
    #[arg(long, env = "WSBRIDGE_ALLOW_LOOPBACK", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub allow_loopback: bool,
    /// This pod's address (the downward API's `status.podIP`), denied as a
    /// destination.
    #[arg(long = "own-address", value_name = "IP", env = "POD_IP")]
    pub own_address: Option<std::net::IpAddr>,
    /// wsbridge's own Services, as NAME.NAMESPACE (the gateway's), denied as
    /// destinations by their cluster DNS names. Repeatable.
    #[arg(
        long = "own-service",
        value_name = "NAME.NAMESPACE",
        env = "WSBRIDGE_OWN_SERVICES",
        value_delimiter = ','
    )]
    pub own_services: Vec<String>,
}

/// Loopback in every form a connection reaches this host by (`0.0.0.0` and
/// `::` connect to the local host too).
const LOOPBACK: [&str; 6] = [
    "127.0.0.0/8",
    "::1/128",
    "0.0.0.0/8",
    "::/128",
    "localhost",
    ".localhost",
];

/// Cluster DNS domain of the gateway's and the worker's own Service names.
const CLUSTER_DOMAIN: &str = "cluster.local";

impl SelfLoopArgs {
    /// The deny rules these flags add, before the operator's own.
    pub fn denials(&self, cluster_domain: &str) -> Vec<String> {
        let mut out = Vec::new();
        if !self.allow_loopback {
            out.extend(LOOPBACK.iter().map(|r| r.to_string()));
            out.extend(self.own_address.map(|ip| ip.to_string()));
        }
        for service in &self.own_services {
            let service = service.trim_end_matches('.');
            out.push(service.to_owned());
            out.push(format!("{service}.svc"));
            out.push(format!("{service}.svc.{}", cluster_domain.trim_matches('.')));
        }
        out
    }

    /// `destinations` with the self-loop denials in front of its deny list
    /// (a deny rule wins over every allow rule).
    pub fn policy(
        &self,
        destinations: &DestinationArgs,
        cluster_domain: &str,
    ) -> anyhow::Result<DestinationPolicy> {
        let mut deny = self.denials(cluster_domain);
        deny.extend(destinations.deny.iter().cloned());
        DestinationArgs {
            deny,
            ..destinations.clone()
        }
        .policy()
    }
}

impl DestinationArgs {
    /// The policy these flags describe.
    pub fn policy(&self) -> anyhow::Result<DestinationPolicy> {
        DestinationPolicy::from_rules(&self.deny, &self.allow, self.allow_link_local)
            .map_err(|e| anyhow::anyhow!("--destination-deny/--destination-allow: {e}"))
    }
}

/// Runs the command; `validate-config` is answered by [`Cli::serve_validator`]
/// before any runtime or logging starts.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // One TLS provider for the process (kube's client and the endpoint client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    ops::init_logging(cli.log_format.into());
    match cli.command {
        Command::Crd { reference: true, .. } => print!("{}", wsbridge_api::reference::markdown()),
        Command::Crd { out_dir: None, .. } => print!("{}", wsbridge_api::crds_yaml()),
        Command::Crd {
            out_dir: Some(dir), ..
        } => wsbridge_api::write_crds(&dir)?,
        Command::Worker {
            bridge,
            listen,
            pod_ip,
            destinations,
            loops,
            memory,
            broker,
        } => {
            let advertise = pod_ip.map(|ip| format!("http://{}", SocketAddr::new(ip, listen.port())));
            let options = wsbridge_worker::WorkerOptions {
                bridge,
                listen,
                advertise,
                drain: std::time::Duration::from_secs(10),
                destinations: std::sync::Arc::new(loops.policy(&destinations, CLUSTER_DOMAIN)?),
                memory_limit: memory.memory_limit,
                broker: broker.url()?,
            };
            wsbridge_worker::run(options, kube::Client::try_default().await?).await?;
        }
        Command::Gateway {
            listen,
            namespace,
            auth_cache_ttl,
            token_audiences,
            destinations,
            loops,
            memory,
            send_key_file,
            broker,
            delivery_keys_dir,
        } => {
            let options = wsbridge_gateway::GatewayOptions {
                listen,
                namespace,
                access: wsbridge_gateway::access::AccessOptions {
                    ttl: auth_cache_ttl,
                    audiences: token_audiences,
                    ..Default::default()
                },
                send_timeout: std::time::Duration::from_secs(5),
                drain: std::time::Duration::from_secs(10),
                destinations: std::sync::Arc::new(loops.policy(&destinations, CLUSTER_DOMAIN)?),
                memory_limit: memory.memory_limit,
                send_key_file,
                broker: broker.url()?,
                delivery_keys_dir,
            };
            wsbridge_gateway::run(options, kube::Client::try_default().await?).await?;
        }
        Command::Dispatcher {
            listen,
            namespace,
            drain_timeout,
            destinations,
            loops,
            memory,
            broker,
            delivery_keys_dir,
        } => {
            let Some(broker) = broker.url()? else {
                anyhow::bail!(
                    "wsbridge dispatcher needs the RabbitMQ broker whose backlogs it consumes: \
                     give --rabbitmq-url-file PATH or WSBRIDGE_RABBITMQ_URL (or --rabbitmq-url)"
                );
            };
            let options = wsbridge_dispatcher::DispatcherOptions {
                listen,
                namespace,
                broker,
                destinations: Arc::new(loops.policy(&destinations, CLUSTER_DOMAIN)?),
                memory_limit: memory.memory_limit,
                drain: drain_timeout,
                delivery_keys_dir,
            };
            wsbridge_dispatcher::run(options, kube::Client::try_default().await?).await?;
        }
        Command::Standalone {
            files,
            listen,
            check,
            drain_timeout,
            destinations,
            client_buffer_bytes,
            max_clients_per_channel,
            max_clients,
            client_ping_interval,
            client_pong_timeout,
            memory,
            broker,
        } => {
            let broker = broker.url()?;
            if check {
                return Ok(match wsbridge_standalone::check(&files, broker.is_some()) {
                    Ok(plan) => {
                        println!("configuration is valid: {}", plan.summary());
                        ExitCode::SUCCESS
                    }
                    Err(errors) => {
                        eprintln!("invalid configuration:\n{errors}");
                        ExitCode::FAILURE
                    }
                });
            }
            let mut options = wsbridge_standalone::Options::new(files);
            options.listen = listen;
            options.drain_timeout = drain_timeout;
            options.memory_limit = memory.memory_limit;
            options.broker = broker;
            options.client_limits = ClientLimits {
                buffer_bytes: client_buffer_bytes,
                per_channel: max_clients_per_channel,
                total: max_clients,
            };
            anyhow::ensure!(
                !client_ping_interval.is_zero() && !client_pong_timeout.is_zero(),
                "--client-ping-interval and --client-pong-timeout must be above zero"
            );
            options.client_keepalive = wsbridge_standalone::publish::ClientKeepalive {
                interval: client_ping_interval,
                timeout: client_pong_timeout,
            };
            options.destinations = std::sync::Arc::new(destinations.policy()?);
            options.validation = wsbridge_standalone::Validation::isolated_or_in_process();
            if let Err(e) = wsbridge_standalone::run(options).await {
                eprintln!("error: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::ValidateConfig => {} // answered before logging starts
        Command::DemoFeed { listen, interval } => wsbridge_standalone::demo::feed(listen, interval).await?,
        Command::DemoSubscriber { listen, expect_token } => {
            wsbridge_standalone::demo::subscriber(listen, expect_token).await?
        }
        Command::Controller(args) => wsbridge_controller::run(args.options()?).await?,
        Command::Tail { channel, server } => {
            let token = crate::channel_client::token(server.token.as_deref())?;
            return crate::channel_client::tail(&server.server, &channel, token.as_deref()).await;
        }
        Command::Publish {
            channel,
            message,
            binary,
            server,
        } => {
            let token = crate::channel_client::token(server.token.as_deref())?;
            return crate::channel_client::publish(
                &server.server,
                &channel,
                message.as_deref(),
                token.as_deref(),
                binary,
            )
            .await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(deny: &[&str], allow: &[&str]) -> DestinationPolicy {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        DestinationPolicy::from_rules(&v(deny), &v(allow), false).unwrap()
    }

    #[test]
    fn env_round_trips_through_the_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            d: DestinationArgs,
        }
        let p = policy(&["127.0.0.2/32", ".corp.example"], &["10.0.0.0/8"]);
        let env = p.to_env();
        let args: Vec<String> = std::iter::once("x".to_string())
            .chain(env.iter().flat_map(|(k, v)| {
                let flag = match *k {
                    ENV_DENY => "--destination-deny",
                    ENV_ALLOW => "--destination-allow",
                    _ => "--allow-link-local",
                };
                [flag.to_string(), v.clone()]
            }))
            .collect();
        let back = Cli::parse_from(args).d.policy().unwrap();
        assert_eq!(back, p);
        assert_eq!(
            Cli::parse_from(["x"]).d.policy().unwrap(),
            DestinationPolicy::default()
        );
    }
    #[test]
    fn cluster_roles_deny_loopback_their_own_address_and_services_unless_loopback_is_allowed() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let loops = SelfLoopArgs {
            allow_loopback: false,
            own_address: Some(ip("10.1.2.3")),
            own_services: vec!["wsbridge-gateway.wsbridge-system".into()],
        };
        // An operator's allow list does not lift them: deny rules come first.
        let operator = DestinationArgs {
            allow: vec!["0.0.0.0/0".into(), "::/0".into()],
            ..Default::default()
        };
        let p = loops.policy(&operator, "cluster.local").unwrap();
        for denied in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "0.0.0.0",
            "::",
            "10.1.2.3",
            "::ffff:127.0.0.1",
        ] {
            assert!(p.check_ip(ip(denied)).is_err(), "{denied}");
        }
        assert!(p.check_ip(ip("10.1.2.4")).is_ok());
        for denied in [
            "localhost",
            "api.localhost",
            "wsbridge-gateway.wsbridge-system",
            "wsbridge-gateway.wsbridge-system.svc",
            "wsbridge-gateway.wsbridge-system.svc.cluster.local",
        ] {
            assert!(p.check_host(denied).is_err(), "{denied}");
        }
        assert!(p.check_host("pricing.apps.svc.cluster.local").is_ok());

        let local = SelfLoopArgs {
            allow_loopback: true,
            ..loops
        };
        let p = local
            .policy(&DestinationArgs::default(), "cluster.local")
            .unwrap();
        assert!(p.check_ip(ip("127.0.0.1")).is_ok() && p.check_ip(ip("10.1.2.3")).is_ok());
        assert!(p.check_host("wsbridge-gateway.wsbridge-system.svc").is_err());
    }

    #[test]
    fn memory_limits_are_bytes_or_kubernetes_binary_quantities() {
        assert_eq!(parse_bytes("268435456"), Ok(256 << 20));
        assert_eq!(parse_bytes("256Mi"), Ok(256 << 20));
        assert_eq!(parse_bytes("2Gi"), Ok(2 << 30));
        assert_eq!(parse_bytes("64Ki"), Ok(64 << 10));
        for bad in ["", "Mi", "256MB", "-1Mi", "0", "1.5Gi", "99999999999Ti"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }
}
