//! Unit tests of the translations, one object or field family at a time.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use wsbridge_api::{
    BridgeSpec, DeliverySpec, Destination, EndpointAuth, EndpointSpec, Keepalive, KeySelector,
    LocalObjectReference, Reconnect, SecretKeyName, ServiceReference,
};
use wsbridge_core::SecretString;
use wsbridge_dataplane::delivery::{BackoffPolicy, DeliveryPolicy, Ordering};
use wsbridge_dataplane::endpoint::{Credentials, KeepAlive};
use wsbridge_dataplane::routing::DeliveryOptions;

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
        "queueCapacityBytes": 1048576, "overflowPolicy": "dropOldest",
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
    assert_eq!(o.queue_bytes, Some(1 << 20));
    assert_eq!(
        o.overflow,
        Some(wsbridge_dataplane::delivery::Overflow::DropOldest)
    );
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
        worker: None,
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
        worker: None,
    };
    let err = resolve_secrets(
        &endpoint("ws://h/"),
        Some(&bridge),
        &secrets(&[("creds", "token", "x")]),
    )
    .unwrap_err();
    assert_eq!(err.field, "spec.tokenSecretRef");
}
