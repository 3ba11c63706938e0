//! A small kustomize for tests: `resources` (files, or directories with their own kustomization),
//! JSON 6902 `patches` with a target, and `configMapGenerator` from files without the name hash,
//! which is all our kustomizations use. Unknown fields are
//! refused, so a kustomization cannot silently do more than this renderer understands.
//! `tests/manifests.rs` compares it with `kubectl kustomize` where that is installed.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// One YAML document and where it came from.
#[derive(Debug, Clone)]
pub struct Doc {
    pub origin: String,
    pub value: Value,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every document of a YAML file; the items of a `List` count as documents.
pub fn load_docs(path: &Path) -> Result<Vec<Doc>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", rel(path)))?;
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let origin = format!("{} (document {})", rel(path), i + 1);
        let value = Value::deserialize(de).map_err(|e| format!("{origin}: {e}"))?;
        match &value {
            Value::Null => {}
            Value::Object(_) if value["kind"] == "List" => {
                let items = value["items"].as_array().cloned().unwrap_or_default();
                for (j, item) in items.into_iter().enumerate() {
                    docs.push(Doc {
                        origin: format!("{origin} item {j}"),
                        value: item,
                    });
                }
            }
            Value::Object(_) => docs.push(Doc { origin, value }),
            _ => return Err(format!("{origin}: not a Kubernetes object")),
        }
    }
    Ok(docs)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kustomization {
    api_version: String,
    kind: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    patches: Vec<KPatch>,
    #[serde(default)]
    config_map_generator: Vec<KGenerator>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KGenerator {
    name: String,
    namespace: Option<String>,
    /// `key=path` or `path` (the key is then the file name).
    files: Vec<String>,
    options: KGeneratorOptions,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KGeneratorOptions {
    /// Must be true: the renderer does not compute kustomize's content hash suffix.
    disable_name_suffix_hash: bool,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// The ConfigMap a `configMapGenerator` entry produces, as kustomize writes it.
fn generate_config_map(dir: &Path, kfile: &Path, g: &KGenerator) -> Result<Doc, String> {
    if !g.options.disable_name_suffix_hash {
        return Err(format!(
            "{}: configMapGenerator {}: only disableNameSuffixHash: true is supported",
            rel(kfile),
            g.name
        ));
    }
    let mut data = serde_json::Map::new();
    for f in &g.files {
        let (key, file) = match f.split_once('=') {
            Some((k, p)) => (k.to_string(), p),
            None => (
                Path::new(f)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                f.as_str(),
            ),
        };
        let path = dir.join(file);
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", rel(&path)))?;
        data.insert(key, Value::String(text));
    }
    let mut metadata = serde_json::json!({ "name": g.name });
    if let Some(ns) = &g.namespace {
        metadata["namespace"] = ns.clone().into();
    }
    if !g.options.labels.is_empty() {
        metadata["labels"] = serde_json::to_value(&g.options.labels).map_err(|e| e.to_string())?;
    }
    Ok(Doc {
        origin: format!("{} configMapGenerator {}", rel(kfile), g.name),
        value: serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data,
        }),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KPatch {
    target: KTarget,
    patch: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KTarget {
    group: Option<String>,
    version: Option<String>,
    kind: String,
    name: String,
    namespace: Option<String>,
}

#[derive(Debug, Default)]
pub struct Rendered {
    pub docs: Vec<Doc>,
    /// Every file read, kustomizations included.
    pub files: BTreeSet<PathBuf>,
}

pub fn group_version(v: &Value) -> (String, String) {
    let av = v["apiVersion"].as_str().unwrap_or_default();
    match av.split_once('/') {
        Some((g, ver)) => (g.to_string(), ver.to_string()),
        None => (String::new(), av.to_string()),
    }
}

pub fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Kustomize's resource identity: group, kind, namespace, name.
pub fn identity(v: &Value) -> String {
    let (group, _) = group_version(v);
    format!(
        "{}/{} {}/{}",
        group,
        str_at(v, "/kind"),
        str_at(v, "/metadata/namespace"),
        str_at(v, "/metadata/name")
    )
}

pub fn render(dir: &Path) -> Result<Rendered, String> {
    let kfile = dir.join("kustomization.yaml");
    let text = fs::read_to_string(&kfile).map_err(|e| format!("{}: {e}", rel(&kfile)))?;
    let k: Kustomization =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", rel(&kfile)))?;
    if k.api_version != "kustomize.config.k8s.io/v1beta1" || k.kind != "Kustomization" {
        return Err(format!(
            "{}: not a kustomize v1beta1 Kustomization",
            rel(&kfile)
        ));
    }
    let mut out = Rendered::default();
    out.files.insert(kfile.clone());
    for r in &k.resources {
        let path = dir.join(r);
        if path.is_dir() {
            if !path.join("kustomization.yaml").is_file() {
                return Err(format!(
                    "{}: {r} is a directory without kustomization.yaml",
                    rel(&kfile)
                ));
            }
            let sub = render(&path)?;
            out.docs.extend(sub.docs);
            out.files.extend(sub.files);
        } else if path.is_file() {
            // kustomize's default load restrictor: files only from inside the kustomization root.
            if !Path::new(r)
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
            {
                return Err(format!(
                    "{}: file {r} is outside the kustomization root (load restrictor)",
                    rel(&kfile)
                ));
            }
            out.docs.extend(load_docs(&path)?);
            out.files.insert(path);
        } else {
            return Err(format!("{}: resource {r} does not exist", rel(&kfile)));
        }
    }
    for g in &k.config_map_generator {
        out.docs.push(generate_config_map(dir, &kfile, g)?);
        for f in &g.files {
            let file = f.split_once('=').map_or(f.as_str(), |(_, p)| p);
            out.files.insert(dir.join(file));
        }
    }
    for p in &k.patches {
        let ops: Value = serde_yaml_ng::from_str(&p.patch)
            .map_err(|e| format!("{}: patch: {e}", rel(&kfile)))?;
        let ops: json_patch::Patch = serde_json::from_value(ops)
            .map_err(|e| format!("{}: patch is not a JSON 6902 patch: {e}", rel(&kfile)))?;
        let t = &p.target;
        let targets: Vec<&mut Doc> = out
            .docs
            .iter_mut()
            .filter(|d| {
                let (g, ver) = group_version(&d.value);
                str_at(&d.value, "/kind") == t.kind
                    && str_at(&d.value, "/metadata/name") == t.name
                    && t.namespace
                        .as_deref()
                        .is_none_or(|ns| str_at(&d.value, "/metadata/namespace") == ns)
                    && t.group.as_deref().is_none_or(|tg| tg == g)
                    && t.version.as_deref().is_none_or(|tv| tv == ver)
            })
            .collect();
        let [doc] = <[&mut Doc; 1]>::try_from(targets).map_err(|found| {
            format!(
                "{}: patch target {} {} matches {} objects, expected 1",
                rel(&kfile),
                t.kind,
                t.name,
                found.len()
            )
        })?;
        json_patch::patch(&mut doc.value, &ops)
            .map_err(|e| format!("{}: patch on {}: {e}", rel(&kfile), doc.origin))?;
        doc.origin = format!("{} patched by {}", doc.origin, rel(&kfile));
    }
    let mut seen = BTreeSet::new();
    for d in &out.docs {
        if !seen.insert(identity(&d.value)) {
            return Err(format!(
                "{}: {} is declared twice",
                rel(&kfile),
                identity(&d.value)
            ));
        }
    }
    Ok(out)
}
