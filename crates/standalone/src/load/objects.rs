//! Reading the objects of YAML documents: the four wsbridge kinds, checked
//! against their CRDs, and the Secrets and ConfigMaps they refer to.

use std::collections::BTreeMap;
use std::collections::btree_map::{Entry, VacantEntry};

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::SchemaCheck;
use super::errors::ConfigError;
use crate::schema;
use wsbridge_api::{self as api, BridgeSpec, ChannelSpec, EndpointSpec, SubscriptionSpec};
use wsbridge_core::names::{is_dns1123_label, is_dns1123_subdomain};
use wsbridge_core::{ObjectKey, SecretString};

/// The namespace of objects that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Where an object was defined: its file, and `Kind namespace/name`.
#[derive(Debug, Clone)]
pub(super) struct FileOrigin {
    pub file: String,
    pub label: String,
}

impl FileOrigin {
    /// A problem with `field` of the object.
    pub fn problem(&self, field: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            object: Some(self.label.clone()),
            field: Some(field.to_string()),
            message,
        }
    }
}

/// Objects of one kind by key, each with where it was defined.
pub(super) type ByKey<T> = BTreeMap<ObjectKey, (T, FileOrigin)>;

/// Objects read from files, before translation.
#[derive(Default)]
pub(super) struct Objects {
    pub endpoints: ByKey<EndpointSpec>,
    pub channels: ByKey<ChannelSpec>,
    pub bridges: ByKey<BridgeSpec>,
    pub subscriptions: ByKey<SubscriptionSpec>,
    pub secrets: ByKey<BTreeMap<String, SecretString>>,
    pub config_maps: ByKey<BTreeMap<String, String>>,
}

/// Where the problems found in one file go.
struct Report<'a> {
    file: &'a str,
    errors: &'a mut Vec<ConfigError>,
}

impl Report<'_> {
    fn problem(&mut self, object: impl Into<String>, field: Option<&str>, message: String) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            object: Some(object.into()),
            field: field.map(str::to_string),
            message,
        });
    }
}

/// What names an object: `apiVersion`, `kind` and `metadata`.
struct Identity {
    api_version: String,
    kind: String,
    key: ObjectKey,
    /// `Kind namespace/name`.
    label: String,
}

impl Objects {
    /// Reads document number `document` of `file` (its nulls pruned) into
    /// these objects; what is wrong with it goes to `errors`.
    pub fn read(
        &mut self,
        file: &str,
        document: usize,
        value: Value,
        check: SchemaCheck,
        errors: &mut Vec<ConfigError>,
    ) {
        let mut report = Report { file, errors };
        let Some(Identity {
            api_version,
            kind,
            key,
            label,
        }) = identify(document, &value, &mut report)
        else {
            return;
        };
        let origin = FileOrigin {
            file: file.to_string(),
            label,
        };
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version.as_str()));
        let object = CrdObject {
            kind: &kind,
            value: &value,
            check,
        };
        let report = &mut report;
        match (group, version, kind.as_str()) {
            ("", "v1", "Secret") => {
                if let Some(data) = secret_data(&value, &origin.label, report)
                    && let Some(slot) = vacant(&mut self.secrets, key, &origin.label, report)
                {
                    slot.insert((data, origin));
                }
            }
            ("", "v1", "ConfigMap") => {
                if let Some(slot) = vacant(&mut self.config_maps, key, &origin.label, report) {
                    slot.insert((config_map_data(&value), origin));
                }
            }
            (api::GROUP, api::VERSION, "Endpoint") => object.read_into(&mut self.endpoints, key, origin, report),
            (api::GROUP, api::VERSION, "Channel") => object.read_into(&mut self.channels, key, origin, report),
            (api::GROUP, api::VERSION, "Bridge") => object.read_into(&mut self.bridges, key, origin, report),
            (api::GROUP, api::VERSION, "Subscription") => {
                object.read_into(&mut self.subscriptions, key, origin, report)
            }
            (api::GROUP, _, _) => report.problem(
                origin.label,
                Some("apiVersion"),
                format!(
                    "unsupported {api_version} {kind}: expected {}/{} Endpoint, Channel, Bridge or Subscription",
                    api::GROUP,
                    api::VERSION
                ),
            ),
            _ => {
                tracing::warn!(file, object = %origin.label, "ignoring {api_version} {kind}: standalone reads the wsbridge kinds, Secrets and ConfigMaps only")
            }
        }
    }
}

/// The kind, key and label of the object `value`, when it has valid ones.
fn identify(document: usize, value: &Value, report: &mut Report) -> Option<Identity> {
    let in_document = format!("document {document}");
    let Some(fields) = value.as_object() else {
        report.problem(
            in_document,
            None,
            format!(
                "not a Kubernetes object: the document is {}, not a mapping with apiVersion, kind and metadata",
                type_name(value)
            ),
        );
        return None;
    };
    // Both are checked, so that both are reported when both are missing.
    let api_version = required_string(fields, "apiVersion", &in_document, report);
    let kind = required_string(fields, "kind", &in_document, report);
    let (api_version, kind) = (api_version?, kind?);
    let kind_in_document = format!("{kind} (document {document})");
    let metadata = match fields.get("metadata") {
        Some(Value::Object(m)) => Some(m),
        None => None,
        Some(other) => {
            report.problem(
                kind_in_document,
                Some("metadata"),
                format!("must be a mapping, not {}", type_name(other)),
            );
            return None;
        }
    };
    let meta = |field: &str| metadata.and_then(|m| m.get(field));
    for field in ["name", "namespace"] {
        if let Some(other) = meta(field).filter(|v| !v.is_string()) {
            report.problem(
                kind_in_document,
                Some(&format!("metadata.{field}")),
                format!("must be a string, not {}", type_name(other)),
            );
            return None;
        }
    }
    let name = meta("name").and_then(Value::as_str).unwrap_or_default();
    let namespace = meta("namespace")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_NAMESPACE);
    if name.is_empty() {
        report.problem(kind_in_document, Some("metadata.name"), "Required value".into());
        return None;
    }
    let label = format!("{kind} {namespace}/{name}");
    if !is_dns1123_subdomain(name) {
        report.problem(
            label,
            Some("metadata.name"),
            format!("invalid value {name:?}: must be a lowercase DNS-1123 subdomain"),
        );
        return None;
    }
    if !is_dns1123_label(namespace) {
        report.problem(
            label,
            Some("metadata.namespace"),
            format!("invalid value {namespace:?}: must be a lowercase DNS-1123 label"),
        );
        return None;
    }
    Some(Identity {
        api_version,
        kind,
        key: ObjectKey::new(namespace, name),
        label,
    })
}

/// The non-empty string `field` of `fields`.
fn required_string(
    fields: &serde_json::Map<String, Value>,
    field: &str,
    in_document: &str,
    report: &mut Report,
) -> Option<String> {
    let problem = match fields.get(field) {
        Some(Value::String(s)) if !s.is_empty() => return Some(s.clone()),
        None | Some(Value::Null) => "Required value".to_string(),
        Some(Value::String(_)) => "Required value: must not be empty".to_string(),
        Some(other) => format!("must be a string, not {}", type_name(other)),
    };
    report.problem(in_document, Some(field), problem);
    None
}

/// The place for `key` in `objects`, unless an object already took it.
fn vacant<'m, T>(
    objects: &'m mut ByKey<T>,
    key: ObjectKey,
    label: &str,
    report: &mut Report,
) -> Option<VacantEntry<'m, ObjectKey, (T, FileOrigin)>> {
    match objects.entry(key) {
        Entry::Vacant(slot) => Some(slot),
        Entry::Occupied(taken) => {
            let (_, previous) = taken.get();
            report.problem(label, None, format!("defined twice (also in {})", previous.file));
            None
        }
    }
}

/// A Secret's `data` (base64) and `stringData`, as the API server merges them.
/// Values are never shown in errors.
fn secret_data(value: &Value, label: &str, report: &mut Report) -> Option<BTreeMap<String, SecretString>> {
    let mut data = BTreeMap::new();
    for (k, v) in value["data"].as_object().into_iter().flatten() {
        let decoded = v
            .as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let Some(decoded) = decoded else {
            report.problem(
                label,
                Some(&format!("data.{k}")),
                "must be base64-encoded UTF-8 text (value not shown)".into(),
            );
            return None;
        };
        data.insert(k.clone(), SecretString::new(decoded));
    }
    for (k, v) in value["stringData"].as_object().into_iter().flatten() {
        let Some(text) = v.as_str() else {
            report.problem(
                label,
                Some(&format!("stringData.{k}")),
                "must be a string (value not shown)".into(),
            );
            return None;
        };
        data.insert(k.clone(), SecretString::new(text));
    }
    Some(data)
}

/// A ConfigMap's string `data`.
fn config_map_data(value: &Value) -> BTreeMap<String, String> {
    value["data"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
        .collect()
}

/// An object of one of the four wsbridge kinds: checked against its CRD and
/// its spec read the same way whatever the kind.
struct CrdObject<'a> {
    kind: &'a str,
    value: &'a Value,
    check: SchemaCheck,
}

impl CrdObject<'_> {
    /// Checks the object against its CRD (unless that was done already) and
    /// adds its spec, as `S`, to `objects`.
    fn read_into<S: DeserializeOwned>(
        &self,
        objects: &mut ByKey<S>,
        key: ObjectKey,
        origin: FileOrigin,
        report: &mut Report,
    ) {
        if self.check == SchemaCheck::Run {
            let problems = schema::validate(self.kind, self.value);
            if !problems.is_empty() {
                for p in problems {
                    report.problem(origin.label.as_str(), Some(&p.field), p.message);
                }
                return;
            }
        }
        let spec = self
            .value
            .get("spec")
            .cloned()
            .unwrap_or(Value::Object(Default::default()));
        let Some(slot) = vacant(objects, key, &origin.label, report) else {
            return;
        };
        match serde_json::from_value(spec) {
            Ok(spec) => {
                slot.insert((spec, origin));
            }
            Err(e) => report.problem(origin.label, Some("spec"), e.to_string()),
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
