//! The status decisions, one scenario per test.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

use super::*;
use wsbridge_api::*;

#[derive(Default)]
struct Refs {
    secrets: BTreeMap<String, Keys>,
    maps: BTreeMap<String, Keys>,
}

impl Refs {
    fn secret(mut self, name: &str, keys: &[&str]) -> Self {
        self.secrets
            .insert(name.into(), keys.iter().map(|k| k.to_string()).collect());
        self
    }
    fn map(mut self, name: &str, keys: &[&str]) -> Self {
        self.maps
            .insert(name.into(), keys.iter().map(|k| k.to_string()).collect());
        self
    }
}

impl ConfigLookup for Refs {
    fn secret_keys(&self, name: &str) -> Option<Keys> {
        self.secrets.get(name).cloned()
    }
    fn config_map_keys(&self, name: &str) -> Option<Keys> {
        self.maps.get(name).cloned()
    }
}

fn endpoint(yaml: &str) -> Endpoint {
    let spec: EndpointSpec = serde_norway::from_str(yaml).unwrap();
    Endpoint::new("ep", spec)
}

#[test]
fn endpoint_without_references_is_ready() {
    let ep = endpoint("url: wss://x.example/");
    assert!(endpoint_ready(&ep, &Refs::default()).status);
}

#[test]
fn endpoint_secret_missing_then_keys_checked() {
    let ep = endpoint("url: wss://x/\nauth: {secretRef: {name: creds}, secretHeaders: {X-Key: apikey}}");
    assert_eq!(endpoint_ready(&ep, &Refs::default()).reason, "SecretNotFound");
    let r = endpoint_ready(&ep, &Refs::default().secret("creds", &["token"]));
    assert_eq!(r.reason, "SecretKeyMissing");
    assert!(r.message.contains("apikey"), "{}", r.message);
    assert!(endpoint_ready(&ep, &Refs::default().secret("creds", &["apikey"])).status);
    let ep = endpoint("url: wss://x/\nauth: {secretRef: {name: creds}}");
    let r = endpoint_ready(&ep, &Refs::default().secret("creds", &["username"]));
    assert_eq!(r.reason, "SecretKeyMissing");
    assert!(r.message.contains("password"));
    assert!(endpoint_ready(&ep, &Refs::default().secret("creds", &["username", "password"])).status);
}

#[test]
fn endpoint_ca_in_a_config_map() {
    let ep = endpoint("url: wss://x/\ntls: {caConfigMapRef: {name: ca, key: ca.crt}}");
    assert_eq!(endpoint_ready(&ep, &Refs::default()).reason, "ConfigMapNotFound");
    assert_eq!(
        endpoint_ready(&ep, &Refs::default().map("ca", &["other"])).reason,
        "ConfigMapKeyMissing"
    );
    assert!(endpoint_ready(&ep, &Refs::default().map("ca", &["ca.crt"])).status);
    let ep = endpoint("url: wss://x/\ntls: {caSecretRef: {name: ca, key: ca.crt}}");
    assert_eq!(endpoint_ready(&ep, &Refs::default()).reason, "SecretNotFound");
}

fn facts() -> BridgeFacts<'static> {
    BridgeFacts {
        channel: "c",
        endpoint: "e",
        channel_exists: true,
        no_broker: false,
        endpoint_problem: Some(None),
        token_problem: None,
        worker_conflict: None,
        worker_available: Some(true),
        connected: true,
    }
}

#[test]
fn bridge_ready_reasons_in_order() {
    assert!(bridge_ready(&facts()).status);
    let f = BridgeFacts {
        connected: false,
        ..facts()
    };
    assert_eq!(bridge_ready(&f).reason, "NotConnected");
    let f = BridgeFacts {
        worker_available: None,
        ..facts()
    };
    assert_eq!(bridge_ready(&f).reason, "WorkerUnavailable");
    let f = BridgeFacts {
        worker_conflict: Some("Deployment w already exists".into()),
        worker_available: None,
        ..facts()
    };
    assert_eq!(bridge_ready(&f).reason, "WorkerObjectConflict");
    let f = BridgeFacts {
        endpoint_problem: Some(Some(Decided::failed(READY, "SecretNotFound", "x"))),
        ..facts()
    };
    assert_eq!(bridge_ready(&f).reason, "EndpointNotReady");
    let f = BridgeFacts {
        endpoint_problem: None,
        ..facts()
    };
    assert_eq!(bridge_ready(&f).reason, "EndpointNotFound");
    let f = BridgeFacts {
        channel_exists: false,
        endpoint_problem: None,
        ..facts()
    };
    assert_eq!(bridge_ready(&f).reason, "ChannelNotFound");
}

fn service(ports: &[i32]) -> Arc<Service> {
    Arc::new(Service {
        spec: Some(ServiceSpec {
            ports: Some(
                ports
                    .iter()
                    .map(|p| ServicePort {
                        port: *p,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn subscription(yaml: &str) -> Subscription {
    Subscription::new("s", serde_norway::from_str(yaml).unwrap())
}

/// A Subscription's status in namespace `ns`, under the default destination policy.
fn decide(
    sub: &Subscription,
    channel: Option<&Channel>,
    service: &dyn Fn(&str) -> Option<Arc<Service>>,
) -> SubscriptionDecision {
    subscription_status(
        sub,
        channel,
        "ns",
        "cluster.local",
        service,
        &DestinationPolicy::default(),
    )
}

#[test]
fn subscriber_service_resolves_to_cluster_dns() {
    let sub = subscription(
        "channel: c\nsubscriber: {ref: {kind: Service, name: pricing, port: 8080}, path: /ingest}",
    );
    let ch = Channel::new("c", ChannelSpec::default());
    let d = decide(&sub, Some(&ch), &|_| Some(service(&[8080])));
    assert_eq!(
        d.subscriber_uri.as_deref(),
        Some("http://pricing.ns.svc.cluster.local:8080/ingest")
    );
    assert!(d.ready.status);
    let d = decide(&sub, Some(&ch), &|_| Some(service(&[80])));
    assert_eq!(d.ready.reason, "ServicePortNotFound");
    assert_eq!(d.subscriber_uri, None);
    let d = decide(&sub, Some(&ch), &|_| None);
    assert_eq!(d.ready.reason, "ServiceNotFound");
    let d = decide(&sub, None, &|_| Some(service(&[])));
    assert_eq!(d.ready.reason, "ChannelNotFound");
}

#[test]
fn dead_letter_sink_falls_back_to_the_channel() {
    let sub = subscription("channel: c\nsubscriber: {uri: 'http://x:1/a'}");
    let ch: ChannelSpec =
        serde_norway::from_str("delivery: {deadLetterSink: {ref: {kind: Service, name: dlq}}}").unwrap();
    let ch = Channel::new("c", ch);
    let d = decide(&sub, Some(&ch), &|_| Some(service(&[])));
    assert_eq!(d.subscriber_uri.as_deref(), Some("http://x:1/a"));
    assert_eq!(
        d.dead_letter_sink_uri.as_deref(),
        Some("http://dlq.ns.svc.cluster.local:80/")
    );
    let sub = subscription(
        "channel: c\nsubscriber: {uri: 'http://x:1/a'}\ndelivery: {deadLetterSink: {uri: 'http://d/'}}",
    );
    let d = decide(&sub, Some(&ch), &|_| None);
    assert_eq!(d.dead_letter_sink_uri.as_deref(), Some("http://d/"));
    assert!(d.ready.status);
}

#[test]
fn denied_endpoint_urls_are_not_ready() {
    let p = DestinationPolicy::default();
    let d = endpoint_destination_problem(&endpoint("url: ws://169.254.169.254:80/x"), &p).unwrap();
    assert_eq!(d.reason, "DestinationDenied");
    let d = endpoint_destination_problem(&endpoint("url: wss://[fe80::1]/x"), &p).unwrap();
    assert!(d.message.contains("fe80::1"), "{}", d.message);
    assert!(endpoint_destination_problem(&endpoint("url: wss://feed.example/"), &p).is_none());
}

#[test]
fn denied_destinations_make_the_subscription_not_ready() {
    let ch = Channel::new("c", ChannelSpec::default());
    let none = &|_: &str| None;
    let sub = subscription("channel: c\nsubscriber: {uri: 'http://169.254.169.254/latest/meta-data/'}");
    let d = decide(&sub, Some(&ch), none);
    assert_eq!(d.ready.reason, "DestinationDenied");
    assert!(!d.ready.status);
    assert!(d.ready.message.contains("169.254.169.254"), "{}", d.ready.message);
    assert_eq!(
        d.subscriber_uri, None,
        "a denied URI is not published to the data plane"
    );
    let sub = subscription(
        "channel: c\nsubscriber: {uri: 'http://ok:1/'}\ndelivery: {deadLetterSink: {uri: 'http://metadata.google.internal/'}}",
    );
    let d = decide(&sub, Some(&ch), none);
    assert_eq!(d.ready.reason, "DestinationDenied");
    assert!(d.ready.message.contains("deadLetterSink"), "{}", d.ready.message);
    let policy = DestinationPolicy::from_rules(&[".svc.cluster.local".into()], &[], false).unwrap();
    let sub = subscription("channel: c\nsubscriber: {ref: {kind: Service, name: pricing}}");
    let d = subscription_status(
        &sub,
        Some(&ch),
        "ns",
        "cluster.local",
        &|_| Some(service(&[])),
        &policy,
    );
    assert_eq!(d.ready.reason, "DestinationDenied");
    let d = decide(&sub, Some(&ch), &|_| Some(service(&[])));
    assert!(d.ready.status);
}

#[test]
fn a_memory_channel_says_it_has_no_remote_subscribers() {
    let spec = |yaml: &str| serde_norway::from_str::<wsbridge_api::ChannelSpec>(yaml).unwrap();
    let url = "http://gw/channels/ns/c";
    let plain = channel_ready(&spec("{}"), url, false);
    assert!(plain.status && plain.message == format!("publish with POST {url}"));
    let anonymous = channel_ready(&spec("{allowAnonymousSubscribe: true}"), url, false);
    assert!(anonymous.status, "HTTP publishing and subscribing still work");
    assert!(
        anonymous.message.contains("backend: rabbitmq"),
        "{}",
        anonymous.message
    );
    let durable = channel_ready(
        &spec("{allowAnonymousSubscribe: true, backend: rabbitmq}"),
        url,
        true,
    );
    assert!(!durable.message.contains("no effect"), "{}", durable.message);
}

#[test]
fn a_rabbitmq_channel_and_its_bridges_need_the_installations_broker() {
    let spec = |yaml: &str| serde_norway::from_str::<wsbridge_api::ChannelSpec>(yaml).unwrap();
    let url = "http://gw/channels/ns/c";
    let durable = spec("{backend: rabbitmq}");
    let missing = channel_ready(&durable, url, false);
    assert_eq!((missing.status, missing.reason.as_str()), (false, "NoBroker"));
    assert!(missing.message.contains("`broker` values"), "{}", missing.message);
    assert!(channel_ready(&durable, url, true).status);
    assert!(
        channel_ready(&spec("{}"), url, false).status,
        "a memory channel needs no broker"
    );
    let f = BridgeFacts {
        no_broker: true,
        connected: false,
        ..facts()
    };
    let decided = bridge_ready(&f);
    assert_eq!((decided.status, decided.reason.as_str()), (false, "NoBroker"));
    assert!(decided.message.contains("\"c\""), "{}", decided.message);
    let gone = BridgeFacts {
        channel_exists: false,
        ..f
    };
    assert_eq!(bridge_ready(&gone).reason, "ChannelNotFound");
}
