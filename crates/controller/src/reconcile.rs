//! The four reconcilers. Each reads the shared caches, decides the status
//! with the pure functions of [`super::status`], writes only what changed,
//! and publishes an Event when `Ready` changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::Resource as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{instrument, warn};

use super::metrics::Metrics;
use super::resolution;
use super::status::{self, BridgeFacts, ConfigLookup, Keys};
use super::status_write::write_status;
use super::worker_objects::{self, FIELD_MANAGER, Source, drift};
use wsbridge_api::conditions::{self, CONNECTED};
use wsbridge_api::{
    Addressable, Bridge, BridgeStatus, Channel, ChannelStatus, Endpoint, EndpointStatus, Subscription,
    SubscriptionStatus,
};

/// Every object is reconciled again at least this often, whatever its watches missed.
const RESYNC: Duration = Duration::from_secs(3600);
/// How soon a Bridge whose worker name is taken by someone else's object looks again.
const CONFLICT_RECHECK: Duration = Duration::from_secs(10);

/// Why a reconcile failed. [`Error::label`] is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object has no namespace")]
    NoNamespace,
    #[error("applying worker {kind} failed: {source}")]
    ApplyWorker {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("writing status failed: {0}")]
    WriteStatus(#[source] kube::Error),
}

impl Error {
    /// Short label for metrics and Event reasons.
    pub fn label(&self) -> &'static str {
        match self {
            Error::NoNamespace => "NoNamespace",
            Error::ApplyWorker { .. } => "ApplyWorkerFailed",
            Error::WriteStatus(_) => "WriteStatusFailed",
        }
    }
}

/// The caches every reconcile reads (one watch per kind, shared).
#[derive(Clone)]
pub struct Stores {
    pub bridges: Store<Bridge>,
    pub channels: Store<Channel>,
    pub endpoints: Store<Endpoint>,
    pub subscriptions: Store<Subscription>,
    /// Values replaced by their SHA-256 digest before caching.
    pub secrets: Store<Secret>,
    /// Values replaced by their SHA-256 digest before caching.
    pub config_maps: Store<ConfigMap>,
    pub services: Store<Service>,
    /// Worker objects only (label-selected).
    pub deployments: Store<Deployment>,
    pub service_accounts: Store<ServiceAccount>,
    pub roles: Store<Role>,
    pub role_bindings: Store<RoleBinding>,
    pub network_policies: Store<NetworkPolicy>,
}

pub fn get<K>(store: &Store<K>, ns: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(ns))
}

/// [`ConfigLookup`] over the caches, in one namespace.
pub struct NsRefs<'a> {
    pub stores: &'a Stores,
    pub ns: &'a str,
}

impl NsRefs<'_> {
    fn digest(&self, source: &Source) -> Option<Vec<u8>> {
        match source {
            Source::Secret { name, key } => get(&self.stores.secrets, self.ns, name)?
                .data
                .as_ref()?
                .get(key)
                .map(|v| v.0.clone()),
            Source::ConfigMap { name, key } => {
                let cm = get(&self.stores.config_maps, self.ns, name)?;
                cm.binary_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|v| v.0.clone())
            }
        }
    }
}

impl ConfigLookup for NsRefs<'_> {
    fn secret_keys(&self, name: &str) -> Option<Keys> {
        let s = get(&self.stores.secrets, self.ns, name)?;
        Some(s.data.iter().flatten().map(|(k, _)| k.clone()).collect())
    }

    fn config_map_keys(&self, name: &str) -> Option<Keys> {
        let c = get(&self.stores.config_maps, self.ns, name)?;
        Some(c.binary_data.iter().flatten().map(|(k, _)| k.clone()).collect())
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub worker_image: String,
    pub gateway_url: String,
    pub cluster_domain: String,
    /// Where subscribers and dead-letter sinks may point; also handed to
    /// every worker through its environment.
    pub destinations: Arc<wsbridge_dataplane::DestinationPolicy>,
    /// Who may reach workers; `None`: no NetworkPolicies are written.
    pub worker_ingress: Option<worker_objects::WorkerIngress>,
    /// Worker pod resources and scheduling where a Bridge leaves them unset.
    pub worker_pod_defaults: wsbridge_api::WorkerPodSpec,
    /// The installation key every Bridge's send credential is derived from.
    pub send_key: tokio::sync::watch::Receiver<super::send_key::KeyBytes>,
    /// The broker of `rabbitmq` Channels, handed to their workers; `None`:
    /// such Channels and their Bridges are `NoBroker`.
    pub broker: Option<wsbridge_broker::BrokerUrl>,
}

pub(crate) fn namespace<K: Resource>(obj: &K) -> Result<String, Error> {
    obj.meta().namespace.clone().ok_or(Error::NoNamespace)
}

// ---------------------------------------------------------------- Bridge

/// What a worker kind needs to be checked and applied.
trait WorkerKind:
    k8s_openapi::Resource
    + Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
{
}

impl<K> WorkerKind for K where
    K: k8s_openapi::Resource
        + Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
{
}

/// Where one worker object stands against what the controller wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    UpToDate,
    /// Missing, or changed by hand: applied again.
    Apply,
    /// An object of that name that this Bridge does not control: left alone.
    Foreign,
}

/// The object as applied: typed objects serialize without `apiVersion`/`kind`.
fn applied_value<K: WorkerKind>(obj: &K) -> serde_json::Value {
    let mut value = serde_json::to_value(obj).expect("worker objects serialize");
    value["apiVersion"] = json!(K::API_VERSION);
    value["kind"] = json!(K::KIND);
    value
}

fn controlled_by(obj: &impl Resource, uid: &str) -> bool {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

async fn verdict<K: WorkerKind>(
    ctx: &Context,
    store: &Store<K>,
    ns: &str,
    bridge_uid: &str,
    desired: &K,
) -> Result<Verdict, Error> {
    let name = desired.name_any();
    let observed = match get(store, ns, &name) {
        Some(cached) => Some((*cached).clone()),
        // The caches hold only objects labelled as the controller's: one of
        // that name without the label is looked up, never overwritten.
        None => Api::<K>::namespaced(ctx.client.clone(), ns)
            .get_opt(&name)
            .await
            .map_err(|source| Error::ApplyWorker {
                kind: K::KIND,
                source,
            })?,
    };
    Ok(match observed {
        None => Verdict::Apply,
        Some(o) if !controlled_by(&o, bridge_uid) => Verdict::Foreign,
        Some(o) => {
            let observed = serde_json::to_value(&o).expect("objects serialize");
            if drift::drifted(&applied_value(desired), &observed) {
                Verdict::Apply
            } else {
                Verdict::UpToDate
            }
        }
    })
}

async fn apply<K: WorkerKind>(ctx: &Context, ns: &str, obj: &K) -> Result<(), Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&obj.name_any(), &pp, &Patch::Apply(&applied_value(obj)))
        .await
        .map_err(|source| Error::ApplyWorker {
            kind: K::KIND,
            source,
        })?;
    Ok(())
}

/// Where the Bridge's send credential Secret stands. The cache holds
/// salted digests of Secret values, so the value is compared by digest.
async fn send_secret_verdict(
    ctx: &Context,
    ns: &str,
    bridge_uid: &str,
    desired: &Secret,
) -> Result<Verdict, Error> {
    let name = desired.name_any();
    if let Some(cached) = get(&ctx.stores.secrets, ns, &name) {
        if !controlled_by(&*cached, bridge_uid) {
            return Ok(Verdict::Foreign);
        }
        let up_to_date = worker_objects::send_credential::cached_matches(desired, &cached);
        return Ok(if up_to_date {
            Verdict::UpToDate
        } else {
            Verdict::Apply
        });
    }
    // Not cached (yet): a Secret of that name that is not the Bridge's is
    // never overwritten.
    let observed = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_metadata_opt(&name)
        .await
        .map_err(|source| Error::ApplyWorker {
            kind: Secret::KIND,
            source,
        })?;
    Ok(match observed {
        Some(o) if !controlled_by(&o, bridge_uid) => Verdict::Foreign,
        _ => Verdict::Apply,
    })
}

/// Applies the worker objects that are missing or differ from `objs` (a
/// hand edit is reverted on the watch event it causes). When an object of
/// a worker name exists that this Bridge does not control, nothing is
/// applied and its kinds are returned.
async fn ensure_worker(
    ctx: &Context,
    ns: &str,
    bridge_uid: &str,
    objs: &worker_objects::WorkerObjects,
    send: &Secret,
) -> Result<Vec<&'static str>, Error> {
    let s = &ctx.stores;
    let sa = verdict(ctx, &s.service_accounts, ns, bridge_uid, &objs.service_account).await?;
    let role = verdict(ctx, &s.roles, ns, bridge_uid, &objs.role).await?;
    let binding = verdict(ctx, &s.role_bindings, ns, bridge_uid, &objs.role_binding).await?;
    let deployment = verdict(ctx, &s.deployments, ns, bridge_uid, &objs.deployment).await?;
    let policy = match &objs.network_policy {
        Some(p) => verdict(ctx, &s.network_policies, ns, bridge_uid, p).await?,
        None => Verdict::UpToDate,
    };
    let secret = send_secret_verdict(ctx, ns, bridge_uid, send).await?;
    let foreign: Vec<&'static str> = [
        (sa, ServiceAccount::KIND),
        (role, Role::KIND),
        (binding, RoleBinding::KIND),
        (deployment, Deployment::KIND),
        (policy, NetworkPolicy::KIND),
        (secret, Secret::KIND),
    ]
    .into_iter()
    .filter(|(v, _)| *v == Verdict::Foreign)
    .map(|(_, kind)| kind)
    .collect();
    if !foreign.is_empty() {
        return Ok(foreign);
    }
    // Identity and permissions before the pod that uses them.
    if sa == Verdict::Apply {
        apply(ctx, ns, &objs.service_account).await?;
    }
    if role == Verdict::Apply {
        apply(ctx, ns, &objs.role).await?;
    }
    if binding == Verdict::Apply {
        apply(ctx, ns, &objs.role_binding).await?;
    }
    if let (Some(p), Verdict::Apply) = (&objs.network_policy, policy) {
        apply(ctx, ns, p).await?;
    }
    // The credential before the pod that reads it.
    if secret == Verdict::Apply {
        apply(ctx, ns, send).await?;
    }
    if deployment == Verdict::Apply {
        apply(ctx, ns, &objs.deployment).await?;
    }
    Ok(Vec::new())
}

/// Applies the worker objects when they changed, then writes `Ready`.
#[instrument(skip(bridge, ctx), fields(bridge = %bridge.name_any(), ns = bridge.namespace()))]
pub async fn reconcile_bridge(bridge: Arc<Bridge>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _t = ctx.metrics.start("Bridge");
    let ns = namespace(&*bridge)?;
    let name = bridge.name_any();
    if bridge.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let refs = NsRefs {
        stores: &ctx.stores,
        ns: &ns,
    };
    let channel = get(&ctx.stores.channels, &ns, &bridge.spec.channel);
    let endpoint = get(&ctx.stores.endpoints, &ns, &bridge.spec.endpoint);
    let endpoint_problem = endpoint.as_ref().map(|e| {
        status::endpoint_destination_problem(e, &ctx.destinations)
            .or_else(|| status::endpoint_problem(e, &refs))
    });
    let token_problem = bridge
        .spec
        .token_secret_ref
        .as_ref()
        .and_then(|t| status::check_secret_key(&refs, t, "tokenSecretRef"));
    let worker_name = worker_objects::worker_name(&name);
    let existing = get(&ctx.stores.deployments, &ns, &worker_name);
    let durable = channel
        .as_ref()
        .is_some_and(|c| c.spec.backend() == wsbridge_api::ChannelBackend::Rabbitmq);
    // Its worker publishes to the broker and consumes its queue there.
    let broker_url = ctx
        .broker
        .as_ref()
        .filter(|_| durable)
        .map(|url| wsbridge_core::SecretString::new(url.with_credentials()));
    let mut worker_conflict = None;
    if let (Some(_), Some(endpoint), Some(None), None) =
        (&channel, &endpoint, &endpoint_problem, &token_problem)
    {
        let signed = worker_objects::signing::signed_subscriptions(&ctx.stores, &ns, &bridge.spec.channel);
        let mut keys = worker_objects::referenced_keys(&bridge, endpoint);
        keys.extend(worker_objects::signing::referenced_keys(&signed));
        keys.sort();
        keys.dedup();
        let mut entries: Vec<_> = keys
            .into_iter()
            .map(|s| {
                let d = refs.digest(&s);
                (s, d)
            })
            .collect();
        // A new credential (the send key rotated) rolls the worker.
        let uid = bridge.uid().unwrap_or_default();
        let key = ctx.send_key.borrow().clone();
        let key = key.expect("the send key is read before any reconcile");
        let credential = wsbridge_dataplane::send_auth::credential(&key, &uid);
        let send_secret = worker_objects::send_credential_secret(&bridge, &credential, broker_url.as_ref());
        entries.push(worker_objects::send_credential::config_entry(&name, &credential));
        // A new broker URL rolls the worker too.
        if let Some(url) = &broker_url {
            entries.push(worker_objects::send_credential::broker_config_entry(
                &name,
                &credential,
                url,
            ));
        }
        let sized = worker_objects::with_pod_defaults(&bridge, &ctx.worker_pod_defaults);
        let objs = worker_objects::build(
            &sized,
            endpoint,
            &worker_objects::WorkerInputs {
                image: &ctx.worker_image,
                config_hash: &worker_objects::config_hash(&entries),
                destinations: &ctx.destinations,
                ingress: ctx.worker_ingress.as_ref(),
                signed: &signed,
                broker_url: broker_url.is_some(),
            },
        );
        let foreign = ensure_worker(&ctx, &ns, &uid, &objs, &send_secret).await?;
        if !foreign.is_empty() {
            worker_conflict = Some(format!(
                "{} {worker_name} already exists and is not owned by this Bridge; \
                 the controller does not take it over: delete it or rename the Bridge",
                foreign.join(", ")
            ));
        }
    }
    let decided = status::bridge_ready(&BridgeFacts {
        channel: &bridge.spec.channel,
        endpoint: &bridge.spec.endpoint,
        channel_exists: channel.is_some(),
        no_broker: durable && ctx.broker.is_none(),
        endpoint_problem,
        token_problem,
        worker_conflict: worker_conflict.clone(),
        worker_available: existing.as_deref().map(status::deployment_available),
        connected: bridge
            .status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, CONNECTED)),
    });
    write_status(&ctx, &*bridge, &decided, |conditions, generation| BridgeStatus {
        conditions,
        observed_generation: generation,
        worker: Some(worker_name),
        ..Default::default()
    })
    .await?;
    // An object the controller does not own is not watched: look again soon.
    Ok(Action::requeue(if worker_conflict.is_some() {
        CONFLICT_RECHECK
    } else {
        RESYNC
    }))
}

// ---------------------------------------------------------------- Channel

#[instrument(skip(channel, ctx), fields(channel = %channel.name_any(), ns = channel.namespace()))]
pub async fn reconcile_channel(channel: Arc<Channel>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _t = ctx.metrics.start("Channel");
    let ns = namespace(&*channel)?;
    let name = channel.name_any();
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let bridges = ctx
        .stores
        .bridges
        .state()
        .iter()
        .filter(|b| b.metadata.namespace.as_deref() == Some(&ns) && b.spec.channel == name)
        .count();
    let subscriptions = ctx
        .stores
        .subscriptions
        .state()
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(&ns) && s.spec.channel == name)
        .count();
    let url = format!("{}/channels/{ns}/{name}", ctx.gateway_url.trim_end_matches('/'));
    let decided = status::channel_ready(&channel.spec, &url, ctx.broker.is_some());
    write_status(&ctx, &*channel, &decided, |conditions, generation| {
        ChannelStatus {
            address: Some(Addressable { url }),
            bridges: count(bridges),
            subscriptions: count(subscriptions),
            conditions,
            observed_generation: generation,
        }
    })
    .await?;
    Ok(Action::requeue(RESYNC))
}

// ---------------------------------------------------------------- Endpoint

#[instrument(skip(endpoint, ctx), fields(endpoint = %endpoint.name_any(), ns = endpoint.namespace()))]
pub async fn reconcile_endpoint(endpoint: Arc<Endpoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _t = ctx.metrics.start("Endpoint");
    let ns = namespace(&*endpoint)?;
    let refs = NsRefs {
        stores: &ctx.stores,
        ns: &ns,
    };
    let mut decided = status::endpoint_destination_problem(&endpoint, &ctx.destinations)
        .unwrap_or_else(|| status::endpoint_ready(&endpoint, &refs));
    if decided.status
        && let Some(denied) = resolution::denied_by_resolution(
            &endpoint.spec.url,
            &ctx.destinations,
            "url",
            &ctx.cluster_domain,
        )
        .await
    {
        decided = denied;
    }
    write_status(&ctx, &*endpoint, &decided, |conditions, generation| {
        EndpointStatus {
            conditions,
            observed_generation: generation,
        }
    })
    .await?;
    Ok(Action::requeue(RESYNC))
}

// ---------------------------------------------------------------- Subscription

#[instrument(skip(sub, ctx), fields(subscription = %sub.name_any(), ns = sub.namespace()))]
pub async fn reconcile_subscription(sub: Arc<Subscription>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _t = ctx.metrics.start("Subscription");
    let ns = namespace(&*sub)?;
    let channel = get(&ctx.stores.channels, &ns, &sub.spec.channel);
    let services = ctx.stores.services.clone();
    let lookup_ns = ns.clone();
    let mut decision = status::subscription_status(
        &sub,
        channel.as_deref(),
        &ns,
        &ctx.cluster_domain,
        &move |svc: &str| get(&services, &lookup_ns, svc),
        &ctx.destinations,
    );
    if decision.ready.status {
        let uris = [
            (decision.subscriber_uri.clone(), "subscriber"),
            (decision.dead_letter_sink_uri.clone(), "dead-letter sink"),
        ];
        for (uri, what) in uris {
            let Some(uri) = uri else { continue };
            let denied =
                resolution::denied_by_resolution(&uri, &ctx.destinations, what, &ctx.cluster_domain).await;
            if let Some(denied) = denied {
                decision.ready = denied;
                break;
            }
        }
    }
    let ready = worker_objects::signing::subscription_ready(&ctx.stores, &ns, &sub, decision.ready);
    write_status(&ctx, &*sub, &ready, |conditions, generation| SubscriptionStatus {
        subscriber_uri: decision.subscriber_uri,
        dead_letter_sink_uri: decision.dead_letter_sink_uri,
        conditions,
        observed_generation: generation,
    })
    .await?;
    Ok(Action::requeue(RESYNC))
}

/// Counts the failure and retries after a short delay.
pub fn error_policy<K>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let kind = K::kind(&());
    warn!(kind = %kind, name = %obj.meta().name.as_deref().unwrap_or(""), error = %error, "reconcile failed");
    ctx.metrics.failure(&kind, error.label());
    Action::requeue(Duration::from_secs(5))
}

/// Times one reconcile and counts it (see [`Metrics::start`]).
pub struct Timer {
    pub(super) metrics: Metrics,
    pub(super) kind: &'static str,
    pub(super) started: Instant,
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.metrics.finish(self.kind, self.started.elapsed());
    }
}
