//! The WebSocket opening handshake (RFC 6455 §4.2) and where its token
//! comes from.
//!
//! Browsers cannot set headers on a WebSocket, so, as kube-apiserver does
//! for exec and attach, a token may ride in `Sec-WebSocket-Protocol` as
//! `base64url.bearer.authorization.k8s.io.<base64url token>`. A browser
//! fails a handshake whose answer names none of the protocols it offered,
//! and echoing the token back would put it in a response header, so a
//! client that sends a token this way also offers [`PROTOCOL`], which is
//! the one selected.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use wsbridge_core::SecretString;

use super::Refusal;

/// The subprotocol wsbridge selects when a client offers it.
pub const PROTOCOL: &str = "wsbridge";

/// The Kubernetes convention for a bearer token in a subprotocol.
pub const TOKEN_PROTOCOL_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// An upgrade request, checked.
#[derive(Debug)]
pub struct Upgrade {
    /// `Sec-WebSocket-Key`.
    key: String,
    /// The subprotocol to select, when the client offered one we speak.
    protocol: Option<&'static str>,
    /// The client's token, from `Authorization` or the subprotocol.
    pub token: Option<SecretString>,
}

impl Upgrade {
    /// Reads an upgrade request: `Ok(None)` when it is not a version 13
    /// WebSocket upgrade at all; a refusal when its token is malformed.
    pub fn read(headers: &HeaderMap) -> Result<Option<Self>, Refusal> {
        let Some(key) = websocket_key(headers) else {
            return Ok(None);
        };
        let offered: Vec<&str> = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let protocol = offered.contains(&PROTOCOL).then_some(PROTOCOL);
        let from_protocol = offered
            .iter()
            .find_map(|p| p.strip_prefix(TOKEN_PROTOCOL_PREFIX))
            .map(protocol_token)
            .transpose()?;
        if from_protocol.is_some() && protocol.is_none() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "SubprotocolRequired",
                format!(
                    "a token sent as a subprotocol needs the subprotocol \"{PROTOCOL}\" offered beside it"
                ),
            ));
        }
        let from_header = bearer(headers)?;
        Ok(Some(Self {
            key,
            protocol,
            token: from_protocol.or(from_header),
        }))
    }

    /// The `101 Switching Protocols` answer.
    pub fn accept(&self) -> Response {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(self.key.as_bytes())) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = self.protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
        }
        response
    }
}

/// `426` for a GET that is not a WebSocket upgrade.
pub fn upgrade_required(what: &str) -> Response {
    crate::publish::error(
        StatusCode::UPGRADE_REQUIRED,
        "UpgradeRequired",
        format!("GET {what} needs a WebSocket upgrade (version 13); publish with POST"),
    )
}

/// The client's `Sec-WebSocket-Key`, when the request is a version 13
/// WebSocket upgrade.
fn websocket_key(headers: &HeaderMap) -> Option<String> {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return None;
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION)?.as_bytes() != b"13" {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?.to_str().ok()?;
    (!key.is_empty()).then(|| key.to_owned())
}

fn unauthenticated(message: &str) -> Refusal {
    Refusal::new(StatusCode::UNAUTHORIZED, "Unauthenticated", message)
}

/// The token of a `base64url.bearer.authorization.k8s.io.` subprotocol.
fn protocol_token(encoded: &str) -> Result<SecretString, Refusal> {
    let bad = || unauthenticated("the token subprotocol must carry a base64url-encoded bearer token");
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| bad())?;
    let token = String::from_utf8(bytes).map_err(|_| bad())?;
    if token.trim().is_empty() {
        return Err(bad());
    }
    Ok(SecretString::new(token.trim()))
}

/// The token of an `Authorization: Bearer` header; none without the header.
fn bearer(headers: &HeaderMap) -> Result<Option<SecretString>, Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || unauthenticated("the Authorization header must be \"Bearer <token>\"");
    let value = value.to_str().map_err(|_| bad())?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(bad)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(bad());
    }
    Ok(Some(SecretString::new(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(extra: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]
        .iter()
        .chain(extra)
        {
            headers.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn a_plain_get_is_no_upgrade() {
        assert!(Upgrade::read(&HeaderMap::new()).unwrap().is_none());
    }

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        let up = Upgrade::read(&upgrade(&[])).unwrap().unwrap();
        let response = up.accept();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            response.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(response.headers().get(header::SEC_WEBSOCKET_PROTOCOL).is_none());
    }

    #[test]
    fn a_token_comes_from_the_subprotocol_and_wsbridge_is_selected() {
        let offer = format!(
            "{PROTOCOL}, {TOKEN_PROTOCOL_PREFIX}{}",
            URL_SAFE_NO_PAD.encode("s3cr3t")
        );
        let up = Upgrade::read(&upgrade(&[("sec-websocket-protocol", &offer)]))
            .unwrap()
            .unwrap();
        assert_eq!(up.token.as_ref().map(SecretString::expose), Some("s3cr3t"));
        let response = up.accept();
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_PROTOCOL], PROTOCOL);
    }

    #[test]
    fn a_token_comes_from_the_authorization_header() {
        let up = Upgrade::read(&upgrade(&[("authorization", "Bearer abc")]))
            .unwrap()
            .unwrap();
        assert_eq!(up.token.as_ref().map(SecretString::expose), Some("abc"));
    }

    #[test]
    fn malformed_tokens_are_refused_without_echoing_them() {
        let lone = format!("{TOKEN_PROTOCOL_PREFIX}{}", URL_SAFE_NO_PAD.encode("s3cr3t"));
        for extra in [
            ("sec-websocket-protocol", lone.as_str()),
            (
                "sec-websocket-protocol",
                "wsbridge, base64url.bearer.authorization.k8s.io.!!!",
            ),
            ("authorization", "Basic czNjcjN0"),
            ("authorization", "Bearer   "),
        ] {
            let refusal = Upgrade::read(&upgrade(&[extra])).unwrap_err();
            assert!(refusal.status.is_client_error(), "{extra:?}");
            assert!(!refusal.message.contains("s3cr3t") && !refusal.message.contains("czNjcjN0"));
        }
    }
}
