//! One connected session: open messages first, then frames both ways until
//! the connection is lost, the configuration changes or the client stops;
//! keep-alive pings; on stop, queued messages go out before the close frame.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tracing::{debug, info, warn};

use super::ConnectionState;
use super::connect::{Ws, describe};
use super::runner::{Runner, changed, stopped};
use crate::endpoint::config::EndpointConfig;
use crate::message::{Message, Origin, Payload, bearer_header};

/// How a session ended.
pub(super) enum SessionEnd {
    Stopped,
    Reconfigure,
    Lost(String),
}

/// How long a single write may take before the connection counts as dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long queued outbound messages may take to go out when the connection closes.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the endpoint gets to answer our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

impl Runner {
    /// Sends every message still queued for the endpoint (at shutdown), within
    /// [`FLUSH_TIMEOUT`]; whatever cannot be sent is counted as dropped.
    async fn flush_outbound(&mut self, ws: &mut Ws) {
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        while let Ok(msg) = self.outbound.try_recv() {
            match tokio::time::timeout_at(deadline, ws.send(msg.to_frame())).await {
                Ok(Ok(())) => {
                    self.metrics.sent.get_or_create(&self.labels).inc();
                }
                _ => {
                    self.metrics.drop_endpoint(&self.name, "send_failed");
                    break;
                }
            }
        }
    }

    /// An inbound message to the channel (or counted as dropped).
    async fn hand_on(&mut self, payload: Payload, cfg: &EndpointConfig, stamp: &Stamp) {
        if payload.len() > cfg.max_message_bytes {
            self.metrics.drop_endpoint(&self.name, "too_large");
            warn!(endpoint = %self.name, size = payload.len(), max = cfg.max_message_bytes, "inbound message too large; dropped");
            return;
        }
        self.metrics.received.get_or_create(&self.labels).inc();
        let msg = Message::new(payload, Origin::Endpoint, stamp.source.clone())
            .with_authorization(stamp.authorization.clone());
        if self.inbound.send(Arc::new(msg)).await.is_err() {
            self.metrics.drop_endpoint(&self.name, "no_consumer");
        }
    }

    /// Sends the close frame, then reads until the endpoint's close reply
    /// (bounded): what the endpoint sent before it saw our close frame is
    /// still handed on, as the WebSocket closing handshake intends.
    async fn close_and_drain(&mut self, ws: &mut Ws, cfg: &EndpointConfig, stamp: &Stamp) {
        if !matches!(
            tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await,
            Ok(Ok(()))
        ) {
            return;
        }
        let drain = async {
            while let Some(Ok(frame)) = ws.next().await {
                let payload = match frame {
                    WsMessage::Text(t) => Payload::text_from_bytes(Bytes::from(t)).ok(),
                    WsMessage::Binary(b) => Some(Payload::binary(b)),
                    WsMessage::Close(_) => break,
                    _ => None,
                };
                if let Some(payload) = payload {
                    self.hand_on(payload, cfg, stamp).await;
                }
            }
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, drain).await.is_err() {
            debug!(endpoint = %self.name, "no close reply from the endpoint in time");
        }
    }

    /// Runs one connected session.
    pub(super) async fn session(
        &mut self,
        ws: Box<Ws>,
        cfg: &mut EndpointConfig,
        subprotocol: Option<String>,
    ) -> SessionEnd {
        let mut ws = *ws;
        for text in &cfg.open_messages {
            let frame = WsMessage::text(text.clone());
            match tokio::time::timeout(WRITE_TIMEOUT, ws.send(frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return SessionEnd::Lost(format!("sending open message failed: {}", describe(&e)));
                }
                Err(_) => return SessionEnd::Lost("sending open message timed out".to_string()),
            }
        }
        info!(endpoint = %self.name, url = %cfg.display_url(), subprotocol = ?subprotocol, "endpoint connected");
        self.metrics.connected.get_or_create(&self.labels).set(1);
        self.set_state(ConnectionState::Connected { subprotocol });

        let keepalive = cfg.keepalive;
        let interval = keepalive.map(|k| k.interval).unwrap_or(Duration::from_secs(3600));
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut pong_deadline: Option<Instant> = None;
        let mut stamp = Stamp::of(cfg);

        loop {
            let deadline = async {
                match pong_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stopped(&mut self.stop) => {
                    // What was accepted for the endpoint goes out before the close frame.
                    self.flush_outbound(&mut ws).await;
                    self.close_and_drain(&mut ws, cfg, &stamp).await;
                    return SessionEnd::Stopped;
                }
                _ = changed(&mut self.config) => {
                    let new = self.config.borrow_and_update().clone();
                    if cfg.needs_reconnect(&new) {
                        self.close_and_drain(&mut ws, cfg, &stamp).await;
                        *cfg = new;
                        return SessionEnd::Reconfigure;
                    }
                    *cfg = new;
                    stamp = Stamp::of(cfg);
                }
                frame = ws.next() => {
                    let payload = match frame {
                        None => return SessionEnd::Lost("connection closed by the endpoint".to_string()),
                        Some(Ok(WsMessage::Text(t))) => Payload::text_from_bytes(Bytes::from(t)).ok(),
                        Some(Ok(WsMessage::Binary(b))) => Some(Payload::binary(b)),
                        Some(Ok(WsMessage::Ping(_))) => {
                            // tungstenite queued the pong; push it out now.
                            if let Err(e) = ws.flush().await {
                                return SessionEnd::Lost(describe(&e));
                            }
                            None
                        }
                        Some(Ok(WsMessage::Pong(_))) => {
                            pong_deadline = None;
                            None
                        }
                        Some(Ok(WsMessage::Close(frame))) => {
                            let code = frame.map(|f| u16::from(f.code).to_string()).unwrap_or_else(|| "none".into());
                            return SessionEnd::Lost(format!("closed by the endpoint (close code {code})"));
                        }
                        Some(Ok(WsMessage::Frame(_))) => None,
                        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                            self.metrics.drop_endpoint(&self.name, "too_large");
                            warn!(endpoint = %self.name, size, max_size, "inbound message above the protocol ceiling; dropped, reconnecting");
                            return SessionEnd::Lost(format!("inbound message of {size} bytes above the ceiling of {max_size} bytes"));
                        }
                        Some(Err(e @ WsError::Utf8(_))) => {
                            // RFC 6455 fails the connection; the message is lost, so count it.
                            self.metrics.drop_endpoint(&self.name, "invalid_utf8");
                            warn!(endpoint = %self.name, "inbound text message is not UTF-8; dropped, reconnecting");
                            return SessionEnd::Lost(describe(&e));
                        }
                        Some(Err(e)) => return SessionEnd::Lost(describe(&e)),
                    };
                    if let Some(payload) = payload {
                        self.hand_on(payload, cfg, &stamp).await;
                    }
                }
                _ = ping.tick(), if keepalive.is_some() => {
                    if pong_deadline.is_none() {
                        let timeout = keepalive.map(|k| k.timeout).unwrap_or(WRITE_TIMEOUT);
                        pong_deadline = Some(Instant::now() + timeout);
                        match tokio::time::timeout(WRITE_TIMEOUT, ws.send(WsMessage::Ping(Bytes::from_static(b"wsbridge")))).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => return SessionEnd::Lost(describe(&e)),
                            Err(_) => return SessionEnd::Lost("sending ping timed out".to_string()),
                        }
                    }
                }
                _ = deadline => {
                    let timeout = keepalive.map(|k| k.timeout).unwrap_or_default();
                    return SessionEnd::Lost(format!("no pong within {timeout:?}; connection presumed dead"));
                }
                out = self.outbound.recv() => {
                    let Some(msg) = out else { return SessionEnd::Stopped };
                    match tokio::time::timeout(WRITE_TIMEOUT, ws.send(msg.to_frame())).await {
                        Ok(Ok(())) => {
                            self.metrics.sent.get_or_create(&self.labels).inc();
                        }
                        Ok(Err(e)) => {
                            self.metrics.drop_endpoint(&self.name, "send_failed");
                            return SessionEnd::Lost(describe(&e));
                        }
                        Err(_) => {
                            self.metrics.drop_endpoint(&self.name, "send_failed");
                            return SessionEnd::Lost("sending to the endpoint timed out".to_string());
                        }
                    }
                }
            }
        }
    }
}

/// What every inbound message of a connection shares, built once per
/// configuration rather than per message.
struct Stamp {
    source: Arc<str>,
    authorization: Option<http::HeaderValue>,
}

impl Stamp {
    fn of(cfg: &EndpointConfig) -> Self {
        Self {
            source: Arc::from(cfg.inbound_source.as_str()),
            authorization: cfg.subscriber_token.as_ref().and_then(|t| bearer_header(t).ok()),
        }
    }
}
