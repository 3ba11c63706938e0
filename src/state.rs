//! The one owner of allocation state: parsed config, used-address index, reservations.
//!
//! Every decision and every index change happens under one mutex, so two concurrent admissions
//! can never both see an address as free (SPEC 4.2). The decision itself is O(log n), so the lock
//! is held for microseconds: what a request carries is checked against the bounds, and every
//! value the locked section stores (keys, labels, sorted port lists) is built, before the lock.
//!
//! Reviews come from whoever can reach the webhook port, so what they make the allocator hold is
//! bounded ([`Quotas`]); our own reconciler (Services that exist) is not.

mod objects;
mod prepare;
mod quota;
mod reserved;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::config::{Config, FamilyPool};
use crate::engine::{self, Changes, Decision, Options, Outcome, Pools, View};
use crate::index::{Holder, HolderId, UsedIndex};
use crate::ipam::Family;
use crate::metrics::{PoolStat, StatsSource};
use crate::service::{ServiceKey, SvcInfo};

pub use objects::Labels;
use objects::Objects;
use prepare::{Prepared, at_quota, prepare};
use quota::Usage;
pub use quota::{
    DEFAULT_MAX_RESERVATIONS, DEFAULT_MAX_RESERVATIONS_PER_NAMESPACE, FREE_PORT_ENTRIES,
    MAX_HELD_FROM_REVIEW, MAX_RESERVATION_TTL, MAX_RESERVED_PORT_ENTRIES, MIN_RESERVATION_TTL,
    Quotas,
};
pub use reserved::{ReservedChange, ReservedConflict};

/// How admitted addresses become permanent holders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirm {
    /// Cluster mode: a reservation lasts until the Service shows up in the cache holding the
    /// address, or until the TTL passes (a later admission step rejected the object).
    ByCache { ttl: Duration },
    /// Standalone and `plan`: there is no cache, the admission is the creation.
    OnAdmit,
}

#[derive(Debug)]
struct Reservation {
    namespace: String,
    name: String,
    generate_name: Option<String>,
    expires: Instant,
    /// What it is charged against the port budget (see `quota::charged`) when it counts against
    /// the quotas (made for a review); `None` for the reconciler's own.
    counted: Option<usize>,
}

impl Reservation {
    /// Made for exactly this Service (by name; a `generateName` reservation is not, as another
    /// Service may share the prefix).
    fn is_for(&self, svc: &SvcInfo) -> bool {
        !self.name.is_empty() && self.name == svc.name && self.namespace == svc.namespace
    }

    fn matches(&self, svc: &ServiceKey) -> bool {
        self.namespace == svc.namespace
            && (self.name == svc.name
                || (self.name.is_empty()
                    && self
                        .generate_name
                        .as_deref()
                        .is_some_and(|g| svc.name.starts_with(g))))
    }
}

#[derive(Debug, Default)]
struct Inner {
    config: Arc<Config>,
    config_present: bool,
    index: UsedIndex,
    reservations: HashMap<Arc<str>, Reservation, foldhash::fast::RandomState>,
    expiry: VecDeque<(Instant, Arc<str>)>,
    /// What counted reservations hold, against the quotas.
    usage: Usage,
    /// Standalone: Services admitted by reviews (they stay in the index; counted once each).
    admitted: HashSet<ServiceKey, foldhash::fast::RandomState>,
    /// Addresses the network already uses, by source (see `state/reserved.rs`).
    reserved: reserved::BySource,
}

/// A request to decide for one Service.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Admission request UID (or a reconciler-made id): the reservation key.
    pub id: &'a str,
    pub svc: &'a SvcInfo,
    pub old: Option<&'a SvcInfo>,
    /// `dryRun`: same answer, nothing reserved (SPEC 4.7).
    pub dry_run: bool,
}

#[derive(Debug)]
pub struct Allocator {
    inner: Mutex<Inner>,
    objects: RwLock<Objects>,
    options: Options,
    confirm: Confirm,
    config_name: String,
    quotas: Quotas,
    /// The operator's `--exclude`, added to every ConfigMap the allocator is given.
    exclude: Option<crate::config::Exclusion>,
}

/// Who asks for a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    /// A review from the webhook port: bounded by the quotas.
    Review,
    /// The reconciler (a Service that exists) or `plan`: not bounded.
    Trusted,
}

impl Allocator {
    /// `Confirm::ByCache` TTLs are clamped to [`MIN_RESERVATION_TTL`]..=[`MAX_RESERVATION_TTL`].
    pub fn new(options: Options, confirm: Confirm, config_name: impl Into<String>) -> Self {
        let confirm = match confirm {
            Confirm::ByCache { ttl } => Confirm::ByCache {
                ttl: ttl.clamp(MIN_RESERVATION_TTL, MAX_RESERVATION_TTL),
            },
            Confirm::OnAdmit => Confirm::OnAdmit,
        };
        Allocator {
            inner: Mutex::new(Inner::default()),
            objects: RwLock::default(),
            options,
            confirm,
            config_name: config_name.into(),
            quotas: Quotas::default(),
            exclude: None,
        }
    }

    /// Replace the default [`Quotas`] on reviews.
    pub fn with_quotas(mut self, quotas: Quotas) -> Self {
        self.quotas = quotas;
        self
    }

    pub fn quotas(&self) -> Quotas {
        self.quotas
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    pub fn config_name(&self) -> &str {
        &self.config_name
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the index half-updated in a way that
        // matters more than refusing all further work would, so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decide for one Service and, unless dry-run, hold its addresses until confirmed. For the
    /// reconciler and `plan`: not bounded by the quotas (see [`Allocator::admit_review`]).
    pub fn admit(&self, req: Request<'_>, now: Instant) -> Decision {
        self.admit_as(req, now, Caller::Trusted)
    }

    /// [`Allocator::admit`] for a review from the webhook port, which anyone who reaches it can
    /// send: what it may make us hold is bounded by the [`Quotas`]. At a quota nothing is held
    /// and the caller is told: an allocation is admitted without an address (the reconciler
    /// assigns one once the Service exists), a requested address not already held by the same
    /// Service is denied. Never a duplicate.
    pub fn admit_review(&self, req: Request<'_>, now: Instant) -> Decision {
        self.admit_as(req, now, Caller::Review)
    }

    fn admit_as(&self, req: Request<'_>, now: Instant, caller: Caller) -> Decision {
        let (pools, namespace_labels) = self.objects_for(&req.svc.namespace);
        // Outside the lock: refuse what no Service can carry, and build what the locked section
        // stores, so that the lock is held for the decision and a few map updates only.
        if let Some(why) = engine::check_bounds_with(req.svc, &self.options, &pools) {
            return Decision {
                outcome: Outcome::Denied(why),
                changes: Changes::default(),
                warnings: Vec::new(),
            };
        }
        let id: Arc<str> = req.id.into();
        let prepared = (!req.dry_run).then(|| prepare(self.confirm, &req, &id, now));

        let mut inner = self.lock();
        inner.expire(now);
        if !req.dry_run {
            // The same request decided again (apiserver retry, reconciler after a conflict):
            // its earlier reservation is replaced, so it gets the same address back.
            inner.drop_reservation(&id);
        }
        // Looked up under the lock: reservations made for this same Service (see `Inner::me`).
        let me = inner.me(&id, req.svc);
        let decision = {
            let view = View {
                config: &inner.config,
                config_name: &self.config_name,
                index: &inner.index,
                options: &self.options,
                me: &me,
            };
            let pools = Pools {
                set: &pools,
                namespace_labels: namespace_labels.as_deref(),
            };
            engine::decide_with(req.svc, req.old, &view, &pools)
        };
        let Some(prepared) = prepared else {
            return decision;
        };
        let ips = decision.outcome.ips();
        if ips.is_empty() || matches!(decision.outcome, Outcome::Skipped(_)) {
            if let Prepared::Admitted { key, holder, held } = prepared {
                // Standalone: no cache will tell us, the object as admitted is the Service now
                // (a type change away from LoadBalancer frees its address, SPEC 4.1).
                let admitted = matches!(
                    decision.outcome,
                    Outcome::Skipped(_) | Outcome::NoAddress(_)
                );
                if admitted && !req.svc.name.is_empty() {
                    let new = inner.index.addresses_of(&holder.id).is_empty();
                    if held.is_empty() || !new || inner.admit_standalone(&key, caller, self.quotas)
                    {
                        inner.index.set_holder(holder, &held);
                    }
                }
            }
            return decision;
        }
        let holder_ips: Vec<IpAddr> = ips
            .iter()
            .copied()
            .filter(|ip| !ip.is_unspecified())
            .collect();
        match prepared {
            Prepared::Admitted { key, holder, .. } => {
                let new = inner.index.addresses_of(&holder.id).is_empty();
                if new && !inner.admit_standalone(&key, caller, self.quotas) {
                    return at_quota(decision, &self.quotas.standalone_refusal());
                }
                inner.index.set_holder(holder, &holder_ips);
            }
            Prepared::Reserved {
                holder,
                mut reservation,
                expires,
            } => {
                let entries = quota::charged(holder.ports().len(), holder_ips.len());
                if caller == Caller::Review {
                    if let Err(why) = inner
                        .usage
                        .admits(&self.quotas, &req.svc.namespace, entries)
                    {
                        if inner.already_holds(&HolderId::Service(req.svc.key()), &holder_ips) {
                            // An UPDATE keeping the addresses the Service already holds: the
                            // Service itself keeps them from anyone else, nothing to reserve.
                            return decision;
                        }
                        return at_quota(decision, &why);
                    }
                    inner.usage.add(&req.svc.namespace, entries);
                    reservation.counted = Some(entries);
                }
                inner.index.set_holder(holder, &holder_ips);
                inner.reservations.insert(id.clone(), reservation);
                inner.expiry.push_back((expires, id));
            }
        }
        decision
    }

    /// Drop the reservation of request `id` (its write failed for good): its addresses are free
    /// again at once instead of at the TTL. With `svc`, also the other reservations made for
    /// that same Service on those addresses: our own refused write came back through the webhook
    /// as an UPDATE and was reserved there too, before the apiserver refused it.
    pub fn release(&self, id: &str, svc: Option<&SvcInfo>) {
        let mut inner = self.lock();
        let id: Arc<str> = id.into();
        if !inner.reservations.contains_key(&id) {
            return;
        }
        let freed = inner
            .index
            .addresses_of(&HolderId::Reservation(id.clone()))
            .to_vec();
        inner.drop_reservation(&id);
        let Some(svc) = svc else {
            return;
        };
        let echoes: Vec<Arc<str>> = freed
            .iter()
            .flat_map(|ip| inner.index.holders(*ip))
            .filter_map(|h| match &h.id {
                HolderId::Reservation(other)
                    if inner.reservations.get(other).is_some_and(|r| r.is_for(svc)) =>
                {
                    Some(other.clone())
                }
                _ => None,
            })
            .collect();
        for other in echoes {
            inner.drop_reservation(&other);
        }
    }

    /// A Service as the cache (or a Services file) shows it now. True when an address it held
    /// became free (type change, annotation removed): waiting Services may now get one.
    pub fn apply_service(&self, svc: &SvcInfo) -> bool {
        let mut inner = self.lock();
        let before = inner
            .index
            .addresses_of(&HolderId::Service(svc.key()))
            .to_vec();
        inner.index.apply_service(svc);
        inner.confirm_reservations(svc);
        before.iter().any(|ip| !inner.index.addrs().contains(*ip))
    }

    /// True when an address became free.
    pub fn delete_service(&self, key: &ServiceKey) -> bool {
        let mut inner = self.lock();
        let before = inner
            .index
            .addresses_of(&HolderId::Service(key.clone()))
            .to_vec();
        inner.index.remove_service(key);
        before.iter().any(|ip| !inner.index.addrs().contains(*ip))
    }

    /// Other Services sharing an address with `svc` on a clashing (port, protocol).
    pub fn clashes_of(&self, svc: &SvcInfo) -> Vec<(IpAddr, String)> {
        let inner = self.lock();
        let me = HolderId::Service(svc.key());
        let mut out = Vec::new();
        for ip in inner.index.addresses_of(&me) {
            for h in inner.index.holders(*ip) {
                if matches!(h.id, HolderId::Service(_))
                    && h.id != me
                    && crate::service::port_clash(&svc.ports, h.ports()).is_some()
                {
                    out.push((*ip, h.label.to_string()));
                }
            }
        }
        out
    }

    /// Replace the whole Service view (watch relist). Reservations are kept: they stand for
    /// admissions the new list may not contain yet. The new index is built before taking the
    /// lock (a relist of 100k Services must not stall admissions), the old one dropped after.
    pub fn reset_services<'a>(&self, services: impl IntoIterator<Item = &'a SvcInfo>) {
        let mut fresh = UsedIndex::new();
        for svc in services {
            fresh.apply_service(svc);
        }
        let old = {
            let mut inner = self.lock();
            for (holder, ips) in inner.reservation_holdings() {
                fresh.set_holder(holder, &ips);
            }
            reserved::add_all(&inner.reserved, &mut fresh);
            let old = std::mem::replace(&mut inner.index, fresh);
            inner.confirm_all_reservations();
            old
        };
        drop(old);
    }

    /// New ConfigMap contents (`None`: the ConfigMap is missing). Parsed by the caller once per change.
    pub fn set_config(&self, config: Option<Config>) {
        let present = config.is_some();
        let mut config = config.unwrap_or_default();
        config.set_operator_exclusion(self.exclude.clone());
        let config = Arc::new(config);
        let mut inner = self.lock();
        inner.config_present = present;
        inner.config = config;
    }

    pub fn config(&self) -> Arc<Config> {
        self.lock().config.clone()
    }

    pub fn config_present(&self) -> bool {
        self.lock().config_present
    }

    /// Drop reservations whose TTL has passed.
    pub fn expire(&self, now: Instant) {
        self.lock().expire(now);
    }

    pub fn reservations(&self) -> usize {
        self.lock().reservations.len()
    }

    /// Holders of `ip` by label (tests, diagnostics).
    pub fn holders_of(&self, ip: IpAddr) -> Vec<String> {
        self.lock()
            .index
            .holders(ip)
            .iter()
            .map(|h| h.label.to_string())
            .collect()
    }

    pub fn used_count(&self) -> usize {
        self.lock().index.addrs().len()
    }

    pub fn malformed_count(&self) -> usize {
        self.lock().index.malformed_count()
    }

    /// Per pool and family: size and used, for metrics and `plan`. ConfigMap pools, then pool
    /// objects in the order they are tried (`vippool/<name>`).
    pub fn pool_stats(&self) -> Vec<PoolStat> {
        let objects = self.pools();
        let usage = self.object_usage(&objects);
        let inner = self.lock();
        let mut out = Vec::new();
        for pool in inner.config.pools() {
            for family in [Family::V4, Family::V6] {
                if let Some(FamilyPool::Set(set)) = pool.family(family) {
                    // What is excluded is not part of the pool (reserved addresses are used).
                    let ns = reserved::pool_namespace(&pool.key);
                    let set = inner.config.without_excluded(ns, set);
                    out.push(PoolStat {
                        pool: pool.key.clone(),
                        family: family.as_str(),
                        size: set.capacity(),
                        used: inner.index.addrs().count_in(&set),
                    });
                }
            }
        }
        for (pool, usage) in objects.iter().zip(usage) {
            for (family, counts) in [(Family::V4, usage.v4), (Family::V6, usage.v6)] {
                if let Some((size, used)) = counts {
                    out.push(PoolStat {
                        pool: pool.key().to_string(),
                        family: family.as_str(),
                        size,
                        used,
                    });
                }
            }
        }
        out
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.expiry.front() {
            if *at > now {
                break;
            }
            let Some((_, id)) = self.expiry.pop_front() else {
                break;
            };
            // The entry may be stale (confirmed, or re-reserved with a later deadline).
            if self.reservations.get(&id).is_some_and(|r| r.expires <= now) {
                self.drop_reservation(&id);
            }
        }
    }

    /// Holders that are `svc` itself: the Service, this request's reservation, and any other
    /// reservation made for this same Service that holds an address it asks for. The last is
    /// what lets our own reconciler's write (and any UPDATE confirming an address reserved for
    /// this Service) through: the apiserver sends that write back to us as an UPDATE with a new
    /// request id, asking for the address the reconciler's reservation holds.
    fn me(&self, id: &Arc<str>, svc: &SvcInfo) -> Vec<HolderId> {
        let mut me = vec![
            HolderId::Service(svc.key()),
            HolderId::Reservation(id.clone()),
        ];
        let Some(requested) = svc.requested() else {
            return me;
        };
        for ip in requested
            .value
            .split(',')
            .filter_map(|e| e.trim().parse::<IpAddr>().ok())
        {
            for holder in self.index.holders(ip) {
                if let HolderId::Reservation(other) = &holder.id
                    && self.reservations.get(other).is_some_and(|r| r.is_for(svc))
                    && !me.contains(&holder.id)
                {
                    me.push(holder.id.clone());
                }
            }
        }
        me
    }

    /// A Service showing up with a reserved address confirms (ends) that reservation.
    fn confirm_reservations(&mut self, svc: &SvcInfo) {
        if self.reservations.is_empty() {
            return;
        }
        let key = svc.key();
        let me = HolderId::Service(key.clone());
        let mut done = Vec::new();
        for ip in self.index.addresses_of(&me) {
            for holder in self.index.holders(*ip) {
                if let HolderId::Reservation(id) = &holder.id
                    && self.reservations.get(id).is_some_and(|r| r.matches(&key))
                {
                    done.push(id.clone());
                }
            }
        }
        for id in done {
            self.drop_reservation(&id);
        }
    }

    /// After a relist: every reservation whose Service is now in the index is confirmed.
    fn confirm_all_reservations(&mut self) {
        let mut done = Vec::new();
        for (id, r) in &self.reservations {
            let hid = HolderId::Reservation(id.clone());
            let confirmed = self.index.addresses_of(&hid).iter().any(|ip| {
                self.index.holders(*ip).iter().any(|h| match &h.id {
                    HolderId::Service(key) => r.matches(key),
                    HolderId::Reservation(_) | HolderId::Reserved(_) => false,
                })
            });
            if confirmed {
                done.push(id.clone());
            }
        }
        for id in done {
            self.drop_reservation(&id);
        }
    }

    /// End a reservation: its addresses and what it counted against the quotas are released.
    fn drop_reservation(&mut self, id: &Arc<str>) {
        if let Some(r) = self.reservations.remove(id) {
            self.index.remove_holder(&HolderId::Reservation(id.clone()));
            if let Some(entries) = r.counted {
                self.usage.remove(&r.namespace, entries);
            }
        }
    }

    /// True when `id` already holds every one of `ips`.
    fn already_holds(&self, id: &HolderId, ips: &[IpAddr]) -> bool {
        let held = self.index.addresses_of(id);
        ips.iter().all(|ip| held.contains(ip))
    }

    /// Standalone: may a review add Service `key` to the index? Counted once per Service.
    fn admit_standalone(&mut self, key: &ServiceKey, caller: Caller, quotas: Quotas) -> bool {
        if caller == Caller::Trusted || self.admitted.contains(key) {
            return true;
        }
        if self.admitted.len() >= quotas.reservations {
            return false;
        }
        self.admitted.insert(key.clone());
        true
    }

    fn reservation_holdings(&self) -> Vec<(Holder, Vec<IpAddr>)> {
        self.reservations
            .keys()
            .filter_map(|id| {
                let hid = HolderId::Reservation(id.clone());
                let ips = self.index.addresses_of(&hid).to_vec();
                let ip = *ips.first()?;
                let holder = self.index.holders(ip).iter().find(|h| h.id == hid)?.clone();
                Some((holder, ips))
            })
            .collect()
    }
}

impl StatsSource for Allocator {
    fn pools(&self) -> Vec<PoolStat> {
        self.pool_stats()
    }
    fn reservations(&self) -> usize {
        Allocator::reservations(self)
    }
    fn config_errors(&self) -> usize {
        self.lock().config.errors().len()
    }
    fn config_present(&self) -> bool {
        Allocator::config_present(self)
    }
    fn pool_objects(&self) -> Vec<crate::metrics::PoolObjectStat> {
        Allocator::pools(self)
            .iter()
            .map(|p| crate::metrics::PoolObjectStat {
                pool: p.key().to_string(),
                invalid_entries: p.errors.len(),
            })
            .collect()
    }
    fn reserved_in_pools(&self) -> Vec<crate::metrics::ReservedStat> {
        Allocator::reserved_in_pools(self)
            .into_iter()
            .map(|r| crate::metrics::ReservedStat {
                pool: r.pool,
                family: Family::of(r.address).as_str(),
                address: r.address.to_string(),
                owner: r.owner,
            })
            .collect()
    }
}
