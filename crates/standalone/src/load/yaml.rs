//! YAML to JSON values: a pre-scan that bounds the parser's work, and a
//! strict reading of each document.

use std::fmt;

use serde::Deserialize as _;
use serde_json::Value;

/// Deepest nesting of flow collections (`[`, `{`) accepted. The YAML parser
/// takes time quadratic in this depth, and anything deeper than 128 levels
/// fails later anyway; refusing it first keeps the time bounded.
pub const MAX_FLOW_DEPTH: usize = 256;

/// The documents of `text`, each as JSON or why it is not valid YAML.
pub(super) fn documents(text: &str) -> Result<impl Iterator<Item = Result<Value, String>> + '_, String> {
    if let Some(line) = flow_depth_exceeded(text, MAX_FLOW_DEPTH) {
        return Err(format!(
            "invalid YAML: collections nested deeper than {MAX_FLOW_DEPTH} levels at line {line}"
        ));
    }
    Ok(serde_norway::Deserializer::from_str(text).map(|document| {
        StrictValue::deserialize(document)
            .map(|v| v.0)
            .map_err(|e| format!("invalid YAML: {e}"))
    }))
}

/// The line where flow collections nest deeper than `limit`, if they do.
/// Quoted scalars and comments are skipped; elsewhere brackets are counted
/// as they come, which can only over-estimate the depth.
pub fn flow_depth_exceeded(text: &str, limit: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut depth, mut line, mut i) = (0usize, 1usize, 0usize);
    // The last byte outside a scalar that can precede a quoted scalar.
    let mut token_start = true;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' => {
                line += 1;
                token_start = true;
                if bytes[i + 1..].starts_with(b"---") || bytes[i + 1..].starts_with(b"...") {
                    depth = 0;
                }
            }
            b'#' if token_start || i == 0 || bytes[i - 1].is_ascii_whitespace() => {
                while i + 1 < bytes.len() && bytes[i + 1] != b'\n' {
                    i += 1;
                }
            }
            b'"' | b'\'' if token_start => {
                // Skip to the closing quote (`\"` and `''` are escapes).
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' if b == b'"' => i += 1,
                        b'\'' if b == b'\'' && bytes.get(i + 1) == Some(&b'\'') => i += 1,
                        c if c == b => break,
                        b'\n' => line += 1,
                        _ => {}
                    }
                    i += 1;
                }
                token_start = false;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Some(line);
                }
                token_start = true;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                token_start = false;
            }
            b',' | b':' | b'-' | b'?' => token_start = true,
            c if c.is_ascii_whitespace() => {}
            _ => token_start = false,
        }
        i += 1;
    }
    None
}

/// A YAML document as JSON, refusing what the API server refuses and
/// `serde_json::Value` would let through: duplicate keys (the last would
/// silently win), and numbers JSON cannot hold.
///
/// serde_norway hands duplicate keys to the visitor; only its own `Value`
/// refuses them, and converting that to JSON would still merge `1` with
/// `"1"`, turn `.nan` into null and a tagged value into a mapping.
struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::from)
            .map_err(|_| E::custom(format!("number {v} is out of range")))
    }

    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Value, E> {
        u64::try_from(v)
            .map(Value::from)
            .map_err(|_| E::custom(format!("number {v} is out of range")))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a number JSON can hold")))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            let StrictValue(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}
