//! Reading the configuration: YAML files and folders of the four kinds plus
//! `v1` Secrets (and ConfigMaps, for CA bundles), validated the way the API
//! server validates them, references checked, and translated into data plane
//! values.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::schema;
use wsbridge_api::{self as api, BridgeSpec, ChannelSpec, EndpointSpec, SubscriptionSpec};
use wsbridge_core::ObjectKey;
use wsbridge_core::SecretString;
use wsbridge_dataplane::endpoint::EndpointConfig;
use wsbridge_dataplane::routing::{BridgeInfo, ChannelInfo, SubscriptionInfo};
use wsbridge_translate::{self as translate, SecretLookupError, SecretSource};

/// The namespace of objects that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

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

/// Where an object was read from.
#[derive(Debug, Clone)]
struct Origin {
    file: String,
    label: String,
}

/// A Bridge, ready to run: its channel and its endpoint connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgePlan {
    /// For the routing index.
    pub info: BridgeInfo,
    /// The channel it feeds.
    pub channel: ObjectKey,
    /// The Endpoint (for logs).
    pub endpoint: ObjectKey,
    /// The connection's configuration (Endpoint spec + secrets + token).
    pub config: EndpointConfig,
}

/// A Channel, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPlan {
    /// For the routing index.
    pub info: ChannelInfo,
    /// Largest message accepted on the publish path.
    pub max_message_bytes: usize,
}

/// A valid configuration, translated into data plane values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Channels by key.
    pub channels: BTreeMap<ObjectKey, ChannelPlan>,
    /// Subscriptions by key.
    pub subscriptions: BTreeMap<ObjectKey, SubscriptionInfo>,
    /// Bridges by key.
    pub bridges: BTreeMap<ObjectKey, BridgePlan>,
    /// Endpoints read (counted in summaries).
    pub endpoints: usize,
    /// Secrets read (counted in summaries).
    pub secrets: usize,
}

impl Plan {
    /// A one-line summary for logs and `--check`.
    pub fn summary(&self) -> String {
        format!(
            "{} channel(s), {} bridge(s), {} endpoint(s), {} subscription(s), {} secret(s)",
            self.channels.len(),
            self.bridges.len(),
            self.endpoints,
            self.subscriptions.len(),
            self.secrets
        )
    }
}

/// The YAML files under `paths` (files as given, folders searched
/// recursively for `*.yaml` and `*.yml`), sorted within each folder.
pub fn yaml_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigErrors> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => collect_dir(path, &mut out, &mut errors, &mut Vec::new()),
            Ok(_) => out.push(path.clone()),
            Err(e) => errors.push(file_error(path, format!("cannot read: {e}"))),
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
            errors.push(file_error(dir, format!("cannot read folder: {e}")));
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

fn file_error(path: &Path, message: String) -> ConfigError {
    ConfigError::about_file(path.display().to_string(), message)
}

/// Objects read from files, before translation.
#[derive(Default)]
struct Objects {
    endpoints: BTreeMap<ObjectKey, (EndpointSpec, Origin)>,
    channels: BTreeMap<ObjectKey, (ChannelSpec, Origin)>,
    bridges: BTreeMap<ObjectKey, (BridgeSpec, Origin)>,
    subscriptions: BTreeMap<ObjectKey, (SubscriptionSpec, Origin)>,
    secrets: BTreeMap<ObjectKey, (BTreeMap<String, SecretString>, Origin)>,
    config_maps: BTreeMap<ObjectKey, (BTreeMap<String, String>, Origin)>,
}

/// The text of one configuration file, as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The file, as given on the command line (or found in a given folder).
    pub file: String,
    /// Its content.
    pub text: String,
}

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
            Err(message) => sources.unreadable.push(file_error(file, message)),
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

/// Parses, validates and translates configuration texts.
pub fn load_sources(sources: &[Source], check: SchemaCheck) -> Result<Plan, ConfigErrors> {
    let mut errors = Vec::new();
    let mut objects = Objects::default();
    for source in sources {
        parse_source(source, check, &mut objects, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let plan = plan(&objects, &mut errors);
    if errors.is_empty() {
        Ok(plan)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Largest file read: far above any real configuration, small enough that
/// a stray log file or device never exhausts memory.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Deepest nesting of flow collections (`[`, `{`) accepted. The YAML parser
/// takes time quadratic in this depth, and anything deeper than 128 levels
/// fails later anyway; refusing it first keeps the time bounded.
pub const MAX_FLOW_DEPTH: usize = 256;

/// The text of a regular file of at most [`MAX_FILE_BYTES`], as UTF-8.
fn read_text(file: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("cannot read: not a regular file".into());
    }
    let too_large = || {
        format!(
            "file larger than the limit of {} MiB: split it",
            MAX_FILE_BYTES / 1024 / 1024
        )
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
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

/// The line where flow collections nest deeper than `limit`, if they do.
/// Quoted scalars and comments are skipped; elsewhere brackets are counted
/// as they come, which can only over-estimate the depth.
pub fn flow_depth_exceeded(text: &str, limit: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut depth, mut line, mut i) = (0usize, 1usize, 0usize);
    // The last byte outside a scalar that can precede a quoted scalar.
    let mut token_start = true;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' => {
                line += 1;
                token_start = true;
                if bytes[i + 1..].starts_with(b"---") || bytes[i + 1..].starts_with(b"...") {
                    depth = 0;
                }
            }
            b'#' if token_start || i == 0 || bytes[i - 1].is_ascii_whitespace() => {
                while i + 1 < bytes.len() && bytes[i + 1] != b'\n' {
                    i += 1;
                }
            }
            b'"' | b'\'' if token_start => {
                // Skip to the closing quote (`\"` and `''` are escapes).
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' if b == b'"' => i += 1,
                        b'\'' if b == b'\'' && bytes.get(i + 1) == Some(&b'\'') => i += 1,
                        c if c == b => break,
                        b'\n' => line += 1,
                        _ => {}
                    }
                    i += 1;
                }
                token_start = false;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Some(line);
                }
                token_start = true;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                token_start = false;
            }
            b',' | b':' | b'-' | b'?' => token_start = true,
            c if c.is_ascii_whitespace() => {}
            _ => token_start = false,
        }
        i += 1;
    }
    None
}

fn parse_source(source: &Source, check: SchemaCheck, objects: &mut Objects, errors: &mut Vec<ConfigError>) {
    let Source { file: name, text } = source;
    let error = |message: String| ConfigError::about_file(name.as_str(), message);
    if let Some(line) = flow_depth_exceeded(text, MAX_FLOW_DEPTH) {
        errors.push(error(format!(
            "invalid YAML: collections nested deeper than {MAX_FLOW_DEPTH} levels at line {line}"
        )));
        return;
    }
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let mut value: Value = match StrictValue::deserialize(document) {
            Ok(v) => v.0,
            Err(e) => {
                errors.push(error(format!("invalid YAML: {e}")));
                return;
            }
        };
        if value.is_null() {
            continue;
        }
        schema::prune_nulls(&mut value);
        read_object(name, index + 1, value, check, objects, errors);
    }
}

/// A YAML document as JSON, refusing what the API server refuses and
/// `serde_json::Value` would let through: duplicate keys (the last would
/// silently win), and numbers JSON cannot hold.
struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::from)
            .map_err(|_| E::custom(format!("number {v} is out of range")))
    }

    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Value, E> {
        u64::try_from(v)
            .map(Value::from)
            .map_err(|_| E::custom(format!("number {v} is out of range")))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a number JSON can hold")))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            let StrictValue(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

fn read_object(
    file: &str,
    document: usize,
    value: Value,
    check: SchemaCheck,
    objects: &mut Objects,
    errors: &mut Vec<ConfigError>,
) {
    let mut error = |object: Option<String>, field: Option<&str>, message: String| {
        errors.push(ConfigError {
            file: file.to_string(),
            object,
            field: field.map(str::to_string),
            message,
        })
    };
    let Some(fields) = value.as_object() else {
        error(
            Some(format!("document {document}")),
            None,
            format!(
                "not a Kubernetes object: the document is {}, not a mapping with apiVersion, kind and metadata",
                type_name(&value)
            ),
        );
        return;
    };
    let mut required = |field: &str, at: Option<&Value>| -> Option<String> {
        let problem = match at {
            Some(Value::String(s)) if !s.is_empty() => return Some(s.clone()),
            None | Some(Value::Null) => "Required value".to_string(),
            Some(Value::String(_)) => "Required value: must not be empty".to_string(),
            Some(other) => format!("must be a string, not {}", type_name(other)),
        };
        error(Some(format!("document {document}")), Some(field), problem);
        None
    };
    let (Some(api_version), Some(kind)) = (
        required("apiVersion", fields.get("apiVersion")),
        required("kind", fields.get("kind")),
    ) else {
        return;
    };
    let metadata = match fields.get("metadata") {
        Some(Value::Object(m)) => Some(m),
        None => None,
        Some(other) => {
            error(
                Some(format!("{kind} (document {document})")),
                Some("metadata"),
                format!("must be a mapping, not {}", type_name(other)),
            );
            return;
        }
    };
    let meta = |field: &str| metadata.and_then(|m| m.get(field));
    for field in ["name", "namespace"] {
        if let Some(other) = meta(field).filter(|v| !v.is_string()) {
            error(
                Some(format!("{kind} (document {document})")),
                Some(&format!("metadata.{field}")),
                format!("must be a string, not {}", type_name(other)),
            );
            return;
        }
    }
    let name = meta("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let namespace = meta("namespace")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_string();
    let label = format!("{kind} {namespace}/{name}");
    if name.is_empty() {
        error(
            Some(format!("{kind} (document {document})")),
            Some("metadata.name"),
            "Required value".into(),
        );
        return;
    }
    let dns = api::is_dns1123_subdomain(&name);
    if !dns || name.len() > 253 {
        error(
            Some(label.clone()),
            Some("metadata.name"),
            format!("invalid value {name:?}: must be a lowercase DNS-1123 subdomain"),
        );
        return;
    }
    if namespace.len() > 63 || namespace.contains('.') || !api::is_dns1123_subdomain(&namespace) {
        error(
            Some(label.clone()),
            Some("metadata.namespace"),
            format!("invalid value {namespace:?}: must be a lowercase DNS-1123 label"),
        );
        return;
    }
    let key = ObjectKey::new(namespace, name);
    let origin = Origin {
        file: file.to_string(),
        label: label.clone(),
    };
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version.as_str()));
    let duplicate = |previous: &Origin| {
        (
            Some(label.clone()),
            None::<&str>,
            format!("defined twice (also in {})", previous.file),
        )
    };
    match (group, version, kind.as_str()) {
        ("", "v1", "Secret") => {
            let mut data = BTreeMap::new();
            for (k, v) in value["data"].as_object().into_iter().flatten() {
                let decoded = v
                    .as_str()
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                    .and_then(|b| String::from_utf8(b).ok());
                match decoded {
                    Some(d) => {
                        data.insert(k.clone(), SecretString::new(d));
                    }
                    None => {
                        error(
                            Some(label.clone()),
                            Some(&format!("data.{k}")),
                            "must be base64-encoded UTF-8 text (value not shown)".into(),
                        );
                        return;
                    }
                }
            }
            for (k, v) in value["stringData"].as_object().into_iter().flatten() {
                match v.as_str() {
                    Some(s) => {
                        data.insert(k.clone(), SecretString::new(s));
                    }
                    None => {
                        error(
                            Some(label.clone()),
                            Some(&format!("stringData.{k}")),
                            "must be a string (value not shown)".into(),
                        );
                        return;
                    }
                }
            }
            if let Some((_, prev)) = objects.secrets.get(&key) {
                let (o, f, m) = duplicate(prev);
                error(o, f, m);
                return;
            }
            objects.secrets.insert(key, (data, origin));
        }
        ("", "v1", "ConfigMap") => {
            let data = value["data"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect();
            if let Some((_, prev)) = objects.config_maps.get(&key) {
                let (o, f, m) = duplicate(prev);
                error(o, f, m);
                return;
            }
            objects.config_maps.insert(key, (data, origin));
        }
        (api::GROUP, api::VERSION, "Endpoint" | "Channel" | "Bridge" | "Subscription") => {
            let problems = match check {
                SchemaCheck::Run => schema::validate(&kind, &value),
                SchemaCheck::Passed => Vec::new(),
            };
            if !problems.is_empty() {
                for p in problems {
                    error(Some(label.clone()), Some(&p.field), p.message);
                }
                return;
            }
            let spec = value
                .get("spec")
                .cloned()
                .unwrap_or(Value::Object(Default::default()));
            macro_rules! insert {
                ($map:ident) => {{
                    if let Some((_, prev)) = objects.$map.get(&key) {
                        let (o, f, m) = duplicate(prev);
                        error(o, f, m);
                        return;
                    }
                    match serde_json::from_value(spec) {
                        Ok(spec) => {
                            objects.$map.insert(key, (spec, origin));
                        }
                        Err(e) => error(Some(label.clone()), Some("spec"), e.to_string()),
                    }
                }};
            }
            match kind.as_str() {
                "Endpoint" => insert!(endpoints),
                "Channel" => insert!(channels),
                "Bridge" => insert!(bridges),
                _ => insert!(subscriptions),
            }
        }
        (api::GROUP, _, _) => error(
            Some(label),
            Some("apiVersion"),
            format!(
                "unsupported {api_version} {kind}: expected {}/{} Endpoint, Channel, Bridge or Subscription",
                api::GROUP,
                api::VERSION
            ),
        ),
        _ => {
            tracing::warn!(file, object = %label, "ignoring {api_version} {kind}: standalone reads the wsbridge kinds, Secrets and ConfigMaps only")
        }
    }
}

/// `a string`, `a list`, ... for messages about a value of the wrong type.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

struct Secrets<'a> {
    namespace: &'a str,
    objects: &'a Objects,
}

impl SecretSource for Secrets<'_> {
    fn get(&self, secret: &str, key: &str) -> Result<SecretString, SecretLookupError> {
        let (data, _) = self
            .objects
            .secrets
            .get(&ObjectKey::new(self.namespace, secret))
            .ok_or_else(|| SecretLookupError::SecretNotFound(secret.to_string()))?;
        data.get(key)
            .cloned()
            .ok_or_else(|| SecretLookupError::KeyNotFound {
                secret: secret.to_string(),
                key: key.to_string(),
            })
    }
}

fn plan(objects: &Objects, errors: &mut Vec<ConfigError>) -> Plan {
    let mut plan = Plan {
        endpoints: objects.endpoints.len(),
        secrets: objects.secrets.len(),
        ..Plan::default()
    };
    let mut fail = |origin: &Origin, field: &str, message: String| {
        errors.push(ConfigError {
            file: origin.file.clone(),
            object: Some(origin.label.clone()),
            field: Some(field.to_string()),
            message,
        })
    };
    for (key, (spec, origin)) in &objects.channels {
        match translate::channel_info(&key.namespace, spec) {
            Ok(info) => {
                plan.channels.insert(
                    key.clone(),
                    ChannelPlan {
                        info,
                        max_message_bytes: translate::channel_max_message_bytes(spec),
                    },
                );
            }
            Err(e) => fail(origin, &e.field, e.message),
        }
    }
    for (key, (spec, origin)) in &objects.subscriptions {
        let channel = key.sibling(&spec.channel);
        if !objects.channels.contains_key(&channel) {
            fail(origin, "spec.channel", format!("Channel {channel} not found"));
            continue;
        }
        match translate::subscription_info(&key.namespace, spec) {
            Ok(info) => {
                plan.subscriptions.insert(key.clone(), info);
            }
            Err(e) => fail(origin, &e.field, e.message),
        }
    }
    for (key, (spec, origin)) in &objects.bridges {
        let channel = key.sibling(&spec.channel);
        let endpoint_key = key.sibling(&spec.endpoint);
        if !objects.channels.contains_key(&channel) {
            fail(origin, "spec.channel", format!("Channel {channel} not found"));
            continue;
        }
        let Some((endpoint, endpoint_origin)) = objects.endpoints.get(&endpoint_key) else {
            fail(
                origin,
                "spec.endpoint",
                format!("Endpoint {endpoint_key} not found"),
            );
            continue;
        };
        let source = Secrets {
            namespace: &key.namespace,
            objects,
        };
        let mut resolved = match translate::resolve_secrets(endpoint, Some(spec), &source) {
            // The Bridge's own reference is reported on the Bridge, the
            // Endpoint's on the Endpoint.
            Err(e) if e.field == "spec.tokenSecretRef" => {
                fail(origin, &e.field, e.message);
                continue;
            }
            Err(e) => {
                fail(endpoint_origin, &e.field, e.message);
                continue;
            }
            Ok(r) => r,
        };
        if let Some(ca) = endpoint.tls.as_ref().and_then(|t| t.ca_config_map_ref.as_ref()) {
            let found = objects
                .config_maps
                .get(&key.sibling(&ca.name))
                .and_then(|(data, _)| data.get(&ca.key));
            match found {
                Some(pem) => resolved.endpoint_ca = Some(pem.clone()),
                None => {
                    fail(
                        endpoint_origin,
                        "spec.tls.caConfigMapRef",
                        format!("ConfigMap {:?} with key {:?} not found", ca.name, ca.key),
                    );
                    continue;
                }
            }
        }
        match translate::endpoint_config(&key.namespace, &key.name, endpoint, &resolved) {
            Ok(config) => {
                plan.bridges.insert(
                    key.clone(),
                    BridgePlan {
                        info: translate::bridge_info(spec),
                        channel,
                        endpoint: endpoint_key,
                        config,
                    },
                );
            }
            Err(e) => fail(endpoint_origin, &e.field, e.message),
        }
    }
    plan
}
