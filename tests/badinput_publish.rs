//! Malformed, oversize and oddly typed publishes against standalone's
//! publish listener (the real process): every answer is a 4xx with a JSON
//! `reason`, never a 5xx, never a panic, and the process keeps serving.

#[path = "support/http.rs"]
#[allow(dead_code)]
mod http_support;
#[path = "support/python.rs"]
mod python;
mod standalone_support;

use std::net::SocketAddr;
use std::time::Duration;

use standalone_support::{Standalone, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG: &str = r#"
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {name: ticker}
spec: {allowAnonymousPublish: true, maxMessageBytes: 256}
"#;

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    fn reason(&self) -> String {
        self.json()["reason"].as_str().unwrap_or_default().to_string()
    }
}

/// Writes `request` as is, then reads the answer (the server may answer
/// and close before the whole request was written).
async fn raw(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 10 s");
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: wsbridge\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

fn post(path: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let length = body.len().to_string();
    let mut headers = vec![("Content-Length", length.as_str())];
    if let Some(ct) = content_type {
        headers.push(("Content-Type", ct));
    }
    request("POST", path, &headers, body)
}

fn chunked(path: &str, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = request(
        "POST",
        path,
        &[("Transfer-Encoding", "chunked"), ("Content-Type", "text/plain")],
        b"",
    );
    for c in chunks {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

const CHANNEL: &str = "/channels/default/ticker";

#[tokio::test]
async fn every_bad_publish_gets_a_4xx_with_a_json_reason_and_the_process_keeps_serving() {
    let dir = TempDir::new("badinput-publish");
    let config = dir.write("config.yaml", CONFIG);
    let standalone = Standalone::start(&[&config], &dir.0).await;
    let addr = standalone.addr;
    let big = vec![b'x'; 300];

    // (what, request, status, reason)
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "empty body",
            post(CHANNEL, Some("text/plain"), b""),
            400,
            "EmptyMessage",
        ),
        (
            "over the limit with Content-Length",
            post(CHANNEL, Some("text/plain"), &big),
            413,
            "MessageTooLarge",
        ),
        (
            "a huge Content-Length, body never sent",
            request("POST", CHANNEL, &[("Content-Length", "1000000000000")], b""),
            413,
            "MessageTooLarge",
        ),
        (
            "chunked, over the limit",
            chunked(CHANNEL, &[&big[..200], &big[..200]]),
            413,
            "MessageTooLarge",
        ),
        (
            "one chunk far over the limit",
            chunked(CHANNEL, &[&vec![b'y'; 1 << 20]]),
            413,
            "MessageTooLarge",
        ),
        (
            "invalid UTF-8 sent as text",
            post(CHANNEL, Some("text/plain; charset=utf-8"), &[0xc3, 0x28, 0xff]),
            400,
            "InvalidText",
        ),
        (
            "invalid UTF-8 with no Content-Type",
            post(CHANNEL, None, &[0xfe, 0xff]),
            400,
            "InvalidText",
        ),
        (
            "GET on a channel without a WebSocket upgrade",
            request("GET", CHANNEL, &[], b""),
            426,
            "UpgradeRequired",
        ),
        (
            "PUT on a channel",
            post(CHANNEL, Some("text/plain"), b"x").replace_method("PUT"),
            405,
            "MethodNotAllowed",
        ),
        (
            "DELETE on /metrics",
            request("DELETE", "/metrics", &[], b""),
            405,
            "MethodNotAllowed",
        ),
        ("unknown path", request("GET", "/nope", &[], b""), 404, "NotFound"),
        (
            "POST without a name",
            post("/channels/default", Some("text/plain"), b"x"),
            404,
            "NotFound",
        ),
        (
            "POST with an extra segment",
            post("/channels/default/ticker/x", Some("text/plain"), b"x"),
            404,
            "NotFound",
        ),
        (
            "POST on the root",
            post("/", Some("text/plain"), b"x"),
            404,
            "NotFound",
        ),
        (
            "no such channel",
            post("/channels/default/nope", Some("text/plain"), b"x"),
            404,
            "ChannelNotFound",
        ),
        (
            "uppercase name",
            post("/channels/default/Ticker", Some("text/plain"), b"x"),
            400,
            "InvalidChannel",
        ),
        (
            "namespace with a dot",
            post("/channels/a.b/ticker", Some("text/plain"), b"x"),
            400,
            "InvalidChannel",
        ),
        (
            "percent-encoded slash",
            post("/channels/default/a%2Fb", Some("text/plain"), b"x"),
            400,
            "InvalidChannel",
        ),
        (
            "percent-encoded invalid UTF-8",
            post("/channels/%ff/ticker", Some("text/plain"), b"x"),
            400,
            "InvalidChannel",
        ),
        (
            "dot-dot name",
            post("/channels/default/..", Some("text/plain"), b"x"),
            400,
            "InvalidChannel",
        ),
        (
            "a 10 kB name",
            post(
                &format!("/channels/default/{}", "a".repeat(10_000)),
                Some("text/plain"),
                b"x",
            ),
            400,
            "InvalidChannel",
        ),
    ];
    let mut failures = Vec::new();
    for (what, req, status, reason) in &cases {
        let answer = raw(addr, req).await;
        if answer.status != *status || answer.reason() != *reason {
            failures.push(format!(
                "{what}: expected {status} {reason}, got {} {}\n{}",
                answer.status, answer.body, answer.head
            ));
        }
        if answer.json()["error"].as_str().is_none_or(str::is_empty) {
            failures.push(format!("{what}: no JSON error message: {}", answer.body));
        }
        if answer.body.len() > 1024 {
            failures.push(format!("{what}: {} bytes of error", answer.body.len()));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n\nlog:\n{}",
        failures.join("\n"),
        standalone.logs()
    );

    // 405 says what is allowed.
    let answer = raw(addr, &request("PUT", CHANNEL, &[], b"")).await;
    let head = answer.head.to_ascii_lowercase();
    let allow = head.lines().find(|l| l.starts_with("allow:")).unwrap_or_default();
    assert!(allow.contains("post") && allow.contains("get"), "{}", answer.head);

    // Still serving, and what is valid still goes through.
    let ok = raw(addr, &post(CHANNEL, Some("application/json"), br#"{"ok":true}"#)).await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    let logs = standalone.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test]
async fn binary_and_odd_content_types_are_read_as_the_media_type_says() {
    let dir = TempDir::new("badinput-ctype");
    let config = dir.write("config.yaml", CONFIG);
    let standalone = Standalone::start(&[&config], &dir.0).await;
    let addr = standalone.addr;
    let binary: &[u8] = &[0, 0xff, 0xfe, 0x80, 0x01];
    for (content_type, body, status) in [
        ("application/octet-stream", binary, 202),
        // Media types are case-insensitive and may carry parameters.
        ("APPLICATION/Octet-Stream", binary, 202),
        ("application/octet-stream; foo=bar", binary, 202),
        ("  application/octet-stream  ;", binary, 202),
        // Not binary: the bytes must then be UTF-8 text.
        ("application/octet-streamish", binary, 400),
        ("image/png", binary, 400),
        ("text/plain; charset=latin1", "h\u{e9}llo".as_bytes(), 202),
        ("multipart/form-data; boundary=x", b"--x--".as_slice(), 202),
        (";;;", b"text".as_slice(), 202),
        ("application/json", b"{not json".as_slice(), 202),
    ] {
        let answer = raw(addr, &post(CHANNEL, Some(content_type), body)).await;
        assert_eq!(answer.status, status, "{content_type}: {}", answer.body);
        assert!(answer.json().is_object(), "{content_type}: {}", answer.body);
    }
}

#[tokio::test]
async fn oversize_headers_and_broken_requests_never_get_a_5xx() {
    let dir = TempDir::new("badinput-headers");
    let config = dir.write("config.yaml", CONFIG);
    let standalone = Standalone::start(&[&config], &dir.0).await;
    let addr = standalone.addr;
    let huge = "v".repeat(1 << 20);
    let many: Vec<(String, String)> = (0..500).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for (what, req) in [
        (
            "a 1 MB header",
            request("POST", CHANNEL, &[("X-Huge", &huge)], b""),
        ),
        ("500 headers", request("POST", CHANNEL, &many, b"")),
        (
            "a 100 kB path",
            request("POST", &format!("/{}", "p".repeat(100_000)), &[], b""),
        ),
        (
            "a bad Content-Length",
            request("POST", CHANNEL, &[("Content-Length", "ten")], b"x"),
        ),
        (
            "two different Content-Lengths",
            request(
                "POST",
                CHANNEL,
                &[("Content-Length", "1"), ("Content-Length", "2")],
                b"xx",
            ),
        ),
        ("bad chunk size", {
            let mut r = request("POST", CHANNEL, &[("Transfer-Encoding", "chunked")], b"");
            r.extend_from_slice(b"zz\r\nxx\r\n0\r\n\r\n");
            r
        }),
        (
            "not HTTP at all",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(),
        ),
        (
            "a request line only",
            b"POST /channels/default/ticker\r\n\r\n".to_vec(),
        ),
    ] {
        let answer = raw(addr, &req).await;
        // hyper answers some of these itself, before any handler: a bare 4xx,
        // or closing the connection. Never a 5xx.
        assert!(
            answer.status == 0 || (400..500).contains(&answer.status),
            "{what}: {} {}",
            answer.head,
            answer.body
        );
    }
    let ok = raw(addr, &post(CHANNEL, Some("text/plain"), b"still here")).await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    assert!(!standalone.logs().contains("panicked"));
}

trait ReplaceMethod {
    fn replace_method(self, method: &str) -> Vec<u8>;
}

impl ReplaceMethod for Vec<u8> {
    fn replace_method(self, method: &str) -> Vec<u8> {
        let at = self.iter().position(|b| *b == b' ').unwrap();
        let mut out = method.as_bytes().to_vec();
        out.extend_from_slice(&self[at..]);
        out
    }
}

/// RFC 9112 §9.6: an answer sent before the request body was read says
/// `Connection: close`, so a keep-alive client does not send its next
/// request on a connection the server is closing. An answer given after
/// the body was read keeps the connection. No internal header goes out.
#[tokio::test]
async fn an_answer_before_the_body_was_read_closes_the_connection_and_says_so() {
    use http_support::{closed_by_server, exchange, keep_alive_post};
    let dir = TempDir::new("badinput-early");
    let config = dir.write("config.yaml", CONFIG);
    let standalone = Standalone::start(&[&config], &dir.0).await;
    let addr = standalone.addr;

    // Read in full: 202, then 400 (empty), on one connection kept open.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    for (body, status) in [(&b"within"[..], 202), (b"", 400), (b"again", 202)] {
        let answer = exchange(&mut stream, &keep_alive_post(addr, CHANNEL, body))
            .await
            .unwrap();
        assert_eq!(answer.status, status, "{answer:?}");
        assert_eq!(answer.header("connection"), None, "{answer:?}");
    }
    // Refused before the body was read: over the limit, no such channel.
    for (path, body, status) in [
        (CHANNEL, vec![b'x'; 300], 413),
        ("/channels/default/nope", b"x".to_vec(), 404),
        ("/channels/default/Ticker", b"x".to_vec(), 400),
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let answer = exchange(&mut stream, &keep_alive_post(addr, path, &body))
            .await
            .unwrap();
        assert_eq!(answer.status, status, "{answer:?}");
        assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
        assert!(
            closed_by_server(&mut stream, Duration::from_secs(10)).await,
            "the server said close and kept the connection"
        );
    }
    let head = raw(addr, &post(CHANNEL, Some("text/plain"), &[b'x'; 300]))
        .await
        .head;
    assert!(!head.to_ascii_lowercase().contains("x-wsbridge"), "{head}");

    // An ordinary keep-alive client: aiohttp with one session.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/keepalive_publisher.py");
    let url = standalone.url(CHANNEL);
    let out = python::python3_with(&["aiohttp"])
        .args([script, &url, "300", "5", "300", "5"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "aiohttp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413\n202\n413\n202\n");
}
