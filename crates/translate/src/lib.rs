//! From the API types to the data plane's values.
//!
//! Pure functions, no file or Kubernetes I/O: the Kubernetes worker, the
//! gateway and standalone mode all call them, so that one object means the
//! same thing whichever role reads it. Secret values are passed in already
//! resolved (from environment variables in a worker pod, from `Secret`
//! objects in standalone mode) through [`SecretSource`].
//!
//! Defaults have one source of truth, the data plane:
//! [`DeliveryPolicy::default`] (retry 3, exponential, 200ms, timeout 5s,
//! ordered, queue 1024), [`KeepAlive::default`] (20s/10s),
//! [`ReconnectPolicy::default`] (500ms/30s) and [`DEFAULT_MAX_MESSAGE_BYTES`]
//! (1 MiB). The one default the data plane has no field for, `maxInFlight`
//! when only `ordering: unordered` is given, is [`DEFAULT_MAX_IN_FLIGHT`].
//!
//! [`DeliveryPolicy::default`]: wsbridge_dataplane::delivery::DeliveryPolicy::default
//! [`KeepAlive::default`]: wsbridge_dataplane::endpoint::KeepAlive::default
//! [`ReconnectPolicy::default`]: wsbridge_dataplane::endpoint::ReconnectPolicy::default
//! [`DEFAULT_MAX_MESSAGE_BYTES`]: wsbridge_dataplane::endpoint::DEFAULT_MAX_MESSAGE_BYTES
//!
//! By job: Channels, Subscriptions and Bridges to routing facts
//! (`routing.rs`), secret references to values (`secrets.rs`), an Endpoint
//! to the endpoint client's configuration (`endpoint.rs`). Here: the error
//! type, field helpers they share and the `ce-source` names.
#![forbid(unsafe_code)]

use wsbridge_api as api;

mod endpoint;
mod routing;
mod secrets;

pub use endpoint::endpoint_config;
pub use routing::{
    DEFAULT_MAX_IN_FLIGHT, bridge_info, channel_info, channel_max_message_bytes, delivery_options,
    destination_uri, subscription_info,
};
pub use secrets::{ResolvedSecrets, SecretLookupError, SecretSource, resolve_secrets, signing_key};

/// Why an object cannot be turned into data plane values. `field` is the
/// path of the offending field (`spec.auth.secretRef`), as in API errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TranslateError {
    /// Path of the field, e.g. `spec.keepalive.interval`.
    pub field: String,
    /// What is wrong. Never contains a secret value.
    pub message: String,
}

impl TranslateError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Returns a duration field, or the error naming it.
fn duration(field: &str, value: &api::Duration) -> Result<std::time::Duration, TranslateError> {
    value.get().map_err(|e| TranslateError::new(field, e))
}

/// An optional duration field, or `default` when it is unset.
fn duration_or(
    field: &str,
    value: Option<&api::Duration>,
    default: std::time::Duration,
) -> Result<std::time::Duration, TranslateError> {
    value.map_or(Ok(default), |v| duration(field, v))
}

fn positive(field: &str, value: i64) -> Result<usize, TranslateError> {
    usize::try_from(value)
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| TranslateError::new(field, format!("must be positive, got {value}")))
}

/// `ce-source` of the messages a Bridge receives from its endpoint.
pub fn bridge_source(namespace: &str, bridge: &str) -> String {
    format!("/namespaces/{namespace}/bridges/{bridge}")
}

/// `ce-source` of the messages published on a Channel.
pub fn channel_source(namespace: &str, channel: &str) -> String {
    format!("/namespaces/{namespace}/channels/{channel}")
}

#[cfg(test)]
mod tests;
