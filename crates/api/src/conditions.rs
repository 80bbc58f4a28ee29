//! Status conditions, Kubernetes style, computed by pure functions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use wsbridge_core::text::shorten;

/// Condition types used across the kinds.
pub const READY: &str = "Ready";
/// A Bridge's worker holds a live connection to its endpoint.
pub const CONNECTED: &str = "Connected";
/// A `rabbitmq` Channel's exchanges are declared on the installation's
/// broker (written by the controller's topology reconcile, a field manager
/// of its own).
pub const BROKER_READY: &str = "BrokerReady";

/// A condition without timestamps: what a reconcile decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Decided {
    pub fn ok(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn failed(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

fn status_word(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// Merges `decided` into `current`, keeping `lastTransitionTime` unless the
/// status flipped, so that an unchanged decision yields an identical list
/// (and the caller can skip the write).
pub fn merge(
    current: &[Condition],
    decided: &[Decided],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = current
        .iter()
        .filter(|c| !decided.iter().any(|d| d.type_ == c.type_))
        .cloned()
        .collect();
    for d in decided {
        let previous = current.iter().find(|c| c.type_ == d.type_);
        let status = status_word(d.status).to_owned();
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Time(now),
        };
        out.push(Condition {
            type_: d.type_.to_owned(),
            status,
            reason: d.reason.clone(),
            message: shorten(&d.message, 1024),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// The condition of a type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of a type is present and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn unchanged_decision_keeps_the_transition_time() {
        let first = merge(&[], &[Decided::ok(READY, "Ready", "fine")], Some(1), at(10));
        let second = merge(&first, &[Decided::ok(READY, "Ready", "fine")], Some(1), at(20));
        assert_eq!(first, second);
    }

    #[test]
    fn a_flip_moves_the_transition_time_and_keeps_other_types() {
        let first = merge(
            &[],
            &[
                Decided::ok(READY, "Ready", ""),
                Decided::ok(CONNECTED, "Connected", ""),
            ],
            Some(1),
            at(10),
        );
        let second = merge(
            &first,
            &[Decided::failed(READY, "ChannelNotFound", "no channel x")],
            Some(2),
            at(20),
        );
        let ready = find(&second, READY).unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.last_transition_time, Time(at(20)));
        assert_eq!(ready.observed_generation, Some(2));
        assert!(is_true(&second, CONNECTED));
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        // Byte 1024 falls inside an `é`: the cut moves back to 1023.
        let long = format!("a{}", "é".repeat(1000));
        let merged = merge(&[], &[Decided::failed(READY, "X", long)], None, at(1));
        assert_eq!(merged[0].message, format!("a{}…", "é".repeat(511)));
    }
}
