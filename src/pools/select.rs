//! Which pools a Service may draw from, in the order they are tried: the one question the
//! engine asks instead of `Config::pool_for`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::{ObjectPool, PoolSet};
use crate::config::{Config, ConfigError, FamilyPool, Pool};
use crate::ipam::Family;
use crate::service::{POOL_ANNOTATION, SvcInfo};

/// A pool a Service may draw from, with the settings allocation reads.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// The addresses (`key`: `vippool/<name>` or the ConfigMap key).
    pub pool: &'a Pool,
    pub allow_share: bool,
    pub interface: Option<&'a str>,
    /// Never hand out IPv4 `.0`/`.255` (always for ConfigMap pools).
    pub avoid_buggy_ips: bool,
    /// `None` for the ConfigMap's pool.
    pub object: Option<&'a ObjectPool>,
}

impl Candidate<'_> {
    pub fn key(&self) -> &str {
        &self.pool.key
    }

    pub fn family(&self, f: Family) -> Option<&FamilyPool> {
        self.pool.family(f)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.pool.contains(ip)
    }

    /// Problems in the pool's definition (entries left out), for warnings. ConfigMap pools:
    /// `None` (the caller reads them from the ConfigMap, as before pool objects).
    pub fn errors(&self) -> Option<&[ConfigError]> {
        self.object.map(|o| o.errors.as_slice())
    }
}

/// The pools a Service may draw from.
#[derive(Debug, Default)]
pub struct Selection<'a> {
    /// In the order they are tried: pool objects by priority then name, then the ConfigMap's.
    pub candidates: Vec<Candidate<'a>>,
    /// Pool objects that select the Service but are disabled (drained).
    pub disabled: Vec<&'a ObjectPool>,
    /// The Service names a pool (annotation) that cannot serve it: why. No other pool is tried.
    pub refused: Option<String>,
}

/// One pool in trial order: one to try, or one that selects the Service but is drained.
#[derive(Clone, Copy, Debug)]
pub enum Entry<'a> {
    Candidate(Candidate<'a>),
    Disabled(&'a ObjectPool),
}

/// The pools `svc` may draw from, in trial order, computed as they are asked for: allocation
/// stops at the first pool with a free address, so the selectors of the pools after it are never
/// evaluated. `Err`: the Service names a pool that cannot serve it (why, and the pool when it is
/// a disabled one).
pub fn entries<'a>(
    svc: &'a SvcInfo,
    handled: bool,
    namespace_labels: Option<&'a BTreeMap<String, String>>,
    pools: &'a PoolSet,
    config: &'a Config,
) -> Result<Entries<'a>, (String, Option<&'a ObjectPool>)> {
    let mut entries = Entries {
        svc,
        handled,
        namespace_labels,
        pools: pools.pools.iter(),
        configmap: None,
    };
    if let Some(name) = svc.pool.as_deref() {
        let Some(pool) = pools.get(name) else {
            return Err((
                format!(
                    "annotation {POOL_ANNOTATION} names VIPPool {name:?}, which does not exist"
                ),
                None,
            ));
        };
        if let Some(why) = mismatch(svc, handled, namespace_labels, pool) {
            return Err((
                format!(
                    "annotation {POOL_ANNOTATION} names VIPPool {name:?}, which does not select this Service: {}",
                    why.explain(svc)
                ),
                None,
            ));
        }
        if pool.spec.disabled {
            return Err((
                format!(
                    "annotation {POOL_ANNOTATION} names VIPPool {name:?}, which is disabled (draining: it hands out nothing new)"
                ),
                Some(pool),
            ));
        }
        entries.pools = std::slice::from_ref(pool).iter();
        return Ok(entries);
    }
    if handled && let Some(pool) = config.pool_for(&svc.namespace) {
        entries.configmap = Some(Candidate {
            pool,
            allow_share: config.allow_share(&svc.namespace),
            interface: config.interface(&svc.namespace),
            avoid_buggy_ips: true,
            object: None,
        });
    }
    Ok(entries)
}

/// See [`entries`].
pub struct Entries<'a> {
    svc: &'a SvcInfo,
    handled: bool,
    namespace_labels: Option<&'a BTreeMap<String, String>>,
    pools: std::slice::Iter<'a, Arc<ObjectPool>>,
    /// The ConfigMap's pool, tried after every pool object.
    configmap: Option<Candidate<'a>>,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Entry<'a>> {
        for pool in self.pools.by_ref() {
            if mismatch(self.svc, self.handled, self.namespace_labels, pool).is_some() {
                continue;
            }
            return Some(if pool.spec.disabled {
                Entry::Disabled(pool)
            } else {
                Entry::Candidate(object_candidate(pool))
            });
        }
        self.configmap.take().map(Entry::Candidate)
    }
}

/// The pools `svc` may draw from, all of them ([`entries`], collected). `handled`: whether the
/// webhook handles the Service without pool objects (SPEC 3: class-less, or the class of class
/// mode): only those may use pool objects without a class, and the ConfigMap.
/// `namespace_labels`: `None` when not known (yet).
pub fn select<'a>(
    svc: &'a SvcInfo,
    handled: bool,
    namespace_labels: Option<&'a BTreeMap<String, String>>,
    pools: &'a PoolSet,
    config: &'a Config,
) -> Selection<'a> {
    let mut selection = Selection::default();
    match entries(svc, handled, namespace_labels, pools, config) {
        Err((why, disabled)) => {
            selection.refused = Some(why);
            selection.disabled.extend(disabled);
        }
        Ok(entries) => {
            for entry in entries {
                match entry {
                    Entry::Candidate(c) => selection.candidates.push(c),
                    Entry::Disabled(p) => selection.disabled.push(p),
                }
            }
        }
    }
    selection
}

fn object_candidate(pool: &ObjectPool) -> Candidate<'_> {
    Candidate {
        pool: &pool.pool,
        allow_share: pool.spec.allow_share,
        interface: pool.interface(),
        avoid_buggy_ips: pool.spec.avoid_buggy_ips,
        object: Some(pool),
    }
}

/// Why a pool does not select a Service.
#[derive(Clone, Copy, Debug)]
enum Mismatch<'a> {
    Class(&'a str),
    NotHandled(&'a str),
    Namespace,
    Labels,
}

impl Mismatch<'_> {
    fn explain(self, svc: &SvcInfo) -> String {
        match self {
            Mismatch::Class(want) => format!("it serves loadBalancerClass {want:?} only"),
            Mismatch::NotHandled(class) => format!(
                "it has no loadBalancerClass, and Services of class {class:?} are not handled otherwise"
            ),
            Mismatch::Namespace => format!(
                "its namespaceSelector does not match namespace {:?}",
                svc.namespace
            ),
            Mismatch::Labels => {
                "its serviceSelector does not match the Service's labels".to_string()
            }
        }
    }
}

/// Why `pool` does not select `svc`; `None` when it does. Allocates nothing: it runs for every
/// pool object on every allocation.
fn mismatch<'a>(
    svc: &'a SvcInfo,
    handled: bool,
    namespace_labels: Option<&BTreeMap<String, String>>,
    pool: &'a ObjectPool,
) -> Option<Mismatch<'a>> {
    match (&pool.spec.load_balancer_class, &svc.class) {
        (Some(want), Some(got)) if want == got => {}
        (Some(want), _) => return Some(Mismatch::Class(want)),
        (None, class) if !handled => {
            return Some(Mismatch::NotHandled(class.as_deref().unwrap_or_default()));
        }
        (None, _) => {}
    }
    if !pool.selects_namespace(&svc.namespace, namespace_labels) {
        return Some(Mismatch::Namespace);
    }
    if !pool.service_selector.matches(&svc.labels) {
        return Some(Mismatch::Labels);
    }
    None
}
