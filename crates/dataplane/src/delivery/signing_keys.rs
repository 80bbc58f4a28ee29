//! The signing keys of the roles that deliver for every namespace (the
//! gateway, the dispatcher): one file per signed Subscription, named
//! `{namespace}.{name}` (a namespace has no dots, so the first one splits),
//! in one directory: the controller's copy of the signing secrets, a Secret
//! mounted into those pods. Read again every [`RELOAD`]; the kubelet swaps
//! the files in when the Secret changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use wsbridge_core::ObjectKey;

use super::SigningKey;

/// How often the directory is read again.
pub const RELOAD: Duration = Duration::from_secs(5);

/// The file (and Secret key) of `subscription`'s signing key.
pub fn key_file_name(subscription: &ObjectKey) -> String {
    format!("{}.{}", subscription.namespace, subscription.name)
}

/// The Subscription a file of the directory is for.
fn subscription_of(file_name: &str) -> Option<ObjectKey> {
    // `..data` and the kubelet's timestamped folders are not keys.
    if file_name.starts_with('.') {
        return None;
    }
    let (namespace, name) = file_name.split_once('.')?;
    (!namespace.is_empty() && !name.is_empty()).then(|| ObjectKey::new(namespace, name))
}

/// Signing keys by Subscription.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SigningKeys(HashMap<ObjectKey, SigningKey>);

impl SigningKeys {
    /// Reads every key in `dir`; a file that is not a valid `whsec_`
    /// secret is skipped (and logged, without its value); a missing
    /// directory holds no keys.
    pub fn read(dir: &Path) -> Self {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Self::default();
        };
        let mut keys = HashMap::new();
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(subscription) = file.to_str().and_then(subscription_of) else {
                continue;
            };
            match std::fs::read_to_string(entry.path()).map(|text| SigningKey::from_whsec(&text)) {
                Ok(Ok(key)) => {
                    keys.insert(subscription, key);
                }
                Ok(Err(e)) => tracing::warn!(%subscription, error = %e, "skipping an invalid signing key"),
                Err(e) => tracing::warn!(%subscription, error = %e, "cannot read a signing key"),
            }
        }
        Self(keys)
    }

    /// The key of `subscription`, when the directory has one.
    pub fn get(&self, subscription: &ObjectKey) -> Option<&SigningKey> {
        self.0.get(subscription)
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads `dir` now and then every [`RELOAD`] in a task of its own; the
    /// receiver sees each change (and only changes). `None`: no keys, ever.
    pub fn follow(dir: Option<PathBuf>) -> watch::Receiver<Arc<SigningKeys>> {
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
                        tracing::info!(keys = keys.len(), "the signing keys changed");
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
    fn keys_are_files_named_after_their_subscription() {
        let dir = std::env::temp_dir().join(format!("wsbridge-signing-keys-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("..2026_12_02")).unwrap();
        let sub = ObjectKey::new("team-a", "audit.v2");
        std::fs::write(dir.join(key_file_name(&sub)), format!("{SECRET}\n")).unwrap();
        std::fs::write(dir.join("team-b.broken"), "not-whsec").unwrap();
        std::fs::write(dir.join("..data"), SECRET).unwrap();
        let keys = SigningKeys::read(&dir);
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_eq!(keys.get(&sub), Some(&SigningKey::from_whsec(SECRET).unwrap()));
        assert!(keys.get(&ObjectKey::new("team-b", "broken")).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            SigningKeys::read(&dir).is_empty(),
            "a missing folder holds no keys"
        );
    }
}
