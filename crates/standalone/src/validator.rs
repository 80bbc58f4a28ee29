//! Where the configuration is validated. Checking objects against the CRDs'
//! schema and CEL rules compiles a JSON Schema validator and a CEL
//! interpreter: megabytes of code and heap that a long-running data plane
//! would otherwise keep resident for a job it does once per file change.
//! [`Validation::Isolated`] runs that check in a short-lived child process
//! (`wsbridge validate-config`), fed the exact texts the parent then parses;
//! it also keeps a validator crash or runaway on hostile input away from
//! the running bridges.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::warn;

use super::load::{self, ConfigError, ConfigErrors, Plan, SchemaCheck, Source};

/// The hidden subcommand the child runs.
pub const SUBCOMMAND: &str = "validate-config";

/// How a reload validates.
#[derive(Debug, Clone, Default)]
pub enum Validation {
    /// In this process (library use, tests).
    #[default]
    InProcess,
    /// In a child process running `program validate-config`.
    Isolated {
        /// The wsbridge binary (normally the running one).
        program: PathBuf,
        /// Longest a validation may take; the child is then killed.
        timeout: Duration,
    },
}

impl Validation {
    /// Validation in a child running the current executable, or in process
    /// when it cannot be found.
    pub fn isolated_or_in_process() -> Self {
        match std::env::current_exe() {
            Ok(program) => Self::Isolated {
                program,
                timeout: Duration::from_secs(60),
            },
            Err(e) => {
                warn!(error = %e, "cannot find the running executable; validating in process");
                Self::InProcess
            }
        }
    }
}

/// What the child prints.
#[derive(Debug, Serialize, Deserialize)]
struct Verdict {
    errors: Vec<ConfigError>,
}

/// Reads the files under `paths` and loads them, validating as `validation` says.
pub async fn load(paths: &[PathBuf], validation: &Validation) -> Result<Plan, ConfigErrors> {
    let owned = paths.to_vec();
    let read = tokio::task::spawn_blocking(move || load::read_sources(&owned)).await;
    let sources = read.map_err(|e| whole(paths, format!("reading the configuration failed: {e}")))??;
    let check = match validation {
        Validation::InProcess => SchemaCheck::Run,
        Validation::Isolated { program, timeout } => {
            match in_child(program, *timeout, &sources.texts).await {
                Ok(errors) if errors.is_empty() => SchemaCheck::Passed,
                Ok(errors) => return sources.finish(Err(ConfigErrors(errors))),
                Err(ChildError::Spawn(e)) => {
                    warn!(program = %program.display(), error = %e, "cannot start the validator process; validating in process");
                    SchemaCheck::Run
                }
                Err(ChildError::Failed(why)) => {
                    return sources.finish(Err(whole(paths, format!("validation failed: {why}"))));
                }
            }
        }
    };
    tokio::task::spawn_blocking(move || sources.finish(load::load_sources(&sources.texts, check)))
        .await
        .map_err(|e| whole(paths, format!("loading the configuration failed: {e}")))?
}

fn whole(paths: &[PathBuf], message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError::about_file(
        load::describe_paths(paths),
        message,
    )])
}

enum ChildError {
    /// The program could not be started at all.
    Spawn(std::io::Error),
    /// It started but gave no verdict.
    Failed(String),
}

async fn in_child(
    program: &PathBuf,
    timeout: Duration,
    sources: &[Source],
) -> Result<Vec<ConfigError>, ChildError> {
    let input = serde_json::to_vec(sources).map_err(|e| ChildError::Failed(e.to_string()))?;
    let mut child = tokio::process::Command::new(program)
        .arg(SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // Not shown: a crash message could quote the input, Secrets included.
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(ChildError::Spawn)?;
    let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(ChildError::Failed("validator process has no pipes".into()));
    };
    let exchange = async {
        // Feed and read concurrently so that neither side can block the other.
        let feed = async {
            let result = stdin.write_all(&input).await;
            drop(stdin);
            result
        };
        let mut out = Vec::new();
        let (fed, read_out, status) = tokio::join!(feed, stdout.read_to_end(&mut out), child.wait());
        // A failed feed shows as a missing verdict below.
        let _ = fed;
        read_out.and(status).map(|status| (status, out))
    };
    let (status, out) = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => {
            return Err(ChildError::Failed(format!(
                "the validator process did not finish within {timeout:?}"
            )));
        }
        Ok(Err(e)) => return Err(ChildError::Failed(format!("validator process: {e}"))),
        Ok(Ok(done)) => done,
    };
    match serde_json::from_slice::<Verdict>(&out) {
        Ok(verdict) if status.success() => Ok(verdict.errors),
        _ => Err(ChildError::Failed(format!(
            "the validator process ended with {status} and no verdict \
             (`wsbridge standalone --check` validates in process and shows why)"
        ))),
    }
}

/// The child's side: reads the sources as JSON on stdin, validates them
/// fully and prints the verdict as JSON on stdout. Exits non-zero only when
/// it could not give a verdict.
pub fn serve_stdio() -> std::io::Result<()> {
    use std::io::{Read as _, Write as _};
    let mut input = Vec::new();
    std::io::stdin().lock().read_to_end(&mut input)?;
    let sources: Vec<Source> = serde_json::from_slice(&input)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let errors = match load::load_sources(&sources, SchemaCheck::Run) {
        Ok(_) => Vec::new(),
        Err(ConfigErrors(errors)) => errors,
    };
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &Verdict { errors })?;
    out.flush()
}
