//! The control plane's child processes: each started in its own process
//! group with its log file and registered with the reaper, restarted with
//! the same arguments, checked for early exits, reported with their last log
//! lines on failure, and killed when the [`ControlPlane`] is dropped.

use std::fs::{self, File};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use super::controlplane::{ControlPlane, READY_TIMEOUT, StartError};
use super::{binaries, reaper};

impl ControlPlane {
    pub(super) fn spawn(&self, name: &'static str, args: &[String]) -> Result<()> {
        let log_path = self.log_dir.join(format!("{name}.log"));
        let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let child = reaper::spawn_in_group(Command::new(self.bin_dir.join(name)).args(args), &self.dir, log)?;
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, child));
        let mut all_args = self.args.lock().unwrap_or_else(|e| e.into_inner());
        all_args.retain(|(n, _)| *n != name);
        all_args.push((name, args.to_vec()));
        Ok(())
    }

    /// Stops the control-plane process `name` (e.g. `kube-apiserver`) with
    /// SIGTERM (SIGKILL after 5 s: the apiserver stops serving at once but
    /// its process may linger), keeps it down for `downtime`, starts it
    /// again with the same arguments (same port, certs and data) and, for the
    /// apiserver, waits for `/readyz`. Its log continues in the same file.
    pub async fn restart(&self, name: &'static str, downtime: Duration) -> Result<()> {
        let args = {
            let all_args = self.args.lock().unwrap_or_else(|e| e.into_inner());
            all_args
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, a)| a.clone())
                .with_context(|| format!("{name} was never started"))?
        };
        let child = {
            let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
            let at = children
                .iter()
                .position(|(n, _)| *n == name)
                .with_context(|| format!("{name} is not running"))?;
            children.remove(at).1
        };
        let mut child = child;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = reaper::forget_process_group(child.id());
        tokio::time::sleep(downtime).await;
        let log_path = self.log_dir.join(format!("{name}.log"));
        let log = fs::OpenOptions::new().append(true).create(true).open(&log_path)?;
        {
            let child =
                reaper::spawn_in_group(Command::new(self.bin_dir.join(name)).args(&args), &self.dir, log)
                    .with_context(|| format!("restarting {name}"))?;
            self.children
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((name, child));
        }
        if name == "kube-apiserver" {
            self.wait_ready(Instant::now() + READY_TIMEOUT)
                .await
                .map_err(StartError::into_inner)?;
        }
        Ok(())
    }

    /// Fails (retryably when it looks like a port clash) if a child exited.
    pub(super) fn check_alive(&self) -> Result<(), StartError> {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for (name, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = self.log_dir.join(format!("{name}.log"));
                let text = fs::read_to_string(&log).unwrap_or_default();
                let error = self.failure(&format!("{name} exited ({status})"));
                return Err(if text.contains("address already in use") {
                    StartError::Retry(error)
                } else {
                    StartError::Fatal(error)
                });
            }
        }
        Ok(())
    }

    pub(super) fn failure(&self, what: &str) -> anyhow::Error {
        let mut msg = format!("{what}; logs in {}", self.log_dir.display());
        for name in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            let path = self.log_dir.join(format!("{name}.log"));
            if path.exists() {
                msg.push_str(&format!(
                    "\n--- last lines of {} ---\n{}",
                    path.display(),
                    binaries::tail(&path, 15)
                ));
            }
        }
        anyhow!(msg)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let children = self.children.get_mut().unwrap_or_else(|e| e.into_inner());
        // Stop the controller manager and apiserver before etcd.
        for (_, child) in children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reaper::forget_process_group(child.id());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
