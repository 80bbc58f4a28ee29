//! The Secret that holds a Bridge's send credential (see
//! [`wsbridge_dataplane::send_auth`]): owned by the Bridge, named like its
//! worker, read by the worker only through `secretKeyRef`.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest, Sha256};

use wsbridge_core::SecretString;

/// The key of the credential in the Secret.
pub const KEY: &str = "send-credential";

/// The Secret with `credential`, with `meta` (the worker's name, namespace,
/// labels and owner).
pub(super) fn secret(meta: ObjectMeta, credential: &SecretString) -> Secret {
    Secret {
        metadata: meta,
        data: Some(BTreeMap::from([(
            KEY.to_string(),
            ByteString(credential.expose().as_bytes().to_vec()),
        )])),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// The credential's entry in the worker's config hash (see [`digest`]).
pub fn config_entry(bridge: &str, credential: &SecretString) -> (super::Source, Option<Vec<u8>>) {
    (
        super::Source::Secret {
            name: super::worker_name(bridge),
            key: KEY.into(),
        },
        Some(digest(credential)),
    )
}

/// What the worker's config hash takes of the credential: its digest (the
/// credential is 256 random-looking bits, so no guess finds it), so that a
/// new credential rolls the worker.
pub fn digest(credential: &SecretString) -> Vec<u8> {
    Sha256::digest(credential.expose().as_bytes()).to_vec()
}
