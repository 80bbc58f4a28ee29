//! One connection attempt: TCP to an allowed address, TLS when `wss://`,
//! the WebSocket handshake, all within the connect timeout.

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing::debug;

use super::runner::{Runner, changed, stopped};
use crate::destination::resolve_allowed;
use crate::endpoint::config::{ConfigError, EndpointConfig};
use crate::endpoint::tls;

/// A connected WebSocket.
pub(super) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a connection attempt ended.
pub(super) enum Connect {
    Stopped,
    Reconfigure,
    Invalid(ConfigError),
    Failed(String),
    Open(Box<Ws>, Option<String>),
}

/// Hard protocol ceiling given to tungstenite for a `max_message_bytes` limit.
fn protocol_ceiling(limit: usize) -> usize {
    limit.saturating_mul(2).max(limit.saturating_add(64 * 1024))
}

/// Bytes read from the endpoint per system call. tungstenite's default
/// (128 KiB) is zero-filled on the first read and stays resident per
/// connection; 32 KiB still takes over a hundred 256-byte messages a read.
/// A larger message grows the buffer as it arrives.
const READ_BUFFER_BYTES: usize = 32 * 1024;

impl Runner {
    /// Tries once to connect with `cfg`; a stop or a configuration change
    /// ends the attempt at once.
    pub(super) async fn connect(&mut self, cfg: &EndpointConfig) -> Connect {
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
}

/// A description of a WebSocket error that never includes header values.
pub(super) fn describe(e: &WsError) -> String {
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
