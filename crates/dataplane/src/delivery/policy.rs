//! Delivery options and the retry rules.

use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::queue::{DEFAULT_QUEUE_BYTES, Overflow};

/// How the delay between retries grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackoffPolicy {
    /// `backoffDelay * n` before retry `n`.
    Linear,
    /// `backoffDelay * 2^(n-1)` before retry `n`.
    #[default]
    Exponential,
}

/// Ordering of deliveries to one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// One message in flight at a time, in arrival order (a retried message
    /// holds back the ones after it).
    Ordered,
    /// Up to `max_in_flight` deliveries at once; no order guarantee.
    Unordered {
        /// Concurrency bound (at least 1).
        max_in_flight: usize,
    },
}

/// Effective delivery options of one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Retries after the first attempt (total attempts = `retry + 1`).
    pub retry: u32,
    /// Growth of the retry delay.
    pub backoff_policy: BackoffPolicy,
    /// Base retry delay.
    pub backoff_delay: Duration,
    /// Per-attempt timeout (connect, request and response).
    pub timeout: Duration,
    /// Ordered or unordered.
    pub ordering: Ordering,
    /// Where undeliverable messages go; `None` drops them (counted).
    pub dead_letter_sink: Option<http::Uri>,
    /// Bound of the subscriber's queue; overflow is dead-lettered or dropped.
    pub queue_capacity: usize,
    /// Bytes the subscriber's queue may hold; overflow as for the capacity.
    pub queue_bytes: u64,
    /// Which message gives way at the queue's bounds.
    pub overflow: Overflow,
    /// Largest `Retry-After` honoured.
    pub retry_after_max: Duration,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            retry: 3,
            backoff_policy: BackoffPolicy::Exponential,
            backoff_delay: Duration::from_millis(200),
            timeout: Duration::from_secs(5),
            ordering: Ordering::Ordered,
            dead_letter_sink: None,
            queue_capacity: 1024,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            overflow: Overflow::DropNewest,
            retry_after_max: Duration::from_secs(30),
        }
    }
}

/// Longest delay between two attempts, whatever the policy says.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

impl DeliveryPolicy {
    /// The delay before retry `n` (1-based), ignoring `Retry-After`.
    pub fn retry_delay(&self, n: u32) -> Duration {
        let n = n.max(1);
        let factor = match self.backoff_policy {
            BackoffPolicy::Linear => n,
            BackoffPolicy::Exponential => 2u32.checked_pow(n - 1).unwrap_or(u32::MAX),
        };
        self.backoff_delay
            .checked_mul(factor)
            .unwrap_or(MAX_RETRY_DELAY)
            .min(MAX_RETRY_DELAY)
    }

    /// The delay before retry `n` given the verdict's `Retry-After`, capped
    /// at `retry_after_max`.
    pub fn delay_for(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(after) => after.min(self.retry_after_max),
            None => self.retry_delay(n),
        }
    }

    /// Max concurrent deliveries.
    pub fn max_in_flight(&self) -> usize {
        match self.ordering {
            Ordering::Ordered => 1,
            Ordering::Unordered { max_in_flight } => max_in_flight.max(1),
        }
    }
}

/// What one HTTP attempt produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A response with this status and, when present, `Retry-After` seconds.
    Response {
        /// Status code.
        status: StatusCode,
        /// Parsed `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// No response within the attempt timeout.
    Timeout,
    /// Connect or I/O failure.
    Network(String),
    /// The destination policy refused the address (never retried).
    Denied(String),
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: done.
    Delivered,
    /// Network error, timeout, 5xx, 408 or 429: try again.
    Retry {
        /// The subscriber's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Any other status (4xx, 3xx, 1xx): retrying cannot help.
    Reject,
    /// The destination policy refused the address: not retried, reason
    /// `destination_denied`.
    Denied,
}

/// Classifies an attempt: retry on network errors, timeouts, 5xx, 408 and
/// 429; never on other 4xx.
pub fn classify(outcome: &AttemptOutcome) -> Verdict {
    match outcome {
        AttemptOutcome::Timeout | AttemptOutcome::Network(_) => Verdict::Retry { retry_after: None },
        AttemptOutcome::Denied(_) => Verdict::Denied,
        AttemptOutcome::Response { status, retry_after } => {
            if status.is_success() {
                Verdict::Delivered
            } else if status.is_server_error()
                || *status == StatusCode::REQUEST_TIMEOUT
                || *status == StatusCode::TOO_MANY_REQUESTS
            {
                Verdict::Retry {
                    retry_after: *retry_after,
                }
            } else {
                Verdict::Reject
            }
        }
    }
}

/// Parses `Retry-After` (RFC 9110 §10.2.3): delay-seconds, or an HTTP
/// date, which is the time from now until then (zero for a date past).
pub fn parse_retry_after(value: &[u8]) -> Option<Duration> {
    retry_after_at(value, SystemTime::now())
}

/// [`parse_retry_after`] as seen at `now`.
fn retry_after_at(value: &[u8], now: SystemTime) -> Option<Duration> {
    let value = std::str::from_utf8(value).ok()?.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Any run of digits is a delay; one too long for u64 is "very long".
        return Some(Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(code: u16) -> AttemptOutcome {
        AttemptOutcome::Response {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after: None,
        }
    }

    #[test]
    fn retry_classification() {
        assert_eq!(classify(&resp(200)), Verdict::Delivered);
        assert_eq!(classify(&resp(202)), Verdict::Delivered);
        for code in [500, 502, 503, 504, 408, 429] {
            assert!(matches!(classify(&resp(code)), Verdict::Retry { .. }), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 413, 422, 301] {
            assert_eq!(classify(&resp(code)), Verdict::Reject, "{code}");
        }
        assert!(matches!(
            classify(&AttemptOutcome::Timeout),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            classify(&AttemptOutcome::Network("refused".into())),
            Verdict::Retry { .. }
        ));
        let with_after = AttemptOutcome::Response {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            classify(&with_after),
            Verdict::Retry {
                retry_after: Some(Duration::from_secs(2))
            }
        );
    }

    #[test]
    fn linear_and_exponential_backoff() {
        let mut p = DeliveryPolicy {
            backoff_delay: Duration::from_millis(100),
            backoff_policy: BackoffPolicy::Linear,
            ..Default::default()
        };
        assert_eq!(p.retry_delay(1), Duration::from_millis(100));
        assert_eq!(p.retry_delay(3), Duration::from_millis(300));
        p.backoff_policy = BackoffPolicy::Exponential;
        assert_eq!(p.retry_delay(1), Duration::from_millis(100));
        assert_eq!(p.retry_delay(2), Duration::from_millis(200));
        assert_eq!(p.retry_delay(4), Duration::from_millis(800));
        assert_eq!(p.retry_delay(200), MAX_RETRY_DELAY);
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = DeliveryPolicy {
            retry_after_max: Duration::from_secs(10),
            ..Default::default()
        };
        assert_eq!(
            p.delay_for(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.delay_for(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(10)
        );
        assert_eq!(p.delay_for(1, None), p.retry_delay(1));
        assert_eq!(parse_retry_after(b" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(b"-1"), None);
        assert_eq!(parse_retry_after(b"soon"), None);
        assert_eq!(
            parse_retry_after(b"99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_as_an_http_date_is_the_time_until_then() {
        // Wed, 21 Oct 2015 07:28:00 GMT
        let date = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let now = date - Duration::from_secs(7);
        for form in [
            "Wed, 21 Oct 2015 07:28:00 GMT",     // IMF-fixdate
            "Wednesday, 21-Oct-15 07:28:00 GMT", // RFC 850
            "Wed Oct 21 07:28:00 2015",          // asctime
        ] {
            assert_eq!(
                retry_after_at(form.as_bytes(), now),
                Some(Duration::from_secs(7)),
                "{form}"
            );
        }
        // A date already past means "now".
        assert_eq!(
            retry_after_at(b"Wed, 21 Oct 2015 07:28:00 GMT", date + Duration::from_secs(60)),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after_at(b"Wed, 32 Oct 2015 07:28:00 GMT", now), None);
    }
}
