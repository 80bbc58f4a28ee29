//! `GET /channels/{namespace}/{name}` with an upgrade: one channel per
//! connection, messages as bare frames.

use std::sync::Arc;

use axum::extract::Request;
use axum::response::Response;
use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tracing::debug;
use wsbridge_core::{ChannelKey, SecretString};
use wsbridge_dataplane::Payload;
use wsbridge_dataplane::clients::ClientFeed;

use super::connection::{self, Beat, Liveness, Socket};
use super::handshake::{Upgrade, upgrade_required};
use super::{ChannelHub, Connections, Refusal, Verb};

/// Subscribes the client to `channel` when the request is an upgrade it
/// may make: `101`, or a JSON refusal (426, 400, 401, 403, 404, 503).
pub async fn subscribe<H: ChannelHub>(
    hub: Arc<H>,
    connections: Connections,
    channel: ChannelKey,
    mut request: Request,
) -> Response {
    let upgrade = match Upgrade::read(request.headers()) {
        Ok(Some(upgrade)) => upgrade,
        Ok(None) => return upgrade_required(&format!("/channels/{}/{}", channel.namespace, channel.name)),
        Err(refusal) => return refusal.into_response(),
    };
    let Some(max) = hub.max_message_bytes(&channel) else {
        return Refusal::channel_not_found(&channel).into_response();
    };
    if let Err(refusal) = hub
        .authorize(Verb::Subscribe, &channel, upgrade.token.as_ref())
        .await
    {
        return refusal.into_response();
    }
    let feed = match hub.join(channel) {
        Ok(feed) => feed,
        Err(refusal) => return refusal.into_response(),
    };
    let response = upgrade.accept();
    let token = upgrade.token;
    connection::spawn_on_upgrade(&mut request, max, move |ws| {
        serve(ws, feed, hub, token, connections)
    });
    response
}

/// Writes the channel's messages to the client and publishes what it
/// sends, until either side closes, the client is evicted, or the process
/// stops.
async fn serve<H: ChannelHub>(
    mut ws: Socket,
    mut feed: ClientFeed,
    hub: Arc<H>,
    token: Option<SecretString>,
    mut connections: Connections,
) {
    let mut liveness = Liveness::new(connections.keepalive);
    let close = loop {
        tokio::select! {
            next = feed.next() => match next {
                Some(msg) => {
                    let timeout = liveness.write_timeout();
                    if !connection::send_burst(&mut ws, &mut feed, msg, |m| m.to_frame(), timeout).await {
                        return;
                    }
                }
                None => break connection::feed_ended(&feed),
            },
            incoming = ws.next() => {
                let payload = match incoming {
                    Some(Ok(WsMessage::Text(text))) => Payload::text(text.as_str()),
                    Some(Ok(WsMessage::Binary(bytes))) => Payload::binary(bytes),
                    Some(Ok(WsMessage::Pong(_))) => {
                        liveness.pong();
                        continue;
                    }
                    // Pings are answered by tungstenite; a close is echoed by it.
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        debug!(channel = %feed.channel(), error = %e, "remote client connection ended");
                        return;
                    }
                    None => return,
                };
                if let Some(close) = publish(hub.as_ref(), feed.channel(), token.as_ref(), payload).await {
                    break close;
                }
            }
            beat = liveness.next() => match beat {
                Beat::Ping => {
                    if !liveness.ping(&mut ws).await {
                        return;
                    }
                }
                Beat::Overdue => {
                    hub.count_unresponsive(feed.channel());
                    break connection::unresponsive();
                }
            },
            _ = connection::stopped(&mut connections.stop) => break connection::going_away(),
        }
    };
    drop(feed);
    connection::close(ws, close).await;
}

/// Publishes what a client sent; the close frame to answer with when the
/// publish is refused.
async fn publish<H: ChannelHub>(
    hub: &H,
    channel: &ChannelKey,
    token: Option<&SecretString>,
    payload: Payload,
) -> Option<CloseFrame> {
    let outcome = match hub.authorize(Verb::Publish, channel, token).await {
        Ok(()) => hub.publish(channel, payload).await.map(drop),
        Err(refusal) => Err(refusal),
    };
    outcome
        .err()
        .map(|refusal| connection::close_frame(refusal.close_code(), &refusal.message))
}
