//! Whether an applied worker object still says what the controller wants.
//!
//! The API server fills in defaults (`terminationMessagePath`, a
//! `ServiceAccount`'s token secrets, status), so an object is compared as a
//! superset of what was applied: every field the controller sets must be
//! there with its value, and every list it sets must have exactly its
//! items. A hand edit that removes or changes one of those (a
//! `securityContext`, a Role rule, an environment variable) is drift;
//! what others add outside them is not.

use serde_json::Value;

/// Whether `observed` lacks or changes anything of `desired`.
pub fn drifted(desired: &Value, observed: &Value) -> bool {
    !contains(desired, observed)
}

fn contains(desired: &Value, observed: &Value) -> bool {
    match (desired, observed) {
        (Value::Object(want), Value::Object(have)) => want.iter().all(|(key, value)| match have.get(key) {
            Some(found) => contains(value, found),
            None => is_empty(value),
        }),
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| contains(w, h))
        }
        (want, Value::Null) => is_empty(want),
        (want, have) => want == have,
    }
}

/// Empty values are not serialized back by the API server.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(security: Value) -> Value {
        json!({"spec": {"containers": [{"name": "worker", "securityContext": security, "env": [{"name": "A", "value": "1"}]}]}})
    }

    #[test]
    fn server_defaults_are_not_drift() {
        let desired = pod(json!({"runAsNonRoot": true}));
        let mut observed = desired.clone();
        observed["spec"]["containers"][0]["terminationMessagePath"] = json!("/dev/termination-log");
        observed["spec"]["dnsPolicy"] = json!("ClusterFirst");
        observed["status"] = json!({"replicas": 1});
        assert!(!drifted(&desired, &observed));
        assert!(!drifted(&json!({"spec": {"volumes": []}}), &json!({"spec": {}})));
    }

    #[test]
    fn removed_changed_or_added_items_of_ours_are_drift() {
        let desired = pod(json!({"runAsNonRoot": true}));
        let mut removed = desired.clone();
        removed["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("securityContext");
        assert!(drifted(&desired, &removed));
        assert!(drifted(&desired, &pod(json!({"runAsNonRoot": false}))));
        let mut extra_env = desired.clone();
        extra_env["spec"]["containers"][0]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "B", "value": "2"}));
        assert!(drifted(&desired, &extra_env));
    }
}
