//! Publish benchmark (not a test): publishes per second through
//! gateway → worker → endpoint on the real API server, and the latency the
//! path adds, against a direct WebSocket client → endpoint baseline in the
//! same run. The controller and the gateway run from `deploy/`'s pod
//! templates, the worker from the controller's (see `tests/support`).
//!
//! `cargo bench --bench gateway_publish`; `WSBRIDGE_BENCH_SECONDS` (default
//! 10) and `WSBRIDGE_BENCH_PUBLISHERS` (default 16) change the load.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A WebSocket endpoint that records, for every text message carrying
/// `{"t": <send micros>}`, the one-way latency in microseconds.
struct Endpoint {
    addr: SocketAddr,
    latency: Arc<Mutex<Histogram<u64>>>,
    received: Arc<AtomicU64>,
}

impl Endpoint {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let latency = Arc::new(Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?));
        let received = Arc::new(AtomicU64::new(0));
        let (l, r) = (latency.clone(), received.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (l, r) = (l.clone(), r.clone());
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if let WsMessage::Text(text) = msg {
                            let sent = serde_json::from_str::<serde_json::Value>(&text)
                                .ok()
                                .and_then(|v| v["t"].as_u64());
                            if let Some(sent) = sent {
                                let _ = l.lock().await.record(now_micros().saturating_sub(sent).max(1));
                                r.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        Ok(Self {
            addr,
            latency,
            received,
        })
    }

    async fn reset(&self) {
        self.latency.lock().await.reset();
        self.received.store(0, Ordering::Relaxed);
    }
}

fn body(seq: u64) -> String {
    format!(
        r#"{{"t":{},"seq":{seq},"pad":"{}"}}"#,
        now_micros(),
        "x".repeat(200)
    )
}

struct Figures {
    sent: u64,
    received: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn figures(endpoint: &Endpoint, sent: u64, seconds: f64) -> Figures {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let h = endpoint.latency.lock().await;
    Figures {
        sent,
        received: endpoint.received.load(Ordering::Relaxed),
        seconds,
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
    }
}

/// `publishers` concurrent keep-alive HTTP clients for `duration`.
async fn through_gateway(
    gateway: SocketAddr,
    channel: &str,
    publishers: u64,
    duration: Duration,
    endpoint: &Endpoint,
) -> Result<Figures> {
    endpoint.reset().await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://{gateway}/channels/{channel}").parse()?;
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let (client, uri, accepted) = (client.clone(), uri.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            let mut seq = p << 32;
            while started.elapsed() < duration {
                seq += 1;
                let request = http::Request::post(uri.clone())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body(seq))))
                    .expect("request");
                if let Ok(response) = client.request(request).await {
                    let ok = response.status() == http::StatusCode::ACCEPTED;
                    let _ = response.into_body().collect().await;
                    if ok {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(figures(endpoint, accepted.load(Ordering::Relaxed), seconds).await)
}

/// The baseline: `publishers` WebSocket clients sending straight to the endpoint.
async fn direct(publishers: u64, duration: Duration, endpoint: &Endpoint) -> Result<Figures> {
    endpoint.reset().await;
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let (sent, url) = (sent.clone(), format!("ws://{}/direct", endpoint.addr));
        tasks.push(tokio::spawn(async move {
            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
                return;
            };
            let mut seq = p << 32;
            while started.elapsed() < duration {
                seq += 1;
                if ws.send(WsMessage::Text(body(seq).into())).await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                // One message in flight per client, like an HTTP publisher.
                tokio::task::yield_now().await;
            }
            let _ = ws.close(None).await;
        }));
    }
    for t in tasks {
        t.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(figures(endpoint, sent.load(Ordering::Relaxed), seconds).await)
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("gateway_publish: skipped (run it with `cargo bench --bench gateway_publish`)");
        return Ok(());
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Runtime::new()?.block_on(bench())
}

async fn bench() -> Result<()> {
    let seconds = env_u64("WSBRIDGE_BENCH_SECONDS", 10);
    let publishers = env_u64("WSBRIDGE_BENCH_PUBLISHERS", 16);
    let duration = Duration::from_secs(seconds);
    let installation = support::install::installed().await;
    let cp = support::shared().await;
    let client = cp.client();
    let ns = support::create_namespace(&client, "bench-publish").await?;
    let endpoint = Endpoint::start().await?;
    let yaml = format!(
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {{name: bench}}\nspec: {{allowAnonymousPublish: true}}\n---\napiVersion: wsbridge.io/v1alpha1\nkind: Endpoint\nmetadata: {{name: sink}}\nspec: {{url: 'ws://{}/gateway'}}\n---\napiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {{name: bench}}\nspec: {{channel: bench, endpoint: sink}}\n",
        endpoint.addr
    );
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    let deployment =
        support::pods::wait_deployment(&client, &ns, "wsbridge-worker-bench", Duration::from_secs(60))
            .await?;
    let listen = format!("127.0.0.1:{}", support::http::free_port());
    let _worker = support::pods::run_pod_template(
        cp,
        &client,
        &deployment,
        &[("WSBRIDGE_LISTEN", &listen), ("RUST_LOG", "warn")],
    )
    .await?;
    let channel = format!("{ns}/bench");
    support::eventually(
        Duration::from_secs(60),
        "the gateway routes to the worker",
        || {
            let channel = channel.clone();
            async move {
                let (code, _) = support::http::request(
                    installation.gateway_addr,
                    "POST",
                    &format!("/channels/{channel}"),
                    &[],
                    b"{}",
                )
                .await?;
                Ok((code == 202).then_some(()))
            }
        },
    )
    .await
    .context("warm-up")?;

    println!(
        "gateway_publish: {publishers} publishers, {seconds}s per run, ~230-byte JSON messages, 2 cores (shared)"
    );
    let direct = direct(publishers, duration, &endpoint).await?;
    let gateway = through_gateway(
        installation.gateway_addr,
        &channel,
        publishers,
        duration,
        &endpoint,
    )
    .await?;
    println!();
    println!("| path | accepted/s | received by endpoint | p50 (ms) | p99 (ms) |");
    println!("|---|---:|---:|---:|---:|");
    for (name, f) in [
        ("direct client → endpoint", &direct),
        ("gateway → worker → endpoint", &gateway),
    ] {
        println!(
            "| {name} | {:.0} | {} of {} | {:.3} | {:.3} |",
            f.sent as f64 / f.seconds,
            f.received,
            f.sent,
            f.p50_ms,
            f.p99_ms
        );
    }
    println!();
    println!(
        "added latency: p50 +{:.3} ms, p99 +{:.3} ms; gateway throughput = {:.1}% of direct",
        gateway.p50_ms - direct.p50_ms,
        gateway.p99_ms - direct.p99_ms,
        100.0 * (gateway.sent as f64 / gateway.seconds) / (direct.sent as f64 / direct.seconds)
    );
    Ok(())
}
