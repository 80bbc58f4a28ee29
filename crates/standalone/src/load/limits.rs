//! What a configuration file may be: a regular file, not too large, UTF-8.

use std::io::Read as _;
use std::path::Path;

/// Largest file read: far above any real configuration, small enough that
/// a stray log file or device never exhausts memory.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The text of a regular file of at most [`MAX_FILE_BYTES`], as UTF-8.
pub(super) fn read_text(file: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("cannot read: not a regular file".into());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may have grown since it was measured.
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        format!("not UTF-8 text (invalid byte at line {line}, byte offset {at}): YAML files must be UTF-8")
    })
}

fn too_large() -> String {
    format!(
        "file larger than the limit of {} MiB: split it",
        MAX_FILE_BYTES / 1024 / 1024
    )
}
