//! The tail every reconciler shares: write the status it decided, and tell
//! users when `Ready` changed.
//!
//! The status goes through the status subresource by server-side apply with
//! our field manager, and only when it differs from what the object holds:
//! [`conditions::merge`] keeps the timestamps of unchanged conditions, so an
//! unchanged decision compares equal and an idle cluster costs no writes. An
//! Event is published only on a `Ready` transition.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::warn;

use super::reconcile::{Context, Error, namespace};
use super::worker_objects::FIELD_MANAGER;
use wsbridge_api::conditions::{self, Decided, READY};
use wsbridge_api::{
    Bridge, BridgeStatus, Channel, ChannelStatus, Endpoint, EndpointStatus, Subscription, SubscriptionStatus,
};

/// Events carry a note under 1 kB.
const NOTE_MAX: usize = 1000;

/// A kind whose status the controller writes.
pub(crate) trait HasStatus:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug
{
    type Status: Serialize + PartialEq;
    /// The part of the current status the controller writes (empty when
    /// there is none yet).
    fn owned_status(&self) -> Self::Status;
    fn conditions(status: &Self::Status) -> &[Condition];
}

/// Merges `decided` into the object's conditions, builds the status from
/// them and the object's generation, and applies it unless it equals the
/// current one; publishes an Event when `Ready` changed.
pub(crate) async fn write_status<K: HasStatus>(
    ctx: &Context,
    obj: &K,
    decided: &Decided,
    build: impl FnOnce(Vec<Condition>, Option<i64>) -> K::Status,
) -> Result<(), Error> {
    let current = obj.owned_status();
    let generation = obj.meta().generation;
    let merged = conditions::merge(
        K::conditions(&current),
        std::slice::from_ref(decided),
        generation,
        Timestamp::now(),
    );
    let desired = build(merged, generation);
    if desired == current {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace(obj)?);
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::WriteStatus)?;
    event_on_transition(
        ctx,
        obj,
        conditions::find(K::conditions(&current), READY),
        decided,
    )
    .await;
    Ok(())
}

/// Publishes an Event when `Ready` changed (status or reason).
async fn event_on_transition<K>(ctx: &Context, obj: &K, before: Option<&Condition>, after: &Decided)
where
    K: Resource<DynamicType = ()>,
{
    let status = if after.status { "True" } else { "False" };
    if before.is_some_and(|b| b.status == status && b.reason == after.reason) {
        return;
    }
    let mut note = after.message.clone();
    wsbridge_core::text::truncate(&mut note, NOTE_MAX);
    let event = Event {
        type_: if after.status {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: after.reason.clone(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        warn!(error = %e, "publishing an Event failed");
    }
}

impl HasStatus for Bridge {
    type Status = BridgeStatus;

    /// `Ready`, `observedGeneration` and `worker`: `Connected`, the address
    /// and the connection time are the worker's (its own field manager).
    fn owned_status(&self) -> BridgeStatus {
        let current = self.status.as_ref();
        BridgeStatus {
            conditions: current
                .and_then(|s| conditions::find(&s.conditions, READY))
                .cloned()
                .into_iter()
                .collect(),
            observed_generation: current.and_then(|s| s.observed_generation),
            worker: current.and_then(|s| s.worker.clone()),
            ..Default::default()
        }
    }

    fn conditions(status: &BridgeStatus) -> &[Condition] {
        &status.conditions
    }
}

/// The kinds whose whole status is the controller's.
macro_rules! whole_status {
    ($($kind:ty => $status:ty),* $(,)?) => {$(
        impl HasStatus for $kind {
            type Status = $status;

            fn owned_status(&self) -> $status {
                self.status.clone().unwrap_or_default()
            }

            fn conditions(status: &$status) -> &[Condition] {
                &status.conditions
            }
        }
    )*};
}

whole_status!(
    Endpoint => EndpointStatus,
    Subscription => SubscriptionStatus,
);

impl HasStatus for Channel {
    type Status = ChannelStatus;

    /// All but `BrokerReady`, which the broker topology reconcile writes
    /// (its own field manager: neither overwrites the other).
    fn owned_status(&self) -> ChannelStatus {
        let mut status = self.status.clone().unwrap_or_default();
        status.conditions.retain(|c| c.type_ != conditions::BROKER_READY);
        status
    }

    fn conditions(status: &ChannelStatus) -> &[Condition] {
        &status.conditions
    }
}
