//! Secret values from the worker pod's environment.
//!
//! The controller never copies a secret into an object: it points the
//! worker's environment at Secret keys (`valueFrom.secretKeyRef`) and the
//! kubelet resolves them. These names are that contract (see
//! `docs/architecture.md`); the controller writes them, the worker reads them.

use crate::dataplane::SecretString;
use crate::translate::ResolvedSecrets;

/// Bearer token of the Endpoint (`token` of `auth.secretRef`).
pub const ENDPOINT_TOKEN: &str = "WSBRIDGE_ENDPOINT_TOKEN";
/// Basic-auth user of the Endpoint (`username` of `auth.secretRef`).
pub const ENDPOINT_USERNAME: &str = "WSBRIDGE_ENDPOINT_USERNAME";
/// Basic-auth password of the Endpoint (`password` of `auth.secretRef`).
pub const ENDPOINT_PASSWORD: &str = "WSBRIDGE_ENDPOINT_PASSWORD";
/// Prefix of the i-th `auth.secretHeaders` value (entries sorted by header name).
pub const ENDPOINT_HEADER_PREFIX: &str = "WSBRIDGE_ENDPOINT_HEADER_";
/// PEM CA bundle of the Endpoint's `tls`.
pub const ENDPOINT_CA: &str = "WSBRIDGE_ENDPOINT_CA";
/// The Bridge's token for subscribers (`tokenSecretRef`).
pub const BRIDGE_TOKEN: &str = "WSBRIDGE_BRIDGE_TOKEN";
/// The worker's HTTP listener.
pub const LISTEN: &str = "WSBRIDGE_LISTEN";
/// The pod's IP, from the downward API: the worker's publish address.
pub const POD_IP: &str = "POD_IP";

/// The environment variable of the i-th secret header.
pub fn header_var(index: usize) -> String {
    format!("{ENDPOINT_HEADER_PREFIX}{index}")
}

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
