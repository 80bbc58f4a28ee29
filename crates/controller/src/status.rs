//! Pure status decisions: what `Ready` says for each kind, given what the
//! caches hold. No client, no I/O; unit-tested in `status/tests.rs`.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;

use wsbridge_api::conditions::{Decided, READY};
use wsbridge_api::{ChannelBackend, ChannelSpec, Destination, Endpoint, KeySelector};
use wsbridge_dataplane::DestinationPolicy;

/// The keys a Secret or ConfigMap holds (values are never needed to decide).
pub type Keys = BTreeSet<String>;

/// Looks up the keys of a Secret or ConfigMap by name, in the object's namespace.
pub trait ConfigLookup {
    fn secret_keys(&self, name: &str) -> Option<Keys>;
    fn config_map_keys(&self, name: &str) -> Option<Keys>;
}

fn not_found(kind: &str, name: &str, what: &str) -> Decided {
    Decided::failed(
        READY,
        &format!("{kind}NotFound"),
        format!("{kind} {name:?} ({what}) does not exist; create it"),
    )
}

/// Checks a key of a Secret; `None` when it is present.
pub fn check_secret_key(refs: &dyn ConfigLookup, sel: &KeySelector, what: &str) -> Option<Decided> {
    match refs.secret_keys(&sel.name) {
        None => Some(not_found("Secret", &sel.name, what)),
        Some(keys) if !keys.contains(&sel.key) => Some(Decided::failed(
            READY,
            "SecretKeyMissing",
            format!("Secret {:?} ({what}) has no key {:?}", sel.name, sel.key),
        )),
        Some(_) => None,
    }
}

/// Why an Endpoint cannot be used, or `None` when its Secrets and ConfigMaps
/// exist with usable keys.
pub fn endpoint_problem(ep: &Endpoint, refs: &dyn ConfigLookup) -> Option<Decided> {
    if let Some(auth) = &ep.spec.auth {
        let name = &auth.secret_ref.name;
        let Some(keys) = refs.secret_keys(name) else {
            return Some(not_found("Secret", name, "auth.secretRef"));
        };
        let headers: Vec<&str> = auth
            .secret_headers
            .iter()
            .flatten()
            .map(|(_, key)| key.0.as_str())
            .collect();
        let has = |k: &str| keys.contains(k);
        if !(has("token") || (has("username") && has("password"))) && headers.is_empty() {
            let missing = if has("username") {
                "password"
            } else if has("password") {
                "username"
            } else {
                "token"
            };
            return Some(Decided::failed(
                READY,
                "SecretKeyMissing",
                format!(
                    "Secret {name:?} (auth.secretRef) has no key {missing:?}: it needs `token`, or `username` and `password`"
                ),
            ));
        }
        if let Some(key) = headers.iter().find(|k| !has(k)) {
            return Some(Decided::failed(
                READY,
                "SecretKeyMissing",
                format!("Secret {name:?} (auth.secretHeaders) has no key {key:?}"),
            ));
        }
    }
    if let Some(tls) = &ep.spec.tls {
        if let Some(sel) = &tls.ca_secret_ref
            && let Some(problem) = check_secret_key(refs, sel, "tls.caSecretRef")
        {
            return Some(problem);
        }
        if let Some(sel) = &tls.ca_config_map_ref {
            match refs.config_map_keys(&sel.name) {
                None => return Some(not_found("ConfigMap", &sel.name, "tls.caConfigMapRef")),
                Some(keys) if !keys.contains(&sel.key) => {
                    return Some(Decided::failed(
                        READY,
                        "ConfigMapKeyMissing",
                        format!(
                            "ConfigMap {:?} (tls.caConfigMapRef) has no key {:?}",
                            sel.name, sel.key
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    None
}

/// `Ready=False`, reason `DestinationDenied`, when the Endpoint's URL points
/// at a host the destination policy refuses (the worker would refuse to
/// connect).
pub fn endpoint_destination_problem(ep: &Endpoint, policy: &DestinationPolicy) -> Option<Decided> {
    let host = url::Url::parse(&ep.spec.url).ok()?.host_str()?.to_string();
    policy.check_host(&host).err().map(|denied| {
        Decided::failed(
            READY,
            "DestinationDenied",
            format!("url is not an allowed destination: {denied}; ask the operator to allow it"),
        )
    })
}

/// The Endpoint's `Ready`.
pub fn endpoint_ready(ep: &Endpoint, refs: &dyn ConfigLookup) -> Decided {
    endpoint_problem(ep, refs)
        .unwrap_or_else(|| Decided::ok(READY, "Ready", "credentials and CA are present"))
}

/// `Ready=False`, reason `NoBroker`: a `rabbitmq` Channel (or a Bridge on
/// one) in an installation without a broker.
pub fn no_broker(what: &str) -> Decided {
    Decided::failed(
        READY,
        "NoBroker",
        format!(
            "{what} backend rabbitmq, but this installation has no RabbitMQ broker: \
             set the chart's `broker` values (broker.url, or broker.existingSecret) \
             or use backend: memory"
        ),
    )
}

/// The Channel's `Ready`: addressable at `url`; a `rabbitmq` channel needs
/// the installation's broker (`broker`: one is configured). A memory
/// channel that asks for anonymous remote subscribers is told that in a
/// cluster it has none: its messages live in one process, which gateway
/// replicas do not share.
pub fn channel_ready(spec: &ChannelSpec, url: &str, broker: bool) -> Decided {
    if spec.backend() == ChannelBackend::Rabbitmq && !broker {
        return no_broker("the Channel has");
    }
    let mut message = format!("publish with POST {url}");
    if spec.allow_anonymous_subscribe && spec.backend() == ChannelBackend::Memory {
        message.push_str(
            "; allowAnonymousSubscribe has no effect on a memory channel: remote (WebSocket, MQTT, AMQP) subscribers need spec.backend: rabbitmq",
        );
    }
    Decided::ok(READY, "Addressable", message)
}

/// A Deployment is available when its `Available` condition is `True`.
pub fn deployment_available(d: &Deployment) -> bool {
    d.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Available" && c.status == "True"))
}

/// What a Bridge reconcile found.
pub struct BridgeFacts<'a> {
    pub channel: &'a str,
    pub endpoint: &'a str,
    pub channel_exists: bool,
    /// The Channel is `rabbitmq` and the installation has no broker.
    pub no_broker: bool,
    /// `None`: no such Endpoint; `Some(Some(p))`: the Endpoint is unusable.
    pub endpoint_problem: Option<Option<Decided>>,
    /// A problem with `tokenSecretRef`.
    pub token_problem: Option<Decided>,
    /// A worker object's name is taken by an object this Bridge does not own.
    pub worker_conflict: Option<String>,
    /// `None`: no worker Deployment yet.
    pub worker_available: Option<bool>,
    /// The worker reports `Connected=True`.
    pub connected: bool,
}

/// The Bridge's `Ready`: references usable, worker available and connected.
pub fn bridge_ready(f: &BridgeFacts) -> Decided {
    if !f.channel_exists {
        return Decided::failed(
            READY,
            "ChannelNotFound",
            format!("Channel {:?} does not exist; create it", f.channel),
        );
    }
    if f.no_broker {
        return no_broker(&format!("Channel {:?} has", f.channel));
    }
    match &f.endpoint_problem {
        None => {
            return Decided::failed(
                READY,
                "EndpointNotFound",
                format!("Endpoint {:?} does not exist; create it", f.endpoint),
            );
        }
        Some(Some(p)) => {
            return Decided::failed(
                READY,
                "EndpointNotReady",
                format!("Endpoint {:?} is not usable: {}", f.endpoint, p.message),
            );
        }
        Some(None) => {}
    }
    if let Some(p) = &f.token_problem {
        return p.clone();
    }
    if let Some(message) = &f.worker_conflict {
        return Decided::failed(READY, "WorkerObjectConflict", message.clone());
    }
    match f.worker_available {
        Some(true) => {}
        Some(false) | None => {
            return Decided::failed(
                READY,
                "WorkerUnavailable",
                "the worker Deployment is not available yet",
            );
        }
    }
    if !f.connected {
        return Decided::failed(
            READY,
            "NotConnected",
            "the worker is not connected to the endpoint",
        );
    }
    Decided::ok(
        READY,
        "Ready",
        "the worker is available and connected to the endpoint",
    )
}

/// Resolves a destination: a Service (which must exist, with the port when it
/// lists ports) or an absolute URI.
pub fn resolve_destination(
    dest: &Destination,
    namespace: &str,
    cluster_domain: &str,
    service: impl Fn(&str) -> Option<std::sync::Arc<Service>>,
    what: &str,
) -> Result<String, Decided> {
    if let Some(uri) = &dest.uri {
        return Ok(uri.clone());
    }
    let Some(r) = &dest.service else {
        return Err(Decided::failed(
            READY,
            "DestinationInvalid",
            format!("{what} sets neither ref nor uri"),
        ));
    };
    let port = r.port.unwrap_or(80);
    let Some(svc) = service(&r.name) else {
        return Err(Decided::failed(
            READY,
            "ServiceNotFound",
            format!("Service {:?} ({what}) does not exist; create it", r.name),
        ));
    };
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
    if let Some(ports) = ports
        && !ports.is_empty()
        && !ports.iter().any(|p| p.port == port)
    {
        return Err(Decided::failed(
            READY,
            "ServicePortNotFound",
            format!("Service {:?} ({what}) has no port {port}", r.name),
        ));
    }
    let path = dest.path.as_deref().unwrap_or("/");
    Ok(format!(
        "http://{}.{namespace}.svc.{cluster_domain}:{port}{path}",
        r.name
    ))
}

/// A Subscription's resolved status.
#[derive(Debug, PartialEq, Eq)]
pub struct SubscriptionDecision {
    pub subscriber_uri: Option<String>,
    pub dead_letter_sink_uri: Option<String>,
    pub ready: Decided,
}

/// `Ready=False`, reason `DestinationDenied`, when `policy` refuses the host
/// of a resolved URI (the data plane would refuse it at connect time too).
pub fn check_destination(uri: &str, policy: &DestinationPolicy, what: &str) -> Result<(), Decided> {
    let host = uri
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string));
    let Some(host) = host else {
        return Ok(());
    };
    policy.check_host(&host).map_err(|denied| {
        Decided::failed(
            READY,
            "DestinationDenied",
            format!(
                "{what} {uri:?} is not an allowed destination: {denied}; ask the operator to allow it or use another address"
            ),
        )
    })
}

/// Decides a Subscription's status from its Channel (if any), its
/// subscriber and its dead-letter sink (the Subscription's, else the
/// Channel's).
pub fn subscription_status(
    sub: &wsbridge_api::Subscription,
    channel: Option<&wsbridge_api::Channel>,
    namespace: &str,
    cluster_domain: &str,
    service: &dyn Fn(&str) -> Option<std::sync::Arc<Service>>,
    destinations: &DestinationPolicy,
) -> SubscriptionDecision {
    let checked = |r: Result<String, Decided>, what: &str| {
        r.and_then(|uri| check_destination(&uri, destinations, what).map(|()| uri))
    };
    let subscriber = checked(
        resolve_destination(
            &sub.spec.subscriber,
            namespace,
            cluster_domain,
            service,
            "subscriber",
        ),
        "subscriber",
    );
    let sink = sub
        .spec
        .delivery
        .as_ref()
        .and_then(|d| d.dead_letter_sink.as_ref())
        .or_else(|| {
            channel
                .and_then(|c| c.spec.delivery.as_ref())
                .and_then(|d| d.dead_letter_sink.as_ref())
        });
    let sink = sink.map(|s| {
        checked(
            resolve_destination(s, namespace, cluster_domain, service, "deadLetterSink"),
            "deadLetterSink",
        )
    });
    let ready = if channel.is_none() {
        Decided::failed(
            READY,
            "ChannelNotFound",
            format!("Channel {:?} does not exist; create it", sub.spec.channel),
        )
    } else if let Err(p) = &subscriber {
        p.clone()
    } else if let Some(Err(p)) = &sink {
        p.clone()
    } else {
        Decided::ok(READY, "Ready", "subscriber resolved")
    };
    SubscriptionDecision {
        subscriber_uri: subscriber.ok(),
        dead_letter_sink_uri: sink.and_then(Result::ok),
        ready,
    }
}

#[cfg(test)]
mod tests;
