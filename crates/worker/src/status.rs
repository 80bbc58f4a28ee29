//! Reports the connection on the Bridge's status, on transitions only.
//!
//! Server-side apply with the worker's own field manager: the worker owns
//! the `Connected` entry of `status.conditions` (a list-map keyed on
//! `type`), `status.address` and `status.lastConnectedTime`; the controller
//! owns the rest, so neither overwrites the other.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;

use wsbridge_api::Bridge;
use wsbridge_api::conditions::CONNECTED;
use wsbridge_dataplane::endpoint::ConnectionState;

/// Field manager of everything the worker writes.
pub const FIELD_MANAGER: &str = "wsbridge-worker";

/// The `Connected` condition a connection state maps to, without timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectedCondition {
    pub connected: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Pure mapping from the data plane's state to the condition users see.
pub fn condition_for(state: &ConnectionState, endpoint: &str) -> ConnectedCondition {
    match state {
        ConnectionState::Connected { subprotocol } => ConnectedCondition {
            connected: true,
            reason: "Connected",
            message: match subprotocol {
                Some(p) => format!("connected to Endpoint {endpoint} (subprotocol {p})"),
                None => format!("connected to Endpoint {endpoint}"),
            },
        },
        ConnectionState::Connecting { attempt } => ConnectedCondition {
            connected: false,
            reason: "Connecting",
            message: format!("connecting to Endpoint {endpoint} (attempt {attempt})"),
        },
        ConnectionState::Disconnected {
            reason,
            retry_in: Some(d),
        } => ConnectedCondition {
            connected: false,
            reason: "EndpointUnreachable",
            message: format!(
                "{reason}; retrying in {}",
                humantime::format_duration(round_ms(*d))
            ),
        },
        ConnectionState::Disconnected {
            reason,
            retry_in: None,
        } => ConnectedCondition {
            connected: false,
            reason: "InvalidEndpointConfig",
            message: format!("{reason}; waiting for the Endpoint or its Secret to change"),
        },
        ConnectionState::Stopped => ConnectedCondition {
            connected: false,
            reason: "WorkerStopped",
            message: "the worker is shutting down".into(),
        },
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// Writes the condition whenever it changes (attempt counters aside), until
/// `states` closes. Failed writes are retried with backoff; a newer state
/// replaces a pending one.
pub async fn report(
    api: Api<Bridge>,
    bridge: String,
    endpoint: String,
    generation: Option<i64>,
    address: Option<String>,
    mut states: watch::Receiver<ConnectionState>,
) {
    let mut written: Option<ConnectedCondition> = None;
    let mut transition = Timestamp::now();
    let mut last_connected: Option<Timestamp> = None;
    loop {
        let state = states.borrow_and_update().clone();
        let mut wanted = condition_for(&state, &endpoint);
        if matches!(state, ConnectionState::Connecting { .. }) {
            // Attempt counts change on every retry: not a transition.
            wanted.message = format!("connecting to Endpoint {endpoint}");
        }
        if written.as_ref() != Some(&wanted) {
            if written.as_ref().map(|w| w.connected) != Some(wanted.connected) {
                transition = Timestamp::now();
            }
            if wanted.connected {
                last_connected = Some(Timestamp::now());
            }
            let body = status_patch(
                &bridge,
                &wanted,
                transition,
                generation,
                address.as_deref(),
                last_connected,
            );
            let mut delay = Duration::from_millis(200);
            loop {
                match api
                    .patch_status(
                        &bridge,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&body),
                    )
                    .await
                {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not write the Connected condition; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            changed = states.changed() => if changed.is_err() { return },
                        }
                        delay = (delay * 2).min(Duration::from_secs(30));
                        if states.has_changed().unwrap_or(false) {
                            break;
                        }
                    }
                }
            }
            written = Some(wanted);
            continue;
        }
        if states.changed().await.is_err() {
            return;
        }
    }
}

/// The apply body: only the fields the worker owns.
pub fn status_patch(
    bridge: &str,
    condition: &ConnectedCondition,
    transition: Timestamp,
    generation: Option<i64>,
    address: Option<&str>,
    last_connected: Option<Timestamp>,
) -> serde_json::Value {
    let mut status = json!({
        "conditions": [{
            "type": CONNECTED,
            "status": if condition.connected { "True" } else { "False" },
            "reason": condition.reason,
            "message": condition.message,
            "lastTransitionTime": Time(transition),
            "observedGeneration": generation,
        }],
    });
    if let Some(url) = address {
        status["address"] = json!({ "url": url });
    }
    if let Some(t) = last_connected {
        status["lastConnectedTime"] = json!(Time(t));
    }
    json!({
        "apiVersion": "wsbridge.io/v1alpha1",
        "kind": "Bridge",
        "metadata": { "name": bridge },
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_to_conditions_that_name_the_cause() {
        let c = condition_for(
            &ConnectionState::Connected {
                subprotocol: Some("feed.v1".into()),
            },
            "feed",
        );
        assert!(c.connected);
        assert!(c.message.contains("feed.v1"));
        let d = condition_for(
            &ConnectionState::Disconnected {
                reason: "connection refused".into(),
                retry_in: Some(Duration::from_millis(1500)),
            },
            "feed",
        );
        assert_eq!((d.connected, d.reason), (false, "EndpointUnreachable"));
        assert!(
            d.message.contains("connection refused") && d.message.contains("1s 500ms"),
            "{}",
            d.message
        );
        let i = condition_for(
            &ConnectionState::Disconnected {
                reason: "bad CA".into(),
                retry_in: None,
            },
            "feed",
        );
        assert_eq!(i.reason, "InvalidEndpointConfig");
    }

    #[test]
    fn the_patch_carries_only_worker_owned_fields() {
        let c = condition_for(&ConnectionState::Connected { subprotocol: None }, "feed");
        let body = status_patch(
            "b",
            &c,
            Timestamp::now(),
            Some(3),
            Some("http://10.0.0.1:8080"),
            None,
        );
        let status = body["status"].as_object().unwrap();
        let mut keys: Vec<_> = status.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["address", "conditions"]);
        assert_eq!(body["status"]["conditions"][0]["observedGeneration"], 3);
    }
}
