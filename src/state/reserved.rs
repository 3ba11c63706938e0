//! The allocator's share of "addresses the network already uses" (SPEC 4.9, see `reserved`):
//! each source's holdings are kept here and mirrored into the used-address index as holders
//! without ports, replaced as a whole when the source changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::{Allocator, Inner};
use crate::config::{Config, Exclusion, FamilyPool, GLOBAL};
use crate::index::{Holder, HolderId, UsedIndex};
use crate::ipam::Family;
use crate::pools::PoolSet;
use crate::reserved::{Holding, InPool, Network, ReservedAddress, Source, SourceKind};
use crate::service::ServiceKey;

/// Holdings by source.
pub(super) type BySource = HashMap<Source, Vec<Holding>, foldhash::fast::RandomState>;

/// A Service already holding an address that has just become reserved (a node came up with
/// it, say). Reported, never moved.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReservedConflict {
    pub service: ServiceKey,
    pub address: IpAddr,
    pub owner: String,
}

/// What a change of reserved addresses did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReservedChange {
    /// Some address or owner changed (what pools contain may have changed).
    pub changed: bool,
    /// An address is free again: Services waiting for one may get it.
    pub freed: bool,
    pub conflicts: Vec<ReservedConflict>,
}

impl ReservedChange {
    fn merge(&mut self, other: ReservedChange) {
        self.changed |= other.changed;
        self.freed |= other.freed;
        self.conflicts.extend(other.conflicts);
    }
}

fn holder_of(h: &Holding) -> Holder {
    Holder::new(
        HolderId::Reserved(h.owner.as_str().into()),
        h.owner.as_str(),
        &[],
    )
}

impl Allocator {
    /// Addresses excluded by the operator (`--exclude`), in every namespace, on top of the
    /// ConfigMap's `exclude-*` keys.
    pub fn with_exclusion(mut self, exclude: Option<Exclusion>) -> Self {
        self.exclude = exclude.filter(|e| !e.is_empty());
        self
    }

    /// The exclusion and every source of `network` (`plan`, `status`: read once).
    pub fn with_network(self, network: &Network) -> Self {
        let this = self.with_exclusion(network.exclude.clone());
        for (source, holdings) in &network.sources {
            this.set_reserved(source.clone(), holdings.clone());
        }
        this
    }

    /// What `source` reserves now (empty: nothing any more, e.g. the Node was deleted).
    pub fn set_reserved(&self, source: Source, holdings: Vec<Holding>) -> ReservedChange {
        self.lock().replace_reserved(source, holdings)
    }

    /// Every source of `kind` as listed (a watch relist): sources not listed reserve nothing.
    pub fn reset_reserved(
        &self,
        kind: SourceKind,
        listed: Vec<(Source, Vec<Holding>)>,
    ) -> ReservedChange {
        let mut inner = self.lock();
        let listed_sources: BTreeSet<&Source> = listed.iter().map(|(s, _)| s).collect();
        let gone: Vec<Source> = inner
            .reserved
            .keys()
            .filter(|s| s.kind() == kind && !listed_sources.contains(s))
            .cloned()
            .collect();
        let mut change = ReservedChange::default();
        for source in gone {
            change.merge(inner.replace_reserved(source, Vec::new()));
        }
        for (source, holdings) in listed {
            change.merge(inner.replace_reserved(source, holdings));
        }
        change
    }

    /// Every reserved address, what it is, and the pools containing it; sorted by address.
    pub fn reserved_addresses(&self) -> Vec<ReservedAddress> {
        let (config, holdings) = self.reserved_snapshot();
        let mut pools: BTreeMap<(IpAddr, String), Vec<String>> = BTreeMap::new();
        for p in in_pools(&config, &self.pools(), &holdings) {
            pools.entry((p.address, p.owner)).or_default().push(p.pool);
        }
        let mut out: Vec<ReservedAddress> = holdings
            .iter()
            .flat_map(|h| {
                h.ips.iter().map(|ip| ReservedAddress {
                    address: *ip,
                    owner: h.owner.clone(),
                    pools: pools
                        .get(&(*ip, h.owner.clone()))
                        .cloned()
                        .unwrap_or_default(),
                })
            })
            .collect();
        out.sort();
        out
    }

    /// Reserved addresses that pools contain (after exclusions): allocation skips them, the
    /// ConfigMap gets a Warning, the metric names them. Sorted by pool, then address.
    pub fn reserved_in_pools(&self) -> Vec<InPool> {
        let (config, holdings) = self.reserved_snapshot();
        in_pools(&config, &self.pools(), &holdings)
    }

    /// The configuration and every holding, copied out: matching them against pools (pools x
    /// addresses) happens outside the allocator lock (metrics scrapes, node churn).
    fn reserved_snapshot(&self) -> (Arc<Config>, Vec<Holding>) {
        let inner = self.lock();
        let holdings = inner.reserved.values().flatten().cloned().collect();
        (inner.config.clone(), holdings)
    }

    /// Every Service address that is also reserved (a new leader reports them once).
    pub fn all_reserved_conflicts(&self) -> Vec<ReservedConflict> {
        let inner = self.lock();
        let mut out = Vec::new();
        for h in inner.reserved.values().flatten() {
            for ip in &h.ips {
                for holder in inner.index.holders(*ip) {
                    if let HolderId::Service(key) = &holder.id {
                        out.push(ReservedConflict {
                            service: key.clone(),
                            address: *ip,
                            owner: h.owner.clone(),
                        });
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// The addresses of Service `key` that are reserved, with what they are.
    pub fn reserved_conflicts_of(&self, key: &ServiceKey) -> Vec<ReservedConflict> {
        let inner = self.lock();
        let mut out = Vec::new();
        if inner.reserved.is_empty() {
            return out;
        }
        for ip in inner.index.addresses_of(&HolderId::Service(key.clone())) {
            for h in inner.index.holders(*ip) {
                if let HolderId::Reserved(owner) = &h.id {
                    out.push(ReservedConflict {
                        service: key.clone(),
                        address: *ip,
                        owner: owner.to_string(),
                    });
                }
            }
        }
        out
    }
}

impl Inner {
    fn replace_reserved(&mut self, source: Source, holdings: Vec<Holding>) -> ReservedChange {
        let old = self.reserved.remove(&source).unwrap_or_default();
        if old == holdings {
            if !old.is_empty() {
                self.reserved.insert(source, old);
            }
            return ReservedChange::default();
        }
        for h in &old {
            self.index
                .remove_holder(&HolderId::Reserved(h.owner.as_str().into()));
        }
        let before: BTreeSet<IpAddr> = old.iter().flat_map(|h| h.ips.iter().copied()).collect();
        let mut conflicts = Vec::new();
        for h in &holdings {
            self.index.set_holder(holder_of(h), &h.ips);
            for ip in h.ips.iter().filter(|ip| !before.contains(ip)) {
                for holder in self.index.holders(*ip) {
                    if let HolderId::Service(key) = &holder.id {
                        conflicts.push(ReservedConflict {
                            service: key.clone(),
                            address: *ip,
                            owner: h.owner.clone(),
                        });
                    }
                }
            }
        }
        let freed = before.iter().any(|ip| !self.index.addrs().contains(*ip));
        if !holdings.is_empty() {
            self.reserved.insert(source, holdings);
        }
        ReservedChange {
            changed: true,
            freed,
            conflicts,
        }
    }
}

/// Adds every reserved holder to `index` (a Service relist builds a fresh index).
pub(super) fn add_all(reserved: &BySource, index: &mut UsedIndex) {
    for h in reserved.values().flatten() {
        index.set_holder(holder_of(h), &h.ips);
    }
}

/// The namespace whose exclusions a pool key's own Services see (`cidr-web` -> `web`).
pub(super) fn pool_namespace(key: &str) -> &str {
    key.split_once('-').map_or(GLOBAL, |(_, ns)| ns)
}

/// Reserved addresses inside the ConfigMap's pools and the pool objects (whose Services see the
/// global exclusions: a VIPPool is not a namespace's).
fn in_pools(config: &Config, objects: &PoolSet, holdings: &[Holding]) -> Vec<InPool> {
    let mut out = Vec::new();
    if holdings.is_empty() {
        return out;
    }
    // (pool, the namespace whose exclusions apply, whether it hands out IPv4 .0/.255).
    let config_pools = config.pools().map(|p| (p, pool_namespace(&p.key), false));
    let object_pools = objects
        .iter()
        .map(|o| (&o.pool, GLOBAL, !o.spec.avoid_buggy_ips));
    for (pool, ns, all) in config_pools.chain(object_pools) {
        for family in [Family::V4, Family::V6] {
            let Some(FamilyPool::Set(set)) = pool.family(family) else {
                continue;
            };
            let set = config.without_excluded(ns, set);
            let inside = |ip: &IpAddr| {
                if all {
                    set.contains(*ip)
                } else {
                    set.is_allocatable(*ip)
                }
            };
            for h in holdings {
                for ip in h.ips.iter().filter(|ip| inside(ip)) {
                    out.push(InPool {
                        pool: pool.key.clone(),
                        address: *ip,
                        owner: h.owner.clone(),
                    });
                }
            }
        }
    }
    out.sort();
    out
}
