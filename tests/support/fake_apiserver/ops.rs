//! Write semantics of the apiserver: create, update, patch, delete, applied to the [`State`].
//!
//! Mirrors the generic registry: server-owned metadata (uid, creationTimestamp, resourceVersion,
//! deletionTimestamp) cannot be changed by clients; a stale `metadata.resourceVersion` is a 409
//! Conflict; an update that changes nothing is not written (no new version, no watch event);
//! objects with finalizers are only marked for deletion; `/status` writes change only the status.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::errors::ApiError;
use super::resources::{ResId, ResourceDef};
use super::selectors::Filter;
use super::store::{ObjKey, State, meta_str, remove_meta, set_meta};

/// Patch flavours, by request Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`, approximated as a merge patch.
    Strategic,
    /// `application/apply-patch+yaml`, approximated as a merge patch that may create.
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let mime = ct.split(';').next().unwrap_or_default().trim();
        match mime {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Who is writing: requests follow the apiserver's rules, test controls bypass them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    Request { dry_run: bool },
    Control,
}

impl Writer {
    fn dry_run(self) -> bool {
        matches!(self, Writer::Request { dry_run: true })
    }
}

fn now() -> Value {
    serde_json::to_value(Time(Timestamp::now())).unwrap_or(Value::Null)
}

pub fn object_key(def: &ResourceDef, ns: Option<&str>, name: &str) -> ObjKey {
    let ns = if def.namespaced {
        ns.unwrap_or_default()
    } else {
        ""
    };
    (ns.to_string(), name.to_string())
}

/// Checks apiVersion/kind and namespace of a request body and fills them in when absent.
fn normalise(def: &ResourceDef, ns: Option<&str>, obj: &mut Value) -> Result<(), ApiError> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    };
    let api_version = def.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(v) if !v.is_empty() && v != api_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
        _ => {
            map.insert("apiVersion".into(), Value::String(api_version));
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        Some(k) if !k.is_empty() && k != def.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                def.kind
            )));
        }
        _ => {
            map.insert("kind".into(), Value::String(def.kind.clone()));
        }
    }
    let body_ns = meta_str(obj, "namespace").map(str::to_string);
    if def.namespaced {
        let url_ns = ns.unwrap_or_default();
        match body_ns {
            Some(b) if b != url_ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => set_meta(obj, "namespace", Value::String(url_ns.to_string())),
        }
    } else if body_ns.is_some() {
        return Err(ApiError::bad_request(
            "namespace is not allowed on this type (cluster-scoped)",
        ));
    }
    Ok(())
}

/// Creates an object (POST, apply on a missing object, or the `insert` test control).
pub fn create(
    st: &mut State,
    res: ResId,
    ns: Option<&str>,
    mut obj: Value,
    writer: Writer,
) -> Result<Arc<Value>, ApiError> {
    let def = st.def(res).clone();
    normalise(&def, ns, &mut obj)?;
    let key_ns = if def.namespaced {
        ns.unwrap_or_default()
    } else {
        ""
    };
    let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
        (Some(n), _) => n.to_string(),
        (None, Some(prefix)) => {
            let prefix = prefix.to_string();
            let name = st.generate_name(res, key_ns, &prefix);
            set_meta(&mut obj, "name", Value::String(name.clone()));
            name
        }
        (None, None) => {
            return Err(ApiError::invalid(
                &def,
                "",
                "metadata.name: Required value: name or generateName is required",
            ));
        }
    };
    if writer != Writer::Control && meta_str(&obj, "resourceVersion").is_some() {
        return Err(ApiError::internal(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let key = (key_ns.to_string(), name.clone());
    if st.get(res, &key).is_some() {
        return Err(ApiError::already_exists(&def, &name));
    }
    set_meta(&mut obj, "uid", Value::String(st.next_uid()));
    set_meta(&mut obj, "creationTimestamp", now());
    if writer != Writer::Control {
        remove_meta(&mut obj, "deletionTimestamp");
        remove_meta(&mut obj, "deletionGracePeriodSeconds");
        if def.status_subresource
            && let Some(map) = obj.as_object_mut()
        {
            match &def.initial_status {
                Some(s) => map.insert("status".into(), s.clone()),
                None => map.remove("status"),
            };
        }
    }
    if writer.dry_run() {
        return Ok(Arc::new(obj));
    }
    Ok(st.commit_put(res, key, obj))
}

/// Copies what clients cannot change from the stored object and applies `/status` rules.
fn carry_server_fields(def: &ResourceDef, old: &Value, new: &mut Value, status_only: bool) {
    if def.status_subresource {
        if status_only {
            let status = new.get("status").cloned();
            *new = old.clone();
            if let Some(map) = new.as_object_mut() {
                match status {
                    Some(s) => map.insert("status".into(), s),
                    None => map.remove("status"),
                };
            }
        } else if let Some(map) = new.as_object_mut() {
            match old.get("status") {
                Some(s) => map.insert("status".into(), s.clone()),
                None => map.remove("status"),
            };
        }
    }
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "resourceVersion",
    ] {
        match old.get("metadata").and_then(|m| m.get(field)) {
            Some(v) => set_meta(new, field, v.clone()),
            None => remove_meta(new, field),
        }
    }
}

fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// Writes an update of an existing object: the common tail of PUT and PATCH.
/// `new` has already passed the resourceVersion precondition.
fn write_update(
    st: &mut State,
    res: ResId,
    key: ObjKey,
    old: &Arc<Value>,
    mut new: Value,
    status_only: bool,
    writer: Writer,
) -> Result<Arc<Value>, ApiError> {
    let def = st.def(res).clone();
    let name = key.1.clone();
    if meta_str(&new, "name").is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta_str(&new, "name").unwrap_or_default()
        )));
    }
    set_meta(&mut new, "name", Value::String(name.clone()));
    normalise(&def, Some(&key.0), &mut new)?;
    if let (Some(given), Some(stored)) = (meta_str(&new, "uid"), meta_str(old, "uid"))
        && given != stored
    {
        return Err(ApiError::conflict(
            &def,
            &name,
            &format!(
                "Precondition failed: UID in precondition: {given}, UID in object meta: {stored}"
            ),
        ));
    }
    if writer != Writer::Control {
        carry_server_fields(&def, old, &mut new, status_only);
    } else {
        for field in ["uid", "creationTimestamp", "resourceVersion"] {
            if let Some(v) = old.get("metadata").and_then(|m| m.get(field)) {
                set_meta(&mut new, field, v.clone());
            }
        }
    }
    if new == **old {
        // A no-op write keeps the version and emits nothing, as the apiserver does.
        return Ok(old.clone());
    }
    if writer.dry_run() {
        return Ok(Arc::new(new));
    }
    let finished = meta_str(&new, "deletionTimestamp").is_some() && !has_finalizers(&new);
    let stored = st.commit_put(res, key.clone(), new);
    if finished {
        // The last finalizer is gone: the pending deletion completes.
        st.commit_delete(res, &key);
    }
    Ok(stored)
}

/// The resourceVersion precondition: a non-empty `metadata.resourceVersion` must be current.
fn check_version(def: &ResourceDef, name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    match meta_str(new, "resourceVersion") {
        Some(rv) if Some(rv) != meta_str(old, "resourceVersion") => Err(ApiError::stale(def, name)),
        _ => Ok(()),
    }
}

/// PUT of an object or its `/status`.
pub fn replace(
    st: &mut State,
    res: ResId,
    key: ObjKey,
    new: Value,
    status_only: bool,
    writer: Writer,
) -> Result<Arc<Value>, ApiError> {
    let def = st.def(res).clone();
    if !new.is_object() {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    }
    let Some(old) = st.get(res, &key) else {
        return Err(ApiError::not_found(&def, &key.1));
    };
    if writer != Writer::Control {
        check_version(&def, &key.1, &old, &new)?;
    }
    write_update(st, res, key, &old, new, status_only, writer)
}

/// Parses an apply body: YAML is a superset of JSON, but most clients send JSON.
fn parse_apply(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).or_else(|_| {
        serde_yaml_ng::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    })
}

/// PATCH of an object or its `/status`.
pub fn patch(
    st: &mut State,
    res: ResId,
    key: ObjKey,
    kind: PatchKind,
    body: &[u8],
    status_only: bool,
    writer: Writer,
) -> Result<Arc<Value>, ApiError> {
    let def = st.def(res).clone();
    let Some(old) = st.get(res, &key) else {
        if kind == PatchKind::Apply && !status_only {
            let mut obj = parse_apply(body)?;
            if meta_str(&obj, "name").is_some_and(|n| n != key.1) {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            if meta_str(&obj, "resourceVersion").is_some() {
                return Err(ApiError::stale(&def, &key.1));
            }
            set_meta(&mut obj, "name", Value::String(key.1.clone()));
            let ns = def.namespaced.then_some(key.0.as_str());
            return create(st, res, ns, obj, writer);
        }
        return Err(ApiError::not_found(&def, &key.1));
    };
    let mut doc = (*old).clone();
    match kind {
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            // A failed operation (including `test`) is 422, as in the apiserver's patch handler.
            json_patch::patch(&mut doc, &ops)
                .map_err(|e| ApiError::from_code(422, e.to_string()))?;
        }
        PatchKind::Merge | PatchKind::Strategic => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            if !p.is_object() {
                return Err(ApiError::bad_request("patch is not a JSON object"));
            }
            json_patch::merge(&mut doc, &p);
        }
        PatchKind::Apply => {
            let p = parse_apply(body)?;
            if !p.is_object() {
                return Err(ApiError::bad_request("apply body is not an object"));
            }
            json_patch::merge(&mut doc, &p);
        }
    }
    if !doc.is_object() {
        return Err(ApiError::bad_request(
            "patch replaced the object with a non-object",
        ));
    }
    if meta_str(&doc, "namespace").unwrap_or_default()
        != meta_str(&old, "namespace").unwrap_or_default()
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if writer != Writer::Control {
        check_version(&def, &key.1, &old, &doc)?;
    }
    write_update(st, res, key, &old, doc, status_only, writer)
}

/// Parsed `DeleteOptions.preconditions`.
#[derive(Default)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl Preconditions {
    pub fn from_delete_options(body: &[u8]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let opts: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?;
        let get = |f: &str| {
            opts.pointer(&format!("/preconditions/{f}"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Ok(Self {
            uid: get("uid"),
            resource_version: get("resourceVersion"),
        })
    }
}

/// DELETE of one object. With finalizers the object is only marked (deletionTimestamp set).
pub fn delete(
    st: &mut State,
    res: ResId,
    key: ObjKey,
    pre: &Preconditions,
    writer: Writer,
) -> Result<Arc<Value>, ApiError> {
    let def = st.def(res).clone();
    let Some(old) = st.get(res, &key) else {
        return Err(ApiError::not_found(&def, &key.1));
    };
    if let Some(uid) = &pre.uid
        && Some(uid.as_str()) != meta_str(&old, "uid")
    {
        return Err(ApiError::conflict(
            &def,
            &key.1,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta_str(&old, "uid").unwrap_or_default()
            ),
        ));
    }
    if let Some(rv) = &pre.resource_version
        && Some(rv.as_str()) != meta_str(&old, "resourceVersion")
    {
        return Err(ApiError::stale(&def, &key.1));
    }
    if writer != Writer::Control && has_finalizers(&old) {
        if meta_str(&old, "deletionTimestamp").is_some() {
            return Ok(old);
        }
        let mut marked = (*old).clone();
        set_meta(&mut marked, "deletionTimestamp", now());
        set_meta(&mut marked, "deletionGracePeriodSeconds", json!(0));
        if writer.dry_run() {
            return Ok(Arc::new(marked));
        }
        return Ok(st.commit_put(res, key, marked));
    }
    if writer.dry_run() {
        return Ok(old);
    }
    st.commit_delete(res, &key)
        .ok_or_else(|| ApiError::not_found(&def, &key.1))
}

/// DELETE of a collection: every object matching `filter`.
pub fn delete_collection(
    st: &mut State,
    res: ResId,
    filter: &Filter,
    writer: Writer,
) -> Result<Vec<Arc<Value>>, ApiError> {
    let def = st.def(res).clone();
    let mut out = Vec::new();
    for obj in st.list_all(res, filter) {
        let name = meta_str(&obj, "name").unwrap_or_default();
        let key = object_key(&def, meta_str(&obj, "namespace"), name);
        out.push(delete(st, res, key, &Preconditions::default(), writer)?);
    }
    Ok(out)
}
