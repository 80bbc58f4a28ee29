//! RabbitMQ's HTTP auth backend (`rabbitmq_auth_backend_http`), served by
//! the gateway so that Kubernetes decides who may read and write a
//! `rabbitmq` Channel through the broker's own MQTT (and AMQP) listeners.
//! The broker asks `GET` (its default `auth_http.http_method`) or `POST`
//! (a form) at `/auth/user`, `/auth/vhost`, `/auth/resource` and
//! `/auth/topic`, and reads `allow` or `deny`; what the questions mean is
//! [`wsbridge_broker::remote_auth`].
//!
//! Who a client is:
//!
//! - user `anonymous` (the MQTT plugin's `mqtt.default_user`, any
//!   password): gets exactly what each Channel's two flags allow
//!   (`allowAnonymousSubscribe`, `allowAnonymousPublish`);
//! - any other user logs in with a Kubernetes token as its password,
//!   reviewed (TokenReview with the gateway's audiences) through the same
//!   bounded caches as publishes ([`crate::access::Access`]). The broker
//!   sends the password to `/auth/user` only: the later questions name the
//!   user alone. So the user name must be the token's own Kubernetes user
//!   name (`system:serviceaccount:NS:NAME`), or that name with each `:`
//!   written `.` (the MQTT plugin reads `vhost:user` from a name with a
//!   colon): nobody can log in under another identity's name, and a name
//!   always stands for the identity that logged in with it. That identity
//!   is kept while the broker keeps asking about it ([`LOGIN_IDLE`]); a
//!   question about a name no one logged in with lately is denied (the
//!   client connects again).
//!
//! What they may do: log in and use the broker's vhost (the one of the
//! gateway's broker URL); their own MQTT subscription queues and
//! `amq.topic`, nothing else of the broker's; on `amq.topic` the routing key
//! `{namespace}.{name}` of a `rabbitmq` Channel this gateway knows: read
//! (subscribe) when the Channel allows anonymous subscribers or a
//! SubjectAccessReview allows the verb `subscribe` on it, write (publish)
//! likewise with `publish`. Wildcards, unknown channels, `memory`
//! channels: denied. Any error (a failed review, too many new tokens, a
//! malformed request) is `deny`. Every answer is counted in
//! `wsbridge_gateway_broker_auth_total{resource,decision}`; the user name
//! is logged, the password never.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::routing::get;
use moka::future::Cache;
use wsbridge_broker::remote_auth::{self, ANONYMOUS_USER, AnonymousAccess, Params, answer, param};

use crate::GatewayState;
use crate::access::Identity;
use crate::metrics::BrokerAuthMetrics;

/// How long a login's identity is kept after the broker last asked about
/// it.
pub const LOGIN_IDLE: Duration = Duration::from_secs(3600);

/// The auth backend's state.
pub(crate) struct BrokerAuth {
    shared: Arc<GatewayState>,
    /// The broker's vhost, the only one allowed.
    vhost: String,
    /// Identities by the user name they logged in with.
    logins: Cache<String, Arc<Identity>>,
    metrics: BrokerAuthMetrics,
}

impl BrokerAuth {
    pub(crate) fn new(
        shared: Arc<GatewayState>,
        vhost: String,
        capacity: u64,
        metrics: BrokerAuthMetrics,
    ) -> Self {
        Self {
            shared,
            vhost,
            logins: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(LOGIN_IDLE)
                .build(),
            metrics,
        }
    }

    /// Counts an answer (a request that does not parse is denied too).
    fn answer(&self, resource: &'static str, allowed: bool) -> &'static str {
        self.metrics.decided(resource, allowed);
        answer(allowed)
    }

    /// `/auth/user`: anonymous, or a token of the named identity.
    async fn user(&self, params: &Params) -> bool {
        let login = param(params, "username");
        if login == ANONYMOUS_USER {
            return true;
        }
        let password = param(params, "password");
        if login.is_empty() || password.is_empty() {
            tracing::info!(user = login, "broker login denied: no user name or no token");
            return false;
        }
        let identity = match self.shared.access.authenticate(password).await {
            Ok(identity) => identity,
            Err(denied) => {
                tracing::info!(user = login, reason = %denied, "broker login denied");
                return false;
            }
        };
        if !login_names(login, identity.username()) {
            tracing::info!(
                user = login,
                identity = identity.username(),
                "broker login denied: the user name must be the token's own (or with each ':' written '.')"
            );
            return false;
        }
        if let Some(bound) = self.logins.get(login).await
            && bound.username() != identity.username()
        {
            tracing::info!(
                user = login,
                identity = identity.username(),
                "broker login denied: the name stands for another identity right now"
            );
            return false;
        }
        tracing::debug!(user = login, "broker login allowed");
        self.logins.insert(login.to_string(), identity).await;
        true
    }

    /// Who asks: `None` for the anonymous user, the identity of a login,
    /// or `Err` for a name no one logged in with lately.
    async fn who(&self, params: &Params) -> Result<Option<Arc<Identity>>, ()> {
        let login = param(params, "username");
        if login == ANONYMOUS_USER {
            return Ok(None);
        }
        self.logins.get(login).await.map(Some).ok_or(())
    }

    /// `/auth/vhost`: the broker's vhost, for a known user.
    async fn vhost(&self, params: &Params) -> bool {
        param(params, "vhost") == self.vhost && self.who(params).await.is_ok()
    }

    /// `/auth/resource`: what an MQTT client needs, for a known user.
    async fn resource(&self, params: &Params) -> bool {
        param(params, "vhost") == self.vhost
            && remote_auth::resource_allowed(params)
            && self.who(params).await.is_ok()
    }

    /// `/auth/topic`: a `rabbitmq` Channel, by its flags or by RBAC.
    async fn topic(&self, params: &Params) -> bool {
        if param(params, "vhost") != self.vhost {
            return false;
        }
        let Some((channel, access)) = remote_auth::topic_request(params) else {
            return false;
        };
        let Ok(who) = self.who(params).await else {
            return false;
        };
        let flags = self
            .shared
            .channels
            .read()
            .ok()
            .and_then(|channels| channels.get(&channel).copied())
            .filter(|facts| facts.durable)
            .map(|facts| AnonymousAccess {
                subscribe: facts.allow_anonymous_subscribe,
                publish: facts.allow_anonymous_publish,
            });
        let Some(flags) = flags else {
            return false;
        };
        if flags.allows(access) {
            return true;
        }
        let Some(identity) = who else {
            return false;
        };
        match self
            .shared
            .access
            .allows_identity(access.verb(), identity, &channel)
            .await
        {
            Ok(()) => true,
            Err(denied) => {
                tracing::debug!(user = param(params, "username"), %channel, reason = %denied, "broker topic access denied");
                false
            }
        }
    }
}

/// Whether `login` names the Kubernetes user `username`: the same, or with
/// each `:` written `.`.
fn login_names(login: &str, username: &str) -> bool {
    !username.is_empty()
        && (login == username
            || (login.len() == username.len()
                && login
                    .bytes()
                    .zip(username.bytes())
                    .all(|(l, u)| l == u || (u == b':' && l == b'.'))))
}

type Request = Result<Form<Params>, FormRejection>;

/// The four paths, each for GET (query) and POST (form).
pub(crate) fn router(auth: Arc<BrokerAuth>) -> Router {
    Router::new()
        .route(remote_auth::USER_PATH, get(user).post(user))
        .route(remote_auth::VHOST_PATH, get(vhost).post(vhost))
        .route(remote_auth::RESOURCE_PATH, get(resource).post(resource))
        .route(remote_auth::TOPIC_PATH, get(topic).post(topic))
        .with_state(auth)
}

async fn user(State(auth): State<Arc<BrokerAuth>>, request: Request) -> &'static str {
    let allowed = match request {
        Ok(Form(params)) => auth.user(&params).await,
        Err(_) => false,
    };
    auth.answer("user", allowed)
}

async fn vhost(State(auth): State<Arc<BrokerAuth>>, request: Request) -> &'static str {
    let allowed = match request {
        Ok(Form(params)) => auth.vhost(&params).await,
        Err(_) => false,
    };
    auth.answer("vhost", allowed)
}

async fn resource(State(auth): State<Arc<BrokerAuth>>, request: Request) -> &'static str {
    let allowed = match request {
        Ok(Form(params)) => auth.resource(&params).await,
        Err(_) => false,
    };
    auth.answer("resource", allowed)
}

async fn topic(State(auth): State<Arc<BrokerAuth>>, request: Request) -> &'static str {
    let allowed = match request {
        Ok(Form(params)) => auth.topic(&params).await,
        Err(_) => false,
    };
    auth.answer("topic", allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_names_its_own_identity_only() {
        let sa = "system:serviceaccount:team-a:subscriber";
        assert!(login_names(sa, sa));
        assert!(login_names("system.serviceaccount.team-a.subscriber", sa));
        assert!(login_names("jane", "jane"));
        for other in [
            "subscriber",
            "system:serviceaccount:team-a:subscriber2",
            "system:serviceaccount:team-b:subscriber",
            "system:serviceaccount.team-a:subscriberx",
            "",
        ] {
            assert!(!login_names(other, sa), "{other}");
        }
        // A '.' in the Kubernetes name is never a ':' in the login.
        assert!(!login_names("a:b", "a.b"));
        assert!(!login_names("", ""));
    }
}
