//! A role's side of durable channels (`backend: rabbitmq`): standalone,
//! the worker, the gateway and the dispatcher each hold one [`Durable`]:
//! endpoint messages and publishes go to the channel's exchange with
//! publisher confirms (a publish is accepted only once confirmed); each
//! Subscription's backlog queue is consumed into the delivery engine and
//! acknowledged only once its delivery ended; each Bridge's queue of
//! published messages is consumed out to its endpoint.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::topology::{Backlog, bridge_queue, channel_listener_queue, subscription_queue};
use crate::{
    BridgeConsumerSpec, Broker, BrokerMetrics, BrokerOptions, BrokerUrl, ChannelListenerSpec, ConsumerHandle,
    ConsumerSpec, PublishError, Publisher, RemoteListenerSpec,
};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::mpsc;
use wsbridge_core::{ChannelKey, ObjectKey};
use wsbridge_dataplane::clients::RemoteClients;
use wsbridge_dataplane::delivery::{DeliveryEngine, Ordering, Settlement, SubscriberSpec};
use wsbridge_dataplane::endpoint::{EndpointHandle, SendError};
use wsbridge_dataplane::{DataplaneMetrics, Message};

/// How long a publish waits for the broker's confirm before it is refused.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Endpoint messages of one Bridge written to the broker and awaiting their
/// confirm at once.
pub const MAX_UNCONFIRMED: usize = 256;

/// The broker connection of a process, its publisher and metrics.
pub struct Durable {
    broker: Broker,
    publisher: Publisher,
    metrics: BrokerMetrics,
}

impl Durable {
    /// Starts connecting to `url` (in the background, reconnecting
    /// forever); `role` names the connection in the broker's management UI
    /// (`wsbridge-{role}`).
    pub fn connect(url: BrokerUrl, metrics: BrokerMetrics, role: &str) -> Arc<Self> {
        let broker = Broker::connect(
            url,
            BrokerOptions {
                connection_name: format!("wsbridge-{role}"),
                ..BrokerOptions::default()
            },
        );
        let publisher = Publisher::new(broker.clone(), CONFIRM_TIMEOUT);
        Arc::new(Self {
            broker,
            publisher,
            metrics,
        })
    }

    /// The connection.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Its metrics.
    pub fn metrics(&self) -> &BrokerMetrics {
        &self.metrics
    }

    /// Publishes `msg` on `channel`'s exchange; `Ok` once the broker confirmed it.
    pub async fn publish(&self, channel: &ChannelKey, msg: &Message) -> Result<(), PublishError> {
        let result = self.publisher.publish(channel, msg).await;
        self.metrics.published(&channel.to_string(), &result);
        result
    }

    /// Publishes every message of `messages` on `channel` until it closes:
    /// written in order, up to [`MAX_UNCONFIRMED`] awaiting their confirm at
    /// once; `done` hears how each ended, in order.
    pub async fn publish_all(
        &self,
        channel: &ChannelKey,
        mut messages: mpsc::Receiver<Arc<Message>>,
        done: impl Fn(&Arc<Message>, Result<(), PublishError>),
    ) {
        let label = channel.to_string();
        let finish = |msg: &Arc<Message>, result: Result<(), PublishError>| {
            self.metrics.published(&label, &result);
            done(msg, result);
        };
        let mut unconfirmed = FuturesOrdered::new();
        loop {
            tokio::select! {
                Some((msg, result)) = unconfirmed.next(), if !unconfirmed.is_empty() => finish(&msg, result),
                msg = messages.recv(), if unconfirmed.len() < MAX_UNCONFIRMED => {
                    let Some(msg) = msg else { break };
                    match self.publisher.send(channel, &msg).await {
                        Ok(sent) => unconfirmed.push_back(async move { (msg, sent.confirmed().await) }),
                        Err(e) => finish(&msg, Err(e)),
                    }
                }
            }
        }
        while let Some((msg, result)) = unconfirmed.next().await {
            finish(&msg, result);
        }
    }

    /// Starts consuming `subscription`'s backlog into `engine`, where
    /// `subscriber` is the only subscriber under [`backlog_key`].
    /// `stamp` adds what the broker does not carry (the Bridge's token).
    pub fn consume_subscription(
        &self,
        channel: &ChannelKey,
        subscription: &ObjectKey,
        subscriber: &SubscriberSpec,
        backlog: Backlog,
        engine: &DeliveryEngine,
        stamp: impl Fn(Arc<Message>) -> Arc<Message> + Send + Sync + 'static,
    ) -> DurableConsumer {
        let key = backlog_key(channel, subscription);
        engine.set_subscribers(&key, vec![subscriber.clone()]);
        let ordered = subscriber.policy.ordering == Ordering::Ordered;
        let spec = ConsumerSpec {
            channel: channel.clone(),
            subscription: subscription.clone(),
            backlog,
            // An ordered subscriber takes one message at a time (a message
            // it could not take yet must not be overtaken).
            prefetch: u16::try_from(subscriber.policy.max_in_flight())
                .unwrap_or(u16::MAX)
                .max(1),
            single_active_consumer: ordered,
        };
        let engine = engine.clone();
        let handle = ConsumerHandle::spawn(
            self.broker.clone(),
            spec.clone(),
            Arc::new(move |msg| {
                let report = engine.dispatch(&key, stamp(msg));
                report.subscribers == 1 && report.overflowed == 0
            }),
        );
        DurableConsumer {
            queue: subscription_queue(subscription),
            spec: Some(spec),
            handle,
        }
    }

    /// Starts consuming `bridge`'s queue of published messages out to its
    /// endpoint: a message leaves the queue once the endpoint connection
    /// took it, and waits there while the endpoint is not connected.
    pub fn consume_bridge(
        &self,
        channel: &ChannelKey,
        bridge: &ObjectKey,
        endpoint: Weak<EndpointHandle>,
        metrics: Arc<DataplaneMetrics>,
    ) -> DurableConsumer {
        let name = bridge.to_string();
        let handle = ConsumerHandle::spawn_bridge(
            self.broker.clone(),
            BridgeConsumerSpec {
                channel: channel.clone(),
                bridge: bridge.clone(),
                backlog: Backlog::default(),
            },
            Arc::new(move |msg: Arc<Message>| {
                // The bridge stopped: the message goes back to the queue.
                let Some(endpoint) = endpoint.upgrade() else {
                    return false;
                };
                let outcome = match endpoint.try_send(msg.clone()) {
                    Ok(()) => Settlement::Delivered,
                    // Never sendable: counted and taken out of the queue.
                    Err(SendError::TooLarge { .. }) => {
                        metrics.drop_endpoint(&name, "too_large");
                        Settlement::Dropped("rejected")
                    }
                    // Not connected, or its buffer full: tried again.
                    Err(_) => Settlement::Dropped("endpoint_unavailable"),
                };
                msg.settle(outcome);
                true
            }),
        );
        DurableConsumer {
            queue: bridge_queue(bridge),
            spec: None,
            handle,
        }
    }

    /// Starts consuming what MQTT and AMQP clients publish on `channel`
    /// (through an exclusive queue of this process) out to its WebSocket
    /// `clients`; what this process published they got already.
    pub fn listen_remote(&self, channel: &ChannelKey, clients: Arc<RemoteClients>) -> ConsumerHandle {
        let nanos = nanos_now();
        let spec = RemoteListenerSpec {
            channel: channel.clone(),
            queue: format!(
                "wsbridge.clients.{}.{}.{}-{nanos}",
                channel.namespace,
                channel.name,
                std::process::id()
            ),
        };
        ConsumerHandle::spawn_remote_listener(self.broker.clone(), spec, broadcast_to(channel, clients))
    }

    /// Starts consuming everything `channel` carries (endpoint messages,
    /// publishes through any gateway replica or this one, what MQTT and
    /// AMQP clients publish) through an exclusive queue of this process,
    /// `wsbridge.gateway.{ns}.{name}.{replica}-{nanos}`, out to its WebSocket
    /// `clients`: a gateway replica holds one per channel while it has
    /// clients of it. `replica` names the replica (its pod).
    pub fn listen_channel(
        &self,
        channel: &ChannelKey,
        replica: &str,
        clients: Arc<RemoteClients>,
    ) -> ConsumerHandle {
        let nanos = nanos_now();
        let spec = ChannelListenerSpec {
            channel: channel.clone(),
            queue: channel_listener_queue(channel, &format!("{replica}-{nanos}")),
        };
        ConsumerHandle::spawn_channel_listener(self.broker.clone(), spec, broadcast_to(channel, clients))
    }

    /// Updates the broker metrics and says whether the broker and every
    /// consumer in `consumers` are up (`Err` says why not).
    pub fn ready<'a>(&self, consumers: impl Iterator<Item = &'a DurableConsumer>) -> Result<(), String> {
        self.metrics.observe(&self.broker);
        let mut waiting = Vec::new();
        for c in consumers {
            let consuming = c.is_consuming();
            self.metrics.set_consuming(&c.queue, consuming);
            if !consuming {
                waiting.push(c.queue.clone());
            }
        }
        if !self.broker.is_connected() {
            return Err(format!("not connected to the broker {}", self.broker.url()));
        }
        if !waiting.is_empty() {
            return Err(format!("not consuming yet: {}", waiting.join(", ")));
        }
        Ok(())
    }

    /// Asks the broker how deep each queue of `queues` is, into the metrics.
    pub async fn observe_backlogs(&self, queues: Vec<String>) {
        for queue in queues {
            if let Ok(depth) = self.broker.queue_depth(&queue).await {
                self.metrics.set_backlog(&queue, depth);
            }
        }
    }
}

impl BrokerUrl {
    /// The URL with its credentials, for the one place it is handed on to
    /// another process: the controller writes it into the Secret of each
    /// Bridge on a `rabbitmq` Channel, which the Bridge's worker reads
    /// through `secretKeyRef`. Never log, format or store it elsewhere.
    pub fn with_credentials(&self) -> &str {
        self.expose()
    }
}

/// A running consumer of a Subscription's or a Bridge's queue; stops when
/// dropped (its unacknowledged messages go back to the queue).
pub struct DurableConsumer {
    queue: String,
    /// A Subscription's consumer spec (to tell when it changed).
    spec: Option<ConsumerSpec>,
    handle: ConsumerHandle,
}

impl DurableConsumer {
    /// The queue it consumes.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Stops gracefully (see [`ConsumerHandle::stop`]): nothing more is
    /// taken, what is at hand finishes within `drain`, the rest goes back
    /// to the queue.
    pub async fn stop(self, drain: Duration) {
        self.handle.stop(drain).await;
    }

    /// Whether it consumes now.
    pub fn is_consuming(&self) -> bool {
        matches!(
            self.handle.state(),
            crate::consumer::ConsumerState::Consuming { .. }
        )
    }

    /// The delivery engine's key of a Subscription's consumer.
    pub fn engine_key(&self) -> Option<ChannelKey> {
        self.spec
            .as_ref()
            .map(|s| backlog_key(&s.channel, &s.subscription))
    }

    /// Whether it consumes `channel` as `subscriber` with `backlog` asks.
    pub fn matches(&self, channel: &ChannelKey, subscriber: &SubscriberSpec, backlog: Backlog) -> bool {
        self.spec.as_ref().is_some_and(|s| {
            s.channel == *channel
                && s.backlog == backlog
                && s.single_active_consumer == (subscriber.policy.ordering == Ordering::Ordered)
                && usize::from(s.prefetch)
                    == subscriber.policy.max_in_flight().clamp(1, usize::from(u16::MAX))
        })
    }
}

/// A listener's hand-off: each message goes to `channel`'s WebSocket
/// `clients` (each with its own bounded buffer) and counts as delivered.
fn broadcast_to(channel: &ChannelKey, clients: Arc<RemoteClients>) -> crate::consumer::Deliver {
    let key = channel.clone();
    Arc::new(move |msg: Arc<Message>| {
        clients.broadcast(&key, &msg);
        msg.settle(Settlement::Delivered);
        true
    })
}

/// Nanoseconds since the epoch: what makes a listener's queue name unique
/// to this start of the process.
fn nanos_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The delivery engine's key for one Subscription of a durable channel: its
/// consumer hands in only what the Subscription's own backlog holds.
pub fn backlog_key(channel: &ChannelKey, subscription: &ObjectKey) -> ChannelKey {
    ChannelKey::new(
        channel.namespace.clone(),
        format!("{}/{}", channel.name, subscription.name),
    )
}
