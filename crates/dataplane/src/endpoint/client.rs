//! The endpoint client's public side: [`EndpointHandle`] starts the
//! connection task and queues messages for it, [`ConnectionState`] says where
//! the connection stands. The task itself is in `client/`: the reconnect loop
//! (`runner.rs`), one connection attempt (`connect.rs`) and one connected
//! session with its read/write loop and keep-alive (`session.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::config::EndpointConfig;
use crate::destination::DestinationPolicy;
use crate::message::Message;
use crate::metrics::{DataplaneMetrics, EndpointLabels};

mod connect;
mod runner;
mod session;

use runner::Runner;

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
    /// [`Message`]s (origin [`Origin::Endpoint`](crate::Origin::Endpoint)) sent to `inbound`; when
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
