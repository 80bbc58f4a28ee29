//! WebSocket source. Listens on 127.0.0.1, accepts relay connections and, on
//! command from stdin, sends N messages to the most recent connection, as
//! fast as possible (rate 0) or paced at a fixed rate.
//!
//! stdout protocol: `listening PORT`, `connected K`, `disconnected K`,
//! `sent N START_NS END_NS`, `error TEXT`.
//! stdin commands: `send N RATE`, `quit`.

use crate::msg;
use anyhow::Result;
use futures_util::{SinkExt, StreamExt, stream::SplitSink};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

type Tx = SplitSink<WebSocketStream<TcpStream>, Message>;

pub async fn main(port: u16, size: usize) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening {}", listener.local_addr()?.port());
    let current: Arc<Mutex<Option<Tx>>> = Arc::new(Mutex::new(None));

    let cur = current.clone();
    tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let _ = tcp.set_nodelay(true);
            let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else { continue };
            n += 1;
            let k = n;
            let (tx, mut rx) = ws.split();
            *cur.lock().await = Some(tx);
            println!("connected {k}");
            // Drain whatever the relay sends (pongs, closes) so control frames flow.
            tokio::spawn(async move {
                while let Some(Ok(_)) = rx.next().await {}
                println!("disconnected {k}");
            });
        }
    });

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut seq: u64 = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["send", n, rate] => {
                let (Ok(n), Ok(rate)) = (n.parse::<u64>(), rate.parse::<u64>()) else {
                    println!("error bad send command");
                    continue;
                };
                let mut guard = current.lock().await;
                let Some(tx) = guard.as_mut() else {
                    println!("error no connection");
                    continue;
                };
                match send(tx, &mut seq, n, rate, size).await {
                    Ok((start, end)) => println!("sent {n} {start} {end}"),
                    Err(e) => println!("error {e}"),
                }
            }
            ["quit"] => break,
            _ => println!("error unknown command"),
        }
    }
    Ok(())
}

async fn send(tx: &mut Tx, seq: &mut u64, n: u64, rate: u64, size: usize) -> Result<(u64, u64)> {
    let start_ns = msg::now_ns();
    if rate == 0 {
        for i in 0..n {
            *seq += 1;
            tx.feed(Message::text(msg::make(*seq, msg::now_ns(), size))).await?;
            if i % 64 == 63 {
                tx.flush().await?;
            }
        }
        tx.flush().await?;
    } else {
        let t0 = Instant::now();
        let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
        for i in 0..n {
            tokio::time::sleep_until((t0 + period * i as u32).into()).await;
            *seq += 1;
            tx.send(Message::text(msg::make(*seq, msg::now_ns(), size))).await?;
        }
    }
    Ok((start_ns, msg::now_ns()))
}
