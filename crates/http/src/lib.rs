//! The HTTP surface every wsbridge role serves, whatever its work: logs,
//! `/healthz`, `/readyz` and `/metrics` ([`ops`]), and the pieces of a
//! publish request that the gateway, standalone mode and the worker's send
//! path share: reading a message within its size limit, naming a channel
//! from the path, and JSON errors with a reason ([`publish`]);
//! `Connection: close` on answers given before a request body was read
//! ([`connection`]); and the WebSocket remote clients of channels
//! ([`websocket`]).
#![forbid(unsafe_code)]

pub mod connection;
pub mod ops;
pub mod publish;
pub mod websocket;
