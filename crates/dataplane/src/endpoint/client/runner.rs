//! The connection task: connects, runs a session while connected, and
//! reconnects with backoff, forever, until stopped; reports each step as a
//! [`ConnectionState`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::ConnectionState;
use super::connect::Connect;
use super::session::SessionEnd;
use crate::destination::DestinationPolicy;
use crate::endpoint::backoff::ReconnectBackoff;
use crate::endpoint::config::EndpointConfig;
use crate::message::Message;
use crate::metrics::{DataplaneMetrics, EndpointLabels};

/// The connection task's state, kept across connections.
pub(super) struct Runner {
    pub(super) name: Arc<str>,
    pub(super) labels: EndpointLabels,
    pub(super) config: watch::Receiver<EndpointConfig>,
    pub(super) inbound: mpsc::Sender<Arc<Message>>,
    pub(super) outbound: mpsc::Receiver<Arc<Message>>,
    pub(super) state: watch::Sender<ConnectionState>,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) metrics: Arc<DataplaneMetrics>,
    pub(super) destinations: Arc<DestinationPolicy>,
}

/// Resolves when the watched value changes; never when the sender is gone.
pub(super) async fn changed<T>(rx: &mut watch::Receiver<T>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves when stop is requested or the handle is dropped.
pub(super) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// A connection that lasted this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

impl Runner {
    pub(super) fn set_state(&self, state: ConnectionState) {
        self.state.send_replace(state);
    }

    /// The task: runs until stopped or the handle is dropped; then counts
    /// what was never sent and reports [`ConnectionState::Stopped`].
    pub(super) async fn run(mut self) {
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
        // the session's flush gave up): counted, not lost silently.
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
}
