//! What both WebSocket forms do on an open connection: take over the
//! upgraded socket, find dead clients with pings, write with a deadline,
//! close with a code and a reason.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use futures::SinkExt;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::time::{Instant, Interval};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use wsbridge_core::ChannelKey;
use wsbridge_dataplane::Message;
use wsbridge_dataplane::clients::{ClientFeed, FeedEnd};

use super::ClientKeepalive;

/// The socket of an upgraded request.
pub(super) type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// How long a close handshake may take before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How much tungstenite reads from the socket at a time. Its default,
/// 128 KiB, is zero-filled at the first read and stays resident: 128 KiB
/// per idle connection. A larger frame still arrives whole (the buffer
/// grows to the frame it is reading).
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Runs `serve` on the request's socket once the `101` answer is out;
/// frames larger than `max_frame_bytes` end the connection (1009).
pub(super) fn spawn_on_upgrade<F, Fut>(request: &mut Request, max_frame_bytes: usize, serve: F)
where
    F: FnOnce(Socket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .max_message_size(Some(max_frame_bytes))
            .max_frame_size(Some(max_frame_bytes));
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        serve(ws).await;
    });
}

/// What the liveness check asks for next.
pub(super) enum Beat {
    /// Time to ping.
    Ping,
    /// The last ping went unanswered for too long.
    Overdue,
}

/// Pings every interval; a ping unanswered within the timeout makes the
/// client unresponsive.
pub(super) struct Liveness {
    ping: Interval,
    pong_due: Option<Instant>,
    timeout: Duration,
}

impl Liveness {
    pub(super) fn new(keepalive: ClientKeepalive) -> Self {
        let mut ping = tokio::time::interval_at(Instant::now() + keepalive.interval, keepalive.interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            ping,
            pong_due: None,
            timeout: keepalive.timeout,
        }
    }

    /// Resolves when a ping is due or the last one is overdue; cancel-safe.
    pub(super) async fn next(&mut self) -> Beat {
        match self.pong_due {
            Some(due) => {
                tokio::time::sleep_until(due).await;
                Beat::Overdue
            }
            None => {
                self.ping.tick().await;
                Beat::Ping
            }
        }
    }

    /// Sends a ping; false when the client took nothing for the timeout.
    pub(super) async fn ping(&mut self, ws: &mut Socket) -> bool {
        let sent = send(ws, WsMessage::Ping(Default::default()), self.timeout).await;
        self.pong_due = Some(Instant::now() + self.timeout);
        sent
    }

    /// The client answered.
    pub(super) fn pong(&mut self) {
        self.pong_due = None;
    }

    /// How long a write may wait for the client.
    pub(super) fn write_timeout(&self) -> Duration {
        self.timeout
    }
}

/// Writes `frame`; false when the connection failed or the client took no
/// bytes for `timeout` (it is gone: no close frame could be written either).
/// Most messages written in one burst before the socket is flushed.
const MAX_BURST: usize = 64;

/// Writes `first` and whatever else `feed` holds right now (up to
/// [`MAX_BURST`]) and flushes once: a client that is behind gets its
/// backlog in one write instead of a system call per message (each message
/// is still a frame of its own). `false` when the write failed or took
/// longer than `timeout`.
pub(super) async fn send_burst(
    ws: &mut Socket,
    feed: &mut ClientFeed,
    first: Arc<Message>,
    to_frame: impl Fn(&Message) -> WsMessage,
    timeout: Duration,
) -> bool {
    let burst = async {
        ws.feed(to_frame(&first)).await?;
        feed.written(&first);
        for _ in 1..MAX_BURST {
            let Some(next) = feed.try_next() else { break };
            ws.feed(to_frame(&next)).await?;
            feed.written(&next);
        }
        ws.flush().await
    };
    matches!(tokio::time::timeout(timeout, burst).await, Ok(Ok(())))
}

pub(super) async fn send(ws: &mut Socket, frame: WsMessage, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, ws.send(frame)).await, Ok(Ok(())))
}

/// Closes the connection with `close`, waiting briefly for the handshake.
pub(super) async fn close(mut ws: Socket, close: CloseFrame) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(close))).await;
}

/// A close frame with `code` and `reason` (at most 123 bytes on the wire).
pub(super) fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    CloseFrame {
        code,
        reason: wsbridge_core::text::shorten(reason, 120).into(),
    }
}

/// The close for an evicted client.
pub(super) fn too_slow() -> CloseFrame {
    close_frame(CloseCode::Policy, "client too slow: its send buffer is full")
}

/// Why a channel's feed ended without the client being too slow: what a
/// client hears about its channel going away (`None` for an eviction).
pub(super) fn channel_closed(channel: &ChannelKey, end: Option<FeedEnd>) -> Option<(&'static str, String)> {
    match end? {
        FeedEnd::Slow => None,
        FeedEnd::ChannelDeleted => Some(("ChannelDeleted", format!("channel {channel} was deleted"))),
        FeedEnd::ChannelNotShared => Some((
            "ChannelNotShared",
            format!(
                "channel {channel} switched to backend: memory, which remote clients cannot subscribe to"
            ),
        )),
    }
}

/// The close for a feed that ended: 1001 with why for a channel that went
/// away (a client that reconnects then hears the reason as JSON), else the
/// eviction's.
pub(super) fn feed_ended(feed: &ClientFeed) -> CloseFrame {
    match channel_closed(feed.channel(), feed.ended()) {
        Some((_, message)) => close_frame(CloseCode::Away, &message),
        None => too_slow(),
    }
}

/// The close for a client that left a ping unanswered.
pub(super) fn unresponsive() -> CloseFrame {
    close_frame(CloseCode::Policy, "no pong in time: the client is unresponsive")
}

/// The close at shutdown.
pub(super) fn going_away() -> CloseFrame {
    close_frame(CloseCode::Away, "wsbridge is shutting down")
}

/// Resolves once the process stops (or its signal is gone).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
