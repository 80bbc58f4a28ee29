//! The secrets of the roles that deliver for every namespace (the gateway,
//! the dispatcher), which read no Secrets through the API: the controller
//! keeps a copy of what they need in one Secret, mounted into those pods as
//! a folder with one file per key, read again every [`RELOAD`] (the kubelet
//! swaps the files in when the Secret changes):
//!
//! - `{namespace}.{name}`: the `whsec_` signing secret of a signed
//!   Subscription (a namespace has no dots, so the first one splits);
//! - `bridge_{namespace}.{name}`: the token of a Bridge on a `rabbitmq`
//!   Channel, presented to subscribers with its endpoint messages (no
//!   namespace has an underscore, so the prefix cannot be one).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use wsbridge_core::{ObjectKey, SecretString};

use super::SigningKey;

/// How often the folder is read again.
pub const RELOAD: Duration = Duration::from_secs(5);

/// The prefix of a Bridge token's file.
const BRIDGE_PREFIX: &str = "bridge_";

/// The file (and Secret key) of `subscription`'s signing secret.
pub fn signing_file_name(subscription: &ObjectKey) -> String {
    format!("{}.{}", subscription.namespace, subscription.name)
}

/// The file (and Secret key) of `bridge`'s token.
pub fn bridge_token_file_name(bridge: &ObjectKey) -> String {
    format!("{BRIDGE_PREFIX}{}.{}", bridge.namespace, bridge.name)
}

/// What a file of the folder is for.
enum FileFor {
    Subscription(ObjectKey),
    Bridge(ObjectKey),
}

fn file_for(file_name: &str) -> Option<FileFor> {
    // `..data` and the kubelet's timestamped folders are not keys.
    if file_name.starts_with('.') {
        return None;
    }
    let (bridge, rest) = match file_name.strip_prefix(BRIDGE_PREFIX) {
        Some(rest) => (true, rest),
        None => (false, file_name),
    };
    let (namespace, name) = rest.split_once('.')?;
    if namespace.is_empty() || name.is_empty() {
        return None;
    }
    let key = ObjectKey::new(namespace, name);
    Some(if bridge {
        FileFor::Bridge(key)
    } else {
        FileFor::Subscription(key)
    })
}

/// Signing keys by Subscription and tokens by Bridge.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeliveryKeys {
    signing: HashMap<ObjectKey, SigningKey>,
    bridge_tokens: HashMap<ObjectKey, SecretString>,
}

impl DeliveryKeys {
    /// Reads every key in `dir`; a signing secret that is not a valid
    /// `whsec_` secret is skipped (and logged, without its value); a
    /// missing folder holds no keys.
    pub fn read(dir: &Path) -> Self {
        let mut keys = Self::default();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return keys;
        };
        for entry in entries.flatten() {
            let Some(what) = entry.file_name().to_str().and_then(file_for) else {
                continue;
            };
            let text = match std::fs::read_to_string(entry.path()) {
                Ok(text) => text,
                Err(e) => {
                    tracing::warn!(file = ?entry.file_name(), error = %e, "cannot read a delivery key");
                    continue;
                }
            };
            match what {
                FileFor::Subscription(subscription) => match SigningKey::from_whsec(&text) {
                    Ok(key) => {
                        keys.signing.insert(subscription, key);
                    }
                    Err(e) => tracing::warn!(%subscription, error = %e, "skipping an invalid signing key"),
                },
                FileFor::Bridge(bridge) => {
                    let token = text.trim();
                    if !token.is_empty() {
                        keys.bridge_tokens.insert(bridge, SecretString::new(token));
                    }
                }
            }
        }
        keys
    }

    /// The signing key of `subscription`, when the folder has one.
    pub fn signing(&self, subscription: &ObjectKey) -> Option<&SigningKey> {
        self.signing.get(subscription)
    }

    /// The token of `bridge`, when the folder has one.
    pub fn bridge_token(&self, bridge: &ObjectKey) -> Option<&SecretString> {
        self.bridge_tokens.get(bridge)
    }

    /// How many keys and tokens there are.
    pub fn len(&self) -> usize {
        self.signing.len() + self.bridge_tokens.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads `dir` now and then every [`RELOAD`] in a task of its own; the
    /// receiver sees each change (and only changes). `None`: no keys, ever.
    pub fn follow(dir: Option<PathBuf>) -> watch::Receiver<Arc<DeliveryKeys>> {
        let Some(dir) = dir else {
            return watch::channel(Arc::new(Self::default())).1;
        };
        let (tx, rx) = watch::channel(Arc::new(Self::read(&dir)));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD).await;
                let keys = Self::read(&dir);
                if tx.is_closed() {
                    return;
                }
                tx.send_if_modified(|current| {
                    let changed = **current != keys;
                    if changed {
                        tracing::info!(keys = keys.len(), "the delivery keys changed");
                        *current = Arc::new(keys.clone());
                    }
                    changed
                });
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn keys_are_files_named_after_their_owner() {
        let dir = std::env::temp_dir().join(format!("wsbridge-delivery-keys-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("..2026_12_02")).unwrap();
        let sub = ObjectKey::new("team-a", "audit.v2");
        let bridge = ObjectKey::new("team-a", "feed");
        std::fs::write(dir.join(signing_file_name(&sub)), format!("{SECRET}\n")).unwrap();
        std::fs::write(dir.join(bridge_token_file_name(&bridge)), "t0ken\n").unwrap();
        std::fs::write(dir.join("team-b.broken"), "not-whsec").unwrap();
        std::fs::write(dir.join("..data"), SECRET).unwrap();
        let keys = DeliveryKeys::read(&dir);
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(keys.signing(&sub), Some(&SigningKey::from_whsec(SECRET).unwrap()));
        assert_eq!(
            keys.bridge_token(&bridge).map(|t| t.expose().to_string()),
            Some("t0ken".into())
        );
        assert!(keys.signing(&ObjectKey::new("team-b", "broken")).is_none());
        assert!(keys.signing(&bridge).is_none(), "a token is not a signing key");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            DeliveryKeys::read(&dir).is_empty(),
            "a missing folder holds no keys"
        );
    }
}
