//! The worker's identity and permissions: a ServiceAccount, and a Role
//! bound to it that reads only its own Bridge, Channel and Endpoint, lists
//! Subscriptions, writes only its Bridge's status, and creates Events (that
//! a subscriber is dropping messages for memory).

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use wsbridge_api::Bridge;

/// The ServiceAccount, Role and RoleBinding of a Bridge's worker, each with
/// `meta` (the worker's name, namespace, labels and owner).
pub(super) fn rbac_objects(bridge: &Bridge, meta: &ObjectMeta) -> (ServiceAccount, Role, RoleBinding) {
    let b = bridge.name_any();
    let name = meta.name.clone().unwrap_or_default();
    let ns = meta.namespace.clone().unwrap_or_default();
    let service_account = ServiceAccount {
        metadata: meta.clone(),
        ..Default::default()
    };
    let rule = |resources: &[&str], verbs: &[&str], names: Option<Vec<String>>| PolicyRule {
        api_groups: Some(vec![wsbridge_api::GROUP.into()]),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        resource_names: names,
        ..Default::default()
    };
    let role = Role {
        metadata: meta.clone(),
        rules: Some(vec![
            rule(&["bridges"], &["get", "list", "watch"], Some(vec![b.clone()])),
            rule(
                &["channels"],
                &["get", "list", "watch"],
                Some(vec![bridge.spec.channel.clone()]),
            ),
            rule(
                &["endpoints"],
                &["get", "list", "watch"],
                Some(vec![bridge.spec.endpoint.clone()]),
            ),
            rule(&["subscriptions"], &["list", "watch"], None),
            rule(&["bridges/status"], &["patch", "update"], Some(vec![b.clone()])),
            // Events have generated names, so they cannot be named here; the
            // worker creates each one and never changes it (no `patch`).
            PolicyRule {
                api_groups: Some(vec!["events.k8s.io".into()]),
                resources: Some(vec!["events".into()]),
                verbs: vec!["create".into()],
                ..Default::default()
            },
        ]),
    };
    let role_binding = RoleBinding {
        metadata: meta.clone(),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: name.clone(),
            namespace: Some(ns.clone()),
            ..Default::default()
        }]),
    };
    (service_account, role, role_binding)
}

#[cfg(test)]
mod tests {
    use super::super::{fixture, worker_objects};
    use wsbridge_dataplane::DestinationPolicy;

    #[test]
    fn the_worker_may_read_only_its_own_objects_and_write_only_its_status_and_events() {
        let (b, e) = fixture();
        let w = worker_objects(&b, &e, "img:1", "abc", &DestinationPolicy::default(), None, &[]);
        let rules: Vec<_> = w
            .role
            .rules
            .unwrap()
            .into_iter()
            .map(|r| {
                (
                    format!(
                        "{}:{}",
                        r.api_groups.unwrap().join(","),
                        r.resources.unwrap().join(",")
                    ),
                    r.verbs.join(","),
                    r.resource_names,
                )
            })
            .collect();
        let only = |n: &str| Some(vec![n.to_string()]);
        assert_eq!(
            rules,
            [
                (
                    "wsbridge.io:bridges".into(),
                    "get,list,watch".into(),
                    only("feed")
                ),
                (
                    "wsbridge.io:channels".into(),
                    "get,list,watch".into(),
                    only("ticker")
                ),
                (
                    "wsbridge.io:endpoints".into(),
                    "get,list,watch".into(),
                    only("market")
                ),
                ("wsbridge.io:subscriptions".into(), "list,watch".into(), None),
                (
                    "wsbridge.io:bridges/status".into(),
                    "patch,update".into(),
                    only("feed")
                ),
                ("events.k8s.io:events".into(), "create".into(), None),
            ]
        );
        let subject = &w.role_binding.subjects.unwrap()[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", "wsbridge-worker-feed", Some("ns"))
        );
        assert_eq!(w.role_binding.role_ref.name, "wsbridge-worker-feed");
        assert_eq!(
            w.service_account.metadata.name.as_deref(),
            Some("wsbridge-worker-feed")
        );
    }
}
