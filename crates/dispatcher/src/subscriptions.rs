//! What the API says, and which backlogs that makes this replica consume:
//! the Channels (their backend and delivery defaults) and Subscriptions
//! seen through the watches, kept in a routing index so that each
//! Subscription's subscriber is built exactly as the worker, the gateway
//! and standalone build it (channel defaults, retry, backoff, timeout,
//! dead-letter sink). A signed Subscription is consumed only with its
//! signing key, and a Subscription of a Channel whose Bridges name a token
//! only with those tokens (the controller's copies, mounted:
//! `DeliveryKeys`); until then it is held. [`Catalog::wanted`] is a pure
//! function of that state.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use wsbridge_api::{BacklogSpec, Bridge, Channel, ChannelBackend, Subscription};
use wsbridge_broker::topology::Backlog;
use wsbridge_core::{ChannelKey, ObjectKey};
use wsbridge_dataplane::delivery::delivery_keys::DeliveryKeys;
use wsbridge_dataplane::delivery::{Ordering, SubscriberSpec};
use wsbridge_dataplane::routing::RoutingIndex;
use wsbridge_translate as translate;

/// Why a Subscription's backlog is left in the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    /// It names a `signingSecretRef` and its signing key is not among the
    /// delivery keys (yet): its deliveries would go out unsigned.
    SigningUnavailable,
    /// A Bridge of its Channel names a `tokenSecretRef` and its token is
    /// not among the delivery keys (yet): its endpoint messages would go
    /// out without the token.
    BridgeTokenUnavailable,
}

impl HoldReason {
    /// The reason's word (metric label, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::SigningUnavailable => "SigningUnavailable",
            HoldReason::BridgeTokenUnavailable => "BridgeTokenUnavailable",
        }
    }
}

/// What to do with one Subscription's backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// Consume it into the delivery engine as `subscriber`.
    Consume {
        channel: ChannelKey,
        /// Boxed: the other variant is much smaller.
        subscriber: Box<SubscriberSpec>,
        backlog: Backlog,
    },
    /// Keep its queue declared (so nothing published is lost) and consume
    /// nothing.
    Hold {
        channel: ChannelKey,
        backlog: Backlog,
        /// Declared with single active consumer, as its consumer would.
        ordered: bool,
        reason: HoldReason,
    },
}

impl Want {
    /// Why it is held, when it is.
    pub fn hold_reason(&self) -> Option<HoldReason> {
        match self {
            Want::Hold { reason, .. } => Some(*reason),
            Want::Consume { .. } => None,
        }
    }
}

/// A Subscription as far as the backlog goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Facts {
    channel: ChannelKey,
    backlog: Backlog,
    signed: bool,
}

/// The Channels and Subscriptions seen so far.
#[derive(Default)]
pub struct Catalog {
    index: RoutingIndex,
    backends: HashMap<ChannelKey, ChannelBackend>,
    subscriptions: HashMap<ObjectKey, Facts>,
    /// Each Bridge's Channel, and whether it names a token.
    bridges: HashMap<ObjectKey, (ChannelKey, bool)>,
    /// The signing keys of signed Subscriptions and the Bridges' tokens.
    keys: Arc<DeliveryKeys>,
}

impl Catalog {
    /// The signing keys changed.
    pub fn set_keys(&mut self, keys: Arc<DeliveryKeys>) {
        self.keys = keys;
    }

    /// A Bridge was created or changed.
    pub fn apply_bridge(&mut self, key: ObjectKey, bridge: &Bridge) {
        let channel = key.sibling(&bridge.spec.channel);
        self.bridges
            .insert(key, (channel, bridge.spec.token_secret_ref.is_some()));
    }

    /// A Bridge is gone.
    pub fn delete_bridge(&mut self, key: &ObjectKey) {
        self.bridges.remove(key);
    }

    /// Whether a Bridge of `channel` names a token that is not among the keys.
    fn token_missing(&self, channel: &ChannelKey) -> bool {
        self.bridges
            .iter()
            .any(|(bridge, (on, token))| on == channel && *token && self.keys.bridge_token(bridge).is_none())
    }

    /// A Channel was created or changed.
    pub fn apply_channel(&mut self, key: ChannelKey, channel: &Channel) {
        match translate::channel_info(&key.namespace, &channel.spec) {
            Ok(info) => {
                self.index.apply_channel(key.clone(), info);
                self.backends.insert(key, channel.spec.backend());
            }
            Err(e) => {
                tracing::warn!(channel = %key, error = %e, "ignoring an unusable Channel");
                self.delete_channel(&key);
            }
        }
    }

    /// A Channel is gone.
    pub fn delete_channel(&mut self, key: &ChannelKey) {
        self.index.delete_channel(key);
        self.backends.remove(key);
    }

    /// A Subscription was created or changed.
    pub fn apply_subscription(&mut self, key: ObjectKey, subscription: &Subscription) {
        let spec = &subscription.spec;
        match translate::subscription_info(&key.namespace, spec) {
            Ok(info) => {
                let backlog = spec.backlog.as_ref();
                let facts = Facts {
                    channel: key.sibling(&spec.channel),
                    backlog: Backlog {
                        max_bytes: BacklogSpec::max_bytes(backlog),
                        max_messages: BacklogSpec::max_messages(backlog),
                    },
                    signed: spec.signing_secret_ref.is_some(),
                };
                self.index.apply_subscription(key.clone(), info);
                self.subscriptions.insert(key, facts);
            }
            Err(e) => {
                tracing::warn!(subscription = %key, error = %e, "ignoring an unusable Subscription");
                self.delete_subscription(&key);
            }
        }
    }

    /// A Subscription is gone.
    pub fn delete_subscription(&mut self, key: &ObjectKey) {
        self.index.delete_subscription(key);
        self.subscriptions.remove(key);
    }

    /// Every Subscription of a `rabbitmq` Channel and what to do with its
    /// backlog; the others (on `memory`, or on a Channel not seen) have
    /// no backlog to consume.
    pub fn wanted(&self) -> BTreeMap<ObjectKey, Want> {
        let mut out = BTreeMap::new();
        for (key, facts) in &self.subscriptions {
            if self.backends.get(&facts.channel) != Some(&ChannelBackend::Rabbitmq) {
                continue;
            }
            let routes = self.index.routes(&facts.channel);
            let id = key.to_string();
            let Some(subscriber) = routes.subscribers.iter().find(|s| s.id == id) else {
                continue;
            };
            let signing = facts.signed.then(|| self.keys.signing(key)).flatten();
            let hold = if facts.signed && signing.is_none() {
                Some(HoldReason::SigningUnavailable)
            } else if self.token_missing(&facts.channel) {
                Some(HoldReason::BridgeTokenUnavailable)
            } else {
                None
            };
            if let Some(reason) = hold {
                out.insert(
                    key.clone(),
                    Want::Hold {
                        channel: facts.channel.clone(),
                        backlog: facts.backlog,
                        ordered: subscriber.policy.ordering == Ordering::Ordered,
                        reason,
                    },
                );
                continue;
            }
            let signing = signing.cloned();
            let want = Want::Consume {
                channel: facts.channel.clone(),
                subscriber: Box::new(SubscriberSpec {
                    signing,
                    ..subscriber.clone()
                }),
                backlog: facts.backlog,
            };
            out.insert(key.clone(), want);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use wsbridge_api::{ChannelSpec, SubscriptionSpec};

    fn channel(backend: &str, delivery: &str) -> Channel {
        let spec: ChannelSpec =
            serde_json_from(&format!(r#"{{"backend": "{backend}", "delivery": {delivery}}}"#));
        Channel::new("c", spec)
    }

    fn subscription(extra: &str) -> Subscription {
        let spec: SubscriptionSpec = serde_json_from(&format!(
            r#"{{"channel": "c", "subscriber": {{"uri": "http://sub.example/in"}}{extra}}}"#
        ));
        Subscription::new("s", spec)
    }

    fn serde_json_from<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_json::from_str(text).expect("valid test object")
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("team", name)
    }

    #[test]
    fn a_subscription_of_a_rabbitmq_channel_is_consumed_with_the_channel_defaults() {
        let mut catalog = Catalog::default();
        catalog.apply_channel(key("c"), &channel("rabbitmq", r#"{"retry": 7, "timeout": "3s"}"#));
        catalog.apply_subscription(
            key("s"),
            &subscription(r#", "delivery": {"ordering": "unordered", "maxInFlight": 9}, "backlog": {"maxMessages": 500}"#),
        );
        let wanted = catalog.wanted();
        let Some(Want::Consume {
            channel,
            subscriber,
            backlog,
        }) = wanted.get(&key("s"))
        else {
            panic!("not consumed: {wanted:?}");
        };
        assert_eq!(*channel, key("c"));
        assert_eq!(subscriber.id, "team/s");
        assert_eq!(subscriber.uri, "http://sub.example/in");
        assert_eq!(subscriber.policy.retry, 7);
        assert_eq!(subscriber.policy.timeout, Duration::from_secs(3));
        assert_eq!(subscriber.policy.max_in_flight(), 9);
        assert_eq!(backlog.max_messages, 500);
        assert_eq!(backlog.max_bytes, BacklogSpec::DEFAULT_MAX_BYTES);
    }

    #[test]
    fn memory_channels_unknown_channels_and_deleted_subscriptions_are_not_consumed() {
        let mut catalog = Catalog::default();
        catalog.apply_subscription(key("s"), &subscription(""));
        assert!(catalog.wanted().is_empty(), "no Channel seen yet");
        catalog.apply_channel(key("c"), &channel("memory", "{}"));
        assert!(catalog.wanted().is_empty(), "memory channel");
        catalog.apply_channel(key("c"), &channel("rabbitmq", "{}"));
        assert_eq!(catalog.wanted().len(), 1);
        catalog.apply_channel(key("c"), &channel("memory", "{}"));
        assert!(catalog.wanted().is_empty(), "switched to memory");
        catalog.apply_channel(key("c"), &channel("rabbitmq", "{}"));
        catalog.delete_subscription(&key("s"));
        assert!(catalog.wanted().is_empty(), "deleted");
        catalog.apply_subscription(key("s"), &subscription(""));
        catalog.delete_channel(&key("c"));
        assert!(catalog.wanted().is_empty(), "channel deleted");
    }

    #[test]
    fn a_signed_subscription_is_held_until_its_key_is_there_then_consumed_signed() {
        let mut catalog = Catalog::default();
        catalog.apply_channel(key("c"), &channel("rabbitmq", "{}"));
        catalog.apply_subscription(
            key("s"),
            &subscription(r#", "signingSecretRef": {"name": "hook", "key": "secret"}"#),
        );
        assert_eq!(
            catalog.wanted().get(&key("s")),
            Some(&Want::Hold {
                channel: key("c"),
                backlog: Backlog::default(),
                ordered: true,
                reason: HoldReason::SigningUnavailable,
            })
        );

        let dir = std::env::temp_dir().join(format!("wsbridge-dispatcher-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        std::fs::write(dir.join("team.s"), secret).unwrap();
        catalog.set_keys(Arc::new(DeliveryKeys::read(&dir)));
        std::fs::remove_dir_all(&dir).unwrap();
        let Some(Want::Consume { subscriber, .. }) = catalog.wanted().remove(&key("s")) else {
            panic!("not consumed with its key");
        };
        assert!(subscriber.signing.is_some(), "signed");
    }

    #[test]
    fn a_subscription_waits_for_the_tokens_of_its_channels_bridges() {
        let mut catalog = Catalog::default();
        catalog.apply_channel(key("c"), &channel("rabbitmq", "{}"));
        catalog.apply_subscription(key("s"), &subscription(""));
        let bridge = |channel: &str, token: bool| {
            let token = if token {
                r#", "tokenSecretRef": {"name": "t", "key": "token"}"#
            } else {
                ""
            };
            Bridge::new(
                "b",
                serde_json_from(&format!(r#"{{"channel": "{channel}", "endpoint": "e"{token}}}"#)),
            )
        };
        catalog.apply_bridge(key("other"), &bridge("elsewhere", true));
        catalog.apply_bridge(key("plain"), &bridge("c", false));
        assert!(matches!(
            catalog.wanted().get(&key("s")),
            Some(Want::Consume { .. })
        ));
        catalog.apply_bridge(key("feed"), &bridge("c", true));
        assert_eq!(
            catalog.wanted().get(&key("s")).and_then(Want::hold_reason),
            Some(HoldReason::BridgeTokenUnavailable)
        );
        let dir = std::env::temp_dir().join(format!("wsbridge-dispatcher-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bridge_team.feed"), "a-token").unwrap();
        catalog.set_keys(Arc::new(DeliveryKeys::read(&dir)));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            catalog.wanted().get(&key("s")),
            Some(Want::Consume { .. })
        ));
        catalog.delete_bridge(&key("feed"));
        catalog.set_keys(Arc::default());
        assert!(matches!(
            catalog.wanted().get(&key("s")),
            Some(Want::Consume { .. })
        ));
    }
}
