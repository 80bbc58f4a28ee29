//! Delivery of channel messages to HTTP subscribers.

mod dead_letter;
mod dedup;
pub mod delivery_keys;
mod engine;
mod h1;
mod http;
mod notices;
mod policy;
mod pool;
mod queue;
mod settle;
mod signing;
mod state;
mod subscriber;

pub use dead_letter::{
    CE_FAILURE, DEAD_LETTER_ATTEMPTS, DEAD_LETTER_REASON, DEAD_LETTER_STATUS, DEAD_LETTER_SUBSCRIBER,
};
pub use dedup::{
    DEFAULT_DEDUP_BYTES, DEFAULT_DEDUP_WINDOW, IDEMPOTENCY_KEY, InvalidKey, MAX_IDEMPOTENCY_KEY_BYTES,
    Publication, RecentPublishes, publish_key,
};
pub use engine::{
    DeliveryEngine, DeliveryStats, DispatchReport, EngineConfig, ShutdownReport, SubscriberSpec,
};
pub use h1::{HeaderLines, is_header_value};
pub use http::{DEFAULT_CONNECTIONS_PER_ORIGIN, HttpSender, OriginRoute};
pub use notices::{DropNotice, DropNoticeSender, DropNotifier, MemoryDropCounts, MemoryDrops};
pub use policy::{
    AttemptOutcome, BackoffPolicy, DeliveryPolicy, MAX_RETRY_DELAY, Ordering, Verdict, classify,
    parse_retry_after,
};
pub use queue::{DEFAULT_QUEUE_BYTES, MEMORY_BUDGET, Overflow, QUEUE_BYTES, QUEUE_FULL};
pub use settle::{Settle, Settlement};
pub use signing::{
    InvalidSigningSecret, SECRET_PREFIX, SigningKey, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP,
};
