//! The broker's URL: credentials inside, never shown.

use std::fmt;

use wsbridge_core::SecretString;

/// How long a silent connection lives when the URL does not say: with
/// heartbeats every few seconds a broker that vanished without closing the
/// TCP connection (a node lost, a partition) is noticed in seconds, not in
/// the broker's default minute.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// An `amqp://` or `amqps://` URL with its credentials. `Display` and
/// `Debug` show it without user, password or query.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    full: SecretString,
    shown: String,
}

/// A URL the broker client cannot use. Never contains the credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid RabbitMQ URL {shown}: {reason}")]
pub struct InvalidBrokerUrl {
    shown: String,
    reason: String,
}

impl BrokerUrl {
    /// Parses and checks `url`; adds `heartbeat=10` when no heartbeat is set.
    pub fn parse(url: &str) -> Result<Self, InvalidBrokerUrl> {
        let invalid = |shown: String, reason: &str| InvalidBrokerUrl {
            shown,
            reason: reason.to_string(),
        };
        let mut parsed =
            ::url::Url::parse(url).map_err(|e| invalid("(unparsable)".into(), &e.to_string()))?;
        let shown = redact(&parsed);
        if !matches!(parsed.scheme(), "amqp" | "amqps") {
            return Err(invalid(shown, "the scheme must be amqp or amqps"));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(invalid(shown, "no host"));
        }
        if !parsed.query_pairs().any(|(k, _)| k == "heartbeat") {
            parsed
                .query_pairs_mut()
                .append_pair("heartbeat", &DEFAULT_HEARTBEAT_SECS.to_string());
        }
        // lapin's own parser is the one that must accept it.
        parsed
            .as_str()
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|e| invalid(shown.clone(), &e))?;
        Ok(Self {
            full: SecretString::new(parsed.to_string()),
            shown,
        })
    }

    /// The virtual host the URL names, as the client connects to it
    /// (`/` when the URL has no path).
    pub fn vhost(&self) -> String {
        self.full
            .expose()
            .parse::<lapin::uri::AMQPUri>()
            .map(|uri| uri.vhost)
            .unwrap_or_else(|_| "/".to_string())
    }

    /// The URL with its credentials, for the client only.
    pub(crate) fn expose(&self) -> &str {
        self.full.expose()
    }
}

fn redact(url: &::url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({})", self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_never_shown() {
        let url = BrokerUrl::parse("amqp://user:s3cret@rabbit.example:5672/%2f").unwrap();
        for shown in [url.to_string(), format!("{url:?}")] {
            assert!(!shown.contains("s3cret") && !shown.contains("user"), "{shown}");
            assert!(shown.contains("rabbit.example:5672"), "{shown}");
        }
        assert!(url.expose().contains("s3cret"));
    }

    #[test]
    fn a_heartbeat_is_added_unless_given() {
        let url = BrokerUrl::parse("amqps://u:p@rabbit/vhost").unwrap();
        assert!(url.expose().ends_with("?heartbeat=10"), "{}", url.expose());
        let url = BrokerUrl::parse("amqp://u:p@rabbit/?heartbeat=3").unwrap();
        assert!(url.expose().ends_with("?heartbeat=3"), "{}", url.expose());
    }

    #[test]
    fn the_vhost_is_the_clients() {
        let vhost = |u: &str| BrokerUrl::parse(u).unwrap().vhost();
        assert_eq!(vhost("amqp://u:p@rabbit:5672/%2f"), "/");
        assert_eq!(vhost("amqp://u:p@rabbit:5672"), "/");
        assert_eq!(vhost("amqps://u:p@rabbit/wsbridge"), "wsbridge");
    }

    #[test]
    fn other_schemes_are_refused_without_showing_the_password() {
        for bad in ["http://u:s3cret@rabbit/", "amqp://u:s3cret@/x", "not a url"] {
            let err = BrokerUrl::parse(bad).unwrap_err().to_string();
            assert!(!err.contains("s3cret"), "{err}");
        }
    }
}
