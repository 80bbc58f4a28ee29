//! A destination given by a name is refused at connect time when every
//! address the name resolves to is denied (`localhost`, a name pointing at
//! the pod's own address). The controller resolves it as well, so that the
//! object says `DestinationDenied` before a delivery or a connection fails.

use std::io::ErrorKind;
use std::net::IpAddr;
use std::time::Duration;

use wsbridge_api::conditions::{Decided, READY};
use wsbridge_dataplane::DestinationPolicy;
use wsbridge_dataplane::destination::resolve_allowed;

/// How long a lookup may take. A name that does not resolve in time, or at
/// all, is left to the connect-time check.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// `Ready=False`, reason `DestinationDenied`, when `uri`'s host is a name
/// that resolves only to addresses `policy` denies. Addresses are checked
/// by the literal check already; Service names of the cluster domain are
/// the controller's own resolution and are not looked up.
pub async fn denied_by_resolution(
    uri: &str,
    policy: &DestinationPolicy,
    what: &str,
    cluster_domain: &str,
) -> Option<Decided> {
    let parsed: http::Uri = uri.parse().ok()?;
    let host = parsed.host()?.trim_start_matches('[').trim_end_matches(']');
    let cluster_suffix = format!(".svc.{}", cluster_domain.trim_matches('.'));
    if host.parse::<IpAddr>().is_ok() || host.ends_with(&cluster_suffix) {
        return None;
    }
    let port = parsed.port_u16().unwrap_or(match parsed.scheme_str() {
        Some("https" | "wss") => 443,
        _ => 80,
    });
    match tokio::time::timeout(LOOKUP_TIMEOUT, resolve_allowed(policy, host, port)).await {
        Ok(Err(e)) if e.kind() == ErrorKind::PermissionDenied => Some(Decided::failed(
            READY,
            "DestinationDenied",
            format!(
                "{what} {uri:?}: {host} resolves only to addresses that are not allowed destinations ({e}); \
                 ask the operator to allow them or use another address"
            ),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_loopback() -> DestinationPolicy {
        DestinationPolicy::from_rules(&["127.0.0.0/8".into(), "::1/128".into()], &[], false).unwrap()
    }

    #[tokio::test]
    async fn a_name_resolving_to_denied_addresses_is_denied() {
        let denied = denied_by_resolution(
            "http://localhost:9/hook",
            &no_loopback(),
            "subscriber",
            "cluster.local",
        )
        .await
        .expect("localhost resolves to loopback");
        assert_eq!(
            (denied.status, denied.reason.as_str()),
            (false, "DestinationDenied")
        );
        assert!(
            denied.message.contains("localhost resolves only"),
            "{}",
            denied.message
        );
    }

    #[tokio::test]
    async fn literals_allowed_names_and_cluster_services_are_left_alone() {
        let p = no_loopback();
        let allowed = DestinationPolicy::default();
        assert!(
            denied_by_resolution("http://localhost:9/", &allowed, "subscriber", "cluster.local")
                .await
                .is_none()
        );
        // Literals are the literal check's: not looked up.
        assert!(
            denied_by_resolution("http://127.0.0.1:9/", &p, "subscriber", "cluster.local")
                .await
                .is_none()
        );
        assert!(
            denied_by_resolution(
                "http://app.ns.svc.cluster.local/",
                &p,
                "subscriber",
                "cluster.local"
            )
            .await
            .is_none()
        );
    }
}
