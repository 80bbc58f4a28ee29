//! Remote clients of `wsbridge standalone`: WebSocket subscribers at a
//! channel's address, with tokio-tungstenite as the client. The built binary
//! runs as a child process; the feed and the HTTP subscriber are real
//! servers on loopback.

#[path = "support/python.rs"]
mod python;
mod standalone_support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use standalone_support::{Endpoint, Standalone, Subscriber, TempDir};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const WAIT: Duration = Duration::from_secs(10);

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn config(endpoint_url: &str, subscriber_uri: &str) -> String {
    format!(
        r#"
apiVersion: wsbridge.io/v1alpha1
kind: Endpoint
metadata: {{name: feed}}
spec:
  url: {endpoint_url}
  reconnect: {{initialDelay: 50ms, maxDelay: 500ms}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: ticker}}
spec: {{allowAnonymousPublish: true}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {{name: ticker-feed}}
spec: {{channel: ticker, endpoint: feed}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {{name: http}}
spec:
  channel: ticker
  subscriber: {{uri: "{subscriber_uri}"}}
"#
    )
}

/// A standalone process with the channel `ticker` bridged to a feed and
/// subscribed by an HTTP subscriber, started with `args`.
struct Setup {
    _dir: TempDir,
    feed: Endpoint,
    http: Subscriber,
    standalone: Standalone,
}

async fn setup(name: &str, args: &[&str]) -> Setup {
    let dir = TempDir::new(name);
    let feed = Endpoint::start().await;
    let http = Subscriber::start(Duration::ZERO).await;
    let file = dir.write("config.yaml", &config(&feed.url(), &http.uri("/in")));
    let standalone = Standalone::start_with(&[&file], &dir.0, args).await;
    Setup {
        _dir: dir,
        feed,
        http,
        standalone,
    }
}

async fn connect(standalone: &Standalone, channel: &str) -> Client {
    let url = format!("ws://{}/channels/default/{channel}", standalone.addr);
    let (ws, response) = tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket upgrade");
    assert_eq!(response.status(), 101);
    ws
}

/// The next data frame within [`WAIT`].
async fn next_frame(ws: &mut Client) -> Frame {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the connection is open")
            .expect("a valid frame");
        if matches!(frame, Frame::Text(_) | Frame::Binary(_) | Frame::Close(_)) {
            return frame;
        }
    }
}

/// The process's `/metrics` text.
async fn metrics(standalone: &Standalone) -> String {
    let (_, body) = standalone_support::http_get(&standalone.url("/metrics"))
        .await
        .unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

async fn wait_clients(standalone: &Standalone, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let line = format!("wsbridge_remote_clients{{channel=\"default/ticker\"}} {n}");
    loop {
        if metrics(standalone).await.lines().any(|l| l == line) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never saw {line}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn websocket_clients_get_every_channel_message_as_a_frame_and_their_frames_are_publishes() {
    let Setup {
        _dir,
        mut feed,
        mut http,
        standalone,
    } = setup("ws-clients", &[]).await;
    let mut a = connect(&standalone, "ticker").await;
    let mut b = connect(&standalone, "ticker").await;
    wait_clients(&standalone, 2).await;

    // An endpoint message reaches both clients as text.
    feed.send(r#"{"tick":1}"#).await;
    for ws in [&mut a, &mut b] {
        assert_eq!(next_frame(ws).await, Frame::text(r#"{"tick":1}"#));
    }

    // An HTTP publish reaches both clients.
    let (code, _) =
        standalone_support::http_post(&standalone.url("/channels/default/ticker"), "published".into()).await;
    assert_eq!(code, 202);
    for ws in [&mut a, &mut b] {
        assert_eq!(next_frame(ws).await, Frame::text("published"));
    }
    assert_eq!(feed.next(WAIT).await.as_deref(), Some("published"));

    // A frame a client sends is a publish: the endpoint, the HTTP subscriber
    // and the other client get it, and the sender too (it subscribes).
    a.send(Frame::text("from-a")).await.unwrap();
    assert_eq!(feed.next(WAIT).await.as_deref(), Some("from-a"));
    http.next_containing("from-a", WAIT).await;
    assert_eq!(next_frame(&mut b).await, Frame::text("from-a"));
    assert_eq!(next_frame(&mut a).await, Frame::text("from-a"));

    b.send(Frame::binary(vec![1u8, 2, 255])).await.unwrap();
    assert_eq!(next_frame(&mut a).await, Frame::binary(vec![1u8, 2, 255]));

    // A client that leaves is no longer counted.
    a.close(None).await.unwrap();
    wait_clients(&standalone, 1).await;
}

/// The slow client's send buffer in wsbridge.
const BUFFER: usize = 256 * 1024;

/// The most a loopback TCP connection may buffer: the largest send buffer
/// plus the largest receive buffer the kernel autotunes to.
fn kernel_buffer_max() -> usize {
    let max = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().last()?.parse::<usize>().ok())
            .unwrap_or(8 * 1024 * 1024)
    };
    max("/proc/sys/net/ipv4/tcp_wmem") + max("/proc/sys/net/ipv4/tcp_rmem")
}

#[tokio::test]
async fn a_client_that_falls_behind_is_closed_as_too_slow_while_another_gets_everything() {
    let buffer = BUFFER.to_string();
    let Setup {
        _dir,
        feed,
        http: _http,
        standalone,
    } = setup("ws-slow", &["--client-buffer-bytes", &buffer]).await;
    let slow = connect(&standalone, "ticker").await;
    let mut fast = connect(&standalone, "ticker").await;
    wait_clients(&standalone, 2).await;

    // The fast client reads each batch before the next is sent, so it never
    // has more than a batch waiting; the slow one never reads, so the
    // kernel's buffers fill, then its send buffer in wsbridge.
    let message = "x".repeat(16 * 1024);
    let batch = 8;
    // More than the kernel can hold for the slow client, whatever it
    // autotunes its socket buffers to, plus wsbridge's buffer.
    let batches = (kernel_buffer_max() + BUFFER) * 5 / 4 / (batch * message.len()) + 1;
    let total = batch * batches;
    for _ in 0..batches {
        for _ in 0..batch {
            feed.send(&message).await;
        }
        for _ in 0..batch {
            match next_frame(&mut fast).await {
                Frame::Text(t) => assert_eq!(t.len(), message.len()),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }
    wait_clients(&standalone, 1).await;
    let metrics = metrics(&standalone).await;
    assert!(
        metrics.contains(
            r#"wsbridge_remote_clients_disconnected_total{channel="default/ticker",reason="slow"} 1"#
        ),
        "the slow client is counted:\n{metrics}"
    );

    // Reading now, the slow client finds fewer messages than were sent, then
    // the close frame that says why.
    let mut slow = slow;
    let mut received = 0;
    let close = loop {
        match tokio::time::timeout(WAIT, slow.next()).await {
            Ok(Some(Ok(Frame::Text(_)))) => received += 1,
            Ok(Some(Ok(Frame::Close(close)))) => break close,
            Ok(Some(Ok(_))) => {}
            other => panic!("expected frames then a close frame, got {other:?} after {received} messages"),
        }
    };
    assert!(
        received < total,
        "the slow client was cut off ({received} of {total})"
    );
    let close = close.expect("a close frame with a code");
    assert_eq!(close.code, CloseCode::Policy);
    assert!(close.reason.contains("too slow"), "{}", close.reason);
}

#[tokio::test]
async fn a_plain_get_or_an_unknown_channel_is_refused_with_a_json_reason() {
    let Setup {
        _dir,
        feed: _feed,
        http: _http,
        standalone,
    } = setup("ws-refused", &[]).await;

    let (code, body) = standalone_support::http_get(&standalone.url("/channels/default/ticker"))
        .await
        .unwrap();
    assert_eq!(code, 426);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["reason"], "UpgradeRequired");

    let url = format!("ws://{}/channels/default/nope", standalone.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 404);
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["reason"], "ChannelNotFound");
        }
        other => panic!("expected 404, got {other:?}"),
    }
}

/// Runs `wsbridge ARGS` to completion with `stdin`: (success, stdout, stderr).
fn wsbridge(args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn tail_prints_what_publish_sends() {
    use tokio::io::AsyncBufReadExt;
    let Setup {
        _dir,
        feed: _feed,
        http: _http,
        standalone,
    } = setup("ws-tail", &[]).await;
    let server = format!("http://{}", standalone.addr);

    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(["tail", "default/ticker", "--server", &server])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    wait_clients(&standalone, 1).await;

    let (ok, out, err) = wsbridge(&["publish", "default/ticker", "hello", "--server", &server], "");
    assert!(ok, "{err}");
    let answer: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(answer["channel"], "default/ticker");
    let (ok, out, err) = wsbridge(
        &["publish", "default/ticker", "-", "--server", &server],
        "one\ntwo\n",
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "one answer a line: {out}");
    let (ok, _, _) = wsbridge(
        &["publish", "default/ticker", "--binary", "--server", &server],
        "bin\n",
    );
    assert!(ok);

    for expected in ["hello", "one", "two", "base64:Ymlu"] {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(line.as_deref(), Some(expected));
    }

    let (ok, _, err) = wsbridge(&["publish", "default/nope", "x", "--server", &server], "");
    assert!(!ok);
    assert!(err.contains("404") && err.contains("ChannelNotFound"), "{err}");
    let (ok, _, err) = wsbridge(&["tail", "default/nope", "--server", &server], "");
    assert!(!ok);
    assert!(err.contains("404") && err.contains("ChannelNotFound"), "{err}");
    tail.kill().await.unwrap();
}

#[tokio::test]
async fn a_client_that_does_not_answer_pings_is_disconnected() {
    let args = [
        "--client-ping-interval",
        "200ms",
        "--client-pong-timeout",
        "300ms",
    ];
    let Setup {
        _dir,
        feed: _feed,
        http: _http,
        standalone,
    } = setup("ws-pong", &args).await;
    // Connected, then never read from: its library never sees the pings,
    // so it never answers them.
    let mut silent = connect(&standalone, "ticker").await;
    wait_clients(&standalone, 1).await;
    wait_clients(&standalone, 0).await;
    let metrics = metrics(&standalone).await;
    assert!(
        metrics.contains(
            r#"wsbridge_remote_clients_disconnected_total{channel="default/ticker",reason="unresponsive"} 1"#
        ),
        "{metrics}"
    );
    match next_frame(&mut silent).await {
        Frame::Close(Some(close)) => {
            assert_eq!(close.code, CloseCode::Policy);
            assert!(close.reason.contains("no pong"), "{}", close.reason);
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn a_python_websockets_client_subscribes_and_publishes() {
    use tokio::io::AsyncBufReadExt;
    let Setup {
        _dir,
        mut feed,
        mut http,
        standalone,
    } = setup("ws-python", &[]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/ws_channel_client.py");
    let url = format!("ws://{}/channels/default/ticker", standalone.addr);
    let mut child = python::python3_with(&["websockets"])
        .args([script, &url, "3", "from-python"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(next_line().await.as_deref(), Some("connected"));

    // Its frame is a publish: the endpoint and the HTTP subscriber get it,
    // and so does the client itself, being a subscriber.
    assert_eq!(feed.next(WAIT).await.as_deref(), Some("from-python"));
    http.next_containing("from-python", WAIT).await;
    assert_eq!(next_line().await.as_deref(), Some("from-python"));

    feed.send("from-the-feed").await;
    assert_eq!(next_line().await.as_deref(), Some("from-the-feed"));
    let (ok, _, err) = wsbridge(
        &[
            "publish",
            "default/ticker",
            "--binary",
            "--server",
            &format!("http://{}", standalone.addr),
        ],
        "AB\n",
    );
    assert!(ok, "{err}");
    assert_eq!(next_line().await.as_deref(), Some("binary:4142"));
    assert!(child.wait().await.unwrap().success());
}

#[tokio::test]
async fn clients_of_a_channel_removed_from_the_configuration_hear_that_it_was_deleted() {
    let dir = TempDir::new("ws-deleted");
    let feed = Endpoint::start().await;
    let http = Subscriber::start(Duration::ZERO).await;
    dir.write("config.yaml", &config(&feed.url(), &http.uri("/in")));
    let extra = dir.write(
        "extra.yaml",
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: extra}\nspec: {allowAnonymousPublish: true}\n",
    );
    let standalone = Standalone::start_with(&[&dir.0], &dir.0, &[]).await;
    let mut single = connect(&standalone, "extra").await;
    let url = format!("ws://{}/ws/default", standalone.addr);
    let (mut multiplexed, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    for channel in ["extra", "ticker"] {
        let subscribe =
            serde_json::json!({"method": "Subscribe", "params": {"channel": channel}, "id": channel});
        multiplexed
            .send(Frame::text(subscribe.to_string()))
            .await
            .unwrap();
        let Frame::Text(reply) = next_frame(&mut multiplexed).await else {
            panic!("a text reply")
        };
        assert!(reply.contains("result"), "{reply}");
    }

    std::fs::remove_file(&extra).unwrap();
    standalone.wait_log("configuration changed; applying", WAIT).await;

    match next_frame(&mut single).await {
        Frame::Close(Some(close)) => {
            assert_eq!(close.code, CloseCode::Away);
            assert_eq!(close.reason.as_str(), "channel default/extra was deleted");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    let Frame::Text(push) = next_frame(&mut multiplexed).await else {
        panic!("a text push")
    };
    let push: serde_json::Value = serde_json::from_str(&push).unwrap();
    assert_eq!(
        push,
        serde_json::json!({"method": "Unsubscribed", "params": {
            "channel": "extra", "reason": "ChannelDeleted", "message": "channel default/extra was deleted"}})
    );
    // The connection keeps its other channel.
    feed.send("still-here").await;
    let Frame::Text(message) = next_frame(&mut multiplexed).await else {
        panic!("a text push")
    };
    assert!(message.contains("still-here"), "{message}");
}
