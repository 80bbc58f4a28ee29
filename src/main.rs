#![forbid(unsafe_code)]
//! The `wsbridge` binary: parses the command line and hands over to the library.

use clap::{Parser, Subcommand};

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
        out_dir: Option<std::path::PathBuf>,
    },
    /// Run the controller against the cluster of the current kubeconfig or
    /// in-cluster config.
    Controller(wsbridge::controller::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd { out_dir: None } => print!("{}", wsbridge::api::crds_yaml()),
        Command::Crd { out_dir: Some(dir) } => wsbridge::api::write_crds(&dir)?,
        Command::Controller(args) => {
            tokio::runtime::Runtime::new()?.block_on(wsbridge::controller::run(args))?
        }
    }
    Ok(())
}
