//! The wsbridge API: group `wsbridge.io`, version `v1alpha1`.
//!
//! Every kind is namespaced; references (a Bridge's Channel and Endpoint, a
//! Subscription's Channel and Service, Secrets) stay in the object's namespace.
#![forbid(unsafe_code)]
// `printcolumn(..., type_ = "string")` repeats by design.
#![allow(clippy::duplicated_attributes)]

mod bridge;
mod channel;
pub mod common;
pub mod conditions;
mod endpoint;
pub mod reference;
mod subscription;
pub mod worker_env;
pub mod worker_pod;

pub use bridge::{Bridge, BridgeSpec, BridgeStatus};
pub use channel::{Addressable, Channel, ChannelBackend, ChannelSpec, ChannelStatus};
pub use common::*;
pub use endpoint::{
    Endpoint, EndpointAuth, EndpointSpec, EndpointStatus, EndpointTls, HeaderValue, Keepalive, OpenMessage,
    Reconnect, SecretKeyName, Subprotocol,
};
pub use subscription::{BacklogSpec, Subscription, SubscriptionSpec, SubscriptionStatus};
pub use worker_pod::{WorkerPodSpec, WorkerResources};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group.
pub const GROUP: &str = "wsbridge.io";
/// The API version.
pub const VERSION: &str = "v1alpha1";

/// The four CRDs, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Bridge::crd(),
        Channel::crd(),
        Endpoint::crd(),
        Subscription::crd(),
    ]
}

/// One CRD as YAML, the way `crds/*.yaml` stores it.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    serde_norway::to_string(crd).expect("a CRD serializes to YAML")
}

/// All CRDs as one multi-document YAML stream (what `wsbridge crd` prints).
pub fn crds_yaml() -> String {
    crds().iter().map(|c| format!("---\n{}", crd_yaml(c))).collect()
}

/// The file name of a CRD under `crds/`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// Writes every CRD into `dir`, one file each (how `crds/` is regenerated).
pub fn write_crds(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for crd in crds() {
        std::fs::write(dir.join(crd_file_name(&crd)), crd_yaml(&crd))?;
    }
    Ok(())
}
