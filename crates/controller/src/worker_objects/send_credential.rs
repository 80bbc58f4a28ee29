//! The Bridge's own Secret: its send credential (see
//! [`wsbridge_dataplane::send_auth`]) and, for a Bridge on a `rabbitmq`
//! Channel, the installation's broker URL. Owned by the Bridge, named like
//! its worker, read by the worker only through `secretKeyRef`.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{EnvVar, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest, Sha256};

use wsbridge_api::worker_env as contract;
use wsbridge_core::SecretString;

/// The key of the credential in the Secret.
pub const KEY: &str = "send-credential";

/// The key of the broker's URL in the Secret (Bridges on `rabbitmq`
/// Channels only).
pub const BROKER_URL_KEY: &str = "rabbitmq-url";

/// The Secret with `credential` and, when given, the broker's URL, with
/// `meta` (the worker's name, namespace, labels and owner).
pub(super) fn secret(
    meta: ObjectMeta,
    credential: &SecretString,
    broker_url: Option<&SecretString>,
) -> Secret {
    let value = |v: &SecretString| ByteString(v.expose().as_bytes().to_vec());
    let mut data = BTreeMap::from([(KEY.to_string(), value(credential))]);
    if let Some(url) = broker_url {
        data.insert(BROKER_URL_KEY.to_string(), value(url));
    }
    Secret {
        metadata: meta,
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// Whether `cached` (values replaced by their salted digests, see
/// `caches`) holds exactly the keys and values of `desired` and its labels.
pub(crate) fn cached_matches(desired: &Secret, cached: &Secret) -> bool {
    let uid = cached.metadata.uid.as_deref().unwrap_or_default();
    let want: BTreeMap<&String, ByteString> = desired
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k, crate::caches::salted_digest(uid, &v.0)))
        .collect();
    let have: BTreeMap<&String, ByteString> = cached
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k, v.clone()))
        .collect();
    let labelled = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| cached.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    want == have && labelled
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

/// The broker URL's entry in the worker's config hash: a new URL (another
/// broker, a new password) rolls the worker. The URL's password may be
/// guessable, so its digest is keyed with the credential, which is not:
/// the hash on the pod template tells nothing about the URL.
pub fn broker_config_entry(
    bridge: &str,
    credential: &SecretString,
    broker_url: &SecretString,
) -> (super::Source, Option<Vec<u8>>) {
    let mut h = Sha256::new();
    h.update(credential.expose().as_bytes());
    h.update([0]);
    h.update(broker_url.expose().as_bytes());
    (
        super::Source::Secret {
            name: super::worker_name(bridge),
            key: BROKER_URL_KEY.into(),
        },
        Some(h.finalize().to_vec()),
    )
}

/// The worker's variable with the broker's URL, from the Bridge's Secret.
pub(super) fn broker_url_env(bridge: &str) -> EnvVar {
    super::deployment::secret_env(
        contract::RABBITMQ_URL,
        &super::worker_name(bridge),
        BROKER_URL_KEY,
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ObjectMeta {
        ObjectMeta {
            name: Some("wsbridge-worker-feed".into()),
            uid: Some("secret-uid".into()),
            ..Default::default()
        }
    }

    /// The Secret as the controller's cache holds it.
    fn cached(secret: &Secret) -> Secret {
        let mut s = secret.clone();
        for v in s.data.iter_mut().flatten().map(|(_, v)| v) {
            *v = crate::caches::salted_digest("secret-uid", &v.0);
        }
        s
    }

    #[test]
    fn the_broker_url_is_a_key_of_the_bridge_secret_only_when_given() {
        let credential = SecretString::new("c");
        let url = SecretString::new("amqp://u:p@rabbit/%2f");
        let plain = secret(meta(), &credential, None);
        let durable = secret(meta(), &credential, Some(&url));
        assert!(!plain.data.as_ref().unwrap().contains_key(BROKER_URL_KEY));
        assert_eq!(
            durable.data.as_ref().unwrap()[BROKER_URL_KEY].0,
            url.expose().as_bytes()
        );
        assert!(cached_matches(&durable, &cached(&durable)));
        // A key to add, a key to remove, a value to change: applied again.
        assert!(!cached_matches(&durable, &cached(&plain)));
        assert!(!cached_matches(&plain, &cached(&durable)));
        let other = secret(
            meta(),
            &credential,
            Some(&SecretString::new("amqp://u:q@rabbit/%2f")),
        );
        assert!(!cached_matches(&durable, &cached(&other)));
    }

    #[test]
    fn a_new_broker_url_changes_the_config_entry_which_never_shows_it() {
        let credential = SecretString::new("c");
        let (_, a) = broker_config_entry("feed", &credential, &SecretString::new("amqp://u:p@r/"));
        let (_, b) = broker_config_entry("feed", &credential, &SecretString::new("amqp://u:q@r/"));
        assert_ne!(a, b);
        let unkeyed = Sha256::digest(b"amqp://u:p@r/").to_vec();
        assert_ne!(a.unwrap(), unkeyed);
    }

    #[test]
    fn the_worker_reads_the_url_by_reference() {
        let env = broker_url_env("feed");
        assert_eq!(env.name, "WSBRIDGE_RABBITMQ_URL");
        assert!(env.value.is_none());
        let r = env.value_from.unwrap().secret_key_ref.unwrap();
        assert_eq!(
            (r.name.as_str(), r.key.as_str(), r.optional),
            ("wsbridge-worker-feed", "rabbitmq-url", None)
        );
    }
}
