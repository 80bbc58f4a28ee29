//! Test support: a real Kubernetes control plane for integration tests.
//!
//! Include it with `mod support;` from an integration test, or with
//! `#[path = "../tests/support/mod.rs"] mod support;` from a bench.
//!
//! ```ignore
//! #[tokio::test]
//! async fn something() -> anyhow::Result<()> {
//!     let cp = support::shared().await;        // started once per test binary
//!     let client = cp.client();                // bound to this test's runtime
//!     let ns = support::create_namespace(&client, "something").await?;
//!     support::apply_yaml(&client, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", Some(&ns)).await?;
//!     Ok(())
//! }
//! ```
//!
//! The binaries are built by `tests/controlplane/build.sh` on first use (a
//! no-op when cached). Processes are killed and temp dirs removed when the
//! test binary exits, however it exits; logs stay in
//! `<target>/controlplane/logs/<run>/`.
#![allow(dead_code, unused_imports)]

pub mod binaries;
pub mod controlplane;
pub mod crds;
pub mod durable;
pub mod helpers;
pub mod http;
pub mod install;
pub mod kubeconfig;
pub mod local;
pub mod peers;
pub mod pods;
mod processes;
pub mod rabbitmq;
pub mod reaper;

pub use controlplane::{API_AUDIENCE, ControlPlane, Options, shared, shared_with_controller_manager};
pub use crds::install_crds;
pub use helpers::{
    FIELD_MANAGER, apply_yaml, apply_yaml_file, create_namespace, ensure_service_account, eventually,
    example_role, mint_service_account_token, service_account_token, wait_crds_established,
};
pub use local::{metric_sum, wait_until, yaml_files};
