//! What RabbitMQ's HTTP auth backend (`rabbitmq_auth_backend_http`) asks
//! about MQTT clients, and the part of the answer that depends on no one's
//! identity: which RabbitMQ resources an MQTT client of a channel needs at
//! all, and which channel (and which way) a topic request is about. Who may
//! do it is the server's business: standalone answers for anonymous clients
//! from the Channels' flags, the gateway also for Kubernetes tokens (a
//! TokenReview and a SubjectAccessReview).
//!
//! The broker asks four questions, each a set of query (GET, its default
//! `auth_http.http_method`) or form (POST) parameters, and reads `allow` or
//! `deny`:
//!
//! - `/auth/user` (`username`, `password`): may this user log in;
//! - `/auth/vhost` (`username`, `vhost`): may it use this vhost;
//! - `/auth/resource` (`username`, `vhost`, `resource` = `queue` |
//!   `exchange`, `name`, `permission` = `configure` | `write` | `read`);
//! - `/auth/topic` (the same with `resource` = `topic`, the exchange in
//!   `name` and the `routing_key`).
//!
//! Only the first one carries the password. An MQTT client needs its own
//! subscription queues (`mqtt-subscription-*`: declared, bound, consumed),
//! an AMQP client the server-named queue it declares to subscribe
//! (`amq.gen-*`: the broker picks the name, so no client can name, and
//! consume, another's), and both `amq.topic` (publishing to it, binding on
//! it); the topic request (a bind is a topic read, a publish a write)
//! decides the channel: routing key `{namespace}.{name}` on `amq.topic`
//! (MQTT topic `{namespace}/{name}`). Everything else is denied: other
//! queues and exchanges, wildcard subscriptions, any key that is not a
//! channel's.

use std::collections::HashMap;

use wsbridge_core::ChannelKey;

use crate::topology::REMOTE_EXCHANGE;

/// The user name of anonymous MQTT clients (the broker's
/// `mqtt.default_user`, with any password).
pub const ANONYMOUS_USER: &str = "anonymous";

/// The queues the MQTT plugin declares for a client's subscriptions.
pub const MQTT_QUEUE_PREFIX: &str = "mqtt-subscription-";

/// The paths the broker is configured with (`auth_http.user_path` etc.).
pub const USER_PATH: &str = "/auth/user";
pub const VHOST_PATH: &str = "/auth/vhost";
pub const RESOURCE_PATH: &str = "/auth/resource";
pub const TOPIC_PATH: &str = "/auth/topic";

/// One request's parameters.
pub type Params = HashMap<String, String>;

/// The broker's reading of a decision.
pub fn answer(allowed: bool) -> &'static str {
    if allowed { "allow" } else { "deny" }
}

/// Parameter `key`, empty when absent.
pub fn param<'a>(params: &'a Params, key: &str) -> &'a str {
    params.get(key).map(String::as_str).unwrap_or_default()
}

/// Whether the request is about the anonymous user.
pub fn is_anonymous(params: &Params) -> bool {
    param(params, "username") == ANONYMOUS_USER
}

/// The queues the broker names for an AMQP client that declares one
/// without a name (how an AMQP subscriber of a channel gets its queue).
pub const SERVER_NAMED_QUEUE_PREFIX: &str = "amq.gen-";

/// Whether an MQTT or AMQP client may have `permission` on this queue or
/// exchange (`/auth/resource`), whoever it is: its own subscription queues
/// (MQTT's, or a server-named one), and `amq.topic` to publish to and bind
/// on; nothing else.
pub fn resource_allowed(params: &Params) -> bool {
    match param(params, "resource") {
        "queue" => {
            let name = param(params, "name");
            (name.starts_with(MQTT_QUEUE_PREFIX) || name.starts_with(SERVER_NAMED_QUEUE_PREFIX))
                && matches!(param(params, "permission"), "configure" | "write" | "read")
        }
        "exchange" => {
            param(params, "name") == REMOTE_EXCHANGE
                && matches!(param(params, "permission"), "read" | "write")
        }
        _ => false,
    }
}

/// What a topic request (`/auth/topic`) is about: reading (subscribing
/// to) or writing (publishing on) a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicAccess {
    /// `read`: an MQTT subscription, a binding to `amq.topic`.
    Subscribe,
    /// `write`: a publish to `amq.topic`.
    Publish,
}

impl TopicAccess {
    /// The Kubernetes verb on `channels.wsbridge.io` that allows it.
    pub fn verb(self) -> &'static str {
        match self {
            TopicAccess::Subscribe => "subscribe",
            TopicAccess::Publish => "publish",
        }
    }
}

/// The channel and the way of a topic request, or `None` when it is about
/// no channel (another exchange, a wildcard, a key that is not
/// `{namespace}.{name}`, another permission): denied.
pub fn topic_request(params: &Params) -> Option<(ChannelKey, TopicAccess)> {
    if param(params, "resource") != "topic" || param(params, "name") != REMOTE_EXCHANGE {
        return None;
    }
    let access = match param(params, "permission") {
        "read" => TopicAccess::Subscribe,
        "write" => TopicAccess::Publish,
        _ => return None,
    };
    Some((channel_of(param(params, "routing_key"))?, access))
}

/// The channel whose key on `amq.topic` is `key` (`{namespace}.{name}`;
/// names have no dots, a wildcard is no channel).
pub fn channel_of(key: &str) -> Option<ChannelKey> {
    let (namespace, name) = key.split_once('.')?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    (valid(namespace) && valid(name)).then(|| ChannelKey::new(namespace, name))
}

/// What anonymous clients may do on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnonymousAccess {
    /// `allowAnonymousSubscribe`.
    pub subscribe: bool,
    /// `allowAnonymousPublish`.
    pub publish: bool,
}

impl AnonymousAccess {
    /// Whether the flags allow `access` without credentials.
    pub fn allows(self, access: TopicAccess) -> bool {
        match access {
            TopicAccess::Subscribe => self.subscribe,
            TopicAccess::Publish => self.publish,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_a_channel_key_names_a_channel() {
        assert_eq!(
            channel_of("team-a.ticker"),
            Some(ChannelKey::new("team-a", "ticker"))
        );
        for key in [
            "#", "team-a.#", "team-a.*", "team-a", "a.b.c", ".x", "x.", "A.b", "",
        ] {
            assert_eq!(channel_of(key), None, "{key}");
        }
    }

    #[test]
    fn only_a_clients_own_resources_are_allowed() {
        for (resource, name, permission) in [
            ("queue", "mqtt-subscription-abcqos1", "configure"),
            ("queue", "mqtt-subscription-abcqos1", "read"),
            ("queue", "mqtt-subscription-abcqos0", "write"),
            ("queue", "amq.gen-JzTY20BRgKO-HjmUJj0wLg", "configure"),
            ("queue", "amq.gen-JzTY20BRgKO-HjmUJj0wLg", "read"),
            ("exchange", "amq.topic", "read"),
            ("exchange", "amq.topic", "write"),
        ] {
            let p = params(&[("resource", resource), ("name", name), ("permission", permission)]);
            assert!(resource_allowed(&p), "{p:?}");
        }
        for (resource, name, permission) in [
            ("queue", "wsbridge.subscription.a.b", "read"),
            ("queue", "orders", "configure"),
            ("queue", "amq.gen-x", "delete"),
            ("exchange", "amq.topic", "configure"),
            ("exchange", "wsbridge.channel.a.b", "write"),
            ("exchange", "amq.direct", "write"),
            ("topic", "amq.topic", "write"),
            ("", "", ""),
        ] {
            let p = params(&[("resource", resource), ("name", name), ("permission", permission)]);
            assert!(!resource_allowed(&p), "{p:?}");
        }
    }

    #[test]
    fn a_topic_request_names_a_channel_and_a_way() {
        let topic = |name: &str, key: &str, permission: &str| {
            topic_request(&params(&[
                ("resource", "topic"),
                ("name", name),
                ("routing_key", key),
                ("permission", permission),
            ]))
        };
        let ticker = ChannelKey::new("team-a", "ticker");
        assert_eq!(
            topic("amq.topic", "team-a.ticker", "read"),
            Some((ticker.clone(), TopicAccess::Subscribe))
        );
        assert_eq!(
            topic("amq.topic", "team-a.ticker", "write"),
            Some((ticker, TopicAccess::Publish))
        );
        assert_eq!(topic("amq.topic", "team-a.ticker", "configure"), None);
        assert_eq!(topic("amq.fanout", "team-a.ticker", "read"), None);
        assert_eq!(topic("amq.topic", "team-a.#", "read"), None);
        assert_eq!(topic_request(&Params::new()), None);
    }
}
