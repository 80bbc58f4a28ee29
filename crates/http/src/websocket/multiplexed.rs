//! `GET /ws/{namespace}`: one connection, many channels of a namespace,
//! driven by the JSON commands of [`super::commands`].
//!
//! Each subscribed channel has its own send buffer in the hub; a client
//! that falls behind on any of them is disconnected as too slow, as on a
//! single-channel connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio_stream::StreamMap;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tracing::debug;
use wsbridge_core::{ChannelKey, SecretString};
use wsbridge_dataplane::Message;
use wsbridge_dataplane::clients::ClientFeed;

use super::commands::{self, Command};
use super::connection::{self, Beat, Liveness, Socket};
use super::handshake::{Upgrade, upgrade_required};
use super::{ChannelHub, Connections, Refusal, Verb};

/// The multiplexed route.
pub const MULTIPLEX_ROUTE: &str = "/ws/{namespace}";

/// Channels one multiplexed connection may subscribe to at once.
pub const MAX_SUBSCRIPTIONS: usize = 256;

/// Room for a command's JSON around the largest message (base64 takes 4/3).
const COMMAND_OVERHEAD: usize = 64 * 1024;

/// Opens a multiplexed connection on `namespace`: `101`, or a JSON refusal.
pub async fn multiplex<H: ChannelHub>(
    hub: Arc<H>,
    connections: Connections,
    namespace: String,
    mut request: Request,
) -> Response {
    if !crate::publish::is_dns1123_label(&namespace) {
        return Refusal::new(
            StatusCode::NOT_FOUND,
            "InvalidNamespace",
            "the path names a namespace: /ws/{namespace}, a DNS-1123 label",
        )
        .into_response();
    }
    let upgrade = match Upgrade::read(request.headers()) {
        Ok(Some(upgrade)) => upgrade,
        Ok(None) => return upgrade_required(&format!("/ws/{namespace}")),
        Err(refusal) => return refusal.into_response(),
    };
    let max = hub.max_message_bytes_in(&namespace);
    let max_frame = max.saturating_mul(4) / 3 + COMMAND_OVERHEAD;
    let response = upgrade.accept();
    let session = Session {
        hub,
        namespace,
        token: upgrade.token,
        feeds: StreamMap::new(),
    };
    connection::spawn_on_upgrade(&mut request, max_frame, move |ws| session.serve(ws, connections));
    response
}

/// One multiplexed connection's state.
struct Session<H> {
    hub: Arc<H>,
    namespace: String,
    token: Option<SecretString>,
    /// Subscribed channels by name.
    feeds: StreamMap<String, Feed>,
}

impl<H: ChannelHub> Session<H> {
    async fn serve(mut self, mut ws: Socket, mut connections: Connections) {
        let mut liveness = Liveness::new(connections.keepalive);
        let close = loop {
            tokio::select! {
                Some((channel, event)) = self.feeds.next(), if !self.feeds.is_empty() => match event {
                    FeedEvent::Message(msg) => {
                        let frame = WsMessage::text(commands::push(&channel, &msg));
                        let sent = connection::send(&mut ws, frame, liveness.write_timeout()).await;
                        if let Some(feed) = self.feeds.values_mut().find(|f| f.feed.channel().name == channel) {
                            feed.feed.written(&msg);
                        }
                        if !sent {
                            return;
                        }
                    }
                    FeedEvent::Ended(closed) => match closed {
                        // The stream is done: the map drops the channel.
                        Some((reason, message)) => {
                            let frame = WsMessage::text(commands::unsubscribed(&channel, reason, &message));
                            if !connection::send(&mut ws, frame, liveness.write_timeout()).await {
                                return;
                            }
                        }
                        None => break connection::too_slow(),
                    },
                },
                incoming = ws.next() => {
                    let reply = match incoming {
                        Some(Ok(WsMessage::Text(text))) => self.command(text.as_str()).await,
                        Some(Ok(WsMessage::Binary(_))) => commands::error(None, &Refusal::new(
                            StatusCode::BAD_REQUEST,
                            "BadCommand",
                            "commands are JSON text frames",
                        )),
                        Some(Ok(WsMessage::Pong(_))) => {
                            liveness.pong();
                            continue;
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => {
                            debug!(namespace = %self.namespace, error = %e, "remote client connection ended");
                            return;
                        }
                        None => return,
                    };
                    if !connection::send(&mut ws, WsMessage::text(reply), liveness.write_timeout()).await {
                        return;
                    }
                }
                beat = liveness.next() => match beat {
                    Beat::Ping => {
                        if !liveness.ping(&mut ws).await {
                            return;
                        }
                    }
                    Beat::Overdue => {
                        for feed in self.feeds.values() {
                            self.hub.count_unresponsive(feed.feed.channel());
                        }
                        break connection::unresponsive();
                    }
                },
                _ = connection::stopped(&mut connections.stop) => break connection::going_away(),
            }
        };
        drop(self.feeds);
        connection::close(ws, close).await;
    }

    /// Runs one command; the reply.
    async fn command(&mut self, text: &str) -> String {
        let (id, command) = commands::parse(text);
        match command.map(|c| (self.key(&c), c)) {
            Ok((key, command)) => match self.run(key, command).await {
                Ok(result) => commands::result(id, result),
                Err(refusal) => commands::error(id, &refusal),
            },
            Err(refusal) => commands::error(id, &refusal),
        }
    }

    fn key(&self, command: &Command) -> ChannelKey {
        let (Command::Subscribe { channel }
        | Command::Unsubscribe { channel }
        | Command::Publish { channel, .. }) = command;
        ChannelKey::new(self.namespace.clone(), channel.clone())
    }

    async fn run(&mut self, key: ChannelKey, command: Command) -> Result<Value, Refusal> {
        let hub = self.hub.clone();
        let token = self.token.as_ref();
        match command {
            Command::Subscribe { channel } => {
                if hub.max_message_bytes(&key).is_none() {
                    return Err(Refusal::channel_not_found(&key));
                }
                if self.feeds.contains_key(&channel) {
                    return Ok(json!({"channel": channel}));
                }
                if self.feeds.len() >= MAX_SUBSCRIPTIONS {
                    return Err(Refusal::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "TooManySubscriptions",
                        format!("one connection subscribes to at most {MAX_SUBSCRIPTIONS} channels"),
                    ));
                }
                hub.authorize(Verb::Subscribe, &key, token).await?;
                let feed = hub.join(key)?;
                self.feeds.insert(channel.clone(), Feed { feed, done: false });
                Ok(json!({"channel": channel}))
            }
            Command::Unsubscribe { channel } => {
                let was = self.feeds.remove(&channel).is_some();
                Ok(json!({"channel": channel, "subscribed": was}))
            }
            Command::Publish { channel, payload } => {
                hub.authorize(Verb::Publish, &key, token).await?;
                let id = hub.publish(&key, payload).await?;
                Ok(json!({"channel": channel, "id": id}))
            }
        }
    }
}

/// What a subscribed channel yields.
enum FeedEvent {
    Message(Arc<Message>),
    /// Nothing more comes: the channel went away (its reason and message
    /// for the client), or with `None` the client fell behind on it.
    Ended(Option<(&'static str, String)>),
}

/// A channel's feed as a stream (ends after [`FeedEvent::Ended`]).
struct Feed {
    feed: ClientFeed,
    done: bool,
}

impl Stream for Feed {
    type Item = FeedEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FeedEvent>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.feed.poll_next(cx) {
            Poll::Ready(Some(msg)) => Poll::Ready(Some(FeedEvent::Message(msg))),
            Poll::Ready(None) => {
                this.done = true;
                let closed = connection::channel_closed(this.feed.channel(), this.feed.ended());
                Poll::Ready(Some(FeedEvent::Ended(closed)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
