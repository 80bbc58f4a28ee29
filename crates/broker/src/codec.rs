//! A data plane [`Message`] as an AMQP message and back: the body is the
//! payload, the CloudEvents attributes travel as headers, and every message
//! is persistent (delivery mode 2), so a confirmed one survives a broker
//! restart. The Bridge's token is never written to the broker: a consumer
//! stamps it again.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use wsbridge_dataplane::{Message, Origin, Payload, PayloadKind};

const ID: &str = "ce-id";
const SOURCE: &str = "ce-source";
const TYPE: &str = "ce-type";
/// Milliseconds since the epoch.
const TIME: &str = "ce-time-ms";
const ORIGIN: &str = "wsbridge-origin";
const KIND: &str = "wsbridge-kind";

/// Delivery mode 2: written to disk by the broker before it confirms.
const PERSISTENT: u8 = 2;

/// The body and properties that carry `msg` through the broker.
pub fn encode(msg: &Message) -> (Vec<u8>, BasicProperties) {
    let mut headers = FieldTable::default();
    let mut text = |key: &str, value: &str| {
        headers.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    };
    text(ID, msg.id());
    text(SOURCE, msg.source());
    text(TYPE, msg.event_type());
    text(
        ORIGIN,
        match msg.origin() {
            Origin::Endpoint => "endpoint",
            Origin::Published => "published",
        },
    );
    text(
        KIND,
        match msg.payload().kind() {
            PayloadKind::Text => "text",
            PayloadKind::Binary => "binary",
        },
    );
    let millis = msg
        .time()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    headers.insert(TIME.into(), AMQPValue::LongLongInt(millis));
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type(msg.content_type().into())
        .with_timestamp((millis / 1000).max(0) as u64)
        .with_headers(headers);
    if let Ok(id) = ShortString::try_new(msg.id()) {
        properties = properties.with_message_id(id);
    }
    (msg.payload().bytes().to_vec(), properties)
}

/// The message a delivery carries. A message that was not written by
/// [`encode`] (an AMQP or MQTT client of the channel) becomes a published
/// message with a new id: text when its body is UTF-8, binary otherwise.
/// Whether a message was written by wsbridge (it carries the origin
/// header); what MQTT and AMQP clients publish does not.
pub fn written_by_wsbridge(properties: &BasicProperties) -> bool {
    properties
        .headers()
        .as_ref()
        .is_some_and(|h| h.inner().contains_key(ORIGIN))
}

pub fn decode(body: Vec<u8>, properties: &BasicProperties) -> Message {
    let headers = properties.headers().as_ref();
    let text = |key: &str| -> Option<String> {
        match headers?.inner().get(key)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        }
    };
    let payload = match text(KIND).as_deref() {
        Some("binary") => Payload::binary(body),
        _ => match String::from_utf8(body) {
            Ok(s) => Payload::text(s),
            Err(e) => Payload::binary(e.into_bytes()),
        },
    };
    let origin = match text(ORIGIN).as_deref() {
        Some("endpoint") => Origin::Endpoint,
        _ => Origin::Published,
    };
    let source: Arc<str> = text(SOURCE).unwrap_or_else(|| "/wsbridge".into()).into();
    let mut msg = Message::new(payload, origin, source);
    if let Some(id) = text(ID).or_else(|| properties.message_id().as_ref().map(|s| s.as_str().to_owned())) {
        msg = msg.with_id(id);
    }
    if let Some(kind) = text(TYPE) {
        msg = msg.with_event_type(kind);
    }
    if let Some(AMQPValue::LongLongInt(millis)) = headers.and_then(|h| h.inner().get(TIME))
        && let Ok(millis) = u64::try_from(*millis)
    {
        msg = msg.with_time(SystemTime::UNIX_EPOCH + Duration::from_millis(millis));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_round_trip() {
        for payload in [
            Payload::text("{\"a\":1}"),
            Payload::binary(vec![0u8, 159, 146, 150]),
        ] {
            let sent = Message::new(payload.clone(), Origin::Endpoint, "/namespaces/ns/bridges/b")
                .with_event_type("com.example.tick");
            let (body, properties) = encode(&sent);
            assert_eq!(properties.delivery_mode(), &Some(PERSISTENT));
            let got = decode(body, &properties);
            assert_eq!(got.id(), sent.id());
            assert_eq!(got.payload(), &payload);
            assert_eq!(got.origin(), Origin::Endpoint);
            assert_eq!(got.source(), sent.source());
            assert_eq!(got.event_type(), "com.example.tick");
            assert_eq!(got.content_type(), sent.content_type());
            let millis = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis();
            assert_eq!(millis(got.time()), millis(sent.time()));
        }
    }

    #[test]
    fn a_foreign_message_is_a_publish_with_an_id() {
        let got = decode(b"hello".to_vec(), &BasicProperties::default());
        assert_eq!(got.payload().as_text(), Some("hello"));
        assert_eq!(got.origin(), Origin::Published);
        assert!(!got.id().is_empty());
        let got = decode(vec![0xff, 0xfe], &BasicProperties::default());
        assert_eq!(got.payload().kind(), PayloadKind::Binary);
    }
}
