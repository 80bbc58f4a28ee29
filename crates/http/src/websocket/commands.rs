//! The JSON commands of a multiplexed connection (`GET /ws/{namespace}`),
//! shaped like the hosted platform's WebSocket API so that its clients
//! move by changing the URL.
//!
//! Client to wsbridge, one command per text frame (`id` is optional, any
//! JSON value, and comes back in the reply):
//!
//! ```json
//! {"method": "Subscribe",   "params": {"channel": "ticker"}, "id": 1}
//! {"method": "Unsubscribe", "params": {"channel": "ticker"}, "id": 2}
//! {"method": "Publish",     "params": {"channel": "ticker", "message": {"px": 1}}, "id": 3}
//! ```
//!
//! A published `message` that is a JSON string is sent as that text; any
//! other JSON value as its JSON text; with `"encoding": "base64"` the string
//! is decoded and sent as binary.
//!
//! wsbridge to client: a reply per command, `{"id": 1, "result": {...}}` or
//! `{"id": 1, "error": {"code": 403, "reason": "Forbidden", "message": "..."}}`,
//! and every message of a subscribed channel as
//! `{"method": "Message", "params": {"channel": "ticker", "message": ...}}`.
//! A text message that is a JSON object or array is embedded as it is;
//! other text as a JSON string; binary as a base64 string with
//! `"encoding": "base64"`. A subscribed channel that goes away (deleted, or
//! no longer served to remote clients) ends with
//! `{"method": "Unsubscribed", "params": {"channel": "ticker", "reason": "ChannelDeleted", "message": "..."}}`;
//! the connection stays open for its other channels.

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};
use wsbridge_dataplane::{Message, Payload, PayloadKind};

use super::Refusal;

/// A command, read.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Start receiving `channel`.
    Subscribe {
        /// Channel name in the connection's namespace.
        channel: String,
    },
    /// Stop receiving `channel`.
    Unsubscribe {
        /// Channel name in the connection's namespace.
        channel: String,
    },
    /// Publish `payload` on `channel`.
    Publish {
        /// Channel name in the connection's namespace.
        channel: String,
        /// What to publish.
        payload: Payload,
    },
}

#[derive(Deserialize)]
struct Frame {
    method: String,
    #[serde(default)]
    params: Params,
    #[serde(default)]
    id: Option<Value>,
}

#[derive(Deserialize, Default)]
struct Params {
    channel: Option<String>,
    message: Option<Value>,
    encoding: Option<String>,
}

fn bad(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, reason, message)
}

/// Reads a text frame: the command's `id` (to reply with, even when the
/// command is refused) and the command.
pub fn parse(text: &str) -> (Option<Value>, Result<Command, Refusal>) {
    let frame: Frame = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(e) => {
            return (
                None,
                Err(bad(
                    "BadCommand",
                    format!("a command is a JSON object with \"method\" and \"params\": {e}"),
                )),
            );
        }
    };
    let id = frame.id;
    (id, command(frame.method, frame.params))
}

fn command(method: String, params: Params) -> Result<Command, Refusal> {
    let channel = params
        .channel
        .filter(|c| !c.is_empty())
        .ok_or_else(|| bad("BadCommand", "params.channel names the channel"))?;
    match method.as_str() {
        m if m.eq_ignore_ascii_case("subscribe") => Ok(Command::Subscribe { channel }),
        m if m.eq_ignore_ascii_case("unsubscribe") => Ok(Command::Unsubscribe { channel }),
        m if m.eq_ignore_ascii_case("publish") => {
            let message = params
                .message
                .ok_or_else(|| bad("BadCommand", "Publish needs params.message"))?;
            let payload = payload(message, params.encoding.as_deref())?;
            Ok(Command::Publish { channel, payload })
        }
        _ => Err(bad(
            "UnknownMethod",
            format!(
                "unknown method {:?}: Subscribe, Unsubscribe or Publish",
                wsbridge_core::text::shorten(&method, 40)
            ),
        )),
    }
}

fn payload(message: Value, encoding: Option<&str>) -> Result<Payload, Refusal> {
    match (encoding, message) {
        (None, Value::String(text)) => Ok(Payload::text(text)),
        (None, other) => Ok(Payload::text(other.to_string())),
        (Some(e), Value::String(data)) if e.eq_ignore_ascii_case("base64") => STANDARD
            .decode(data)
            .map(Payload::binary)
            .map_err(|_| bad("BadMessage", "params.message is not valid base64")),
        (Some(e), _) if e.eq_ignore_ascii_case("base64") => {
            Err(bad("BadMessage", "a base64 message is a JSON string"))
        }
        (Some(_), _) => Err(bad("BadCommand", "params.encoding may only be \"base64\"")),
    }
}

/// The reply to a command that succeeded.
pub fn result(id: Option<Value>, result: Value) -> String {
    json!({"id": id, "result": result}).to_string()
}

/// The reply to a command that was refused.
pub fn error(id: Option<Value>, refusal: &Refusal) -> String {
    json!({
        "id": id,
        "error": {
            "code": refusal.status.as_u16(),
            "reason": refusal.reason,
            "message": refusal.message,
        },
    })
    .to_string()
}

/// A channel the client was subscribed to and is no longer, because the
/// channel went away (deleted, or no longer served to remote clients).
pub fn unsubscribed(channel: &str, reason: &str, message: &str) -> String {
    json!({
        "method": "Unsubscribed",
        "params": {"channel": channel, "reason": reason, "message": message},
    })
    .to_string()
}

/// A channel message, pushed to a subscribed client.
pub fn push(channel: &str, msg: &Message) -> String {
    let payload = msg.payload();
    let channel = Value::String(channel.to_owned());
    match (payload.kind(), payload.as_text()) {
        (PayloadKind::Text, Some(text)) if is_json_structure(text) => {
            // Embedded as sent: re-serialising would reorder its keys.
            format!(r#"{{"method":"Message","params":{{"channel":{channel},"message":{text}}}}}"#)
        }
        (PayloadKind::Text, Some(text)) => json!({
            "method": "Message",
            "params": {"channel": channel, "message": text},
        })
        .to_string(),
        _ => json!({
            "method": "Message",
            "params": {
                "channel": channel,
                "message": STANDARD.encode(payload.bytes()),
                "encoding": "base64",
            },
        })
        .to_string(),
    }
}

/// Whether `text` is one JSON object or array.
fn is_json_structure(text: &str) -> bool {
    let trimmed = text.trim_start();
    (trimmed.starts_with('{') || trimmed.starts_with('['))
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsbridge_dataplane::Origin;

    fn message(payload: Payload) -> Message {
        Message::new(payload, Origin::Published, "/test")
    }

    #[test]
    fn commands_are_read_with_their_id() {
        let (id, cmd) = parse(r#"{"method":"Subscribe","params":{"channel":"ticker"},"id":7}"#);
        assert_eq!(id, Some(json!(7)));
        assert_eq!(
            cmd.unwrap(),
            Command::Subscribe {
                channel: "ticker".into()
            }
        );
        let (_, cmd) = parse(r#"{"method":"Publish","params":{"channel":"t","message":{"a":1}}}"#);
        assert_eq!(
            cmd.unwrap(),
            Command::Publish {
                channel: "t".into(),
                payload: Payload::text(r#"{"a":1}"#)
            }
        );
        let (_, cmd) =
            parse(r#"{"method":"Publish","params":{"channel":"t","message":"AAE=","encoding":"base64"}}"#);
        assert_eq!(
            cmd.unwrap(),
            Command::Publish {
                channel: "t".into(),
                payload: Payload::binary(vec![0u8, 1])
            }
        );
    }

    #[test]
    fn bad_commands_are_refused_with_a_reason_and_keep_their_id() {
        for (text, reason) in [
            ("not json", "BadCommand"),
            (r#"{"method":"Subscribe","params":{}}"#, "BadCommand"),
            (
                r#"{"method":"Dance","params":{"channel":"t"},"id":"x"}"#,
                "UnknownMethod",
            ),
            (r#"{"method":"Publish","params":{"channel":"t"}}"#, "BadCommand"),
            (
                r#"{"method":"Publish","params":{"channel":"t","message":"%%","encoding":"base64"}}"#,
                "BadMessage",
            ),
        ] {
            let (_, cmd) = parse(text);
            assert_eq!(cmd.unwrap_err().reason, reason, "{text}");
        }
        let (id, _) = parse(r#"{"method":"Dance","params":{"channel":"t"},"id":"x"}"#);
        assert_eq!(id, Some(json!("x")));
    }

    #[test]
    fn pushes_embed_json_text_as_is_and_say_how_binary_is_encoded() {
        let pushed = |p| serde_json::from_str::<Value>(&push("ticker", &message(p))).unwrap();
        assert_eq!(
            pushed(Payload::text(r#"{"z":1,"a":2}"#)),
            json!({"method":"Message","params":{"channel":"ticker","message":{"z":1,"a":2}}})
        );
        assert!(push("t", &message(Payload::text(r#"{"z":1,"a":2}"#))).contains(r#"{"z":1,"a":2}"#));
        assert_eq!(pushed(Payload::text("hi"))["params"]["message"], json!("hi"));
        assert_eq!(
            pushed(Payload::text("{broken"))["params"]["message"],
            json!("{broken")
        );
        assert_eq!(
            pushed(Payload::binary(vec![0u8, 1]))["params"],
            json!({"channel":"ticker","message":"AAE=","encoding":"base64"})
        );
    }

    #[test]
    fn replies_carry_the_id_and_the_reason() {
        let refusal = Refusal::new(StatusCode::FORBIDDEN, "Forbidden", "no");
        let reply: Value = serde_json::from_str(&error(Some(json!(3)), &refusal)).unwrap();
        assert_eq!(
            reply,
            json!({"id":3,"error":{"code":403,"reason":"Forbidden","message":"no"}})
        );
        let reply: Value = serde_json::from_str(&result(None, json!({"channel":"t"}))).unwrap();
        assert_eq!(reply, json!({"id":null,"result":{"channel":"t"}}));
    }
}
