//! The fallback: any handled LoadBalancer Service without an address gets one, through the same
//! engine as the webhook. Services that cannot get one wait until an address frees up or the
//! ConfigMap changes, and are woken by that event (no polling).
//!
//! The write is a merge patch carrying the `resourceVersion` we decided on, so a Service changed
//! meanwhile is a 409 Conflict (re-read and retry), distinct from a write the apiserver refuses
//! (422 invalid, 400 denied by a webhook, 403): that reservation is released at once and an Event
//! says why; the Service is retried when it changes. Transient failures back off exponentially.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::context::{Context, MANAGER, Synced, lock, warning};
use super::watches::service_stream;
use crate::engine::{Changes, Outcome};
use crate::service::SvcInfo;
use crate::state::Request;

/// First retry after a transient failure; doubled per failure up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// A Service the apiserver keeps failing for is still retried this often (a transient outage
/// ends; a permanent refusal is not retried at all until the Service changes).
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Reconciles in flight at once. After a failover hundreds of Services may wait; unbounded,
/// each would open its own connection to the apiserver (HTTP/1.1) and the burst would be slower
/// than a few keep-alive connections in parallel.
const CONCURRENCY: u16 = 16;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Service changed while we wrote it (resourceVersion conflict); retrying")]
    Stale,
    #[error("patching the Service failed: {0}")]
    Transient(#[source] kube::Error),
}

/// Consecutive failures per Service, for the backoff.
#[derive(Default)]
pub struct Failures(Mutex<HashMap<ObjectRef<Service>, u32>>);

impl Failures {
    fn bump(&self, obj: &ObjectRef<Service>) -> u32 {
        let mut m = lock(&self.0);
        let n = m.entry(obj.clone()).or_default();
        *n = n.saturating_add(1);
        *n
    }

    fn clear(&self, obj: &ObjectRef<Service>) {
        lock(&self.0).remove(obj);
    }
}

/// Delay before retry number `failures` (1-based): base x 2^(n-1), capped.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_BASE
        .checked_mul(1u32 << exp)
        .unwrap_or(BACKOFF_MAX)
        .min(BACKOFF_MAX)
}

struct Reconciler {
    ctx: Arc<Context>,
    failures: Failures,
}

/// Watch all Services (feeding the index) and run the reconciler on them until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    synced: Synced,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (reader, writer) = reflector::store();
    let (waiting, metrics) = (reader.clone(), ctx.metrics.clone());
    let index_ctx = ctx.clone();
    let allocator = ctx.allocator.clone();
    let client = ctx.client.clone();
    // Started over when the Services that are ours change (a pool object names a new class).
    let stream = super::pools::restarting(ctx.relists(), move || service_stream(client.clone()))
        // Every event feeds the used-address index first.
        .inspect_ok(move |ev| {
            index_ctx.index_event(ev, &synced);
            index_ctx.infra.service_event(&index_ctx, ev);
        })
        // The controller's store keeps only Services that still need an address: a cache of
        // every Service would be most of our memory at 100k Services, and nothing else reads it.
        .try_filter_map(move |ev| {
            std::future::ready(Ok(pending_only(ev, &|s| allocator.needs_allocation(s))))
        })
        .reflect(writer)
        // The store holds exactly the Services still waiting for an address (on every replica).
        .inspect_ok(move |_| metrics.set_services_waiting(waiting.len()))
        .applied_objects();
    let wake_rx = ctx.take_wake_rx();
    let wake = futures::stream::unfold(wake_rx, |rx| async move {
        let mut rx = rx?;
        let next = rx.recv().await?;
        Some((next, Some(rx)))
    });
    let started = ctx.leadership.started_stream();
    let r = Arc::new(Reconciler {
        ctx,
        failures: Failures::default(),
    });
    Controller::for_stream(stream, reader)
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .reconcile_on(wake)
        .reconcile_all_on(started)
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, r)
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
fn pending_only(
    ev: watcher::Event<Service>,
    needs_allocation: &dyn Fn(&SvcInfo) -> bool,
) -> Option<watcher::Event<Service>> {
    let needs = |svc: &Service| needs_allocation(&SvcInfo::from_service(svc));
    match ev {
        watcher::Event::InitApply(svc) if !needs(&svc) => None,
        watcher::Event::Apply(svc) if !needs(&svc) => Some(watcher::Event::Delete(svc)),
        other => Some(other),
    }
}

async fn reconcile(svc: Arc<Service>, r: Arc<Reconciler>) -> Result<Action, ReconcileError> {
    let ctx = &r.ctx;
    let obj = ObjectRef::from_obj(svc.as_ref());
    // Reconciled again once this replica starts allocating (reconcile_all_on).
    if !ctx.leadership.may_allocate(Instant::now()) {
        return Ok(Action::await_change());
    }
    let info = SvcInfo::from_service(&svc);
    if !ctx.allocator.needs_allocation(&info) {
        ctx.set_waiting(&obj, false);
        r.failures.clear(&obj);
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
    let (ips, pool) = match &decision.outcome {
        Outcome::Allocated { ips, pool, .. } => (ips, pool),
        Outcome::NoAddress(why) => {
            ctx.set_waiting(&obj, true);
            ctx.metrics.inc_reconcile("no_address");
            if ctx.failure_changed(&obj, why) {
                tracing::info!(service = %obj, reason = %why, "no address; waiting for one to free up");
                let ev = warning("AllocationFailed", "Allocate", why.clone());
                ctx.event(&reference, ev);
            }
            return Ok(Action::await_change());
        }
        _ => return Ok(Action::await_change()),
    };
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &info.namespace);
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    };
    let body = merge_patch(&decision.changes, svc.resource_version());
    let sent = tokio::time::timeout(
        super::API_CALL_TIMEOUT,
        api.patch(&info.name, &params, &Patch::Merge(&body)),
    )
    .await;
    let failed = match sent {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e),
        // No answer: the write may still land, so the reservation stays (the retry reuses it,
        // the TTL ends it).
        Err(_) => {
            ctx.metrics.inc_reconcile("error");
            return Err(ReconcileError::Transient(kube::Error::Service(
                format!("no answer within {:?}", super::API_CALL_TIMEOUT).into(),
            )));
        }
    };
    if let Some(e) = failed {
        return match classify(&e) {
            Failure::Stale => {
                ctx.metrics.inc_reconcile("conflict");
                Err(ReconcileError::Stale)
            }
            Failure::Gone => {
                ctx.allocator.release(&id, Some(&info));
                Ok(Action::await_change())
            }
            Failure::Refused => {
                // Retrying the same write cannot succeed: free the address now (also where our
                // webhook reserved it for the echo of this write), say why, and try again only
                // when the Service changes.
                ctx.allocator.release(&id, Some(&info));
                ctx.metrics.inc_reconcile("refused");
                r.failures.clear(&obj);
                let why = format!("the apiserver refused our write of the address annotation: {e}");
                tracing::warn!(service = %obj, error = %e, "write refused; not retrying until the Service changes");
                if ctx.failure_changed(&obj, &why) {
                    ctx.event(&reference, warning("AllocationFailed", "Allocate", why));
                }
                Ok(Action::await_change())
            }
            // Possibly written (a 5xx after commit): keep the reservation, as above.
            Failure::Transient => {
                ctx.metrics.inc_reconcile("error");
                Err(ReconcileError::Transient(e))
            }
        };
    }
    ctx.set_waiting(&obj, false);
    ctx.clear_failure(&obj);
    r.failures.clear(&obj);
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
    ctx.event(&reference, ev);
    Ok(Action::await_change())
}

/// The changes as a JSON merge patch guarded by `resourceVersion` (stale -> 409 Conflict).
pub fn merge_patch(changes: &Changes, resource_version: Option<String>) -> Value {
    let strings = |m: &std::collections::BTreeMap<String, String>| {
        Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect::<Map<_, _>>(),
        )
    };
    let mut metadata = Map::new();
    if let Some(rv) = resource_version {
        metadata.insert("resourceVersion".into(), Value::String(rv));
    }
    if !changes.annotations.is_empty() {
        metadata.insert("annotations".into(), strings(&changes.annotations));
    }
    if !changes.labels.is_empty() {
        metadata.insert("labels".into(), strings(&changes.labels));
    }
    let mut patch = json!({ "metadata": metadata });
    if let Some(ip) = &changes.spec_load_balancer_ip {
        patch["spec"] = json!({ "loadBalancerIP": ip });
    }
    patch
}

/// How a failed write is handled.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The Service changed since we read it: the watch brings the new one; retry soon.
    Stale,
    /// Deleted meanwhile.
    Gone,
    /// Refused as such (invalid, denied, forbidden): the same write will be refused again.
    Refused,
    /// Anything else (timeouts, throttling, 5xx): retry with backoff.
    Transient,
}

fn classify(e: &kube::Error) -> Failure {
    match e {
        kube::Error::Api(s) => match s.code {
            409 => Failure::Stale,
            404 | 410 => Failure::Gone,
            400 | 403 | 413 | 415 | 422 => Failure::Refused,
            _ => Failure::Transient,
        },
        _ => Failure::Transient,
    }
}

fn error_policy(svc: Arc<Service>, err: &ReconcileError, r: Arc<Reconciler>) -> Action {
    let obj = ObjectRef::from_obj(svc.as_ref());
    let n = r.failures.bump(&obj);
    let delay = backoff(n);
    match err {
        ReconcileError::Stale => tracing::debug!(service = %obj, ?delay, "stale; retrying"),
        ReconcileError::Transient(e) => {
            tracing::warn!(service = %obj, error = %e, ?delay, "reconcile failed; retrying")
        }
    }
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), BACKOFF_BASE);
        assert_eq!(backoff(2), BACKOFF_BASE * 2);
        assert_eq!(backoff(5), BACKOFF_BASE * 16);
        assert_eq!(backoff(40), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn a_merge_patch_carries_the_resource_version_and_only_our_keys() {
        let mut c = Changes::default();
        c.annotations
            .insert("kube-vip.io/loadbalancerIPs".into(), "10.0.0.1".into());
        c.labels.insert("implementation".into(), "kube-vip".into());
        assert_eq!(
            merge_patch(&c, Some("42".into())),
            json!({"metadata": {
                "resourceVersion": "42",
                "annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.1"},
                "labels": {"implementation": "kube-vip"},
            }})
        );
    }

    #[test]
    fn failures_are_told_apart_by_code() {
        let api = |code| {
            kube::Error::Api(
                kube::core::Status {
                    code,
                    ..Default::default()
                }
                .boxed(),
            )
        };
        assert_eq!(classify(&api(409)), Failure::Stale);
        assert_eq!(classify(&api(422)), Failure::Refused);
        assert_eq!(classify(&api(400)), Failure::Refused);
        assert_eq!(classify(&api(404)), Failure::Gone);
        assert_eq!(classify(&api(500)), Failure::Transient);
        assert_eq!(classify(&api(429)), Failure::Transient);
    }
}
