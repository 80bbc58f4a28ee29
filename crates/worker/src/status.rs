//! Reports the connection on the Bridge's status, on transitions only.
//!
//! Server-side apply with the worker's own field manager: the worker owns
//! the `Connected` entry of `status.conditions` (a list-map keyed on
//! `type`), `status.address` and `status.lastConnectedTime`; the controller
//! owns the rest, so neither overwrites the other.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

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

/// The condition of a session that cannot run: its Channel has backend
/// `rabbitmq` but the pod has no broker URL (the controller gives one to
/// the worker of such a Channel when the installation has a broker, and
/// rolls the worker when the Channel changes backend).
pub fn no_broker_condition(state: &ConnectionState) -> ConnectedCondition {
    if *state == ConnectionState::Stopped {
        return condition_for(state, "");
    }
    ConnectedCondition {
        connected: false,
        reason: "NoBroker",
        message: format!(
            "the Channel has backend rabbitmq but this worker has no broker URL ({}): \
             not connecting, and not delivering from memory instead; \
             the controller writes it when the installation has a broker",
            wsbridge_api::worker_env::RABBITMQ_URL
        ),
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// No two writes closer than this: a flapping connection costs at most one
/// API write (and one wake-up of the controller and every gateway) per interval.
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_secs(2);
/// Backoff after a failed write: from [`MIN_WRITE_INTERVAL`], doubling, up to this.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Where the condition goes: the Bridge's status subresource in production,
/// a recorder in tests.
pub trait StatusSink: Send {
    fn write(&self, body: serde_json::Value) -> impl Future<Output = Result<(), String>> + Send;
}

/// The Bridge's status subresource, applied with the worker's field manager.
pub struct BridgeStatusSink {
    pub api: Api<Bridge>,
    pub bridge: String,
}

impl StatusSink for BridgeStatusSink {
    async fn write(&self, body: serde_json::Value) -> Result<(), String> {
        self.api
            .patch_status(
                &self.bridge,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The condition as written, given the one decided before: attempt counts
/// and retry delays change on every reconnect attempt, so they are left out
/// of the message (they are in the worker's log and metrics), and a retry of
/// an unreachable endpoint stays `EndpointUnreachable` until it connects or
/// fails otherwise: only a change of state is a write.
pub fn stable_condition(
    state: &ConnectionState,
    previous: Option<&ConnectedCondition>,
    endpoint: &str,
) -> ConnectedCondition {
    match state {
        ConnectionState::Connecting { attempt } if *attempt > 1 => match previous {
            Some(p) if p.reason == "EndpointUnreachable" => p.clone(),
            _ => stable_condition(&ConnectionState::Connecting { attempt: 1 }, None, endpoint),
        },
        ConnectionState::Connecting { .. } => ConnectedCondition {
            connected: false,
            reason: "Connecting",
            message: format!("connecting to Endpoint {endpoint}"),
        },
        ConnectionState::Disconnected {
            reason,
            retry_in: Some(_),
        } => ConnectedCondition {
            connected: false,
            reason: "EndpointUnreachable",
            message: format!("{reason}; retrying with backoff"),
        },
        other => condition_for(other, endpoint),
    }
}

/// Writes the condition on every change of state until `states` closes
/// (then writes the last one). Writes are at least [`MIN_WRITE_INTERVAL`]
/// apart, a newer state replaces a pending one, and a failed write is
/// retried with backoff until it succeeds or a newer state replaces it:
/// only a successful write counts as written.
pub async fn report(
    sink: impl StatusSink,
    bridge: String,
    endpoint: String,
    generation: Option<i64>,
    address: Option<String>,
    states: watch::Receiver<ConnectionState>,
) {
    report_as(
        sink,
        bridge,
        generation,
        address,
        states,
        move |state, decided| stable_condition(state, decided, &endpoint),
    )
    .await
}

/// [`report`], with the condition of each state decided by `decide` (given
/// the one decided before).
pub async fn report_as(
    sink: impl StatusSink,
    bridge: String,
    generation: Option<i64>,
    address: Option<String>,
    mut states: watch::Receiver<ConnectionState>,
    decide: impl Fn(&ConnectionState, Option<&ConnectedCondition>) -> ConnectedCondition,
) {
    let mut written: Option<ConnectedCondition> = None;
    let mut transition = Timestamp::now();
    let mut last_connected: Option<Timestamp> = None;
    let mut last_attempt: Option<Instant> = None;
    let mut failures = 0u32;
    let mut open = true;
    let mut decided: Option<ConnectedCondition> = None;
    loop {
        let wanted = decide(&states.borrow_and_update(), decided.as_ref());
        decided = Some(wanted.clone());
        if written.as_ref() == Some(&wanted) {
            if !open || states.changed().await.is_err() {
                return;
            }
            continue;
        }
        if let Some(at) = last_attempt {
            let until = at + retry_delay(failures);
            if open {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    changed = states.changed() => {
                        open = changed.is_ok();
                        // Whatever is newest is written, still not before `until`.
                        continue;
                    }
                }
            } else {
                tokio::time::sleep_until(until).await;
            }
        }
        let now = Timestamp::now();
        let transition_at = if written.as_ref().map(|w| w.connected) != Some(wanted.connected) {
            now
        } else {
            transition
        };
        let connected_at = if wanted.connected {
            Some(now)
        } else {
            last_connected
        };
        let body = status_patch(
            &bridge,
            &wanted,
            transition_at,
            generation,
            address.as_deref(),
            connected_at,
        );
        last_attempt = Some(Instant::now());
        match sink.write(body).await {
            Ok(()) => {
                written = Some(wanted);
                transition = transition_at;
                last_connected = connected_at;
                failures = 0;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(%error, "could not write the Connected condition; retrying");
            }
        }
    }
}

/// How long after the last attempt the next write may go.
fn retry_delay(failures: u32) -> Duration {
    MIN_WRITE_INTERVAL
        .saturating_mul(1 << failures.min(5))
        .min(MAX_RETRY_DELAY)
        .max(MIN_WRITE_INTERVAL)
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
    fn a_rabbitmq_channel_without_a_broker_url_says_so_until_the_worker_stops() {
        for state in [
            ConnectionState::Connected { subprotocol: None },
            ConnectionState::Connecting { attempt: 1 },
        ] {
            let c = no_broker_condition(&state);
            assert_eq!((c.connected, c.reason), (false, "NoBroker"));
            assert!(c.message.contains("WSBRIDGE_RABBITMQ_URL"), "{}", c.message);
        }
        assert_eq!(
            no_broker_condition(&ConnectionState::Stopped).reason,
            "WorkerStopped"
        );
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
    /// Records every body; fails the first `fail` writes.
    #[derive(Clone, Default)]
    struct Recorder {
        bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
        fail: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl StatusSink for Recorder {
        async fn write(&self, body: serde_json::Value) -> Result<(), String> {
            use std::sync::atomic::Ordering;
            if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err("the API server is unavailable".into());
            }
            self.bodies.lock().unwrap().push(body);
            Ok(())
        }
    }

    impl Recorder {
        fn messages(&self) -> Vec<String> {
            self.bodies
                .lock()
                .unwrap()
                .iter()
                .map(|b| {
                    b["status"]["conditions"][0]["message"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect()
        }
    }

    fn unreachable(retry_ms: u64) -> ConnectionState {
        ConnectionState::Disconnected {
            reason: "connection refused".into(),
            retry_in: Some(Duration::from_millis(retry_ms)),
        }
    }

    fn start(sink: &Recorder) -> (watch::Sender<ConnectionState>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(unreachable(100));
        let task = tokio::spawn(report(sink.clone(), "b".into(), "feed".into(), None, None, rx));
        (tx, task)
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_attempts_with_new_delays_are_not_writes() {
        let sink = Recorder::default();
        let (tx, task) = start(&sink);
        for attempt in 1..50u32 {
            tx.send_replace(ConnectionState::Connecting { attempt: attempt + 1 });
            tx.send_replace(unreachable(100 * u64::from(attempt) + u64::from(attempt % 7)));
            tokio::time::sleep(MIN_WRITE_INTERVAL * 3).await;
        }
        drop(tx);
        task.await.unwrap();
        assert_eq!(sink.messages(), ["connection refused; retrying with backoff"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flapping_connection_is_written_at_most_once_per_interval_and_ends_on_its_last_state() {
        let sink = Recorder::default();
        let (tx, task) = start(&sink);
        let started = Instant::now();
        for i in 0..200u32 {
            tx.send_replace(if i % 2 == 0 {
                ConnectionState::Connected { subprotocol: None }
            } else {
                unreachable(100)
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tx.send_replace(ConnectionState::Connected { subprotocol: None });
        let elapsed = started.elapsed();
        drop(tx);
        task.await.unwrap();
        let messages = sink.messages();
        let allowed = (elapsed.as_millis() / MIN_WRITE_INTERVAL.as_millis()) as usize + 2;
        assert!(
            messages.len() <= allowed,
            "{} writes in {elapsed:?}",
            messages.len()
        );
        assert_eq!(messages.last().unwrap(), "connected to Endpoint feed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_is_retried_not_recorded_as_written() {
        let sink = Recorder::default();
        sink.fail.store(3, std::sync::atomic::Ordering::SeqCst);
        let (tx, task) = start(&sink);
        // The state does not change again: only retries can write it.
        tokio::time::sleep(MAX_RETRY_DELAY * 4).await;
        assert_eq!(sink.messages(), ["connection refused; retrying with backoff"]);
        // A failure while a newer state is pending: the newer one is written.
        sink.fail.store(1, std::sync::atomic::Ordering::SeqCst);
        tx.send_replace(ConnectionState::Connected { subprotocol: None });
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send_replace(ConnectionState::Connected {
            subprotocol: Some("v2".into()),
        });
        drop(tx);
        task.await.unwrap();
        assert_eq!(
            sink.messages(),
            [
                "connection refused; retrying with backoff",
                "connected to Endpoint feed (subprotocol v2)"
            ]
        );
    }
}
