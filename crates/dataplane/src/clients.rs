//! Remote clients of channels (WebSocket subscribers).
//!
//! Every message of a channel goes to each of its clients through a send
//! buffer of the client's own, bounded in bytes. A client whose buffer is
//! full is evicted, never waited for: one slow reader must not slow the
//! channel or any other client, and memory stays bounded whatever the
//! clients do. The buffers hold the shared message (`Arc`), so a message
//! fanned out to many clients is stored once; each client's bound counts
//! its payload bytes.
//!
//! Plain values and channels only; the protocol adapters (the WebSocket
//! route of standalone mode) drive a [`ClientFeed`] per connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use wsbridge_core::ChannelKey;

use crate::Message;

/// How much the remote clients of one process may hold and how many there
/// may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Payload bytes a client may have waiting to be written; past this it
    /// is evicted as too slow.
    pub buffer_bytes: usize,
    /// Clients of one channel.
    pub per_channel: usize,
    /// Clients of the whole process.
    pub total: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            buffer_bytes: 1024 * 1024,
            per_channel: 10_000,
            total: 50_000,
        }
    }
}

/// Why a client could not join.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The channel has as many clients as it may.
    #[error("channel {channel} has the most remote clients allowed ({max})")]
    ChannelFull {
        /// The channel.
        channel: ChannelKey,
        /// Its limit.
        max: usize,
    },
    /// The process has as many clients as it may.
    #[error("this process serves the most remote clients allowed ({max})")]
    ProcessFull {
        /// The limit.
        max: usize,
    },
}

/// Why a client's feed ended (beyond its own connection closing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedEnd {
    /// It fell too far behind: its send buffer was full.
    Slow,
    /// Its channel was deleted.
    ChannelDeleted,
    /// Its channel is no longer served to remote clients here (a gateway's
    /// channel switched to `backend: memory`).
    ChannelNotShared,
}

impl FeedEnd {
    const OPEN: u8 = 0;

    fn code(self) -> u8 {
        match self {
            FeedEnd::Slow => 1,
            FeedEnd::ChannelDeleted => 2,
            FeedEnd::ChannelNotShared => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(FeedEnd::Slow),
            2 => Some(FeedEnd::ChannelDeleted),
            3 => Some(FeedEnd::ChannelNotShared),
            _ => None,
        }
    }
}

/// Labels of remote client metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    channel: String,
}

/// Labels of evictions and refusals.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    channel: String,
    reason: String,
}

#[derive(Default)]
struct ClientMetrics {
    connected: Family<ClientLabels, Gauge>,
    disconnected: Family<ReasonLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
}

/// One client as the hub sees it.
struct Slot {
    id: u64,
    tx: mpsc::UnboundedSender<Arc<Message>>,
    buffered: Arc<AtomicUsize>,
    ended: Arc<AtomicU8>,
}

#[derive(Default)]
struct Clients {
    channels: HashMap<ChannelKey, Vec<Slot>>,
    total: usize,
}

/// The remote clients of one process, by channel.
pub struct RemoteClients {
    limits: ClientLimits,
    clients: Mutex<Clients>,
    next_id: AtomicU64,
    metrics: ClientMetrics,
}

impl RemoteClients {
    /// A hub with `limits`, its metrics unregistered.
    pub fn new(limits: ClientLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            clients: Mutex::new(Clients::default()),
            next_id: AtomicU64::new(0),
            metrics: ClientMetrics::default(),
        })
    }

    /// A hub with `limits` whose metrics are registered in `registry`
    /// (prefix `wsbridge_`).
    pub fn registered(limits: ClientLimits, registry: &mut Registry) -> Arc<Self> {
        let hub = Self::new(limits);
        let r = registry.sub_registry_with_prefix("wsbridge");
        r.register(
            "remote_clients",
            "Remote clients (WebSocket subscribers) connected, by channel",
            hub.metrics.connected.clone(),
        );
        r.register(
            "remote_clients_disconnected",
            "Remote clients disconnected by wsbridge, by reason (slow: its send buffer was full; unresponsive: no pong in time)",
            hub.metrics.disconnected.clone(),
        );
        r.register(
            "remote_clients_refused",
            "Remote clients refused at connect, by reason (channel_full, process_full)",
            hub.metrics.refused.clone(),
        );
        hub
    }

    /// The limits in force.
    pub fn limits(&self) -> ClientLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Clients> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a client of `channel`; its feed yields every message broadcast
    /// on the channel from now on.
    pub fn join(self: &Arc<Self>, channel: ChannelKey) -> Result<ClientFeed, JoinError> {
        let mut clients = self.lock();
        let refuse = |reason: &str, e: JoinError| {
            self.metrics
                .refused
                .get_or_create(&ReasonLabels {
                    channel: channel.to_string(),
                    reason: reason.into(),
                })
                .inc();
            Err(e)
        };
        if clients.total >= self.limits.total {
            return refuse(
                "process_full",
                JoinError::ProcessFull {
                    max: self.limits.total,
                },
            );
        }
        let on_channel = clients.channels.get(&channel).map_or(0, Vec::len);
        if on_channel >= self.limits.per_channel {
            return refuse(
                "channel_full",
                JoinError::ChannelFull {
                    channel: channel.clone(),
                    max: self.limits.per_channel,
                },
            );
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let buffered = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicU8::new(FeedEnd::OPEN));
        clients.channels.entry(channel.clone()).or_default().push(Slot {
            id,
            tx,
            buffered: buffered.clone(),
            ended: ended.clone(),
        });
        clients.total += 1;
        self.connected(&channel).inc();
        Ok(ClientFeed {
            hub: self.clone(),
            channel,
            id,
            rx,
            buffered,
            ended,
        })
    }

    /// Offers `msg` to every client of `channel`; a client whose buffer
    /// cannot take it is evicted. Returns how many clients took it.
    pub fn broadcast(&self, channel: &ChannelKey, msg: &Arc<Message>) -> usize {
        let mut clients = self.lock();
        let Some(slots) = clients.channels.get_mut(channel) else {
            return 0;
        };
        let len = msg.payload().len();
        let max = self.limits.buffer_bytes;
        let before = slots.len();
        slots.retain(|slot| {
            let buffered = slot.buffered.fetch_add(len, Ordering::AcqRel) + len;
            if buffered > max {
                slot.ended.store(FeedEnd::Slow.code(), Ordering::Release);
                return false;
            }
            // A closed receiver is a client on its way out: its feed's drop
            // removes it.
            let _ = slot.tx.send(msg.clone());
            true
        });
        let evicted = before - slots.len();
        let taken = slots.len();
        if slots.is_empty() {
            clients.channels.remove(channel);
        }
        clients.total -= evicted;
        if evicted > 0 {
            self.connected(channel).dec_by(evicted as i64);
            self.metrics
                .disconnected
                .get_or_create(&ReasonLabels {
                    channel: channel.to_string(),
                    reason: "slow".into(),
                })
                .inc_by(evicted as u64);
        }
        taken
    }

    /// Ends the feed of every client of `channel` (`why`: deleted, or no
    /// longer served here) once each has what was broadcast before; the
    /// connections close and say why. Returns how many there were.
    pub fn close_channel(&self, channel: &ChannelKey, why: FeedEnd) -> usize {
        let mut clients = self.lock();
        let Some(slots) = clients.channels.remove(channel) else {
            return 0;
        };
        for slot in &slots {
            slot.ended.store(why.code(), Ordering::Release);
        }
        // Dropping the senders ends each feed after its queued messages.
        let closed = slots.len();
        clients.total -= closed;
        self.connected(channel).dec_by(closed as i64);
        closed
    }

    /// Counts a client of `channel` that its connection found unresponsive
    /// (no pong in time); it leaves when its feed is dropped.
    pub fn count_unresponsive(&self, channel: &ChannelKey) {
        self.metrics
            .disconnected
            .get_or_create(&ReasonLabels {
                channel: channel.to_string(),
                reason: "unresponsive".into(),
            })
            .inc();
    }

    /// Clients of `channel` now.
    pub fn count(&self, channel: &ChannelKey) -> usize {
        self.lock().channels.get(channel).map_or(0, Vec::len)
    }

    fn connected(&self, channel: &ChannelKey) -> Gauge {
        self.metrics
            .connected
            .get_or_create(&ClientLabels {
                channel: channel.to_string(),
            })
            .clone()
    }

    fn leave(&self, channel: &ChannelKey, id: u64) {
        let mut clients = self.lock();
        let Some(slots) = clients.channels.get_mut(channel) else {
            return;
        };
        let Some(at) = slots.iter().position(|s| s.id == id) else {
            return; // evicted or its channel closed: already gone and counted
        };
        slots.swap_remove(at);
        if slots.is_empty() {
            clients.channels.remove(channel);
        }
        clients.total -= 1;
        self.connected(channel).dec();
    }
}

/// One client's messages, in order. Dropping it removes the client.
pub struct ClientFeed {
    hub: Arc<RemoteClients>,
    channel: ChannelKey,
    id: u64,
    rx: mpsc::UnboundedReceiver<Arc<Message>>,
    buffered: Arc<AtomicUsize>,
    ended: Arc<AtomicU8>,
}

impl ClientFeed {
    /// The next message to write; `None` once the feed ended (see
    /// [`ClientFeed::ended`]): at once when the client was evicted as too
    /// slow, after the messages queued before when its channel closed. Call
    /// [`ClientFeed::written`] once the message is out, to free its bytes.
    pub async fn next(&mut self) -> Option<Arc<Message>> {
        if self.evicted() {
            return None;
        }
        self.rx.recv().await.filter(|_| !self.evicted())
    }

    /// The next message if one is queued now, without waiting (`None` when
    /// none is, or the client was evicted): what a connection writes in
    /// the same burst as the one [`ClientFeed::next`] gave it.
    pub fn try_next(&mut self) -> Option<Arc<Message>> {
        if self.evicted() {
            return None;
        }
        self.rx.try_recv().ok().filter(|_| !self.evicted())
    }

    /// [`ClientFeed::next`] for a connection that drives many feeds as
    /// streams.
    pub fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Arc<Message>>> {
        if self.evicted() {
            return std::task::Poll::Ready(None);
        }
        self.rx.poll_recv(cx).map(|msg| msg.filter(|_| !self.evicted()))
    }

    /// Frees the buffer bytes of `msg`, which the connection has written.
    pub fn written(&self, msg: &Message) {
        self.buffered.fetch_sub(msg.payload().len(), Ordering::AcqRel);
    }

    /// Whether the client fell too far behind and was evicted.
    pub fn evicted(&self) -> bool {
        self.ended() == Some(FeedEnd::Slow)
    }

    /// Why the feed ended, once it has; `None` while it is open.
    pub fn ended(&self) -> Option<FeedEnd> {
        FeedEnd::from_code(self.ended.load(Ordering::Acquire))
    }

    /// The channel.
    pub fn channel(&self) -> &ChannelKey {
        &self.channel
    }
}

impl Drop for ClientFeed {
    fn drop(&mut self) {
        self.hub.leave(&self.channel, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Origin, Payload};

    fn msg(bytes: usize) -> Arc<Message> {
        Arc::new(Message::new(
            Payload::text("x".repeat(bytes)),
            Origin::Published,
            "/test",
        ))
    }

    fn key(name: &str) -> ChannelKey {
        ChannelKey::new("default", name)
    }

    #[tokio::test]
    async fn every_client_gets_every_message_of_its_channel_only() {
        let hub = RemoteClients::new(ClientLimits::default());
        let mut a = hub.join(key("ticker")).unwrap();
        let mut b = hub.join(key("ticker")).unwrap();
        let mut other = hub.join(key("other")).unwrap();
        assert_eq!(hub.broadcast(&key("ticker"), &msg(3)), 2);
        for feed in [&mut a, &mut b] {
            let m = feed.next().await.unwrap();
            assert_eq!(m.payload().len(), 3);
            feed.written(&m);
        }
        assert!(other.rx.try_recv().is_err());
        drop(a);
        assert_eq!(hub.count(&key("ticker")), 1);
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_is_evicted_and_the_others_keep_receiving() {
        let hub = RemoteClients::new(ClientLimits {
            buffer_bytes: 10,
            ..ClientLimits::default()
        });
        let mut slow = hub.join(key("ticker")).unwrap();
        let mut fast = hub.join(key("ticker")).unwrap();
        for _ in 0..5 {
            hub.broadcast(&key("ticker"), &msg(4));
            let m = fast.next().await.unwrap();
            fast.written(&m);
        }
        assert!(slow.evicted());
        assert!(slow.next().await.is_none(), "an evicted client gets nothing more");
        assert!(!fast.evicted());
        assert_eq!(hub.count(&key("ticker")), 1);
        drop(slow);
        assert_eq!(
            hub.count(&key("ticker")),
            1,
            "dropping an evicted feed removes no one else"
        );
    }

    #[tokio::test]
    async fn closing_a_channel_ends_its_feeds_after_what_they_had_and_says_why() {
        let hub = RemoteClients::new(ClientLimits::default());
        let mut a = hub.join(key("ticker")).unwrap();
        let mut other = hub.join(key("other")).unwrap();
        hub.broadcast(&key("ticker"), &msg(3));
        assert_eq!(hub.close_channel(&key("ticker"), FeedEnd::ChannelDeleted), 1);
        assert_eq!(a.ended(), Some(FeedEnd::ChannelDeleted));
        let m = a.next().await.expect("what was queued before still comes");
        a.written(&m);
        assert!(a.next().await.is_none(), "then the feed ends");
        assert_eq!(hub.count(&key("ticker")), 0);
        assert_eq!(hub.broadcast(&key("ticker"), &msg(3)), 0);
        drop(a);
        assert_eq!(other.ended(), None, "other channels are untouched");
        hub.broadcast(&key("other"), &msg(2));
        assert!(other.next().await.is_some());
        assert_eq!(hub.count(&key("other")), 1);
    }

    #[test]
    fn joins_past_a_limit_are_refused() {
        let hub = RemoteClients::new(ClientLimits {
            per_channel: 1,
            total: 2,
            ..ClientLimits::default()
        });
        let _a = hub.join(key("a")).unwrap();
        assert!(matches!(
            hub.join(key("a")),
            Err(JoinError::ChannelFull { max: 1, .. })
        ));
        let _b = hub.join(key("b")).unwrap();
        assert_eq!(hub.join(key("c")).err(), Some(JoinError::ProcessFull { max: 2 }));
    }
}
