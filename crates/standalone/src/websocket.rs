//! Remote clients of standalone mode: `GET /channels/{namespace}/{name}`
//! with a WebSocket upgrade subscribes to the channel. Every channel message
//! (endpoint messages and publishes) arrives as one frame, text as text and
//! binary as binary; a frame the client sends is a publish.
//!
//! Like publishing, subscribing is open in standalone mode (no Kubernetes
//! API to review tokens against). A client that falls behind by more than
//! its send buffer is disconnected with close code 1008 and a reason that
//! says so; it never slows the channel or the other clients. Pings find
//! clients that are gone: one that does not answer within the pong timeout,
//! or takes no bytes for that long, is disconnected.
//!
//! The upgrade is answered here on hyper's upgrade and tokio-tungstenite
//! rather than through axum's `ws` extractor, which would bring a second
//! version of tungstenite into the binary next to the endpoint client's.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tracing::debug;
use wsbridge_core::ChannelKey;
use wsbridge_dataplane::Payload;
use wsbridge_dataplane::clients::ClientFeed;
use wsbridge_http::publish;

use super::publish::{ChannelRoutes, ClientKeepalive};
use super::runtime::{PublishError, Runtime};

/// How long a close handshake may take before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /channels/{namespace}/{name}`: upgrades to a WebSocket subscription.
pub async fn subscribe(
    State(routes): State<ChannelRoutes>,
    path: Result<Path<(String, String)>, PathRejection>,
    mut request: Request,
) -> Response {
    let channel = match publish::channel_key(path) {
        Ok(channel) => channel,
        Err(rejection) => return rejection,
    };
    let Some(key) = websocket_key(request.headers()) else {
        return publish::error(
            StatusCode::UPGRADE_REQUIRED,
            "UpgradeRequired",
            format!("GET {channel} subscribes with a WebSocket upgrade (version 13); publish with POST"),
        );
    };
    let runtime = routes.runtime.clone();
    let Some(max) = runtime.max_message_bytes(&channel) else {
        return publish::channel_not_found(&channel);
    };
    let feed = match runtime.clients().join(channel.clone()) {
        Ok(feed) => feed,
        Err(e) => return publish::error(StatusCode::SERVICE_UNAVAILABLE, "TooManyClients", e.to_string()),
    };
    let upgrade = hyper::upgrade::on(&mut request);
    let stop = routes.stop.clone();
    let keepalive = routes.keepalive;
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let config = WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let ws = WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            Role::Server,
            Some(config),
        )
        .await;
        serve(ws, feed, runtime, keepalive, stop).await;
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// The client's `Sec-WebSocket-Key`, when the request is a version 13
/// WebSocket upgrade.
fn websocket_key(headers: &HeaderMap) -> Option<String> {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return None;
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION)?.as_bytes() != b"13" {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?.to_str().ok()?;
    (!key.is_empty()).then(|| key.to_owned())
}

/// Writes the channel's messages to the client and publishes what it
/// sends, until either side closes, the client is evicted, or the process
/// stops.
async fn serve<S>(
    mut ws: WebSocketStream<S>,
    mut feed: ClientFeed,
    runtime: Arc<Runtime>,
    keepalive: ClientKeepalive,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut ping = tokio::time::interval_at(Instant::now() + keepalive.interval, keepalive.interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the last ping must be answered by; none while no ping is out.
    let mut pong_due: Option<Instant> = None;
    let close = loop {
        tokio::select! {
            next = feed.next() => match next {
                Some(msg) => {
                    // A client that takes no bytes at all for this long is
                    // gone; its socket is dropped without a close frame,
                    // which could not be written either.
                    let sent = tokio::time::timeout(keepalive.timeout, ws.send(msg.to_frame())).await;
                    feed.written(&msg);
                    if !matches!(sent, Ok(Ok(()))) {
                        return;
                    }
                }
                None => break close_frame(
                    CloseCode::Policy,
                    "client too slow: its send buffer is full",
                ),
            },
            incoming = ws.next() => match incoming {
                Some(Ok(WsMessage::Text(text))) => {
                    if let Some(close) = publish_frame(&runtime, feed.channel(), Payload::text(text.as_str())) {
                        break close;
                    }
                }
                Some(Ok(WsMessage::Binary(bytes))) => {
                    if let Some(close) = publish_frame(&runtime, feed.channel(), Payload::binary(bytes)) {
                        break close;
                    }
                }
                Some(Ok(WsMessage::Pong(_))) => pong_due = None,
                // Pings are answered by tungstenite; a close is echoed by it.
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    debug!(channel = %feed.channel(), error = %e, "remote client connection ended");
                    return;
                }
                None => return,
            },
            _ = ping.tick(), if pong_due.is_none() => {
                let sent = tokio::time::timeout(keepalive.timeout, ws.send(WsMessage::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
                pong_due = Some(Instant::now() + keepalive.timeout);
            }
            _ = tokio::time::sleep_until(pong_due.unwrap_or_else(Instant::now)), if pong_due.is_some() => {
                runtime.clients().count_unresponsive(feed.channel());
                break close_frame(CloseCode::Policy, "no pong in time: the client is unresponsive");
            }
            _ = stopped(&mut stop) => break close_frame(CloseCode::Away, "wsbridge is shutting down"),
        }
    };
    drop(feed);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(close))).await;
}

/// Resolves once the process stops (or its signal is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Publishes what a client sent; the close frame to answer with when the
/// publish is refused.
fn publish_frame(runtime: &Runtime, channel: &ChannelKey, payload: Payload) -> Option<CloseFrame> {
    match runtime.publish(channel, payload) {
        Ok(_) => None,
        Err(PublishError::TooLarge { .. }) => Some(close_frame(CloseCode::Size, "message too large")),
        Err(e @ PublishError::NotFound(_)) => Some(close_frame(CloseCode::Policy, &e.to_string())),
        Err(PublishError::Unavailable { .. }) => Some(close_frame(
            CloseCode::Again,
            "a bridged endpoint of the channel is not connected",
        )),
        Err(PublishError::OverBudget(_)) => Some(close_frame(
            CloseCode::Again,
            "the memory budget for queued messages is exhausted; retry later",
        )),
    }
}

fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    // A close reason is at most 123 bytes on the wire.
    CloseFrame {
        code,
        reason: wsbridge_core::text::shorten(reason, 120).into(),
    }
}
