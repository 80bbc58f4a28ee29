//! Exponential reconnect backoff with full jitter.

use std::time::Duration;

use rand::RngExt;

/// Reconnect delays: attempt `n` (0-based) waits a uniformly random time in
/// `[0, min(max_delay, initial_delay * 2^n)]` ("full jitter"), so that many
/// bridges that lost the same endpoint do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct ReconnectBackoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl ReconnectBackoff {
    /// A backoff from `initial` doubling up to `max` (`max` is raised to
    /// `initial` when smaller).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        exponential_ceiling(self.initial, self.max, self.attempt)
    }

    /// How many delays were handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The next delay (random, at most [`Self::ceiling`]); advances the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = full_jitter(self.ceiling(), &mut rand::rng());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Back to the initial delay (after a healthy connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `min(max, initial * 2^attempt)` without overflow.
pub fn exponential_ceiling(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 2u32.checked_pow(attempt.min(31)).unwrap_or(u32::MAX);
    initial.checked_mul(factor).unwrap_or(max).min(max)
}

/// A uniformly random duration in `[0, ceiling]`.
pub fn full_jitter(ceiling: Duration, rng: &mut impl rand::Rng) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rng.random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_and_caps() {
        let i = Duration::from_millis(500);
        let m = Duration::from_secs(30);
        assert_eq!(exponential_ceiling(i, m, 0), Duration::from_millis(500));
        assert_eq!(exponential_ceiling(i, m, 1), Duration::from_secs(1));
        assert_eq!(exponential_ceiling(i, m, 3), Duration::from_secs(4));
        assert_eq!(exponential_ceiling(i, m, 6), Duration::from_secs(30));
        assert_eq!(exponential_ceiling(i, m, 1000), Duration::from_secs(30));
    }

    #[test]
    fn delays_stay_within_the_ceiling_and_grow() {
        let mut b = ReconnectBackoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for n in 0..50 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
            assert!(ceiling <= Duration::from_secs(2));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(2));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_over_the_range() {
        let mut rng = rand::rng();
        let ceiling = Duration::from_secs(1);
        let samples: Vec<Duration> = (0..200).map(|_| full_jitter(ceiling, &mut rng)).collect();
        assert!(samples.iter().all(|d| *d <= ceiling));
        assert!(samples.iter().any(|d| *d < Duration::from_millis(300)));
        assert!(samples.iter().any(|d| *d > Duration::from_millis(700)));
        assert_eq!(full_jitter(Duration::ZERO, &mut rng), Duration::ZERO);
    }

    #[test]
    fn max_below_initial_is_raised() {
        let b = ReconnectBackoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.ceiling(), Duration::from_secs(2));
    }
}
