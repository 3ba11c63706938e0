//! Address pools as Kubernetes objects (`VIPPool`, issue 13): the type ([`crd`]), its parsing
//! into the address sets the ConfigMap pools use ([`ObjectPool`]), the set of all of them in
//! the order they are tried ([`PoolSet`]), which of them a Service may draw from ([`select`]),
//! and what their status says ([`status`]). Pure, no I/O.
//!
//! Pool objects come before the ConfigMap: a Service gets the first pool object, by priority
//! (higher first) then name, that selects it and has a free address; then the one ConfigMap pool
//! of its namespace, exactly as without pool objects.

pub mod crd;
mod parse;
mod select;
pub mod status;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

pub use crd::{VIPPool, VIPPoolSpec, VIPPoolStatus};
pub use parse::{Match, NAMESPACE_NAME_LABEL, ObjectPool};
pub use select::{Candidate, Entries, Entry, Selection, entries, select};

use crate::config::{Config, FamilyPool};
use crate::ipam::{Family, to_u128};

/// Every pool object, parsed, in the order they are tried. Built once per change of the objects
/// (the parsed pools are shared, only the order is rebuilt), then only read.
#[derive(Clone, Debug, Default)]
pub struct PoolSet {
    /// Priority descending, then name ascending.
    pools: Vec<Arc<ObjectPool>>,
    by_name: HashMap<String, usize>,
    /// `spec.loadBalancerClass` of every pool: Services of these classes are handled.
    classes: BTreeSet<String>,
    namespace_selectors: bool,
}

impl PoolSet {
    /// The set of `pools` (one per name; a later duplicate replaces an earlier one).
    pub fn new(pools: impl IntoIterator<Item = Arc<ObjectPool>>) -> PoolSet {
        let mut by_name: BTreeMap<String, Arc<ObjectPool>> = BTreeMap::new();
        for p in pools {
            by_name.insert(p.name.clone(), p);
        }
        let mut pools: Vec<Arc<ObjectPool>> = by_name.into_values().collect();
        // Stable on the name order above: equal priorities stay sorted by name.
        pools.sort_by_key(|p| std::cmp::Reverse(p.spec.priority));
        PoolSet {
            by_name: pools
                .iter()
                .enumerate()
                .map(|(i, p)| (p.name.clone(), i))
                .collect(),
            classes: pools
                .iter()
                .filter_map(|p| p.spec.load_balancer_class.clone())
                .collect(),
            namespace_selectors: pools.iter().any(|p| p.namespace_selector.is_restrictive()),
            pools,
        }
    }

    /// Parse each object and build the set (files, `plan`, `--standalone`).
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a VIPPool>) -> PoolSet {
        PoolSet::new(objects.into_iter().map(|o| Arc::new(parse_object(o))))
    }

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pools.len()
    }

    /// In the order they are tried.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ObjectPool>> {
        self.pools.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ObjectPool>> {
        self.by_name.get(name).map(|i| &self.pools[*i])
    }

    /// Whether some pool names this `loadBalancerClass` (its Services are then ours).
    pub fn claims_class(&self, class: &str) -> bool {
        self.classes.contains(class)
    }

    /// The classes pools name.
    pub fn classes(&self) -> &BTreeSet<String> {
        &self.classes
    }

    /// Whether some pool selects by namespace labels (a label change may then move a Service
    /// to another pool).
    pub fn uses_namespace_labels(&self) -> bool {
        self.namespace_selectors
    }

    /// The first pool object whose `spec.exclude` holds `ip`.
    pub fn excluded_by(&self, ip: IpAddr) -> Option<&ObjectPool> {
        self.pools
            .iter()
            .find(|p| p.excludes(ip))
            .map(AsRef::as_ref)
    }

    /// For each pool object, the other pools its addresses overlap (pool objects by key, and
    /// the ConfigMap's pools by key), sorted. Empty entries are left out.
    pub fn overlaps(&self, config: Option<&Config>) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for family in [Family::V4, Family::V6] {
            // (start, end, pool key, is a pool object), swept by start.
            let mut spans: Vec<(u128, u128, &str, bool)> = Vec::new();
            let objects = self.pools.iter().map(|p| (&p.pool, true));
            let configured = config
                .into_iter()
                .flat_map(Config::pools)
                .map(|p| (p, false));
            for (pool, object) in objects.chain(configured) {
                if let Some(FamilyPool::Set(set)) = pool.family(family) {
                    for (a, b) in set.intervals() {
                        spans.push((to_u128(a), to_u128(b), pool.key.as_str(), object));
                    }
                }
            }
            spans.sort_unstable();
            // Open spans, by end: each new span overlaps every open one that ends at or after it.
            let mut open: Vec<(u128, &str, bool)> = Vec::new();
            for (s, e, key, object) in spans {
                open.retain(|(end, _, _)| *end >= s);
                for (_, other, other_object) in &open {
                    if *other == key {
                        continue;
                    }
                    if object {
                        out.entry(key.to_string())
                            .or_default()
                            .insert(other.to_string());
                    }
                    if *other_object {
                        out.entry(other.to_string())
                            .or_default()
                            .insert(key.to_string());
                    }
                }
                open.push((e, key, object));
            }
        }
        out.into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect()
    }
}

/// Pool objects and namespace labels as read once (files, a live cluster) for `plan`, `status`
/// and `--standalone`; the cluster mode watches them instead.
#[derive(Clone, Debug, Default)]
pub struct PoolObjects {
    pub pools: Vec<VIPPool>,
    /// Namespace name and labels (empty when they could not be read: selectors on namespace
    /// labels then match by the namespace's name only).
    pub namespaces: Vec<(String, BTreeMap<String, String>)>,
}

impl PoolObjects {
    /// What is wrong in each pool's spec, as `VIPPool <name>: <error>`.
    pub fn errors(set: &PoolSet) -> Vec<String> {
        set.iter()
            .flat_map(|p| {
                p.errors
                    .iter()
                    .map(move |e| format!("VIPPool {}: {e}", p.name))
            })
            .collect()
    }
}

/// Parse one object (its name, generation, uid and spec).
pub fn parse_object(o: &VIPPool) -> ObjectPool {
    ObjectPool::parse(
        o.metadata.name.as_deref().unwrap_or_default(),
        o.metadata.generation,
        o.metadata.uid.clone(),
        &o.spec,
    )
}

#[cfg(test)]
mod tests;
