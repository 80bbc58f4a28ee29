//! The endpoint client against an independent WebSocket implementation:
//! a Python `websockets` server (`tests/peers/ws_echo_server.py`).

#[path = "support/python.rs"]
mod python;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};
use wsbridge_dataplane::endpoint::{EndpointConfig, EndpointHandle, EndpointOptions, ReconnectPolicy};
use wsbridge_dataplane::{DataplaneMetrics, Message, Origin, Payload, PayloadKind};

async fn next(rx: &mut mpsc::Receiver<Arc<Message>>) -> Arc<Message> {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("nothing from the python peer within 20s")
        .unwrap()
}

fn text(m: &Message) -> String {
    m.payload().as_text().expect("a text message").to_string()
}

#[tokio::test]
async fn the_client_talks_to_a_python_websockets_server_and_reconnects() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/ws_echo_server.py");
    let mut child = python::python3_with(&["websockets"])
        .arg(script)
        .arg("0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the python peer");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("python peer printed no port")
        .unwrap()
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let mut cfg = EndpointConfig::new(format!("ws://127.0.0.1:{port}/"));
    cfg.open_messages = vec![r#"{"op":"subscribe"}"#.into()];
    cfg.reconnect = ReconnectPolicy {
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(500),
    };
    let (_cfg_tx, cfg_rx) = watch::channel(cfg);
    let (in_tx, mut inbound) = mpsc::channel(64);
    let metrics = Arc::new(DataplaneMetrics::unregistered());
    let handle = EndpointHandle::spawn(EndpointOptions::new("default/py"), cfg_rx, in_tx, metrics);

    // Connect + open message (the peer echoes it back).
    assert_eq!(text(&*next(&mut inbound).await), r#"{"connection": 1}"#);
    assert_eq!(text(&*next(&mut inbound).await), r#"echo:{"op":"subscribe"}"#);
    assert!(handle.wait_connected(Duration::from_secs(20)).await);

    // Text and binary, both directions.
    let out = |p: Payload| Arc::new(Message::new(p, Origin::Published, "/channels/default/c"));
    handle.try_send(out(Payload::text("hello python"))).unwrap();
    assert_eq!(text(&*next(&mut inbound).await), "echo:hello python");
    handle
        .try_send(out(Payload::binary(vec![1u8, 2, 3, 250])))
        .unwrap();
    let bin = next(&mut inbound).await;
    assert_eq!(bin.payload().kind(), PayloadKind::Binary);
    assert_eq!(&bin.payload().bytes()[..], &[250u8, 3, 2, 1]);

    // The peer closes; the client reconnects and sends the open message again.
    handle.try_send(out(Payload::text("close-me"))).unwrap();
    assert_eq!(text(&*next(&mut inbound).await), r#"{"connection": 2}"#);
    assert_eq!(text(&*next(&mut inbound).await), r#"echo:{"op":"subscribe"}"#);
    assert!(handle.wait_connected(Duration::from_secs(20)).await);
    handle.try_send(out(Payload::text("still here"))).unwrap();
    assert_eq!(text(&*next(&mut inbound).await), "echo:still here");

    handle.shutdown().await;
    let _ = child.kill().await;
}
