//! What every role serves besides its own work: logs, `/healthz`, `/readyz`
//! and Prometheus `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Installs the global `tracing` subscriber. `RUST_LOG` sets levels
/// (default `info`): a level, `target=level` pairs, or both, comma-separated
/// (e.g. `info,wsbridge=debug`). Span and field filters are not supported:
/// parsing them needs a regex engine in every process for a debugging aid.
///
/// Whatever `RUST_LOG` says, [`secret_safe_filter`] caps the libraries that
/// log credentials or message bodies at `trace`: tungstenite logs the whole
/// client handshake request (the endpoint's `Authorization` and secret
/// headers) and every frame.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, filter::FilterExt};
    let filter = levels_from_env().and(secret_safe_filter());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(layer.json().flatten_event(true).with_filter(filter))
            .try_init(),
    };
}

/// The levels `RUST_LOG` asks for; `info` when unset or not understood.
fn levels_from_env() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let default = || Targets::new().with_default(LevelFilter::INFO);
    match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => spec.parse().unwrap_or_else(|e| {
            eprintln!("RUST_LOG={spec:?} not understood ({e}); logging at info");
            default()
        }),
        _ => default(),
    }
}

/// Targets that must never log at `trace`: tungstenite writes the handshake
/// request (credentials) and frame contents (message bodies) there.
pub fn secret_safe_filter() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("tungstenite", LevelFilter::DEBUG)
        .with_target("tokio_tungstenite", LevelFilter::DEBUG)
}

/// A readiness flag a role flips once it can do its job (caches synced,
/// listener bound, ...).
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct OpsState {
    registry: Arc<Registry>,
    ready: Readiness,
}

/// `/healthz`, `/readyz` and `/metrics`, to merge into a role's router or
/// serve on their own.
pub fn router(registry: Arc<Registry>, ready: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState { registry, ready })
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    if state.ready.get() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Binds `addr` and serves `router` until `shutdown` resolves, with JSON
/// 404 and 405 answers. Returns the bound address (useful with port 0) and
/// the server task.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        axum::serve(listener, crate::publish::with_json_errors(router))
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((bound, task))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate => {},
    }
}

/// Waits up to `deadline` for a task that was asked to stop, and aborts it
/// if it has not: shutdown takes bounded time whatever a task is stuck on.
/// True when the task finished by itself.
pub async fn join_or_abort<T>(task: &mut tokio::task::JoinHandle<T>, deadline: std::time::Duration) -> bool {
    if tokio::time::timeout(deadline, &mut *task).await.is_ok() {
        return true;
    }
    task.abort();
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_or_abort_waits_for_a_finishing_task_and_aborts_a_stuck_one() {
        let mut quick = tokio::spawn(async {});
        assert!(join_or_abort(&mut quick, std::time::Duration::from_secs(5)).await);
        let mut stuck = tokio::spawn(std::future::pending::<()>());
        assert!(!join_or_abort(&mut stuck, std::time::Duration::from_millis(10)).await);
        assert!(stuck.await.unwrap_err().is_cancelled());
    }

    #[tokio::test]
    async fn readyz_follows_the_flag_and_metrics_are_openmetrics() {
        let ready = Readiness::default();
        let mut registry = Registry::default();
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("probe", "a probe", counter.clone());
        counter.inc();
        let (addr, _task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            router(Arc::new(registry), ready.clone()),
            std::future::pending(),
        )
        .await
        .unwrap();
        let get = |path: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            stream.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        ready.set(true);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        let metrics = get("/metrics").await;
        assert!(metrics.contains("probe_total 1"), "{metrics}");
    }
}

#[cfg(test)]
mod secret_safe_tests {
    use tracing::Level;

    #[test]
    fn tungstenite_never_logs_at_trace() {
        let f = super::secret_safe_filter();
        assert!(!f.would_enable("tungstenite::handshake::client", &Level::TRACE));
        assert!(!f.would_enable("tokio_tungstenite", &Level::TRACE));
        assert!(f.would_enable("tungstenite::protocol", &Level::DEBUG));
        assert!(f.would_enable("wsbridge::worker", &Level::TRACE));
        assert!(f.would_enable("hyper_util", &Level::TRACE));
    }
}
