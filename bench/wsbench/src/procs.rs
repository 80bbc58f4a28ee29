//! The runner's child processes: this same binary as source, sink or load
//! generator, driven by line commands on stdin and answering on stdout; and
//! what `/proc` says about a process (memory, CPU time).

use crate::sink::Stats;
use anyhow::{Context, Result, anyhow, bail};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// A child process driven by line commands on stdin, answering on stdout.
#[allow(dead_code)] // `child` is held so that kill_on_drop ends it with the Proc.
pub struct Proc {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    connects: u64,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: &Path) -> Result<Proc> {
        let errlog = std::fs::File::create(log)?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(errlog).kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Proc { child, stdin, lines: rx, connects: 0 })
    }

    pub async fn send(&mut self, line: &str) -> Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Next line starting with `prefix` (other lines are noted and skipped).
    pub async fn expect(&mut self, prefix: &str, limit: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .map_err(|_| anyhow!("timed out after {limit:?} waiting for `{prefix}`"))?
                .ok_or_else(|| anyhow!("process ended while waiting for `{prefix}`"))?;
            if line.starts_with("connected") {
                self.connects += 1;
            }
            if line.starts_with(prefix) {
                return Ok(line);
            }
            if line.starts_with("error") && prefix != "error" {
                bail!("child said: {line}");
            }
        }
    }

    pub async fn port(&mut self) -> Result<u16> {
        let l = self.expect("listening", Duration::from_secs(10)).await?;
        Ok(l.split_whitespace().nth(1).unwrap_or("").parse()?)
    }

    pub async fn stats(&mut self) -> Result<Stats> {
        self.send("stats").await?;
        let l = self.expect("{", Duration::from_secs(10)).await?;
        Ok(serde_json::from_str(&l)?)
    }

    pub async fn reset(&mut self) -> Result<()> {
        self.send("reset").await?;
        self.expect("ok", Duration::from_secs(10)).await?;
        Ok(())
    }
}

pub fn self_cmd(args: &[&str]) -> Result<Command> {
    let mut c = Command::new(std::env::current_exe()?);
    c.args(args);
    Ok(c)
}

/// VmRSS and VmHWM of a process, in KiB.
pub fn mem_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// User + system CPU time of a process so far, in microseconds.
pub fn cpu_us(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name `(…)`: state is field 3, utime 14, stime 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = 100; // USER_HZ, fixed at 100 on Linux for /proc
    Some(ticks * 1_000_000 / hz)
}

/// CPU microseconds the relay spent per delivery since `before`.
pub fn cpu_per(pid: u32, before: Option<u64>, deliveries: u64) -> Option<f64> {
    let (b, a) = (before?, cpu_us(pid)?);
    (deliveries > 0).then(|| a.saturating_sub(b) as f64 / deliveries as f64)
}

pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
