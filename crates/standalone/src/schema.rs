//! Validation of objects read from files against the same schema the API
//! server enforces: the structural OpenAPI schema of the CRD (with unknown
//! fields refused, as `kubectl` does with strict field validation) and then
//! the CEL rules (`x-kubernetes-validations`), evaluated by kube-cel.

use std::collections::HashMap;
use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use kube::Resource;
use serde_json::Value;

use wsbridge_api::{self as api, Bridge, Channel, Endpoint, Subscription};
use wsbridge_core::text::shorten;

/// One problem with one field of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, `spec.port`; empty for the object as a whole.
    pub field: String,
    /// What is wrong, e.g. `must be <= 65535`.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

fn validators() -> &'static HashMap<String, jsonschema::Validator> {
    static VALIDATORS: OnceLock<HashMap<String, jsonschema::Validator>> = OnceLock::new();
    VALIDATORS.get_or_init(|| {
        api::crds()
            .into_iter()
            .map(|crd| {
                let kind = crd.spec.names.kind.clone();
                let schema = crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                    .expect("every CRD has an openAPIV3Schema");
                let mut schema = serde_json::to_value(schema).expect("a schema serializes");
                strict(&mut schema);
                // The API server adds these to every object.
                if let Some(props) = schema["properties"].as_object_mut() {
                    props.insert("apiVersion".into(), serde_json::json!({"type": "string"}));
                    props.insert("kind".into(), serde_json::json!({"type": "string"}));
                    props.insert("metadata".into(), serde_json::json!({"type": "object"}));
                }
                let validator = jsonschema::options()
                    .with_draft(jsonschema::Draft::Draft4)
                    .build(&schema)
                    .expect("the CRD schema compiles");
                (kind, validator)
            })
            .collect()
    })
}

/// Structural schemas refuse unknown fields (the API server prunes them, and
/// reports them under strict field validation): every object with declared
/// properties and no `additionalProperties` gets `additionalProperties: false`.
/// `nullable` is dropped; null values are pruned from the instance instead,
/// as the API server does for fields that are not nullable.
fn strict(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    obj.remove("nullable");
    let preserve = obj
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if obj.contains_key("properties") && !obj.contains_key("additionalProperties") && !preserve {
        obj.insert("additionalProperties".into(), Value::Bool(false));
    }
    for key in ["properties"] {
        if let Some(props) = obj.get_mut(key).and_then(Value::as_object_mut) {
            props.values_mut().for_each(strict);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = obj.get_mut(key) {
            strict(sub);
        }
    }
}

/// Removes `null` values from objects (unset fields), recursively.
pub fn prune_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(prune_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(prune_nulls),
        _ => {}
    }
}

/// Validates one object of `kind` (one of the four wsbridge kinds) against
/// its CRD: structural schema first, then, when that passes, the CEL rules.
/// `object` has had its nulls pruned.
pub fn validate(kind: &str, object: &Value) -> Vec<FieldError> {
    let Some(validator) = validators().get(kind) else {
        return vec![FieldError {
            field: "kind".into(),
            message: format!("unsupported kind {kind:?}"),
        }];
    };
    let mut errors: Vec<FieldError> = Vec::new();
    for error in validator.iter_errors(object) {
        let path = field_path(error.instance_path().as_str());
        match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                for name in unexpected {
                    errors.push(FieldError {
                        field: join(&path, name),
                        message: "unknown field".into(),
                    });
                }
            }
            ValidationErrorKind::Required { property } => errors.push(FieldError {
                field: join(&path, property.as_str().unwrap_or_default()),
                message: "Required value".into(),
            }),
            kind => errors.push(FieldError {
                field: path,
                message: describe(kind, error.instance()),
            }),
        }
    }
    if !errors.is_empty() {
        errors.dedup();
        return errors;
    }
    let cel = match kind {
        "Endpoint" => cel::<Endpoint>(object),
        "Channel" => cel::<Channel>(object),
        "Bridge" => cel::<Bridge>(object),
        "Subscription" => cel::<Subscription>(object),
        _ => Ok(()),
    };
    if let Err(e) = cel {
        errors.extend(e);
    }
    errors
}

fn cel<K>(object: &Value) -> Result<(), Vec<FieldError>>
where
    K: kube::CustomResourceExt + Resource + serde::Serialize + serde::de::DeserializeOwned,
{
    // Through the typed object, as kube's `validate_cel` does: what the
    // rules see is what the API server would have stored.
    let typed: K = serde_json::from_value(object.clone()).map_err(|e| {
        vec![FieldError {
            field: String::new(),
            message: format!("cannot read the object: {e}"),
        }]
    })?;
    let object = serde_json::to_value(&typed).map_err(|e| {
        vec![FieldError {
            field: String::new(),
            message: format!("cannot read the object: {e}"),
        }]
    })?;
    // The rules are compiled once per kind (and thread), not per object:
    // compiling them is what made large files slow to check.
    thread_local! {
        static COMPILED: std::cell::RefCell<HashMap<String, std::rc::Rc<kube_cel::CompiledSchema>>> =
            std::cell::RefCell::default();
    }
    let compiled = COMPILED.with(|compiled| {
        compiled
            .borrow_mut()
            .entry(K::crd_name().to_string())
            .or_insert_with(|| {
                let crd = K::crd();
                let schema = crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                    .map(serde_json::to_value)
                    .and_then(Result::ok)
                    .unwrap_or(Value::Null);
                std::rc::Rc::new(kube_cel::compile_schema(&schema))
            })
            .clone()
    });
    kube_cel::validate_compiled(&compiled, &object, None).map_err(|errors| {
        errors
            .into_vec()
            .into_iter()
            .map(|e| FieldError {
                field: e.field_path.trim_start_matches('.').to_string(),
                message: e.message,
            })
            .collect()
    })
}

/// `/spec/subprotocols/3` → `spec.subprotocols[3]`.
fn field_path(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            out = join(&out, &segment);
        }
    }
    out
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => v.to_string(),
    }
}

/// `instance` as JSON in at most 80 bytes: longer is cut to 77 and the
/// three bytes of `…`.
fn shown(instance: &Value) -> String {
    let text = instance.to_string();
    if text.len() > 80 { shorten(&text, 77) } else { text }
}

fn describe(kind: &ValidationErrorKind, instance: &Value) -> String {
    match kind {
        ValidationErrorKind::Maximum { limit } => format!("must be <= {}", number(limit)),
        ValidationErrorKind::Minimum { limit } => format!("must be >= {}", number(limit)),
        ValidationErrorKind::ExclusiveMaximum { limit } => format!("must be < {}", number(limit)),
        ValidationErrorKind::ExclusiveMinimum { limit } => format!("must be > {}", number(limit)),
        ValidationErrorKind::MaxLength { limit } => {
            format!("may not be longer than {limit} characters")
        }
        ValidationErrorKind::MinLength { limit } => {
            format!("must be at least {limit} characters long")
        }
        ValidationErrorKind::MaxItems { limit } => format!("must have at most {limit} items"),
        ValidationErrorKind::MinItems { limit } => format!("must have at least {limit} items"),
        ValidationErrorKind::MaxProperties { limit } => {
            format!("must have at most {limit} entries")
        }
        ValidationErrorKind::Pattern { pattern } => {
            format!("invalid value {}: must match {pattern}", shown(instance))
        }
        ValidationErrorKind::Enum { options } => {
            let options = options
                .as_array()
                .map(|o| o.iter().map(Value::to_string).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            format!(
                "Unsupported value {}: supported values: {options}",
                shown(instance)
            )
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(ts) => format!("{ts:?}"),
            };
            format!("invalid value {}: must be of type {expected}", shown(instance))
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: &str, spec: Value) -> Vec<String> {
        let mut obj = serde_json::json!({
            "apiVersion": "wsbridge.io/v1alpha1", "kind": kind,
            "metadata": {"name": "x", "namespace": "default"}, "spec": spec,
        });
        prune_nulls(&mut obj);
        validate(kind, &obj).iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn range_errors_name_the_field_and_the_bound() {
        let errors = check("Endpoint", serde_json::json!({"url": "wss://h/", "port": 65536}));
        assert_eq!(errors, ["spec.port: must be <= 65535"]);
    }

    #[test]
    fn unknown_and_missing_fields_are_named() {
        let errors = check("Endpoint", serde_json::json!({"urll": "wss://h/"}));
        assert!(
            errors.contains(&"spec.urll: unknown field".to_string()),
            "{errors:?}"
        );
        assert!(
            errors.contains(&"spec.url: Required value".to_string()),
            "{errors:?}"
        );
    }

    #[test]
    fn cel_rules_run_after_the_structural_schema() {
        let errors = check(
            "Subscription",
            serde_json::json!({"channel": "c", "subscriber": {"uri": "ftp://h/"}}),
        );
        assert_eq!(
            errors,
            ["spec.subscriber.uri: uri must be an absolute http:// or https:// URL"]
        );
        let errors = check(
            "Endpoint",
            serde_json::json!({"url": "wss://h/", "reconnect": {"initialDelay": "1m", "maxDelay": "1s"}}),
        );
        assert_eq!(
            errors,
            ["spec.reconnect.initialDelay: initialDelay must not exceed maxDelay"]
        );
    }

    #[test]
    fn valid_objects_pass_and_nulls_are_unset_fields() {
        assert!(check("Channel", serde_json::json!({"delivery": null})).is_empty());
        assert!(check(
            "Bridge",
            serde_json::json!({"channel": "c", "endpoint": "e", "tokenSecretRef": {"name": "s", "key": "token"}})
        )
        .is_empty());
    }
}
