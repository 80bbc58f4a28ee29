//! Signed-delivery peers shared by the standalone and the cluster tests: a
//! subscriber that verifies with the `standardwebhooks` package from PyPI
//! (tests/peers/webhook_verifier.py; installed by tests/run.sh), and new
//! secrets in the Standard Webhooks `whsec_` form.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long the verifier may take to start and to print each verdict.
const WAIT: Duration = Duration::from_secs(60);

/// A Python subscriber verifying with `secret`; killed on drop.
pub struct Verifier {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    port: u16,
}

impl Verifier {
    pub async fn start(secret: &str) -> Self {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/webhook_verifier.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the verifier starts")
            .unwrap()
            .unwrap_or_else(|| {
                panic!("the verifier exited: is the `standardwebhooks` package installed? (tests/run.sh installs it)")
            });
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        Self {
            _child: child,
            lines,
            port,
        }
    }

    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// The next line the verifier printed within `wait`, if any.
    pub async fn next_within(&mut self, wait: Duration) -> Option<String> {
        match tokio::time::timeout(wait, self.lines.next_line()).await {
            Ok(line) => Some(line.unwrap().expect("the verifier is running")),
            Err(_) => None,
        }
    }

    /// The next line the verifier printed.
    pub async fn next(&mut self) -> String {
        self.next_within(WAIT).await.expect("a verdict in time")
    }
}

/// `whsec_` + base64 of `bytes` random bytes.
pub fn new_secret(bytes: usize) -> String {
    let key: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key))
}
