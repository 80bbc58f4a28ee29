//! Who may publish or subscribe: a Kubernetes bearer token, authenticated
//! by a TokenReview and authorized by a SubjectAccessReview for the custom
//! verb (`publish`, `subscribe`) on the `channels.wsbridge.io` object.
//!
//! Both answers are cached in bounded caches, so a busy publisher costs the
//! API server two requests per TTL, not per message. Concurrent requests
//! with the same token (or identity and channel) wait for one review
//! (moka's `try_get_with` coalesces them). Rejected tokens live in a cache of
//! their own with a short TTL: a flood of random tokens evicts only other
//! rejected tokens, never an accepted one. Reviews of tokens that no cache
//! knows are rate-limited (a GCRA bucket): past the limit the publish gets
//! 429 instead of a review, so a flood is not passed on to the API server.
//! Every review, cache hit and throttled review is counted.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use moka::future::Cache;
use sha2::{Digest, Sha256};

use crate::metrics::{AccessMetrics, ReviewKind};
use wsbridge_api::GROUP;
use wsbridge_core::ChannelKey;

/// Why a publish was refused, or could not be checked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Denied {
    /// 401: no token, or one the API server does not accept.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: authenticated, but not allowed to publish here.
    #[error("{0}")]
    Forbidden(String),
    /// 429: too many unknown tokens to review right now.
    #[error("too many new tokens to review; retry in a second")]
    Throttled,
    /// 503: the reviews themselves failed.
    #[error("could not review the token: {0}")]
    Unavailable(String),
}

impl Denied {
    /// The HTTP status and reason that say it.
    pub fn status_and_reason(&self) -> (http::StatusCode, &'static str) {
        match self {
            Denied::Unauthenticated(_) => (http::StatusCode::UNAUTHORIZED, "Unauthorized"),
            Denied::Forbidden(_) => (http::StatusCode::FORBIDDEN, "Forbidden"),
            Denied::Throttled => (http::StatusCode::TOO_MANY_REQUESTS, "TooManyNewTokens"),
            Denied::Unavailable(_) => (http::StatusCode::SERVICE_UNAVAILABLE, "ReviewUnavailable"),
        }
    }
}

/// Cache settings.
#[derive(Clone, Debug)]
pub struct AccessOptions {
    /// How long an accepted token's identity and an access decision are reused.
    pub ttl: Duration,
    /// Entries per cache.
    pub capacity: u64,
    /// How long a rejected token is answered 401 without a new review.
    pub rejected_ttl: Duration,
    /// Reviews per second of tokens that no cache knows (the bucket refills
    /// at this rate and holds as many).
    pub review_rate: NonZeroU32,
    /// Audiences a token must be valid for; empty means the API server's own.
    pub audiences: Vec<String>,
}

impl Default for AccessOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            capacity: 10_000,
            rejected_ttl: Duration::from_secs(2),
            review_rate: NonZeroU32::new(50).expect("non-zero"),
            audiences: Vec::new(),
        }
    }
}

/// The identity a token stands for, as the TokenReview told it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Identity {
    username: String,
    uid: Option<String>,
    groups: Vec<String>,
    extra: Vec<(String, Vec<String>)>,
}

impl Identity {
    /// The Kubernetes user name (`system:serviceaccount:NS:NAME` for a
    /// ServiceAccount).
    pub(crate) fn username(&self) -> &str {
        &self.username
    }
}

/// A token's SHA-256: caches are keyed by it, never by the token itself.
type TokenDigest = [u8; 32];

/// Checks publishers against the API server.
#[derive(Clone)]
pub struct Access {
    client: Client,
    audiences: Vec<String>,
    accepted: Cache<TokenDigest, Arc<Identity>>,
    rejected: Cache<TokenDigest, ()>,
    decisions: Cache<(Arc<Identity>, ChannelKey, &'static str), bool>,
    new_tokens: Arc<DefaultDirectRateLimiter>,
    metrics: AccessMetrics,
}

impl Access {
    pub fn new(client: Client, options: AccessOptions, metrics: AccessMetrics) -> Self {
        Self {
            client,
            accepted: bounded(options.capacity, options.ttl),
            rejected: bounded(options.capacity, options.rejected_ttl),
            decisions: bounded(options.capacity, options.ttl),
            new_tokens: Arc::new(RateLimiter::direct(Quota::per_second(options.review_rate))),
            audiences: options.audiences,
            metrics,
        }
    }

    /// Allows the request when its `Authorization: Bearer` token may publish on `channel`.
    pub async fn check(&self, authorization: Option<&str>, channel: &ChannelKey) -> Result<(), Denied> {
        self.allows("publish", bearer(authorization)?, channel).await
    }

    /// Allows `verb` on `channel` to the holder of `token`.
    pub async fn allows(&self, verb: &'static str, token: &str, channel: &ChannelKey) -> Result<(), Denied> {
        let identity = self.authenticate(token).await?;
        self.allows_identity(verb, identity, channel).await
    }

    /// Allows `verb` on `channel` to `identity` (authenticated earlier).
    pub(crate) async fn allows_identity(
        &self,
        verb: &'static str,
        identity: Arc<Identity>,
        channel: &ChannelKey,
    ) -> Result<(), Denied> {
        let key = (identity.clone(), channel.clone(), verb);
        let reviewed = self
            .decisions
            .try_get_with(key, async {
                let allowed = self.review_access(&identity, verb, channel).await;
                self.metrics.reviewed(ReviewKind::Access, &allowed);
                allowed
            })
            .await;
        match reviewed.map_err(|e| (*e).clone()) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Denied::Forbidden(format!(
                "{} may not {verb} on channel {channel}: grant the verb \"{verb}\" on channels.{GROUP} (resourceNames: [{}]) in namespace {}",
                identity.username, channel.name, channel.namespace
            ))),
            Err(e) => Err(e),
        }
    }

    /// The identity of `token`: cached, or one TokenReview shared by every
    /// request that asks for it meanwhile.
    pub(crate) async fn authenticate(&self, token: &str) -> Result<Arc<Identity>, Denied> {
        let digest: TokenDigest = Sha256::digest(token.as_bytes()).into();
        let rejected = || Denied::Unauthenticated("the bearer token is not valid".into());
        if self.rejected.contains_key(&digest) {
            self.metrics.rejected_cached.inc();
            return Err(rejected());
        }
        let reviewed = self
            .accepted
            .try_get_with(digest, async {
                if self.new_tokens.check().is_err() {
                    self.metrics.throttled.inc();
                    return Err(Denied::Throttled);
                }
                let answer = self.review_token(token).await;
                self.metrics
                    .reviewed(ReviewKind::Token, &answer.as_ref().map(Option::is_some));
                match answer? {
                    Some(identity) => Ok(Arc::new(identity)),
                    None => {
                        self.rejected.insert(digest, ()).await;
                        Err(rejected())
                    }
                }
            })
            .await;
        reviewed.map_err(|e| (*e).clone())
    }

    async fn review_token(&self, token: &str) -> Result<Option<Identity>, Denied> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Denied::Unavailable(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Ok(None);
        }
        let user: UserInfo = status.user.unwrap_or_default();
        Ok(Some(Identity {
            username: user.username.unwrap_or_default(),
            uid: user.uid,
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default().into_iter().collect(),
        }))
    }

    async fn review_access(
        &self,
        identity: &Identity,
        verb: &str,
        channel: &ChannelKey,
    ) -> Result<bool, Denied> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(identity.username.clone()),
                uid: identity.uid.clone(),
                groups: Some(identity.groups.clone()),
                extra: Some(identity.extra.iter().cloned().collect()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(channel.namespace.clone()),
                    verb: Some(verb.into()),
                    group: Some(GROUP.into()),
                    resource: Some("channels".into()),
                    name: Some(channel.name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Denied::Unavailable(e.to_string()))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

/// A cache of at most `capacity` entries, each kept for `ttl`.
fn bounded<K, V>(capacity: u64, ttl: Duration) -> Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder().max_capacity(capacity).time_to_live(ttl).build()
}

/// The token of an `Authorization: Bearer` header.
fn bearer(authorization: Option<&str>) -> Result<&str, Denied> {
    let value = authorization.ok_or_else(|| {
        Denied::Unauthenticated(
            "this channel needs a Kubernetes bearer token (Authorization: Bearer ...)".into(),
        )
    })?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Denied::Unauthenticated(
            "the Authorization header must be \"Bearer <token>\"".into(),
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bearer_tokens_are_taken() {
        assert_eq!(bearer(Some("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer(Some("bearer  abc ")).unwrap(), "abc");
        for bad in [None, Some("Basic abc"), Some("Bearer"), Some("Bearer   ")] {
            assert!(matches!(bearer(bad), Err(Denied::Unauthenticated(_))), "{bad:?}");
        }
    }

    #[test]
    fn errors_never_carry_the_token() {
        let e = bearer(Some("Basic c2VjcmV0")).unwrap_err().to_string();
        assert!(!e.contains("c2VjcmV0"));
    }
}
