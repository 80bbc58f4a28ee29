//! An Endpoint and its resolved secrets as the endpoint client's
//! configuration.

use wsbridge_api::EndpointSpec;
use wsbridge_dataplane::endpoint::{Credentials, EndpointConfig, KeepAlive, ReconnectPolicy};

use crate::{ResolvedSecrets, TranslateError, bridge_source, duration_or, positive};

/// The endpoint client configuration of one Bridge's connection: the
/// Endpoint's spec with its resolved secrets, the Bridge's token (presented
/// to subscribers) and `ce-source`.
pub fn endpoint_config(
    namespace: &str,
    bridge_name: &str,
    endpoint: &EndpointSpec,
    secrets: &ResolvedSecrets,
) -> Result<EndpointConfig, TranslateError> {
    let mut config = EndpointConfig::new(endpoint.url.clone());
    config.port = endpoint
        .port
        .map(|p| {
            u16::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| TranslateError::new("spec.port", "must be between 1 and 65535"))
        })
        .transpose()?;
    config.headers = endpoint
        .headers
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    config.credentials = match (
        &secrets.endpoint_token,
        &secrets.endpoint_username,
        &secrets.endpoint_password,
    ) {
        (Some(token), _, _) => Credentials::Bearer(token.clone()),
        (None, Some(username), Some(password)) => Credentials::Basic {
            username: username.clone(),
            password: password.clone(),
        },
        _ => Credentials::None,
    };
    config.secret_headers = secrets.endpoint_headers.clone();
    config.subprotocols = endpoint
        .subprotocols
        .iter()
        .flatten()
        .map(|s| s.0.clone())
        .collect();
    config.ca_pem = secrets.endpoint_ca.clone();
    config.open_messages = endpoint
        .open_messages
        .iter()
        .flatten()
        .map(|m| m.0.clone())
        .collect();
    if let Some(k) = &endpoint.keepalive {
        let d = KeepAlive::default();
        config.keepalive = Some(KeepAlive {
            interval: duration_or("spec.keepalive.interval", k.interval.as_ref(), d.interval)?,
            timeout: duration_or("spec.keepalive.timeout", k.timeout.as_ref(), d.timeout)?,
        });
    }
    if let Some(r) = &endpoint.reconnect {
        let d = ReconnectPolicy::default();
        config.reconnect = ReconnectPolicy {
            initial_delay: duration_or(
                "spec.reconnect.initialDelay",
                r.initial_delay.as_ref(),
                d.initial_delay,
            )?,
            max_delay: duration_or("spec.reconnect.maxDelay", r.max_delay.as_ref(), d.max_delay)?,
        };
    }
    if let Some(n) = endpoint.max_message_bytes {
        config.max_message_bytes = positive("spec.maxMessageBytes", n)?;
    }
    config.inbound_source = bridge_source(namespace, bridge_name);
    config.subscriber_token = secrets.bridge_token.clone();
    Ok(config)
}
