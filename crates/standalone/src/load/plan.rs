//! Planning: the objects read, references checked and translated into data
//! plane values.

use std::collections::BTreeMap;

use wsbridge_api::{BacklogSpec, BridgeSpec, ChannelBackend, SubscriptionSpec};
use wsbridge_broker::topology::Backlog;
use wsbridge_core::{ObjectKey, SecretString};
use wsbridge_dataplane::endpoint::EndpointConfig;
use wsbridge_dataplane::routing::{BridgeInfo, ChannelInfo, SubscriptionInfo};
use wsbridge_translate::{self as translate, SecretLookupError, SecretSource};

use super::errors::{ConfigError, ConfigErrors};
use super::objects::{FileOrigin, Objects};

/// A Bridge, ready to run: its channel and its endpoint connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgePlan {
    /// For the routing index.
    pub info: BridgeInfo,
    /// The channel it feeds.
    pub channel: ObjectKey,
    /// The Endpoint (for logs).
    pub endpoint: ObjectKey,
    /// The connection's configuration (Endpoint spec + secrets + token).
    pub config: EndpointConfig,
}

/// A Channel, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPlan {
    /// For the routing index.
    pub info: ChannelInfo,
    /// Largest message accepted on the publish path.
    pub max_message_bytes: usize,
    /// Where its messages live: in this process, or in the broker.
    pub backend: ChannelBackend,
    /// `allowAnonymousSubscribe` (what RabbitMQ's anonymous MQTT clients
    /// may read; see `auth.rs`).
    pub allow_anonymous_subscribe: bool,
    /// The file it is defined in (for errors found after loading).
    pub file: String,
}

impl ChannelPlan {
    /// Whether its messages go through the broker (`backend: rabbitmq`).
    pub fn durable(&self) -> bool {
        self.backend == ChannelBackend::Rabbitmq
    }
}

/// A valid configuration, translated into data plane values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Channels by key.
    pub channels: BTreeMap<ObjectKey, ChannelPlan>,
    /// Subscriptions by key.
    pub subscriptions: BTreeMap<ObjectKey, SubscriptionInfo>,
    /// The bound of each Subscription's durable backlog (used on
    /// `rabbitmq` channels only).
    pub backlogs: BTreeMap<ObjectKey, Backlog>,
    /// Bridges by key.
    pub bridges: BTreeMap<ObjectKey, BridgePlan>,
    /// Endpoints read (counted in summaries).
    pub endpoints: usize,
    /// Secrets read (counted in summaries).
    pub secrets: usize,
}

impl Plan {
    /// A one-line summary for logs and `--check`.
    pub fn summary(&self) -> String {
        format!(
            "{} channel(s), {} bridge(s), {} endpoint(s), {} subscription(s), {} secret(s)",
            self.channels.len(),
            self.bridges.len(),
            self.endpoints,
            self.subscriptions.len(),
            self.secrets
        )
    }

    /// Whether `channel` is defined with `backend: rabbitmq`.
    pub fn durable(&self, channel: &ObjectKey) -> bool {
        self.channels.get(channel).is_some_and(ChannelPlan::durable)
    }

    /// Refuses every `backend: rabbitmq` Channel when no broker is
    /// configured (`broker` false): its messages would have nowhere to go.
    pub fn require_broker(&self, broker: bool) -> Result<(), ConfigErrors> {
        if broker {
            return Ok(());
        }
        let errors: Vec<ConfigError> = self
            .channels
            .iter()
            .filter(|(_, c)| c.durable())
            .map(|(key, c)| ConfigError {
                file: c.file.clone(),
                object: Some(format!("Channel {key}")),
                field: Some("spec.backend".into()),
                message: "backend rabbitmq needs a RabbitMQ broker and none is configured: \
                          start standalone with --rabbitmq-url-file PATH or WSBRIDGE_RABBITMQ_URL \
                          (or --rabbitmq-url), or use backend: memory"
                    .into(),
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// The plan of `objects`; what cannot be translated goes to `errors`.
pub(super) fn plan(objects: &Objects, errors: &mut Vec<ConfigError>) -> Plan {
    let mut plan = Plan {
        endpoints: objects.endpoints.len(),
        secrets: objects.secrets.len(),
        ..Plan::default()
    };
    for (key, (spec, origin)) in &objects.channels {
        match translate::channel_info(&key.namespace, spec) {
            Ok(info) => {
                let max_message_bytes = translate::channel_max_message_bytes(spec);
                plan.channels.insert(
                    key.clone(),
                    ChannelPlan {
                        info,
                        max_message_bytes,
                        backend: spec.backend(),
                        allow_anonymous_subscribe: spec.allow_anonymous_subscribe,
                        file: origin.file.clone(),
                    },
                );
            }
            Err(e) => errors.push(origin.problem(&e.field, e.message)),
        }
    }
    for (key, (spec, origin)) in &objects.subscriptions {
        match subscription(objects, key, spec, origin) {
            Ok(info) => {
                plan.subscriptions.insert(key.clone(), info);
                let backlog = spec.backlog.as_ref();
                plan.backlogs.insert(
                    key.clone(),
                    Backlog {
                        max_bytes: BacklogSpec::max_bytes(backlog),
                        max_messages: BacklogSpec::max_messages(backlog),
                    },
                );
            }
            Err(e) => errors.push(e),
        }
    }
    for (key, (spec, origin)) in &objects.bridges {
        match bridge(objects, key, spec, origin) {
            Ok(bridge) => {
                plan.bridges.insert(key.clone(), bridge);
            }
            Err(e) => errors.push(e),
        }
    }
    plan
}

fn subscription(
    objects: &Objects,
    key: &ObjectKey,
    spec: &SubscriptionSpec,
    origin: &FileOrigin,
) -> Result<SubscriptionInfo, ConfigError> {
    defined_channel(objects, key, &spec.channel, origin)?;
    let secrets = Secrets {
        namespace: &key.namespace,
        objects,
    };
    let problem = |e: translate::TranslateError| origin.problem(&e.field, e.message);
    let mut info = translate::subscription_info(&key.namespace, spec).map_err(problem)?;
    info.signing = translate::signing_key(spec, &secrets).map_err(problem)?;
    Ok(info)
}

fn bridge(
    objects: &Objects,
    key: &ObjectKey,
    spec: &BridgeSpec,
    origin: &FileOrigin,
) -> Result<BridgePlan, ConfigError> {
    let channel = defined_channel(objects, key, &spec.channel, origin)?;
    let endpoint_key = key.sibling(&spec.endpoint);
    let Some((endpoint, endpoint_origin)) = objects.endpoints.get(&endpoint_key) else {
        return Err(origin.problem("spec.endpoint", format!("Endpoint {endpoint_key} not found")));
    };
    let source = Secrets {
        namespace: &key.namespace,
        objects,
    };
    let mut resolved = translate::resolve_secrets(endpoint, Some(spec), &source).map_err(|e| {
        // The Bridge's own reference is reported on the Bridge, the
        // Endpoint's on the Endpoint.
        let on = if e.field == "spec.tokenSecretRef" {
            origin
        } else {
            endpoint_origin
        };
        on.problem(&e.field, e.message)
    })?;
    if let Some(ca) = endpoint.tls.as_ref().and_then(|t| t.ca_config_map_ref.as_ref()) {
        let found = objects
            .config_maps
            .get(&key.sibling(&ca.name))
            .and_then(|(data, _)| data.get(&ca.key));
        let Some(pem) = found else {
            return Err(endpoint_origin.problem(
                "spec.tls.caConfigMapRef",
                format!("ConfigMap {:?} with key {:?} not found", ca.name, ca.key),
            ));
        };
        resolved.endpoint_ca = Some(pem.clone());
    }
    let config = translate::endpoint_config(&key.namespace, &key.name, endpoint, &resolved)
        .map_err(|e| endpoint_origin.problem(&e.field, e.message))?;
    Ok(BridgePlan {
        info: translate::bridge_info(spec),
        channel,
        endpoint: endpoint_key,
        config,
    })
}

/// The key of the Channel `name` that `key`'s `spec.channel` refers to,
/// when one is defined.
fn defined_channel(
    objects: &Objects,
    key: &ObjectKey,
    name: &str,
    origin: &FileOrigin,
) -> Result<ObjectKey, ConfigError> {
    let channel = key.sibling(name);
    if objects.channels.contains_key(&channel) {
        Ok(channel)
    } else {
        Err(origin.problem("spec.channel", format!("Channel {channel} not found")))
    }
}

/// The Secrets of one namespace, as translation looks them up.
struct Secrets<'a> {
    namespace: &'a str,
    objects: &'a Objects,
}

impl SecretSource for Secrets<'_> {
    fn get(&self, secret: &str, key: &str) -> Result<SecretString, SecretLookupError> {
        let (data, _) = self
            .objects
            .secrets
            .get(&ObjectKey::new(self.namespace, secret))
            .ok_or_else(|| SecretLookupError::SecretNotFound(secret.to_string()))?;
        data.get(key)
            .cloned()
            .ok_or_else(|| SecretLookupError::KeyNotFound {
                secret: secret.to_string(),
                key: key.to_string(),
            })
    }
}
