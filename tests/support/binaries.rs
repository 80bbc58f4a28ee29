//! Locates the control-plane binaries and builds them on first use.
//!
//! `tests/controlplane/build.sh` is cheap when its stamp matches, so every
//! test binary runs it once per process, under an exclusive file lock so that
//! test binaries started in parallel never build twice.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

/// Names of the binaries `build.sh` produces.
pub const BINARIES: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
];

/// Root of the repository (where `Cargo.toml` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Cargo's target directory, resolved the same way `build.sh` resolves it.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        }
        _ => repo_root().join("target"),
    }
}

/// `<target>/controlplane`: binaries, build log, lock file and run logs.
pub fn controlplane_dir() -> PathBuf {
    target_dir().join("controlplane")
}

/// Directory holding the built binaries (`WSBRIDGE_CONTROLPLANE_BIN` overrides).
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("WSBRIDGE_CONTROLPLANE_BIN") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => controlplane_dir().join("bin"),
    }
}

/// Makes sure the binaries exist (building them if needed) and returns their
/// directory. The first call in a process runs `build.sh`; later calls reuse
/// its outcome.
pub fn ensure_binaries() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build() -> Result<PathBuf> {
    let bin = bin_dir();
    let cp_dir = controlplane_dir();
    fs::create_dir_all(&cp_dir).with_context(|| format!("creating {}", cp_dir.display()))?;
    let lock_path = cp_dir.join("build.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;

    let script = repo_root().join("tests/controlplane/build.sh");
    let log_path = cp_dir.join("build.log");
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let status = Command::new("bash")
        .arg(&script)
        .env("WSBRIDGE_CONTROLPLANE_BIN", &bin)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    // The lock is released when `lock` is dropped, after the build finished.
    drop(lock);
    if !status.success() {
        bail!(
            "{} failed ({status}); log {}:\n{}",
            script.display(),
            log_path.display(),
            tail(&log_path, 40)
        );
    }
    for name in BINARIES {
        if !bin.join(name).is_file() {
            bail!(
                "{} did not produce {}",
                script.display(),
                bin.join(name).display()
            );
        }
    }
    Ok(bin)
}

/// The last `lines` lines of a text file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
