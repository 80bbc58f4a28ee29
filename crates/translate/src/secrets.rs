//! Secret references of an Endpoint and its Bridge, resolved to values
//! through a [`SecretSource`].

use wsbridge_api::{BridgeSpec, EndpointSpec, SubscriptionSpec};
use wsbridge_core::SecretString;
use wsbridge_dataplane::delivery::SigningKey;

use crate::TranslateError;

/// Where secret values come from: `(secret name, key)` → value, in the
/// namespace of the object being translated.
pub trait SecretSource {
    /// The value of `key` in Secret `secret`.
    fn get(&self, secret: &str, key: &str) -> Result<SecretString, SecretLookupError>;
}

/// A secret value that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretLookupError {
    /// No such Secret.
    #[error("Secret {0:?} not found")]
    SecretNotFound(String),
    /// The Secret lacks the key.
    #[error("Secret {secret:?} has no key {key:?}")]
    KeyNotFound {
        /// The Secret.
        secret: String,
        /// The missing key.
        key: String,
    },
}

/// Secret values resolved up front: what a worker pod gets through its
/// environment, or what [`resolve_secrets`] reads from a [`SecretSource`].
#[derive(Debug, Clone, Default)]
pub struct ResolvedSecrets {
    /// `token` of the Endpoint's `auth.secretRef`.
    pub endpoint_token: Option<SecretString>,
    /// `username` of the Endpoint's `auth.secretRef`.
    pub endpoint_username: Option<SecretString>,
    /// `password` of the Endpoint's `auth.secretRef`.
    pub endpoint_password: Option<SecretString>,
    /// `auth.secretHeaders`: header name → value.
    pub endpoint_headers: Vec<(String, SecretString)>,
    /// The PEM CA bundle of `tls`.
    pub endpoint_ca: Option<String>,
    /// The Bridge's `tokenSecretRef`.
    pub bridge_token: Option<SecretString>,
}

/// Resolves the secret values an Endpoint and its Bridge refer to, reading
/// them from `secrets`. The keys of `auth.secretRef` decide the scheme:
/// `token` gives a bearer token, else `username` and `password` give basic
/// auth; neither is fine when `secretHeaders` carries the credentials.
pub fn resolve_secrets(
    endpoint: &EndpointSpec,
    bridge: Option<&BridgeSpec>,
    secrets: &dyn SecretSource,
) -> Result<ResolvedSecrets, TranslateError> {
    let mut out = ResolvedSecrets::default();
    if let Some(auth) = &endpoint.auth {
        let name = &auth.secret_ref.name;
        let optional = |key: &str| match secrets.get(name, key) {
            Ok(v) => Ok(Some(v)),
            Err(SecretLookupError::KeyNotFound { .. }) => Ok(None),
            Err(e) => Err(TranslateError::new("spec.auth.secretRef", e.to_string())),
        };
        out.endpoint_token = optional("token")?;
        out.endpoint_username = optional("username")?;
        out.endpoint_password = optional("password")?;
        for (header, key) in auth.secret_headers.iter().flatten() {
            let value = secrets
                .get(name, &key.0)
                .map_err(|e| TranslateError::new("spec.auth.secretHeaders", e.to_string()))?;
            out.endpoint_headers.push((header.clone(), value));
        }
        let has_basic = out.endpoint_username.is_some() && out.endpoint_password.is_some();
        if out.endpoint_token.is_none() && !has_basic && out.endpoint_headers.is_empty() {
            return Err(TranslateError::new(
                "spec.auth.secretRef",
                format!("Secret {name:?} has neither a token key nor username and password keys"),
            ));
        }
    }
    if let Some(tls) = &endpoint.tls {
        // A ConfigMap CA is resolved by the caller into `endpoint_ca` (it is
        // not a secret); here only the Secret variant is looked up.
        if let Some(ca) = &tls.ca_secret_ref {
            let pem = secrets
                .get(&ca.name, &ca.key)
                .map_err(|e| TranslateError::new("spec.tls.caSecretRef", e.to_string()))?;
            out.endpoint_ca = Some(pem.expose().to_string());
        }
    }
    if let Some(token) = bridge.and_then(|b| b.token_secret_ref.as_ref()) {
        out.bridge_token = Some(
            secrets
                .get(&token.name, &token.key)
                .map_err(|e| TranslateError::new("spec.tokenSecretRef", e.to_string()))?,
        );
    }
    Ok(out)
}

/// The key a Subscription's deliveries are signed with (its
/// `signingSecretRef`), read from `secrets`; `None` when it names none.
pub fn signing_key(
    spec: &SubscriptionSpec,
    secrets: &dyn SecretSource,
) -> Result<Option<SigningKey>, TranslateError> {
    let Some(reference) = &spec.signing_secret_ref else {
        return Ok(None);
    };
    let field = "spec.signingSecretRef";
    let secret = secrets
        .get(&reference.name, &reference.key)
        .map_err(|e| TranslateError::new(field, e.to_string()))?;
    SigningKey::from_whsec(secret.expose()).map(Some).map_err(|e| {
        TranslateError::new(
            field,
            format!("Secret {:?} key {:?}: {e}", reference.name, reference.key),
        )
    })
}
