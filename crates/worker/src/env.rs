//! Secret values from the worker pod's environment, read through the
//! contract in [`wsbridge_api::worker_env`]: the controller writes those
//! variables, the worker reads them.

use wsbridge_api::worker_env::*;
use wsbridge_core::SecretString;
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
}
