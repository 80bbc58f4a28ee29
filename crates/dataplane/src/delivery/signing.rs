//! Signed deliveries, as the Standard Webhooks specification defines them:
//! each request carries `webhook-id` (the message's `ce-id`, the same on
//! every retry), `webhook-timestamp` (Unix seconds of this attempt) and
//! `webhook-signature`: `v1,` and the base64 HMAC-SHA256 of
//! `{id}.{timestamp}.{body}` with the subscriber's secret. The secret is
//! written `whsec_` + base64 of 24 to 64 random bytes, as other Standard
//! Webhooks implementations read it.
//!
//! Signed per attempt rather than once per message: a verifier refuses a
//! timestamp older than a few minutes, and retries can take longer.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderName;
use sha2::Sha256;

use super::h1::HeaderLines;

/// `webhook-id`.
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// `webhook-timestamp`.
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// `webhook-signature`.
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
const MIN_SECRET_BYTES: usize = 24;
const MAX_SECRET_BYTES: usize = 64;

/// Why a signing secret cannot be used. Never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSigningSecret {
    #[error(
        "a signing secret is \"{SECRET_PREFIX}\" followed by base64; this one does not start with \"{SECRET_PREFIX}\""
    )]
    NoPrefix,
    #[error("the part after \"{SECRET_PREFIX}\" is not base64")]
    NotBase64,
    #[error(
        "the secret is {0} bytes once decoded; it must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes"
    )]
    Length(usize),
}

/// A subscriber's signing key. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// Reads a secret in its `whsec_` form (surrounding whitespace, as a
    /// Secret file written with a trailing newline has, is ignored).
    pub fn from_whsec(secret: &str) -> Result<Self, InvalidSigningSecret> {
        let encoded = secret
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(InvalidSigningSecret::NoPrefix)?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| InvalidSigningSecret::NotBase64)?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(InvalidSigningSecret::Length(key.len()));
        }
        Ok(Self(key))
    }

    /// `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
    pub fn signature(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// `headers` and the three `webhook-*` headers of one attempt, signed now.
    pub fn signed_headers(&self, headers: &HeaderLines, id: &str, body: &[u8]) -> HeaderLines {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = self.signature(id, timestamp, body);
        let mut signed = headers.clone();
        signed.push(&WEBHOOK_ID, id.as_bytes());
        signed.push(&WEBHOOK_TIMESTAMP, timestamp.to_string().as_bytes());
        signed.push(&WEBHOOK_SIGNATURE, signature.as_bytes());
        signed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference
    /// implementations (their test suites sign this payload with this secret).
    #[test]
    fn signs_like_the_reference_implementations() {
        let key = SigningKey::from_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            key.signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_must_be_whsec_base64_of_24_to_64_bytes() {
        assert_eq!(
            SigningKey::from_whsec("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(InvalidSigningSecret::NoPrefix)
        );
        assert_eq!(
            SigningKey::from_whsec("whsec_not base64!"),
            Err(InvalidSigningSecret::NotBase64)
        );
        assert_eq!(
            SigningKey::from_whsec("whsec_c2hvcnQ="),
            Err(InvalidSigningSecret::Length(5))
        );
        assert!(SigningKey::from_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").is_ok());
    }

    #[test]
    fn signed_headers_add_the_three_webhook_headers() {
        let key = SigningKey::from_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let mut base = HeaderLines::default();
        base.push(&http::header::CONTENT_TYPE, b"text/plain");
        let signed = key.signed_headers(&base, "id-1", b"hi");
        let text = String::from_utf8(signed.as_bytes().to_vec()).unwrap();
        assert!(text.starts_with("content-type: text/plain\r\nwebhook-id: id-1\r\nwebhook-timestamp: "));
        assert!(text.contains("\r\nwebhook-signature: v1,"));
        assert!(!format!("{key:?}").contains("MfKQ"));
    }
}
