//! Kubernetes adapters shared by the roles that follow the API (worker,
//! gateway): a watch fed into plain `apply`/`delete` callbacks, the way the
//! data plane's indexes take their input.
#![forbid(unsafe_code)]

pub mod follow;

pub use follow::{Change, follow, key_of};
