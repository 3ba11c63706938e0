//! An in-process fake Kubernetes apiserver speaking the real wire protocol, for driving a real
//! `kube::Client` (reflectors, watchers, `Api` calls, event recorders, leases) without a cluster.
//!
//! # Getting a client
//!
//! ```ignore
//! let fake = FakeApiServer::new();
//! let client = fake.client(); // kube::Client over the axum Router, no socket
//! let svcs: Api<Service> = Api::namespaced(client, "default");
//! fake.insert(&my_service)?;  // test-side write; watchers see ADDED
//!
//! // Or on a real socket, e.g. to run the binary against it:
//! let tcp = fake.serve_tcp().await?;
//! tcp.write_kubeconfig(&dir.path().join("kubeconfig"), "default")?; // KUBECONFIG=that file
//! ```
//!
//! # Injecting faults and observing traffic
//!
//! ```ignore
//! fake.fail_next(1, Matcher::any().verb("patch").resource("services"), 500); // next PATCH -> 500
//! fake.fail_next(2, Matcher::new(Method::GET, "/configmaps"), 503);
//! fake.drop_watches();              // every open WATCH ends; clients resume from their last RV
//! fake.hold_watches();              // new WATCH requests wait until release_watches()
//! fake.set_watch_log_retention(0);  // older resourceVersions -> 410 Gone -> watchers relist
//! fake.request_log();               // (method, path, query, content-type, verb, resource, ...)
//! fake.list_count(); fake.watch_count();
//! ```
//!
//! # What it implements
//!
//! * Resources: core/v1 services (+`/status`), configmaps, secrets, events, endpoints, namespaces
//!   (+`/status`); events.k8s.io/v1 events; coordination.k8s.io/v1 leases;
//!   admissionregistration.k8s.io/v1 mutating/validating webhook configurations. More via
//!   [`FakeApiServer::register_resource`]. Discovery (`/api`, `/apis`, `/api/v1`, ...) and
//!   `/version` are served; anything else is a 404 `Status`.
//! * One global resourceVersion stamped on every change; uid and creationTimestamp on create;
//!   `generateName`; no-op writes keep the version; finalizers delay deletion (deletionTimestamp).
//! * GET; LIST (per namespace or all, `labelSelector` incl. set-based, `fieldSelector`
//!   `metadata.name`/`metadata.namespace` (+ a few per-type labels), `limit`/`continue` from a
//!   consistent resourceVersion); WATCH (replay from an event log, synthetic ADDED for RV unset/0,
//!   `sendInitialEvents` with the initial-events-end BOOKMARK, optional periodic BOOKMARKs,
//!   `timeoutSeconds`, `ERROR` 410 for compacted versions); POST; PUT; PATCH (JSON patch,
//!   merge, strategic ≈ merge, apply ≈ merge that may create); DELETE; DELETE collection;
//!   `dryRun=All`; `Accept: ...;as=PartialObjectMetadata` (metadata watchers).
//! * Errors as real `Status` bodies: 404 NotFound, 409 AlreadyExists, 409 Conflict (stale
//!   `metadata.resourceVersion` in PUT/merge/apply bodies, delete preconditions), 422 Invalid (a
//!   failed JSON-patch `test`, exactly as the apiserver answers it), 400 BadRequest.
//!
//! Not modelled: authn/authz, admission webhooks, defaulting/validation of object contents
//! (e.g. no clusterIP allocation), server-side-apply field ownership, managedFields, shared
//! storage between core/v1 and events.k8s.io/v1 events, namespace existence checks.
//!
//! This file is self-contained so a bench can include it with
//! `#[path = "../tests/support/fake_apiserver.rs"] mod fake_apiserver;`.
// Each test binary uses a different part of this support code.
#![allow(dead_code)]

#[path = "fake_apiserver/errors.rs"]
mod errors;
#[path = "fake_apiserver/http.rs"]
mod http;
#[path = "fake_apiserver/ops.rs"]
mod ops;
#[path = "fake_apiserver/resources.rs"]
mod resources;
#[path = "fake_apiserver/selectors.rs"]
mod selectors;
#[path = "fake_apiserver/store.rs"]
mod store;
#[path = "fake_apiserver/watch.rs"]
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::http::Method;
use kube::core::GroupVersionResource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::task::JoinHandle;

pub use errors::ApiError;
pub use resources::ResourceDef;

use ops::{Preconditions, Writer};
use resources::ResId;
use selectors::Filter;
use store::State;

/// Change events kept for watch replay unless [`FakeApiServer::set_watch_log_retention`] says otherwise.
pub const DEFAULT_RETENTION: usize = store::DEFAULT_RETENTION;

/// One request as the fake saw it (recorded before fault injection, so failed calls count).
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRecord {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub content_type: Option<String>,
    /// Kubernetes verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`); `None` for discovery and unknown paths.
    pub verb: Option<String>,
    pub group: Option<String>,
    pub version: Option<String>,
    /// Resource plural.
    pub resource: Option<String>,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// When the fake received it (for tests of rate limits).
    pub at: std::time::Instant,
}

/// Selects requests for fault injection and counting. Every field set must match.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    method: Option<Method>,
    path_contains: Option<String>,
    verb: Option<String>,
    resource: Option<String>,
    subresource: Option<String>,
}

impl Matcher {
    /// Matches every request.
    pub fn any() -> Self {
        Self::default()
    }

    /// Requests with this method whose path contains `path_contains`.
    pub fn new(method: Method, path_contains: &str) -> Self {
        Self::any().method(method).path_contains(path_contains)
    }

    pub fn method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    pub fn path_contains(mut self, s: &str) -> Self {
        self.path_contains = Some(s.to_string());
        self
    }

    /// Kubernetes verb, e.g. `"watch"` or `"patch"`.
    pub fn verb(mut self, verb: &str) -> Self {
        self.verb = Some(verb.to_string());
        self
    }

    /// Resource plural, e.g. `"services"`.
    pub fn resource(mut self, plural: &str) -> Self {
        self.resource = Some(plural.to_string());
        self
    }

    pub fn subresource(mut self, sub: &str) -> Self {
        self.subresource = Some(sub.to_string());
        self
    }

    pub fn matches(&self, r: &RequestRecord) -> bool {
        self.method.as_ref().is_none_or(|m| *m == r.method)
            && self
                .path_contains
                .as_ref()
                .is_none_or(|p| r.path.contains(p.as_str()))
            && self
                .verb
                .as_ref()
                .is_none_or(|v| r.verb.as_ref() == Some(v))
            && self
                .resource
                .as_ref()
                .is_none_or(|v| r.resource.as_ref() == Some(v))
            && self
                .subresource
                .as_ref()
                .is_none_or(|v| r.subresource.as_ref() == Some(v))
    }
}

struct Fault {
    remaining: usize,
    matcher: Matcher,
    error: ApiError,
}

#[derive(Default)]
struct Control {
    faults: Vec<Fault>,
    /// Requests matching any of these wait (an apiserver that stopped answering) until removed.
    hangs: Vec<Matcher>,
    log: Vec<RequestRecord>,
    bookmark_interval: Option<Duration>,
}

/// Shared state behind every clone of the handle and every in-flight request.
struct Inner {
    state: Mutex<State>,
    control: Mutex<Control>,
    list_calls: AtomicU64,
    /// Most items any one LIST response carried.
    largest_list: std::sync::atomic::AtomicUsize,
    watch_calls: AtomicU64,
    /// Bumped by `drop_watches`; every stream ends when it changes.
    kill_tx: tokio::sync::watch::Sender<u64>,
    /// While true, new WATCH requests wait before opening.
    hold_tx: tokio::sync::watch::Sender<bool>,
    /// Bumped when hangs are lifted; hung requests look again.
    unhang_tx: tokio::sync::watch::Sender<u64>,
    open_tx: tokio::sync::watch::Sender<usize>,
}

impl Inner {
    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A test that panicked while holding the lock must not wedge the others.
        let mut guard: MutexGuard<'_, State> =
            self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    fn with_control<R>(&self, f: impl FnOnce(&mut Control) -> R) -> R {
        let mut guard = self.control.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    fn publish_open_watches(&self) {
        let n = self.with_state(|st| st.open_watches());
        self.open_tx.send_replace(n);
    }

    fn bookmark_interval(&self) -> Option<Duration> {
        self.with_control(|c| c.bookmark_interval)
    }

    async fn wait_watches_released(&self) {
        let mut rx = self.hold_tx.subscribe();
        // The sender lives in `self`, so this only ends by the value turning false.
        let _ = rx.wait_for(|held| !*held).await;
    }

    /// Records the request and returns the injected error, if a fault matches.
    /// Wait while `record` matches an injected hang (logged once it goes on).
    async fn wait_while_hung(&self, record: &RequestRecord) {
        let mut rx = self.unhang_tx.subscribe();
        while self.with_control(|c| c.hangs.iter().any(|m| m.matches(record))) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    fn log_and_check_faults(&self, record: RequestRecord) -> Option<ApiError> {
        self.with_control(|c| {
            let hit = c
                .faults
                .iter_mut()
                .find(|f| f.remaining > 0 && f.matcher.matches(&record));
            let err = hit.map(|f| {
                f.remaining -= 1;
                f.error.clone()
            });
            c.faults.retain(|f| f.remaining > 0);
            c.log.push(record);
            err
        })
    }
}

/// Switch of a [`FakeApiServer::partitionable_client`].
#[derive(Clone)]
pub struct Partition(Arc<tokio::sync::watch::Sender<bool>>);

impl Partition {
    pub fn cut(&self) {
        self.0.send_replace(true);
    }

    pub fn heal(&self) {
        self.0.send_replace(false);
    }
}

/// Handle to a fake apiserver. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct FakeApiServer {
    inner: Arc<Inner>,
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self::new()
    }
}

/// Typed objects the handle can read and write (every k8s-openapi resource).
pub trait Object: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned {}
impl<K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned> Object for K {}

fn gvr_of<K: Object>() -> GroupVersionResource {
    GroupVersionResource::gvr(&K::group(&()), &K::version(&()), &K::plural(&()))
}

fn from_value<K: Object>(v: &Value) -> Result<K, ApiError> {
    serde_json::from_value(v.clone())
        .map_err(|e| ApiError::internal(format!("decoding stored object: {e}")))
}

impl FakeApiServer {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::new()),
                control: Mutex::new(Control::default()),
                list_calls: AtomicU64::new(0),
                largest_list: std::sync::atomic::AtomicUsize::new(0),
                watch_calls: AtomicU64::new(0),
                kill_tx: tokio::sync::watch::Sender::new(0),
                hold_tx: tokio::sync::watch::Sender::new(false),
                unhang_tx: tokio::sync::watch::Sender::new(0),
                open_tx: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    /// The apiserver as an axum `Router` (one fallback handler does all routing).
    pub fn router(&self) -> Router {
        Router::new()
            .fallback(http::handle)
            .with_state(self.inner.clone())
    }

    /// A `kube::Client` talking to this fake in-process, default namespace `default`.
    /// Must be called inside a Tokio runtime.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.router(), "default")
    }

    /// A client that can be cut off from this fake alone (a network partition, or an apiserver
    /// that stopped answering it): while cut, its requests wait; other clients are served.
    pub fn partitionable_client(&self) -> (kube::Client, Partition) {
        let partition = Partition(Arc::new(tokio::sync::watch::Sender::new(false)));
        let gate = partition.clone();
        let router = self.router().layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let mut open = gate.0.subscribe();
                async move {
                    let _ = open.wait_for(|cut| !*cut).await;
                    next.run(req).await
                }
            },
        ));
        (kube::Client::new(router, "default"), partition)
    }

    /// Serves the fake on `127.0.0.1:<ephemeral>` over plain HTTP until the returned value drops.
    pub async fn serve_tcp(&self) -> std::io::Result<TcpFakeApiServer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let router = self.router();
        let task = tokio::spawn(async move {
            // Serving only stops by abort (drop of the handle); an accept error ends the task.
            let _ = axum::serve(listener, router).await;
        });
        Ok(TcpFakeApiServer { addr, task })
    }

    /// Adds (or replaces) a served resource type.
    pub fn register_resource(&self, def: ResourceDef) {
        self.inner.with_state(|st| st.register(def));
    }

    fn res_id(&self, gvr: &GroupVersionResource) -> Result<ResId, ApiError> {
        self.inner
            .with_state(|st| st.registry.lookup(&gvr.group, &gvr.version, &gvr.resource))
            .ok_or_else(|| {
                ApiError::from_code(
                    404,
                    format!(
                        "resource {}/{}/{} is not served by the fake; register_resource it first",
                        gvr.group, gvr.version, gvr.resource
                    ),
                )
            })
    }

    fn namespace_of(&self, res: ResId, obj: &Value) -> Option<String> {
        let namespaced = self.inner.with_state(|st| st.def(res).namespaced);
        namespaced.then(|| {
            store::meta_str(obj, "namespace")
                .unwrap_or("default")
                .to_string()
        })
    }

    // ---- object controls (bypass faults and the request log; emit watch events) ----

    /// Creates an object as the apiserver would (uid, creationTimestamp, resourceVersion).
    /// Status is kept as given. Namespaced objects without a namespace go to `default`.
    pub fn insert_value(&self, gvr: &GroupVersionResource, obj: Value) -> Result<Value, ApiError> {
        let res = self.res_id(gvr)?;
        let ns = self.namespace_of(res, &obj);
        self.inner
            .with_state(|st| ops::create(st, res, ns.as_deref(), obj, Writer::Control))
            .map(|o| (*o).clone())
    }

    /// Creates or replaces an object, ignoring its resourceVersion (uid and creationTimestamp
    /// of an existing object are kept).
    pub fn upsert_value(&self, gvr: &GroupVersionResource, obj: Value) -> Result<Value, ApiError> {
        let res = self.res_id(gvr)?;
        let ns = self.namespace_of(res, &obj);
        let name = store::meta_str(&obj, "name")
            .ok_or_else(|| ApiError::bad_request("upsert needs metadata.name"))?
            .to_string();
        self.inner.with_state(|st| {
            let key = ops::object_key(st.def(res), ns.as_deref(), &name);
            let out = if st.get(res, &key).is_some() {
                ops::replace(st, res, key, obj, false, Writer::Control)
            } else {
                ops::create(st, res, ns.as_deref(), obj, Writer::Control)
            };
            out.map(|o| (*o).clone())
        })
    }

    /// Deletes an object immediately (finalizers ignored); watchers see DELETED.
    pub fn delete_value(
        &self,
        gvr: &GroupVersionResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let res = self.res_id(gvr)?;
        self.inner.with_state(|st| {
            let key = ops::object_key(st.def(res), namespace, name);
            ops::delete(st, res, key, &Preconditions::default(), Writer::Control)
                .map(|o| (*o).clone())
        })
    }

    pub fn get_value(
        &self,
        gvr: &GroupVersionResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let res = self.res_id(gvr).ok()?;
        self.inner.with_state(|st| {
            let key = ops::object_key(st.def(res), namespace, name);
            st.get(res, &key).map(|o| (*o).clone())
        })
    }

    /// Objects of a resource in `namespace` (or everywhere), in key order.
    pub fn list_values(&self, gvr: &GroupVersionResource, namespace: Option<&str>) -> Vec<Value> {
        let Ok(res) = self.res_id(gvr) else {
            return Vec::new();
        };
        let filter = Filter {
            namespace: namespace.map(str::to_string),
            ..Filter::default()
        };
        self.inner.with_state(|st| {
            st.list_all(res, &filter)
                .iter()
                .map(|o| (**o).clone())
                .collect()
        })
    }

    /// Typed [`insert_value`](Self::insert_value).
    pub fn insert<K: Object>(&self, obj: &K) -> Result<K, ApiError> {
        let v = serde_json::to_value(obj).map_err(|e| ApiError::bad_request(e.to_string()))?;
        from_value(&self.insert_value(&gvr_of::<K>(), v)?)
    }

    /// Typed [`upsert_value`](Self::upsert_value).
    pub fn upsert<K: Object>(&self, obj: &K) -> Result<K, ApiError> {
        let v = serde_json::to_value(obj).map_err(|e| ApiError::bad_request(e.to_string()))?;
        from_value(&self.upsert_value(&gvr_of::<K>(), v)?)
    }

    /// Typed [`delete_value`](Self::delete_value); `namespace` is ignored for cluster-scoped kinds.
    pub fn delete<K: Object>(&self, namespace: Option<&str>, name: &str) -> Result<K, ApiError> {
        from_value(&self.delete_value(&gvr_of::<K>(), namespace, name)?)
    }

    pub fn get<K: Object>(&self, namespace: Option<&str>, name: &str) -> Option<K> {
        self.get_value(&gvr_of::<K>(), namespace, name)
            .and_then(|v| from_value(&v).ok())
    }

    pub fn list<K: Object>(&self, namespace: Option<&str>) -> Vec<K> {
        self.list_values(&gvr_of::<K>(), namespace)
            .iter()
            .filter_map(|v| from_value(v).ok())
            .collect()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.with_state(|st| st.resource_version())
    }

    // ---- fault injection ----

    /// The next `n` requests matching `matcher` fail with `code` (standard reason, e.g. 500
    /// InternalError, 409 Conflict, 429 TooManyRequests) without touching the store.
    pub fn fail_next(&self, n: usize, matcher: Matcher, code: u16) {
        self.fail_next_with(
            n,
            matcher,
            ApiError::from_code(code, "injected by fake apiserver"),
        );
    }

    /// Like [`fail_next`](Self::fail_next) with a chosen `Status`.
    pub fn fail_next_with(&self, n: usize, matcher: Matcher, error: ApiError) {
        if n == 0 {
            return;
        }
        self.inner.with_control(|c| {
            c.faults.push(Fault {
                remaining: n,
                matcher,
                error,
            })
        });
    }

    /// Injected failures not yet used.
    pub fn pending_faults(&self) -> usize {
        self.inner
            .with_control(|c| c.faults.iter().map(|f| f.remaining).sum())
    }

    pub fn clear_faults(&self) {
        self.inner.with_control(|c| c.faults.clear());
    }

    /// Requests matching `matcher` get no answer (they wait) until [`unhang`](Self::unhang): an
    /// apiserver that accepts connections but stops answering.
    pub fn hang(&self, matcher: Matcher) {
        self.inner.with_control(|c| c.hangs.push(matcher));
    }

    /// Hung requests go on (and later ones are answered).
    pub fn unhang(&self) {
        self.inner.with_control(|c| c.hangs.clear());
        self.inner.unhang_tx.send_modify(|n| *n += 1);
    }

    // ---- watches ----

    /// Ends every open watch stream now (queued, unsent events are discarded, as on a cut
    /// connection). Clients reconnect from the last resourceVersion they saw.
    pub fn drop_watches(&self) {
        self.inner.with_state(|st| st.drop_watches());
        self.inner.kill_tx.send_modify(|g| *g += 1);
        self.inner.open_tx.send_replace(0);
    }

    /// New WATCH requests wait (already counted and logged) until [`release_watches`](Self::release_watches).
    pub fn hold_watches(&self) {
        self.inner.hold_tx.send_replace(true);
    }

    pub fn release_watches(&self) {
        self.inner.hold_tx.send_replace(false);
    }

    /// Watch streams currently open.
    pub fn open_watches(&self) -> usize {
        self.inner.with_state(|st| st.open_watches())
    }

    /// Resolves once at least `n` watch streams are open.
    pub async fn wait_for_open_watches(&self, n: usize) {
        let mut rx = self.inner.open_tx.subscribe();
        let _ = rx.wait_for(|open| *open >= n).await;
    }

    /// How many change events are kept for watch replay (default [`DEFAULT_RETENTION`]).
    /// A watch or LIST continuation from an older resourceVersion gets 410 Expired.
    pub fn set_watch_log_retention(&self, n: usize) {
        self.inner.with_state(|st| st.set_retention(n));
    }

    /// Periodic BOOKMARKs on watches that asked for them (applies to watches opened later).
    pub fn set_bookmark_interval(&self, every: Option<Duration>) {
        self.inner.with_control(|c| c.bookmark_interval = every);
    }

    /// Sends a BOOKMARK at the current resourceVersion on every watch that allows them.
    pub fn send_bookmarks(&self) {
        self.inner.with_state(|st| st.queue_bookmarks(None));
    }

    // ---- observation ----

    /// Every request received so far, in order.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.inner.with_control(|c| c.log.clone())
    }

    pub fn clear_request_log(&self) {
        self.inner.with_control(|c| c.log.clear());
    }

    /// Requests in the log matching `matcher`.
    pub fn count_requests(&self, matcher: &Matcher) -> usize {
        self.inner
            .with_control(|c| c.log.iter().filter(|r| matcher.matches(r)).count())
    }

    /// LIST requests that reached the handler (injected failures excluded).
    pub fn list_count(&self) -> u64 {
        self.inner.list_calls.load(Ordering::Relaxed)
    }

    /// Most items any one LIST response carried (a list read in pages carries at most a page).
    pub fn largest_list_response(&self) -> usize {
        self.inner.largest_list.load(Ordering::Relaxed)
    }

    /// WATCH requests that reached the handler (injected failures excluded).
    pub fn watch_count(&self) -> u64 {
        self.inner.watch_calls.load(Ordering::Relaxed)
    }
}

/// The fake served on a TCP socket; stops accepting when dropped.
pub struct TcpFakeApiServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpFakeApiServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server (plain HTTP, a dummy token).
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             users:\n- name: fake\n  user:\n    token: fake-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n\
             current-context: fake\n",
            url = self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml(namespace))
    }
}

impl Drop for TcpFakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
