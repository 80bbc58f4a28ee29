//! `wsbridge standalone`: the data plane fed from YAML files instead of the
//! Kubernetes API. Bridges, the publish gateway and delivery run in one
//! process; the files are validated against the CRDs' schema and CEL rules,
//! and followed: valid edits apply live, invalid ones are logged and ignored.
//!
//! Channels with `backend: rabbitmq` go through a RabbitMQ broker when one
//! is configured ([`Options::broker`], see [`wsbridge_broker::Durable`]); without one such a
//! Channel is refused at load, as an invalid object is.
//!
//! Publishing is not authenticated in standalone mode (there is no
//! Kubernetes API to review tokens against): anyone who can reach the
//! listener can publish on any channel. The default listener is loopback.
#![forbid(unsafe_code)]

pub mod auth;
pub mod demo;
pub mod load;
pub mod publish;
pub mod runtime;
pub mod schema;
pub mod validator;
pub mod websocket;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{error, info, warn};

pub use load::{ConfigError, ConfigErrors, Plan, load};
pub use runtime::Runtime;
pub use validator::Validation;

use wsbridge_broker::{BrokerMetrics, BrokerUrl, Durable};
use wsbridge_dataplane::DataplaneMetrics;
use wsbridge_dataplane::budget::queue_budget;
use wsbridge_dataplane::clients::{ClientLimits, RemoteClients};
use wsbridge_dataplane::delivery::{DEFAULT_DEDUP_BYTES, DEFAULT_DEDUP_WINDOW, RecentPublishes};
use wsbridge_http::ops::{self, Readiness};

/// How standalone mode runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Files and folders to read.
    pub files: Vec<PathBuf>,
    /// Where `/channels/...`, `/healthz`, `/readyz` and `/metrics` are served.
    pub listen: SocketAddr,
    /// How often the files are checked for changes.
    pub poll_interval: Duration,
    /// How long queued deliveries may take to finish at shutdown.
    pub drain_timeout: Duration,
    /// Where deliveries, dead-letters and endpoint connections may go.
    pub destinations: std::sync::Arc<wsbridge_dataplane::DestinationPolicy>,
    /// Where the files are validated (the CLI uses a child process).
    pub validation: Validation,
    /// Send buffer and connection limits of WebSocket subscribers.
    pub client_limits: ClientLimits,
    /// Pings of WebSocket subscribers.
    pub client_keepalive: publish::ClientKeepalive,
    /// The memory the process may use; queued messages take half of it
    /// (default: the cgroup's limit, see `wsbridge_dataplane::budget`).
    pub memory_limit: Option<u64>,
    /// The RabbitMQ broker of `backend: rabbitmq` channels; without one,
    /// such channels are refused.
    pub broker: Option<BrokerUrl>,
}

impl Options {
    /// Defaults for `files`: listen on `127.0.0.1:8080`, poll every second,
    /// drain for 10 seconds.
    pub fn new(files: Vec<PathBuf>) -> Self {
        Self {
            files,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            poll_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            destinations: Default::default(),
            validation: Validation::InProcess,
            client_limits: ClientLimits::default(),
            client_keepalive: publish::ClientKeepalive::default(),
            memory_limit: None,
            broker: None,
        }
    }
}

/// Why standalone mode stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The files are not a valid configuration.
    #[error("invalid configuration:\n{0}")]
    Config(#[from] ConfigErrors),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ReloadLabels {
    result: String,
}

/// Validates the files and returns the configuration (`--check`);
/// `backend: rabbitmq` Channels are refused unless `broker` (one is configured).
pub fn check(files: &[PathBuf], broker: bool) -> Result<Plan, ConfigErrors> {
    let plan = load(files)?;
    plan.require_broker(broker)?;
    Ok(plan)
}

/// A started standalone process (see [`start`]).
pub struct Standalone {
    /// The bound listener address.
    pub addr: SocketAddr,
    runtime: Arc<Runtime>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    reloader: tokio::task::JoinHandle<()>,
    readiness: tokio::task::JoinHandle<()>,
    drain_timeout: Duration,
}

/// Loads the configuration, starts the bridges, delivery and the HTTP
/// listener, and follows the files. Fails without starting anything when
/// the configuration is invalid.
pub async fn start(options: Options) -> Result<Standalone, Error> {
    let plan = validator::load(&options.files, &options.validation).await?;
    plan.require_broker(options.broker.is_some())?;
    info!(files = ?options.files, "configuration loaded: {}", plan.summary());

    let mut registry = Registry::default();
    let metrics = Arc::new(DataplaneMetrics::new(&mut registry));
    let reloads = Family::<ReloadLabels, Counter>::default();
    registry.register(
        "wsbridge_standalone_config_reloads",
        "Configuration reloads after a file change, by result (applied or rejected)",
        reloads.clone(),
    );
    let clients = RemoteClients::registered(options.client_limits, &mut registry);
    let budget = metrics.memory_budget(queue_budget(options.memory_limit));
    info!(bytes = budget.limit(), "memory budget for queued messages");
    let mut runtime = Runtime::with_budget(metrics, options.destinations.clone(), budget)
        .with_remote_clients(clients)
        .with_recent_publishes(RecentPublishes::new(
            DEFAULT_DEDUP_WINDOW,
            DEFAULT_DEDUP_BYTES,
            &mut registry,
        ));
    if let Some(url) = options.broker.clone() {
        info!(broker = %url, "rabbitmq channels go through the broker");
        runtime = runtime.with_broker(Durable::connect(
            url,
            BrokerMetrics::registered(&mut registry),
            "standalone",
        ));
    }
    let runtime = Arc::new(runtime);
    runtime.apply(plan);

    let ready = Readiness::default();
    let (stop, stop_rx) = watch::channel(false);
    let routes = publish::ChannelRoutes {
        runtime: runtime.clone(),
        stop: stop_rx.clone(),
        keepalive: options.client_keepalive,
    };
    let app = publish::router(routes)
        .merge(auth::router(runtime.clone()))
        .merge(ops::router(Arc::new(registry), ready.clone()));
    let mut server_stop = stop_rx.clone();
    let (addr, server) = ops::serve(options.listen, app, async move {
        let _ = server_stop.wait_for(|s| *s).await;
    })
    .await
    .map_err(|source| Error::Listen {
        addr: options.listen,
        source,
    })?;
    if !addr.ip().is_loopback() {
        warn!(%addr, "publishing and subscribing are not authenticated in standalone mode; anyone who can reach this address can publish and subscribe");
    }
    let readiness = tokio::spawn(follow_readiness(runtime.clone(), ready, stop_rx.clone()));
    info!(%addr, "listening: POST /channels/{{namespace}}/{{name}} to publish, GET (WebSocket) to subscribe; /healthz /readyz /metrics");

    let reloader = tokio::spawn(follow_files(
        options.files.clone(),
        options.validation.clone(),
        options.broker.is_some(),
        options.poll_interval,
        runtime.clone(),
        reloads,
        stop_rx,
    ));
    Ok(Standalone {
        addr,
        runtime,
        stop,
        server,
        reloader,
        readiness,
        drain_timeout: options.drain_timeout,
    })
}

impl Standalone {
    /// The running data plane.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Stops accepting publishes and following files, closes the endpoint
    /// connections and drains queued deliveries within the drain timeout.
    pub async fn shutdown(mut self) {
        info!("shutting down: draining deliveries");
        let _ = self.stop.send(true);
        let _ = self.reloader.await;
        self.readiness.abort();
        ops::join_or_abort(&mut self.server, Duration::from_secs(5)).await;
        let report = self.runtime.shutdown(self.drain_timeout).await;
        // Totals since start: the drain's own counts alone read as "nothing
        // was delivered" after a quiet shutdown.
        let totals = self.runtime.stats();
        info!(
            delivered = totals.delivered,
            retried = totals.retried,
            dead_lettered = totals.dead_lettered,
            dropped = totals.dropped,
            delivered_while_draining = report.delivered,
            abandoned = report.abandoned,
            "stopped"
        );
    }
}

/// Runs standalone mode until SIGINT or SIGTERM, then drains and returns.
pub async fn run(options: Options) -> Result<(), Error> {
    let standalone = start(options).await?;
    ops::shutdown_signal().await;
    standalone.shutdown().await;
    Ok(())
}

/// Keeps `/readyz` in step with the broker: ready while listening, and,
/// with a broker configured, while it is connected and every backlog is
/// consumed. Updates the broker metrics (backlogs every few seconds).
async fn follow_readiness(runtime: Arc<Runtime>, ready: Readiness, mut stop: watch::Receiver<bool>) {
    let mut last: Option<Result<(), String>> = None;
    let mut tick = 0u32;
    let mut backlogs: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let now = runtime.broker_ready();
        ready.set(now.is_ok());
        if last.as_ref() != Some(&now) {
            match &now {
                Ok(()) if runtime.broker().is_some() => {
                    info!("ready: the broker is connected and every backlog is consumed")
                }
                Ok(()) => {}
                Err(why) => warn!(reason = %why, "not ready"),
            }
            last = Some(now);
        }
        // Asked on the side: a broker slow to answer never holds up /readyz.
        if tick.is_multiple_of(20)
            && backlogs.as_ref().is_none_or(|t| t.is_finished())
            && let Some(durable) = runtime.broker().cloned()
        {
            let queues = runtime.broker_queues();
            backlogs = Some(tokio::spawn(
                async move { durable.observe_backlogs(queues).await },
            ));
        }
        tick = tick.wrapping_add(1);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {
                if let Some(task) = backlogs {
                    task.abort();
                }
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

async fn follow_files(
    files: Vec<PathBuf>,
    validation: Validation,
    broker: bool,
    interval: Duration,
    runtime: Arc<Runtime>,
    reloads: Family<ReloadLabels, Counter>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = load::fingerprint(&files);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = load::fingerprint(&files);
        if now == last {
            continue;
        }
        last = now;
        let loaded = validator::load(&files, &validation)
            .await
            .and_then(|plan| plan.require_broker(broker).map(|()| plan));
        match loaded {
            Ok(plan) => {
                info!("configuration changed; applying: {}", plan.summary());
                runtime.apply(plan);
                reloads
                    .get_or_create(&ReloadLabels {
                        result: "applied".into(),
                    })
                    .inc();
            }
            Err(errors) => {
                for e in &errors.0 {
                    error!("{e}");
                }
                error!("configuration change rejected; the running configuration is kept");
                reloads
                    .get_or_create(&ReloadLabels {
                        result: "rejected".into(),
                    })
                    .inc();
            }
        }
    }
}
