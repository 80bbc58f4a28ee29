//! Makes sure no control-plane process outlives the test binary.
//!
//! The shared control plane lives in a `static`, and statics are never
//! dropped, so a drop guard alone cannot stop it. Instead one small `bash`
//! "reaper" per test process reads process-group ids and directories from a
//! pipe whose write end only this process holds. When the test process ends
//! — normally, by panic, or killed by a signal — the pipe closes, the reaper
//! reads end-of-file, sends SIGKILL to every registered process group and
//! removes the registered directories. The reaper runs in its own
//! process group and ignores INT/TERM/HUP, so a Ctrl-C that hits the test
//! process's group does not take the reaper down before it has cleaned up.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, anyhow};

const SCRIPT: &str = r#"
trap '' INT TERM HUP PIPE
groups=()
dirs=()
while read -r kind value; do
  case "$kind" in
    pg) groups+=("$value") ;;
    unpg) kept=(); for g in "${groups[@]}"; do [ "$g" = "$value" ] || kept+=("$g"); done; groups=("${kept[@]}") ;;
    dir) dirs+=("$value") ;;
  esac
done
# Nothing here needs a graceful shutdown: etcd's data is thrown away.
for g in "${groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null; done
for _ in $(seq 50); do
  alive=0
  for g in "${groups[@]}"; do kill -0 -- "-$g" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && break
  sleep 0.1
done
for d in "${dirs[@]}"; do rm -rf -- "$d"; done
"#;

fn reaper() -> Result<&'static Mutex<ChildStdin>> {
    static REAPER: OnceLock<Result<Mutex<ChildStdin>, String>> = OnceLock::new();
    REAPER
        .get_or_init(|| {
            use std::os::unix::process::CommandExt;
            let mut child = Command::new("bash")
                .arg("-c")
                .arg(SCRIPT)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| format!("starting the reaper: {e}"))?;
            let stdin = child.stdin.take().ok_or("reaper has no stdin")?;
            // Dropping `child` neither kills nor waits: the reaper outlives us.
            Ok(Mutex::new(stdin))
        })
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn send(line: String) -> Result<()> {
    let mut stdin = reaper()?.lock().unwrap_or_else(|e| e.into_inner());
    stdin
        .write_all(line.as_bytes())
        .context("writing to the reaper")?;
    stdin.flush().context("writing to the reaper")
}

/// Kills process group `pgid` (a child spawned with `process_group(0)`) when
/// this process exits.
pub fn watch_process_group(pgid: u32) -> Result<()> {
    send(format!("pg {pgid}\n"))
}

/// Forgets a process group that was already stopped (so a later process that
/// reuses the id is left alone).
pub fn forget_process_group(pgid: u32) -> Result<()> {
    send(format!("unpg {pgid}\n"))
}

/// Removes `dir` when this process exits (after its processes are gone).
pub fn remove_dir_at_exit(dir: &Path) -> Result<()> {
    let dir = dir.to_str().context("temp dir is not UTF-8")?;
    if dir.contains('\n') {
        anyhow::bail!("temp dir contains a newline");
    }
    send(format!("dir {dir}\n"))
}

/// Starts `command` in `dir` in a process group of its own, its output in
/// `log`, and has the group killed when this process exits.
pub fn spawn_in_group(command: &mut Command, dir: &Path, log: File) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    let mut child = command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    if let Err(e) = watch_process_group(child.id()) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(child)
}
