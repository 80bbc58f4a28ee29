//! Finding the configuration files under the paths given, and reading them.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::errors::{ConfigError, ConfigErrors};
use super::limits::read_text;
use super::plan::Plan;

/// The YAML files under `paths` (files as given, folders searched
/// recursively for `*.yaml` and `*.yml`), sorted within each folder.
pub fn yaml_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigErrors> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => collect_dir(path, &mut out, &mut errors, &mut Vec::new()),
            Ok(_) => out.push(path.clone()),
            Err(e) => errors.push(ConfigError::about_path(path, format!("cannot read: {e}"))),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// `visiting` holds the folders being searched (canonical paths), so that a
/// symbolic link back to one of them is not followed round in circles.
fn collect_dir(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    errors: &mut Vec<ConfigError>,
    visiting: &mut Vec<PathBuf>,
) {
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if visiting.contains(&canonical) {
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(ConfigError::about_path(dir, format!("cannot read folder: {e}")));
            return;
        }
    };
    visiting.push(canonical);
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            collect_dir(&path, out, errors, visiting);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    visiting.pop();
}

/// What changes when a file is edited, added or removed: path, size and
/// modification time of every file. Polled to detect edits.
pub fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let files = yaml_files(paths).unwrap_or_default();
    files
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect()
}

/// The text of one configuration file, as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The file, as given on the command line (or found in a given folder).
    pub file: String,
    /// Its content.
    pub text: String,
}

/// The configuration files under `paths`, read.
#[derive(Debug, Default)]
pub struct Sources {
    /// The texts of the files that could be read.
    pub texts: Vec<Source>,
    /// Why the others could not (reported with the problems of the rest).
    pub unreadable: Vec<ConfigError>,
}

impl Sources {
    /// `result` (of loading `texts`), failing with the unreadable files first.
    pub fn finish(&self, result: Result<Plan, ConfigErrors>) -> Result<Plan, ConfigErrors> {
        if self.unreadable.is_empty() {
            return result;
        }
        let mut errors = self.unreadable.clone();
        if let Err(ConfigErrors(more)) = result {
            errors.extend(more);
        }
        Err(ConfigErrors(errors))
    }
}

/// The YAML files under `paths`, read; fails when there are none.
pub fn read_sources(paths: &[PathBuf]) -> Result<Sources, ConfigErrors> {
    let files = yaml_files(paths)?;
    if files.is_empty() {
        return Err(ConfigErrors(vec![ConfigError::about_file(
            describe_paths(paths),
            "no *.yaml or *.yml files found".into(),
        )]));
    }
    let mut sources = Sources::default();
    for file in &files {
        match read_text(file) {
            Ok(text) => sources.texts.push(Source {
                file: file.display().to_string(),
                text,
            }),
            Err(message) => sources.unreadable.push(ConfigError::about_path(file, message)),
        }
    }
    Ok(sources)
}

/// `paths` as one string, for errors about all of them.
pub fn describe_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
