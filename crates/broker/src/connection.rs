//! One connection to the broker, kept up by us: connect, watch it, and on
//! any loss reconnect with exponential backoff and full jitter, forever.
//! lapin's automatic recovery is left off (its maintainer calls it not
//! production-ready, and Knative's dispatchers that trusted their client's
//! recovery stopped consuming silently after a broker blip): instead every
//! publisher and consumer watches [`Broker::watch`] and, on each new
//! connection, opens its channels, re-declares what it needs and resumes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, Event};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use wsbridge_dataplane::endpoint::ReconnectBackoff;

use crate::url::BrokerUrl;

/// How the connection is kept.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Shown in the broker's management UI (`connection_name`).
    pub connection_name: String,
    /// First reconnect delay (the delay doubles, with jitter, up to `max_backoff`).
    pub initial_backoff: Duration,
    /// Largest reconnect delay.
    pub max_backoff: Duration,
    /// How long one connection attempt (TCP, TLS, AMQP handshake) may take.
    pub connect_timeout: Duration,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            connection_name: "wsbridge".into(),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(15),
        }
    }
}

/// Where the connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerState {
    /// The first attempt is under way.
    Connecting,
    /// Connected: `generation` counts connections since start (a new value
    /// means channels and consumers must be opened again).
    Connected {
        /// 1 for the first connection, then one more per reconnect.
        generation: u64,
    },
    /// Lost or refused; retrying after a backoff.
    Disconnected {
        /// Why (no credentials in it).
        reason: String,
        /// Failed attempts since the last good connection.
        attempts: u32,
    },
}

impl BrokerState {
    /// True while connected.
    pub fn is_connected(&self) -> bool {
        matches!(self, BrokerState::Connected { .. })
    }
}

/// The current connection, with its state.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) state: BrokerState,
    pub(crate) connection: Option<Arc<Connection>>,
}

/// A connection to the broker that reconnects by itself. Cheap to clone;
/// the connection closes when the last clone is dropped.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    url: BrokerUrl,
    link: watch::Receiver<Link>,
    task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Broker {
    /// Starts connecting to `url` in the background; must be called within
    /// a Tokio runtime.
    pub fn connect(url: BrokerUrl, options: BrokerOptions) -> Self {
        let (tx, rx) = watch::channel(Link {
            state: BrokerState::Connecting,
            connection: None,
        });
        let task = tokio::spawn(keep_connected(url.clone(), options, tx));
        Self {
            inner: Arc::new(Inner { url, link: rx, task }),
        }
    }

    /// The URL, for logs (shows no credentials).
    pub fn url(&self) -> &BrokerUrl {
        &self.inner.url
    }

    /// The state now.
    pub fn state(&self) -> BrokerState {
        self.inner.link.borrow().state.clone()
    }

    /// True while connected (for `/readyz`).
    pub fn is_connected(&self) -> bool {
        self.inner.link.borrow().state.is_connected()
    }

    /// Messages ready in `queue` now (a passive declare on a channel of its
    /// own): a Subscription's backlog, for metrics and status.
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, String> {
        let link = self.inner.link.borrow().clone();
        let Some(connection) = link.connection else {
            return Err("not connected to the broker".into());
        };
        let depth = async {
            let ch = connection.create_channel().await?;
            let options = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let queue = ch
                .queue_declare(queue.into(), options, FieldTable::default())
                .await?;
            let _ = ch.close(200, "done".into()).await;
            Ok::<_, lapin::Error>(queue.message_count())
        };
        match tokio::time::timeout(Duration::from_secs(10), depth).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("the broker did not answer within 10s".into()),
        }
    }

    pub(crate) fn link(&self) -> watch::Receiver<Link> {
        self.inner.link.clone()
    }

    /// Waits until connected; returns the connection and its generation.
    pub(crate) async fn connected(&self) -> Option<(Arc<Connection>, u64)> {
        let mut link = self.link();
        let current = link
            .wait_for(|l| l.state.is_connected() && l.connection.is_some())
            .await
            .ok()?;
        match (&current.state, &current.connection) {
            (BrokerState::Connected { generation }, Some(c)) => Some((c.clone(), *generation)),
            _ => None,
        }
    }
}

/// The background task: connects, waits for the connection to fail,
/// reconnects. Ends when every [`Broker`] clone is gone.
async fn keep_connected(url: BrokerUrl, options: BrokerOptions, link: watch::Sender<Link>) {
    let mut backoff = ReconnectBackoff::new(options.initial_backoff, options.max_backoff);
    let mut generation = 0u64;
    loop {
        let properties =
            ConnectionProperties::default().with_connection_name(options.connection_name.clone().into());
        let attempt = tokio::time::timeout(
            options.connect_timeout,
            Connection::connect(url.expose(), properties),
        )
        .await;
        let reason = match attempt {
            Ok(Ok(connection)) => {
                generation += 1;
                backoff.reset();
                info!(broker = %url, generation, "connected to the broker");
                let connection = Arc::new(connection);
                let events = connection.events_listener();
                link.send_replace(Link {
                    state: BrokerState::Connected { generation },
                    connection: Some(connection.clone()),
                });
                let reason = until_lost(&connection, events).await;
                warn!(broker = %url, generation, %reason, "lost the connection to the broker; reconnecting");
                reason
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no connection within {:?}", options.connect_timeout),
        };
        let attempts = backoff.attempt() + 1;
        link.send_replace(Link {
            state: BrokerState::Disconnected { reason, attempts },
            connection: None,
        });
        if link.is_closed() {
            return;
        }
        let delay = backoff.next_delay();
        tokio::time::sleep(delay).await;
    }
}

/// Resolves with a reason once the connection is unusable: an error event,
/// or (checked every second, in case an event was missed) a status that is
/// no longer connected.
async fn until_lost(connection: &Connection, events: impl futures::Stream<Item = Event>) -> String {
    let mut events = std::pin::pin!(events);
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Event::Error(e)) => return e.to_string(),
                Some(Event::ConnectionBlocked(reason)) => {
                    warn!(%reason, "the broker blocks publishing on this connection");
                }
                Some(Event::ConnectionUnblocked) => info!("the broker unblocked this connection"),
                Some(_) => {}
                None => return "the connection's event stream ended".into(),
            },
            _ = check.tick() => {
                if !connection.status().connected() {
                    return "the connection is closed".into();
                }
            }
        }
    }
}
