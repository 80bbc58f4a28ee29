//! Odd WebSocket traffic from the endpoint, written as raw bytes on a TCP
//! socket after a hand-made handshake: fragments, bad UTF-8, pings and pongs,
//! oversize frames, close codes, resets, refused handshakes, protocol
//! violations. The client reassembles what is valid, counts and logs what
//! is not, reconnects, and never panics; valid messages after a bad one
//! still flow.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use wsbridge_dataplane::endpoint::{
    ConnectionState, EndpointConfig, EndpointHandle, EndpointOptions, ReconnectPolicy,
};
use wsbridge_dataplane::{DataplaneMetrics, Message, PayloadKind};

const WAIT: Duration = Duration::from_secs(20);
const MAX: usize = 4096;

struct Client {
    handle: EndpointHandle,
    _config: watch::Sender<EndpointConfig>,
    inbound: mpsc::Receiver<Arc<Message>>,
    metrics: Arc<DataplaneMetrics>,
}

impl Client {
    fn spawn(url: &str) -> Self {
        let mut cfg = EndpointConfig::new(url);
        cfg.reconnect = ReconnectPolicy {
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        };
        cfg.keepalive = None;
        cfg.max_message_bytes = MAX;
        cfg.connect_timeout = Duration::from_secs(2);
        let metrics = Arc::new(DataplaneMetrics::unregistered());
        let (config, rx) = watch::channel(cfg);
        let (tx, inbound) = mpsc::channel(64);
        let handle = EndpointHandle::spawn(EndpointOptions::new("default/odd"), rx, tx, metrics.clone());
        Self {
            handle,
            _config: config,
            inbound,
            metrics,
        }
    }

    async fn next(&mut self) -> Arc<Message> {
        tokio::time::timeout(WAIT, self.inbound.recv())
            .await
            .expect("no inbound message within 20s")
            .unwrap()
    }

    async fn next_text(&mut self) -> String {
        let m = self.next().await;
        assert_eq!(m.payload().kind(), PayloadKind::Text);
        m.payload().as_text().unwrap().to_string()
    }

    async fn connected(&self) {
        assert!(self.handle.wait_connected(WAIT).await, "not connected within 20s");
    }

    async fn quiet(&mut self, d: Duration) {
        if let Ok(Some(m)) = tokio::time::timeout(d, self.inbound.recv()).await {
            panic!("unexpected inbound message {:?}", m.payload());
        }
    }

    fn dropped(&self, reason: &str) -> u64 {
        self.metrics.dropped_total(reason)
    }

    /// Waits for a Disconnected state whose reason contains `text`.
    async fn disconnected_with(&self, text: &str) -> String {
        let mut rx = self.handle.state();
        let state = tokio::time::timeout(
            WAIT,
            rx.wait_for(
                |s| matches!(s, ConnectionState::Disconnected { reason, .. } if reason.contains(text)),
            ),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "never disconnected with {text:?}; now {:?}",
                *self.handle.state().borrow()
            )
        })
        .unwrap()
        .clone();
        match state {
            ConnectionState::Disconnected { reason, .. } => reason,
            _ => unreachable!(),
        }
    }
}

/// A WebSocket endpoint made of raw sockets.
struct Raw {
    listener: TcpListener,
}

impl Raw {
    async fn start() -> Self {
        Self {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/odd", self.listener.local_addr().unwrap())
    }

    /// Accepts the next connection and reads its handshake request.
    async fn accept_request(&self) -> (TcpStream, String) {
        let (mut tcp, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("no connection within 20s")
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tcp.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        (tcp, String::from_utf8(head).unwrap())
    }

    /// Accepts the next connection and completes the handshake.
    async fn accept(&self) -> TcpStream {
        let (mut tcp, request) = self.accept_request().await;
        let key = request
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| v.trim().to_string())
            })
            .expect("a Sec-WebSocket-Key");
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        tcp.write_all(answer.as_bytes()).await.unwrap();
        tcp
    }
}

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// One unmasked (server) frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if len <= 0xffff {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

fn text(s: &str) -> Vec<u8> {
    frame(true, TEXT, s.as_bytes())
}

fn close(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    frame(true, CLOSE, &payload)
}

/// Reads one client frame (masked) and returns opcode and payload.
async fn read_client_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut h))
        .await
        .unwrap()
        .unwrap();
    let mut len = (h[1] & 0x7f) as u64;
    if len == 126 {
        let mut b = [0u8; 2];
        tcp.read_exact(&mut b).await.unwrap();
        len = u16::from_be_bytes(b) as u64;
    } else if len == 127 {
        let mut b = [0u8; 8];
        tcp.read_exact(&mut b).await.unwrap();
        len = u64::from_be_bytes(b);
    }
    let mut mask = [0u8; 4];
    tcp.read_exact(&mut mask).await.unwrap();
    let mut payload = vec![0u8; len as usize];
    tcp.read_exact(&mut payload).await.unwrap();
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    (h[0] & 0x0f, payload)
}

#[tokio::test]
async fn fragmented_messages_are_reassembled_with_control_frames_in_between() {
    let server = Raw::start().await;
    let mut client = Client::spawn(&server.url());
    let mut tcp = server.accept().await;
    let mut bytes = frame(false, TEXT, b"hel");
    bytes.extend(frame(true, PING, b"in-between"));
    bytes.extend(frame(false, CONTINUATION, b"lo wo"));
    bytes.extend(frame(true, PONG, b"unsolicited"));
    bytes.extend(frame(true, CONTINUATION, b"rld"));
    bytes.extend(frame(false, BINARY, &[0, 1]));
    bytes.extend(frame(true, CONTINUATION, &[2, 255]));
    tcp.write_all(&bytes).await.unwrap();
    assert_eq!(client.next_text().await, "hello world");
    let binary = client.next().await;
    assert_eq!(binary.payload().kind(), PayloadKind::Binary);
    assert_eq!(binary.payload().bytes().as_ref(), &[0, 1, 2, 255]);
    // The ping got its pong, with the same payload.
    let (opcode, payload) = read_client_frame(&mut tcp).await;
    assert_eq!((opcode, payload.as_slice()), (PONG, b"in-between".as_slice()));
    // A 125-byte ping (the most a control frame may carry) too.
    tcp.write_all(&frame(true, PING, &[7u8; 125])).await.unwrap();
    let (opcode, payload) = read_client_frame(&mut tcp).await;
    assert_eq!((opcode, payload.len()), (PONG, 125));
    tcp.write_all(&text("after")).await.unwrap();
    assert_eq!(client.next_text().await, "after");
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_is_counted_and_the_client_reconnects() {
    let server = Raw::start().await;
    let mut client = Client::spawn(&server.url());
    let mut tcp = server.accept().await;
    tcp.write_all(&text("before")).await.unwrap();
    assert_eq!(client.next_text().await, "before");
    tcp.write_all(&frame(true, TEXT, &[b'a', 0xc3, 0x28, 0xff]))
        .await
        .unwrap();
    client.disconnected_with("invalid UTF-8").await;
    assert_eq!(client.dropped("invalid_utf8"), 1);
    // Split across fragments, invalid only once reassembled.
    let mut tcp = server.accept().await;
    let mut bytes = frame(false, TEXT, &[b'o', b'k', 0xe2, 0x82]);
    bytes.extend(frame(true, CONTINUATION, &[0x28]));
    tcp.write_all(&bytes).await.unwrap();
    client.disconnected_with("invalid UTF-8").await;
    let mut tcp = server.accept().await;
    // A character split across fragments is fine.
    let euro = "€".as_bytes();
    let mut bytes = frame(false, TEXT, &euro[..1]);
    bytes.extend(frame(true, CONTINUATION, &euro[1..]));
    tcp.write_all(&bytes).await.unwrap();
    assert_eq!(client.next_text().await, "€");
    assert_eq!(client.dropped("invalid_utf8"), 2);
}

#[tokio::test]
async fn oversize_messages_are_dropped_and_counted_and_huge_frames_end_the_connection() {
    let server = Raw::start().await;
    let mut client = Client::spawn(&server.url());
    let mut tcp = server.accept().await;
    // Over the limit, under the ceiling: dropped, the connection stays.
    tcp.write_all(&text(&"x".repeat(MAX + 1))).await.unwrap();
    tcp.write_all(&text("small")).await.unwrap();
    assert_eq!(client.next_text().await, "small");
    assert_eq!(client.dropped("too_large"), 1);
    // A frame header announcing 1 GiB: refused before anything is buffered.
    let mut header = vec![0x80 | BINARY, 127];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    tcp.write_all(&header).await.unwrap();
    client.disconnected_with("").await;
    // Fragments that add up to more than the ceiling.
    let mut tcp = server.accept().await;
    client.connected().await;
    let chunk = vec![b'y'; 60 * 1024];
    tcp.write_all(&frame(false, TEXT, &chunk)).await.unwrap();
    let _ = tcp.write_all(&frame(false, CONTINUATION, &chunk)).await;
    let _ = tcp.write_all(&frame(true, CONTINUATION, &chunk)).await;
    client.disconnected_with("").await;
    let mut tcp = server.accept().await;
    tcp.write_all(&text("after")).await.unwrap();
    assert_eq!(client.next_text().await, "after");
    assert!(
        client.dropped("too_large") >= 2,
        "{}",
        client.dropped("too_large")
    );
}

#[tokio::test]
async fn close_frames_with_any_code_and_reason_lead_to_a_reconnect() {
    let server = Raw::start().await;
    let mut client = Client::spawn(&server.url());
    for code in [1000u16, 1001, 1011, 4000, 4999] {
        let mut tcp = server.accept().await;
        tcp.write_all(&text(&format!("before {code}"))).await.unwrap();
        assert_eq!(client.next_text().await, format!("before {code}"));
        tcp.write_all(&close(code, "going away, with a reason"))
            .await
            .unwrap();
        let reason = client.disconnected_with(&format!("close code {code}")).await;
        assert!(!reason.contains("with a reason"), "{reason}");
    }
    // A close frame with no code at all, and one with an invalid code.
    let mut tcp = server.accept().await;
    client.connected().await;
    tcp.write_all(&frame(true, CLOSE, b"")).await.unwrap();
    client.disconnected_with("close code none").await;
    let mut tcp = server.accept().await;
    client.connected().await;
    tcp.write_all(&close(999, "")).await.unwrap();
    client.disconnected_with("").await;
    let mut tcp = server.accept().await;
    tcp.write_all(&text("after")).await.unwrap();
    assert_eq!(client.next_text().await, "after");
}

#[tokio::test]
async fn abrupt_resets_and_half_frames_lead_to_a_reconnect() {
    let server = Raw::start().await;
    let mut client = Client::spawn(&server.url());
    // Reset (RST) right after the handshake.
    let tcp = server.accept().await;
    client.connected().await;
    // Linger 0 makes the close a reset; nothing is left to block on.
    #[allow(deprecated)]
    tcp.set_linger(Some(Duration::ZERO)).unwrap();
    drop(tcp);
    client.disconnected_with("").await;
    // Half a frame, then EOF.
    let mut tcp = server.accept().await;
    tcp.write_all(&text("complete")).await.unwrap();
    tcp.write_all(&frame(true, TEXT, b"truncated")[..5])
        .await
        .unwrap();
    assert_eq!(client.next_text().await, "complete");
    drop(tcp);
    client.disconnected_with("").await;
    let mut tcp = server.accept().await;
    tcp.write_all(&text("after")).await.unwrap();
    assert_eq!(client.next_text().await, "after");
    client.quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn protocol_violations_end_the_connection_and_valid_traffic_resumes() {
    let server = Raw::start().await;
    let mut client = Client::spawn(&server.url());
    let mut reserved_bits = frame(true, TEXT, b"x");
    reserved_bits[0] |= 0x40;
    let mut masked = frame(true, TEXT, b"x");
    masked[1] |= 0x80;
    masked.splice(2..2, [1, 2, 3, 4]);
    let violations: Vec<(&str, Vec<u8>)> = vec![
        ("a reserved opcode", frame(true, 0x3, b"x")),
        ("reserved bits", reserved_bits),
        ("a masked server frame", masked),
        ("a continuation without a start", frame(true, CONTINUATION, b"x")),
        ("a fragmented ping", frame(false, PING, b"x")),
        ("a 126-byte ping", frame(true, PING, &[0u8; 126])),
        ("a new message inside a fragmented one", {
            let mut b = frame(false, TEXT, b"a");
            b.extend(frame(true, TEXT, b"b"));
            b
        }),
    ];
    for (what, bytes) in violations {
        let mut tcp = server.accept().await;
        client.connected().await;
        tcp.write_all(&bytes).await.unwrap();
        let reason = client.disconnected_with("").await;
        assert!(!reason.is_empty(), "{what}");
    }
    let mut tcp = server.accept().await;
    tcp.write_all(&text("after")).await.unwrap();
    assert_eq!(client.next_text().await, "after");
    client.quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn refused_or_bogus_handshakes_are_retried_until_one_succeeds() {
    let server = Raw::start().await;
    let mut client = Client::spawn(&server.url());
    for (answer, expect) in [
        (
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
            "HTTP 500",
        ),
        (
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nContent-Length: 0\r\n\r\n",
            "HTTP 401",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nhello",
            "HTTP 200",
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: d3Jvbmc=\r\n\r\n",
            "",
        ),
        ("SSH-2.0-OpenSSH_9.6\r\n\r\n", ""),
    ] {
        let (mut tcp, request) = server.accept_request().await;
        assert!(request.starts_with("GET /odd HTTP/1.1"), "{request}");
        tcp.write_all(answer.as_bytes()).await.unwrap();
        let reason = client.disconnected_with(expect).await;
        assert!(!reason.is_empty());
    }
    // Accepted, then silence before the handshake is answered: timeout.
    let (_silent, _) = server.accept_request().await;
    client.disconnected_with("timed out").await;
    let mut tcp = server.accept().await;
    tcp.write_all(&text("finally")).await.unwrap();
    assert_eq!(client.next_text().await, "finally");
}
