//! The data plane: the WebSocket endpoint client, the delivery engine and
//! the routing of a message to its subscribers.
//!
//! Plain Rust values only: nothing here imports the Kubernetes client. The
//! controller, the bridge worker, the gateway and standalone mode are
//! adapters that feed these types.

pub mod delivery;
pub mod destination;
pub mod duration;
pub mod endpoint;
pub mod message;
pub mod metrics;
pub mod routing;
pub mod secret;

pub use destination::{DestinationDenied, DestinationPolicy};
pub use duration::parse_duration;
pub use message::{Message, Origin, Payload, PayloadKind};
pub use metrics::DataplaneMetrics;
pub use secret::SecretString;
