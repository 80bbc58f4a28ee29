//! Which objects to reconcile when another one changes: a Channel's Bridges
//! and Subscriptions, the Bridges and Endpoints that read a Secret or a
//! ConfigMap, the Subscriptions that deliver to a Service, and so on. Pure
//! functions over the caches, in the changed object's namespace.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use super::reconcile::{self, Stores};
use wsbridge_api::{Bridge, Channel, DeliverySpec, Endpoint, Subscription};

/// A mapper for `Controller::watches_shared_stream`: `f` over the caches.
pub(crate) fn over<T, K>(
    stores: &Stores,
    f: fn(&Stores, &T) -> Vec<ObjectRef<K>>,
) -> impl Fn(Arc<T>) -> Vec<ObjectRef<K>> + Send + Sync + 'static
where
    T: 'static,
    K: Resource + 'static,
{
    let stores = stores.clone();
    move |obj| f(&stores, &obj)
}

pub(crate) fn bridges_of_channel(s: &Stores, c: &Channel) -> Vec<ObjectRef<Bridge>> {
    let (ns, name) = key(c);
    refs_where(&s.bridges, &ns, |b| b.spec.channel == name)
}

pub(crate) fn bridges_of_endpoint(s: &Stores, e: &Endpoint) -> Vec<ObjectRef<Bridge>> {
    let (ns, name) = key(e);
    refs_where(&s.bridges, &ns, |b| b.spec.endpoint == name)
}

/// Bridges whose token or whose Endpoint's credentials or CA are in `sec`,
/// or that sign deliveries to a Subscription with its signing secret there.
pub(crate) fn bridges_using_secret(s: &Stores, sec: &Secret) -> Vec<ObjectRef<Bridge>> {
    let (ns, name) = key(sec);
    let signing_channels: Vec<String> = s
        .subscriptions
        .state()
        .iter()
        .filter(|x| x.metadata.namespace.as_deref() == Some(&ns) && subscription_uses_secret(x, &name))
        .map(|x| x.spec.channel.clone())
        .collect();
    refs_where(&s.bridges, &ns, |b| {
        b.spec.token_secret_ref.as_ref().is_some_and(|t| t.name == name)
            || signing_channels.contains(&b.spec.channel)
            || reconcile::get(&s.endpoints, &ns, &b.spec.endpoint)
                .is_some_and(|e| endpoint_uses_secret(&e, &name))
    })
}

/// The Bridges of a Subscription's Channel: their workers deliver to it,
/// and sign what they deliver when it names a signing secret.
pub(crate) fn bridges_of_subscription(s: &Stores, x: &Subscription) -> Vec<ObjectRef<Bridge>> {
    let (ns, _) = key(x);
    refs_where(&s.bridges, &ns, |b| b.spec.channel == x.spec.channel)
}

/// Subscriptions whose signing secret is in `sec`.
pub(crate) fn subscriptions_using_secret(s: &Stores, sec: &Secret) -> Vec<ObjectRef<Subscription>> {
    let (ns, name) = key(sec);
    refs_where(&s.subscriptions, &ns, |x| subscription_uses_secret(x, &name))
}

fn subscription_uses_secret(x: &Subscription, name: &str) -> bool {
    x.spec.signing_secret_ref.as_ref().is_some_and(|r| r.name == name)
}

/// Bridges whose Endpoint's CA is in `cm`.
pub(crate) fn bridges_using_config_map(s: &Stores, cm: &ConfigMap) -> Vec<ObjectRef<Bridge>> {
    let (ns, name) = key(cm);
    refs_where(&s.bridges, &ns, |b| {
        reconcile::get(&s.endpoints, &ns, &b.spec.endpoint)
            .is_some_and(|e| endpoint_uses_config_map(&e, &name))
    })
}

pub(crate) fn subscriptions_of_channel(s: &Stores, c: &Channel) -> Vec<ObjectRef<Subscription>> {
    let (ns, name) = key(c);
    refs_where(&s.subscriptions, &ns, |x| x.spec.channel == name)
}

/// Subscriptions whose subscriber or dead-letter sink (their own, else
/// their Channel's) is `svc`.
pub(crate) fn subscriptions_of_service(s: &Stores, svc: &Service) -> Vec<ObjectRef<Subscription>> {
    let (ns, name) = key(svc);
    let sink = |d: Option<&DeliverySpec>| {
        d.and_then(|d| d.dead_letter_sink.as_ref())
            .and_then(|d| d.service.as_ref())
            .is_some_and(|r| r.name == name)
    };
    refs_where(&s.subscriptions, &ns, |x| {
        x.spec.subscriber.service.as_ref().is_some_and(|r| r.name == name)
            || sink(x.spec.delivery.as_ref())
            || reconcile::get(&s.channels, &ns, &x.spec.channel)
                .is_some_and(|c| sink(c.spec.delivery.as_ref()))
    })
}

/// The Channel a Bridge connects (its count of Bridges changes).
pub(crate) fn channel_of_bridge(b: Arc<Bridge>) -> Option<ObjectRef<Channel>> {
    Some(ObjectRef::new(&b.spec.channel).within(&b.namespace().unwrap_or_default()))
}

/// The Channel a Subscription follows (its count of Subscriptions changes).
pub(crate) fn channel_of_subscription(x: Arc<Subscription>) -> Option<ObjectRef<Channel>> {
    Some(ObjectRef::new(&x.spec.channel).within(&x.namespace().unwrap_or_default()))
}

pub(crate) fn endpoints_using_secret(s: &Stores, sec: &Secret) -> Vec<ObjectRef<Endpoint>> {
    let (ns, name) = key(sec);
    refs_where(&s.endpoints, &ns, |e| endpoint_uses_secret(e, &name))
}

pub(crate) fn endpoints_using_config_map(s: &Stores, cm: &ConfigMap) -> Vec<ObjectRef<Endpoint>> {
    let (ns, name) = key(cm);
    refs_where(&s.endpoints, &ns, |e| endpoint_uses_config_map(e, &name))
}

fn key<K: Resource>(obj: &K) -> (String, String) {
    (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

fn refs_where<K>(store: &Store<K>, ns: &str, pred: impl Fn(&K) -> bool) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(ns) && pred(o))
        .map(|o| ObjectRef::from_obj(&**o))
        .collect()
}

fn endpoint_uses_secret(e: &Endpoint, name: &str) -> bool {
    e.spec.auth.as_ref().is_some_and(|a| a.secret_ref.name == name)
        || e.spec
            .tls
            .as_ref()
            .and_then(|t| t.ca_secret_ref.as_ref())
            .is_some_and(|s| s.name == name)
}

fn endpoint_uses_config_map(e: &Endpoint, name: &str) -> bool {
    e.spec
        .tls
        .as_ref()
        .and_then(|t| t.ca_config_map_ref.as_ref())
        .is_some_and(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher;
    use serde::de::DeserializeOwned;

    use super::*;
    use wsbridge_api::BridgeSpec;

    fn store<K>(objects: Vec<K>) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let mut writer = Writer::default();
        for o in objects {
            writer.apply_watcher_event(&watcher::Event::Apply(o));
        }
        writer.as_reader()
    }

    fn named<K: Resource + DeserializeOwned>(ns: &str, name: &str, spec: &str) -> K {
        let mut o: K = serde_norway::from_str(&format!("metadata: {{name: {name}}}\nspec: {spec}")).unwrap();
        o.meta_mut().namespace = Some(ns.into());
        o
    }

    fn in_ns<K: Resource + Default>(ns: &str, name: &str) -> K {
        let mut o = K::default();
        o.meta_mut().namespace = Some(ns.into());
        o.meta_mut().name = Some(name.into());
        o
    }

    /// Bridge `a` reads Secret `tok` itself; `b`'s Endpoint authenticates with
    /// `creds` and trusts the CA in ConfigMap `ca`; `c` lives in another namespace.
    fn stores() -> Stores {
        let bridge = |ns, name, spec: BridgeSpec| {
            let mut b = Bridge::new(name, spec);
            b.metadata.namespace = Some(String::from(ns));
            b
        };
        let spec = |endpoint: &str, token: Option<&str>| BridgeSpec {
            channel: "ticks".into(),
            endpoint: endpoint.into(),
            token_secret_ref: token.map(|t| wsbridge_api::KeySelector {
                name: t.into(),
                key: "token".into(),
            }),
            worker: None,
        };
        Stores {
            bridges: store(vec![
                bridge("ns", "a", spec("plain", Some("tok"))),
                bridge("ns", "b", spec("secured", None)),
                bridge("other", "c", spec("secured", Some("tok"))),
            ]),
            channels: store(vec![named::<Channel>(
                "ns",
                "ticks",
                "{delivery: {deadLetterSink: {ref: {kind: Service, name: dlq}}}}",
            )]),
            endpoints: store(vec![
                named::<Endpoint>("ns", "plain", "{url: 'wss://x/'}"),
                named::<Endpoint>(
                    "ns",
                    "secured",
                    "{url: 'wss://x/', auth: {secretRef: {name: creds}}, tls: {caConfigMapRef: {name: ca, key: ca.crt}}}",
                ),
            ]),
            subscriptions: store(vec![
                named::<Subscription>(
                    "ns",
                    "to-svc",
                    "{channel: ticks, subscriber: {ref: {kind: Service, name: app}}}",
                ),
                named::<Subscription>("ns", "to-uri", "{channel: ticks, subscriber: {uri: 'http://x/'}}"),
                named::<Subscription>(
                    "other",
                    "to-svc",
                    "{channel: ticks, subscriber: {ref: {kind: Service, name: app}}}",
                ),
            ]),
            secrets: store(vec![]),
            config_maps: store(vec![]),
            services: store(vec![]),
            deployments: store(vec![]),
            service_accounts: store(vec![]),
            roles: store(vec![]),
            role_bindings: store(vec![]),
            network_policies: store(vec![]),
        }
    }

    fn names<K: Resource>(refs: Vec<ObjectRef<K>>) -> BTreeSet<String> {
        refs.into_iter()
            .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
            .collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_secret_triggers_the_bridges_and_endpoints_that_read_it_in_its_namespace() {
        let s = stores();
        let secret = |name| in_ns::<Secret>("ns", name);
        assert_eq!(names(bridges_using_secret(&s, &secret("tok"))), set(&["ns/a"]));
        assert_eq!(names(bridges_using_secret(&s, &secret("creds"))), set(&["ns/b"]));
        assert_eq!(
            names(endpoints_using_secret(&s, &secret("creds"))),
            set(&["ns/secured"])
        );
        assert!(bridges_using_secret(&s, &secret("unrelated")).is_empty());
    }

    #[test]
    fn a_config_map_triggers_the_bridges_and_endpoints_that_trust_its_ca() {
        let s = stores();
        let ca = in_ns::<ConfigMap>("ns", "ca");
        assert_eq!(names(bridges_using_config_map(&s, &ca)), set(&["ns/b"]));
        assert_eq!(names(endpoints_using_config_map(&s, &ca)), set(&["ns/secured"]));
    }

    #[test]
    fn a_channel_triggers_its_bridges_and_subscriptions_and_they_trigger_it() {
        let s = stores();
        let ticks: Channel = named("ns", "ticks", "{}");
        assert_eq!(names(bridges_of_channel(&s, &ticks)), set(&["ns/a", "ns/b"]));
        assert_eq!(
            names(subscriptions_of_channel(&s, &ticks)),
            set(&["ns/to-svc", "ns/to-uri"])
        );
        let a = s
            .bridges
            .state()
            .into_iter()
            .find(|b| b.name_any() == "a")
            .unwrap();
        assert_eq!(channel_of_bridge(a), Some(ObjectRef::new("ticks").within("ns")));
    }

    #[test]
    fn a_service_triggers_the_subscriptions_that_deliver_to_it() {
        let s = stores();
        let app = in_ns::<Service>("ns", "app");
        assert_eq!(names(subscriptions_of_service(&s, &app)), set(&["ns/to-svc"]));
        // The Channel's dead-letter sink is every Subscription's fallback.
        let dlq = in_ns::<Service>("ns", "dlq");
        assert_eq!(
            names(subscriptions_of_service(&s, &dlq)),
            set(&["ns/to-svc", "ns/to-uri"])
        );
    }

    #[test]
    fn a_signing_secret_triggers_its_subscriptions_and_the_bridges_of_their_channel() {
        let mut s = stores();
        s.subscriptions = store(vec![
            named::<Subscription>(
                "ns",
                "signed",
                "{channel: ticks, subscriber: {uri: 'http://x/'}, signingSecretRef: {name: hook, key: secret}}",
            ),
            named::<Subscription>(
                "other",
                "signed",
                "{channel: elsewhere, subscriber: {uri: 'http://x/'}, signingSecretRef: {name: hook, key: secret}}",
            ),
        ]);
        let hook = in_ns::<Secret>("ns", "hook");
        assert_eq!(names(subscriptions_using_secret(&s, &hook)), set(&["ns/signed"]));
        assert_eq!(names(bridges_using_secret(&s, &hook)), set(&["ns/a", "ns/b"]));
        let elsewhere = in_ns::<Secret>("other", "hook");
        assert!(
            bridges_using_secret(&s, &elsewhere).is_empty(),
            "no Bridge on that channel"
        );
        let signed: Subscription = named("ns", "signed", "{channel: ticks, subscriber: {uri: 'http://x/'}}");
        assert_eq!(
            names(bridges_of_subscription(&s, &signed)),
            set(&["ns/a", "ns/b"])
        );
    }

    #[test]
    fn an_endpoint_triggers_the_bridges_that_use_it() {
        let s = stores();
        let secured: Endpoint = named("ns", "secured", "{url: 'wss://x/'}");
        assert_eq!(names(bridges_of_endpoint(&s, &secured)), set(&["ns/b"]));
    }
}
