//! The fallback: any handled LoadBalancer Service without an address gets one, through the same
//! engine as the webhook. Services that cannot get one wait until an address frees up or the
//! ConfigMap changes, and are woken by that event (no polling).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use json_patch::{Patch as JsonPatch, PatchOperation, TestOperation};
use jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ClusterArgs;
use super::lease::LeaderState;
use super::watches::{Synced, parse_config, service_stream};
use crate::engine::{Options, Outcome};
use crate::metrics::Metrics;
use crate::service::SvcInfo;
use crate::state::{Allocator, Request};
use crate::webhook::{Present, patch_for};

pub const MANAGER: &str = "kube-vip-webhook";

pub struct Context {
    client: kube::Client,
    allocator: Arc<Allocator>,
    metrics: Arc<Metrics>,
    leader: LeaderState,
    recorder: Recorder,
    /// Services that got no address, woken when one may have freed up.
    waiting: Mutex<HashSet<ObjectRef<Service>>>,
    wake: mpsc::UnboundedSender<ObjectRef<Service>>,
    wake_rx: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<Service>>>>,
    /// Config errors last reported, so the ConfigMap Event is sent once per change.
    reported_config: Mutex<Option<Vec<String>>>,
    /// Address clashes already reported (pairs of Services on one address).
    reported_clashes: Mutex<HashSet<(String, String, IpAddr)>>,
    /// Services being listed after a (re)start of the watch.
    listing: Mutex<Vec<SvcInfo>>,
    /// Last AllocationFailed reason per Service, so a retry that fails the same way is quiet.
    last_failure: Mutex<HashMap<ObjectRef<Service>, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Service changed while we wrote it (resourceVersion conflict); retrying")]
    Conflict,
    #[error("patching the Service failed: {0}")]
    Patch(#[source] kube::Error),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Context {
    pub fn new(
        client: kube::Client,
        allocator: Arc<Allocator>,
        metrics: Arc<Metrics>,
        leader: LeaderState,
        instance: String,
    ) -> Self {
        let (wake, wake_rx) = mpsc::unbounded_channel();
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(instance),
            },
        );
        Context {
            client,
            allocator,
            metrics,
            leader,
            recorder,
            waiting: Mutex::default(),
            wake,
            wake_rx: Mutex::new(Some(wake_rx)),
            reported_config: Mutex::default(),
            reported_clashes: Mutex::default(),
            listing: Mutex::default(),
            last_failure: Mutex::default(),
        }
    }

    /// Re-run every waiting Service (an address freed up, or the pools changed).
    fn wake_waiting(&self) {
        let waiting: Vec<_> = lock(&self.waiting).drain().collect();
        for r in waiting {
            let _ = self.wake.send(r);
        }
    }

    async fn event(
        &self,
        obj: &ObjectRef<Service>,
        reference: k8s_openapi::api::core::v1::ObjectReference,
        ev: Event,
    ) {
        if !self.leader.is_leader() {
            return; // one replica speaks, or every Event would be doubled
        }
        self.metrics.inc_event(&ev.reason);
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::warn!(object = %obj, reason = %ev.reason, error = %e, "cannot publish Event");
        }
    }

    /// A ConfigMap change (or its absence): parse once, swap, report, wake waiters.
    pub async fn config_changed(&self, cm: Option<&ConfigMap>, args: &ClusterArgs) {
        let config = parse_config(cm);
        let name = args.config_name();
        let errors: Option<Vec<String>> = config
            .as_ref()
            .map(|c| c.errors().iter().map(ToString::to_string).collect());
        match &errors {
            None => {
                tracing::warn!(configmap = %name, "pool ConfigMap not found; no addresses will be allocated (it is never created by us)")
            }
            Some(errs) => {
                for e in errs {
                    tracing::warn!(configmap = %name, "config error: {e}");
                }
                tracing::info!(configmap = %name, errors = errs.len(), "pool configuration loaded");
            }
        }
        self.allocator.set_config(config);
        if errors.is_some() {
            self.metrics.set_config_loaded(std::time::SystemTime::now());
        }
        let changed = {
            let mut last = lock(&self.reported_config);
            let changed = *last != errors;
            *last = errors.clone();
            changed
        };
        if let (true, Some(cm), Some(errs)) = (changed, cm, &errors)
            && !errs.is_empty()
        {
            let mut note = format!("{} bad entries ignored: {}", errs.len(), errs.join("; "));
            truncate(&mut note, 1000);
            let reference = cm.object_ref(&());
            if self.leader.is_leader() {
                self.metrics.inc_event("InvalidConfiguration");
                let ev = Event {
                    type_: EventType::Warning,
                    reason: "InvalidConfiguration".into(),
                    note: Some(note),
                    action: "ParseConfig".into(),
                    secondary: None,
                };
                if let Err(e) = self.recorder.publish(&ev, &reference).await {
                    tracing::warn!(error = %e, "cannot publish ConfigMap Event");
                }
            }
        }
        self.wake_waiting();
    }

    /// Feed one watch event into the index (always, on every replica).
    fn index_event(&self, ev: &watcher::Event<Service>, synced: &Synced) {
        match ev {
            watcher::Event::Init => lock(&self.listing).clear(),
            watcher::Event::InitApply(svc) => lock(&self.listing).push(SvcInfo::from_service(svc)),
            watcher::Event::InitDone => {
                let listed = std::mem::take(&mut *lock(&self.listing));
                self.allocator.reset_services(&listed);
                synced.services_synced();
                self.wake_waiting();
            }
            watcher::Event::Apply(svc) => {
                let info = SvcInfo::from_service(svc);
                if self.allocator.apply_service(&info) {
                    self.wake_waiting();
                }
                self.check_clashes(&info);
            }
            watcher::Event::Delete(svc) => {
                let key = SvcInfo::from_service(svc).key();
                lock(&self.last_failure).remove(&ObjectRef::from_obj(svc));
                if self.allocator.delete_service(&key) {
                    self.wake_waiting();
                }
            }
        }
    }

    /// Two Services on one address with a clashing (port, protocol): users pinned them behind
    /// our back. Never moved; each gets a Warning Event once.
    fn check_clashes(&self, svc: &SvcInfo) {
        if !self.leader.is_leader() {
            return;
        }
        for (ip, other) in self.allocator.clashes_of(svc) {
            let me = svc.key().to_string();
            let pair = if me < other {
                (me.clone(), other.clone(), ip)
            } else {
                (other.clone(), me.clone(), ip)
            };
            if !lock(&self.reported_clashes).insert(pair) {
                continue;
            }
            for (subject, against) in [(me.clone(), other.clone()), (other.clone(), me.clone())] {
                let Some((ns, name)) = subject.split_once('/') else {
                    continue;
                };
                let obj: ObjectRef<Service> = ObjectRef::new(name).within(ns);
                let reference = k8s_openapi::api::core::v1::ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Service".into()),
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    ..Default::default()
                };
                let ev = Event {
                    type_: EventType::Warning,
                    reason: "AddressConflict".into(),
                    note: Some(format!(
                        "address {ip} is also used by Service {against} with a clashing port/protocol; neither is moved"
                    )),
                    action: "CheckAddress".into(),
                    secondary: None,
                };
                let ctx_ev = self.event_task(obj, reference, ev);
                tokio::spawn(ctx_ev);
            }
        }
    }

    fn event_task(
        &self,
        obj: ObjectRef<Service>,
        reference: k8s_openapi::api::core::v1::ObjectReference,
        ev: Event,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let recorder = self.recorder.clone();
        let metrics = self.metrics.clone();
        async move {
            metrics.inc_event(&ev.reason);
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::warn!(object = %obj, error = %e, "cannot publish Event");
            }
        }
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
}

/// Watch all Services (feeding the index) and run the reconciler on them.
pub async fn run(
    client: kube::Client,
    ctx: Arc<Context>,
    synced: Synced,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (reader, writer) = reflector::store();
    let (waiting, metrics) = (reader.clone(), ctx.metrics.clone());
    let index_ctx = ctx.clone();
    let sync = synced.clone();
    let options = ctx.allocator.options().clone();
    let stream = service_stream(client)
        // Every event feeds the used-address index first.
        .inspect_ok(move |ev| index_ctx.index_event(ev, &sync))
        // The controller's store keeps only Services that still need an address: a cache of
        // every Service would be most of our memory at 100k Services, and nothing else reads it.
        .try_filter_map(move |ev| std::future::ready(Ok(pending_only(ev, &options))))
        .reflect(writer)
        // The store holds exactly the Services still waiting for an address (on every replica).
        .inspect_ok(move |_| metrics.set_services_waiting(waiting.len()))
        .applied_objects();
    let wake_rx = lock(&ctx.wake_rx).take();
    let wake = futures::stream::unfold(wake_rx, |rx| async move {
        let mut rx = rx?;
        let next = rx.recv().await?;
        Some((next, Some(rx)))
    });
    let became_leader = ctx.leader.acquired_stream();
    let token = shutdown.clone();
    Controller::for_stream(stream, reader)
        .reconcile_on(wake)
        .reconcile_all_on(became_leader)
        .graceful_shutdown_on(async move { token.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
    Ok(())
}

/// The event as the reconciler's store sees it: a Service that does not need an address (has
/// one, or is not ours) leaves the store (a delete of an absent object is a no-op) and is never
/// reconciled; during a (re)list it is simply not listed.
fn pending_only(ev: watcher::Event<Service>, options: &Options) -> Option<watcher::Event<Service>> {
    let needs = |svc: &Service| options.needs_allocation(&SvcInfo::from_service(svc));
    match ev {
        watcher::Event::InitApply(svc) if !needs(&svc) => None,
        watcher::Event::Apply(svc) if !needs(&svc) => Some(watcher::Event::Delete(svc)),
        other => Some(other),
    }
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let obj = ObjectRef::from_obj(svc.as_ref());
    if !ctx.leader.is_leader() {
        return Ok(Action::await_change());
    }
    let info = SvcInfo::from_service(&svc);
    if !ctx.allocator.options().needs_allocation(&info) {
        lock(&ctx.waiting).remove(&obj);
        return Ok(Action::await_change());
    }
    let id = format!("reconcile/{}", svc.uid().unwrap_or_else(|| obj.to_string()));
    let decision = ctx.allocator.admit(
        Request {
            id: &id,
            svc: &info,
            old: None,
            dry_run: false,
        },
        Instant::now(),
    );
    let reference = svc.object_ref(&());
    match &decision.outcome {
        Outcome::Allocated { ips, pool, .. } => {
            let mut ops = vec![PatchOperation::Test(TestOperation {
                path: PointerBuf::from_tokens(["metadata", "resourceVersion"]),
                value: serde_json::Value::String(svc.resource_version().unwrap_or_default()),
            })];
            ops.extend(patch_for(&decision.changes, Present::of(&svc)).0);
            let api: Api<Service> = Api::namespaced(ctx.client.clone(), &info.namespace);
            let params = PatchParams::apply(MANAGER);
            let params = PatchParams {
                field_manager: params.field_manager,
                ..PatchParams::default()
            };
            match api
                .patch(&info.name, &params, &Patch::Json::<()>(JsonPatch(ops)))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => {
                    ctx.metrics.inc_reconcile("conflict");
                    return Err(ReconcileError::Conflict);
                }
                Err(e) => {
                    ctx.metrics.inc_reconcile("error");
                    return Err(ReconcileError::Patch(e));
                }
            }
            lock(&ctx.waiting).remove(&obj);
            lock(&ctx.last_failure).remove(&obj);
            ctx.metrics.inc_reconcile("allocated");
            let list = ips
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(",");
            tracing::info!(service = %obj, ips = %list, pool = %pool, "allocated by the reconciler");
            let ev = Event {
                type_: EventType::Normal,
                reason: "IPAllocated".into(),
                note: Some(format!("Assigned {list} from pool {pool}")),
                action: "Allocate".into(),
                secondary: None,
            };
            ctx.event(&obj, reference, ev).await;
            Ok(Action::await_change())
        }
        Outcome::NoAddress(why) => {
            lock(&ctx.waiting).insert(obj.clone());
            ctx.metrics.inc_reconcile("no_address");
            let repeated = lock(&ctx.last_failure)
                .insert(obj.clone(), why.clone())
                .as_deref()
                == Some(why.as_str());
            if !repeated {
                tracing::info!(service = %obj, reason = %why, "no address; waiting for one to free up");
                let mut note = why.clone();
                truncate(&mut note, 1000);
                let ev = Event {
                    type_: EventType::Warning,
                    reason: "AllocationFailed".into(),
                    note: Some(note),
                    action: "Allocate".into(),
                    secondary: None,
                };
                ctx.event(&obj, reference, ev).await;
            }
            Ok(Action::await_change())
        }
        _ => Ok(Action::await_change()),
    }
}

fn error_policy(_svc: Arc<Service>, err: &ReconcileError, _ctx: Arc<Context>) -> Action {
    match err {
        // The watch delivers the newer object soon; retry quickly.
        ReconcileError::Conflict => Action::requeue(Duration::from_millis(200)),
        ReconcileError::Patch(e) => {
            tracing::warn!(error = %e, "reconcile failed; retrying in 5s");
            Action::requeue(Duration::from_secs(5))
        }
    }
}
