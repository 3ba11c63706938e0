//! What cluster mode shares between its tasks: the allocator fed by the watches, Events, the set
//! of Services waiting for an address, and cache-sync tracking.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service};
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::watches::parse_config;
use crate::admin::Readiness;
use crate::leadership::Leadership;
use crate::metrics::Metrics;
use crate::service::SvcInfo;
use crate::state::Allocator;

/// Field manager and Event reporter name.
pub const MANAGER: &str = "kube-vip-webhook";
/// Longest Event note we send (the API caps notes at 1 KiB).
const NOTE_MAX: usize = 1000;
/// Events being sent at once. Events are sent beside the work they describe (a reconcile does
/// not wait for its Event: after a failover hundreds of Services are assigned in a burst); past
/// this many in flight (a slow apiserver) further Events are dropped (and logged), never queued.
const EVENTS_IN_FLIGHT: usize = 64;

pub struct Context {
    pub client: kube::Client,
    pub allocator: Arc<Allocator>,
    pub metrics: Arc<Metrics>,
    pub leadership: Leadership,
    reporter: Reporter,
    events_in_flight: Arc<tokio::sync::Semaphore>,
    /// `namespace/name` of the pool ConfigMap, for messages.
    pub config_name: String,
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
    /// Addresses the network already uses: sync state and what was reported (`infra_state.rs`).
    pub(super) infra: super::infra_state::Infra,
    /// Bumped when the Service watch must start over (the classes pool objects claim changed).
    relist: watch::Sender<u64>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Context {
    pub fn new(
        client: kube::Client,
        allocator: Arc<Allocator>,
        metrics: Arc<Metrics>,
        leadership: Leadership,
        instance: String,
        config_name: String,
    ) -> Self {
        let (wake, wake_rx) = mpsc::unbounded_channel();
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: Some(instance),
        };
        Context {
            client,
            allocator,
            metrics,
            leadership,
            reporter,
            events_in_flight: Arc::new(tokio::sync::Semaphore::new(EVENTS_IN_FLIGHT)),
            config_name,
            waiting: Mutex::default(),
            wake,
            wake_rx: Mutex::new(Some(wake_rx)),
            reported_config: Mutex::default(),
            reported_clashes: Mutex::default(),
            listing: Mutex::default(),
            last_failure: Mutex::default(),
            infra: super::infra_state::Infra::default(),
            relist: watch::Sender::new(0),
        }
    }

    /// Start the Service watch over (a fresh list): which Services are ours changed.
    pub fn relist_services(&self) {
        self.relist.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes each time [`Context::relist_services`] is called.
    pub fn relists(&self) -> watch::Receiver<u64> {
        self.relist.subscribe()
    }

    /// The wake-up channel's receiving end (taken once, by the reconciler).
    pub fn take_wake_rx(&self) -> Option<mpsc::UnboundedReceiver<ObjectRef<Service>>> {
        lock(&self.wake_rx).take()
    }

    /// Re-run every waiting Service (an address freed up, or the pools changed).
    pub fn wake_waiting(&self) {
        let waiting: Vec<_> = lock(&self.waiting).drain().collect();
        for r in waiting {
            let _ = self.wake.send(r);
        }
    }

    pub fn set_waiting(&self, obj: &ObjectRef<Service>, waiting: bool) {
        if waiting {
            lock(&self.waiting).insert(obj.clone());
        } else {
            lock(&self.waiting).remove(obj);
        }
    }

    /// Record why `obj` got no address; true when the reason is new (worth an Event).
    pub fn failure_changed(&self, obj: &ObjectRef<Service>, why: &str) -> bool {
        lock(&self.last_failure)
            .insert(obj.clone(), why.to_string())
            .as_deref()
            != Some(why)
    }

    pub fn clear_failure(&self, obj: &ObjectRef<Service>) {
        lock(&self.last_failure).remove(obj);
    }

    /// Publish an Event, from the leader only (or every Event would be doubled), without waiting
    /// for it (see [`EVENTS_IN_FLIGHT`]). Always a new Event: we send one only when something
    /// changed, and kube's `Recorder` would fold it into an earlier Event of the same reason and
    /// object, whose series keeps the first note (the new one says what changed).
    pub fn event(&self, reference: &ObjectReference, ev: Event) {
        if !self.leadership.is_leader(Instant::now()) {
            return;
        }
        let Ok(permit) = self.events_in_flight.clone().try_acquire_owned() else {
            tracing::warn!(object = ?reference.name, reason = %ev.reason, "too many Events in flight; this one is dropped");
            return;
        };
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let (metrics, reference) = (self.metrics.clone(), reference.clone());
        tokio::spawn(async move {
            publish(&recorder, &metrics, &reference, ev).await;
            drop(permit);
        });
    }

    /// A ConfigMap change (or its absence): parse once, swap, report, wake waiters.
    pub async fn config_changed(&self, cm: Option<&ConfigMap>) {
        let config = parse_config(cm);
        let name = &self.config_name;
        let errors: Option<Vec<String>> = config
            .as_ref()
            .map(|c| c.errors().iter().map(ToString::to_string).collect());
        match &errors {
            None => {
                tracing::warn!(configmap = %name, "pool ConfigMap not found; addresses come from VIPPools only, if there are any (it is never created by us)")
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
            let note = format!("{} bad entries ignored: {}", errs.len(), errs.join("; "));
            let ev = warning("InvalidConfiguration", "ParseConfig", note);
            self.event(&cm.object_ref(&()), ev);
        }
        self.wake_waiting();
    }

    /// Feed one watch event into the index (always, on every replica).
    pub fn index_event(&self, ev: &watcher::Event<Service>, synced: &Synced) {
        match ev {
            watcher::Event::Init => lock(&self.listing).clear(),
            // Only the index reads the list: labels and the pool annotation are dropped.
            watcher::Event::InitApply(svc) => {
                lock(&self.listing).push(SvcInfo::from_service(svc).for_index())
            }
            watcher::Event::InitDone => {
                let listed = std::mem::take(&mut *lock(&self.listing));
                // A relist (after a watch could not resume) replaces the whole view.
                tracing::info!(services = listed.len(), "Service cache listed");
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
                self.clear_failure(&ObjectRef::from_obj(svc));
                if self.allocator.delete_service(&key) {
                    self.wake_waiting();
                }
            }
        }
    }

    /// Two Services on one address with a clashing (port, protocol): users pinned them behind
    /// our back. Never moved; each gets a Warning Event once.
    fn check_clashes(&self, svc: &SvcInfo) {
        if !self.leadership.is_leader(Instant::now()) {
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
                let reference = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Service".into()),
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    ..Default::default()
                };
                let note = format!(
                    "address {ip} is also used by Service {against} with a clashing port/protocol; neither is moved"
                );
                let ev = warning("AddressConflict", "CheckAddress", note);
                self.event(&reference, ev);
            }
        }
    }
}

async fn publish(recorder: &Recorder, metrics: &Metrics, reference: &ObjectReference, ev: Event) {
    metrics.inc_event(&ev.reason);
    let timeout = super::API_CALL_TIMEOUT;
    match tokio::time::timeout(timeout, recorder.publish(&ev, reference)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(object = ?reference.name, reason = %ev.reason, error = %e, "cannot publish Event")
        }
        Err(_) => {
            tracing::warn!(object = ?reference.name, reason = %ev.reason, "publishing an Event timed out")
        }
    }
}

/// A Warning Event (every Warning we send is a new Event; the note is cut to what it may hold).
pub fn warning(reason: &str, action: &str, note: String) -> Event {
    Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(truncated(note)),
        action: action.into(),
        secondary: None,
    }
}

/// `s` cut to what an Event note may hold.
pub fn truncated(mut s: String) -> String {
    if s.len() > NOTE_MAX {
        let mut cut = NOTE_MAX - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Every cache synced (Services, the ConfigMap, the addresses the network uses): this replica
/// knows every used address. Drives readiness (never again
/// once stopping began) and lets the leadership allocate.
#[derive(Clone)]
pub struct Synced {
    services: Arc<AtomicBool>,
    config: Arc<AtomicBool>,
    /// Nodes, the kubernetes EndpointSlices and cluster-info read once (`infra.rs`): never
    /// ready (so never allocating) before every address the network uses is known.
    infra: Arc<AtomicBool>,
    pools: Arc<AtomicBool>,
    namespaces: Arc<AtomicBool>,
    readiness: Readiness,
    leadership: Leadership,
    stopping: CancellationToken,
}

impl Synced {
    pub fn new(readiness: Readiness, leadership: Leadership, stopping: CancellationToken) -> Self {
        Synced {
            services: Arc::default(),
            config: Arc::default(),
            infra: Arc::default(),
            pools: Arc::default(),
            namespaces: Arc::default(),
            readiness,
            leadership,
            stopping,
        }
    }

    pub fn services_synced(&self) {
        self.services.store(true, Ordering::SeqCst);
        self.update();
    }

    pub fn config_synced(&self) {
        self.config.store(true, Ordering::SeqCst);
        self.update();
    }

    pub fn infra_synced(&self) {
        self.infra.store(true, Ordering::SeqCst);
        self.update();
    }

    /// Pool objects listed (or known to be absent).
    pub fn pools_synced(&self) {
        self.pools.store(true, Ordering::SeqCst);
        self.update();
    }

    pub fn namespaces_synced(&self) {
        self.namespaces.store(true, Ordering::SeqCst);
        self.update();
    }

    fn update(&self) {
        let ready = [
            &self.services,
            &self.config,
            &self.infra,
            &self.pools,
            &self.namespaces,
        ]
        .iter()
        .all(|f| f.load(Ordering::SeqCst));
        if !ready {
            return;
        }
        if !self.leadership.synced() {
            self.leadership.set_synced();
        }
        if !self.stopping.is_cancelled() {
            if !self.readiness.is_ready() {
                tracing::info!("caches synced; ready");
            }
            self.readiness.set_ready(true);
        }
    }
}
