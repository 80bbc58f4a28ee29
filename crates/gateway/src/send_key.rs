//! The installation key the gateway derives each Bridge's send credential
//! from ([`wsbridge_dataplane::send_auth`]), read from a file: the Secret
//! the controller keeps, mounted into the gateway's pod (no Secret access
//! through the API). The kubelet updates the file when the key rotates; it
//! is read again every [`RELOAD`] and at once when a worker refuses the
//! credential, and the key before it is kept for workers that have not
//! rolled yet.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the key file is read again.
pub const RELOAD: Duration = Duration::from_secs(5);

/// One installation key's bytes.
pub(crate) type Key = Arc<[u8]>;

/// The current key and the one it replaced.
pub(crate) struct SendKeys {
    path: Option<PathBuf>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    current: Option<Key>,
    previous: Option<Key>,
    read: Option<Instant>,
}

impl SendKeys {
    /// Keys from `path` (`None`: the gateway holds none, and every worker
    /// refuses its sends).
    pub(crate) fn new(path: Option<PathBuf>) -> Self {
        let keys = Self {
            path,
            state: Mutex::default(),
        };
        keys.keys(true);
        keys
    }

    /// The keys to try, the current one first. `reload` reads the file
    /// now; otherwise it is read when the last reading is older than
    /// [`RELOAD`].
    pub(crate) fn keys(&self, reload: bool) -> Vec<Key> {
        let mut state = self.state.lock().expect("send key lock");
        let stale = state.read.is_none_or(|at| at.elapsed() >= RELOAD);
        if let (Some(path), true) = (&self.path, reload || stale) {
            state.read = Some(Instant::now());
            match std::fs::read(path) {
                Ok(bytes) if !bytes.is_empty() => {
                    if state.current.as_deref() != Some(bytes.as_slice()) {
                        if state.current.is_some() {
                            tracing::info!(path = %path.display(), "the send key changed");
                        }
                        state.previous = state.current.take();
                        state.current = Some(Arc::from(bytes));
                    }
                }
                Ok(_) => tracing::warn!(path = %path.display(), "the send key file is empty"),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot read the send key"),
            }
        }
        state
            .current
            .iter()
            .chain(state.previous.iter())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_key_comes_first_and_the_one_before_is_kept() {
        let dir = std::env::temp_dir().join(format!("wsbridge-send-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, b"one").unwrap();
        let keys = SendKeys::new(Some(path.clone()));
        assert_eq!(keys.keys(false), vec![Key::from(&b"one"[..])]);
        std::fs::write(&path, b"two").unwrap();
        // Not read again before RELOAD unless asked.
        assert_eq!(keys.keys(false), vec![Key::from(&b"one"[..])]);
        assert_eq!(
            keys.keys(true),
            vec![Key::from(&b"two"[..]), Key::from(&b"one"[..])]
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(keys.keys(true).len(), 2, "a missing file keeps what was read");
        assert!(SendKeys::new(None).keys(true).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
