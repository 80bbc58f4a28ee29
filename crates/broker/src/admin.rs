//! The controller's side of the topology: declaring a channel's, a
//! Subscription's or a Bridge's objects as soon as the Kubernetes object
//! exists (so a publish accepted before any dispatcher or worker started
//! already has its queues to land in), and deleting them with the object.
//!
//! Each operation opens a channel of its own on the shared connection and
//! closes it: a failed operation (a precondition, a queue in use) closes
//! only that channel, and the caller retries by requeueing its reconcile.

use std::future::Future;
use std::time::Duration;

use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use wsbridge_core::{ChannelKey, ObjectKey};

use crate::Broker;
use crate::topology::{
    self, Backlog, bridge_dead_letter_queue, bridge_queue, channel_exchange, dead_letter_queue,
    remote_exchange, remote_publish_exchange, subscription_queue,
};

/// How long one operation may wait for the connection and the broker.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an operation did not happen (no credentials in it).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Not connected, or the broker did not answer in time.
    #[error("the broker is not reachable: {0}")]
    Unreachable(String),
    /// The broker refused (for example a queue that exists with other
    /// arguments: PRECONDITION_FAILED).
    #[error("the broker refused: {0}")]
    Refused(String),
}

impl Broker {
    /// Runs `op` on a channel of its own, within [`OPERATION_TIMEOUT`].
    async fn on_channel<T, F, Fut>(&self, op: F) -> Result<T, AdminError>
    where
        F: FnOnce(lapin::Channel) -> Fut,
        Fut: Future<Output = lapin::Result<T>>,
    {
        let work = async {
            let Some((connection, _)) = self.connected().await else {
                return Err(AdminError::Unreachable("the connection was dropped".into()));
            };
            let ch = connection
                .create_channel()
                .await
                .map_err(|e| AdminError::Unreachable(e.to_string()))?;
            let result = op(ch.clone())
                .await
                .map_err(|e| AdminError::Refused(e.to_string()));
            if ch.status().connected() {
                let _ = ch.close(200, "done".into()).await;
            }
            result
        };
        match tokio::time::timeout(OPERATION_TIMEOUT, work).await {
            Ok(result) => result,
            Err(_) => Err(AdminError::Unreachable(match self.state() {
                crate::BrokerState::Disconnected { reason, .. } => reason,
                _ => format!("no answer within {OPERATION_TIMEOUT:?}"),
            })),
        }
    }

    /// Declares `channel`'s exchanges and their bindings.
    pub async fn declare_channel(&self, channel: &ChannelKey) -> Result<(), AdminError> {
        self.on_channel(|ch| async move { topology::declare_channel(&ch, channel).await })
            .await
    }

    /// Deletes `channel`'s exchanges (their bindings go with them; the
    /// queues of its Subscriptions and Bridges are theirs to delete).
    pub async fn delete_channel(&self, channel: &ChannelKey) -> Result<(), AdminError> {
        let exchanges = [
            remote_exchange(channel),
            remote_publish_exchange(channel),
            channel_exchange(channel),
        ];
        self.on_channel(|ch| async move {
            for exchange in &exchanges {
                ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await?;
            }
            Ok(())
        })
        .await
    }

    /// Declares `subscription`'s backlog on `channel`, as its consumers do.
    pub async fn declare_subscription(
        &self,
        channel: &ChannelKey,
        subscription: &ObjectKey,
        backlog: Backlog,
        single_active_consumer: bool,
    ) -> Result<(), AdminError> {
        self.on_channel(|ch| async move {
            topology::declare_subscription(&ch, channel, subscription, backlog, single_active_consumer).await
        })
        .await
    }

    /// Deletes `subscription`'s backlog and its dead-letter queue, with
    /// whatever they still hold.
    pub async fn delete_subscription(&self, subscription: &ObjectKey) -> Result<(), AdminError> {
        self.delete_queues([subscription_queue(subscription), dead_letter_queue(subscription)])
            .await
    }

    /// Declares `bridge`'s queue of published messages on `channel`.
    pub async fn declare_bridge(
        &self,
        channel: &ChannelKey,
        bridge: &ObjectKey,
        backlog: Backlog,
    ) -> Result<(), AdminError> {
        self.on_channel(|ch| async move { topology::declare_bridge(&ch, channel, bridge, backlog).await })
            .await
    }

    /// Deletes `bridge`'s queue and its dead-letter queue.
    pub async fn delete_bridge(&self, bridge: &ObjectKey) -> Result<(), AdminError> {
        self.delete_queues([bridge_queue(bridge), bridge_dead_letter_queue(bridge)])
            .await
    }

    /// Deletes `queues` (one that does not exist is done), each only once
    /// no one consumes it: a dispatcher or worker still serving the object
    /// would declare it again at once. They stop consuming when the object
    /// is being deleted; until they did, this is refused and the caller
    /// tries again. (Quorum queues do not take `if-unused`, hence the
    /// check first.)
    async fn delete_queues(&self, queues: [String; 2]) -> Result<(), AdminError> {
        for queue in &queues {
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let consumers = self
                .on_channel(|ch| async move {
                    ch.queue_declare(queue.as_str().into(), passive, FieldTable::default())
                        .await
                        .map(|q| q.consumer_count())
                })
                .await;
            match consumers {
                Ok(0) => {}
                Ok(n) => {
                    return Err(AdminError::Refused(format!(
                        "queue {queue} still has {n} consumer(s); deleting it once they stopped"
                    )));
                }
                // A passive declare of a missing queue fails with NOT_FOUND.
                Err(AdminError::Refused(reason)) if reason.contains("NOT_FOUND") => continue,
                Err(e) => return Err(e),
            }
            self.on_channel(|ch| async move {
                ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .map(drop)
            })
            .await?;
        }
        Ok(())
    }
}
