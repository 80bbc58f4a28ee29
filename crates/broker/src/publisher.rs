//! Publishing with publisher confirms: [`Publisher::publish`] returns `Ok`
//! only once the broker has taken responsibility for the message (for
//! quorum queues: written to a majority), which is what a `202` on a
//! durable channel means. Anything else is an error the caller turns into
//! `503`: never a `202` for a message that may vanish.

use std::collections::HashSet;
use std::time::Duration;

use lapin::Channel;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, LongString};
use lapin::{BasicProperties, Confirmation, PublisherConfirm};
use tokio::sync::Mutex;
use wsbridge_core::ChannelKey;
use wsbridge_dataplane::Message;

use crate::codec::encode;
use crate::connection::{Broker, BrokerState};
use crate::topology::{self, channel_exchange, remote_routing_key, routing_key};

/// Why a message was not confirmed. The message may or may not have
/// reached the broker (a publisher that retries may cause a duplicate,
/// which its `ce-id` identifies).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Not connected to the broker now.
    #[error("the message broker is unavailable: {0}")]
    Unavailable(String),
    /// The broker answered with a negative confirm (e.g. out of disk).
    #[error("the message broker refused the message")]
    Refused,
    /// No confirm within the deadline.
    #[error("the message broker did not confirm the message within {0:?}")]
    Timeout(Duration),
}

/// Publishes channel messages with confirms over one broker channel, opened
/// again after every reconnect. Cheap to share behind an `Arc`.
pub struct Publisher {
    broker: Broker,
    confirm_timeout: Duration,
    open: Mutex<Option<Open>>,
}

/// The confirm-mode channel of one connection, and the exchanges declared
/// on it (declared once per connection, before the first publish to each).
struct Open {
    generation: u64,
    channel: Channel,
    declared: HashSet<ChannelKey>,
}

impl Publisher {
    /// A publisher on `broker`; a confirm that takes longer than
    /// `confirm_timeout` is an error.
    pub fn new(broker: Broker, confirm_timeout: Duration) -> Self {
        Self {
            broker,
            confirm_timeout,
            open: Mutex::new(None),
        }
    }

    /// Publishes `msg` on `channel`'s exchange and waits for the broker's
    /// confirm. Fails at once when the broker is not connected.
    pub async fn publish(&self, channel: &ChannelKey, msg: &Message) -> Result<(), PublishError> {
        self.send(channel, msg).await?.confirmed().await
    }

    /// Writes `msg` to `channel`'s exchange without waiting for the
    /// confirm, which the returned [`Unconfirmed`] waits for: messages sent
    /// one after the other reach the exchange in that order while their
    /// confirms are awaited together. The confirm deadline starts now.
    pub async fn send(&self, channel: &ChannelKey, msg: &Message) -> Result<Unconfirmed<'_>, PublishError> {
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        let (body, properties) = encode(msg);
        let properties = with_origin_key(properties, msg);
        // Inside the deadline: opening a channel on a connection that just
        // died can hang.
        let sent = async {
            let ch = self.channel_for(channel).await.map_err(|e| (None, e))?;
            match ch
                .basic_publish(
                    channel_exchange(channel).into(),
                    remote_routing_key(channel).into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
            {
                Ok(confirm) => Ok((ch, confirm)),
                Err(e) => Err((Some(ch), PublishError::Unavailable(e.to_string()))),
            }
        };
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok((channel, confirm))) => Ok(Unconfirmed {
                publisher: self,
                channel,
                confirm,
                deadline,
            }),
            Ok(Err((ch, e))) => {
                if let Some(ch) = ch {
                    self.forget(&ch).await;
                }
                Err(e)
            }
            Err(_) => Err(self.timed_out().await),
        }
    }

    async fn timed_out(&self) -> PublishError {
        *self.open.lock().await = None;
        PublishError::Timeout(self.confirm_timeout)
    }

    /// The open channel of the current connection, with `channel`'s exchange
    /// declared; opened when there is none, or it belongs to a lost connection.
    async fn channel_for(&self, channel: &ChannelKey) -> Result<Channel, PublishError> {
        let link = self.broker.link().borrow().clone();
        let (connection, generation) = match (link.state, link.connection) {
            (BrokerState::Connected { generation }, Some(c)) => (c, generation),
            (BrokerState::Disconnected { reason, .. }, _) => {
                return Err(PublishError::Unavailable(reason));
            }
            _ => return Err(PublishError::Unavailable("not connected yet".into())),
        };
        let unavailable = |e: lapin::Error| PublishError::Unavailable(e.to_string());
        let mut open = self.open.lock().await;
        let usable = open
            .as_ref()
            .is_some_and(|o| o.generation == generation && o.channel.status().connected());
        if !usable {
            let ch = connection.create_channel().await.map_err(unavailable)?;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(unavailable)?;
            *open = Some(Open {
                generation,
                channel: ch,
                declared: HashSet::new(),
            });
        }
        let Some(o) = open.as_mut() else {
            return Err(PublishError::Unavailable("no channel".into()));
        };
        if !o.declared.contains(channel) {
            topology::declare_channel(&o.channel, channel)
                .await
                .map_err(unavailable)?;
            o.declared.insert(channel.clone());
        }
        Ok(o.channel.clone())
    }

    /// Drops `ch` if it is still the open one (it failed: the next publish
    /// opens another).
    async fn forget(&self, ch: &Channel) {
        let mut open = self.open.lock().await;
        if open.as_ref().is_some_and(|o| o.channel.id() == ch.id()) {
            *open = None;
        }
    }
}

/// A message written to the broker whose confirm is still to come (see
/// [`Publisher::send`]).
pub struct Unconfirmed<'a> {
    publisher: &'a Publisher,
    channel: Channel,
    confirm: PublisherConfirm,
    deadline: tokio::time::Instant,
}

impl Unconfirmed<'_> {
    /// Waits for the broker's confirm: `Ok` once it took responsibility for
    /// the message.
    pub async fn confirmed(self) -> Result<(), PublishError> {
        match tokio::time::timeout_at(self.deadline, self.confirm).await {
            Ok(Ok(Confirmation::Ack(_))) => Ok(()),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Refused),
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Unavailable(
                "the channel is not in confirm mode".into(),
            )),
            Ok(Err(e)) => {
                self.publisher.forget(&self.channel).await;
                Err(PublishError::Unavailable(e.to_string()))
            }
            Err(_) => Err(self.publisher.timed_out().await),
        }
    }
}

/// `properties` with the key of the message's origin (`endpoint` or
/// `published`) as a `CC` routing key, routed on as the routing key is. The
/// routing key itself is the channel's key on `amq.topic`: MQTT subscribers
/// see it as the topic. `CC`, not `BCC`: the broker removes a `BCC` header
/// before delivery, which leaves every delivery to re-encode the message's
/// properties (the 1→10 bench: 72 against 88 µs of broker CPU per delivery);
/// a `CC` header stays, harmless, in what AMQP consumers see.
fn with_origin_key(properties: BasicProperties, msg: &Message) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        "CC".into(),
        AMQPValue::FieldArray(
            vec![AMQPValue::LongString(LongString::from(routing_key(msg.origin())))].into(),
        ),
    );
    properties.with_headers(headers)
}
