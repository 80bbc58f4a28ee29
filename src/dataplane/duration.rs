//! Go-style duration strings (`200ms`, `5s`, `1m30s`) as used in the API.

use std::time::Duration;

/// A duration string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (expected e.g. 200ms, 5s, 1m30s)")]
pub struct DurationError {
    /// The text that was given.
    pub input: String,
    /// Why it was refused.
    pub reason: String,
}

/// Parses a duration such as `200ms`, `5s`, `1m`, `1m30s` or `1h`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(DurationError {
            input: input.to_string(),
            reason: "empty".to_string(),
        });
    }
    humantime::parse_duration(trimmed).map_err(|e| DurationError {
        input: input.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    }

    #[test]
    fn refuses_garbage_with_a_clear_message() {
        let err = parse_duration("five seconds").unwrap_err();
        assert!(err.to_string().contains("five seconds"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10").is_err());
    }
}
