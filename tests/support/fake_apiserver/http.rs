//! The HTTP side: path routing, query parameters, request log and fault injection, and the
//! per-verb handlers that call into the store.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::errors::ApiError;
use super::ops::{self, PatchKind, Preconditions, Writer};
use super::resources::{ResId, ResourceDef};
use super::selectors::{FieldSelector, Filter, LabelSelector};
use super::store::{ObjKey, WatchStart};
use super::watch::{self, OpenWatch, Rendering, partial_metadata};
use super::{Inner, RequestRecord};

/// Largest request body accepted (the apiserver's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// A request for objects of one resource.
#[derive(Clone, Debug)]
struct Target {
    res: ResId,
    def: ResourceDef,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

enum Route {
    Version,
    CoreVersions,
    Groups,
    ResourceList(String, String),
    Resource(Target),
    Unknown,
}

fn route(inner: &Inner, path: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Route::Version,
        ["api"] => return Route::CoreVersions,
        ["apis"] => return Route::Groups,
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::Unknown,
    };
    inner.with_state(|st| {
        if rest.is_empty() {
            return if st.registry.serves(group, version) {
                Route::ResourceList(group.to_string(), version.to_string())
            } else {
                Route::Unknown
            };
        }
        // `namespaces/{ns}/{plural}/...` when {plural} is a namespaced resource; otherwise the
        // first segment is the plural (which also covers `namespaces/{name}[/status]`).
        let (namespace, plural, tail) = match rest {
            ["namespaces", ns, plural, tail @ ..]
                if st
                    .registry
                    .lookup(group, version, plural)
                    .is_some_and(|id| st.def(id).namespaced) =>
            {
                (Some(ns.to_string()), *plural, tail)
            }
            [plural, tail @ ..] => (None, *plural, tail),
            [] => return Route::Unknown,
        };
        let Some(res) = st.registry.lookup(group, version, plural) else {
            return Route::Unknown;
        };
        let def = st.def(res).clone();
        let (name, subresource) = match tail {
            [] => (None, None),
            [name] => (Some(name.to_string()), None),
            [name, "status"] if def.status_subresource => {
                (Some(name.to_string()), Some("status".to_string()))
            }
            _ => return Route::Unknown,
        };
        // A namespaced object is only addressable inside its namespace.
        if def.namespaced && namespace.is_none() && name.is_some() {
            return Route::Unknown;
        }
        Route::Resource(Target {
            res,
            def,
            namespace,
            name,
            subresource,
        })
    })
}

/// The Kubernetes verb of a request, as RBAC names it.
fn verb_of(method: &Method, t: &Target, watch: bool) -> Option<&'static str> {
    match (t.name.is_some(), method.as_str()) {
        (false, "GET") if watch => Some("watch"),
        (false, "GET") => Some("list"),
        (false, "POST") => Some("create"),
        (false, "DELETE") => Some("deletecollection"),
        (true, "GET") => Some("get"),
        (true, "PUT") => Some("update"),
        (true, "PATCH") => Some("patch"),
        (true, "DELETE") => Some("delete"),
        _ => None,
    }
}

struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "true" | "True"))
    }

    fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.get(key).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid {key}: {v}"))),
        }
    }

    fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }

    fn filter(&self, t: &Target) -> Result<Filter, ApiError> {
        Ok(Filter {
            namespace: t.namespace.clone(),
            labels: LabelSelector::parse(self.get("labelSelector").unwrap_or_default())?,
            fields: FieldSelector::parse(self.get("fieldSelector").unwrap_or_default(), &t.def)?,
        })
    }
}

fn json_response(code: StatusCode, body: Vec<u8>) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn object_response(code: StatusCode, obj: &Value, metadata_only: bool) -> Response {
    let body = if metadata_only {
        serde_json::to_vec(&partial_metadata(obj))
    } else {
        serde_json::to_vec(obj)
    };
    match body {
        Ok(b) => json_response(code, b),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Continue tokens carry the list's resourceVersion and the last key returned.
fn encode_continue(rv: u64, key: &ObjKey) -> String {
    hex(json!([rv, key.0, key.1]).to_string().as_bytes())
}

fn decode_continue(token: &str) -> Result<(u64, ObjKey), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid");
    let v: Value = serde_json::from_slice(&unhex(token).ok_or_else(bad)?).map_err(|_| bad())?;
    match v.as_array().map(Vec::as_slice) {
        Some([Value::Number(rv), Value::String(ns), Value::String(name)]) => {
            Ok((rv.as_u64().ok_or_else(bad)?, (ns.clone(), name.clone())))
        }
        _ => Err(bad()),
    }
}

/// Entry point for every request.
pub async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let params = match Query::<Vec<(String, String)>>::try_from_uri(&parts.uri) {
        Ok(Query(p)) => Params(p),
        Err(e) => return ApiError::bad_request(e.to_string()).into_response(),
    };
    let route = route(&inner, parts.uri.path());
    let record = record_of(&parts.method, &parts.uri, &parts.headers, &route, &params);
    let verb = record.verb.clone();
    inner.wait_while_hung(&record).await;
    if let Some(err) = inner.log_and_check_faults(record) {
        return err.into_response();
    }
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return ApiError::from_code(413, e.to_string()).into_response(),
    };
    let metadata_only = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    let result = match route {
        Route::Version => Ok(version_response()),
        Route::CoreVersions => Ok(value_response(
            &inner.with_state(|st| st.registry.core_versions()),
        )),
        Route::Groups => Ok(value_response(
            &inner.with_state(|st| st.registry.group_list()),
        )),
        Route::ResourceList(g, v) => Ok(value_response(
            &inner.with_state(|st| st.registry.resource_list(&g, &v)),
        )),
        Route::Unknown => Err(ApiError::no_route()),
        Route::Resource(t) => {
            let ctx = Ctx {
                inner: inner.clone(),
                t,
                params,
                body,
                content_type: parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                metadata_only,
            };
            match verb.as_deref() {
                Some("get") => ctx.get(),
                Some("list") => ctx.list(),
                Some("watch") => ctx.watch().await,
                Some("create") => ctx.create(),
                Some("update") => ctx.update(),
                Some("patch") => ctx.patch(),
                Some("delete") => ctx.delete(),
                Some("deletecollection") => ctx.delete_collection(),
                _ => Err(ApiError::method_not_allowed(parts.method.as_str())),
            }
        }
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn value_response(v: &Value) -> Response {
    json_response(StatusCode::OK, v.to_string().into_bytes())
}

fn version_response() -> Response {
    value_response(&json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24",
        "compiler": "gc",
        "platform": "linux/amd64",
    }))
}

fn record_of(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    route: &Route,
    params: &Params,
) -> RequestRecord {
    let mut r = RequestRecord {
        method: method.clone(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        verb: None,
        group: None,
        version: None,
        resource: None,
        subresource: None,
        namespace: None,
        name: None,
        at: std::time::Instant::now(),
    };
    if let Route::Resource(t) = route {
        r.verb = verb_of(method, t, params.flag("watch")).map(str::to_string);
        r.group = Some(t.def.group.clone());
        r.version = Some(t.def.version.clone());
        r.resource = Some(t.def.plural.clone());
        r.subresource = t.subresource.clone();
        r.namespace = t.namespace.clone();
        r.name = t.name.clone();
    }
    r
}

/// Everything a verb handler needs.
struct Ctx {
    inner: Arc<Inner>,
    t: Target,
    params: Params,
    body: Bytes,
    content_type: Option<String>,
    metadata_only: bool,
}

type Reply = Result<Response, ApiError>;

impl Ctx {
    fn key(&self) -> ObjKey {
        ops::object_key(
            &self.t.def,
            self.t.namespace.as_deref(),
            self.t.name.as_deref().unwrap_or_default(),
        )
    }

    fn writer(&self) -> Writer {
        Writer::Request {
            dry_run: self.params.dry_run(),
        }
    }

    fn body_json(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }

    fn status_only(&self) -> bool {
        self.t.subresource.as_deref() == Some("status")
    }

    fn get(self) -> Reply {
        let key = self.key();
        match self.inner.with_state(|st| st.get(self.t.res, &key)) {
            Some(obj) => Ok(object_response(StatusCode::OK, &obj, self.metadata_only)),
            None => Err(ApiError::not_found(&self.t.def, &key.1)),
        }
    }

    fn list(self) -> Reply {
        self.inner.list_calls.fetch_add(1, Ordering::Relaxed);
        let filter = self.params.filter(&self.t)?;
        let token = self.params.get("continue").filter(|c| !c.is_empty());
        // As kube-apiserver 1.28 does: `resourceVersion=0` is served from the watch cache, which
        // ignores `limit`: the whole list comes in one response, however large.
        let from_cache = token.is_none() && self.params.get("resourceVersion") == Some("0");
        let limit = match self.params.number("limit")?.filter(|l| *l > 0) {
            Some(_) if from_cache => None,
            limit => limit,
        };
        let start = token.map(decode_continue).transpose()?;
        let res = self.t.res;
        let (rv, items, next) = self.inner.with_state(|st| {
            // A continued list keeps the first page's version, so a watch started from it
            // replays whatever changed while the pages were being read.
            let rv = match &start {
                Some((rv, _)) if st.is_compacted(*rv) => {
                    return Err(ApiError::new(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ));
                }
                Some((rv, _)) => *rv,
                None => st.resource_version(),
            };
            let limit = limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
            let (items, last) = st.list_page(res, &filter, start.as_ref().map(|(_, k)| k), limit);
            Ok((rv, items, last))
        })?;
        self.inner
            .largest_list
            .fetch_max(items.len(), Ordering::Relaxed);
        let mut meta = json!({ "resourceVersion": rv.to_string() });
        if let Some(last) = next {
            meta["continue"] = Value::String(encode_continue(rv, &last));
        }
        let (api_version, kind) = if self.metadata_only {
            (
                "meta.k8s.io/v1".to_string(),
                "PartialObjectMetadataList".to_string(),
            )
        } else {
            (self.t.def.api_version(), format!("{}List", self.t.def.kind))
        };
        // Items are written one by one from the shared objects: no copy of the store.
        let mut out = Vec::with_capacity(128 + items.len() * 512);
        out.extend_from_slice(
            format!(
                "{{\"apiVersion\":{},\"kind\":{},\"metadata\":{},\"items\":[",
                Value::String(api_version),
                Value::String(kind),
                meta
            )
            .as_bytes(),
        );
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let written = if self.metadata_only {
                serde_json::to_writer(&mut out, &partial_metadata(item))
            } else {
                serde_json::to_writer(&mut out, &**item)
            };
            written.map_err(|e| ApiError::internal(e.to_string()))?;
        }
        out.extend_from_slice(b"]}");
        Ok(json_response(StatusCode::OK, out))
    }

    async fn watch(self) -> Reply {
        self.inner.watch_calls.fetch_add(1, Ordering::Relaxed);
        let filter = self.params.filter(&self.t)?;
        let bookmarks = self.params.flag("allowWatchBookmarks");
        let initial = self.params.flag("sendInitialEvents");
        let start = match self.params.get("resourceVersion").filter(|v| !v.is_empty()) {
            _ if initial => WatchStart::Current {
                initial_events_end: true,
            },
            None | Some("0") => WatchStart::Current {
                initial_events_end: false,
            },
            Some(v) => WatchStart::After(
                v.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion: {v}")))?,
            ),
        };
        let timeout = self
            .params
            .number("timeoutSeconds")?
            .filter(|t| *t > 0)
            .map(Duration::from_secs);
        let rendering = Rendering {
            api_version: self.t.def.api_version(),
            kind: self.t.def.kind.clone(),
            metadata_only: self.metadata_only,
        };
        self.inner.wait_watches_released().await;
        let res = self.t.res;
        let opened = self
            .inner
            .with_state(|st| st.register_watch(res, filter, start, bookmarks));
        let body = match opened {
            Ok((id, rx)) => {
                self.inner.publish_open_watches();
                let bookmark_interval = if bookmarks {
                    self.inner.bookmark_interval()
                } else {
                    None
                };
                Body::from_stream(watch::stream(
                    self.inner.clone(),
                    OpenWatch {
                        id,
                        rx,
                        timeout,
                        bookmark_interval,
                        rendering,
                    },
                ))
            }
            // Too old a resourceVersion is reported inside a 200 stream, as the watch cache does.
            Err(err) => Body::from_stream(watch::error_stream(err, rendering)),
        };
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response())
    }

    fn create(self) -> Reply {
        if self.t.def.namespaced && self.t.namespace.is_none() {
            return Err(ApiError::no_route());
        }
        let obj = self.body_json()?;
        let (res, writer) = (self.t.res, self.writer());
        let ns = self.t.namespace.clone();
        let created = self
            .inner
            .with_state(|st| ops::create(st, res, ns.as_deref(), obj, writer))?;
        Ok(object_response(
            StatusCode::CREATED,
            &created,
            self.metadata_only,
        ))
    }

    fn update(self) -> Reply {
        let obj = self.body_json()?;
        let (res, writer, key, status_only) =
            (self.t.res, self.writer(), self.key(), self.status_only());
        let stored = self
            .inner
            .with_state(|st| ops::replace(st, res, key, obj, status_only, writer))?;
        Ok(object_response(StatusCode::OK, &stored, self.metadata_only))
    }

    fn patch(self) -> Reply {
        let ct = self.content_type.clone().unwrap_or_default();
        let kind = PatchKind::from_content_type(&ct).ok_or_else(|| {
            ApiError::from_code(415, format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {ct:?})"))
        })?;
        if kind == PatchKind::Apply && self.params.get("fieldManager").is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        let (res, writer, key, status_only) =
            (self.t.res, self.writer(), self.key(), self.status_only());
        let (existed, stored) = self.inner.with_state(|st| {
            let existed = st.get(res, &key).is_some();
            ops::patch(st, res, key, kind, &self.body, status_only, writer).map(|o| (existed, o))
        })?;
        let code = if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        Ok(object_response(code, &stored, self.metadata_only))
    }

    fn delete(self) -> Reply {
        let pre = Preconditions::from_delete_options(&self.body)?;
        let (res, writer, key) = (self.t.res, self.writer(), self.key());
        let last = self
            .inner
            .with_state(|st| ops::delete(st, res, key, &pre, writer))?;
        Ok(object_response(StatusCode::OK, &last, self.metadata_only))
    }

    fn delete_collection(self) -> Reply {
        let filter = self.params.filter(&self.t)?;
        let (res, writer) = (self.t.res, self.writer());
        let (rv, items) = self.inner.with_state(|st| {
            let items = ops::delete_collection(st, res, &filter, writer)?;
            Ok::<_, ApiError>((st.resource_version(), items))
        })?;
        let items: Vec<&Value> = items.iter().map(|a| &**a).collect();
        let list = json!({
            "apiVersion": self.t.def.api_version(),
            "kind": format!("{}List", self.t.def.kind),
            "metadata": { "resourceVersion": rv.to_string() },
            "items": items,
        });
        Ok(value_response(&list))
    }
}
