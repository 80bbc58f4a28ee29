//! Signed deliveries in a cluster: the worker signs what it delivers, and
//! never reads a Secret through the API. The controller points the worker's
//! pod template at each signed Subscription's key (`secretKeyRef`, see
//! `wsbridge_api::worker_env::signing_secret_var`), adds that key to the
//! config hash (a rotated secret rolls the worker), and leaves out the
//! Subscriptions whose Secret is missing or not a `whsec_` secret: those get
//! `Ready=False` naming `spec.signingSecretRef`, and the worker delivers
//! nothing unsigned to them.
//!
//! The controller caches Secrets as digests only, so whether a value is a
//! valid signing secret is decided when it is cached ([`mark_signing_keys`])
//! and kept beside the digests as an annotation of the cached copy.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, Secret, SecretKeySelector};
use kube::ResourceExt;

use super::Source;
use crate::reconcile::{NsRefs, Stores, get};
use crate::status::check_secret_key;
use wsbridge_api::conditions::{Decided, READY};
use wsbridge_api::worker_env as contract;
use wsbridge_api::{KeySelector, Subscription};
use wsbridge_dataplane::delivery::{InvalidSigningSecret, SECRET_PREFIX, SigningKey};

/// Annotation of a *cached* Secret (never written to the API): its keys
/// whose value starts with `whsec_`, each with why it cannot sign (empty
/// when it can), as a JSON object; the reasons never contain the value. A
/// key it does not list does not hold a `whsec_` secret at all, so most
/// Secrets (certificates, tokens) carry nothing.
pub const SIGNING_SECRETS: &str = "wsbridge.io/signing-secrets";

/// Records, on a Secret about to be cached, which of its values are signing
/// secrets. Runs on the values, before they are digested.
pub fn mark_signing_keys(secret: &mut Secret) {
    let marks: BTreeMap<&String, String> = secret
        .data
        .iter()
        .flatten()
        .filter_map(|(key, value)| {
            let text = std::str::from_utf8(&value.0).ok()?;
            text.trim().starts_with(SECRET_PREFIX).then(|| {
                let problem = SigningKey::from_whsec(text).err();
                (key, problem.map(|e| e.to_string()).unwrap_or_default())
            })
        })
        .collect();
    if marks.is_empty() {
        return;
    }
    let json = serde_json::to_string(&marks).expect("a map of strings serializes");
    secret
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(SIGNING_SECRETS.into(), json);
}

/// Why `reference` cannot sign a Subscription's deliveries, or `None`.
pub fn signing_secret_problem(stores: &Stores, ns: &str, reference: &KeySelector) -> Option<Decided> {
    let what = "spec.signingSecretRef";
    if let Some(problem) = check_secret_key(&NsRefs { stores, ns }, reference, what) {
        return Some(problem);
    }
    let secret = get(&stores.secrets, ns, &reference.name)?;
    let mut marks: BTreeMap<String, String> = secret
        .annotations()
        .get(SIGNING_SECRETS)
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default();
    let problem = marks
        .remove(&reference.key)
        .unwrap_or_else(|| InvalidSigningSecret::NoPrefix.to_string());
    (!problem.is_empty()).then(|| {
        Decided::failed(
            READY,
            "SigningSecretInvalid",
            format!(
                "Secret {:?} key {:?} ({what}) is not a Standard Webhooks secret: {problem}; \
                 write one as whsec_ followed by the base64 of 24 to 64 random bytes",
                reference.name, reference.key
            ),
        )
    })
}

/// The Subscription's `Ready` once its subscriber resolved: failed when its
/// signing secret is unusable; otherwise `resolved`, saying which of its
/// deliveries are signed.
pub fn subscription_ready(stores: &Stores, ns: &str, sub: &Subscription, resolved: Decided) -> Decided {
    let Some(reference) = &sub.spec.signing_secret_ref else {
        return resolved;
    };
    if !resolved.status {
        return resolved;
    }
    signing_secret_problem(stores, ns, reference).unwrap_or_else(|| {
        Decided::ok(
            READY,
            &resolved.reason,
            format!(
                "{}; deliveries are signed with spec.signingSecretRef (endpoint messages by the worker, \
                 publishes by the gateway and the dispatcher, from the controller's copy of the secret)",
                resolved.message
            ),
        )
    })
}

/// A Subscription whose deliveries the worker signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedSubscription {
    pub subscription: String,
    pub secret: KeySelector,
}

/// The Subscriptions of `channel` in `ns` whose signing secret is usable,
/// sorted by name.
pub fn signed_subscriptions(stores: &Stores, ns: &str, channel: &str) -> Vec<SignedSubscription> {
    let mut out: Vec<SignedSubscription> = stores
        .subscriptions
        .state()
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns) && s.spec.channel == channel)
        .filter_map(|s| {
            let reference = s.spec.signing_secret_ref.as_ref()?;
            signing_secret_problem(stores, ns, reference)
                .is_none()
                .then(|| SignedSubscription {
                    subscription: s.name_any(),
                    secret: reference.clone(),
                })
        })
        .collect();
    out.sort_by(|a, b| a.subscription.cmp(&b.subscription));
    out
}

/// The Secret keys the signed Subscriptions read (for the config hash).
pub fn referenced_keys(signed: &[SignedSubscription]) -> Vec<Source> {
    signed
        .iter()
        .map(|s| Source::Secret {
            name: s.secret.name.clone(),
            key: s.secret.key.clone(),
        })
        .collect()
}

/// The worker's variables for the signed Subscriptions: the secret by
/// reference (`optional`, so a Secret deleted before the pod starts leaves
/// that Subscription undelivered rather than the pod unable to start) and
/// the reference it came from, as a plain value.
pub fn signing_env(signed: &[SignedSubscription]) -> Vec<EnvVar> {
    signed
        .iter()
        .flat_map(|s| {
            [
                EnvVar {
                    name: contract::signing_secret_var(&s.subscription),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: s.secret.name.clone(),
                            key: s.secret.key.clone(),
                            optional: Some(true),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                EnvVar {
                    name: contract::signing_ref_var(&s.subscription),
                    value: Some(contract::signing_ref_value(&s.secret.name, &s.secret.key)),
                    ..Default::default()
                },
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn cached_secrets_say_which_values_are_signing_secrets_without_the_values() {
        let mut s = Secret {
            data: Some(BTreeMap::from([
                (
                    "good".to_string(),
                    ByteString(b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_vec()),
                ),
                ("short".to_string(), ByteString(b"whsec_c2hvcnQ=".to_vec())),
                ("plain".to_string(), ByteString(b"hunter2-hunter2".to_vec())),
            ])),
            ..Default::default()
        };
        mark_signing_keys(&mut s);
        let json = &s.annotations()[SIGNING_SECRETS];
        let marks: BTreeMap<String, String> = serde_json::from_str(json).unwrap();
        assert_eq!(marks.keys().collect::<Vec<_>>(), ["good", "short"]);
        assert_eq!(marks["good"], "", "a valid secret has no problem");
        assert!(marks["short"].contains("bytes"), "{}", marks["short"]);
        assert!(
            !json.contains("MfKQ") && !json.contains("c2hvcnQ"),
            "never the values"
        );
        let mut plain = Secret {
            data: Some(BTreeMap::from([(
                "tls.crt".to_string(),
                ByteString(b"---".to_vec()),
            )])),
            ..Default::default()
        };
        mark_signing_keys(&mut plain);
        assert!(
            plain.metadata.annotations.is_none(),
            "nothing kept for other Secrets"
        );
    }

    #[test]
    fn signing_env_references_the_secret_and_names_the_reference() {
        let env = signing_env(&[SignedSubscription {
            subscription: "pricing".into(),
            secret: KeySelector {
                name: "hook".into(),
                key: "secret".into(),
            },
        }]);
        assert_eq!(env[0].name, "WSBRIDGE_SIGNING_SECRET_pricing");
        assert!(env[0].value.is_none());
        let selector = env[0]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (selector.name.as_str(), selector.key.as_str(), selector.optional),
            ("hook", "secret", Some(true))
        );
        assert_eq!(env[1].name, "WSBRIDGE_SIGNING_REF_pricing");
        assert_eq!(env[1].value.as_deref(), Some("hook/secret"));
    }
}
