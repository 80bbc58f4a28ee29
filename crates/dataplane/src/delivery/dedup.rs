//! Retried publishes: a publisher that sends the same `Idempotency-Key`
//! (or, without one, the same `ce-id`) on a channel again within the window
//! gets the first publish's id back, and the message is not sent again to an
//! endpoint that took it, nor dispatched again to the subscribers.
//!
//! What is remembered is bounded in bytes (moka's weighed cache, entries
//! expire `window` after they were made); an entry evicted early because
//! the bound was reached is counted, as is every duplicate suppressed.
//! The memory is per process: a retry that reaches another gateway replica
//! is recognised by the bridges' workers (each endpoint has one), not for
//! the subscribers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use moka::notification::RemovalCause;
use moka::sync::Cache;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::{Mutex, OwnedMutexGuard};

use wsbridge_core::{ChannelKey, ObjectKey};

/// How long a publish's key is remembered by default.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(10 * 60);
/// What the remembered keys may hold by default, in bytes (about 100,000
/// keys of 64 bytes).
pub const DEFAULT_DEDUP_BYTES: u64 = 32 << 20;
/// The longest key taken; longer ones are refused (400).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// Bookkeeping of one entry beyond its key, for the byte bound.
const ENTRY_OVERHEAD: usize = 160;

/// The header a publisher names a publish with.
pub const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// Where a duplicate was not sent again.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DuplicateLabels {
    /// `endpoint` or `subscribers`.
    target: &'static str,
}

/// A key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the Idempotency-Key (or ce-id) must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes of text")]
pub struct InvalidKey;

/// The key of a publish: `Idempotency-Key`, else `ce-id`; `None` when the
/// publisher gave neither (every publish is then new).
pub fn publish_key(headers: &http::HeaderMap) -> Result<Option<String>, InvalidKey> {
    let Some(value) = headers
        .get(IDEMPOTENCY_KEY)
        .or_else(|| headers.get(crate::message::CE_ID))
    else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| InvalidKey)?.trim();
    if text.is_empty() || text.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(InvalidKey);
    }
    Ok(Some(text.to_owned()))
}

/// What became of one publish so far.
#[derive(Debug, Default)]
pub struct Publication {
    /// The message id the first publish answered with.
    pub id: Option<String>,
    /// Bridges whose endpoint took the message.
    pub bridges: HashSet<ObjectKey>,
    /// Whether the subscribers have it.
    pub dispatched: bool,
}

type Key = (ChannelKey, Arc<str>);

/// The publishes of the last window, by channel and key.
#[derive(Clone)]
pub struct RecentPublishes {
    entries: Cache<Key, Arc<Mutex<Publication>>>,
    duplicates: Family<DuplicateLabels, Counter>,
}

impl RecentPublishes {
    /// Remembers keys for `window`, within about `max_bytes`; counters in `registry`.
    pub fn new(window: Duration, max_bytes: u64, registry: &mut Registry) -> Self {
        let duplicates = Family::<DuplicateLabels, Counter>::default();
        let evicted: Counter = Counter::default();
        let r = registry.sub_registry_with_prefix("wsbridge_publish");
        r.register(
            "duplicates",
            "Retried publishes (same Idempotency-Key or ce-id within the window) not sent again, by target",
            duplicates.clone(),
        );
        r.register(
            "dedup_evicted",
            "Publish keys forgotten before their window ended, because the memory bound was reached",
            evicted.clone(),
        );
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|(channel, key): &Key, _| {
                let bytes = channel.namespace.len() + channel.name.len() + key.len() + ENTRY_OVERHEAD;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .time_to_live(window)
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    evicted.inc();
                }
            })
            .build();
        Self { entries, duplicates }
    }

    /// The record of `key` on `channel`, held until the guard is dropped:
    /// a second publish with the same key waits for the first to finish.
    pub async fn lock(&self, channel: &ChannelKey, key: &str) -> OwnedMutexGuard<Publication> {
        let entry = self
            .entries
            .get_with((channel.clone(), Arc::from(key)), Default::default);
        entry.lock_owned().await
    }

    /// Counts a duplicate not sent again to an endpoint.
    pub fn skipped_endpoint(&self) {
        self.count("endpoint");
    }

    /// Counts a duplicate not dispatched again to the subscribers.
    pub fn skipped_subscribers(&self) {
        self.count("subscribers");
    }

    fn count(&self, target: &'static str) {
        self.duplicates.get_or_create(&DuplicateLabels { target }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn the_idempotency_key_wins_over_ce_id() {
        let key = |pairs: &[(&str, &str)]| publish_key(&headers(pairs));
        assert_eq!(key(&[]), Ok(None));
        assert_eq!(key(&[("ce-id", "a")]), Ok(Some("a".into())));
        assert_eq!(
            key(&[("ce-id", "a"), ("idempotency-key", "b")]),
            Ok(Some("b".into()))
        );
        assert_eq!(key(&[("idempotency-key", " ")]), Err(InvalidKey));
        assert_eq!(key(&[("idempotency-key", &"k".repeat(257))]), Err(InvalidKey));
    }

    #[tokio::test]
    async fn a_key_is_one_record_per_channel() {
        let recent = RecentPublishes::new(
            DEFAULT_DEDUP_WINDOW,
            DEFAULT_DEDUP_BYTES,
            &mut Registry::default(),
        );
        let orders = ChannelKey::new("default", "orders");
        {
            let mut first = recent.lock(&orders, "k").await;
            first.id = Some("id-1".into());
            first.dispatched = true;
        }
        assert_eq!(recent.lock(&orders, "k").await.id.as_deref(), Some("id-1"));
        let other = ChannelKey::new("default", "other");
        assert!(!recent.lock(&other, "k").await.dispatched);
    }

    #[test]
    fn memory_is_bounded_and_evictions_are_counted() {
        let mut registry = Registry::default();
        let recent = RecentPublishes::new(DEFAULT_DEDUP_WINDOW, 64 * 1024, &mut registry);
        let channel = ChannelKey::new("default", "orders");
        for i in 0..10_000 {
            recent.entries.insert(
                (channel.clone(), Arc::from(format!("key-{i}"))),
                Default::default(),
            );
        }
        recent.entries.run_pending_tasks();
        assert!(recent.entries.weighted_size() <= 64 * 1024);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let evicted: f64 = text
            .lines()
            .find(|l| l.starts_with("wsbridge_publish_dedup_evicted_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap();
        assert!(evicted > 9_000.0, "{text}");
    }
}
