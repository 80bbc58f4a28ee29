//! A real RabbitMQ server (Debian's `rabbitmq-server`, installed by
//! `tests/tools/rabbitmq.sh`) on free loopback ports, with its own node
//! name, Erlang cookie, epmd, data and log directories, so that it shares
//! nothing with a packaged service or another test run. Killed, with its
//! data, when the handle is dropped or the test process exits (the reaper).
//!
//! ```ignore
//! let broker = support::rabbitmq::RabbitMq::start().await?;
//! let url = broker.amqp_url();            // amqp://user:pass@127.0.0.1:port/%2f
//! broker.restart(Duration::from_secs(2)).await?; // same ports, same data
//! ```
//!
//! [`RabbitMq::start_with_mqtt`] also enables the MQTT plugin on a free
//! port, anonymous clients connecting as the test user;
//! [`RabbitMq::start_with_mqtt_auth`] makes them user `anonymous`, whom the
//! HTTP auth backend at a given address decides on.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::OnceCell;

use super::binaries::{repo_root, tail, target_dir};
use super::controlplane::random_hex;
use super::reaper;

/// Where the Debian package puts the server's start script (it runs the
/// broker as the calling user, unlike the `/usr/sbin` wrapper).
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// Boot takes a few seconds; a loaded machine running tests in parallel
/// may need much longer.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A running broker. Not tied to a tokio runtime.
pub struct RabbitMq {
    dir: PathBuf,
    log_path: PathBuf,
    ports: Ports,
    user: String,
    password: String,
    /// Whether the MQTT plugin listens on `ports.mqtt`.
    mqtt: bool,
    env: Vec<(String, String)>,
    epmd: Mutex<Option<Child>>,
    server: Mutex<Option<Child>>,
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    amqp: u16,
    dist: u16,
    epmd: u16,
    mqtt: u16,
    /// MQTT over WebSocket (`rabbitmq_web_mqtt`, path `/ws`).
    web_mqtt: u16,
}

impl std::fmt::Debug for RabbitMq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMq")
            .field("amqp_port", &self.ports.amqp)
            .field("log", &self.log_path)
            .finish_non_exhaustive()
    }
}

static SHARED: OnceCell<Result<RabbitMq, String>> = OnceCell::const_new();

/// The broker shared by the tests of this test binary that do not stop it,
/// started on first use. Panics (with its log) if it cannot start.
pub async fn shared() -> &'static RabbitMq {
    let result = SHARED
        .get_or_init(|| async { RabbitMq::start().await.map_err(|e| format!("{e:#}")) })
        .await;
    match result {
        Ok(broker) => broker,
        Err(e) => panic!("test RabbitMQ failed to start: {e}"),
    }
}

impl RabbitMq {
    /// Installs the server if needed, then starts epmd and the broker on
    /// free loopback ports and waits until it speaks AMQP. Retries with
    /// fresh ports when one was taken between choosing and binding it.
    pub async fn start() -> Result<RabbitMq> {
        Self::start_plugins(None).await
    }

    /// [`RabbitMq::start`] with the MQTT plugin (`rabbitmq_mqtt`) listening
    /// on [`RabbitMq::mqtt_addr`]; an anonymous MQTT client connects as the
    /// test user (vhost `/`, exchange `amq.topic`).
    pub async fn start_with_mqtt() -> Result<RabbitMq> {
        Self::start_plugins(Some(None)).await
    }

    /// [`RabbitMq::start_with_mqtt`], with anonymous MQTT clients as user
    /// `anonymous`, authenticated and authorized by the HTTP auth backend
    /// (`rabbitmq_auth_backend_http`, GET) at `auth_base`
    /// (`http://host:port`: `/auth/user`, `/auth/vhost`, `/auth/resource`,
    /// `/auth/topic`); the test user stays in the internal backend, asked
    /// first.
    pub async fn start_with_mqtt_auth(auth_base: &str) -> Result<RabbitMq> {
        Self::start_plugins(Some(Some(auth_base.to_string()))).await
    }

    /// `mqtt`: none, MQTT, or MQTT with the HTTP auth backend at an address.
    async fn start_plugins(mqtt: Option<Option<String>>) -> Result<RabbitMq> {
        tokio::task::spawn_blocking(ensure_installed)
            .await
            .context("installing RabbitMQ panicked")??;
        let mut last = None;
        for _ in 0..3 {
            let broker = Self::prepare(mqtt.as_ref().map(Option::as_deref))?;
            match broker.boot().await {
                Ok(()) => return Ok(broker),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("RabbitMQ did not start")))
    }

    fn prepare(mqtt: Option<Option<&str>>) -> Result<RabbitMq> {
        let id = format!("{}-{}", std::process::id(), random_hex(4));
        let dir = std::env::temp_dir().join(format!("wsbridge-rabbitmq-{id}"));
        let log_dir = target_dir().join("rabbitmq").join("logs");
        for d in [
            dir.join("home"),
            dir.join("mnesia"),
            dir.join("log"),
            log_dir.clone(),
        ] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        reaper::remove_dir_at_exit(&dir)?;
        let ports = free_ports()?;
        let user = "wsbridge-test".to_string();
        let password = random_hex(12);

        // The Erlang cookie is read from $HOME and must be private.
        let cookie = dir.join("home/.erlang.cookie");
        fs::write(&cookie, random_hex(16))?;
        fs::set_permissions(&cookie, fs::Permissions::from_mode(0o400))?;
        fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp}\n\
                 default_user = {user}\n\
                 default_pass = {password}\n\
                 loopback_users = none\n\
                 log.console = true\n\
                 log.console.level = info\n\
                 log.file = false\n",
                amqp = ports.amqp
            ),
        )?;
        if let Some(auth) = mqtt {
            let mut conf = fs::OpenOptions::new()
                .append(true)
                .open(dir.join("rabbitmq.conf"))?;
            let (anonymous, anonymous_pass) = match auth {
                Some(_) => ("anonymous", "anonymous"),
                None => (user.as_str(), password.as_str()),
            };
            write!(
                conf,
                "mqtt.listeners.tcp.default = 127.0.0.1:{port}\n\
                 mqtt.allow_anonymous = true\n\
                 mqtt.default_user = {anonymous}\n\
                 mqtt.default_pass = {anonymous_pass}\n\
                 mqtt.vhost = /\n\
                 mqtt.exchange = amq.topic\n\
                 web_mqtt.tcp.ip = 127.0.0.1\n\
                 web_mqtt.tcp.port = {web}\n",
                port = ports.mqtt,
                web = ports.web_mqtt
            )?;
            let mut plugins = "rabbitmq_mqtt,rabbitmq_web_mqtt";
            if let Some(base) = auth {
                write!(
                    conf,
                    "auth_backends.1 = internal\n\
                     auth_backends.2 = http\n\
                     auth_http.http_method = get\n\
                     auth_http.user_path = {base}/auth/user\n\
                     auth_http.vhost_path = {base}/auth/vhost\n\
                     auth_http.resource_path = {base}/auth/resource\n\
                     auth_http.topic_path = {base}/auth/topic\n"
                )?;
                plugins = "rabbitmq_mqtt,rabbitmq_web_mqtt,rabbitmq_auth_backend_http";
            }
            fs::write(dir.join("enabled_plugins"), format!("[{plugins}].\n"))?;
        }
        fs::write(dir.join("rabbitmq-env.conf"), "")?;

        let d = |name: &str| dir.join(name).display().to_string();
        let env = vec![
            ("HOME", d("home")),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
            ("ERL_EPMD_PORT", ports.epmd.to_string()),
            // Nothing from the packaged service's configuration.
            ("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf")),
            ("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
            ("RABBITMQ_NODENAME", format!("wsbridge-test-{id}@localhost")),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT", ports.amqp.to_string()),
            ("RABBITMQ_DIST_PORT", ports.dist.to_string()),
            ("RABBITMQ_MNESIA_BASE", d("mnesia")),
            ("RABBITMQ_LOG_BASE", d("log")),
            ("RABBITMQ_PID_FILE", d("rabbitmq.pid")),
            // Distribution on loopback too.
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".into(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(RabbitMq {
            log_path: log_dir.join(format!("{id}.log")),
            dir,
            ports,
            user,
            password,
            mqtt: mqtt.is_some(),
            env,
            epmd: Mutex::new(None),
            server: Mutex::new(None),
        })
    }

    async fn boot(&self) -> Result<()> {
        // Our own epmd in the foreground, so the reaper can kill it (one
        // started by the VM would daemonize out of the process group).
        let epmd = self.spawn(Command::new("epmd").args([
            "-address",
            "127.0.0.1",
            "-port",
            &self.ports.epmd.to_string(),
        ]))?;
        *lock(&self.epmd) = Some(epmd);
        self.start_server().await
    }

    async fn start_server(&self) -> Result<()> {
        let started = Instant::now();
        // The script and the VM it starts share the process group that
        // kills go to.
        let server = self.spawn(&mut Command::new(SERVER))?;
        *lock(&self.server) = Some(server);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if speaks_amqp(self.ports.amqp) && (!self.mqtt || accepts(self.ports.mqtt)) {
                eprintln!(
                    "test RabbitMQ ready on 127.0.0.1:{} in {:.1}s; log {}",
                    self.ports.amqp,
                    started.elapsed().as_secs_f64(),
                    self.log_path.display()
                );
                return Ok(());
            }
            if let Some(status) = lock(&self.server)
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("{}", self.failure(&format!("rabbitmq-server exited ({status})")));
            }
            if Instant::now() > deadline {
                bail!("{}", self.failure("RabbitMQ did not accept AMQP in time"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn spawn(&self, command: &mut Command) -> Result<Child> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        reaper::spawn_in_group(
            command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            &self.dir,
            log,
        )
    }

    /// `amqp://user:password@127.0.0.1:port/%2f` (the default vhost).
    pub fn amqp_url(&self) -> String {
        format!(
            "amqp://{}:{}@127.0.0.1:{}/%2f",
            self.user, self.password, self.ports.amqp
        )
    }

    /// The MQTT listener ([`RabbitMq::start_with_mqtt`] only).
    pub fn mqtt_addr(&self) -> SocketAddr {
        assert!(self.mqtt, "this broker was started without MQTT");
        SocketAddr::from(([127, 0, 0, 1], self.ports.mqtt))
    }

    /// Where MQTT over WebSocket listens (path `/ws`), with MQTT enabled.
    pub fn web_mqtt_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.web_mqtt))
    }

    /// The test user and password (AMQP clients other than the URL's).
    pub fn credentials(&self) -> (&str, &str) {
        (&self.user, &self.password)
    }

    /// The broker's password (to look for it in logs).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The AMQP listener.
    pub fn amqp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.amqp))
    }

    /// Kills the broker (SIGKILL: nothing is flushed that was not already
    /// confirmed) and waits for it to exit; epmd and the data stay.
    pub fn kill(&self) -> Result<()> {
        if let Some(mut server) = lock(&self.server).take() {
            kill_group(&mut server);
        }
        Ok(())
    }

    /// Stops the broker as an operator or a node drain would (SIGTERM: it
    /// closes its connections and flushes its queues), SIGKILL after 60 s;
    /// epmd and the data stay.
    pub fn stop(&self) -> Result<()> {
        if let Some(mut server) = lock(&self.server).take() {
            let _ = Command::new("kill")
                .args(["-TERM", &server.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while server.try_wait()?.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            kill_group(&mut server);
        }
        Ok(())
    }

    /// Starts the broker again on the same ports with the same data, after
    /// [`RabbitMq::kill`] or [`RabbitMq::stop`], and waits until it speaks AMQP.
    pub async fn start_again(&self) -> Result<()> {
        self.start_server().await
    }

    /// Kills the broker, keeps it down for `downtime`, starts it again.
    pub async fn restart(&self, downtime: Duration) -> Result<()> {
        self.kill()?;
        tokio::time::sleep(downtime).await;
        self.start_again().await
    }

    fn failure(&self, what: &str) -> String {
        format!(
            "{what}; log {}\n--- last lines ---\n{}",
            self.log_path.display(),
            tail(&self.log_path, 25)
        )
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        for child in [&self.server, &self.epmd] {
            if let Some(mut c) = lock(child).take() {
                kill_group(&mut c);
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// SIGKILL to the child's process group (the start script, the VM and its
/// port programs); returns once every process of the group is gone, so
/// that its ports are closed.
fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && Command::new("kill")
            .args(["-0", "--", &group])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = reaper::forget_process_group(child.id());
}

/// True once the port answers an AMQP 0-9-1 protocol header with a frame
/// (the broker opens its listener only at the end of boot).
fn speaks_amqp(port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(1))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
        return false;
    }
    let mut frame_type = [0u8; 1];
    // A method frame (type 1) carrying connection.start.
    matches!(stream.read_exact(&mut frame_type), Ok(()) if frame_type[0] == 1)
}

/// True once something accepts connections on the port.
fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(1)).is_ok()
}

fn free_ports() -> Result<Ports> {
    let listeners = [
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
    ];
    let port = |i: usize| listeners[i].local_addr().map(|a| a.port());
    Ok(Ports {
        amqp: port(0)?,
        dist: port(1)?,
        epmd: port(2)?,
        mqtt: port(3)?,
        web_mqtt: port(4)?,
    })
}

/// Runs `tests/tools/rabbitmq.sh` once per process when the server is not
/// installed (a no-op otherwise).
fn ensure_installed() -> Result<()> {
    if Path::new(SERVER).exists() {
        return Ok(());
    }
    let script = repo_root().join("tests/tools/rabbitmq.sh");
    let status = Command::new("bash")
        .arg(&script)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() || !Path::new(SERVER).exists() {
        bail!("{} did not install RabbitMQ ({status})", script.display());
    }
    Ok(())
}
