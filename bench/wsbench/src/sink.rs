//! HTTP sink. Counts POSTs (in total and per path `/in/{i}`), records
//! end-to-end latency (now − `ts` in the body) into HDR histograms, and
//! reports on `GET /stats` and on the stdin command `stats` (one JSON line).
//! `reset` (stdin, or `POST /reset`) clears everything.

use crate::msg;
use anyhow::Result;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;

const PATHS: usize = 1024;
const SHARDS: usize = 16;

pub struct State {
    count: AtomicU64,
    bad: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    per_path: Vec<AtomicU64>,
    hist: Vec<Mutex<Histogram<u64>>>,
    conns: AtomicU64,
}

#[derive(Serialize, serde::Deserialize, Debug, Clone, Default)]
pub struct Stats {
    pub count: u64,
    pub bad: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub paths_nonzero: u64,
    pub paths_min: u64,
    pub paths_max: u64,
    pub connections: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

impl State {
    fn new() -> Self {
        State {
            count: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            first_ns: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            per_path: (0..PATHS).map(|_| AtomicU64::new(0)).collect(),
            hist: (0..SHARDS).map(|_| Mutex::new(new_hist())).collect(),
            conns: AtomicU64::new(0),
        }
    }

    fn record(&self, shard: usize, path: &str, body: &[u8]) {
        let now = msg::now_ns();
        match msg::parse_ts(body) {
            Some(ts) => {
                let us = (now.saturating_sub(ts) / 1000).clamp(1, 120_000_000);
                self.hist[shard % SHARDS].lock().unwrap().saturating_record(us);
            }
            None => {
                self.bad.fetch_add(1, Relaxed);
            }
        }
        let idx = path
            .rsplit('/')
            .next()
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(0)
            .min(PATHS - 1);
        self.per_path[idx].fetch_add(1, Relaxed);
        let _ = self.first_ns.compare_exchange(0, now, Relaxed, Relaxed);
        self.last_ns.fetch_max(now, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn reset(&self) {
        self.count.store(0, Relaxed);
        self.bad.store(0, Relaxed);
        self.first_ns.store(0, Relaxed);
        self.last_ns.store(0, Relaxed);
        for p in &self.per_path {
            p.store(0, Relaxed);
        }
        for h in &self.hist {
            h.lock().unwrap().reset();
        }
    }

    pub fn stats(&self) -> Stats {
        let mut h = new_hist();
        for s in &self.hist {
            let _ = h.add(&*s.lock().unwrap());
        }
        let counts: Vec<u64> = self.per_path.iter().map(|p| p.load(Relaxed)).filter(|&c| c > 0).collect();
        let empty = h.is_empty();
        let q = |x: f64| if empty { 0 } else { h.value_at_quantile(x) };
        Stats {
            count: self.count.load(Relaxed),
            bad: self.bad.load(Relaxed),
            first_ns: self.first_ns.load(Relaxed),
            last_ns: self.last_ns.load(Relaxed),
            paths_nonzero: counts.len() as u64,
            paths_min: counts.iter().copied().min().unwrap_or(0),
            paths_max: counts.iter().copied().max().unwrap_or(0),
            connections: self.conns.load(Relaxed),
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if empty { 0 } else { h.max() },
            mean_us: if empty { 0.0 } else { h.mean() },
        }
    }
}

pub async fn main(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening {}", listener.local_addr()?.port());
    let state = Arc::new(State::new());

    let st = state.clone();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match line.trim() {
                "stats" => println!("{}", serde_json::to_string(&st.stats()).unwrap()),
                "reset" => {
                    st.reset();
                    println!("ok");
                }
                "quit" => std::process::exit(0),
                _ => println!("error unknown command"),
            }
        }
        // stdin closed: the runner is gone, so go too.
        std::process::exit(0);
    });

    let mut conn_id = 0usize;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                // Out of descriptors and the like: back off briefly, never spin.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        conn_id += 1;
        let shard = conn_id;
        let st = state.clone();
        st.conns.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let st = st.clone();
                async move { handle(&st, shard, req).await }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

async fn handle(st: &State, shard: usize, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let body = req.into_body().collect().await?.to_bytes();
    let resp = match (method.as_str(), path.as_str()) {
        ("GET", "/stats") => Response::new(Full::new(Bytes::from(serde_json::to_vec(&st.stats()).unwrap()))),
        ("POST", "/reset") => {
            st.reset();
            Response::new(Full::new(Bytes::new()))
        }
        ("POST", _) => {
            st.record(shard, &path, &body);
            Response::new(Full::new(Bytes::new()))
        }
        _ => Response::builder().status(404).body(Full::new(Bytes::new())).unwrap(),
    };
    Ok(resp)
}
