//! Reading the configuration: YAML files and folders of the four kinds plus
//! `v1` Secrets (and ConfigMaps, for CA bundles), validated the way the API
//! server validates them, references checked, and translated into data plane
//! values.
//!
//! `files` finds and reads the files within the `limits`, `yaml` turns each
//! document into JSON, `objects` reads the objects and `plan` translates
//! them.

mod errors;
mod files;
mod limits;
mod objects;
mod plan;
mod yaml;

use std::path::PathBuf;

pub use errors::{ConfigError, ConfigErrors};
pub use files::{Source, Sources, describe_paths, fingerprint, read_sources, yaml_files};
pub use limits::MAX_FILE_BYTES;
pub use objects::DEFAULT_NAMESPACE;
pub use plan::{BridgePlan, ChannelPlan, Plan};
pub use yaml::{MAX_FLOW_DEPTH, flow_depth_exceeded};

use crate::schema;
use objects::Objects;

/// Whether objects are checked against the CRDs' schema and CEL rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaCheck {
    /// Check them here.
    Run,
    /// These exact sources already passed the check (in a validator process).
    Passed,
}

/// Reads, validates and translates the configuration under `paths`.
/// Every problem is reported, each naming its file, object and field.
pub fn load(paths: &[PathBuf]) -> Result<Plan, ConfigErrors> {
    let sources = read_sources(paths)?;
    sources.finish(load_sources(&sources.texts, SchemaCheck::Run))
}

/// Parses, validates and translates configuration texts.
pub fn load_sources(sources: &[Source], check: SchemaCheck) -> Result<Plan, ConfigErrors> {
    let mut errors = Vec::new();
    let mut objects = Objects::default();
    for source in sources {
        read_source(source, check, &mut objects, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let plan = plan::plan(&objects, &mut errors);
    if errors.is_empty() {
        Ok(plan)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Reads the objects of one file, up to its first YAML error.
fn read_source(source: &Source, check: SchemaCheck, objects: &mut Objects, errors: &mut Vec<ConfigError>) {
    let invalid = |message: String| ConfigError::about_file(source.file.as_str(), message);
    let documents = match yaml::documents(&source.text) {
        Ok(documents) => documents,
        Err(message) => return errors.push(invalid(message)),
    };
    for (index, document) in documents.enumerate() {
        let mut value = match document {
            Ok(value) => value,
            Err(message) => return errors.push(invalid(message)),
        };
        if value.is_null() {
            continue;
        }
        schema::prune_nulls(&mut value);
        objects.read(&source.file, index + 1, value, check, errors);
    }
}
