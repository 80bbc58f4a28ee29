//! RabbitMQ's HTTP auth backend (`rabbitmq_auth_backend_http`), served so
//! that the broker's anonymous MQTT clients get exactly what each Channel's
//! flags allow: topic read (subscribe) on a `rabbitmq` Channel with
//! `allowAnonymousSubscribe`, topic write (publish) on one with
//! `allowAnonymousPublish`, and nothing else. The broker asks with `GET`
//! (its default `auth_http.http_method`) and reads `allow` or `deny`.
//!
//! The anonymous user is [`ANONYMOUS_USER`] (the broker's
//! `mqtt.default_user`, with any password); the broker's own users (the
//! operator's, wsbridge's) are its internal backend's business, listed
//! before this one. Everything not allowed below is denied: other users,
//! any queue but an MQTT client's own subscription queue, any exchange but
//! `amq.topic`, any routing key but a channel's `{namespace}.{name}`
//! (wildcard subscriptions included).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use wsbridge_broker::topology::REMOTE_EXCHANGE;
use wsbridge_core::ChannelKey;

use crate::runtime::Runtime;

/// The user name of anonymous MQTT clients (`mqtt.default_user`).
pub const ANONYMOUS_USER: &str = "anonymous";

/// The queues the MQTT plugin declares for a client's subscriptions.
const MQTT_QUEUE_PREFIX: &str = "mqtt-subscription-";

type Params = Query<HashMap<String, String>>;

/// `/auth/user`, `/auth/vhost`, `/auth/resource` and `/auth/topic`.
pub fn router(runtime: Arc<Runtime>) -> Router {
    Router::new()
        .route("/auth/user", get(user))
        .route("/auth/vhost", get(vhost))
        .route("/auth/resource", get(resource))
        .route("/auth/topic", get(topic))
        .with_state(runtime)
}

fn answer(allowed: bool) -> &'static str {
    if allowed { "allow" } else { "deny" }
}

fn anonymous(params: &HashMap<String, String>) -> bool {
    params.get("username").map(String::as_str) == Some(ANONYMOUS_USER)
}

async fn user(Query(params): Params) -> &'static str {
    answer(anonymous(&params))
}

async fn vhost(Query(params): Params) -> &'static str {
    answer(anonymous(&params))
}

async fn resource(Query(params): Params) -> &'static str {
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
    let allowed = anonymous(&params)
        && match get("resource") {
            // Its own subscription queue: declared, bound, consumed.
            "queue" => get("name").starts_with(MQTT_QUEUE_PREFIX),
            // Publishing to and binding on it; the topic decides.
            "exchange" => get("name") == REMOTE_EXCHANGE && matches!(get("permission"), "read" | "write"),
            _ => false,
        };
    answer(allowed)
}

async fn topic(State(runtime): State<Arc<Runtime>>, Query(params): Params) -> &'static str {
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
    if !anonymous(&params) || get("resource") != "topic" || get("name") != REMOTE_EXCHANGE {
        return answer(false);
    }
    let Some(channel) = channel_of(get("routing_key")) else {
        return answer(false);
    };
    let Some(access) = runtime.anonymous_access(&channel) else {
        return answer(false);
    };
    answer(match get("permission") {
        "read" => access.subscribe,
        "write" => access.publish,
        _ => false,
    })
}

/// The channel whose key on `amq.topic` is `key` (`{namespace}.{name}`;
/// names have no dots, a wildcard is no channel).
fn channel_of(key: &str) -> Option<ChannelKey> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_channel_key_names_a_channel() {
        assert_eq!(
            channel_of("team-a.ticker"),
            Some(ChannelKey::new("team-a", "ticker"))
        );
        for key in ["#", "team-a.#", "team-a.*", "team-a", "a.b.c", ".x", "x.", "A.b"] {
            assert_eq!(channel_of(key), None, "{key}");
        }
    }
}
