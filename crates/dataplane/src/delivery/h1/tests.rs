//! Unit tests of the HTTP/1.1 exchange, against a test server on a local socket.

use super::*;
use http::HeaderValue;
use tokio::net::TcpListener;

/// One request as the test server read it.
#[derive(Debug)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

/// Reads one request (head and `Content-Length` body) from `socket`.
async fn read_request(socket: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Seen> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(len) = request.parse(pending).expect("a well-formed request") {
            let length: usize = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .expect("a Content-Length");
            while pending.len() < len + length {
                if socket.read_buf(pending).await.ok()? == 0 {
                    return None;
                }
            }
            let head = String::from_utf8(pending[..len].to_vec()).unwrap();
            let body = pending[len..len + length].to_vec();
            pending.drain(..len + length);
            return Some(Seen { head, body });
        }
        if socket.read_buf(pending).await.ok()? == 0 {
            return None;
        }
    }
}

/// A server on loopback that answers each request on one connection
/// with the next of `answers`, written in pieces of `piece` bytes, and
/// reports what it read. After the last answer it closes.
async fn server(
    answers: Vec<&'static [u8]>,
    piece: usize,
) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut pending = Vec::new();
        for answer in answers {
            let Some(seen) = read_request(&mut socket, &mut pending).await else {
                return;
            };
            let _ = tx.send(seen);
            for part in answer.chunks(piece) {
                socket.write_all(part).await.unwrap();
                socket.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        }
    });
    (port, rx)
}

async fn connect(port: u16) -> Connection {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    Connection::new(Stream::Plain(tcp))
}

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("ce-id", HeaderValue::from_static("id-1"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Ignored: framing and routing are the client's.
    h.insert(header::HOST, HeaderValue::from_static("evil.example"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
    h
}

async fn post(c: &mut Connection, body: &[u8]) -> Result<Response, ExchangeError> {
    c.post(
        b"sink.local:8080",
        "/in?x=1",
        &HeaderLines::from_map(&headers()),
        body,
    )
    .await
}

const OK_LENGTH: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
const OK_CHUNKED: &[u8] =
    b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nx-trailer: 1\r\n\r\n";
const EARLY_HINTS_THEN_OK: &[u8] =
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";

#[tokio::test]
async fn keep_alive_exchanges_in_every_framing_even_byte_by_byte() {
    for piece in [usize::MAX, 1] {
        let (port, mut seen) = server(vec![OK_LENGTH, OK_CHUNKED, EARLY_HINTS_THEN_OK], piece).await;
        let mut c = connect(port).await;
        let big = vec![b'x'; INLINE_BODY + 10];
        for (body, status) in [(&b"{\"a\":1}"[..], 200), (&big[..], 202), (&b""[..], 204)] {
            let r = post(&mut c, body).await.unwrap();
            assert_eq!(r.status.as_u16(), status);
            assert!(r.reusable, "{status} leaves the connection reusable");
            assert!(c.input.is_empty());
            let s = seen.recv().await.unwrap();
            assert_eq!(s.body, body);
            assert!(
                s.head
                    .starts_with("POST /in?x=1 HTTP/1.1\r\nhost: sink.local:8080\r\n"),
                "{}",
                s.head
            );
            assert!(
                s.head.contains("ce-id: id-1\r\n") && s.head.contains("content-type: application/json\r\n")
            );
            assert!(s.head.contains(&format!("content-length: {}\r\n", body.len())));
            assert!(!s.head.contains("evil") && !s.head.contains("999"), "{}", s.head);
        }
        // The server closed after its last answer: the idle connection says so.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while c.is_open() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the closed connection still looks open"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn responses_that_end_the_connection_are_not_reused() {
    let cases: [(&'static [u8], u16, Option<Duration>); 6] = [
        (b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n", 503, Some(Duration::from_secs(7))),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 200, None),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil close", 200, None),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", 200, None),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", 200, None),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", 200, None),
    ];
    for (answer, status, retry_after) in cases {
        let (port, _seen) = server(vec![answer, OK_LENGTH], usize::MAX).await;
        let mut c = connect(port).await;
        let r = post(&mut c, b"m").await.unwrap();
        assert_eq!(
            (r.status.as_u16(), r.retry_after, r.reusable),
            (status, retry_after, false),
            "{answer:?}"
        );
    }
}

#[tokio::test]
async fn a_chunked_body_beyond_the_bound_is_not_read() {
    let mut answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let chunk = format!(
        "{:x}\r\n{}\r\n",
        MAX_RESPONSE_BODY + 1,
        "y".repeat(MAX_RESPONSE_BODY + 1)
    );
    answer.extend_from_slice(chunk.as_bytes());
    answer.extend_from_slice(b"0\r\n\r\n");
    let (port, _seen) = server(vec![Box::leak(answer.into_boxed_slice())], usize::MAX).await;
    let mut c = connect(port).await;
    let r = post(&mut c, b"m").await.unwrap();
    assert_eq!((r.status, r.reusable), (StatusCode::OK, false));
}

#[tokio::test]
async fn malformed_responses_are_errors_not_panics() {
    let cases: [&'static [u8]; 4] = [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    ];
    for answer in cases {
        let (port, _seen) = server(vec![answer], usize::MAX).await;
        let mut c = connect(port).await;
        let e = post(&mut c, b"m").await.unwrap_err();
        assert_eq!(e.error.kind(), io::ErrorKind::InvalidData, "{answer:?}: {e:?}");
        assert!(!e.before_response);
    }
}

#[tokio::test]
async fn an_endless_head_is_refused_at_the_bound() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut pending = Vec::new();
        read_request(&mut socket, &mut pending).await.unwrap();
        socket.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        let line = b"x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        while socket.write_all(line).await.is_ok() {}
    });
    let mut c = connect(port).await;
    let e = post(&mut c, b"m").await.unwrap_err();
    assert_eq!(e.error.kind(), io::ErrorKind::InvalidData, "{e:?}");
}

#[tokio::test]
async fn a_connection_closed_before_any_response_says_so() {
    let (port, mut seen) = server(vec![], usize::MAX).await;
    let mut c = connect(port).await;
    // The server closes without reading: the request may or may not have
    // been written, but nothing came back.
    let _ = seen.recv().await;
    let e = post(&mut c, b"m").await.unwrap_err();
    assert!(e.before_response, "{e:?}");
    // A close in the middle of a head is not "before".
    let (port, _seen) = server(vec![b"HTTP/1.1 200 OK\r\nContent-Len"], usize::MAX).await;
    let mut c = connect(port).await;
    let e = post(&mut c, b"m").await.unwrap_err();
    assert_eq!(
        (e.error.kind(), e.before_response),
        (io::ErrorKind::UnexpectedEof, false)
    );
}

#[tokio::test]
async fn a_body_that_breaks_off_or_is_malformed_keeps_the_status_but_not_the_connection() {
    let cases: [&'static [u8]; 5] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
        // A small chunk, then a size that would wrap the sum of sizes.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\nb",
    ];
    for answer in cases {
        let (port, _seen) = server(vec![answer], usize::MAX).await;
        let mut c = connect(port).await;
        let r = post(&mut c, b"m").await.unwrap();
        assert_eq!((r.status, r.reusable), (StatusCode::OK, false), "{answer:?}");
    }
}

#[test]
fn header_lines_refuse_what_could_split_a_request() {
    let mut lines = HeaderLines::default();
    assert!(lines.push(&header::CONTENT_TYPE, b"text/plain;\tcharset=utf-8"));
    assert!(!lines.push(&header::HOST, b"evil"));
    assert!(!lines.push(&header::TRANSFER_ENCODING, b"chunked"));
    for bad in [&b"a\r\nx-injected: 1"[..], b"a\nb", b"a\0b", b"\x7f"] {
        assert!(!lines.push(&header::ACCEPT, bad), "{bad:?}");
    }
    assert_eq!(lines.as_bytes(), b"content-type: text/plain;\tcharset=utf-8\r\n");
    let mut token = HeaderMap::new();
    token.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer planted"));
    assert!(!format!("{:?}", HeaderLines::from_map(&token)).contains("planted"));
}

#[test]
fn heads_parse_into_framing_and_reuse() {
    let parse = |raw: &[u8]| parse_head(raw).unwrap().unwrap().1;
    let h = parse(b"HTTP/1.1 429 Too Many\r\nretry-after:  3 \r\ncontent-length: 0\r\n\r\n");
    assert_eq!(
        h,
        Head {
            status: 429,
            framing: Framing::Length(0),
            keep_alive: true,
            retry_after: Some(Duration::from_secs(3))
        }
    );
    // Both framings: chunked wins, and the connection is not trusted after.
    let h = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n");
    assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
    // An HTTP-date Retry-After: a date already past means "retry now".
    let h = parse(b"HTTP/1.1 503 x\r\nRetry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n");
    assert_eq!(h.retry_after, Some(Duration::ZERO));
    // HTTP/1.0 keeps the connection only when it says so.
    let h = parse(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 0\r\n\r\n");
    assert!(h.keep_alive);
    assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
}
