//! The data plane: the WebSocket endpoint client, the delivery engine and
//! the routing of a message to its subscribers.
//!
//! Plain Rust values only: nothing here imports the Kubernetes client. The
//! controller, the bridge worker, the gateway and standalone mode are
//! adapters that feed these types.
#![forbid(unsafe_code)]

pub mod budget;
pub mod clients;
pub mod delivery;
pub mod destination;
pub mod endpoint;
pub mod message;
pub mod metrics;
pub mod routing;
pub mod send_auth;

pub use destination::{DestinationDenied, DestinationPolicy};
pub use message::{Message, Origin, Payload, PayloadKind};
pub use metrics::DataplaneMetrics;
