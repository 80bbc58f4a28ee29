//! Demo peers for the quickstart, so that it needs nothing but the binary:
//! a WebSocket feed (`wsbridge demo-feed`) and an HTTP subscriber
//! (`wsbridge demo-subscriber`). Both print what they see on stdout.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use wsbridge_core::text::shorten;

/// `text` on one line, shortened for the terminal.
fn one_line(text: &str) -> String {
    shorten(&text.replace('\n', " "), 200)
}

/// A WebSocket server that sends a JSON tick every `interval` to each client
/// and echoes back (wrapped as `{"type":"echo",...}`) every text message it
/// receives, printing both. Runs until SIGINT/SIGTERM.
pub async fn feed(listen: SocketAddr, interval: Duration) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("[feed]       demo WebSocket feed listening on ws://{listen}/feed");
    let serve = async {
        loop {
            let (stream, peer) = listener.accept().await?;
            tokio::spawn(async move {
                let mut ws = match tokio_tungstenite::accept_async(stream).await {
                    Ok(ws) => ws,
                    Err(e) => {
                        println!("[feed]       handshake with {peer} failed: {e}");
                        return;
                    }
                };
                println!("[feed]       client connected from {peer}");
                let mut ticks = tokio::time::interval(interval);
                ticks.tick().await;
                let mut seq: u64 = 0;
                loop {
                    tokio::select! {
                        _ = ticks.tick() => {
                            seq += 1;
                            let price = 100.0 + ((seq * 37) % 100) as f64 / 10.0;
                            let tick = serde_json::json!({"type": "tick", "symbol": "DEMO", "seq": seq, "price": price});
                            println!("[feed]       -> sent {tick}");
                            if ws.send(WsMessage::text(tick.to_string())).await.is_err() {
                                break;
                            }
                        }
                        frame = ws.next() => match frame {
                            Some(Ok(WsMessage::Text(text))) => {
                                println!("[feed]       <- received from wsbridge: {}", one_line(&text));
                                let received = serde_json::from_str::<serde_json::Value>(&text)
                                    .unwrap_or_else(|_| serde_json::Value::String(text.to_string()));
                                let echo = serde_json::json!({"type": "echo", "received": received});
                                println!("[feed]       -> echoed it back");
                                if ws.send(WsMessage::text(echo.to_string())).await.is_err() {
                                    break;
                                }
                            }
                            Some(Ok(WsMessage::Binary(bytes))) => {
                                println!("[feed]       <- received {} binary bytes from wsbridge", bytes.len());
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break,
                        },
                    }
                }
                println!("[feed]       client {peer} disconnected");
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    };
    tokio::select! {
        res = serve => res?,
        _ = wsbridge_http::ops::shutdown_signal() => {}
    }
    Ok(())
}

/// An HTTP server that prints every POST it receives: path, CloudEvents
/// type and source, whether the expected bearer token came with it, body.
/// Answers 200. Runs until SIGINT/SIGTERM.
pub async fn subscriber(listen: SocketAddr, expect_token: Option<String>) -> anyhow::Result<()> {
    let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let expect = expect_token.clone();
        async move {
            let get = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string()
            };
            let auth = match (headers.get("authorization"), &expect) {
                (None, _) => "no token".to_string(),
                (Some(v), Some(expected)) if v.to_str().ok() == Some(&format!("Bearer {expected}")) => {
                    "bearer token ok".to_string()
                }
                (Some(_), Some(_)) => "WRONG token".to_string(),
                (Some(_), None) => "bearer token present".to_string(),
            };
            println!(
                "[subscriber] {} <- {} from {} ({}): {}",
                uri.path(),
                get("ce-type"),
                get("ce-source"),
                auth,
                one_line(&String::from_utf8_lossy(&body))
            );
            "ok"
        }
    });
    let listener = TcpListener::bind(listen).await?;
    println!("[subscriber] demo subscriber listening on http://{listen}/");
    axum::serve(listener, app)
        .with_graceful_shutdown(wsbridge_http::ops::shutdown_signal())
        .await?;
    Ok(())
}
