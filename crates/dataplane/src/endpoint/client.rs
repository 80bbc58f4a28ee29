//! The endpoint connection task: connect, send open messages, pump frames
//! both ways, keep alive, reconnect forever.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;

use crate::destination::{DestinationPolicy, resolve_allowed};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing::{debug, info, warn};

use super::backoff::ReconnectBackoff;
use super::config::{ConfigError, EndpointConfig};
use super::tls;
use crate::message::{Message, Origin, Payload, PayloadKind, bearer_header};
use crate::metrics::{DataplaneMetrics, EndpointLabels};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where the connection stands. `reason` texts never contain secret values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// A connection attempt is under way (`attempt` counts from 1 since the
    /// last healthy connection).
    Connecting {
        /// Attempt number.
        attempt: u32,
    },
    /// Connected; open messages were sent.
    Connected {
        /// The subprotocol the endpoint selected.
        subprotocol: Option<String>,
    },
    /// Not connected.
    Disconnected {
        /// Why (safe to show in status and logs).
        reason: String,
        /// When the next attempt starts; `None` while waiting for a
        /// configuration change (the current one is unusable).
        retry_in: Option<Duration>,
    },
    /// The client was shut down.
    Stopped,
}

impl ConnectionState {
    /// True while connected.
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }
}

/// Why a message was not accepted for sending to the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No connection right now (callers answer 503).
    #[error("the endpoint is not connected")]
    NotConnected,
    /// The outbound buffer is full (callers answer 503).
    #[error("the outbound buffer to the endpoint is full")]
    Full,
    /// Larger than `max_message_bytes` (callers answer 413).
    #[error("message of {size} bytes exceeds the endpoint's limit of {max} bytes")]
    TooLarge {
        /// Message size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// The client was shut down.
    #[error("the endpoint client is stopped")]
    Stopped,
}

/// Options of [`EndpointHandle::spawn`] that cannot change at runtime.
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// Name used in logs and metric labels (e.g. `namespace/bridge`).
    pub name: String,
    /// Capacity of the outbound (publish) buffer.
    pub outbound_capacity: usize,
    /// Where the connection may go (checked on the resolved addresses).
    pub destinations: Arc<DestinationPolicy>,
}

impl EndpointOptions {
    /// Options with a default outbound capacity of 1024 messages.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            outbound_capacity: 1024,
            destinations: Arc::default(),
        }
    }
}

/// A running endpoint connection. Dropping the handle stops the task.
pub struct EndpointHandle {
    name: Arc<str>,
    outbound: mpsc::Sender<Arc<Message>>,
    state: watch::Receiver<ConnectionState>,
    config: watch::Receiver<EndpointConfig>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl EndpointHandle {
    /// Starts the connection task. Inbound text and binary messages become
    /// [`Message`]s (origin [`Origin::Endpoint`]) sent to `inbound`; when
    /// `inbound` is full, reading from the endpoint pauses (TCP backpressure).
    ///
    /// Oversize inbound messages: a message larger than `max_message_bytes`
    /// is dropped and counted (`wsbridge_messages_dropped_total{reason="too_large"}`)
    /// and the connection stays up. tungstenite enforces a hard ceiling of
    /// twice the limit (at least limit + 64 KiB) so memory stays bounded; a
    /// message above that ceiling makes tungstenite abort the connection:
    /// it is counted the same way and the client reconnects.
    pub fn spawn(
        options: EndpointOptions,
        config: watch::Receiver<EndpointConfig>,
        inbound: mpsc::Sender<Arc<Message>>,
        metrics: Arc<DataplaneMetrics>,
    ) -> Self {
        let (outbound_tx, outbound_rx) = mpsc::channel(options.outbound_capacity.max(1));
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting { attempt: 1 });
        let (stop_tx, stop_rx) = watch::channel(false);
        let name: Arc<str> = Arc::from(options.name);
        let labels = EndpointLabels {
            endpoint: name.to_string(),
        };
        let runner = Runner {
            name: name.clone(),
            labels,
            config: config.clone(),
            inbound,
            outbound: outbound_rx,
            state: state_tx,
            stop: stop_rx,
            metrics,
            destinations: options.destinations,
        };
        let task = tokio::spawn(runner.run());
        Self {
            name,
            outbound: outbound_tx,
            state: state_rx,
            config,
            stop: stop_tx,
            task: Some(task),
        }
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connection state transitions.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    /// True while connected.
    pub fn is_connected(&self) -> bool {
        self.state.borrow().is_connected()
    }

    /// Queues a message to be sent to the endpoint. Refused while not
    /// connected, when the buffer is full, or when the message is too large.
    /// Messages already queued when the connection drops are sent after the
    /// reconnect.
    pub fn try_send(&self, msg: Arc<Message>) -> Result<(), SendError> {
        let max = self.config.borrow().max_message_bytes;
        let size = msg.payload().len();
        if size > max {
            return Err(SendError::TooLarge { size, max });
        }
        match &*self.state.borrow() {
            ConnectionState::Connected { .. } => {}
            ConnectionState::Stopped => return Err(SendError::Stopped),
            _ => return Err(SendError::NotConnected),
        }
        self.outbound.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Stopped,
        })
    }

    /// Waits until connected, or `timeout` passes. Returns whether connected.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.state.clone();
        tokio::time::timeout(timeout, rx.wait_for(ConnectionState::is_connected))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }

    /// Closes the connection like [`EndpointHandle::shutdown`], for a shared
    /// handle: waits until the task has stopped, or `timeout` passes.
    /// Returns whether it stopped.
    pub async fn close(&self, timeout: Duration) -> bool {
        let _ = self.stop.send(true);
        let mut state = self.state.clone();
        let stopped = state.wait_for(|s| matches!(s, ConnectionState::Stopped));
        matches!(tokio::time::timeout(timeout, stopped).await, Ok(Ok(_)))
    }

    /// Closes the connection (with a close frame) and ends the task.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EndpointHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

enum SessionEnd {
    Stopped,
    Reconfigure,
    Lost(String),
}

struct Runner {
    name: Arc<str>,
    labels: EndpointLabels,
    config: watch::Receiver<EndpointConfig>,
    inbound: mpsc::Sender<Arc<Message>>,
    outbound: mpsc::Receiver<Arc<Message>>,
    state: watch::Sender<ConnectionState>,
    stop: watch::Receiver<bool>,
    metrics: Arc<DataplaneMetrics>,
    destinations: Arc<DestinationPolicy>,
}

/// Resolves when the watched value changes; never when the sender is gone.
async fn changed<T>(rx: &mut watch::Receiver<T>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves when stop is requested or the handle is dropped.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Hard protocol ceiling given to tungstenite for a `max_message_bytes` limit.
fn protocol_ceiling(limit: usize) -> usize {
    limit.saturating_mul(2).max(limit.saturating_add(64 * 1024))
}

/// How long a single write may take before the connection counts as dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long queued outbound messages may take to go out when the connection closes.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the endpoint gets to answer our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The WebSocket frame of a message: text stays text, binary stays binary.
fn frame_of(msg: &Message) -> WsMessage {
    let payload = msg.payload();
    match payload.kind() {
        PayloadKind::Text => {
            match tokio_tungstenite::tungstenite::Utf8Bytes::try_from(payload.bytes().clone()) {
                Ok(t) => WsMessage::Text(t),
                Err(_) => WsMessage::Binary(payload.bytes().clone()),
            }
        }
        PayloadKind::Binary => WsMessage::Binary(payload.bytes().clone()),
    }
}

/// A connection that lasted this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// Bytes read from the endpoint per system call. tungstenite's default
/// (128 KiB) is zero-filled on the first read and stays resident per
/// connection; 32 KiB still takes over a hundred 256-byte messages a read.
/// A larger message grows the buffer as it arrives.
const READ_BUFFER_BYTES: usize = 32 * 1024;

impl Runner {
    fn set_state(&self, state: ConnectionState) {
        self.state.send_replace(state);
    }

    async fn run(mut self) {
        let mut cfg = self.config.borrow_and_update().clone();
        let mut backoff = ReconnectBackoff::new(cfg.reconnect.initial_delay, cfg.reconnect.max_delay);
        let mut ever_connected = false;
        loop {
            if *self.stop.borrow() {
                break;
            }
            self.set_state(ConnectionState::Connecting {
                attempt: backoff.attempt() + 1,
            });
            let reason = match self.connect(&cfg).await {
                Connect::Stopped => break,
                Connect::Reconfigure => {
                    cfg = self.config.borrow_and_update().clone();
                    backoff = ReconnectBackoff::new(cfg.reconnect.initial_delay, cfg.reconnect.max_delay);
                    continue;
                }
                Connect::Invalid(err) => {
                    let reason = err.to_string();
                    warn!(endpoint = %self.name, %reason, "endpoint configuration is unusable; waiting for a change");
                    self.set_state(ConnectionState::Disconnected {
                        reason,
                        retry_in: None,
                    });
                    tokio::select! {
                        _ = stopped(&mut self.stop) => break,
                        _ = changed(&mut self.config) => {
                            cfg = self.config.borrow_and_update().clone();
                            backoff = ReconnectBackoff::new(cfg.reconnect.initial_delay, cfg.reconnect.max_delay);
                            continue;
                        }
                    }
                }
                Connect::Failed(reason) => reason,
                Connect::Open(ws, subprotocol) => {
                    if ever_connected {
                        self.metrics.reconnects.get_or_create(&self.labels).inc();
                    }
                    ever_connected = true;
                    let started = Instant::now();
                    let end = self.session(ws, &mut cfg, subprotocol).await;
                    self.metrics.connected.get_or_create(&self.labels).set(0);
                    match end {
                        SessionEnd::Stopped => break,
                        SessionEnd::Reconfigure => {
                            info!(endpoint = %self.name, "endpoint configuration changed; reconnecting");
                            cfg = self.config.borrow_and_update().clone();
                            backoff =
                                ReconnectBackoff::new(cfg.reconnect.initial_delay, cfg.reconnect.max_delay);
                            continue;
                        }
                        SessionEnd::Lost(reason) => {
                            if started.elapsed() >= HEALTHY_AFTER {
                                backoff.reset();
                            }
                            reason
                        }
                    }
                }
            };
            let delay = backoff.next_delay();
            warn!(endpoint = %self.name, url = %cfg.display_url(), %reason, retry_in = ?delay, "endpoint disconnected");
            self.set_state(ConnectionState::Disconnected {
                reason,
                retry_in: Some(delay),
            });
            tokio::select! {
                _ = stopped(&mut self.stop) => break,
                _ = tokio::time::sleep(delay) => {}
                _ = changed(&mut self.config) => {
                    let new = self.config.borrow_and_update().clone();
                    if cfg.needs_reconnect(&new) {
                        backoff = ReconnectBackoff::new(new.reconnect.initial_delay, new.reconnect.max_delay);
                    }
                    cfg = new;
                }
            }
        }
        self.metrics.connected.get_or_create(&self.labels).set(0);
        // Accepted while connected, never sent (the connection was lost, or
        // the flush above gave up): counted, not lost silently.
        self.outbound.close();
        let mut unsent = 0;
        while self.outbound.try_recv().is_ok() {
            self.metrics.drop_endpoint(&self.name, "shutdown");
            unsent += 1;
        }
        if unsent > 0 {
            warn!(endpoint = %self.name, unsent, "stopped with messages not sent to the endpoint; dropped");
        }
        self.set_state(ConnectionState::Stopped);
        debug!(endpoint = %self.name, "endpoint client stopped");
    }

    async fn connect(&mut self, cfg: &EndpointConfig) -> Connect {
        let request = match cfg.handshake_request() {
            Ok(r) => r,
            Err(e) => return Connect::Invalid(e),
        };
        let connector = if cfg.is_tls() {
            match tls::client_config(cfg.ca_pem.as_deref().map(str::as_bytes)) {
                Ok(c) => Connector::Rustls(c),
                Err(e) => return Connect::Invalid(ConfigError::Tls(e)),
            }
        } else {
            Connector::Plain
        };
        let ceiling = protocol_ceiling(cfg.max_message_bytes);
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .max_message_size(Some(ceiling))
            .max_frame_size(Some(ceiling));
        debug!(endpoint = %self.name, url = %cfg.display_url(), "connecting");
        let policy = self.destinations.clone();
        let target = cfg
            .effective_url()
            .ok()
            .and_then(|u| Some((u.host_str()?.to_string(), u.port_or_known_default()?)));
        let attempt = tokio::time::timeout(cfg.connect_timeout, async move {
            let (host, port) = target.ok_or_else(|| {
                tokio_tungstenite::tungstenite::Error::Url(
                    tokio_tungstenite::tungstenite::error::UrlError::NoHostName,
                )
            })?;
            // The destination policy is checked on every resolved address
            // before any packet leaves.
            let addrs = resolve_allowed(&policy, &host, port).await?;
            let stream = TcpStream::connect(&addrs[..]).await?;
            let _ = stream.set_nodelay(true);
            tokio_tungstenite::client_async_tls_with_config(request, stream, Some(ws_config), Some(connector))
                .await
        });
        tokio::select! {
            _ = stopped(&mut self.stop) => Connect::Stopped,
            // Any change while connecting: start over at once with it.
            _ = changed(&mut self.config) => Connect::Reconfigure,
            res = attempt => match res {
                Err(_) => Connect::Failed(format!("connect timed out after {:?}", cfg.connect_timeout)),
                Ok(Err(e)) => Connect::Failed(describe(&e)),
                Ok(Ok((ws, response))) => {
                    let subprotocol = response
                        .headers()
                        .get(http::header::SEC_WEBSOCKET_PROTOCOL)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    Connect::Open(Box::new(ws), subprotocol)
                }
            }
        }
    }

    /// Sends every message still queued for the endpoint (at shutdown), within
    /// [`FLUSH_TIMEOUT`]; whatever cannot be sent is counted as dropped.
    async fn flush_outbound(&mut self, ws: &mut Ws) {
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        while let Ok(msg) = self.outbound.try_recv() {
            match tokio::time::timeout_at(deadline, ws.send(frame_of(&msg))).await {
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
            tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await,
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

    async fn session(
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
                    match tokio::time::timeout(WRITE_TIMEOUT, ws.send(frame_of(&msg))).await {
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

enum Connect {
    Stopped,
    Reconfigure,
    Invalid(ConfigError),
    Failed(String),
    Open(Box<Ws>, Option<String>),
}

/// A description of a WebSocket error that never includes header values.
fn describe(e: &WsError) -> String {
    match e {
        WsError::Http(resp) => format!("handshake refused with HTTP {}", resp.status()),
        WsError::Io(io) => format!("I/O error: {io}"),
        WsError::Tls(t) => format!("TLS error: {t}"),
        WsError::Url(u) => format!("URL error: {u}"),
        WsError::Protocol(p) => format!("protocol error: {p}"),
        WsError::Capacity(c) => format!("capacity error: {c}"),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "connection closed".to_string(),
        WsError::HttpFormat(_) => "invalid HTTP in the handshake".to_string(),
        WsError::Utf8(_) => "invalid UTF-8 in a text frame".to_string(),
        WsError::AttackAttempt => "connection refused as an attack attempt".to_string(),
        WsError::WriteBufferFull(_) => "write buffer full".to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_leaves_room_above_the_limit() {
        assert_eq!(protocol_ceiling(1024 * 1024), 2 * 1024 * 1024);
        assert_eq!(protocol_ceiling(1000), 1000 + 64 * 1024);
        assert_eq!(protocol_ceiling(usize::MAX), usize::MAX);
    }
}
