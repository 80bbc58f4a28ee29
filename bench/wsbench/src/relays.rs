//! The relays under test — wsbridge (standalone), Benthos, the Node and the
//! Python relay — configured for a source and N sink paths, started, checked,
//! scraped for loss counters and stopped; plus the minimal HTTP GET the
//! runner needs.

use crate::procs::free_port;
use crate::run::Opts;
use anyhow::{Context, Result, anyhow, bail};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

pub struct Relay {
    pub child: Child,
    pub log: PathBuf,
    /// wsbridge's listener, for `/metrics`.
    pub metrics_port: Option<u16>,
}

impl Relay {
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(8)..].join(" | ")
    }

    pub fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(st)) = self.child.try_wait() {
            bail!("relay exited ({st}); log: {}", self.log_tail());
        }
        Ok(())
    }

    /// wsbridge's counters whose name says something was lost or retried,
    /// non-zero ones only; the whole scrape is kept beside the relay log.
    pub async fn loss_metrics(&self) -> Vec<String> {
        let Some(port) = self.metrics_port else { return Vec::new() };
        let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(5), http_get(port, "/metrics")).await else {
            return vec!["could not scrape /metrics".into()];
        };
        let _ = std::fs::write(self.log.with_file_name("metrics.txt"), &text);
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| ["drop", "dead", "retr", "fail", "reconnect"].iter().any(|k| l.split(['{', ' ']).next().unwrap_or("").contains(k)))
            .filter(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 0.0))
            .map(String::from)
            .collect()
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_ok() {
                return;
            }
        }
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

pub async fn http_head(port: u16, path: &str) -> Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut buf).await?;
    Ok(String::from_utf8_lossy(&buf).lines().next().unwrap_or("").to_string())
}

pub async fn http_get(port: u16, path: &str) -> Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    Ok(text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or(text))
}

fn sink_uri(sink_port: u16, i: usize) -> String {
    format!("http://127.0.0.1:{sink_port}/in/{i}")
}

pub fn launch(o: &Opts, relay: &str, dir: &Path, ws_port: u16, sink_port: u16, subs: usize) -> Result<Relay> {
    let uris: Vec<String> = (0..subs).map(|i| sink_uri(sink_port, i)).collect();
    launch_to(o, relay, dir, ws_port, &uris)
}

/// [`launch`] with one subscriber per URI.
pub fn launch_to(o: &Opts, relay: &str, dir: &Path, ws_port: u16, uris: &[String]) -> Result<Relay> {
    std::fs::create_dir_all(dir)?;
    let ws_url = format!("ws://127.0.0.1:{ws_port}/feed");
    let log = dir.join("relay.log");
    let mut metrics_port = None;
    let mut cmd = match relay {
        "wsbridge" => {
            let bin = o.wsbridge.as_ref().ok_or_else(|| anyhow!("no wsbridge binary"))?;
            let cfg = dir.join("config");
            std::fs::create_dir_all(&cfg)?;
            let mut y = String::new();
            let _ = write!(
                y,
                "apiVersion: wsbridge.io/v1alpha1\nkind: Endpoint\nmetadata: {{name: source}}\nspec: {{url: \"{ws_url}\"}}\n---\n\
                 apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {{name: bench}}\nspec: {{allowAnonymousPublish: true}}\n---\n\
                 apiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {{name: bench}}\nspec: {{channel: bench, endpoint: source}}\n"
            );
            for (i, uri) in uris.iter().enumerate() {
                let _ = write!(
                    y,
                    "---\napiVersion: wsbridge.io/v1alpha1\nkind: Subscription\nmetadata: {{name: sink-{i}}}\nspec:\n  channel: bench\n  \
                     subscriber: {{uri: \"{uri}\"}}\n  delivery: {{ordering: unordered, maxInFlight: 64, queueCapacity: 100000, queueCapacityBytes: 134217728}}\n"
                );
            }
            std::fs::write(cfg.join("bench.yaml"), y)?;
            let port = free_port()?;
            metrics_port = Some(port);
            let mut c = Command::new(bin);
            c.arg("standalone").arg("-f").arg(&cfg).arg("--listen").arg(format!("127.0.0.1:{port}"));
            c.env("RUST_LOG", std::env::var("WSBENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()));
            c
        }
        "benthos" => {
            let bin = o.benthos.as_ref().ok_or_else(|| anyhow!("no benthos binary"))?;
            let mut y = format!(
                "http: {{enabled: false}}\nlogger: {{level: WARN}}\ninput:\n  websocket:\n    url: \"{ws_url}\"\n\
                 output:\n  broker:\n    pattern: fan_out\n    outputs:\n"
            );
            for uri in uris {
                let _ = write!(
                    y,
                    "      - http_client:\n          url: \"{uri}\"\n          verb: POST\n          \
                     headers: {{Content-Type: application/json}}\n          max_in_flight: 64\n"
                );
            }
            let f = dir.join("benthos.yaml");
            std::fs::write(&f, y)?;
            let mut c = Command::new(bin);
            c.arg("run").arg(&f);
            c
        }
        "node" | "python" => {
            let cfg = serde_json::json!({
                "source": ws_url,
                "sinks": uris,
                "maxInFlight": 64,
            });
            let f = dir.join("relay.json");
            std::fs::write(&f, serde_json::to_vec_pretty(&cfg)?)?;
            let (bin, script) = if relay == "node" {
                (o.node.clone().unwrap_or_else(|| "node".into()), o.node_relay.as_ref())
            } else {
                (o.python.clone().unwrap_or_else(|| "python3".into()), o.python_relay.as_ref())
            };
            let script = script.ok_or_else(|| anyhow!("no {relay} relay script"))?;
            let mut c = Command::new(bin);
            c.arg(script).arg(&f);
            c
        }
        other => bail!("unknown relay {other}"),
    };
    let out = std::fs::File::create(&log)?;
    cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("start {relay}"))?;
    Ok(Relay { child, log, metrics_port })
}
