//! wsbridge: connects in-cluster HTTP services to external WebSocket
//! endpoints through declarative pub/sub channels.
//!
//! This package is the `wsbridge` binary and its command line ([`cli`]).
//! Everything else lives in the workspace's crates, one per part of the
//! architecture (see `docs/architecture.md`): `wsbridge-core`,
//! `wsbridge-dataplane`, `wsbridge-api`, `wsbridge-translate`,
//! `wsbridge-http`, `wsbridge-k8s`, and one crate per role
//! (`wsbridge-controller`, `wsbridge-worker`, `wsbridge-gateway`,
//! `wsbridge-standalone`).
#![forbid(unsafe_code)]

pub mod channel_client;
pub mod cli;
