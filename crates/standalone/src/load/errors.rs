//! Problems in the configuration, each naming its file, object and field.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One problem in the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigError {
    /// The file, as given on the command line (or found in a given folder).
    pub file: String,
    /// `Kind namespace/name`, when the problem is about one object.
    pub object: Option<String>,
    /// `spec.port`, when the problem is about one field.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// A problem with a file (or list of files) as a whole.
    pub fn about_file(file: impl Into<String>, message: String) -> Self {
        Self {
            file: file.into(),
            object: None,
            field: None,
            message,
        }
    }

    /// A problem with the file at `path` as a whole.
    pub(super) fn about_path(path: &Path, message: String) -> Self {
        Self::about_file(path.display().to_string(), message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file)?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if let Some(field) = self.field.as_deref().filter(|f| !f.is_empty()) {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found; the configuration is used only when there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
