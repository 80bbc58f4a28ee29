//! Secret values from the worker pod's environment, read through the
//! contract in [`wsbridge_api::worker_env`]: the controller writes those
//! variables, the worker reads them.

use wsbridge_api::KeySelector;
use wsbridge_api::worker_env::*;
use wsbridge_core::SecretString;
use wsbridge_dataplane::delivery::SigningKey;
use wsbridge_translate::ResolvedSecrets;

/// Reads the secrets of `header_names` (the Endpoint's `auth.secretHeaders`
/// names, in sorted order) and the fixed variables, through `lookup` (the
/// process environment in production, a map in tests).
pub fn resolve(header_names: &[String], lookup: impl Fn(&str) -> Option<String>) -> ResolvedSecrets {
    let secret = |name: &str| lookup(name).filter(|v| !v.is_empty()).map(SecretString::new);
    ResolvedSecrets {
        endpoint_token: secret(ENDPOINT_TOKEN),
        endpoint_username: secret(ENDPOINT_USERNAME),
        endpoint_password: secret(ENDPOINT_PASSWORD),
        endpoint_headers: header_names
            .iter()
            .enumerate()
            .filter_map(|(i, name)| secret(&header_var(i)).map(|v| (name.clone(), v)))
            .collect(),
        endpoint_ca: lookup(ENDPOINT_CA).filter(|v| !v.is_empty()),
        bridge_token: secret(BRIDGE_TOKEN),
    }
}

/// The signing key of Subscription `subscription`, whose `signingSecretRef`
/// is `reference`, from the variables the controller wrote for it. An error
/// (never containing the value) when the pod has none for that reference:
/// the controller left it out (the Secret is missing or not a `whsec_`
/// secret, which the Subscription's `Ready` says) or the reference changed
/// since the pod started (the controller rolls the worker).
pub fn signing_key(
    subscription: &str,
    reference: &KeySelector,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<SigningKey, String> {
    let expected = signing_ref_value(&reference.name, &reference.key);
    if lookup(&signing_ref_var(subscription)).as_deref() != Some(expected.as_str()) {
        return Err(format!(
            "the worker pod holds no signing secret for spec.signingSecretRef {expected}; \
             not delivering unsigned until the controller rolls the worker"
        ));
    }
    let value = lookup(&signing_secret_var(subscription))
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("spec.signingSecretRef {expected} is empty in the worker pod"))?;
    SigningKey::from_whsec(&value).map_err(|e| format!("spec.signingSecretRef {expected}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn secrets_come_from_the_contract_variables() {
        let env: HashMap<&str, &str> = [
            (ENDPOINT_TOKEN, "t0k"),
            (ENDPOINT_USERNAME, ""),
            ("WSBRIDGE_ENDPOINT_HEADER_1", "k2"),
            (BRIDGE_TOKEN, "sub"),
        ]
        .into();
        let resolved = resolve(&["X-A".into(), "X-B".into()], |k| {
            env.get(k).map(|v| v.to_string())
        });
        assert_eq!(resolved.endpoint_token.unwrap().expose(), "t0k");
        assert!(
            resolved.endpoint_username.is_none(),
            "empty values count as unset"
        );
        assert_eq!(resolved.endpoint_headers.len(), 1);
        assert_eq!(resolved.endpoint_headers[0].0, "X-B");
        assert_eq!(resolved.bridge_token.unwrap().expose(), "sub");
    }

    #[test]
    fn signing_keys_come_from_the_variables_of_their_subscription_and_reference() {
        let reference = KeySelector {
            name: "hook".into(),
            key: "secret".into(),
        };
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let env: HashMap<String, String> = [
            (signing_ref_var("pricing"), "hook/secret".to_string()),
            (signing_secret_var("pricing"), secret.to_string()),
            (signing_ref_var("bad"), "hook/secret".to_string()),
            (signing_secret_var("bad"), "not-whsec".to_string()),
        ]
        .into();
        let lookup = |k: &str| env.get(k).cloned();
        assert_eq!(
            signing_key("pricing", &reference, lookup).unwrap(),
            SigningKey::from_whsec(secret).unwrap()
        );
        let other = KeySelector {
            name: "hook".into(),
            key: "other".into(),
        };
        let stale = signing_key("pricing", &other, lookup).unwrap_err();
        assert!(stale.contains("hook/other"), "{stale}");
        assert!(signing_key("absent", &reference, lookup).is_err());
        let bad = signing_key("bad", &reference, lookup).unwrap_err();
        assert!(!bad.contains("not-whsec"), "never the value: {bad}");
    }
}
