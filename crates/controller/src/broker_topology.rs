//! The broker objects of `backend: rabbitmq` Channels, reconciled with the
//! Kubernetes objects they belong to: a Channel's exchanges, a
//! Subscription's backlog and a Bridge's queue of published messages are
//! declared as soon as the object exists, so a publish the gateway accepts
//! before any dispatcher or worker started already lands in every queue it
//! is for; and they are deleted with the object.
//!
//! Declared here, not through the Messaging Topology Operator's CRDs: the
//! roles already declare the same objects idempotently after every
//! reconnect (a broker that lost its definitions heals without us), and an
//! installation then needs no second operator and no broker credentials in
//! user namespaces. The names carry namespace and name (see the broker
//! crate's `topology`), so a RabbitMQ operator recognises each owner.
//!
//! Deletion uses a finalizer, `wsbridge.io/broker-topology`, set only on
//! objects of `rabbitmq` Channels while a broker is configured: the object
//! goes away once its broker objects did (a broker that is down holds the
//! deletion until it is back, as it must: the queue would stay otherwise).
//! A Subscription or Bridge whose Channel turns `memory` loses its queue and
//! the finalizer too. A controller started without a broker removes the
//! finalizer without touching a broker it cannot reach (logged), so that
//! objects never hang on an installation that dropped RabbitMQ.
//!
//! Nothing is deleted on a guess: these reconciles wait until every cache
//! synced, and a Subscription whose Channel is merely absent from the cache
//! keeps its backlog.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{info, warn};
use wsbridge_api::conditions::{self, BROKER_READY, Decided};
use wsbridge_api::{BacklogSpec, Bridge, Channel, ChannelBackend, Subscription};
use wsbridge_broker::topology::Backlog;
use wsbridge_broker::{AdminError, Broker};
use wsbridge_core::{ChannelKey, ObjectKey};
use wsbridge_dataplane::delivery::Ordering;

use super::caches::Caches;
use super::metrics::Metrics;
use super::reconcile::Stores;
use super::triggers::{self, over};

/// The finalizer on objects that own broker objects.
pub const FINALIZER: &str = "wsbridge.io/broker-topology";

/// How soon a failed operation is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// How often a rabbitmq Channel's exchanges are declared again.
const REDECLARE: Duration = Duration::from_secs(60);
/// The field manager of the Channel's `BrokerReady` (the status's other
/// fields are the Channel reconcile's).
const FIELD_MANAGER: &str = "wsbridge-controller-broker";

/// What the topology reconciles share.
pub(crate) struct TopologyContext {
    client: Client,
    stores: Stores,
    metrics: Metrics,
    /// `None` when the installation has no broker: finalizers are only
    /// removed.
    broker: Option<Broker>,
    /// True once every cache synced.
    synced: watch::Receiver<bool>,
}

impl TopologyContext {
    pub(crate) fn new(
        client: Client,
        stores: Stores,
        metrics: Metrics,
        broker: Option<Broker>,
        synced: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            client,
            stores,
            metrics,
            broker,
            synced,
        })
    }

    /// The backend of Channel `name` in `namespace`; `None` when the cache
    /// has no such Channel.
    fn backend(&self, namespace: &str, name: &str) -> Option<ChannelBackend> {
        self.stores
            .channels
            .state()
            .iter()
            .find(|c| c.namespace().as_deref() == Some(namespace) && c.name_any() == name)
            .map(|c| c.spec.backend())
    }
}

/// Why a topology reconcile failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TopologyError {
    #[error("object has no namespace")]
    NoNamespace,
    #[error(transparent)]
    Broker(#[from] AdminError),
    #[error("updating the finalizer failed: {0}")]
    Finalizer(#[from] kube::Error),
    #[error("writing the BrokerReady condition failed: {0}")]
    Status(#[source] kube::Error),
}

impl TopologyError {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            TopologyError::NoNamespace => "NoNamespace",
            TopologyError::Broker(AdminError::Unreachable(_)) => "BrokerUnreachable",
            TopologyError::Broker(AdminError::Refused(_)) => "BrokerRefused",
            TopologyError::Finalizer(_) => "FinalizerFailed",
            TopologyError::Status(_) => "WriteStatusFailed",
        }
    }
}

/// What an object's broker objects should be now.
enum Wanted {
    /// Declared, with the finalizer.
    Present,
    /// Deleted, then the finalizer removed.
    Absent,
    /// Left as they are (the Channel is not in the cache).
    Unknown,
}

/// The three controllers; they subscribe to the caches' streams now and
/// reconcile once `ctx.synced` is true.
pub(crate) fn controllers(
    c: &Caches,
    ctx: Arc<TopologyContext>,
    config: Config,
) -> impl Future<Output = ()> + Send + use<> {
    let s = ctx.stores.clone();
    let channels = Controller::for_shared_stream(c.channels.primary(), s.channels.clone())
        .with_config(config.clone())
        .run(reconcile_channel, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let subscriptions = Controller::for_shared_stream(c.subscriptions.primary(), s.subscriptions.clone())
        .with_config(config.clone())
        .watches_shared_stream(
            c.channels.triggers(),
            over(&s, triggers::subscriptions_of_channel),
        )
        .run(reconcile_subscription, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let bridges = Controller::for_shared_stream(c.bridges.primary(), s.bridges.clone())
        .with_config(config)
        .watches_shared_stream(c.channels.triggers(), over(&s, triggers::bridges_of_channel))
        .run(reconcile_bridge, error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    async move {
        tokio::join!(channels, subscriptions, bridges);
    }
}

async fn reconcile_channel(ch: Arc<Channel>, ctx: Arc<TopologyContext>) -> Result<Action, TopologyError> {
    let key = ChannelKey::new(ch.namespace().ok_or(TopologyError::NoNamespace)?, ch.name_any());
    let durable = ch.spec.backend() == ChannelBackend::Rabbitmq;
    let wanted = if ch.meta().deletion_timestamp.is_none() && durable {
        Wanted::Present
    } else {
        Wanted::Absent
    };
    let declare_key = key.clone();
    let result = reconcile_owner(
        ch.as_ref(),
        &ctx,
        wanted,
        |broker| async move { broker.declare_channel(&declare_key).await },
        |broker| async move { broker.delete_channel(&key).await },
    )
    .await;
    let condition = match (&result, &ctx.broker) {
        _ if !durable || ch.meta().deletion_timestamp.is_some() => None,
        // The Channel's Ready says NoBroker.
        (_, None) => None,
        (Ok(_), Some(broker)) => Some(Decided::ok(
            BROKER_READY,
            "Declared",
            format!("its exchanges are declared on the broker {}", broker.url()),
        )),
        (Err(e), _) => Some(Decided::failed(BROKER_READY, e.label(), e.to_string())),
    };
    write_broker_condition(&ch, &ctx, condition).await?;
    // Declared again now and then: a broker that lost its definitions, or
    // went away, shows on the Channel within a minute.
    result.map(|_| {
        if durable {
            Action::requeue(REDECLARE)
        } else {
            Action::await_change()
        }
    })
}

/// Applies the Channel's `BrokerReady` (or removes it, with `None`) with
/// this reconcile's own field manager, when it changed.
async fn write_broker_condition(
    ch: &Channel,
    ctx: &TopologyContext,
    decided: Option<Decided>,
) -> Result<(), TopologyError> {
    let current: Vec<Condition> = ch
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, BROKER_READY))
        .cloned()
        .into_iter()
        .collect();
    let generation = ch.meta().generation;
    let desired = conditions::merge(
        &current,
        decided.as_slice(),
        generation,
        k8s_openapi::jiff::Timestamp::now(),
    );
    let desired: Vec<Condition> = match decided {
        Some(_) => desired,
        None => Vec::new(),
    };
    if desired == current {
        return Ok(());
    }
    let api: Api<Channel> = Api::namespaced(ctx.client.clone(), &ch.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": Channel::api_version(&()),
        "kind": Channel::kind(&()),
        "status": {"conditions": desired},
    });
    match api
        .patch_status(
            &ch.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(TopologyError::Status(e)),
    }
}

async fn reconcile_subscription(
    sub: Arc<Subscription>,
    ctx: Arc<TopologyContext>,
) -> Result<Action, TopologyError> {
    let ns = sub.namespace().ok_or(TopologyError::NoNamespace)?;
    let key = ObjectKey::new(ns.clone(), sub.name_any());
    let channel = ChannelKey::new(ns.clone(), sub.spec.channel.clone());
    let wanted = wanted_on_channel(sub.as_ref(), &ctx, &ns, &sub.spec.channel);
    let backlog = Backlog {
        max_bytes: BacklogSpec::max_bytes(sub.spec.backlog.as_ref()),
        max_messages: BacklogSpec::max_messages(sub.spec.backlog.as_ref()),
    };
    let ordered = ordered(&ctx, &sub);
    let declare_key = key.clone();
    reconcile_owner(
        sub.as_ref(),
        &ctx,
        wanted,
        |broker| async move {
            broker
                .declare_subscription(&channel, &declare_key, backlog, ordered)
                .await
        },
        |broker| async move { broker.delete_subscription(&key).await },
    )
    .await
}

async fn reconcile_bridge(bridge: Arc<Bridge>, ctx: Arc<TopologyContext>) -> Result<Action, TopologyError> {
    let ns = bridge.namespace().ok_or(TopologyError::NoNamespace)?;
    let key = ObjectKey::new(ns.clone(), bridge.name_any());
    let channel = ChannelKey::new(ns.clone(), bridge.spec.channel.clone());
    let wanted = wanted_on_channel(bridge.as_ref(), &ctx, &ns, &bridge.spec.channel);
    let declare_key = key.clone();
    reconcile_owner(
        bridge.as_ref(),
        &ctx,
        wanted,
        |broker| async move {
            broker
                .declare_bridge(&channel, &declare_key, Backlog::default())
                .await
        },
        |broker| async move { broker.delete_bridge(&key).await },
    )
    .await
}

/// What a Subscription's or Bridge's broker objects should be, from its
/// own deletion and its Channel's backend.
fn wanted_on_channel<K: Resource>(obj: &K, ctx: &TopologyContext, ns: &str, channel: &str) -> Wanted {
    if obj.meta().deletion_timestamp.is_some() {
        return Wanted::Absent;
    }
    match ctx.backend(ns, channel) {
        Some(ChannelBackend::Rabbitmq) => Wanted::Present,
        Some(ChannelBackend::Memory) => Wanted::Absent,
        None => Wanted::Unknown,
    }
}

/// Whether `sub` is delivered in order (its own `delivery`, else its
/// Channel's, else ordered): its backlog then has one active consumer.
/// The dispatcher declares the queue from the same fields, so both agree.
fn ordered(ctx: &TopologyContext, sub: &Subscription) -> bool {
    let ns = sub.namespace().unwrap_or_default();
    let ordering = |spec: Option<&wsbridge_api::DeliverySpec>| {
        spec.and_then(|d| wsbridge_translate::delivery_options(&ns, d, "spec.delivery").ok())
            .and_then(|o| o.ordering)
    };
    let channel = ctx
        .stores
        .channels
        .state()
        .into_iter()
        .find(|c| c.namespace().as_deref() == Some(ns.as_str()) && c.name_any() == sub.spec.channel);
    let ordering = ordering(sub.spec.delivery.as_ref())
        .or_else(|| channel.and_then(|c| ordering(c.spec.delivery.as_ref())));
    matches!(ordering, None | Some(Ordering::Ordered))
}

/// Brings one owner's broker objects and finalizer to `wanted`.
async fn reconcile_owner<K, D, DF, R, RF>(
    obj: &K,
    ctx: &TopologyContext,
    wanted: Wanted,
    declare: D,
    delete: R,
) -> Result<Action, TopologyError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    D: FnOnce(Broker) -> DF,
    DF: Future<Output = Result<(), AdminError>>,
    R: FnOnce(Broker) -> RF,
    RF: Future<Output = Result<(), AdminError>>,
{
    let mut synced = ctx.synced.clone();
    let _ = synced.wait_for(|s| *s).await;
    let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);
    match (wanted, &ctx.broker) {
        (Wanted::Unknown, _) => Ok(Action::await_change()),
        (Wanted::Present, Some(broker)) => {
            if !has_finalizer {
                set_finalizer(obj, ctx, true).await?;
            }
            declare(broker.clone()).await?;
            Ok(Action::await_change())
        }
        // No broker: the Channel's status says NoBroker; nothing to declare.
        (Wanted::Present, None) => Ok(Action::await_change()),
        (Wanted::Absent, _) if !has_finalizer => Ok(Action::await_change()),
        (Wanted::Absent, Some(broker)) => {
            delete(broker.clone()).await?;
            info!(kind = %K::kind(&()), name = %obj.name_any(), "deleted its broker objects");
            set_finalizer(obj, ctx, false).await?;
            Ok(Action::await_change())
        }
        (Wanted::Absent, None) => {
            warn!(
                kind = %K::kind(&()),
                name = %obj.name_any(),
                "no broker configured: removing the finalizer without deleting its broker objects"
            );
            set_finalizer(obj, ctx, false).await?;
            Ok(Action::await_change())
        }
    }
}

/// Adds or removes [`FINALIZER`], guarded by the object's resourceVersion
/// (a concurrent change makes the patch fail, and the reconcile runs again).
async fn set_finalizer<K>(obj: &K, ctx: &TopologyContext, present: bool) -> Result<(), TopologyError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let ns = obj.namespace().ok_or(TopologyError::NoNamespace)?;
    let mut finalizers: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(FINALIZER.into());
    }
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": obj.resource_version(),
        }
    });
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    match api
        .patch(&obj.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // Gone already: nothing holds it any more.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn error_policy<K>(obj: Arc<K>, error: &TopologyError, ctx: Arc<TopologyContext>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let kind = K::kind(&());
    warn!(kind = %kind, name = %obj.meta().name.as_deref().unwrap_or(""), error = %error, "broker topology");
    ctx.metrics.failure(&kind, error.label());
    Action::requeue(RETRY)
}
