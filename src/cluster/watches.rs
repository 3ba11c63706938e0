//! The pool ConfigMap watch, cache-sync tracking, and what we keep of a Service.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use super::ClusterArgs;
use super::reconciler::Context;
use crate::admin::Readiness;
use crate::admission::LeanService;
use crate::config::Config;

/// Readiness once both caches have synced (and never again after shutdown began).
#[derive(Clone)]
pub struct Synced {
    services: Arc<AtomicBool>,
    config: Arc<AtomicBool>,
    readiness: Readiness,
    shutdown: CancellationToken,
}

impl Synced {
    pub fn new(readiness: Readiness, shutdown: CancellationToken) -> Self {
        Synced {
            services: Arc::default(),
            config: Arc::default(),
            readiness,
            shutdown,
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

    fn update(&self) {
        let ready = self.services.load(Ordering::SeqCst) && self.config.load(Ordering::SeqCst);
        if ready && !self.shutdown.is_cancelled() {
            if !self.readiness.is_ready() {
                tracing::info!("caches synced; ready");
            }
            self.readiness.set_ready(true);
        }
    }
}

/// Watch the one pool ConfigMap; re-parse only when it changes.
pub async fn config_watch(
    client: kube::Client,
    args: ClusterArgs,
    ctx: Arc<Context>,
    synced: Synced,
) -> anyhow::Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client, &args.kubevip_namespace);
    let wc =
        watcher::Config::default().fields(&format!("metadata.name={}", args.kubevip_config_map));
    let stream = watcher(api, wc).default_backoff();
    futures::pin_mut!(stream);
    let mut listed: Option<ConfigMap> = None;
    let shutdown = synced.shutdown.clone();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            ev = stream.try_next() => ev,
        };
        match event {
            Ok(Some(watcher::Event::Init)) => listed = None,
            Ok(Some(watcher::Event::InitApply(cm))) => listed = Some(cm),
            Ok(Some(watcher::Event::InitDone)) => {
                ctx.config_changed(listed.take().as_ref(), &args).await;
                synced.config_synced();
            }
            Ok(Some(watcher::Event::Apply(cm))) => ctx.config_changed(Some(&cm), &args).await,
            Ok(Some(watcher::Event::Delete(_))) => ctx.config_changed(None, &args).await,
            Ok(None) => return Ok(()),
            // The backoff retries; a failing watch is logged, never fatal.
            Err(e) => tracing::warn!(error = %e, "ConfigMap watch error"),
        }
    }
}

/// Parse a ConfigMap, or `None` when it does not exist.
pub fn parse_config(cm: Option<&ConfigMap>) -> Option<Config> {
    cm.map(|cm| Config::from_data(cm.data.as_ref().unwrap_or(&BTreeMap::new())))
}

/// A watch stream of Services, decoded lean ([`LeanService`]): only what allocation and the
/// reconciler read is kept (at 100k Services the cache is most of our memory, and managedFields,
/// selectors, cluster IPs and foreign annotations are most of a Service).
pub fn service_stream(
    client: kube::Client,
) -> impl futures::Stream<Item = Result<watcher::Event<Service>, watcher::Error>> + Send {
    let api: Api<LeanService> = Api::all(client);
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .map_ok(unwrap_lean)
}

fn unwrap_lean(ev: watcher::Event<LeanService>) -> watcher::Event<Service> {
    match ev {
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(s) => watcher::Event::InitApply(s.0),
        watcher::Event::InitDone => watcher::Event::InitDone,
        watcher::Event::Apply(s) => watcher::Event::Apply(s.0),
        watcher::Event::Delete(s) => watcher::Event::Delete(s.0),
    }
}
