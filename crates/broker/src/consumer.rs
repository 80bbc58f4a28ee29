//! A Subscription's backlog consumed into the delivery engine. Each message
//! is handed in with a settle handle and acknowledged only when its
//! delivery ended: a 2xx, the dead-letter sink took it, or the subscriber
//! refused it for good. A message whose subscriber could not take it yet
//! (down through all its retries) stays unacknowledged and is handed in
//! again, in place, so an ordered subscriber gets it before the next one;
//! one whose delivery was cut short (the engine stopped, the process is
//! going away) is returned to the queue. The broker, not this process,
//! holds what is not yet delivered.
//!
//! The consumer outlives connections: after every reconnect it opens a
//! channel, re-declares its topology and consumes again, and it does the
//! same when only its channel was closed (a queue deleted, a consumer
//! cancelled by the broker). It never stops silently: its state is
//! watched, and it retries with backoff until dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::Acker;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use wsbridge_core::{ChannelKey, ObjectKey};
use wsbridge_dataplane::Message;
use wsbridge_dataplane::delivery::{Settle, Settlement};
use wsbridge_dataplane::endpoint::ReconnectBackoff;

use crate::acks::{Ack, Acks};
use crate::codec::{decode, written_by_wsbridge};
use crate::connection::{Broker, BrokerState, Link};
use crate::topology::{self, Backlog, bridge_queue, subscription_queue};

/// Hands a message to the delivery engine for one subscriber; false when
/// it could not be queued (the message is then returned to the broker).
pub type Deliver = Arc<dyn Fn(Arc<Message>) -> bool + Send + Sync>;

/// What one consumer consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// The Subscription's channel.
    pub channel: ChannelKey,
    /// The Subscription.
    pub subscription: ObjectKey,
    /// Its backlog's bound.
    pub backlog: Backlog,
    /// Unacknowledged messages at once (the broker's prefetch): the
    /// subscriber's `maxInFlight` when unordered. Ordered subscribers need
    /// 1: a message returned to the queue (its subscriber was down) must
    /// not be overtaken by the next one already at hand.
    pub prefetch: u16,
    /// One active consumer across every process (ordered Subscriptions):
    /// the others wait as standbys.
    pub single_active_consumer: bool,
}

/// What a Bridge's consumer consumes: the channel's published messages,
/// on their way out to the Bridge's endpoint, one at a time and in order
/// (one active consumer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConsumerSpec {
    /// The Bridge's channel.
    pub channel: ChannelKey,
    /// The Bridge.
    pub bridge: ObjectKey,
    /// Its queue's bound.
    pub backlog: Backlog,
}

/// What a process's listener of a channel's remote publishes consumes:
/// its own exclusive queue of what MQTT and AMQP clients publish there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteListenerSpec {
    /// The channel.
    pub channel: ChannelKey,
    /// The queue's name (unique to the process).
    pub queue: String,
}

/// What a gateway replica's listener of a channel consumes: its own
/// exclusive queue of everything the channel carries (see
/// [`topology::declare_channel_listener`]), for the replica's WebSocket
/// clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelListenerSpec {
    /// The channel.
    pub channel: ChannelKey,
    /// The queue's name (unique to the replica and the listener).
    pub queue: String,
}

/// The queue a consumer consumes, and how it is declared.
#[derive(Debug, Clone)]
enum Source {
    Subscription(ConsumerSpec),
    Bridge(BridgeConsumerSpec),
    Remote(RemoteListenerSpec),
    Channel(ChannelListenerSpec),
}

impl Source {
    /// The owner, for logs and the consumer tag.
    fn owner(&self) -> &ObjectKey {
        match self {
            Source::Subscription(spec) => &spec.subscription,
            Source::Bridge(spec) => &spec.bridge,
            Source::Remote(spec) => &spec.channel,
            Source::Channel(spec) => &spec.channel,
        }
    }

    fn queue(&self) -> String {
        match self {
            Source::Subscription(spec) => subscription_queue(&spec.subscription),
            Source::Bridge(spec) => bridge_queue(&spec.bridge),
            Source::Remote(spec) => spec.queue.clone(),
            Source::Channel(spec) => spec.queue.clone(),
        }
    }

    fn prefetch(&self) -> u16 {
        match self {
            Source::Subscription(spec) => spec.prefetch.max(1),
            Source::Bridge(_) => 1,
            Source::Remote(_) | Source::Channel(_) => 256,
        }
    }

    async fn declare(&self, ch: &lapin::Channel) -> lapin::Result<()> {
        match self {
            Source::Subscription(spec) => {
                topology::declare_subscription(
                    ch,
                    &spec.channel,
                    &spec.subscription,
                    spec.backlog,
                    spec.single_active_consumer,
                )
                .await
            }
            Source::Bridge(spec) => {
                topology::declare_bridge(ch, &spec.channel, &spec.bridge, spec.backlog).await
            }
            Source::Remote(spec) => topology::declare_remote_listener(ch, &spec.channel, &spec.queue).await,
            Source::Channel(spec) => topology::declare_channel_listener(ch, &spec.channel, &spec.queue).await,
        }
    }
}

/// Where a consumer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerState {
    /// Waiting for the broker, or for a retry.
    Waiting(String),
    /// Consuming on connection `generation`.
    Consuming {
        /// The connection it consumes on.
        generation: u64,
    },
}

/// A running consumer; stops (and its unacknowledged messages return to
/// the queue) when dropped.
pub struct ConsumerHandle {
    state: watch::Receiver<ConsumerState>,
    task: JoinHandle<()>,
    /// Asks the consumer to stop taking messages and finish what it holds.
    stop: watch::Sender<bool>,
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConsumerHandle {
    /// Starts consuming `spec`'s queue on `broker` into `deliver`.
    pub fn spawn(broker: Broker, spec: ConsumerSpec, deliver: Deliver) -> Self {
        Self::start(broker, Source::Subscription(spec), deliver)
    }

    /// Starts consuming the queue of the Bridge of `spec` on `broker` into
    /// `deliver`, which sends each message out to the endpoint.
    pub fn spawn_bridge(broker: Broker, spec: BridgeConsumerSpec, deliver: Deliver) -> Self {
        Self::start(broker, Source::Bridge(spec), deliver)
    }

    /// Starts consuming what MQTT and AMQP clients publish on the channel
    /// of `spec` into `deliver`; messages wsbridge wrote are acknowledged
    /// and skipped (the process that wrote them handed them on already).
    pub fn spawn_remote_listener(broker: Broker, spec: RemoteListenerSpec, deliver: Deliver) -> Self {
        Self::start(broker, Source::Remote(spec), deliver)
    }

    /// Starts consuming everything the channel of `spec` carries into
    /// `deliver`, messages wsbridge wrote included (nothing else hands
    /// them to a gateway replica's clients).
    pub fn spawn_channel_listener(broker: Broker, spec: ChannelListenerSpec, deliver: Deliver) -> Self {
        Self::start(broker, Source::Channel(spec), deliver)
    }

    fn start(broker: Broker, source: Source, deliver: Deliver) -> Self {
        let (tx, rx) = watch::channel(ConsumerState::Waiting("starting".into()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(broker, source, deliver, tx, stopped));
        Self {
            state: rx,
            task,
            stop,
        }
    }

    /// Stops gracefully: the broker sends nothing more (the consumer is
    /// cancelled), the messages at hand finish their delivery and are
    /// acknowledged as usual within `drain`; whatever is still held then
    /// (or could not be delivered yet) goes back to the queue.
    pub async fn stop(mut self, drain: Duration) {
        self.stop.send_replace(true);
        let _ = tokio::time::timeout(drain, &mut self.task).await;
        // Dropped: aborted if it did not finish (its channel closes and the
        // broker takes back what it held).
    }

    /// The state now.
    pub fn state(&self) -> ConsumerState {
        self.state.borrow().clone()
    }

    /// Waits until consuming (or the consumer ended).
    pub async fn consuming(&self) {
        let mut state = self.state.clone();
        let _ = state
            .wait_for(|s| matches!(s, ConsumerState::Consuming { .. }))
            .await;
    }
}

async fn run(
    broker: Broker,
    spec: Source,
    deliver: Deliver,
    state: watch::Sender<ConsumerState>,
    mut stop: watch::Receiver<bool>,
) {
    let queue = spec.queue();
    let mut backoff = ReconnectBackoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let connected = tokio::select! {
            connected = broker.connected() => connected,
            () = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        let Some((connection, generation)) = connected else {
            return;
        };
        let session = consume(
            &broker,
            &connection,
            generation,
            &spec,
            &queue,
            &deliver,
            &state,
            &mut stop,
        );
        let reason = match session.await {
            _ if *stop.borrow() => return,
            Ok(()) => {
                backoff.reset();
                "the broker ended the consumer".to_string()
            }
            Err(e) => e,
        };
        warn!(owner = %spec.owner(), queue, %reason, "stopped consuming; resuming");
        state.send_replace(ConsumerState::Waiting(reason));
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// One consuming session on one channel: until the channel or the
/// connection fails (lapin does not always end a consumer's stream when its
/// connection dies, so the broker's state is watched too). Messages
/// unacknowledged when it ends are returned to the queue by the broker
/// (their channel is gone) and delivered again: at least once, duplicates
/// identified by `ce-id`. Asked to `stop`, it cancels its consumer and
/// returns once the messages at hand are settled.
#[allow(clippy::too_many_arguments)]
async fn consume(
    broker: &Broker,
    connection: &lapin::Connection,
    generation: u64,
    spec: &Source,
    queue: &str,
    deliver: &Deliver,
    state: &watch::Sender<ConsumerState>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let mut link = broker.link();
    let declared = async {
        let ch = connection.create_channel().await?;
        ch.basic_qos(spec.prefetch(), BasicQosOptions::default()).await?;
        spec.declare(&ch).await?;
        let owner = spec.owner();
        let consumer = ch
            .basic_consume(
                queue.into(),
                format!("wsbridge-{}-{}", owner.namespace, owner.name).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>((ch, consumer))
    };
    // Opening a channel on a connection that just died can hang: the
    // connection's loss, or a deadline, ends the wait.
    let (ch, mut consumer) = tokio::select! {
        consumer = tokio::time::timeout(SETUP_TIMEOUT, declared) => match consumer {
            Ok(consumer) => consumer.map_err(|e| e.to_string())?,
            Err(_) => return Err(format!("no consumer within {SETUP_TIMEOUT:?}")),
        },
        () = lost(&mut link, generation) => return Err(LOST.into()),
    };
    info!(owner = %spec.owner(), queue, generation, "consuming");
    state.send_replace(ConsumerState::Consuming { generation });

    let mut settling: FuturesUnordered<Handing> = FuturesUnordered::new();
    let mut acks = Acks::new(spec.prefetch());
    let mut stopping = false;
    loop {
        if stopping && settling.is_empty() {
            write_acks(&mut acks).await;
            return Ok(());
        }
        let acks_due = acks.due();
        tokio::select! {
            Some((held, outcome)) = settling.next(), if !settling.is_empty() => {
                match next_step(outcome) {
                    Step::Ack => acks.ended(held.tag, held.acker),
                    Step::Requeue => {
                        acks.released(held.tag);
                        held.requeue().await;
                    }
                    // Stopping: not handed in again here; another consumer
                    // (or this one after a restart) delivers it.
                    Step::Retry if stopping => {
                        acks.released(held.tag);
                        held.requeue().await;
                    }
                    // Kept at hand and handed in again, not returned to the
                    // queue: a quorum queue would put it behind the messages
                    // that came after it.
                    Step::Retry => settling.push(Box::pin(held.hand_in_after(REDELIVERY_PAUSE, deliver.clone()))),
                }
            }
            () = async { let _ = stop.wait_for(|s| *s).await; }, if !stopping => {
                stopping = true;
                // Nothing more comes; what arrived meanwhile is never
                // handed in and goes back with the channel.
                let tag = consumer.tag();
                let _ = tokio::time::timeout(
                    SETTLE_TIMEOUT,
                    ch.basic_cancel(tag, BasicCancelOptions::default()),
                )
                .await;
            }
            delivery = consumer.next(), if !stopping => {
                let delivery = match delivery {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Ok(()),
                };
                if matches!(spec, Source::Remote(_)) && written_by_wsbridge(&delivery.properties) {
                    let _ = tokio::time::timeout(
                        SETTLE_TIMEOUT,
                        delivery.acker.ack(BasicAckOptions::default()),
                    )
                    .await;
                    continue;
                }
                acks.taken(delivery.delivery_tag);
                let held = Held {
                    msg: decode(delivery.data, &delivery.properties),
                    tag: delivery.delivery_tag,
                    acker: delivery.acker,
                };
                settling.push(Box::pin(held.hand_in_after(Duration::ZERO, deliver.clone())));
            }
            () = tokio::time::sleep_until(acks_due.unwrap_or_else(tokio::time::Instant::now)), if acks_due.is_some() => {
                write_acks(&mut acks).await;
            }
            () = lost(&mut link, generation) => return Err(LOST.into()),
        }
    }
}

/// Writes the acknowledgements `acks` collected (see [`Acks`]).
async fn write_acks(acks: &mut Acks<Acker>) {
    for Ack { acker, multiple } in acks.take() {
        // Bounded: on a connection that just died the write may never
        // complete, and the consuming loop waits for it.
        match tokio::time::timeout(SETTLE_TIMEOUT, acker.ack(BasicAckOptions { multiple })).await {
            Ok(Ok(_)) => {}
            // The channel is gone: the broker delivers the messages again.
            Ok(Err(e)) => debug!(error = %e, "acknowledgement not sent"),
            Err(_) => debug!("acknowledgement not written in time"),
        }
    }
}

const LOST: &str = "the connection to the broker was lost";

/// How long opening a channel, declaring and starting to consume may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Resolves once connection `generation` is no longer the current one.
async fn lost(link: &mut watch::Receiver<Link>, generation: u64) {
    let _ = link
        .wait_for(|l| !matches!(l.state, BrokerState::Connected { generation: g } if g == generation))
        .await;
}

/// How long writing an acknowledgement (or a requeue) may take before the
/// consumer moves on (the broker redelivers what it never heard of).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a message whose delivery did not end waits before it is handed
/// to the engine again: a subscriber that is down is not hammered.
const REDELIVERY_PAUSE: Duration = Duration::from_secs(1);

/// A held message on its way through the engine.
type Handing = Pin<Box<dyn Future<Output = (Held, Option<Settlement>)> + Send>>;

/// A message taken from the queue and not yet acknowledged.
struct Held {
    /// Without a settle handle: each hand-in gets its own.
    msg: Message,
    /// Its delivery tag on the consuming channel.
    tag: u64,
    acker: Acker,
}

impl Held {
    /// Hands the message to the engine after `pause`; resolves with how its
    /// delivery ended (`None`: it never ended, e.g. the engine did not take it).
    async fn hand_in_after(self, pause: Duration, deliver: Deliver) -> (Self, Option<Settlement>) {
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let (settle, settled) = Settle::new();
        if !deliver(Arc::new(self.msg.clone().with_settle(settle))) {
            debug!(id = self.msg.id(), "the engine did not take the message");
        }
        // Not taken: the handle was dropped with the message, `settled` is closed.
        let outcome = settled.await.ok();
        (self, outcome)
    }

    async fn requeue(self) {
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        match tokio::time::timeout(SETTLE_TIMEOUT, self.acker.nack(requeue)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => debug!(id = self.msg.id(), error = %e, "requeue not sent"),
            Err(_) => debug!(id = self.msg.id(), "requeue not written in time"),
        }
    }
}

/// What to do with a message once the engine is done with it.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Its delivery ended: it leaves the backlog.
    Ack,
    /// Give it back to the broker (this consumer is stopping, or the engine
    /// cannot take it): another consumer, or this one later, delivers it.
    Requeue,
    /// Its subscriber could not take it yet: hand it in again.
    Retry,
}

fn next_step(outcome: Option<Settlement>) -> Step {
    if acknowledged(outcome) {
        return Step::Ack;
    }
    match outcome {
        None | Some(Settlement::Dropped("shutdown" | "unsubscribed")) => Step::Requeue,
        Some(_) => Step::Retry,
    }
}

/// Whether a message leaves its backlog: delivered, taken by the
/// dead-letter sink, or refused for good (a 4xx, a denied destination).
/// Anything else stays in the backlog and is delivered again: a subscriber
/// that was unreachable through all its retries (without a dead-letter
/// sink), a dead-letter sink that failed (the message is not safe yet), a
/// stop, a full queue, or no settlement at all. What bounds a backlog is
/// its length: its oldest messages overflow to the dead-letter queue.
fn acknowledged(outcome: Option<Settlement>) -> bool {
    matches!(
        outcome,
        Some(
            Settlement::Delivered
                | Settlement::DeadLettered
                | Settlement::Dropped("rejected" | "destination_denied")
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_ended_delivery_leaves_the_backlog() {
        for ended in [
            Settlement::Delivered,
            Settlement::DeadLettered,
            Settlement::Dropped("rejected"),
            Settlement::Dropped("destination_denied"),
        ] {
            assert!(acknowledged(Some(ended)), "{ended:?}");
        }
        for kept in [
            Settlement::Dropped("retries_exhausted"),
            Settlement::Dropped("dead_letter_failed"),
            Settlement::Dropped("shutdown"),
            Settlement::Dropped("unsubscribed"),
            Settlement::Dropped("queue_full"),
        ] {
            assert!(!acknowledged(Some(kept)), "{kept:?}");
        }
        assert!(!acknowledged(None));
    }

    #[test]
    fn a_stop_returns_the_message_and_a_failure_retries_it() {
        assert_eq!(next_step(None), Step::Requeue);
        assert_eq!(next_step(Some(Settlement::Dropped("shutdown"))), Step::Requeue);
        assert_eq!(
            next_step(Some(Settlement::Dropped("retries_exhausted"))),
            Step::Retry
        );
        assert_eq!(
            next_step(Some(Settlement::Dropped("dead_letter_failed"))),
            Step::Retry
        );
        assert_eq!(next_step(Some(Settlement::Delivered)), Step::Ack);
    }
}
