//! Pool objects (VIPPool) in cluster mode: watched like the ConfigMap (one parse per change of a
//! pool's spec, never on its status), Namespace labels for namespace selectors, and each pool's
//! status, written by the allocating replica only, rate-limited.
//!
//! A cluster without the CRD (an install from older manifests), or without the RBAC to read
//! pools or Namespaces, keeps working as before: it is reported once and counts as synced with
//! no pool objects (or with namespace selectors matching by the namespace's name only).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use super::context::{Context, MANAGER, Synced, lock, warning};
use crate::pools::crd::{API_VERSION, KIND};
use crate::pools::status::{Counts, desired};
use crate::pools::{ObjectPool, PoolSet, VIPPool, VIPPoolStatus, parse_object};
use crate::serve::Stop;

/// Least time between two rounds of status writes: every allocation changes a pool's counts, and
/// a burst of admissions must not become a burst of writes.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// Most status writes in one round (the rest wait for the next): with a hundred busy pools the
/// apiserver sees at most this many writes per [`STATUS_INTERVAL`].
pub const MAX_STATUS_WRITES_PER_ROUND: usize = 20;

/// A pool object as last seen, and its parse.
struct Seen {
    status: Option<VIPPoolStatus>,
    parsed: Arc<ObjectPool>,
}

/// What the pool watch shares with the status writer.
#[derive(Default)]
pub struct PoolObjects {
    seen: Mutex<BTreeMap<String, Seen>>,
    /// A pool changed (spec or status): the writer looks again.
    changed: Notify,
}

impl PoolObjects {
    fn status_of(&self, name: &str) -> Option<VIPPoolStatus> {
        lock(&self.seen).get(name).and_then(|s| s.status.clone())
    }
}

fn is_absent(e: &watcher::Error) -> bool {
    let api = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => return false,
    };
    api == 404 || api == 403
}

/// Watch every pool object until `stop`.
pub async fn pool_watch(
    ctx: Arc<Context>,
    objects: Arc<PoolObjects>,
    synced: Synced,
    stop: Stop,
) -> anyhow::Result<()> {
    let api: Api<VIPPool> = Api::all(ctx.client.clone());
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut listing: Vec<VIPPool> = Vec::new();
    let mut reported_absent = false;
    loop {
        let event = tokio::select! {
            _ = stop.shutdown.cancelled() => return Ok(()),
            ev = stream.try_next() => ev,
        };
        match event {
            Ok(Some(watcher::Event::Init)) => listing.clear(),
            Ok(Some(watcher::Event::InitApply(p))) => listing.push(p),
            Ok(Some(watcher::Event::InitDone)) => {
                let listed = std::mem::take(&mut listing);
                tracing::info!(pools = listed.len(), "VIPPools listed");
                let fresh: BTreeMap<String, Seen> = {
                    let seen = lock(&objects.seen);
                    listed
                        .iter()
                        .map(|p| (name_of(p), seen_from(p, seen.get(&name_of(p)))))
                        .collect()
                };
                let gone: Vec<Arc<ObjectPool>> = {
                    let mut seen = lock(&objects.seen);
                    let gone = seen
                        .iter()
                        .filter(|(name, _)| !fresh.contains_key(*name))
                        .map(|(_, s)| s.parsed.clone())
                        .collect();
                    *seen = fresh;
                    gone
                };
                rebuild(&ctx, &objects);
                for pool in gone {
                    deleted(&ctx, &pool);
                }
                synced.pools_synced();
                reported_absent = false;
            }
            Ok(Some(watcher::Event::Apply(p))) => {
                let name = name_of(&p);
                let spec_changed = {
                    let mut seen = lock(&objects.seen);
                    let next = seen_from(&p, seen.get(&name));
                    let changed = seen
                        .get(&name)
                        .is_none_or(|old| !Arc::ptr_eq(&old.parsed, &next.parsed));
                    seen.insert(name, next);
                    changed
                };
                if spec_changed {
                    rebuild(&ctx, &objects);
                } else {
                    // Only the status changed (our own write, most often).
                    objects.changed.notify_one();
                }
            }
            Ok(Some(watcher::Event::Delete(p))) => {
                let removed = lock(&objects.seen).remove(&name_of(&p));
                if let Some(seen) = removed {
                    rebuild(&ctx, &objects);
                    deleted(&ctx, &seen.parsed);
                }
            }
            Ok(None) => return Ok(()),
            Err(e) if is_absent(&e) => {
                if !reported_absent {
                    tracing::warn!(error = %e, "cannot list VIPPools (CRD not installed, or no RBAC for it): only the ConfigMap's pools are used");
                    reported_absent = true;
                }
                if !lock(&objects.seen).is_empty() {
                    lock(&objects.seen).clear();
                    rebuild(&ctx, &objects);
                }
                synced.pools_synced();
            }
            // The backoff retries; a failing watch is logged, never fatal.
            Err(e) => tracing::warn!(error = %e, "VIPPool watch error"),
        }
    }
}

fn name_of(p: &VIPPool) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

/// The object as seen now; its parse is reused while spec and generation are unchanged (one
/// parse per change, not per status write).
fn seen_from(p: &VIPPool, before: Option<&Seen>) -> Seen {
    let parsed = match before {
        Some(b) if b.parsed.spec == p.spec && b.parsed.generation == p.metadata.generation => {
            b.parsed.clone()
        }
        _ => Arc::new(parse_object(p)),
    };
    Seen {
        status: p.status.clone(),
        parsed,
    }
}

/// The pool set changed: hand it to the allocator, report what is new, wake the waiting.
fn rebuild(ctx: &Context, objects: &PoolObjects) {
    let parsed: Vec<Arc<ObjectPool>> = lock(&objects.seen)
        .values()
        .map(|s| s.parsed.clone())
        .collect();
    let before = ctx.allocator.pools();
    let set = PoolSet::new(parsed);
    let classes_changed = before.classes() != set.classes();
    for pool in set.iter() {
        let new = before.get(&pool.name).is_none_or(|b| !Arc::ptr_eq(b, pool));
        if new && !pool.errors.is_empty() {
            invalid(ctx, pool);
        }
    }
    tracing::info!(pools = set.len(), "VIPPools loaded");
    ctx.allocator.set_pools(set);
    if classes_changed {
        // Services of a class a pool names are ours now (or no longer): the reconciler's view of
        // which Services wait for an address is rebuilt from a fresh list.
        ctx.relist_services();
    }
    ctx.wake_waiting();
    objects.changed.notify_one();
}

fn reference(pool: &ObjectPool) -> ObjectReference {
    ObjectReference {
        api_version: Some(API_VERSION.into()),
        kind: Some(KIND.into()),
        name: Some(pool.name.clone()),
        uid: pool.uid.clone(),
        ..ObjectReference::default()
    }
}

/// Entries or selectors of a pool left out: a Warning Event on the pool (its Invalid condition
/// says the same).
fn invalid(ctx: &Context, pool: &ObjectPool) {
    let list: Vec<String> = pool.errors.iter().map(ToString::to_string).collect();
    for e in &list {
        tracing::warn!(pool = %pool.name, "VIPPool error: {e}");
    }
    let note = format!("{} entries ignored: {}", list.len(), list.join("; "));
    ctx.event(
        &reference(pool),
        warning("InvalidConfiguration", "ParseConfig", note),
    );
}

/// A deleted pool keeps the addresses it gave out: said in an Event (and the log).
fn deleted(ctx: &Context, pool: &ObjectPool) {
    let single = PoolSet::new([Arc::new(pool.clone())]);
    let held = ctx
        .allocator
        .object_usage(&single)
        .first()
        .map(Counts::used)
        .unwrap_or_default();
    let note = format!(
        "VIPPool {} deleted: the {held} addresses handed out from it stay with their Services (never moved)",
        pool.name
    );
    tracing::info!(pool = %pool.name, held, "VIPPool deleted; its addresses stay with their Services");
    let ev = Event {
        type_: EventType::Normal,
        reason: "PoolDeleted".into(),
        note: Some(note),
        action: "ParseConfig".into(),
        secondary: None,
    };
    ctx.event(&reference(pool), ev);
}

/// Write each pool's status when it differs from what the object shows: on the allocating
/// replica only (its counts come from synced caches and the one allocator), at most one round
/// per [`STATUS_INTERVAL`] and [`MAX_STATUS_WRITES_PER_ROUND`] writes per round.
pub async fn status_writer(
    ctx: Arc<Context>,
    objects: Arc<PoolObjects>,
    stop: Stop,
) -> anyhow::Result<()> {
    let api: Api<VIPPool> = Api::all(ctx.client.clone());
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    };
    loop {
        tokio::select! {
            _ = stop.shutdown.cancelled() => return Ok(()),
            _ = objects.changed.notified() => {}
            // Counts change with every allocation, which notifies nobody here.
            _ = tokio::time::sleep(STATUS_INTERVAL) => {}
        }
        let round = Instant::now();
        if ctx.leadership.may_allocate(round) {
            write_round(&ctx, &objects, &api, &params).await;
        }
        tokio::select! {
            _ = stop.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until((round + STATUS_INTERVAL).into()) => {}
        }
    }
}

async fn write_round(
    ctx: &Context,
    objects: &PoolObjects,
    api: &Api<VIPPool>,
    params: &PatchParams,
) {
    let set = ctx.allocator.pools();
    if set.is_empty() {
        return;
    }
    let counts = ctx.allocator.object_usage(&set);
    let overlaps = set.overlaps(Some(&ctx.allocator.config()));
    let now = Time(
        k8s_openapi::jiff::Timestamp::from_second(k8s_openapi::jiff::Timestamp::now().as_second())
            .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now()),
    );
    let mut writes = 0;
    for (pool, counts) in set.iter().zip(counts) {
        let observed = objects.status_of(&pool.name);
        let none = Vec::new();
        let overlapping = overlaps.get(pool.key()).unwrap_or(&none);
        let want = desired(pool, &counts, overlapping, observed.as_ref(), &now);
        if observed.as_ref() == Some(&want) {
            continue;
        }
        if writes == MAX_STATUS_WRITES_PER_ROUND {
            // The rest in the next round.
            objects.changed.notify_one();
            return;
        }
        writes += 1;
        let patch = Patch::Merge(status_patch(&want));
        match tokio::time::timeout(
            super::API_CALL_TIMEOUT,
            api.patch_status(&pool.name, params, &patch),
        )
        .await
        {
            Ok(Ok(_)) => {}
            // Deleted meanwhile: the watch says so.
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => {}
            Ok(Err(e)) => {
                tracing::warn!(pool = %pool.name, error = %e, "cannot write VIPPool status")
            }
            Err(_) => tracing::warn!(pool = %pool.name, "writing VIPPool status timed out"),
        }
    }
}

/// The status as a merge patch: fields that are absent now are removed (`null`), the
/// conditions list replaced whole.
fn status_patch(status: &VIPPoolStatus) -> Value {
    let or_null = |v: Option<Value>| v.unwrap_or(Value::Null);
    json!({"status": {
        "observedGeneration": or_null(status.observed_generation.map(Value::from)),
        "ipv4": or_null(status.ipv4.and_then(|u| serde_json::to_value(u).ok())),
        "ipv6": or_null(status.ipv6.and_then(|u| serde_json::to_value(u).ok())),
        "conditions": serde_json::to_value(&status.conditions).unwrap_or(Value::Null),
    }})
}

/// Namespace labels (metadata only) for namespace selectors, on every replica. Always watched,
/// even without pool objects: the labels are then known before the first pool arrives, and a
/// namespace list is small (see docs/design.md).
pub async fn namespace_watch(ctx: Arc<Context>, synced: Synced, stop: Stop) -> anyhow::Result<()> {
    // Metadata only (kube 5 asks for PartialObjectMetadata): labels are all we read.
    let api: Api<PartialObjectMeta<Namespace>> = Api::all(ctx.client.clone());
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut listing: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let mut reported_absent = false;
    loop {
        let event = tokio::select! {
            _ = stop.shutdown.cancelled() => return Ok(()),
            ev = stream.try_next() => ev,
        };
        let labels = |m: &PartialObjectMeta<Namespace>| {
            (
                m.metadata.name.clone().unwrap_or_default(),
                m.metadata.labels.clone().unwrap_or_default(),
            )
        };
        let uses_labels = || ctx.allocator.pools().uses_namespace_labels();
        match event {
            Ok(Some(watcher::Event::Init)) => listing.clear(),
            Ok(Some(watcher::Event::InitApply(m))) => listing.push(labels(&m)),
            Ok(Some(watcher::Event::InitDone)) => {
                ctx.allocator.reset_namespaces(std::mem::take(&mut listing));
                synced.namespaces_synced();
                reported_absent = false;
                if uses_labels() {
                    ctx.wake_waiting();
                }
            }
            Ok(Some(watcher::Event::Apply(m))) => {
                let (name, labels) = labels(&m);
                if ctx.allocator.set_namespace(&name, labels) && uses_labels() {
                    ctx.wake_waiting();
                }
            }
            Ok(Some(watcher::Event::Delete(m))) => {
                ctx.allocator
                    .remove_namespace(m.metadata.name.as_deref().unwrap_or_default());
            }
            Ok(None) => return Ok(()),
            Err(e) if is_absent(&e) => {
                if !reported_absent {
                    tracing::warn!(error = %e, "cannot list Namespaces (no RBAC for it?): namespace selectors match by the namespace's name only");
                    reported_absent = true;
                }
                synced.namespaces_synced();
            }
            Err(e) => tracing::warn!(error = %e, "Namespace watch error"),
        }
    }
}

/// `make()`'s stream, started again each time `restart` changes (from scratch: a watcher
/// restarted this way relists). Items of the stream being replaced are dropped.
pub fn restarting<S, F>(
    restart: watch::Receiver<u64>,
    make: F,
) -> impl Stream<Item = S::Item> + Send
where
    S: Stream + Send + 'static,
    S::Item: Send,
    F: Fn() -> S + Send + 'static,
{
    let current = Box::pin(make());
    futures::stream::unfold(
        (current, Some(restart), make),
        |(mut current, mut restart, make)| async move {
            loop {
                let changed = async {
                    match restart.as_mut() {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    ok = changed => {
                        if ok {
                            current = Box::pin(make());
                        } else {
                            // The sender is gone: no more restarts.
                            restart = None;
                        }
                    }
                    item = current.next() => {
                        return item.map(|i| (i, (current, restart, make)));
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(addresses: &[&str], generation: i64) -> VIPPool {
        let spec = serde_json::from_value(json!({ "addresses": addresses })).expect("spec");
        let mut p = VIPPool::new("p", spec);
        p.metadata.generation = Some(generation);
        p
    }

    /// One parse per change of spec or generation; a status write (ours, every few seconds)
    /// reuses the parse.
    #[test]
    fn a_status_write_reuses_the_parse_and_a_spec_change_does_not() {
        let first = seen_from(&pool(&["10.0.0.0/24"], 1), None);
        let mut status_only = pool(&["10.0.0.0/24"], 1);
        status_only.status = Some(VIPPoolStatus::default());
        let after_status = seen_from(&status_only, Some(&first));
        assert!(Arc::ptr_eq(&first.parsed, &after_status.parsed));
        assert_eq!(after_status.status, Some(VIPPoolStatus::default()));

        let respec = seen_from(&pool(&["10.0.1.0/24"], 2), Some(&after_status));
        assert!(!Arc::ptr_eq(&first.parsed, &respec.parsed));
        assert_eq!(respec.parsed.generation, Some(2));
        // A new generation with an equal spec (an edit and its revert) is parsed again: the
        // status must report the generation it is for.
        let regen = seen_from(&pool(&["10.0.1.0/24"], 3), Some(&respec));
        assert!(!Arc::ptr_eq(&respec.parsed, &regen.parsed));
    }
}
