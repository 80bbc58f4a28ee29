//! WebSocket endpoint client scenarios against real tokio-tungstenite servers
//! on loopback (plain and TLS).
//!
//! Over 500 lines as one job: the endpoint client's scenario family; its harness serves no other test.

mod support;

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use support::peers::{ServerOpts, WsServer, tls_material};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsbridge_core::SecretString;
use wsbridge_dataplane::endpoint::{
    ConnectionState, Credentials, EndpointConfig, EndpointHandle, EndpointOptions, KeepAlive,
    ReconnectPolicy, SendError,
};
use wsbridge_dataplane::{DataplaneMetrics, Message, Origin, Payload, PayloadKind};

fn config(url: &str) -> EndpointConfig {
    let mut c = EndpointConfig::new(url);
    c.reconnect = ReconnectPolicy {
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(500),
    };
    c.keepalive = Some(KeepAlive {
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(5),
    });
    c.inbound_source = "/namespaces/default/bridges/feed".into();
    c
}

struct Client {
    handle: EndpointHandle,
    config: watch::Sender<EndpointConfig>,
    inbound: mpsc::Receiver<Arc<Message>>,
    metrics: Arc<DataplaneMetrics>,
}

impl Client {
    fn spawn(cfg: EndpointConfig) -> Self {
        let metrics = Arc::new(DataplaneMetrics::unregistered());
        let (config, rx) = watch::channel(cfg);
        let (tx, inbound) = mpsc::channel(64);
        let handle = EndpointHandle::spawn(EndpointOptions::new("default/feed"), rx, tx, metrics.clone());
        Self {
            handle,
            config,
            inbound,
            metrics,
        }
    }

    async fn next_inbound(&mut self) -> Arc<Message> {
        tokio::time::timeout(Duration::from_secs(20), self.inbound.recv())
            .await
            .expect("no inbound message within 20s")
            .unwrap()
    }

    async fn connected(&self) {
        assert!(
            self.handle.wait_connected(Duration::from_secs(20)).await,
            "not connected within 20s"
        );
    }

    fn reconnects(&self) -> u64 {
        let labels = wsbridge_dataplane::metrics::EndpointLabels {
            endpoint: "default/feed".into(),
        };
        self.metrics.reconnects.get_or_create(&labels).get()
    }

    /// Every state the client goes through from now on.
    fn record_states(&self) -> Arc<Mutex<Vec<ConnectionState>>> {
        let states = Arc::new(Mutex::new(Vec::new()));
        let mut rx = self.handle.state();
        let sink = states.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let s = rx.borrow_and_update().clone();
                sink.lock().unwrap().push(s);
            }
        });
        states
    }
}

fn text_of(msg: &WsMessage) -> String {
    match msg {
        WsMessage::Text(t) => t.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

#[tokio::test]
async fn the_open_message_is_sent_after_every_connect_including_reconnects() {
    let mut server = WsServer::start(ServerOpts::default()).await;
    let mut cfg = config(&server.url());
    cfg.open_messages = vec![r#"{"op":"subscribe","channel":"ticker"}"#.into(), "second".into()];
    let client = Client::spawn(cfg);
    for round in 1..=3 {
        let (n, _) = server.next_connected().await;
        assert_eq!(n, round);
        let (n1, first) = server.next_frame().await;
        let (n2, second) = server.next_frame().await;
        assert_eq!((n1, n2), (round, round));
        assert_eq!(text_of(&first), r#"{"op":"subscribe","channel":"ticker"}"#);
        assert_eq!(text_of(&second), "second");
        client.connected().await;
        if round < 3 {
            server.restart().await;
        }
    }
    assert_eq!(client.reconnects(), 2);
}

#[tokio::test]
async fn bearer_credentials_headers_and_subprotocol_are_presented_in_the_handshake() {
    let mut server = WsServer::start(ServerOpts {
        select_subprotocol: true,
        ..Default::default()
    })
    .await;
    let mut cfg = config(&server.url());
    cfg.credentials = Credentials::Bearer(SecretString::new("feed-token-1"));
    cfg.subprotocols = vec!["feed.v1".into(), "feed.v2".into()];
    cfg.headers = vec![("X-Client".into(), "wsbridge".into())];
    cfg.secret_headers = vec![("X-Api-Key".into(), SecretString::new("key-42"))];
    let client = Client::spawn(cfg);
    let (_, headers) = server.next_connected().await;
    assert_eq!(headers["authorization"], "Bearer feed-token-1");
    assert_eq!(headers["sec-websocket-protocol"], "feed.v1, feed.v2");
    assert_eq!(headers["x-client"], "wsbridge");
    assert_eq!(headers["x-api-key"], "key-42");
    client.connected().await;
    assert_eq!(
        *client.handle.state().borrow(),
        ConnectionState::Connected {
            subprotocol: Some("feed.v1".into())
        }
    );
}

#[tokio::test]
async fn basic_credentials_are_presented_in_the_handshake() {
    let mut server = WsServer::start(ServerOpts::default()).await;
    let mut cfg = config(&server.url());
    cfg.credentials = Credentials::Basic {
        username: SecretString::new("aladdin"),
        password: SecretString::new("opensesame"),
    };
    let _client = Client::spawn(cfg);
    let (_, headers) = server.next_connected().await;
    assert_eq!(headers["authorization"], "Basic YWxhZGRpbjpvcGVuc2VzYW1l");
}

#[tokio::test]
async fn a_port_override_replaces_the_port_of_the_url() {
    let mut server = WsServer::start(ServerOpts::default()).await;
    // A URL with a port nobody listens on, overridden by the real one.
    let mut cfg = config("ws://127.0.0.1:9/stream");
    cfg.port = Some(server.addr.port());
    let client = Client::spawn(cfg);
    server.next_connected().await;
    client.connected().await;
}

#[tokio::test]
async fn text_and_binary_flow_in_from_the_endpoint_and_published_messages_flow_out() {
    let mut server = WsServer::start(ServerOpts::default()).await;
    let mut cfg = config(&server.url());
    cfg.subscriber_token = Some(SecretString::new("bridge-token"));
    let mut client = Client::spawn(cfg);
    server.next_connected().await;
    client.connected().await;

    server.send(WsMessage::text(r#"{"price":1}"#));
    server.send(WsMessage::text("plain"));
    server.send(WsMessage::Binary(Bytes::from_static(&[1, 2, 3, 255])));
    let json = client.next_inbound().await;
    assert_eq!(json.payload().as_text(), Some(r#"{"price":1}"#));
    assert_eq!(json.content_type(), "application/json");
    assert_eq!(json.origin(), Origin::Endpoint);
    assert_eq!(json.source(), "/namespaces/default/bridges/feed");
    assert_eq!(json.http_headers()["authorization"], "Bearer bridge-token");
    let plain = client.next_inbound().await;
    assert_eq!(plain.payload().as_text(), Some("plain"));
    assert_eq!(plain.content_type(), "text/plain; charset=utf-8");
    let bin = client.next_inbound().await;
    assert_eq!(bin.payload().kind(), PayloadKind::Binary);
    assert_eq!(&bin.payload().bytes()[..], &[1, 2, 3, 255]);
    assert_ne!(json.id(), plain.id());

    let out_text = Message::new(
        Payload::text("to the feed"),
        Origin::Published,
        "/channels/default/ticker",
    );
    let out_bin = Message::new(
        Payload::binary(vec![9u8, 8]),
        Origin::Published,
        "/channels/default/ticker",
    );
    client.handle.try_send(Arc::new(out_text)).unwrap();
    client.handle.try_send(Arc::new(out_bin)).unwrap();
    let (_, f1) = server.next_frame().await;
    let (_, f2) = server.next_frame().await;
    assert_eq!(text_of(&f1), "to the feed");
    assert_eq!(f2, WsMessage::Binary(Bytes::from_static(&[9, 8])));
}

#[tokio::test]
async fn publishing_is_refused_when_there_is_no_connection_or_the_message_is_too_large() {
    // A port with nobody listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = config(&format!("ws://127.0.0.1:{port}/"));
    cfg.max_message_bytes = 10;
    let client = Client::spawn(cfg);
    let mut state = client.handle.state();
    let reason = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let ConnectionState::Disconnected { reason, retry_in } = state.borrow_and_update().clone() {
                assert!(retry_in.is_some());
                return reason;
            }
            state.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    assert!(reason.contains("I/O") || reason.contains("refused"), "{reason}");
    let small = Arc::new(Message::new(Payload::text("hi"), Origin::Published, "/c"));
    assert_eq!(client.handle.try_send(small), Err(SendError::NotConnected));
    let big = Arc::new(Message::new(
        Payload::text("x".repeat(11)),
        Origin::Published,
        "/c",
    ));
    assert_eq!(
        client.handle.try_send(big),
        Err(SendError::TooLarge { size: 11, max: 10 })
    );
}

#[tokio::test]
async fn an_oversize_inbound_message_is_dropped_and_counted_and_the_connection_stays() {
    let mut server = WsServer::start(ServerOpts::default()).await;
    let mut cfg = config(&server.url());
    cfg.max_message_bytes = 1000;
    let mut client = Client::spawn(cfg);
    server.next_connected().await;
    client.connected().await;
    server.send(WsMessage::text("x".repeat(5000)));
    server.send(WsMessage::text("small"));
    let msg = client.next_inbound().await;
    assert_eq!(msg.payload().as_text(), Some("small"));
    assert_eq!(client.metrics.dropped_total("too_large"), 1);
    assert_eq!(client.reconnects(), 0);
    assert_eq!(server.connections.load(AtomicOrdering::SeqCst), 1);
}

#[tokio::test]
async fn an_inbound_message_above_the_protocol_ceiling_is_counted_and_the_client_reconnects() {
    let mut server = WsServer::start(ServerOpts::default()).await;
    let mut cfg = config(&server.url());
    cfg.max_message_bytes = 1000;
    let mut client = Client::spawn(cfg);
    server.next_connected().await;
    client.connected().await;
    server.send(WsMessage::Binary(Bytes::from(vec![7u8; 200_000])));
    let (n, _) = server.next_connected().await;
    assert_eq!(n, 2, "the client reconnected");
    client.connected().await;
    assert_eq!(client.metrics.dropped_total("too_large"), 1);
    server.send(WsMessage::text("after"));
    assert_eq!(client.next_inbound().await.payload().as_text(), Some("after"));
}

#[tokio::test]
async fn a_server_that_stops_answering_pings_is_detected_and_replaced() {
    let mut server = WsServer::start(ServerOpts {
        mute_first: true,
        ..Default::default()
    })
    .await;
    let mut cfg = config(&server.url());
    cfg.keepalive = Some(KeepAlive {
        interval: Duration::from_millis(300),
        timeout: Duration::from_millis(700),
    });
    let client = Client::spawn(cfg);
    let states = client.record_states();
    let (n, _) = server.next_connected().await;
    assert_eq!(n, 1);
    let started = Instant::now();
    let (n, _) = server.next_connected().await;
    assert_eq!(n, 2, "a new connection replaced the mute one");
    assert!(started.elapsed() < Duration::from_secs(15));
    client.connected().await;
    assert_eq!(client.reconnects(), 1);
    let states = states.lock().unwrap().clone();
    assert!(
        states
            .iter()
            .any(|s| matches!(s, ConnectionState::Disconnected { reason, .. } if reason.contains("pong"))),
        "{states:?}"
    );
    // Pings on the healthy connection are answered: it stays up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(client.handle.is_connected());
    assert_eq!(server.connections.load(AtomicOrdering::SeqCst), 2);
}

#[tokio::test]
async fn a_config_change_reconnects_with_the_new_credentials() {
    let mut server = WsServer::start(ServerOpts::default()).await;
    let mut cfg = config(&server.url());
    cfg.credentials = Credentials::Bearer(SecretString::new("old-token"));
    let client = Client::spawn(cfg.clone());
    let (_, headers) = server.next_connected().await;
    assert_eq!(headers["authorization"], "Bearer old-token");
    client.connected().await;

    // A token for subscribers only: no reconnect needed.
    let mut same = cfg.clone();
    same.subscriber_token = Some(SecretString::new("t"));
    client.config.send(same.clone()).unwrap();
    // A rotated endpoint credential: reconnect with it.
    let mut rotated = same;
    rotated.credentials = Credentials::Bearer(SecretString::new("new-token"));
    client.config.send(rotated).unwrap();
    let (n, headers) = server.next_connected().await;
    assert_eq!(n, 2);
    assert_eq!(headers["authorization"], "Bearer new-token");
    client.connected().await;
}

#[tokio::test]
async fn wss_with_an_extra_ca_connects_and_without_it_is_refused() {
    let (ca_pem, server_tls) = tls_material();
    let mut server = WsServer::start(ServerOpts {
        tls: Some(server_tls),
        ..Default::default()
    })
    .await;
    let mut cfg = config(&server.url());
    cfg.open_messages = vec!["hello over tls".into()];
    let client = Client::spawn(cfg.clone());
    let mut state = client.handle.state();
    let reason = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let ConnectionState::Disconnected { reason, .. } = state.borrow_and_update().clone() {
                return reason;
            }
            state.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    assert!(
        reason.contains("TLS") || reason.contains("certificate"),
        "{reason}"
    );
    assert!(!client.handle.is_connected());

    cfg.ca_pem = Some(ca_pem);
    client.config.send(cfg).unwrap();
    server.next_connected().await;
    let (_, open) = server.next_frame().await;
    assert_eq!(text_of(&open), "hello over tls");
    client.connected().await;
}

#[tokio::test]
async fn a_refused_handshake_is_retried_with_backoff_and_reported() {
    let server = WsServer::start(ServerOpts {
        refuse_with: Some(401),
        ..Default::default()
    })
    .await;
    let client = Client::spawn(config(&server.url()));
    let states = client.record_states();
    tokio::time::timeout(Duration::from_secs(20), async {
        while server.connections.load(AtomicOrdering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the client keeps retrying");
    let states = states.lock().unwrap().clone();
    assert!(
        states
            .iter()
            .any(|s| matches!(s, ConnectionState::Disconnected { reason, .. } if reason.contains("401"))),
        "{states:?}"
    );
    client.handle.shutdown().await;
}

/// A `MakeWriter` that collects log output in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_secret_value_appears_in_logs_states_or_metrics() {
    use prometheus_client::registry::Registry;
    use wsbridge_core::ChannelKey;
    use wsbridge_dataplane::delivery::{DeliveryEngine, DeliveryPolicy, EngineConfig, SubscriberSpec};

    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    const PLANTED: [&str; 6] = [
        "PLANTED-bearer-9d1c",
        "PLANTED-password-77aa",
        "PLANTED-header-5e5e",
        "PLANTED-bridge-token-0b0b",
        "PLANTED-url-password-c3c3",
        "PLANTED-query-token-f1f1",
    ];

    let mut registry = Registry::default();
    let metrics = Arc::new(DataplaneMetrics::new(&mut registry));

    // An endpoint that refuses the handshake, then one that accepts it.
    let refusing = WsServer::start(ServerOpts {
        refuse_with: Some(403),
        ..Default::default()
    })
    .await;
    let mut accepting = WsServer::start(ServerOpts::default()).await;
    let url = |s: &WsServer| {
        format!(
            "ws://user:{}@127.0.0.1:{}/stream?token={}",
            PLANTED[4],
            s.addr.port(),
            PLANTED[5]
        )
    };
    let mut cfg = config(&url(&refusing));
    cfg.credentials = Credentials::Bearer(SecretString::new(PLANTED[0]));
    cfg.secret_headers = vec![("X-Api-Key".into(), SecretString::new(PLANTED[2]))];
    cfg.subscriber_token = Some(SecretString::new(PLANTED[3]));
    let (cfg_tx, cfg_rx) = watch::channel(cfg.clone());
    let (in_tx, mut in_rx) = mpsc::channel(8);
    let handle = EndpointHandle::spawn(
        EndpointOptions::new("default/feed"),
        cfg_rx,
        in_tx,
        metrics.clone(),
    );
    let states = {
        let states = Arc::new(Mutex::new(Vec::new()));
        let mut rx = handle.state();
        let sink = states.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let s = rx.borrow_and_update().clone();
                sink.lock().unwrap().push(format!("{s:?}"));
            }
        });
        states
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        while refusing.connections.load(AtomicOrdering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();

    // Rotate to basic credentials on a server that accepts.
    cfg.url = url(&accepting);
    cfg.credentials = Credentials::Basic {
        username: SecretString::new("user"),
        password: SecretString::new(PLANTED[1]),
    };
    cfg_tx.send(cfg.clone()).unwrap();
    accepting.next_connected().await;
    assert!(handle.wait_connected(Duration::from_secs(20)).await);
    accepting.send(WsMessage::text("{}"));
    let inbound = tokio::time::timeout(Duration::from_secs(20), in_rx.recv())
        .await
        .unwrap()
        .unwrap();

    // Deliver it to a failing subscriber, without a dead-letter sink.
    let engine = DeliveryEngine::new(EngineConfig::default(), metrics.clone());
    let channel = ChannelKey::new("default", "ticker");
    engine.set_subscribers(
        &channel,
        vec![SubscriberSpec {
            id: "default/s".into(),
            uri: format!("http://127.0.0.1:{}/", refusing.addr.port())
                .parse()
                .unwrap(),
            policy: DeliveryPolicy {
                retry: 1,
                backoff_delay: Duration::from_millis(10),
                ..Default::default()
            },
            signing: None,
        }],
    );
    engine.dispatch(&channel, inbound.clone());
    tokio::time::timeout(Duration::from_secs(20), async {
        while engine.stats().dropped < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    handle.shutdown().await;
    engine.shutdown(Duration::from_secs(2)).await;

    let mut metrics_text = String::new();
    prometheus_client::encoding::text::encode(&mut metrics_text, &registry).unwrap();
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let states = states.lock().unwrap().join("\n");
    assert!(
        logs.contains("endpoint disconnected"),
        "logs were captured:\n{logs}"
    );
    assert!(
        logs.contains("message not delivered"),
        "logs were captured:\n{logs}"
    );
    assert!(states.contains("403"), "{states}");
    assert!(metrics_text.contains("wsbridge_messages_received_total"));
    let debug_dumps = format!("{cfg:?} {inbound:?} {:?}", inbound.http_headers());
    for secret in PLANTED {
        assert!(!logs.contains(secret), "{secret} leaked into logs:\n{logs}");
        assert!(!states.contains(secret), "{secret} leaked into states");
        assert!(!metrics_text.contains(secret), "{secret} leaked into metrics");
        assert!(!debug_dumps.contains(secret), "{secret} leaked into Debug output");
    }
}
