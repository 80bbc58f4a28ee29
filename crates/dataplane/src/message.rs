//! The message that flows through the data plane, and its CloudEvents
//! binary-mode HTTP representation.

use std::fmt;
use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::budget::{ChargeSlot, MESSAGE_OVERHEAD, MemoryBudget, OverBudget};
use super::delivery::{HeaderLines, Settle, Settlement, is_header_value};
use wsbridge_core::secret::SecretString;

/// Where a message entered the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Received from an external WebSocket endpoint (goes to subscribers only).
    Endpoint,
    /// Published on a channel over HTTP (goes to subscribers and bridged endpoints).
    Published,
}

impl Origin {
    /// The default CloudEvents `type` for messages of this origin.
    pub fn default_event_type(self) -> &'static str {
        match self {
            Origin::Endpoint => "io.wsbridge.endpoint.message",
            Origin::Published => "io.wsbridge.channel.published",
        }
    }
}

/// Whether a payload is text (UTF-8) or binary; maps to WebSocket frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// A text frame; the bytes are valid UTF-8.
    Text,
    /// A binary frame.
    Binary,
}

/// A message body. Text payloads are guaranteed to be valid UTF-8. Cloning is
/// cheap (the bytes are reference counted).
#[derive(Clone, PartialEq, Eq)]
pub struct Payload {
    kind: PayloadKind,
    bytes: Bytes,
}

/// Bytes that were declared text but are not UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("text payload is not valid UTF-8")]
pub struct NotUtf8;

impl Payload {
    /// A text payload.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            kind: PayloadKind::Text,
            bytes: Bytes::from(text.into()),
        }
    }

    /// A text payload from bytes, checked to be UTF-8.
    pub fn text_from_bytes(bytes: Bytes) -> Result<Self, NotUtf8> {
        std::str::from_utf8(&bytes).map_err(|_| NotUtf8)?;
        Ok(Self {
            kind: PayloadKind::Text,
            bytes,
        })
    }

    /// A binary payload.
    pub fn binary(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: PayloadKind::Binary,
            bytes: bytes.into(),
        }
    }

    /// Text or binary.
    pub fn kind(&self) -> PayloadKind {
        self.kind
    }

    /// The raw bytes (for a text payload, its UTF-8 encoding).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The text, for a text payload.
    pub fn as_text(&self) -> Option<&str> {
        match self.kind {
            PayloadKind::Text => std::str::from_utf8(&self.bytes).ok(),
            PayloadKind::Binary => None,
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The HTTP `Content-Type` for this payload: `application/json` when the
    /// text parses as JSON, `text/plain` for other text,
    /// `application/octet-stream` for binary.
    pub fn content_type(&self) -> &'static str {
        match self.kind {
            PayloadKind::Binary => CONTENT_TYPE_BINARY,
            PayloadKind::Text => {
                if serde_json::from_slice::<serde::de::IgnoredAny>(&self.bytes).is_ok() {
                    CONTENT_TYPE_JSON
                } else {
                    CONTENT_TYPE_TEXT
                }
            }
        }
    }
}

impl fmt::Debug for Payload {
    /// Never prints the body (it may carry user data); only kind and size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload")
            .field("kind", &self.kind)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// `Content-Type` of JSON text.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// `Content-Type` of non-JSON text.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";
/// `Content-Type` of binary payloads.
pub const CONTENT_TYPE_BINARY: &str = "application/octet-stream";

/// `ce-specversion` header.
pub const CE_SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
/// `ce-id` header.
pub const CE_ID: HeaderName = HeaderName::from_static("ce-id");
/// `ce-source` header.
pub const CE_SOURCE: HeaderName = HeaderName::from_static("ce-source");
/// `ce-type` header.
pub const CE_TYPE: HeaderName = HeaderName::from_static("ce-type");
/// `ce-time` header.
pub const CE_TIME: HeaderName = HeaderName::from_static("ce-time");

/// One message. Shared between subscribers as `Arc<Message>` and kept small,
/// since queues hold many: the strings every message of a source shares are
/// `Arc<str>`, and the delivery headers are written once, when the message is
/// first delivered, as the header lines every subscriber's request sends.
#[derive(Clone)]
pub struct Message {
    id: Box<str>,
    payload: Payload,
    origin: Origin,
    source: Arc<str>,
    /// `None`: the origin's default type, a static string (no allocation
    /// per message).
    event_type: Option<Arc<str>>,
    time: SystemTime,
    content_type: &'static str,
    authorization: Option<HeaderValue>,
    delivery_headers: OnceLock<HeaderLines>,
    /// Who waits to hear how its delivery ended (a broker consumer).
    settle: Option<Settle>,
    /// Its bytes in the process's memory budget, once a queue took it;
    /// given back when the last reference is dropped.
    charge: ChargeSlot,
}

impl Message {
    /// A new message with a fresh unique id (UUID v4), the current time and
    /// the origin's default type. `source` becomes `ce-source` (a URI
    /// reference such as `/namespaces/default/bridges/ticker-feed`).
    pub fn new(payload: Payload, origin: Origin, source: impl Into<Arc<str>>) -> Self {
        Self {
            id: Box::from(
                &*uuid::Uuid::new_v4()
                    .hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer()),
            ),
            content_type: payload.content_type(),
            payload,
            origin,
            source: source.into(),
            event_type: None,
            time: SystemTime::now(),
            authorization: None,
            delivery_headers: OnceLock::new(),
            settle: None,
            charge: ChargeSlot::default(),
        }
    }

    /// Replaces the CloudEvents `type`.
    pub fn with_event_type(mut self, event_type: impl Into<Arc<str>>) -> Self {
        self.event_type = Some(event_type.into());
        self.delivery_headers = OnceLock::new();
        self
    }

    /// Replaces the id (e.g. to keep an id given by a publisher).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into().into_boxed_str();
        self.delivery_headers = OnceLock::new();
        self
    }

    /// Replaces the time.
    pub fn with_time(mut self, time: SystemTime) -> Self {
        self.time = time;
        self.delivery_headers = OnceLock::new();
        self
    }

    /// Presents `token` to subscribers as `Authorization: Bearer <token>`
    /// (the Bridge's token). The header is marked sensitive.
    pub fn with_subscriber_token(self, token: Option<&SecretString>) -> Self {
        self.with_authorization(token.and_then(|t| bearer_header(t).ok()))
    }

    /// Sets a prepared `Authorization` value (see [`bearer_header`]): callers
    /// that stamp many messages with the same token build it once.
    pub fn with_authorization(mut self, value: Option<HeaderValue>) -> Self {
        self.authorization = value;
        self.delivery_headers = OnceLock::new();
        self
    }

    /// The bytes this message holds while queued: payload, id, header lines
    /// and the queue entry.
    pub fn held_bytes(&self) -> u64 {
        (self.payload.len() + self.id.len()) as u64 + MESSAGE_OVERHEAD
    }

    /// Charges [`Self::held_bytes`] to `budget`, once per message however
    /// many queues share it; the charge lasts as long as the message.
    pub fn charge(&self, budget: &Arc<MemoryBudget>) -> Result<(), OverBudget> {
        self.charge.charge(budget, self.held_bytes())
    }

    /// Reports how its delivery ends to `settle` (see [`Settle`]).
    pub fn with_settle(mut self, settle: Settle) -> Self {
        self.settle = Some(settle);
        self
    }

    /// Tells the waiter, if any, how its delivery ended (the first call wins).
    pub fn settle(&self, outcome: Settlement) {
        if let Some(settle) = &self.settle {
            settle.settle(outcome);
        }
    }

    /// Unique id (`ce-id`).
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The body.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The message as a WebSocket frame: text stays text, binary stays
    /// binary. Shares the payload's bytes.
    pub fn to_frame(&self) -> tokio_tungstenite::tungstenite::Message {
        use tokio_tungstenite::tungstenite::{Message as Frame, Utf8Bytes};
        let payload = self.payload();
        match payload.kind() {
            PayloadKind::Text => match Utf8Bytes::try_from(payload.bytes().clone()) {
                Ok(text) => Frame::Text(text),
                Err(_) => Frame::Binary(payload.bytes().clone()),
            },
            PayloadKind::Binary => Frame::Binary(payload.bytes().clone()),
        }
    }
    /// Where the message came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }
    /// `ce-source`.
    pub fn source(&self) -> &str {
        &self.source
    }
    /// `ce-type`.
    pub fn event_type(&self) -> &str {
        self.event_type
            .as_deref()
            .unwrap_or(self.origin.default_event_type())
    }
    /// `ce-time`.
    pub fn time(&self) -> SystemTime {
        self.time
    }
    /// The HTTP `Content-Type` of the body.
    pub fn content_type(&self) -> &'static str {
        self.content_type
    }
    /// The headers of a delivery POST: `Content-Type`, the CloudEvents
    /// binary-mode `ce-*` headers and, when set, the (sensitive)
    /// `Authorization` header. Built on each call: deliveries use
    /// [`Self::delivery_headers`].
    pub fn http_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(8);
        self.each_header(|name, value| {
            // Every value given here passed `is_header_value`.
            if let Ok(v) = HeaderValue::from_bytes(value) {
                h.insert(name.clone(), v);
            }
        });
        if let Some(a) = &self.authorization {
            h.insert(AUTHORIZATION, a.clone());
        }
        h
    }

    /// The same headers as [`Self::http_headers`], as the header lines of a
    /// request: written on the first delivery, then shared by every
    /// subscriber's request.
    pub fn delivery_headers(&self) -> &HeaderLines {
        self.delivery_headers.get_or_init(|| {
            let mut lines = HeaderLines::with_capacity(256);
            self.each_header(|name, value| {
                lines.push(name, value);
            });
            if let Some(a) = &self.authorization {
                lines.push(&AUTHORIZATION, a.as_bytes());
            }
            lines
        })
    }

    /// Every header but `Authorization`, with a fallback for a value no
    /// header may have (an id or type given by a publisher).
    fn each_header(&self, mut header: impl FnMut(&HeaderName, &[u8])) {
        header(&CONTENT_TYPE, self.content_type().as_bytes());
        header(&CE_SPECVERSION, b"1.0");
        header(&CE_ID, valid_or(&self.id, "invalid-id"));
        header(&CE_SOURCE, valid_or(&self.source, "/wsbridge"));
        header(&CE_TYPE, valid_or(self.event_type(), "io.wsbridge.message"));
        // Formatted on the stack: no allocation.
        let mut buf = [0u8; 32];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        let time: &[u8] = match write!(cursor, "{}", humantime::format_rfc3339_millis(self.time)) {
            Ok(()) => {
                let len = cursor.position() as usize;
                &buf[..len]
            }
            Err(_) => b"1970-01-01T00:00:00Z",
        };
        header(&CE_TIME, time);
    }
}

impl fmt::Debug for Message {
    /// Never prints the body or the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("origin", &self.origin)
            .field("source", &self.source)
            .field("type", &self.event_type())
            .field("payload", &self.payload)
            .finish()
    }
}

/// `value`, or `fallback` when no header may have it.
fn valid_or<'a>(value: &'a str, fallback: &'static str) -> &'a [u8] {
    if is_header_value(value.as_bytes()) {
        value.as_bytes()
    } else {
        fallback.as_bytes()
    }
}

/// `Bearer <token>` as a sensitive header value. The error never contains
/// the token.
pub fn bearer_header(token: &SecretString) -> Result<HeaderValue, InvalidSecretHeader> {
    let mut v =
        HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| InvalidSecretHeader)?;
    v.set_sensitive(true);
    Ok(v)
}

/// A secret value that cannot be used in an HTTP header (e.g. has a newline).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret value is not a valid HTTP header value (contains control characters?)")]
pub struct InvalidSecretHeader;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_follows_the_payload() {
        assert_eq!(Payload::text(r#"{"a":1}"#).content_type(), CONTENT_TYPE_JSON);
        assert_eq!(Payload::text("[1, 2, 3]").content_type(), CONTENT_TYPE_JSON);
        assert_eq!(Payload::text("42").content_type(), CONTENT_TYPE_JSON);
        assert_eq!(Payload::text("hello").content_type(), CONTENT_TYPE_TEXT);
        assert_eq!(Payload::text("{broken").content_type(), CONTENT_TYPE_TEXT);
        assert_eq!(Payload::text("").content_type(), CONTENT_TYPE_TEXT);
        assert_eq!(
            Payload::binary(vec![0u8, 1, 2]).content_type(),
            CONTENT_TYPE_BINARY
        );
        assert_eq!(
            Payload::binary(Bytes::from_static(b"{}")).content_type(),
            CONTENT_TYPE_BINARY
        );
    }

    #[test]
    fn text_from_bytes_refuses_invalid_utf8() {
        assert!(Payload::text_from_bytes(Bytes::from_static(&[0xff, 0xfe])).is_err());
        let p = Payload::text_from_bytes(Bytes::from_static(b"ok")).unwrap();
        assert_eq!(p.as_text(), Some("ok"));
    }

    #[test]
    fn messages_carry_cloudevents_headers() {
        let m = Message::new(Payload::text("{}"), Origin::Endpoint, "/bridges/default/b");
        let h = m.http_headers();
        assert_eq!(h[CE_SPECVERSION], "1.0");
        assert_eq!(h[CE_ID], m.id());
        assert_eq!(h[CE_SOURCE], "/bridges/default/b");
        assert_eq!(h[CE_TYPE], "io.wsbridge.endpoint.message");
        assert_eq!(h[CONTENT_TYPE], CONTENT_TYPE_JSON);
        let time = h[CE_TIME].to_str().unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        let other = Message::new(Payload::text("{}"), Origin::Endpoint, "/x");
        assert_ne!(m.id(), other.id());
        assert_eq!(m.id().len(), 36);
        let typed = Message::new(Payload::text("x"), Origin::Published, "/s")
            .with_event_type("com.example.tick")
            .with_time(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123));
        let h = typed.http_headers();
        assert_eq!(h[CE_TYPE], "com.example.tick");
        assert_eq!(h[CE_TIME], "2023-11-14T22:13:20.123Z");
        let published = Message::new(Payload::text("x"), Origin::Published, "/s");
        assert_eq!(published.http_headers()[CE_TYPE], "io.wsbridge.channel.published");
        assert_eq!(published.event_type(), "io.wsbridge.channel.published");
    }

    #[test]
    fn token_header_is_sensitive_and_not_in_debug() {
        let token = SecretString::new("planted-token-123");
        let m = Message::new(Payload::text("x"), Origin::Endpoint, "/s")
            .with_subscriber_token(Some(&token))
            .with_event_type("t");
        let auth = &m.http_headers()[AUTHORIZATION];
        assert!(auth.is_sensitive());
        assert_eq!(auth, "Bearer planted-token-123");
        assert!(!format!("{m:?}").contains("planted"));
        assert!(!format!("{:?}", m.http_headers()).contains("planted"));
    }

    #[test]
    fn delivery_headers_are_the_http_headers_as_request_lines() {
        let token = SecretString::new("planted-token-123");
        let m = Message::new(Payload::binary(vec![1u8]), Origin::Published, "/s")
            .with_id("publisher\r\nx-injected: 1")
            .with_subscriber_token(Some(&token));
        let lines = String::from_utf8(m.delivery_headers().as_bytes().to_vec()).unwrap();
        let mut expected = String::new();
        for (name, value) in &m.http_headers() {
            expected.push_str(&format!("{}: {}\r\n", name, value.to_str().unwrap()));
        }
        let sorted = |text: &str| {
            let mut l: Vec<_> = text.split_terminator("\r\n").map(str::to_owned).collect();
            l.sort();
            l
        };
        assert_eq!(sorted(&lines), sorted(&expected));
        // An id no header may have is replaced, in both forms.
        assert!(
            lines.contains("ce-id: invalid-id\r\n") && !lines.contains("injected"),
            "{lines}"
        );
        assert!(lines.contains("authorization: Bearer planted-token-123\r\n"));
        assert!(!format!("{:?}", m.delivery_headers()).contains("planted"));
    }
}
