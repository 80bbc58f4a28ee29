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
//! (wildcard subscriptions included). What the requests mean is
//! [`wsbridge_broker::remote_auth`], shared with the gateway (which also
//! takes Kubernetes tokens).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use wsbridge_broker::remote_auth::{self, Params, answer, is_anonymous};

pub use wsbridge_broker::remote_auth::{ANONYMOUS_USER, AnonymousAccess};

use crate::runtime::Runtime;

/// `/auth/user`, `/auth/vhost`, `/auth/resource` and `/auth/topic`.
pub fn router(runtime: Arc<Runtime>) -> Router {
    Router::new()
        .route(remote_auth::USER_PATH, get(user))
        .route(remote_auth::VHOST_PATH, get(vhost))
        .route(remote_auth::RESOURCE_PATH, get(resource))
        .route(remote_auth::TOPIC_PATH, get(topic))
        .with_state(runtime)
}

async fn user(Query(params): Query<Params>) -> &'static str {
    answer(is_anonymous(&params))
}

async fn vhost(Query(params): Query<Params>) -> &'static str {
    answer(is_anonymous(&params))
}

async fn resource(Query(params): Query<Params>) -> &'static str {
    answer(is_anonymous(&params) && remote_auth::resource_allowed(&params))
}

async fn topic(State(runtime): State<Arc<Runtime>>, Query(params): Query<Params>) -> &'static str {
    if !is_anonymous(&params) {
        return answer(false);
    }
    let Some((channel, access)) = remote_auth::topic_request(&params) else {
        return answer(false);
    };
    answer(
        runtime
            .anonymous_access(&channel)
            .is_some_and(|flags| flags.allows(access)),
    )
}
