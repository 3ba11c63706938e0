//! Addresses the network already uses (SPEC 4.9), from the cluster, all watched: every Node,
//! the `default/kubernetes` EndpointSlice and `kube-public/cluster-info` (both by name, so RBAC
//! is limited to those objects).
//!
//! Each change replaces that source's addresses in the allocator (never a rescan), wakes the
//! Services waiting for an address when one is freed, and reports, from the leader: an
//! `AddressConflict` Event on a Service that already holds an address that becomes reserved
//! (nothing is moved), and a Warning Event on the pool ConfigMap when the set of reserved
//! addresses inside pools changes (the metric is read from the allocator at scrape time).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::{Stream, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use super::context::{Context, Synced, lock, warning};
use super::infra_state::{Infra, MAX_REPORTED_CONFLICTS};
use crate::reserved::objects::{
    self, CLUSTER_INFO_NAME, CLUSTER_INFO_NAMESPACE, KUBERNETES_NAMESPACE, KUBERNETES_SERVICE,
    LeanNode,
};
use crate::reserved::{Holding, Source, SourceKind};
use crate::serve::Stop;
use crate::service::ServiceKey;
use crate::state::{ReservedChange, ReservedConflict};

/// Reason of the Warning Event on the pool ConfigMap.
pub const RESERVED_IN_POOL: &str = "ReservedAddressInPool";

impl Infra {
    /// A Service as the cache shows it (after the index took it): its addresses that are
    /// reserved, reported once each.
    pub fn service_event(&self, ctx: &Context, ev: &watcher::Event<Service>) {
        let watcher::Event::Apply(svc) = ev else {
            return;
        };
        if !ctx.leadership.is_leader(Instant::now()) {
            return;
        }
        let key = ServiceKey::new(
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default(),
        );
        let conflicts = ctx.allocator.reserved_conflicts_of(&key);
        self.report_conflicts(ctx, conflicts);
    }

    fn report_conflicts(&self, ctx: &Context, conflicts: Vec<ReservedConflict>) {
        if conflicts.is_empty() || !ctx.leadership.is_leader(Instant::now()) {
            return;
        }
        for c in conflicts {
            {
                let mut seen = lock(&self.reported_conflicts);
                if seen.len() >= MAX_REPORTED_CONFLICTS {
                    seen.clear();
                }
                if !seen.insert(c.clone()) {
                    continue;
                }
            }
            tracing::warn!(service = %c.service, address = %c.address, owner = %c.owner,
                "a Service holds an address the network already uses; it is not moved");
            let reference = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                name: Some(c.service.name.clone()),
                namespace: Some(c.service.namespace.clone()),
                ..Default::default()
            };
            let note = format!(
                "address {} of this Service is also {}, which the network already uses; \
                 nothing is moved: give the Service another address",
                c.address, c.owner
            );
            let ev = warning("AddressConflict", "CheckReservedAddress", note);
            ctx.event(&reference, ev);
        }
    }

    /// Report what pools contain once it changed (and every source and the ConfigMap were
    /// read): a Warning on the pool ConfigMap, from the leader.
    pub fn report_pools(&self, ctx: &Context) {
        if !self.synced() || !ctx.leadership.is_leader(Instant::now()) {
            return;
        }
        let now = ctx.allocator.reserved_in_pools();
        {
            let mut last = lock(&self.reported_pools);
            if last.as_ref() == Some(&now) {
                return;
            }
            *last = Some(now.clone());
        }
        if now.is_empty() {
            return;
        }
        let listed: Vec<String> = now.iter().map(ToString::to_string).collect();
        tracing::warn!(configmap = %ctx.config_name, addresses = now.len(),
            "pools contain addresses the network already uses (never handed out): {}",
            listed.join("; "));
        let note = format!(
            "{} address(es) of the pools are used by the network and are never handed out: {}",
            now.len(),
            listed.join("; ")
        );
        let Some((namespace, name)) = ctx.config_name.split_once('/') else {
            return;
        };
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        };
        ctx.event(&reference, warning(RESERVED_IN_POOL, "CheckPools", note));
    }

    fn changed(&self, ctx: &Context, change: ReservedChange) {
        if change.freed {
            ctx.wake_waiting();
        }
        self.report_conflicts(ctx, change.conflicts);
        if change.changed {
            self.report_pools(ctx);
        }
    }

    fn source_synced(&self, flag: &AtomicBool, ctx: &Context, synced: &Synced) {
        if flag.swap(true, Ordering::SeqCst) {
            return;
        }
        if self.synced() {
            synced.infra_synced();
            self.report_pools(ctx);
        }
    }
}

/// Watch the three sources until `stop`. A replica reports only while it leads, so when it
/// starts a term it reports what it has not reported itself (another leader may have).
pub async fn run(ctx: std::sync::Arc<Context>, synced: Synced, stop: Stop) -> anyhow::Result<()> {
    let infra = &ctx.infra;
    let nodes = {
        let api: Api<LeanNode> = Api::all(ctx.client.clone());
        watcher(
            api,
            watcher::Config::default().page_size(super::LIST_PAGE_SIZE),
        )
        .default_backoff()
    };
    let slices = {
        let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), KUBERNETES_NAMESPACE);
        // By name: RBAC is limited to the one slice the apiserver writes for itself.
        let wc = watcher::Config::default().fields(&format!("metadata.name={KUBERNETES_SERVICE}"));
        watcher(api, wc).default_backoff()
    };
    let cluster_info = {
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), CLUSTER_INFO_NAMESPACE);
        let wc = watcher::Config::default().fields(&format!("metadata.name={CLUSTER_INFO_NAME}"));
        watcher(api, wc).default_backoff()
    };
    let started = ctx.leadership.started_stream();
    let on_start = async {
        futures::pin_mut!(started);
        while futures::StreamExt::next(&mut started).await.is_some() {
            infra.report_conflicts(&ctx, ctx.allocator.all_reserved_conflicts());
            infra.report_pools(&ctx);
        }
        // The leadership outlives this task; should its channel close, keep watching.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = stop.shutdown.cancelled() => {}
        _ = watch_source(&ctx, &synced, nodes, SourceKind::Node, &infra.nodes,
                |n: &LeanNode| objects::node(&n.0), "Node") => {}
        _ = watch_source(&ctx, &synced, slices, SourceKind::EndpointSlice, &infra.slices,
                objects::endpoint_slice, "EndpointSlice") => {}
        _ = watch_source(&ctx, &synced, cluster_info, SourceKind::ClusterInfo,
                &infra.cluster_info, |cm: &ConfigMap| objects::cluster_info(Some(cm)),
                "cluster-info ConfigMap") => {}
        _ = on_start => {}
    }
    Ok(())
}

/// One watched source: a relist replaces every source of its kind, an event one source.
async fn watch_source<K>(
    ctx: &Context,
    synced: &Synced,
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    kind: SourceKind,
    flag: &AtomicBool,
    read: fn(&K) -> (Source, Vec<Holding>),
    what: &str,
) {
    futures::pin_mut!(stream);
    let mut listing = Vec::new();
    loop {
        match stream.try_next().await {
            Ok(Some(watcher::Event::Init)) => listing.clear(),
            Ok(Some(watcher::Event::InitApply(obj))) => listing.push(read(&obj)),
            Ok(Some(watcher::Event::InitDone)) => {
                let listed = std::mem::take(&mut listing);
                tracing::info!(objects = listed.len(), "{what} list read");
                let change = ctx.allocator.reset_reserved(kind, listed);
                ctx.infra.changed(ctx, change);
                ctx.infra.source_synced(flag, ctx, synced);
            }
            Ok(Some(watcher::Event::Apply(obj))) => {
                let (source, holdings) = read(&obj);
                let change = ctx.allocator.set_reserved(source, holdings);
                ctx.infra.changed(ctx, change);
            }
            Ok(Some(watcher::Event::Delete(obj))) => {
                let (source, _) = read(&obj);
                let change = ctx.allocator.set_reserved(source, Vec::new());
                ctx.infra.changed(ctx, change);
            }
            Ok(None) => return,
            // The backoff retries; until the first list the replica is not ready.
            Err(e) => tracing::warn!(error = %e, "{what} watch error"),
        }
    }
}
