//! The watch streams cluster mode reads: every Service (decoded lean) and the one pool ConfigMap.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::admission::LeanService;
use crate::config::Config;

/// Parse a ConfigMap, or `None` when it does not exist.
pub fn parse_config(cm: Option<&ConfigMap>) -> Option<Config> {
    cm.map(|cm| Config::from_data(cm.data.as_ref().unwrap_or(&BTreeMap::new())))
}

/// The one pool ConfigMap (a field selector on its name: RBAC can then be limited to it).
pub fn configmap_stream(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> impl futures::Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Send {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let wc = watcher::Config::default().fields(&format!("metadata.name={name}"));
    watcher(api, wc).default_backoff()
}

/// A watch stream of Services, decoded lean ([`LeanService`]): only what allocation and the
/// reconciler read is kept (at 100k Services the cache is most of our memory, and managedFields,
/// selectors, cluster IPs and foreign annotations are most of a Service).
pub fn service_stream(
    client: kube::Client,
) -> impl futures::Stream<Item = Result<watcher::Event<Service>, watcher::Error>> + Send {
    let api: Api<LeanService> = Api::all(client);
    watcher(
        api,
        watcher::Config::default().page_size(super::LIST_PAGE_SIZE),
    )
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
