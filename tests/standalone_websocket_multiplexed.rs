//! The multiplexed WebSocket API of `wsbridge standalone` (`GET
//! /ws/{namespace}` with JSON commands) and tokens sent the way browsers
//! must send them (the Kubernetes subprotocol). The built binary runs as a
//! child process; the feed and the HTTP subscriber are real servers on
//! loopback; the clients are tokio-tungstenite and Python `websockets`.

mod standalone_support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use standalone_support::{Endpoint, Standalone, Subscriber, TempDir};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(10);

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `ticker`, bridged to the feed and subscribed over HTTP, and `news`,
/// with neither.
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
kind: Channel
metadata: {{name: news}}
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

struct Setup {
    _dir: TempDir,
    feed: Endpoint,
    http: Subscriber,
    standalone: Standalone,
}

async fn setup(name: &str) -> Setup {
    let dir = TempDir::new(name);
    let feed = Endpoint::start().await;
    let http = Subscriber::start(Duration::ZERO).await;
    let file = dir.write("config.yaml", &config(&feed.url(), &http.uri("/in")));
    let standalone = Standalone::start(&[&file], &dir.0).await;
    // The bridge must be up before a publish can go out through it.
    wait_ready(&standalone).await;
    Setup {
        _dir: dir,
        feed,
        http,
        standalone,
    }
}

/// Waits until the bridge's endpoint is connected (its metric says 1).
async fn wait_ready(standalone: &Standalone) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = standalone_support::http_get(&standalone.url("/metrics"))
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        if text
            .lines()
            .any(|l| l.starts_with("wsbridge_endpoint_connected{") && l.ends_with(" 1"))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never connected:\n{}",
            standalone.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next text frame, as JSON.
async fn next_json(ws: &mut Client) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the connection is open")
            .expect("a valid frame");
        match frame {
            Frame::Text(text) => return serde_json::from_str(text.as_str()).expect("JSON"),
            Frame::Close(close) => panic!("closed: {close:?}"),
            _ => continue,
        }
    }
}

async fn command(ws: &mut Client, command: Value) -> Value {
    ws.send(Frame::text(command.to_string())).await.unwrap();
    next_json(ws).await
}

#[tokio::test]
async fn one_connection_subscribes_publishes_and_unsubscribes_with_json_commands() {
    let Setup {
        _dir,
        mut feed,
        mut http,
        standalone,
    } = setup("ws-mux").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/default", standalone.addr))
        .await
        .expect("upgrade");

    let reply = command(
        &mut ws,
        json!({"method":"Subscribe","params":{"channel":"ticker"},"id":1}),
    )
    .await;
    assert_eq!(reply, json!({"id":1,"result":{"channel":"ticker"}}));
    let reply = command(
        &mut ws,
        json!({"method":"Subscribe","params":{"channel":"nope"},"id":"b"}),
    )
    .await;
    assert_eq!(reply["id"], "b");
    assert_eq!(reply["error"]["code"], 404);
    assert_eq!(reply["error"]["reason"], "ChannelNotFound");
    let reply = command(
        &mut ws,
        json!({"method":"Dance","params":{"channel":"ticker"},"id":2}),
    )
    .await;
    assert_eq!(reply["error"]["reason"], "UnknownMethod", "{reply}");

    // A feed message is pushed, a JSON object embedded as it is.
    feed.send(r#"{"px":101,"sym":"ABC"}"#).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"method":"Message","params":{"channel":"ticker","message":{"px":101,"sym":"ABC"}}})
    );

    // A Publish reaches the endpoint, the HTTP subscriber and this client.
    let reply = command(
        &mut ws,
        json!({"method":"Publish","params":{"channel":"ticker","message":{"order":7}},"id":3}),
    )
    .await;
    assert_eq!(reply["id"], 3, "{reply}");
    assert_eq!(reply["result"]["channel"], "ticker", "{reply}");
    assert!(
        reply["result"]["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{reply}"
    );
    assert_eq!(feed.next(WAIT).await.as_deref(), Some(r#"{"order":7}"#));
    http.next_containing(r#"{"order":7}"#, WAIT).await;
    assert_eq!(next_json(&mut ws).await["params"]["message"], json!({"order":7}));

    // Binary, published by a client of the single-channel form, is pushed
    // as base64.
    let (mut single, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/channels/default/ticker", standalone.addr))
            .await
            .expect("upgrade");
    single.send(Frame::binary(vec![0u8, 1, 2])).await.unwrap();
    assert_eq!(
        next_json(&mut ws).await["params"],
        json!({"channel":"ticker","message":"AAEC","encoding":"base64"})
    );

    // After Unsubscribe, ticker's messages stop; news still arrives.
    let reply = command(
        &mut ws,
        json!({"method":"Unsubscribe","params":{"channel":"ticker"},"id":4}),
    )
    .await;
    assert_eq!(
        reply,
        json!({"id":4,"result":{"channel":"ticker","subscribed":true}})
    );
    let reply = command(
        &mut ws,
        json!({"method":"Subscribe","params":{"channel":"news"},"id":5}),
    )
    .await;
    assert_eq!(reply["result"]["channel"], "news");
    feed.send("after-unsubscribe").await;
    // The HTTP subscriber has it, so the channel's clients were offered it.
    http.next_containing("after-unsubscribe", WAIT).await;
    standalone.publish_accepted("default/news", "headline").await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"method":"Message","params":{"channel":"news","message":"headline"}}),
        "the first push after unsubscribing from ticker is news's"
    );
}

#[tokio::test]
async fn a_token_offered_as_a_subprotocol_needs_the_wsbridge_subprotocol_beside_it() {
    let Setup { _dir, standalone, .. } = setup("ws-subprotocol").await;
    let url = format!("ws://{}/channels/default/ticker", standalone.addr);

    let mut request = url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "wsbridge, base64url.bearer.authorization.k8s.io.czNjcjN0"
            .parse()
            .unwrap(),
    );
    let (_, response) = tokio_tungstenite::connect_async(request).await.expect("upgrade");
    assert_eq!(response.headers()["sec-websocket-protocol"], "wsbridge");

    let mut request = url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "base64url.bearer.authorization.k8s.io.czNjcjN0".parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["reason"], "SubprotocolRequired", "{body}");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    assert!(!standalone.logs().contains("s3cr3t"), "the token is never logged");
}

#[tokio::test]
async fn a_python_websockets_client_uses_the_multiplexed_api_with_a_browser_style_token() {
    use tokio::io::AsyncBufReadExt;
    let Setup {
        _dir,
        mut feed,
        standalone,
        ..
    } = setup("ws-mux-python").await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/ws_multiplexed_client.py"
    );
    let url = format!("ws://{}/ws/default", standalone.addr);
    let mut child = tokio::process::Command::new("python3")
        .args([script, &url, "token-from-a-browser", "ticker", "4", "from-python"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("a line in time")
            .expect("stdout")
            .expect("the client printed a line (is `websockets` installed?)")
    };
    assert_eq!(next_line().await, "subprotocol wsbridge");
    let parse = |line: String| serde_json::from_str::<Value>(&line).unwrap();
    assert_eq!(
        parse(next_line().await),
        json!({"id":1,"result":{"channel":"ticker"}})
    );
    // The publish reply and its own push come in either order of arrival
    // relative to each other only through the hub, so read both.
    let (a, b) = (parse(next_line().await), parse(next_line().await));
    let (reply, push) = if a.get("id").is_some() { (a, b) } else { (b, a) };
    assert_eq!(reply["id"], 2, "{reply}");
    assert_eq!(push["params"]["message"], json!({"text":"from-python"}), "{push}");
    assert_eq!(
        feed.next(WAIT).await.as_deref(),
        Some(r#"{"text":"from-python"}"#)
    );
    feed.send("to-python").await;
    assert_eq!(
        parse(next_line().await),
        json!({"method":"Message","params":{"channel":"ticker","message":"to-python"}})
    );
    assert!(child.wait().await.unwrap().success());
    assert!(
        !standalone.logs().contains("token-from-a-browser"),
        "the token is never logged"
    );
}

#[tokio::test]
async fn a_headless_chromium_page_subscribes_with_the_browser_websocket_and_shows_the_messages() {
    use tokio::io::AsyncBufReadExt;
    assert!(
        std::path::Path::new("/usr/bin/chromedriver").exists(),
        "Chromium and ChromeDriver are missing: run tests/tools/chromium.sh (tests/run.sh does)"
    );
    let Setup {
        _dir,
        mut feed,
        standalone,
        ..
    } = setup("ws-browser").await;
    let page = format!(
        "file://{}/examples/browser/index.html#server=ws://{}&namespace=default&channel=ticker&token=browser-token",
        env!("CARGO_MANIFEST_DIR"),
        standalone.addr
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/browser_subscriber.py");
    let mut child = tokio::process::Command::new("python3")
        .args([script, &page, "from-the-browser", "2"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let browser_wait = Duration::from_secs(60);
    let mut next_line = async || {
        tokio::time::timeout(browser_wait, lines.next_line())
            .await
            .expect("a line in time")
            .expect("stdout")
            .expect("the browser driver printed a line")
    };
    assert_eq!(next_line().await, "subscribed");
    // The page's publish reaches the endpoint and comes back to the page.
    assert_eq!(feed.next(browser_wait).await.as_deref(), Some("from-the-browser"));
    assert_eq!(next_line().await, "message from-the-browser");
    feed.send(r#"{"tick":1}"#).await;
    assert_eq!(next_line().await, r#"message {"tick":1}"#);
    assert!(child.wait().await.unwrap().success());
    assert!(
        !standalone.logs().contains("browser-token"),
        "the token is never logged"
    );
}
