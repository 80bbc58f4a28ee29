//! Delivery of channel messages to HTTP subscribers.

mod engine;
mod h1;
mod http;
mod policy;
mod pool;

pub use engine::{
    CE_FAILURE, DEAD_LETTER_ATTEMPTS, DEAD_LETTER_REASON, DEAD_LETTER_STATUS, DEAD_LETTER_SUBSCRIBER,
    DeliveryEngine, DeliveryStats, DispatchReport, EngineConfig, ShutdownReport, SubscriberSpec,
};
pub use h1::{HeaderLines, is_header_value};
pub use http::{DEFAULT_CONNECTIONS_PER_ORIGIN, HttpSender, OriginRoute};
pub use policy::{
    AttemptOutcome, BackoffPolicy, DeliveryPolicy, MAX_RETRY_DELAY, Ordering, Verdict, classify,
    parse_retry_after,
};
