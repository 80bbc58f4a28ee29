#![forbid(unsafe_code)]
//! The `wsbridge` binary: parses the command line and hands over to the
//! role it names (see [`wsbridge::cli`]).

use std::process::ExitCode;

use clap::Parser;
use wsbridge::cli::{self, Cli, Command};

/// mimalloc instead of the C library's allocator: a delivery allocates and
/// frees a handful of small blocks, and musl's allocator (the image is a
/// static musl binary) and glibc's both spend a fifth of the data plane's
/// CPU on them (see `bench/results/latest.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    if let Command::ValidateConfig = cli.command {
        // No logging: the parent reports what matters, once.
        wsbridge_standalone::validator::serve_stdio()?;
        return Ok(ExitCode::SUCCESS);
    }
    cli.runtime()?.block_on(cli::run(cli))
}
