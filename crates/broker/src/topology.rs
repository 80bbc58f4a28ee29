//! What a durable channel is made of in the broker, named so that a
//! RabbitMQ operator recognises each object's owner (namespace and name in
//! the name), and declared idempotently by whoever needs it after every
//! (re)connection:
//!
//! - a durable topic exchange per Channel, `wsbridge.channel.{ns}.{name}`;
//!   key `endpoint` for endpoint messages, `published` for publishes (see
//!   below for how they carry it);
//! - a quorum queue per Subscription, `wsbridge.subscription.{ns}.{name}`,
//!   bound with `#` (every message of its channel): its backlog, bounded in
//!   bytes and messages; what overflows drops from the head (the oldest) and
//!   is dead-lettered, so it never slows the publisher or other subscribers;
//! - the installation's dead-letter exchange `wsbridge.dead-letter` and,
//!   per Subscription, `wsbridge.dead-letter.{ns}.{name}` (bounded the same
//!   way) holding what overflowed, for an operator to look at or shovel back;
//! - a quorum queue per Bridge, `wsbridge.bridge.{ns}.{name}`, bound with
//!   `published` only (endpoint messages never go back out to an endpoint):
//!   what is published on the channel, on its way out to the endpoint, with
//!   its overflow in `wsbridge.bridge-dead-letter.{ns}.{name}`;
//! - MQTT and AMQP clients, through RabbitMQ's own listeners: the channel is
//!   routing key `{ns}.{name}` on `amq.topic` (MQTT topic `{ns}/{name}`, as
//!   the MQTT plugin maps `/` to `.`). Every message wsbridge writes has
//!   that routing key (the topic MQTT subscribers see), and its origin's key
//!   (`endpoint` or `published`) as a `CC` key (routed on like the routing
//!   key; see `publisher.rs` for why not `BCC`). The channel's
//!   exchange is bound to `amq.topic` with the channel's key: MQTT
//!   subscribers and queues an AMQP client binds there get everything the
//!   channel carries. Back in, `amq.topic` is bound with the key to
//!   `wsbridge.remote.{ns}.{name}` (topic), whose only binding takes
//!   `endpoint` messages back to the channel's exchange (where they were
//!   already routed: RabbitMQ routes a message through each exchange once
//!   and to each queue once). Everything else there (a message an MQTT or
//!   AMQP client published, or a publish already routed) is unroutable, so
//!   it goes to the exchange's alternate exchange
//!   `wsbridge.remote-publish.{ns}.{name}` (fanout), bound to the channel's
//!   exchange and to each Bridge's queue: a remote publish reaches every
//!   Subscription and bridged endpoint once, an endpoint message never
//!   goes back out to an endpoint;
//! - per standalone process and channel, an exclusive queue
//!   `wsbridge.clients.{ns}.{name}.{pid}-{nanos}` bound to
//!   `wsbridge.remote-publish.{ns}.{name}`: remote publishes, on their way to
//!   the process's WebSocket clients of the channel;
//! - per gateway replica and channel, while the replica has WebSocket
//!   clients of the channel, an exclusive, auto-deleted queue
//!   `wsbridge.gateway.{ns}.{name}.{replica}-{nanos}` bound to the
//!   channel's exchange with `#`: everything the channel carries (endpoint
//!   messages, publishes through any gateway replica, what MQTT and AMQP
//!   clients publish, which reaches the channel's exchange through
//!   `wsbridge.remote-publish.{ns}.{name}`), each once, for the replica's
//!   clients. The replica's own publishes come back through it too, so the
//!   gateway never hands them to its clients itself. Bounded (drop-head):
//!   a replica that stopped reading loses its oldest messages, not the
//!   broker's memory.

use lapin::options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use wsbridge_core::{ChannelKey, ObjectKey};
use wsbridge_dataplane::Origin;

/// The installation's dead-letter exchange.
pub const DEAD_LETTER_EXCHANGE: &str = "wsbridge.dead-letter";

/// Routing key that binds every message of a channel.
pub const EVERY_MESSAGE: &str = "#";

/// The exchange where RabbitMQ's MQTT plugin publishes and binds (its
/// default, `mqtt.exchange`), and where AMQP clients find channels.
pub const REMOTE_EXCHANGE: &str = "amq.topic";

/// A channel's routing key on [`REMOTE_EXCHANGE`], `{ns}.{name}`.
pub fn remote_routing_key(channel: &ChannelKey) -> String {
    format!("{}.{}", channel.namespace, channel.name)
}

/// A channel's MQTT topic, `{ns}/{name}`.
pub fn mqtt_topic(channel: &ChannelKey) -> String {
    format!("{}/{}", channel.namespace, channel.name)
}

/// Where messages from [`REMOTE_EXCHANGE`] enter a channel.
pub fn remote_exchange(channel: &ChannelKey) -> String {
    format!("wsbridge.remote.{}.{}", channel.namespace, channel.name)
}

/// The alternate exchange of [`remote_exchange`]: what MQTT and AMQP
/// clients publish, on its way to the channel and its Bridges.
pub fn remote_publish_exchange(channel: &ChannelKey) -> String {
    format!("wsbridge.remote-publish.{}.{}", channel.namespace, channel.name)
}

/// A channel's exchange.
pub fn channel_exchange(channel: &ChannelKey) -> String {
    format!("wsbridge.channel.{}.{}", channel.namespace, channel.name)
}

/// A Subscription's backlog queue.
pub fn subscription_queue(subscription: &ObjectKey) -> String {
    format!(
        "wsbridge.subscription.{}.{}",
        subscription.namespace, subscription.name
    )
}

/// Where a Subscription's overflow goes.
pub fn dead_letter_queue(subscription: &ObjectKey) -> String {
    format!(
        "wsbridge.dead-letter.{}.{}",
        subscription.namespace, subscription.name
    )
}

/// A Bridge's queue of published messages for its endpoint.
pub fn bridge_queue(bridge: &ObjectKey) -> String {
    format!("wsbridge.bridge.{}.{}", bridge.namespace, bridge.name)
}

/// Where a Bridge's overflow goes.
pub fn bridge_dead_letter_queue(bridge: &ObjectKey) -> String {
    format!("wsbridge.bridge-dead-letter.{}.{}", bridge.namespace, bridge.name)
}

/// The routing key of a message of `origin`.
pub fn routing_key(origin: Origin) -> &'static str {
    match origin {
        Origin::Endpoint => "endpoint",
        Origin::Published => "published",
    }
}

/// How much a Subscription's backlog holds before the oldest messages are
/// dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Bytes of message bodies (`x-max-length-bytes`).
    pub max_bytes: u64,
    /// Messages (`x-max-length`).
    pub max_messages: u64,
}

impl Default for Backlog {
    /// 1 GiB or a million messages, whichever comes first: hours of a busy
    /// feed, well within a broker's disk.
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            max_messages: 1_000_000,
        }
    }
}

/// Declares `channel`'s exchange (durable topic) and its way to and from
/// [`REMOTE_EXCHANGE`] (see the module's documentation).
pub async fn declare_channel(ch: &Channel, channel: &ChannelKey) -> lapin::Result<()> {
    let exchange = channel_exchange(channel);
    let remote = remote_exchange(channel);
    let remote_publish = remote_publish_exchange(channel);
    let key = remote_routing_key(channel);
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        remote_publish.as_str().into(),
        ExchangeKind::Fanout,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    let mut args = FieldTable::default();
    args.insert("alternate-exchange".into(), text(&remote_publish));
    ch.exchange_declare(
        remote.as_str().into(),
        ExchangeKind::Topic,
        durable_exchange(),
        args,
    )
    .await?;
    let bind = |destination: &str, source: &str, key: &str| {
        ch.exchange_bind(
            destination.into(),
            source.into(),
            key.into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
    };
    bind(REMOTE_EXCHANGE, &exchange, &key).await?;
    bind(&remote, REMOTE_EXCHANGE, &key).await?;
    bind(&exchange, &remote, routing_key(Origin::Endpoint)).await?;
    bind(&exchange, &remote_publish, "").await
}

/// Declares the exchange of `channel`, the backlog of `subscription`, its
/// dead-letter queue, and the bindings. A queue that exists with other
/// arguments fails with PRECONDITION_FAILED, which is why the API server
/// refuses a change of a Subscription's `spec.backlog` (a CEL rule).
pub async fn declare_subscription(
    ch: &Channel,
    channel: &ChannelKey,
    subscription: &ObjectKey,
    backlog: Backlog,
    single_active_consumer: bool,
) -> lapin::Result<()> {
    let queue = BacklogQueue {
        queue: subscription_queue(subscription),
        dead_letter: dead_letter_queue(subscription),
        binding: EVERY_MESSAGE,
    };
    declare_backlog(ch, channel, &queue, backlog, single_active_consumer).await
}

/// Declares the exchange of `channel`, the queue of `bridge` (one active
/// consumer: its endpoint gets published messages in order), its
/// dead-letter queue, and the binding of published messages only.
pub async fn declare_bridge(
    ch: &Channel,
    channel: &ChannelKey,
    bridge: &ObjectKey,
    backlog: Backlog,
) -> lapin::Result<()> {
    let queue = BacklogQueue {
        queue: bridge_queue(bridge),
        dead_letter: bridge_dead_letter_queue(bridge),
        binding: routing_key(Origin::Published),
    };
    declare_backlog(ch, channel, &queue, backlog, true).await?;
    ch.queue_bind(
        queue.queue.as_str().into(),
        remote_publish_exchange(channel).into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// A bounded queue of a channel's messages and where its overflow goes.
struct BacklogQueue {
    queue: String,
    dead_letter: String,
    /// Which of the channel's messages it holds.
    binding: &'static str,
}

async fn declare_backlog(
    ch: &Channel,
    channel: &ChannelKey,
    BacklogQueue {
        queue,
        dead_letter: dead,
        binding,
    }: &BacklogQueue,
    backlog: Backlog,
    single_active_consumer: bool,
) -> lapin::Result<()> {
    declare_channel(ch, channel).await?;
    ch.exchange_declare(
        DEAD_LETTER_EXCHANGE.into(),
        ExchangeKind::Direct,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    let mut dead_args = quorum(backlog);
    dead_args.insert("x-overflow".into(), text("drop-head"));
    ch.queue_declare(dead.as_str().into(), durable_queue(), dead_args)
        .await?;
    ch.queue_bind(
        dead.as_str().into(),
        DEAD_LETTER_EXCHANGE.into(),
        queue.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;

    let mut args = quorum(backlog);
    args.insert("x-overflow".into(), text("drop-head"));
    args.insert("x-dead-letter-exchange".into(), text(DEAD_LETTER_EXCHANGE));
    args.insert("x-dead-letter-routing-key".into(), text(queue));
    if single_active_consumer {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    ch.queue_declare(queue.as_str().into(), durable_queue(), args)
        .await?;
    ch.queue_bind(
        queue.as_str().into(),
        channel_exchange(channel).into(),
        (*binding).into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// Declares the topology of `channel` and `queue`, a queue of this
/// connection only (exclusive, deleted with it) bound to
/// [`remote_publish_exchange`]: what MQTT and AMQP clients publish on the
/// channel, and the publishes wsbridge wrote (which carry the
/// `wsbridge-origin` header), for a process's own WebSocket clients.
pub async fn declare_remote_listener(ch: &Channel, channel: &ChannelKey, queue: &str) -> lapin::Result<()> {
    declare_channel(ch, channel).await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        queue.into(),
        remote_publish_exchange(channel).into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// Messages a channel listener's queue holds before its oldest are
/// dropped: its consumer acknowledges each as soon as it handed it to the
/// replica's clients, so only a replica that stopped reading fills it.
pub const CHANNEL_LISTENER_MAX_MESSAGES: i64 = 100_000;

/// A gateway replica's queue of everything `channel` carries; `unique`
/// tells the replica's listeners apart (and from other replicas').
pub fn channel_listener_queue(channel: &ChannelKey, unique: &str) -> String {
    format!("wsbridge.gateway.{}.{}.{unique}", channel.namespace, channel.name)
}

/// Declares the topology of `channel` and `queue`, a queue of this
/// connection only (exclusive, deleted with it or with its last consumer)
/// bound to [`channel_exchange`] with [`EVERY_MESSAGE`]: everything the
/// channel carries, whoever wrote it, once.
pub async fn declare_channel_listener(ch: &Channel, channel: &ChannelKey, queue: &str) -> lapin::Result<()> {
    declare_channel(ch, channel).await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(CHANNEL_LISTENER_MAX_MESSAGES),
    );
    args.insert("x-overflow".into(), text("drop-head"));
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await?;
    ch.queue_bind(
        queue.into(),
        channel_exchange(channel).into(),
        EVERY_MESSAGE.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

fn quorum(backlog: Backlog) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(i64::try_from(backlog.max_bytes).unwrap_or(i64::MAX)),
    );
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(i64::try_from(backlog.max_messages).unwrap_or(i64::MAX)),
    );
    args
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_namespace_and_name() {
        let channel = ChannelKey::new("team-a", "ticker");
        let sub = ObjectKey::new("team-a", "audit");
        assert_eq!(channel_exchange(&channel), "wsbridge.channel.team-a.ticker");
        assert_eq!(subscription_queue(&sub), "wsbridge.subscription.team-a.audit");
        assert_eq!(dead_letter_queue(&sub), "wsbridge.dead-letter.team-a.audit");
        assert_eq!(bridge_queue(&sub), "wsbridge.bridge.team-a.audit");
        assert_eq!(
            bridge_dead_letter_queue(&sub),
            "wsbridge.bridge-dead-letter.team-a.audit"
        );
        assert_eq!(remote_routing_key(&channel), "team-a.ticker");
        assert_eq!(mqtt_topic(&channel), "team-a/ticker");
        assert_eq!(remote_exchange(&channel), "wsbridge.remote.team-a.ticker");
        assert_eq!(
            remote_publish_exchange(&channel),
            "wsbridge.remote-publish.team-a.ticker"
        );
        assert_eq!(
            channel_listener_queue(&channel, "gw-0-17"),
            "wsbridge.gateway.team-a.ticker.gw-0-17"
        );
    }
}
