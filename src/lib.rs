//! wsbridge: connects in-cluster HTTP services to external WebSocket endpoints
//! through declarative pub/sub channels.
//!
//! Layout, by role:
//! - [`api`]: the four custom resources (`Endpoint`, `Channel`, `Bridge`,
//!   `Subscription`), their validation and status conditions.
//! - [`dataplane`]: the WebSocket client, the delivery engine and the routing
//!   of a message to its subscribers. Plain Rust values only: it never imports
//!   the Kubernetes client, so it runs and is tested without a cluster.
//! - [`controller`], [`worker`], [`gateway`]: the Kubernetes adapters.
//! - [`standalone`]: the same data plane fed from YAML files.
//! - [`translate`]: from the API types to the data plane's values, shared by
//!   every adapter.
#![forbid(unsafe_code)]

pub mod api;
pub mod dataplane;
pub mod ops;
pub mod standalone;
pub mod translate;
