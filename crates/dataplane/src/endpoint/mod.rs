//! The WebSocket endpoint client (tokio-tungstenite + rustls).

mod backoff;
mod client;
mod config;
pub mod tls;

pub use backoff::{ReconnectBackoff, exponential_ceiling, full_jitter};
pub use client::{ConnectionState, EndpointHandle, EndpointOptions, SendError};
pub use config::{
    ConfigError, Credentials, DEFAULT_MAX_MESSAGE_BYTES, EndpointConfig, KeepAlive, ReconnectPolicy,
    redact_url,
};
