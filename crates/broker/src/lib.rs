//! Durable channels on RabbitMQ: a channel's messages go through the broker
//! instead of one process's memory, so that what was accepted survives
//! restarts and a subscriber that is down gets its backlog later.
//!
//! - [`BrokerUrl`]: the installation's `amqp://` or `amqps://` URL, never
//!   shown with its credentials;
//! - [`Broker`]: one connection, reconnected with backoff by us (not by
//!   lapin's recovery), its state watched by `/readyz`, metrics and every
//!   publisher and consumer;
//! - [`topology`]: the names and declarations of a channel's exchange, a
//!   subscription's quorum queue and its overflow dead-letter queue;
//! - [`Publisher`]: publishing with confirms: `Ok` only once the broker
//!   persisted the message;
//! - [`consumer`]: a subscription's queue consumed into the delivery engine,
//!   each message acknowledged only once its delivery ended (several at
//!   once where the prefetch window allows: `acks.rs`); a bridge's
//!   queue consumed out to its endpoint the same way;
//! - [`Broker::declare_subscription`] and the other declare and delete
//!   operations: the controller's side of the topology (`admin.rs`);
//! - [`Durable`]: what a role holds: the connection, its publisher and
//!   metrics, and the consumers it starts.
//!
//! No Kubernetes client, no command line: the roles adapt this crate.
#![forbid(unsafe_code)]

mod acks;
mod admin;
mod codec;
mod connection;
pub mod consumer;
mod durable;
pub mod metrics;
mod publisher;
pub mod remote_auth;
pub mod topology;
mod url;

pub use admin::AdminError;
pub use codec::{decode, encode};
pub use connection::{Broker, BrokerOptions, BrokerState};
pub use consumer::{
    BridgeConsumerSpec, ChannelListenerSpec, ConsumerHandle, ConsumerSpec, RemoteListenerSpec,
};
pub use durable::{Durable, DurableConsumer, MAX_UNCONFIRMED, backlog_key};
pub use metrics::BrokerMetrics;
pub use publisher::{PublishError, Publisher, Unconfirmed};
pub use url::{BrokerUrl, InvalidBrokerUrl};
