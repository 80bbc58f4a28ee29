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
#![forbid(unsafe_code)]

use wsbridge_api::{
    self as api, BridgeSpec, ChannelSpec, DeliverySpec, Destination, EndpointSpec, SubscriptionSpec,
};
use wsbridge_core::SecretString;
use wsbridge_dataplane::delivery::{BackoffPolicy, Ordering};
use wsbridge_dataplane::endpoint::{
    Credentials, DEFAULT_MAX_MESSAGE_BYTES, EndpointConfig, KeepAlive, ReconnectPolicy,
};
use wsbridge_dataplane::routing::{BridgeInfo, ChannelInfo, DeliveryOptions, SubscriptionInfo};

/// Concurrent deliveries per subscriber when `ordering: unordered` is given
/// without `maxInFlight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;

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

/// The address a [`Destination`] resolves to: its `uri`, or for a Service
/// `ref`, `http://NAME.NAMESPACE.svc.cluster.local:PORT/PATH` (port 80 and
/// path `/` by default). `field` names the destination in errors.
pub fn destination_uri(
    namespace: &str,
    destination: &Destination,
    field: &str,
) -> Result<http::Uri, TranslateError> {
    let text = match (&destination.service, &destination.uri) {
        (Some(service), None) => {
            let port = service.port.unwrap_or(80);
            let path = destination.path.as_deref().unwrap_or("/");
            format!(
                "http://{}.{namespace}.svc.cluster.local:{port}{path}",
                service.name
            )
        }
        (None, Some(uri)) => uri.clone(),
        _ => {
            return Err(TranslateError::new(
                field,
                "exactly one of ref or uri must be set",
            ));
        }
    };
    let uri: http::Uri = text
        .parse()
        .map_err(|e| TranslateError::new(field, format!("invalid URI: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") if uri.host().is_some() => Ok(uri),
        _ => Err(TranslateError::new(
            field,
            "must be an absolute http:// or https:// URL",
        )),
    }
}

/// Delivery options as written on a Channel or Subscription (unset fields
/// stay unset, to be filled by the next level). `field` is the path of the
/// `delivery` object, for errors.
///
/// `maxInFlight` without `ordering` means unordered delivery with that bound
/// (the field applies only to unordered delivery).
pub fn delivery_options(
    namespace: &str,
    spec: &DeliverySpec,
    field: &str,
) -> Result<DeliveryOptions, TranslateError> {
    let max_in_flight = spec
        .max_in_flight
        .map(|n| positive(&format!("{field}.maxInFlight"), n.into()))
        .transpose()?;
    let ordering = match (spec.ordering, max_in_flight) {
        (Some(api::Ordering::Ordered), _) => Some(Ordering::Ordered),
        (Some(api::Ordering::Unordered), n) | (None, n @ Some(_)) => Some(Ordering::Unordered {
            max_in_flight: n.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
        }),
        (None, None) => None,
    };
    Ok(DeliveryOptions {
        retry: spec
            .retry
            .map(|r| {
                u32::try_from(r)
                    .map_err(|_| TranslateError::new(format!("{field}.retry"), "must not be negative"))
            })
            .transpose()?,
        backoff_policy: spec.backoff_policy.map(|p| match p {
            api::BackoffPolicy::Linear => BackoffPolicy::Linear,
            api::BackoffPolicy::Exponential => BackoffPolicy::Exponential,
        }),
        backoff_delay: spec
            .backoff_delay
            .as_ref()
            .map(|d| duration(&format!("{field}.backoffDelay"), d))
            .transpose()?,
        timeout: spec
            .timeout
            .as_ref()
            .map(|d| duration(&format!("{field}.timeout"), d))
            .transpose()?,
        ordering,
        dead_letter_sink: spec
            .dead_letter_sink
            .as_ref()
            .map(|d| destination_uri(namespace, d, &format!("{field}.deadLetterSink")))
            .transpose()?,
        queue_capacity: spec
            .queue_capacity
            .map(|n| positive(&format!("{field}.queueCapacity"), n.into()))
            .transpose()?,
    })
}

/// What the routing index needs of a Channel.
pub fn channel_info(namespace: &str, spec: &ChannelSpec) -> Result<ChannelInfo, TranslateError> {
    Ok(ChannelInfo {
        allow_anonymous_publish: spec.allow_anonymous_publish,
        delivery: spec
            .delivery
            .as_ref()
            .map(|d| delivery_options(namespace, d, "spec.delivery"))
            .transpose()?
            .unwrap_or_default(),
    })
}

/// The largest message the publish path accepts on a Channel.
pub fn channel_max_message_bytes(spec: &ChannelSpec) -> usize {
    spec.max_message_bytes
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES)
}

/// What the routing index needs of a Subscription: its resolved subscriber
/// address (see [`destination_uri`]) and its delivery overrides.
pub fn subscription_info(
    namespace: &str,
    spec: &SubscriptionSpec,
) -> Result<SubscriptionInfo, TranslateError> {
    Ok(SubscriptionInfo {
        channel: spec.channel.clone(),
        subscriber_uri: destination_uri(namespace, &spec.subscriber, "spec.subscriber")?,
        delivery: spec
            .delivery
            .as_ref()
            .map(|d| delivery_options(namespace, d, "spec.delivery"))
            .transpose()?
            .unwrap_or_default(),
    })
}

/// What the routing index needs of a Bridge.
pub fn bridge_info(spec: &BridgeSpec) -> BridgeInfo {
    BridgeInfo {
        channel: spec.channel.clone(),
        endpoint: spec.endpoint.clone(),
    }
}

/// `ce-source` of the messages a Bridge receives from its endpoint.
pub fn bridge_source(namespace: &str, bridge: &str) -> String {
    format!("/namespaces/{namespace}/bridges/{bridge}")
}

/// `ce-source` of the messages published on a Channel.
pub fn channel_source(namespace: &str, channel: &str) -> String {
    format!("/namespaces/{namespace}/channels/{channel}")
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use wsbridge_api::{
        EndpointAuth, Keepalive, KeySelector, LocalObjectReference, Reconnect, SecretKeyName,
        ServiceReference,
    };
    use wsbridge_dataplane::delivery::DeliveryPolicy;

    struct Map(BTreeMap<(String, String), String>);

    impl SecretSource for Map {
        fn get(&self, secret: &str, key: &str) -> Result<SecretString, SecretLookupError> {
            if !self.0.keys().any(|(s, _)| s == secret) {
                return Err(SecretLookupError::SecretNotFound(secret.into()));
            }
            self.0
                .get(&(secret.to_string(), key.to_string()))
                .map(|v| SecretString::new(v.clone()))
                .ok_or_else(|| SecretLookupError::KeyNotFound {
                    secret: secret.into(),
                    key: key.into(),
                })
        }
    }

    fn secrets(entries: &[(&str, &str, &str)]) -> Map {
        Map(entries
            .iter()
            .map(|(s, k, v)| ((s.to_string(), k.to_string()), v.to_string()))
            .collect())
    }

    fn endpoint(url: &str) -> EndpointSpec {
        serde_json::from_value(serde_json::json!({ "url": url })).unwrap()
    }

    #[test]
    fn defaults_match_the_documented_api_defaults() {
        let p = DeliveryOptions::default().resolve(&DeliveryPolicy::default());
        assert_eq!(p.retry, 3);
        assert_eq!(p.backoff_policy, BackoffPolicy::Exponential);
        assert_eq!(p.backoff_delay, Duration::from_millis(200));
        assert_eq!(p.timeout, Duration::from_secs(5));
        assert_eq!(p.ordering, Ordering::Ordered);
        assert_eq!(p.queue_capacity, 1024);
        let c = endpoint_config("ns", "b", &endpoint("ws://h/"), &ResolvedSecrets::default()).unwrap();
        assert_eq!(
            c.keepalive,
            Some(KeepAlive {
                interval: Duration::from_secs(20),
                timeout: Duration::from_secs(10)
            })
        );
        assert_eq!(c.reconnect.initial_delay, Duration::from_millis(500));
        assert_eq!(c.reconnect.max_delay, Duration::from_secs(30));
        assert_eq!(c.max_message_bytes, 1024 * 1024);
        let unordered = delivery_options(
            "ns",
            &DeliverySpec {
                ordering: Some(api::Ordering::Unordered),
                ..Default::default()
            },
            "spec.delivery",
        )
        .unwrap();
        assert_eq!(
            unordered.ordering,
            Some(Ordering::Unordered { max_in_flight: 16 })
        );
    }

    #[test]
    fn service_refs_resolve_to_cluster_dns_names() {
        let d = Destination {
            service: Some(ServiceReference {
                kind: api::DestinationKind::Service,
                name: "pricing".into(),
                port: Some(8080),
            }),
            uri: None,
            path: Some("/ingest".into()),
        };
        assert_eq!(
            destination_uri("prod", &d, "spec.subscriber").unwrap(),
            "http://pricing.prod.svc.cluster.local:8080/ingest"
        );
        let d = Destination {
            service: Some(ServiceReference {
                kind: api::DestinationKind::Service,
                name: "pricing".into(),
                port: None,
            }),
            uri: None,
            path: None,
        };
        assert_eq!(
            destination_uri("prod", &d, "spec.subscriber").unwrap(),
            "http://pricing.prod.svc.cluster.local:80/"
        );
        let d = Destination {
            service: None,
            uri: Some("ftp://x/".into()),
            path: None,
        };
        assert_eq!(
            destination_uri("prod", &d, "spec.subscriber").unwrap_err().field,
            "spec.subscriber"
        );
    }

    #[test]
    fn delivery_fields_translate_and_max_in_flight_implies_unordered() {
        let spec: DeliverySpec = serde_json::from_value(serde_json::json!({
            "retry": 5, "backoffPolicy": "linear", "backoffDelay": "100ms", "timeout": "2s",
            "maxInFlight": 4, "queueCapacity": 10,
            "deadLetterSink": {"uri": "http://dlq:8080/"}
        }))
        .unwrap();
        let o = delivery_options("ns", &spec, "spec.delivery").unwrap();
        assert_eq!(o.retry, Some(5));
        assert_eq!(o.backoff_policy, Some(BackoffPolicy::Linear));
        assert_eq!(o.backoff_delay, Some(Duration::from_millis(100)));
        assert_eq!(o.timeout, Some(Duration::from_secs(2)));
        assert_eq!(o.ordering, Some(Ordering::Unordered { max_in_flight: 4 }));
        assert_eq!(o.queue_capacity, Some(10));
        assert_eq!(o.dead_letter_sink.unwrap(), "http://dlq:8080/");
        assert_eq!(
            delivery_options("ns", &DeliverySpec::default(), "spec.delivery").unwrap(),
            DeliveryOptions::default()
        );
    }

    #[test]
    fn endpoint_credentials_come_from_the_secret_keys() {
        let mut spec = endpoint("wss://feed.example.com/v2");
        spec.port = Some(8443);
        spec.auth = Some(EndpointAuth {
            secret_ref: LocalObjectReference { name: "creds".into() },
            secret_headers: Some([("X-Api-Key".to_string(), SecretKeyName("apikey".into()))].into()),
        });
        spec.keepalive = Some(Keepalive {
            interval: Some("5s".into()),
            timeout: None,
        });
        spec.reconnect = Some(Reconnect {
            initial_delay: Some("1s".into()),
            max_delay: Some("1m".into()),
        });
        let bridge = BridgeSpec {
            channel: "ticker".into(),
            endpoint: "feed".into(),
            token_secret_ref: Some(KeySelector {
                name: "sub".into(),
                key: "token".into(),
            }),
        };
        let source = secrets(&[
            ("creds", "username", "u"),
            ("creds", "password", "p"),
            ("creds", "apikey", "k"),
            ("sub", "token", "t"),
        ]);
        let resolved = resolve_secrets(&spec, Some(&bridge), &source).unwrap();
        let c = endpoint_config("ns", "ticker-feed", &spec, &resolved).unwrap();
        assert_eq!(c.port, Some(8443));
        assert!(matches!(c.credentials, Credentials::Basic { .. }));
        assert_eq!(c.secret_headers[0].0, "X-Api-Key");
        assert_eq!(c.secret_headers[0].1.expose(), "k");
        assert_eq!(c.subscriber_token.as_ref().unwrap().expose(), "t");
        assert_eq!(c.keepalive.unwrap().interval, Duration::from_secs(5));
        assert_eq!(c.keepalive.unwrap().timeout, Duration::from_secs(10));
        assert_eq!(c.reconnect.max_delay, Duration::from_secs(60));
        assert_eq!(c.inbound_source, "/namespaces/ns/bridges/ticker-feed");

        let source = secrets(&[("creds", "token", "abc"), ("creds", "apikey", "k")]);
        let resolved = resolve_secrets(&spec, None, &source).unwrap();
        assert!(matches!(
            endpoint_config("ns", "b", &spec, &resolved).unwrap().credentials,
            Credentials::Bearer(_)
        ));
    }

    #[test]
    fn missing_secrets_name_the_field_but_never_a_value() {
        let mut spec = endpoint("wss://feed.example.com/");
        spec.auth = Some(EndpointAuth {
            secret_ref: LocalObjectReference { name: "creds".into() },
            secret_headers: None,
        });
        let err = resolve_secrets(&spec, None, &secrets(&[])).unwrap_err();
        assert_eq!(err.field, "spec.auth.secretRef");
        assert!(err.message.contains("\"creds\" not found"), "{err}");
        let err = resolve_secrets(&spec, None, &secrets(&[("creds", "other", "hunter2")])).unwrap_err();
        assert!(err.message.contains("neither a token"), "{err}");
        assert!(!err.to_string().contains("hunter2"));
        let bridge = BridgeSpec {
            channel: "c".into(),
            endpoint: "e".into(),
            token_secret_ref: Some(KeySelector {
                name: "creds".into(),
                key: "nope".into(),
            }),
        };
        let err = resolve_secrets(
            &endpoint("ws://h/"),
            Some(&bridge),
            &secrets(&[("creds", "token", "x")]),
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.tokenSecretRef");
    }
}
