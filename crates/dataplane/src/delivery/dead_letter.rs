//! The dead-letter path: messages a subscriber could not take are POSTed to
//! its dead-letter sink, with headers saying why, by one engine-wide task.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use tokio::sync::{Semaphore, mpsc};
use tracing::warn;

use super::policy::{Verdict, classify};
use super::settle::Settlement;
use super::state::EngineState;
use crate::message::Message;
use crate::metrics::ReasonLabels;

/// Dead-letter headers: why the message could not be delivered.
pub const DEAD_LETTER_REASON: HeaderName = HeaderName::from_static("x-wsbridge-dead-letter-reason");
/// CloudEvents extension with the same reason.
pub const CE_FAILURE: HeaderName = HeaderName::from_static("ce-wsbridgefailure");
/// The subscriber that could not take the message.
pub const DEAD_LETTER_SUBSCRIBER: HeaderName = HeaderName::from_static("x-wsbridge-subscriber");
/// Attempts made.
pub const DEAD_LETTER_ATTEMPTS: HeaderName = HeaderName::from_static("x-wsbridge-attempts");
/// The subscriber's last HTTP status, when there was one.
pub const DEAD_LETTER_STATUS: HeaderName = HeaderName::from_static("x-wsbridge-last-status");

/// A message on its way to a dead-letter sink.
pub(super) struct DeadLetter {
    pub(super) msg: Arc<Message>,
    pub(super) sink: Uri,
    pub(super) channel: Arc<str>,
    pub(super) subscriber: Arc<str>,
    pub(super) reason: &'static str,
    pub(super) last_status: Option<u16>,
    pub(super) attempts: u32,
    pub(super) timeout: Duration,
}

/// The engine's dead-letter task: POSTs what comes through the queue, at
/// most `concurrency` at a time; ends when the engine is gone.
pub(super) async fn run_dead_letters(
    shared: Weak<EngineState>,
    mut rx: mpsc::Receiver<DeadLetter>,
    concurrency: usize,
    attempts: u32,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    while let Some(dl) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            post_dead_letter(&shared, dl, attempts).await;
            shared.dead_letters_pending.fetch_sub(1, AtomicOrdering::AcqRel);
            drop(permit);
        });
    }
}

async fn post_dead_letter(shared: &EngineState, dl: DeadLetter, attempts: u32) {
    let mut headers = dl.msg.http_headers();
    headers.insert(DEAD_LETTER_REASON, HeaderValue::from_static(dl.reason));
    headers.insert(CE_FAILURE, HeaderValue::from_static(dl.reason));
    if let Ok(v) = HeaderValue::from_str(&dl.subscriber) {
        headers.insert(DEAD_LETTER_SUBSCRIBER, v);
    }
    headers.insert(DEAD_LETTER_ATTEMPTS, HeaderValue::from(dl.attempts));
    if let Some(status) = dl.last_status {
        headers.insert(DEAD_LETTER_STATUS, HeaderValue::from(status));
    }
    for attempt in 1..=attempts {
        let outcome = shared
            .http
            .post(&dl.sink, &headers, dl.msg.payload().bytes(), dl.timeout)
            .await;
        match classify(&outcome) {
            Verdict::Delivered => {
                shared.stats.dead_lettered.fetch_add(1, AtomicOrdering::Relaxed);
                shared
                    .metrics
                    .dead_lettered
                    .get_or_create(&ReasonLabels {
                        channel: dl.channel.to_string(),
                        subscriber: dl.subscriber.to_string(),
                        endpoint: String::new(),
                        reason: dl.reason.to_string(),
                    })
                    .inc();
                dl.msg.settle(Settlement::DeadLettered);
                return;
            }
            Verdict::Reject => break,
            Verdict::Denied => {
                warn!(channel = %dl.channel, subscriber = %dl.subscriber, id = dl.msg.id(), reason = dl.reason, "dead-letter sink is a denied destination; dropped");
                shared.count_drop(&dl.channel, &dl.subscriber, "destination_denied", 1);
                dl.msg.settle(Settlement::Dropped("destination_denied"));
                return;
            }
            Verdict::Retry { .. } if attempt < attempts => {
                tokio::time::sleep(Duration::from_millis(100) * attempt).await;
            }
            Verdict::Retry { .. } => {}
        }
    }
    warn!(channel = %dl.channel, subscriber = %dl.subscriber, id = dl.msg.id(), reason = dl.reason, "dead-letter sink did not accept the message; dropped");
    shared.count_drop(&dl.channel, &dl.subscriber, "dead_letter_failed", 1);
    dl.msg.settle(Settlement::Dropped("dead_letter_failed"));
}
