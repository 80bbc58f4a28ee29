//! Direct load generator for the ceiling: C keep-alive HTTP/1.1 connections
//! (hyper client), each posting benchmark messages back to back to the sink,
//! connection i to path `/in/{i % paths}`, N requests in total.
//! Prints `done N START_NS END_NS ERRORS`.

use crate::msg;
use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

pub async fn main(port: u16, paths: usize, conns: usize, count: u64, size: usize, limit: Duration) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + limit;
    let start_ns = msg::now_ns();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (next, done, errors) = (next.clone(), done.clone(), errors.clone());
        let path = format!("/in/{}", c % paths.max(1));
        tasks.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
            tcp.set_nodelay(true)?;
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            loop {
                let seq = next.fetch_add(1, Relaxed);
                if seq >= count || Instant::now() > deadline {
                    break;
                }
                let body = msg::make(seq + 1, msg::now_ns(), size);
                let req = Request::post(path.as_str())
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))?;
                match tx.send_request(req).await {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.into_body().collect().await;
                        done.fetch_add(1, Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Relaxed);
                        break;
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        if let Ok(Err(_)) = t.await {
            errors.fetch_add(1, Relaxed);
        }
    }
    println!("done {} {} {} {}", done.load(Relaxed), start_ns, msg::now_ns(), errors.load(Relaxed));
    Ok(())
}
