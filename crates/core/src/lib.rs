//! The vocabulary every wsbridge crate shares: object keys, credential
//! values that never print, Kubernetes name rules and text shortening for
//! messages. No dependencies beyond the standard library and `thiserror`,
//! so the data plane, the API types and every role may use it.
#![forbid(unsafe_code)]

pub mod names;
mod object_key;
pub mod secret;
pub mod text;

pub use object_key::{ChannelKey, InvalidObjectKey, ObjectKey};
pub use secret::SecretString;
