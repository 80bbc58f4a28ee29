#![forbid(unsafe_code)]
//! The `wsbridge` binary: parses the command line and hands over to the library.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use wsbridge::dataplane::routing::ObjectKey;
use wsbridge::ops::{self, LogFormat};

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML.
    Crd {
        /// Write one file per CRD into this folder instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<std::path::PathBuf>,
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
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ops::init_logging(cli.log_format);
    match cli.command {
        Command::Crd { out_dir: None } => print!("{}", wsbridge::api::crds_yaml()),
        Command::Crd { out_dir: Some(dir) } => wsbridge::api::write_crds(&dir)?,
        Command::Worker {
            bridge,
            listen,
            pod_ip,
        } => {
            let advertise = pod_ip.map(|ip| format!("http://{}", SocketAddr::new(ip, listen.port())));
            let options = wsbridge::worker::WorkerOptions {
                bridge,
                listen,
                advertise,
                drain: std::time::Duration::from_secs(10),
            };
            wsbridge::worker::run(options, kube::Client::try_default().await?).await?;
        }
    }
    Ok(())
}
