//! Kubernetes objects from files, as `kubectl get -o yaml|json` prints them: single objects,
//! multi-document YAML, JSON, and `List`s (nested `items`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid YAML or JSON: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path}: object #{index} (kind {kind}) is not a valid {kind}: {reason}")]
    Object {
        path: PathBuf,
        index: usize,
        kind: String,
        reason: String,
    },
    #[error("{path}: no ConfigMap found")]
    NoConfigMap { path: PathBuf },
}

/// Every object in the file, with `List`s flattened.
pub fn load_objects(path: &Path) -> Result<Vec<Value>, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_objects(&text).map_err(|reason| FileError::Parse {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parse YAML (one or many documents) or JSON text into objects, flattening `List`s.
pub fn parse_objects(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| e.to_string())?;
        docs.push(value);
    }
    let mut out = Vec::new();
    for doc in docs {
        flatten(doc, &mut out);
    }
    Ok(out)
}

fn flatten(doc: Value, out: &mut Vec<Value>) {
    match doc {
        Value::Null => {} // empty document (`---` at the end)
        Value::Object(mut map) if map.get("items").is_some_and(Value::is_array) => {
            if let Some(Value::Array(items)) = map.remove("items") {
                for item in items {
                    flatten(item, out);
                }
            }
        }
        Value::Array(items) => items.into_iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn kind(v: &Value) -> &str {
    v.get("kind").and_then(Value::as_str).unwrap_or("")
}

/// The Services in a file (other kinds are ignored; an object without `kind` is taken as a Service).
pub fn load_services(path: &Path) -> Result<Vec<Service>, FileError> {
    let mut out = Vec::new();
    for (index, obj) in load_objects(path)?.into_iter().enumerate() {
        let k = kind(&obj);
        if !(k.is_empty() || k == "Service") {
            continue;
        }
        let svc = serde_json::from_value(obj).map_err(|e| FileError::Object {
            path: path.to_path_buf(),
            index,
            kind: "Service".into(),
            reason: e.to_string(),
        })?;
        out.push(svc);
    }
    Ok(out)
}

/// Every Service of several files, as the allocator reads them.
pub fn load_svc_infos(paths: &[PathBuf]) -> Result<Vec<crate::service::SvcInfo>, FileError> {
    let mut out = Vec::new();
    for path in paths {
        out.extend(
            load_services(path)?
                .iter()
                .map(crate::service::SvcInfo::from_service),
        );
    }
    Ok(out)
}

/// The data of the first ConfigMap in the file.
pub fn load_configmap_data(path: &Path) -> Result<BTreeMap<String, String>, FileError> {
    for (index, obj) in load_objects(path)?.into_iter().enumerate() {
        if kind(&obj) != "ConfigMap" {
            continue;
        }
        let cm: ConfigMap = serde_json::from_value(obj).map_err(|e| FileError::Object {
            path: path.to_path_buf(),
            index,
            kind: "ConfigMap".into(),
            reason: e.to_string(),
        })?;
        return Ok(cm.data.unwrap_or_default());
    }
    Err(FileError::NoConfigMap {
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_lists_and_json() {
        let yaml = "apiVersion: v1\nkind: List\nitems:\n- kind: Service\n  metadata: {name: a}\n- kind: Service\n  metadata: {name: b}\n---\nkind: Service\nmetadata: {name: c}\n---\n";
        let names: Vec<_> = parse_objects(yaml)
            .unwrap()
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        let json = r#"{"kind":"ServiceList","items":[{"kind":"Service","metadata":{"name":"j"}}]}"#;
        assert_eq!(parse_objects(json).unwrap().len(), 1);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_objects("kind: [unclosed").is_err());
        assert!(parse_objects("{").is_err());
    }
}
