#![forbid(unsafe_code)]
//! The `wsbridge` binary: parses the command line and hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use wsbridge::ops::LogFormat;

#[derive(Parser)]
#[command(
    name = "wsbridge",
    version,
    about = "Bridges external WebSocket endpoints to in-cluster HTTP services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML.
    Crd {
        /// Write one file per CRD into this folder instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
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
        /// Log format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
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
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Crd { out_dir: None } => print!("{}", wsbridge::api::crds_yaml()),
        Command::Crd { out_dir: Some(dir) } => wsbridge::api::write_crds(&dir)?,
        Command::Standalone {
            files,
            listen,
            check,
            drain_timeout,
            log_format,
        } => {
            wsbridge::ops::init_logging(log_format);
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
            if let Err(e) = runtime()?.block_on(wsbridge::standalone::run(options)) {
                eprintln!("error: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::DemoFeed { listen, interval } => {
            runtime()?.block_on(wsbridge::standalone::demo::feed(listen, interval))?
        }
        Command::DemoSubscriber {
            listen,
            expect_token,
        } => runtime()?.block_on(wsbridge::standalone::demo::subscriber(listen, expect_token))?,
    }
    Ok(ExitCode::SUCCESS)
}
