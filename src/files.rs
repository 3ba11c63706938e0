//! Kubernetes objects from files, as `kubectl get -o yaml|json` prints them: single objects,
//! multi-document YAML, JSON, and `List`s (nested `items`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use serde::Deserialize;
use serde::de::DeserializeSeed;
use serde_json::Value;

use crate::admission::objects::{Document, Sink};
use crate::service::SvcInfo;

mod network;
mod pools;
pub use network::load_network;
pub use pools::load_pools;

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

/// Every Service of several files, as the allocator reads them (other kinds are ignored; an
/// object without `kind` is taken as a Service).
///
/// Decoded one object at a time keeping only what allocation reads, the same decode as the
/// watch (`admission::objects`): a `kubectl get svc -A` export of 100k Services is never built as
/// a tree of values. JSON is read straight from the file; YAML needs the file's text and the
/// YAML parser's events of one document (a `List` is one document), but no values.
pub fn load_svc_infos(paths: &[PathBuf]) -> Result<Vec<SvcInfo>, FileError> {
    load_with(paths, |s| s)
}

/// [`load_svc_infos`] for the used-address index alone (`serve --standalone`): each Service
/// without what only pool selection reads ([`SvcInfo::for_index`]), dropped as it is read.
pub fn load_svc_infos_for_index(paths: &[PathBuf]) -> Result<Vec<SvcInfo>, FileError> {
    load_with(paths, SvcInfo::for_index)
}

fn load_with(paths: &[PathBuf], keep: fn(SvcInfo) -> SvcInfo) -> Result<Vec<SvcInfo>, FileError> {
    let mut out = Vec::new();
    for path in paths {
        out.extend(services_in(path, keep)?);
    }
    Ok(out)
}

/// How much of a file is looked at to tell JSON from YAML.
const SNIFF: u64 = 4096;

fn looks_like_json(path: &Path) -> Result<bool, FileError> {
    let mut head = Vec::new();
    File::open(path)
        .and_then(|f| f.take(SNIFF).read_to_end(&mut head))
        .map_err(|source| read_error(path, source))?;
    Ok(head
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{' || *b == b'['))
}

fn read_error(path: &Path, source: std::io::Error) -> FileError {
    FileError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// The error for a failed decode: the Service that broke it, or the file's syntax.
fn decode_error(path: &Path, sink: &mut Sink<'_>, reason: String) -> FileError {
    match sink.take_bad() {
        Some(bad) => FileError::Object {
            path: path.to_path_buf(),
            index: bad.index,
            kind: "Service".into(),
            reason: bad.reason,
        },
        None => FileError::Parse {
            path: path.to_path_buf(),
            reason,
        },
    }
}

fn services_in(path: &Path, keep: fn(SvcInfo) -> SvcInfo) -> Result<Vec<SvcInfo>, FileError> {
    let mut out = Vec::new();
    if looks_like_json(path)? {
        let file = File::open(path).map_err(|source| read_error(path, source))?;
        let json = {
            let mut push = |svc: Service| out.push(keep(SvcInfo::from_service(&svc)));
            let mut sink = Sink::new(&mut push);
            let mut de = serde_json::Deserializer::from_reader(BufReader::new(file));
            match Document(&mut sink)
                .deserialize(&mut de)
                .and_then(|()| de.end())
            {
                Ok(()) => Ok(true),
                // Valid JSON holding something that is not a Service list: the file is wrong.
                Err(e) if e.is_data() => Err(decode_error(path, &mut sink, e.to_string())),
                // Not JSON after all (a YAML flow mapping, say): read it as YAML below.
                Err(_) => Ok(false),
            }
        };
        if json? {
            return Ok(out);
        }
        out.clear();
    }
    let text = std::fs::read_to_string(path).map_err(|source| read_error(path, source))?;
    let mut push = |svc: Service| out.push(keep(SvcInfo::from_service(&svc)));
    let mut sink = Sink::new(&mut push);
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        Document(&mut sink)
            .deserialize(doc)
            .map_err(|e| decode_error(path, &mut sink, e.to_string()))?;
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

    /// The reference: every object as a full k8s-openapi Service, as files were read before.
    fn full_decode(text: &str) -> Vec<SvcInfo> {
        parse_objects(text)
            .unwrap()
            .into_iter()
            .filter(|o| matches!(kind(o), "" | "Service"))
            .map(|o| SvcInfo::from_service(&serde_json::from_value(o).unwrap()))
            .collect()
    }

    fn lean(name: &str, text: &str) -> Result<Vec<SvcInfo>, FileError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        load_svc_infos(&[path])
    }

    const MIXED: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: a
    namespace: x
    annotations: {kube-vip.io/loadbalancerIPs: "10.0.0.1,fd00::1", other: "ignored"}
    labels: {implementation: kube-vip, app: web}
    managedFields: [{manager: kubectl, fieldsV1: {f:spec: {}}}]
  spec:
    type: LoadBalancer
    loadBalancerClass: kube-vip.io/kube-vip-class
    ipFamilies: [IPv6, IPv4]
    ipFamilyPolicy: PreferDualStack
    ports: [{port: 53, protocol: UDP, targetPort: 5353}, {port: 80}]
    selector: {app: web}
  status:
    loadBalancer: {ingress: [{ip: 10.0.0.1, ipMode: VIP}, {hostname: lb.example}]}
- kind: ConfigMap
  metadata: {name: not-a-service}
  data: {spec: whatever}
- kind: List
  items:
  - metadata: {name: nested, namespace: y}
    spec: {type: LoadBalancer, loadBalancerIP: 10.0.0.9}
---
# kind after spec and status: decided at the end.
spec: {type: ClusterIP, ports: [{port: 443, protocol: TCP}]}
status: {loadBalancer: {ingress: [{ip: 10.0.0.7}]}}
metadata: {name: late, namespace: z, annotations: {kube-vip.io/requestedIP: 10.0.0.8}}
kind: Service
---
spec: {template: {spec: {containers: []}}, ports: "not a list"}
kind: Deployment
metadata: {name: web}
---
"#;

    #[test]
    fn lean_decode_reads_what_the_full_decode_reads() {
        let want = full_decode(MIXED);
        assert_eq!(want.len(), 3, "{want:?}");
        assert_eq!(lean("svcs.yaml", MIXED).unwrap(), want);
        // The same objects as JSON (streamed from the file), as an array and as a List.
        let objects: Vec<Value> = parse_objects(MIXED).unwrap();
        let array = serde_json::to_string_pretty(&objects).unwrap();
        assert_eq!(lean("svcs.json", &array).unwrap(), want);
        let list = serde_json::json!({"kind": "List", "apiVersion": "v1", "items": objects});
        assert_eq!(lean("list.json", &list.to_string()).unwrap(), want);
        // The examples shipped for plan and --standalone.
        let examples = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("manifest/examples/services.yaml"),
        )
        .unwrap();
        assert_eq!(
            lean("examples.yaml", &examples).unwrap(),
            full_decode(&examples)
        );
    }

    #[test]
    fn for_the_index_the_same_services_without_labels() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for (name, text) in [
            ("a.yaml", MIXED.to_string()),
            ("b.json", {
                let objects: Vec<Value> = parse_objects(MIXED).unwrap();
                serde_json::to_string(&objects).unwrap()
            }),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            paths.push(path);
        }
        let full = load_svc_infos(&paths).unwrap();
        assert!(full.iter().any(|s| !s.labels.is_empty()));
        let want: Vec<SvcInfo> = full.into_iter().map(SvcInfo::for_index).collect();
        assert_eq!(load_svc_infos_for_index(&paths).unwrap(), want);
    }

    #[test]
    fn a_yaml_flow_mapping_that_is_not_json_is_read_as_yaml() {
        let text =
            "{kind: Service, metadata: {name: flow, namespace: f}, spec: {type: LoadBalancer}}";
        assert_eq!(lean("flow.yaml", text).unwrap(), full_decode(text));
    }

    #[test]
    fn a_broken_service_names_its_position_and_loses_nothing_else() {
        // Object #2 (the List counts its items, not itself) has ports that are not a list.
        let text = "items:\n- {kind: ConfigMap}\n- {kind: Service, metadata: {name: ok}}\n- {kind: Service, spec: {ports: 80}}\n";
        let err = lean("bad.yaml", text).unwrap_err().to_string();
        assert!(
            err.contains("object #2 (kind Service) is not a valid Service"),
            "{err}"
        );
        let json = r#"[{"kind": "Service"}, {"spec": {"type": 7}}]"#;
        let err = lean("bad.json", json).unwrap_err().to_string();
        assert!(err.contains("object #1 (kind Service)"), "{err}");
        // A kind-less scalar where an object belongs.
        let err = lean("scalar.yaml", "items: [3]").unwrap_err().to_string();
        assert!(err.contains("object #0"), "{err}");
        // Broken syntax is a parse error, for either format.
        for (name, text) in [("t.json", "[{\"kind\": "), ("t.yaml", "kind: [unclosed")] {
            let err = lean(name, text).unwrap_err().to_string();
            assert!(err.contains("not valid YAML or JSON"), "{name}: {err}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_objects("kind: [unclosed").is_err());
        assert!(parse_objects("{").is_err());
    }
}
