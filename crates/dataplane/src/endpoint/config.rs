//! Configuration of one endpoint connection, and the handshake request built
//! from it.

use std::time::Duration;

use base64::Engine as _;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;

use wsbridge_core::SecretString;

/// Credentials presented in the WebSocket handshake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// None.
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(SecretString),
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        /// User name.
        username: SecretString,
        /// Password.
        password: SecretString,
    },
}

/// Keep-alive: a ping every `interval`; no pong within `timeout` means the
/// connection is dead and is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// Time between pings.
    pub interval: Duration,
    /// How long to wait for the pong.
    pub timeout: Duration,
}

impl Default for KeepAlive {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(20),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Reconnect delays (exponential with full jitter between the two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// First delay ceiling.
    pub initial_delay: Duration,
    /// Largest delay ceiling.
    pub max_delay: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// Default `maxMessageBytes`: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Everything needed to hold one endpoint connection. Send a new value
/// through the `watch` channel given to
/// [`EndpointHandle::spawn`](super::EndpointHandle::spawn) to change it at
/// runtime (e.g. a rotated Secret): a change of anything that affects the
/// connection reconnects with the new values; a change of only
/// `inbound_source` or `subscriber_token` applies without reconnecting.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// `ws://` or `wss://` URL.
    pub url: String,
    /// Overrides the URL's port.
    pub port: Option<u16>,
    /// Extra (non-secret) handshake headers.
    pub headers: Vec<(String, String)>,
    /// Credentials from a Secret.
    pub credentials: Credentials,
    /// Extra handshake headers whose values are secret (custom auth headers).
    pub secret_headers: Vec<(String, SecretString)>,
    /// Offered subprotocols (`Sec-WebSocket-Protocol`). When some are offered
    /// the endpoint must select one of them, or the handshake fails.
    pub subprotocols: Vec<String>,
    /// Extra CA certificates (PEM), trusted in addition to the system roots.
    pub ca_pem: Option<String>,
    /// Text messages sent right after every connect (including reconnects).
    pub open_messages: Vec<String>,
    /// Keep-alive pings; `None` disables them.
    pub keepalive: Option<KeepAlive>,
    /// Reconnect delays.
    pub reconnect: ReconnectPolicy,
    /// Largest message accepted from or sent to the endpoint.
    pub max_message_bytes: usize,
    /// Bound on TCP connect + TLS + WebSocket handshake.
    pub connect_timeout: Duration,
    /// `ce-source` of inbound messages.
    pub inbound_source: String,
    /// The Bridge's token, presented to subscribers with inbound messages.
    pub subscriber_token: Option<SecretString>,
}

impl std::fmt::Debug for EndpointConfig {
    /// Shows the URL without user info or query; secrets stay redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("url", &self.display_url())
            .field("port", &self.port)
            .field("headers", &self.headers)
            .field("credentials", &self.credentials)
            .field("secret_headers", &self.secret_headers)
            .field("subprotocols", &self.subprotocols)
            .field(
                "ca_pem",
                &self.ca_pem.as_ref().map(|p| format!("<{} bytes>", p.len())),
            )
            .field("open_messages", &self.open_messages.len())
            .field("keepalive", &self.keepalive)
            .field("reconnect", &self.reconnect)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("connect_timeout", &self.connect_timeout)
            .field("inbound_source", &self.inbound_source)
            .field("subscriber_token", &self.subscriber_token)
            .finish()
    }
}

impl EndpointConfig {
    /// A configuration with defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            port: None,
            headers: Vec::new(),
            credentials: Credentials::None,
            secret_headers: Vec::new(),
            subprotocols: Vec::new(),
            ca_pem: None,
            open_messages: Vec::new(),
            keepalive: Some(KeepAlive::default()),
            reconnect: ReconnectPolicy::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            connect_timeout: Duration::from_secs(10),
            inbound_source: "/wsbridge/endpoint".to_string(),
            subscriber_token: None,
        }
    }

    /// True when `other` differs in anything that needs a new connection.
    pub fn needs_reconnect(&self, other: &EndpointConfig) -> bool {
        let strip = |c: &EndpointConfig| {
            let mut c = c.clone();
            c.inbound_source = String::new();
            c.subscriber_token = None;
            c
        };
        strip(self) != strip(other)
    }

    /// The URL with the port override applied.
    pub fn effective_url(&self) -> Result<url::Url, ConfigError> {
        let mut url = url::Url::parse(&self.url).map_err(|e| ConfigError::InvalidUrl(e.to_string()))?;
        match url.scheme() {
            "ws" | "wss" => {}
            other => return Err(ConfigError::UnsupportedScheme(other.to_string())),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::InvalidUrl("no host".to_string()));
        }
        if let Some(port) = self.port {
            url.set_port(Some(port))
                .map_err(|_| ConfigError::InvalidUrl("cannot set the port".to_string()))?;
        }
        Ok(url)
    }

    /// The URL as it may be logged: no user info, no query (either may carry
    /// credentials).
    pub fn display_url(&self) -> String {
        match self.effective_url() {
            Ok(u) => redact_url(&u),
            Err(_) => "<invalid url>".to_string(),
        }
    }

    /// True for `wss://`.
    pub fn is_tls(&self) -> bool {
        self.effective_url().map(|u| u.scheme() == "wss").unwrap_or(false)
    }

    /// Builds the handshake request. Errors name headers, never values.
    pub fn handshake_request(&self) -> Result<Request, ConfigError> {
        let url = self.effective_url()?;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ConfigError::InvalidUrl(e.to_string()))?;
        let headers = request.headers_mut();
        for (name, value) in &self.headers {
            let name = header_name(name)?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| ConfigError::InvalidHeaderValue(name.to_string()))?;
            headers.append(name, value);
        }
        for (name, value) in &self.secret_headers {
            let name = header_name(name)?;
            let mut value = HeaderValue::from_str(value.expose())
                .map_err(|_| ConfigError::InvalidHeaderValue(name.to_string()))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        match &self.credentials {
            Credentials::None => {}
            Credentials::Bearer(token) => {
                let value = crate::message::bearer_header(token)
                    .map_err(|_| ConfigError::InvalidHeaderValue("authorization".to_string()))?;
                headers.insert(AUTHORIZATION, value);
            }
            Credentials::Basic { username, password } => {
                let raw = format!("{}:{}", username.expose(), password.expose());
                let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
                let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
                    .map_err(|_| ConfigError::InvalidHeaderValue("authorization".to_string()))?;
                value.set_sensitive(true);
                headers.insert(AUTHORIZATION, value);
            }
        }
        if !self.subprotocols.is_empty() {
            let joined = self.subprotocols.join(", ");
            let value = HeaderValue::from_str(&joined)
                .map_err(|_| ConfigError::InvalidHeaderValue("sec-websocket-protocol".to_string()))?;
            headers.insert(SEC_WEBSOCKET_PROTOCOL, value);
        }
        Ok(request)
    }
}

fn header_name(name: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| ConfigError::InvalidHeaderName(name.to_string()))
}

/// `scheme://host:port/path` without user info or query.
pub fn redact_url(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    if u.query().is_some() {
        u.set_query(Some("<redacted>"));
    }
    u.set_fragment(None);
    u.to_string()
}

/// An endpoint configuration that cannot be used. Never contains secret values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not a URL.
    #[error("invalid endpoint URL: {0}")]
    InvalidUrl(String),
    /// Not ws or wss.
    #[error("unsupported URL scheme {0:?} (expected ws or wss)")]
    UnsupportedScheme(String),
    /// Bad header name.
    #[error("invalid header name {0:?}")]
    InvalidHeaderName(String),
    /// Bad header value (the value is not shown).
    #[error("invalid value for header {0:?} (value not shown)")]
    InvalidHeaderValue(String),
    /// Bad CA.
    #[error("invalid CA: {0}")]
    Tls(#[from] super::tls::TlsConfigError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_override_replaces_the_url_port() {
        let mut c = EndpointConfig::new("wss://feed.example.com:9000/v2?key=abc");
        c.port = Some(8443);
        assert_eq!(c.effective_url().unwrap().port(), Some(8443));
        assert_eq!(c.display_url(), "wss://feed.example.com:8443/v2?%3Credacted%3E");
        assert!(c.is_tls());
    }

    #[test]
    fn display_url_hides_user_info_and_query() {
        let c = EndpointConfig::new("ws://user:pa55word@h.example/x?token=s3cret");
        let shown = c.display_url();
        assert!(
            !shown.contains("pa55word") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn non_websocket_schemes_are_refused() {
        let c = EndpointConfig::new("http://h.example/");
        assert!(matches!(
            c.handshake_request(),
            Err(ConfigError::UnsupportedScheme(_))
        ));
    }

    #[test]
    fn credentials_and_subprotocols_go_into_the_handshake() {
        let mut c = EndpointConfig::new("ws://h.example/");
        c.credentials = Credentials::Basic {
            username: "aladdin".into(),
            password: "opensesame".into(),
        };
        c.subprotocols = vec!["feed.v1".into(), "feed.v2".into()];
        c.secret_headers = vec![("X-Api-Key".into(), "k-123".into())];
        c.headers = vec![("X-Client".into(), "wsbridge".into())];
        let r = c.handshake_request().unwrap();
        let h = r.headers();
        assert_eq!(h[AUTHORIZATION], "Basic YWxhZGRpbjpvcGVuc2VzYW1l");
        assert!(h[AUTHORIZATION].is_sensitive());
        assert_eq!(h[SEC_WEBSOCKET_PROTOCOL], "feed.v1, feed.v2");
        assert_eq!(h["x-api-key"], "k-123");
        assert_eq!(h["x-client"], "wsbridge");
    }

    #[test]
    fn invalid_secret_header_error_does_not_show_the_value() {
        let mut c = EndpointConfig::new("ws://h.example/");
        c.credentials = Credentials::Bearer("bad\ntoken-value".into());
        let err = c.handshake_request().unwrap_err().to_string();
        assert!(!err.contains("token-value"), "{err}");
    }

    #[test]
    fn token_change_alone_needs_no_reconnect() {
        let a = EndpointConfig::new("ws://h.example/");
        let mut b = a.clone();
        b.subscriber_token = Some("t".into());
        assert!(!a.needs_reconnect(&b));
        b.credentials = Credentials::Bearer("new".into());
        assert!(a.needs_reconnect(&b));
    }
}
