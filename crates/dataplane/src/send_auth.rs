//! The credential of a worker's send path (`POST /v1/send`): only the
//! gateway and the Bridge's own worker hold it, so nothing else that can
//! reach a worker pod can make it send to its endpoint.
//!
//! The credential of a Bridge is `HMAC-SHA256(installation key, "wsbridge
//! send v1\0" + Bridge UID)`, hex. The controller writes it into a Secret
//! owned by the Bridge, which the worker reads through `secretKeyRef`; the
//! gateway derives it from the same installation key (mounted into its pod)
//! and the Bridge's UID (from its watch of Bridges). A new installation key
//! changes every credential.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use wsbridge_core::SecretString;

/// Header that carries the credential: `Authorization: Bearer <credential>`.
pub const AUTHORIZATION_SCHEME: &str = "Bearer ";

/// Domain separation: the installation key signs nothing else this way.
const CONTEXT: &[u8] = b"wsbridge send v1\0";

/// The send credential of the Bridge with UID `bridge_uid`.
pub fn credential(installation_key: &[u8], bridge_uid: &str) -> SecretString {
    let mut mac = Hmac::<Sha256>::new_from_slice(installation_key).expect("HMAC takes a key of any length");
    mac.update(CONTEXT);
    mac.update(bridge_uid.as_bytes());
    SecretString::new(hex_lower(&mac.finalize().into_bytes()))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new installation key: 32 random bytes, hex (so that an operator may
/// as well write one with `openssl rand -hex 32`).
pub fn new_installation_key() -> String {
    hex_lower(&rand::random::<[u8; 32]>())
}

/// Whether an `Authorization` header value presents `expected`, compared
/// in constant time (the length of a credential is no secret).
pub fn presented(authorization: Option<&[u8]>, expected: &SecretString) -> bool {
    let Some(value) = authorization else {
        return false;
    };
    let Some(token) = value.strip_prefix(AUTHORIZATION_SCHEME.as_bytes()) else {
        return false;
    };
    !expected.is_empty() && bool::from(token.ct_eq(expected.expose().as_bytes()))
}

/// The `Authorization` header value presenting `credential`.
pub fn authorization(credential: &SecretString) -> String {
    format!("{AUTHORIZATION_SCHEME}{}", credential.expose())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_per_bridge_and_per_key() {
        let a = credential(b"key-1", "uid-a");
        assert_eq!(a.expose().len(), 64);
        assert_eq!(a, credential(b"key-1", "uid-a"));
        assert_ne!(a, credential(b"key-1", "uid-b"));
        assert_ne!(a, credential(b"key-2", "uid-a"));
        let key = new_installation_key();
        assert_eq!(key.len(), 64);
        assert_ne!(key, new_installation_key());
    }

    #[test]
    fn only_the_exact_bearer_credential_is_accepted() {
        let c = credential(b"key", "uid");
        let header = authorization(&c);
        assert!(presented(Some(header.as_bytes()), &c));
        assert!(!presented(None, &c));
        assert!(!presented(Some(c.expose().as_bytes()), &c), "scheme required");
        assert!(!presented(Some(b"Bearer "), &c));
        assert!(!presented(Some(format!("{header}0").as_bytes()), &c));
        let other = authorization(&credential(b"key", "other"));
        assert!(!presented(Some(other.as_bytes()), &c));
        assert!(
            !presented(Some(b"Bearer "), &SecretString::new("")),
            "no empty credential"
        );
    }
}
