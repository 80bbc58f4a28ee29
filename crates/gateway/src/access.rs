//! Who may publish: a Kubernetes bearer token, authenticated by a
//! TokenReview and authorized by a SubjectAccessReview for the custom verb
//! `publish` on the `channels.wsbridge.io` object. Both answers are cached
//! briefly (positive and negative alike) in bounded caches, so a busy
//! publisher costs the API server two requests per TTL, not per message.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use moka::future::Cache;
use sha2::{Digest, Sha256};

use wsbridge_api::GROUP;
use wsbridge_core::ChannelKey;

/// Why a publish was refused, or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// 401: no token, or one the API server does not accept.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: authenticated, but not allowed to publish here.
    #[error("{0}")]
    Forbidden(String),
    /// 503: the reviews themselves failed.
    #[error("could not review the token: {0}")]
    Unavailable(String),
}

/// Cache settings.
#[derive(Clone, Debug)]
pub struct AccessOptions {
    /// How long a review's answer is reused.
    pub ttl: Duration,
    /// Entries per cache.
    pub capacity: u64,
    /// Audiences a token must be valid for; empty means the API server's own.
    pub audiences: Vec<String>,
}

impl Default for AccessOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            capacity: 10_000,
            audiences: Vec::new(),
        }
    }
}

/// The identity a token stands for, as the TokenReview told it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Identity {
    username: String,
    uid: Option<String>,
    groups: Vec<String>,
    extra: Vec<(String, Vec<String>)>,
}

/// Checks publishers against the API server.
#[derive(Clone)]
pub struct Access {
    client: Client,
    audiences: Vec<String>,
    // Keyed by a hash of the token, never the token itself.
    tokens: Cache<[u8; 32], Option<Arc<Identity>>>,
    decisions: Cache<(Arc<Identity>, ChannelKey), bool>,
}

impl Access {
    pub fn new(client: Client, options: AccessOptions) -> Self {
        Self {
            client,
            tokens: Cache::builder()
                .max_capacity(options.capacity)
                .time_to_live(options.ttl)
                .build(),
            decisions: Cache::builder()
                .max_capacity(options.capacity)
                .time_to_live(options.ttl)
                .build(),
            audiences: options.audiences,
        }
    }

    /// Allows the request when its `Authorization: Bearer` token may publish on `channel`.
    pub async fn check(&self, authorization: Option<&str>, channel: &ChannelKey) -> Result<(), Denied> {
        let token = bearer(authorization)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let identity = match self.tokens.get(&digest).await {
            Some(hit) => hit,
            None => {
                let reviewed = self.review_token(token).await?.map(Arc::new);
                self.tokens.insert(digest, reviewed.clone()).await;
                reviewed
            }
        };
        let identity =
            identity.ok_or_else(|| Denied::Unauthenticated("the bearer token is not valid".into()))?;
        let key = (identity.clone(), channel.clone());
        let allowed = match self.decisions.get(&key).await {
            Some(hit) => hit,
            None => {
                let allowed = self.review_access(&identity, channel).await?;
                self.decisions.insert(key, allowed).await;
                allowed
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(Denied::Forbidden(format!(
                "{} may not publish on channel {channel}: grant the verb \"publish\" on channels.{GROUP} (resourceNames: [{}]) in namespace {}",
                identity.username, channel.name, channel.namespace
            )))
        }
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

    async fn review_access(&self, identity: &Identity, channel: &ChannelKey) -> Result<bool, Denied> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(identity.username.clone()),
                uid: identity.uid.clone(),
                groups: Some(identity.groups.clone()),
                extra: Some(identity.extra.iter().cloned().collect()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(channel.namespace.clone()),
                    verb: Some("publish".into()),
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
