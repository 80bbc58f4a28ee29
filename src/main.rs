#![forbid(unsafe_code)]
//! The `wsbridge` binary: parses the command line and hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use wsbridge::dataplane::destination::DestinationArgs;
use wsbridge::dataplane::routing::ObjectKey;
use wsbridge::ops::{self, LogFormat};

/// mimalloc instead of the C library's allocator: a delivery allocates and
/// frees a handful of small blocks, and musl's allocator (the image is a
/// static musl binary) and glibc's both spend a fifth of the data plane's
/// CPU on them (see `bench/results/latest.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "wsbridge",
    version,
    about = "Bridges external WebSocket endpoints to in-cluster HTTP services"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "WSBRIDGE_LOG_FORMAT")]
    log_format: LogFormat,
    /// Event-loop threads; 0 means one per CPU. Default: 1 for `worker` and
    /// `standalone`, one per CPU for `gateway` and `controller`.
    #[arg(long, global = true, value_name = "N", env = "WSBRIDGE_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// One event loop for the data plane: a bridge's messages arrive in
    /// order on one connection and fan out as I/O, which one thread drives
    /// at tens of thousands of deliveries a second, with less CPU per
    /// delivery than threads handing work to each other (see
    /// `bench/results/latest.md`). Roles serving many clients at once get a
    /// thread per CPU.
    fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
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
enum Command {
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
        #[arg(long, env = wsbridge::worker::env::LISTEN, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// The pod's IP, advertised on the Bridge's status as the publish address.
        #[arg(long, env = wsbridge::worker::env::POD_IP)]
        pod_ip: Option<std::net::IpAddr>,
        /// Outbound destination policy (the controller sets it through the
        /// environment).
        #[command(flatten)]
        destinations: DestinationArgs,
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
        /// Outbound destination policy (subscribers, dead-letter sinks,
        /// endpoints).
        #[command(flatten)]
        destinations: DestinationArgs,
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
    Controller(wsbridge::controller::Args),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    if let Command::ValidateConfig = cli.command {
        // No logging: the parent reports what matters, once.
        wsbridge::standalone::validator::serve_stdio()?;
        return Ok(ExitCode::SUCCESS);
    }
    cli.runtime()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // One TLS provider for the process (kube's client and the endpoint client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    ops::init_logging(cli.log_format);
    match cli.command {
        Command::Crd { reference: true, .. } => print!("{}", wsbridge::api::reference::markdown()),
        Command::Crd { out_dir: None, .. } => print!("{}", wsbridge::api::crds_yaml()),
        Command::Crd {
            out_dir: Some(dir), ..
        } => wsbridge::api::write_crds(&dir)?,
        Command::Worker {
            bridge,
            listen,
            pod_ip,
            destinations,
        } => {
            let advertise = pod_ip.map(|ip| format!("http://{}", SocketAddr::new(ip, listen.port())));
            let options = wsbridge::worker::WorkerOptions {
                bridge,
                listen,
                advertise,
                drain: std::time::Duration::from_secs(10),
                destinations: std::sync::Arc::new(destinations.policy()?),
            };
            wsbridge::worker::run(options, kube::Client::try_default().await?).await?;
        }
        Command::Gateway {
            listen,
            namespace,
            auth_cache_ttl,
            token_audiences,
            destinations,
        } => {
            let options = wsbridge::gateway::GatewayOptions {
                listen,
                namespace,
                access: wsbridge::gateway::access::AccessOptions {
                    ttl: auth_cache_ttl,
                    audiences: token_audiences,
                    ..Default::default()
                },
                send_timeout: std::time::Duration::from_secs(5),
                drain: std::time::Duration::from_secs(10),
                destinations: std::sync::Arc::new(destinations.policy()?),
            };
            wsbridge::gateway::run(options, kube::Client::try_default().await?).await?;
        }
        Command::Standalone {
            files,
            listen,
            check,
            drain_timeout,
            destinations,
        } => {
            if check {
                return Ok(match wsbridge::standalone::check(&files) {
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
            let mut options = wsbridge::standalone::Options::new(files);
            options.listen = listen;
            options.drain_timeout = drain_timeout;
            options.destinations = std::sync::Arc::new(destinations.policy()?);
            options.validation = wsbridge::standalone::Validation::isolated_or_in_process();
            if let Err(e) = wsbridge::standalone::run(options).await {
                eprintln!("error: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::ValidateConfig => {} // answered before logging starts
        Command::DemoFeed { listen, interval } => wsbridge::standalone::demo::feed(listen, interval).await?,
        Command::DemoSubscriber { listen, expect_token } => {
            wsbridge::standalone::demo::subscriber(listen, expect_token).await?
        }
        Command::Controller(args) => wsbridge::controller::run(args).await?,
    }
    Ok(ExitCode::SUCCESS)
}
