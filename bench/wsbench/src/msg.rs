//! The benchmark message: 256 bytes of JSON text carrying a sequence number
//! and the wall-clock send time, so the sink can measure end-to-end latency
//! without any shared state with the source.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (wall clock, shared by all processes).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `{"seq":…,"ts":…,"pad":"xxx…"}` padded to exactly `size` bytes (at least
/// the unpadded length).
pub fn make(seq: u64, ts_ns: u64, size: usize) -> String {
    let mut s = String::with_capacity(size.max(64));
    s.push_str("{\"seq\":");
    s.push_str(&seq.to_string());
    s.push_str(",\"ts\":");
    s.push_str(&ts_ns.to_string());
    s.push_str(",\"pad\":\"");
    let used = s.len() + 2; // closing `"}`
    for _ in used..size {
        s.push('x');
    }
    s.push_str("\"}");
    s
}

/// Finds `"ts":<digits>` in a body without a JSON parser (hot path of the sink).
pub fn parse_ts(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"ts\":";
    let pos = body.windows(KEY.len()).position(|w| w == KEY)?;
    let mut v: u64 = 0;
    let mut any = false;
    for &b in &body[pos + KEY.len()..] {
        if b.is_ascii_digit() {
            v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
            any = true;
        } else {
            break;
        }
    }
    any.then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_size() {
        let m = make(42, 1_700_000_000_123_456_789, 256);
        assert_eq!(m.len(), 256);
        assert_eq!(parse_ts(m.as_bytes()), Some(1_700_000_000_123_456_789));
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["seq"], 42);
    }
}
