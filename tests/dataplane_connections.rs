//! The delivery client's connections, seen from a subscriber written
//! byte by byte on a loopback socket: requests reuse keep-alive
//! connections, never more than one per request in flight, and a
//! connection the subscriber closes is replaced without failing a request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, Uri};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use wsbridge_dataplane::delivery::{AttemptOutcome, HttpSender};

/// What the subscriber does with a connection after answering.
#[derive(Clone, Copy, PartialEq)]
enum AfterReply {
    KeepOpen,
    /// Answers `Connection: close` and closes.
    SayClose,
    /// Closes without a word, as a server whose keep-alive timeout expired.
    Drop,
}

#[derive(Default)]
struct Seen {
    connections: usize,
    /// Request line and `Host` header of every request.
    requests: Vec<(String, String)>,
}

/// An HTTP/1.1 subscriber answering 200 to every request.
async fn subscriber(after: AfterReply, delay: Duration) -> (Uri, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            record.lock().unwrap().connections += 1;
            let record = record.clone();
            tokio::spawn(async move {
                let mut conn = BufReader::new(tcp);
                loop {
                    let mut line = String::new();
                    if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let (mut host, mut length) = (String::new(), 0usize);
                    loop {
                        let mut header = String::new();
                        conn.read_line(&mut header).await.unwrap();
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        let (name, value) = header.split_once(':').unwrap();
                        match name.to_ascii_lowercase().as_str() {
                            "host" => host = value.trim().to_string(),
                            "content-length" => length = value.trim().parse().unwrap(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; length];
                    conn.read_exact(&mut body).await.unwrap();
                    record
                        .lock()
                        .unwrap()
                        .requests
                        .push((line.trim_end().to_string(), host));
                    tokio::time::sleep(delay).await;
                    let close = if after == AfterReply::SayClose {
                        "connection: close\r\n"
                    } else {
                        ""
                    };
                    let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{close}\r\nok");
                    if conn.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    if after != AfterReply::KeepOpen {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}/ingest?feed=1").parse().unwrap(), seen)
}

async fn post(sender: &HttpSender, uri: &Uri) -> AttemptOutcome {
    sender
        .post(uri, &HeaderMap::new(), b"{}", Duration::from_secs(5))
        .await
}

fn assert_ok(outcome: &AttemptOutcome) {
    assert!(
        matches!(outcome, AttemptOutcome::Response { status, .. } if status.as_u16() == 200),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn sequential_requests_share_one_connection_in_origin_form_with_a_host_header() {
    let (uri, seen) = subscriber(AfterReply::KeepOpen, Duration::ZERO).await;
    let sender = HttpSender::new();
    for _ in 0..50 {
        assert_ok(&post(&sender, &uri).await);
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.connections, 1, "one keep-alive connection");
    assert_eq!(seen.requests.len(), 50);
    let authority = uri.authority().unwrap().as_str();
    for (line, host) in &seen.requests {
        assert_eq!(line, "POST /ingest?feed=1 HTTP/1.1");
        assert_eq!(host, authority);
    }
}

#[tokio::test]
async fn concurrent_requests_open_a_connection_each_and_the_next_burst_reuses_them() {
    let (uri, seen) = subscriber(AfterReply::KeepOpen, Duration::from_millis(50)).await;
    let sender = HttpSender::new();
    for burst in 1..=3 {
        let outcomes = futures::future::join_all((0..40).map(|_| post(&sender, &uri))).await;
        outcomes.iter().for_each(assert_ok);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.requests.len(), 40 * burst);
        assert!(
            seen.connections <= 40,
            "burst {burst}: {} connections for 40 requests in flight",
            seen.connections
        );
    }
}

#[tokio::test]
async fn requests_beyond_the_per_origin_limit_wait_for_a_connection() {
    let (uri, seen) = subscriber(AfterReply::KeepOpen, Duration::from_millis(20)).await;
    let sender = HttpSender::new();
    let limit = wsbridge_dataplane::delivery::DEFAULT_CONNECTIONS_PER_ORIGIN;
    let outcomes = futures::future::join_all((0..limit + 100).map(|_| post(&sender, &uri))).await;
    outcomes.iter().for_each(assert_ok);
    let seen = seen.lock().unwrap();
    assert!(seen.connections <= limit, "{} connections", seen.connections);
}

#[tokio::test]
async fn a_subscriber_closing_its_connections_fails_no_request() {
    for after in [AfterReply::SayClose, AfterReply::Drop] {
        let (uri, seen) = subscriber(after, Duration::ZERO).await;
        let sender = HttpSender::new();
        for _ in 0..20 {
            assert_ok(&post(&sender, &uri).await);
            // Give the close time to arrive, as between real messages.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Announced closes need no pause: the connection is not reused.
        // (A silent close that races a request already written cannot be
        // told apart from a subscriber failing it: that is a retry.)
        let back_to_back = if after == AfterReply::SayClose { 20 } else { 0 };
        for _ in 0..back_to_back {
            assert_ok(&post(&sender, &uri).await);
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.requests.len(), 20 + back_to_back);
        assert_eq!(
            seen.connections,
            20 + back_to_back,
            "a new connection for every closed one"
        );
    }
}
