//! The routing index: which subscribers and which bridges a channel has
//! right now. Fed with plain values (by the Kubernetes watches, the gateway's
//! caches or standalone mode's files) and observed through `watch` receivers,
//! so it is applied to and tested without a cluster.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use wsbridge_core::{ChannelKey, ObjectKey};

use super::delivery::{BackoffPolicy, DeliveryPolicy, Ordering, Overflow, SigningKey, SubscriberSpec};

/// Delivery options where every field may be left to a default (Channel
/// defaults, Subscription overrides).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryOptions {
    /// `retry`.
    pub retry: Option<u32>,
    /// `backoffPolicy`.
    pub backoff_policy: Option<BackoffPolicy>,
    /// `backoffDelay`.
    pub backoff_delay: Option<Duration>,
    /// `timeout`.
    pub timeout: Option<Duration>,
    /// `ordering` (+ `maxInFlight`).
    pub ordering: Option<Ordering>,
    /// `deadLetterSink`, resolved to a URI.
    pub dead_letter_sink: Option<http::Uri>,
    /// Queue bound.
    pub queue_capacity: Option<usize>,
    /// `queueCapacityBytes`.
    pub queue_bytes: Option<u64>,
    /// `overflowPolicy`.
    pub overflow: Option<Overflow>,
}

impl DeliveryOptions {
    /// `self` where set, else `base`.
    pub fn or(&self, base: &DeliveryOptions) -> DeliveryOptions {
        DeliveryOptions {
            retry: self.retry.or(base.retry),
            backoff_policy: self.backoff_policy.or(base.backoff_policy),
            backoff_delay: self.backoff_delay.or(base.backoff_delay),
            timeout: self.timeout.or(base.timeout),
            ordering: self.ordering.or(base.ordering),
            dead_letter_sink: self
                .dead_letter_sink
                .clone()
                .or_else(|| base.dead_letter_sink.clone()),
            queue_capacity: self.queue_capacity.or(base.queue_capacity),
            queue_bytes: self.queue_bytes.or(base.queue_bytes),
            overflow: self.overflow.or(base.overflow),
        }
    }

    /// The effective policy, with `defaults` for what is unset.
    pub fn resolve(&self, defaults: &DeliveryPolicy) -> DeliveryPolicy {
        DeliveryPolicy {
            retry: self.retry.unwrap_or(defaults.retry),
            backoff_policy: self.backoff_policy.unwrap_or(defaults.backoff_policy),
            backoff_delay: self.backoff_delay.unwrap_or(defaults.backoff_delay),
            timeout: self.timeout.unwrap_or(defaults.timeout),
            ordering: self.ordering.unwrap_or(defaults.ordering),
            dead_letter_sink: self
                .dead_letter_sink
                .clone()
                .or_else(|| defaults.dead_letter_sink.clone()),
            queue_capacity: self.queue_capacity.unwrap_or(defaults.queue_capacity),
            queue_bytes: self.queue_bytes.unwrap_or(defaults.queue_bytes),
            overflow: self.overflow.unwrap_or(defaults.overflow),
            retry_after_max: defaults.retry_after_max,
        }
    }
}

/// What the index needs of a Channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelInfo {
    /// `allowAnonymousPublish`.
    pub allow_anonymous_publish: bool,
    /// Channel-level delivery defaults.
    pub delivery: DeliveryOptions,
}

/// What the index needs of a Subscription (its channel is in its namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// Channel name.
    pub channel: String,
    /// The resolved subscriber URL.
    pub subscriber_uri: http::Uri,
    /// Subscription-level delivery overrides.
    pub delivery: DeliveryOptions,
    /// The key deliveries are signed with, when the Subscription names one.
    pub signing: Option<SigningKey>,
}

/// What the index needs of a Bridge (its channel is in its namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeInfo {
    /// Channel name.
    pub channel: String,
    /// Endpoint name.
    pub endpoint: String,
}

/// A bridge of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeRoute {
    /// The Bridge.
    pub bridge: ObjectKey,
    /// Its Endpoint.
    pub endpoint: ObjectKey,
}

/// Everything routing needs to know about one channel right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRoutes {
    /// The channel.
    pub key: ChannelKey,
    /// `None` while the Channel does not exist (publish answers 404).
    pub channel: Option<ChannelInfo>,
    /// Subscribers with their effective delivery policy, sorted by id
    /// (the Subscription's `namespace/name`).
    pub subscribers: Vec<SubscriberSpec>,
    /// Bridges, sorted by key.
    pub bridges: Vec<BridgeRoute>,
}

impl ChannelRoutes {
    fn empty(key: ChannelKey) -> Self {
        Self {
            key,
            channel: None,
            subscribers: Vec::new(),
            bridges: Vec::new(),
        }
    }
}

/// A Subscription or Bridge, as the index files it: under its channel.
trait OnChannel {
    fn channel(&self) -> &str;
}

impl OnChannel for SubscriptionInfo {
    fn channel(&self) -> &str {
        &self.channel
    }
}

impl OnChannel for BridgeInfo {
    fn channel(&self) -> &str {
        &self.channel
    }
}

#[derive(Default)]
struct State {
    channels: HashMap<ChannelKey, ChannelInfo>,
    subscriptions: HashMap<ObjectKey, SubscriptionInfo>,
    bridges: HashMap<ObjectKey, BridgeInfo>,
    watches: HashMap<ChannelKey, watch::Sender<Arc<ChannelRoutes>>>,
}

/// The index. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct RoutingIndex {
    defaults: DeliveryPolicy,
    state: Mutex<State>,
}

impl Default for RoutingIndex {
    fn default() -> Self {
        Self::new(DeliveryPolicy::default())
    }
}

impl RoutingIndex {
    /// An empty index; `defaults` fill what neither Channel nor Subscription set.
    pub fn new(defaults: DeliveryPolicy) -> Self {
        Self {
            defaults,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or replaces a Channel.
    pub fn apply_channel(&self, key: ChannelKey, info: ChannelInfo) {
        let mut s = self.lock();
        s.channels.insert(key.clone(), info);
        self.refresh(&mut s, &key);
    }

    /// Removes a Channel (its subscriptions and bridges stay indexed and
    /// come back when it reappears).
    pub fn delete_channel(&self, key: &ChannelKey) {
        let mut s = self.lock();
        s.channels.remove(key);
        self.refresh(&mut s, key);
    }

    /// Adds or replaces a Subscription.
    pub fn apply_subscription(&self, key: ObjectKey, info: SubscriptionInfo) {
        self.apply_member(|s| &mut s.subscriptions, key, info);
    }

    /// Removes a Subscription.
    pub fn delete_subscription(&self, key: &ObjectKey) {
        self.delete_member(|s| &mut s.subscriptions, key);
    }

    /// Adds or replaces a Bridge.
    pub fn apply_bridge(&self, key: ObjectKey, info: BridgeInfo) {
        self.apply_member(|s| &mut s.bridges, key, info);
    }

    /// Removes a Bridge.
    pub fn delete_bridge(&self, key: &ObjectKey) {
        self.delete_member(|s| &mut s.bridges, key);
    }

    /// Adds or replaces a Subscription or Bridge, refreshing the routes of
    /// the channel it is on and of the channel it left.
    fn apply_member<T: OnChannel>(
        &self,
        members: fn(&mut State) -> &mut HashMap<ObjectKey, T>,
        key: ObjectKey,
        info: T,
    ) {
        let mut s = self.lock();
        let new_channel = key.sibling(info.channel());
        let old = members(&mut s).insert(key.clone(), info);
        self.refresh(&mut s, &new_channel);
        if let Some(old) = old {
            let old_channel = key.sibling(old.channel());
            if old_channel != new_channel {
                self.refresh(&mut s, &old_channel);
            }
        }
    }

    fn delete_member<T: OnChannel>(
        &self,
        members: fn(&mut State) -> &mut HashMap<ObjectKey, T>,
        key: &ObjectKey,
    ) {
        let mut s = self.lock();
        if let Some(old) = members(&mut s).remove(key) {
            self.refresh(&mut s, &key.sibling(old.channel()));
        }
    }

    /// The routes of `channel` now.
    pub fn routes(&self, channel: &ChannelKey) -> Arc<ChannelRoutes> {
        let s = self.lock();
        match s.watches.get(channel) {
            Some(tx) => tx.borrow().clone(),
            None => Arc::new(self.compute(&s, channel)),
        }
    }

    /// Follows the routes of `channel`; the receiver sees every change.
    pub fn watch(&self, channel: &ChannelKey) -> watch::Receiver<Arc<ChannelRoutes>> {
        let mut s = self.lock();
        if let Some(tx) = s.watches.get(channel) {
            return tx.subscribe();
        }
        let routes = Arc::new(self.compute(&s, channel));
        let (tx, rx) = watch::channel(routes);
        s.watches.insert(channel.clone(), tx);
        rx
    }

    /// Every channel that exists.
    pub fn channels(&self) -> Vec<ChannelKey> {
        let s = self.lock();
        let mut keys: Vec<_> = s.channels.keys().cloned().collect();
        keys.sort();
        keys
    }

    fn refresh(&self, s: &mut State, channel: &ChannelKey) {
        let Some(tx) = s.watches.get(channel) else {
            return;
        };
        let routes = self.compute(s, channel);
        tx.send_if_modified(|current| {
            if **current == routes {
                false
            } else {
                *current = Arc::new(routes);
                true
            }
        });
    }

    fn compute(&self, s: &State, channel: &ChannelKey) -> ChannelRoutes {
        let mut routes = ChannelRoutes::empty(channel.clone());
        routes.channel = s.channels.get(channel).cloned();
        let channel_defaults = routes
            .channel
            .as_ref()
            .map(|c| c.delivery.clone())
            .unwrap_or_default();
        for (key, sub) in &s.subscriptions {
            if key.namespace == channel.namespace && sub.channel == channel.name {
                routes.subscribers.push(SubscriberSpec {
                    id: key.to_string(),
                    uri: sub.subscriber_uri.clone(),
                    policy: sub.delivery.or(&channel_defaults).resolve(&self.defaults),
                    signing: sub.signing.clone(),
                });
            }
        }
        routes.subscribers.sort_by(|a, b| a.id.cmp(&b.id));
        for (key, bridge) in &s.bridges {
            if key.namespace == channel.namespace && bridge.channel == channel.name {
                routes.bridges.push(BridgeRoute {
                    bridge: key.clone(),
                    endpoint: key.sibling(&bridge.endpoint),
                });
            }
        }
        routes.bridges.sort_by(|a, b| a.bridge.cmp(&b.bridge));
        routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(channel: &str, uri: &str) -> SubscriptionInfo {
        SubscriptionInfo {
            channel: channel.into(),
            subscriber_uri: uri.parse().unwrap(),
            delivery: DeliveryOptions::default(),
            signing: None,
        }
    }

    #[test]
    fn object_keys_parse_and_print() {
        let k: ObjectKey = "default/ticker".parse().unwrap();
        assert_eq!(k, ObjectKey::new("default", "ticker"));
        assert_eq!(k.to_string(), "default/ticker");
        assert!("ticker".parse::<ObjectKey>().is_err());
        assert!("a/b/c".parse::<ObjectKey>().is_err());
        assert!("/b".parse::<ObjectKey>().is_err());
    }

    #[test]
    fn subscriptions_show_up_on_their_channel_only() {
        let index = RoutingIndex::default();
        let ticker = ChannelKey::new("default", "ticker");
        let mut rx = index.watch(&ticker);
        assert!(rx.borrow_and_update().channel.is_none());

        index.apply_channel(ticker.clone(), ChannelInfo::default());
        index.apply_subscription(ObjectKey::new("default", "b"), sub("ticker", "http://b/"));
        index.apply_subscription(ObjectKey::new("default", "a"), sub("ticker", "http://a/"));
        index.apply_subscription(ObjectKey::new("other", "x"), sub("ticker", "http://x/"));
        index.apply_subscription(ObjectKey::new("default", "c"), sub("news", "http://c/"));
        assert!(rx.has_changed().unwrap());
        let routes = rx.borrow_and_update().clone();
        assert!(routes.channel.is_some());
        let ids: Vec<_> = routes.subscribers.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["default/a", "default/b"]);

        // Moving a subscription to another channel removes it here.
        index.apply_subscription(ObjectKey::new("default", "a"), sub("news", "http://a/"));
        let ids: Vec<_> = rx
            .borrow_and_update()
            .subscribers
            .iter()
            .map(|s| s.id.clone())
            .collect();
        assert_eq!(ids, ["default/b"]);
        let news = index.routes(&ChannelKey::new("default", "news"));
        assert_eq!(news.subscribers.len(), 2);

        index.delete_subscription(&ObjectKey::new("default", "b"));
        assert!(rx.borrow_and_update().subscribers.is_empty());
    }

    #[test]
    fn unchanged_applies_do_not_notify() {
        let index = RoutingIndex::default();
        let ticker = ChannelKey::new("default", "ticker");
        index.apply_channel(ticker.clone(), ChannelInfo::default());
        let mut rx = index.watch(&ticker);
        rx.borrow_and_update();
        index.apply_channel(ticker.clone(), ChannelInfo::default());
        index.apply_subscription(ObjectKey::new("default", "s"), sub("other", "http://s/"));
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn subscription_overrides_channel_defaults_which_override_the_global_ones() {
        let defaults = DeliveryPolicy::default();
        let index = RoutingIndex::new(defaults.clone());
        let ticker = ChannelKey::new("default", "ticker");
        index.apply_channel(
            ticker.clone(),
            ChannelInfo {
                allow_anonymous_publish: true,
                delivery: DeliveryOptions {
                    retry: Some(5),
                    timeout: Some(Duration::from_secs(9)),
                    ..Default::default()
                },
            },
        );
        let mut s = sub("ticker", "http://s/");
        s.delivery.retry = Some(1);
        s.delivery.ordering = Some(Ordering::Unordered { max_in_flight: 4 });
        index.apply_subscription(ObjectKey::new("default", "s"), s);
        let routes = index.routes(&ticker);
        let p = &routes.subscribers[0].policy;
        assert_eq!(p.retry, 1);
        assert_eq!(p.timeout, Duration::from_secs(9));
        assert_eq!(p.ordering, Ordering::Unordered { max_in_flight: 4 });
        assert_eq!(p.backoff_delay, defaults.backoff_delay);
        assert!(routes.channel.as_ref().unwrap().allow_anonymous_publish);
    }

    #[test]
    fn bridges_are_indexed_and_channel_deletion_is_seen() {
        let index = RoutingIndex::default();
        let ticker = ChannelKey::new("default", "ticker");
        index.apply_channel(ticker.clone(), ChannelInfo::default());
        let mut rx = index.watch(&ticker);
        index.apply_bridge(
            ObjectKey::new("default", "feed"),
            BridgeInfo {
                channel: "ticker".into(),
                endpoint: "market".into(),
            },
        );
        let routes = rx.borrow_and_update().clone();
        assert_eq!(
            routes.bridges,
            vec![BridgeRoute {
                bridge: ObjectKey::new("default", "feed"),
                endpoint: ObjectKey::new("default", "market"),
            }]
        );
        index.delete_channel(&ticker);
        let routes = rx.borrow_and_update().clone();
        assert!(routes.channel.is_none());
        assert_eq!(
            routes.bridges.len(),
            1,
            "bridges stay indexed without their channel"
        );
        index.delete_bridge(&ObjectKey::new("default", "feed"));
        assert!(rx.borrow_and_update().bridges.is_empty());
        assert!(index.channels().is_empty());
    }
}
