//! Pool objects and namespace labels as the allocator holds them: read before the allocator
//! lock (the bounds of a Service of a class a pool names are checked there too), replaced whole
//! on change; and the usage of each pool object, for its status and the metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLockReadGuard, RwLockWriteGuard};

use super::Allocator;
use crate::config::{FamilyPool, GLOBAL};
use crate::engine;
use crate::ipam::Family;
use crate::pools::status::Counts;
use crate::pools::{PoolObjects, PoolSet};
use crate::service::SvcInfo;

/// Labels of one namespace.
pub type Labels = BTreeMap<String, String>;

/// Pool objects and namespace labels: read before the allocator lock (a Service of a class a
/// pool names is bounded like any other), replaced whole on change.
#[derive(Debug, Default)]
pub(super) struct Objects {
    pub(super) pools: Arc<PoolSet>,
    pub(super) namespaces: HashMap<String, Arc<Labels>>,
}

impl Allocator {
    pub(super) fn objects(&self) -> RwLockReadGuard<'_, Objects> {
        // Every write replaces a field whole: a panic cannot leave it half-changed.
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }

    fn objects_mut(&self) -> RwLockWriteGuard<'_, Objects> {
        self.objects.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool objects, and the labels of `namespace` (`None` when not known).
    pub(super) fn objects_for(&self, namespace: &str) -> (Arc<PoolSet>, Option<Arc<Labels>>) {
        let objects = self.objects();
        (
            objects.pools.clone(),
            objects.namespaces.get(namespace).cloned(),
        )
    }

    /// New pool objects (parsed by the caller, once per change).
    pub fn set_pools(&self, pools: PoolSet) {
        self.objects_mut().pools = Arc::new(pools);
    }

    pub fn pools(&self) -> Arc<PoolSet> {
        self.objects().pools.clone()
    }

    /// A namespace's labels as the cache shows them now; true when they changed.
    pub fn set_namespace(&self, name: &str, labels: Labels) -> bool {
        let mut objects = self.objects_mut();
        if objects.namespaces.get(name).is_some_and(|l| **l == labels) {
            return false;
        }
        objects
            .namespaces
            .insert(name.to_string(), Arc::new(labels));
        true
    }

    pub fn remove_namespace(&self, name: &str) {
        self.objects_mut().namespaces.remove(name);
    }

    /// Replace every namespace's labels (a relist).
    pub fn reset_namespaces(&self, namespaces: impl IntoIterator<Item = (String, Labels)>) {
        let fresh = namespaces
            .into_iter()
            .map(|(name, labels)| (name, Arc::new(labels)))
            .collect();
        self.objects_mut().namespaces = fresh;
    }

    /// Pool objects and namespace labels read once (`plan`, `status`, `--standalone`).
    pub fn load_objects(&self, objects: &PoolObjects) {
        self.set_pools(PoolSet::from_objects(&objects.pools));
        self.reset_namespaces(objects.namespaces.iter().cloned());
    }

    /// Whether the webhook handles `svc` (SPEC 3, or a class a pool object names).
    pub fn handles(&self, svc: &SvcInfo) -> bool {
        engine::handles(&self.options, &self.objects().pools, svc)
    }

    /// What the reconciler allocates for: handled, and no address yet.
    pub fn needs_allocation(&self, svc: &SvcInfo) -> bool {
        self.handles(svc) && svc.requested().is_none()
    }

    /// Size and used addresses of each pool object of `pools` (in its order), as its status and
    /// the metrics report them. O(k) in the used addresses inside the pools, under the lock.
    pub fn object_usage(&self, pools: &PoolSet) -> Vec<Counts> {
        let inner = self.lock();
        let used = inner.index.addrs();
        pools
            .iter()
            .map(|p| {
                let count = |family: Family| {
                    let Some(FamilyPool::Set(set)) = p.pool.family(family) else {
                        return None;
                    };
                    // A pool object is no namespace's: what every namespace excludes is not
                    // part of it (as for `cidr-global`); reserved addresses are used.
                    let set = inner.config.without_excluded(GLOBAL, set);
                    Some(if p.spec.avoid_buggy_ips {
                        (set.capacity(), used.count_in(&set))
                    } else {
                        (set.size(), used.count_all_in(&set))
                    })
                };
                Counts {
                    v4: count(Family::V4),
                    v6: count(Family::V6),
                }
            })
            .collect()
    }
}
