//! A minimal HTTP/1.1 client for tests (one request per connection), so that
//! tests see exactly the status and body a server answers.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends one request and returns the status code and body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    request(addr, "GET", path, &[], b"").await
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// One answer read off a connection that stays open.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The status line and headers, as sent.
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A keep-alive POST of `body` (no `Connection` header: HTTP/1.1 keeps the
/// connection unless told otherwise).
pub fn keep_alive_post(addr: SocketAddr, path: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Writes `request` on `stream` and reads one answer framed by its
/// `Content-Length`, leaving the connection open for the next one.
pub async fn exchange(stream: &mut tokio::net::TcpStream, request: &[u8]) -> Result<Answer> {
    // The server may answer and close before it read the whole request.
    let _ = stream.write_all(request).await;
    let mut raw = Vec::new();
    let head_end = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "the connection closed before an answer");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end - 4]).to_string();
    let mut answer = Answer {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no status line")?,
        head,
        body: String::new(),
    };
    let length: usize = answer
        .header("content-length")
        .context("no Content-Length")?
        .parse()?;
    while raw.len() < head_end + length {
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "the connection closed in the body");
        raw.extend_from_slice(&buf[..n]);
    }
    answer.body = String::from_utf8_lossy(&raw[head_end..head_end + length]).to_string();
    Ok(answer)
}

/// Waits for the server to close `stream` (reading and dropping what comes).
pub async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}
