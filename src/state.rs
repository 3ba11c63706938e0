//! The one owner of allocation state: parsed config, used-address index, reservations.
//!
//! Every decision and every index change happens under one mutex, so two concurrent admissions
//! can never both see an address as free (SPEC 4.2). The decision itself is O(log n), so the lock
//! is held for microseconds.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::{Config, FamilyPool};
use crate::engine::{self, Decision, Options, Outcome, View};
use crate::index::{Holder, HolderId, UsedIndex};
use crate::ipam::Family;
use crate::metrics::{PoolStat, StatsSource};
use crate::service::{ServiceKey, SvcInfo};

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
}

impl Reservation {
    /// Made for exactly this Service (by name; a `generateName` reservation is not, as another
    /// Service may share the prefix).
    fn is_for(&self, svc: &SvcInfo) -> bool {
        !self.name.is_empty() && self.name == svc.name && self.namespace == svc.namespace
    }

    fn matches(&self, svc: &SvcInfo) -> bool {
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
    options: Options,
    confirm: Confirm,
    config_name: String,
}

impl Allocator {
    pub fn new(options: Options, confirm: Confirm, config_name: impl Into<String>) -> Self {
        Allocator {
            inner: Mutex::new(Inner::default()),
            options,
            confirm,
            config_name: config_name.into(),
        }
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

    /// Decide for one Service and, unless dry-run, hold its addresses until confirmed.
    pub fn admit(&self, req: Request<'_>, now: Instant) -> Decision {
        let mut inner = self.lock();
        inner.expire(now);
        let id: Arc<str> = req.id.into();
        if !req.dry_run && inner.reservations.remove(&id).is_some() {
            // The same request decided again (apiserver retry, reconciler after a conflict):
            // its earlier reservation is replaced, so it gets the same address back.
            inner
                .index
                .remove_holder(&HolderId::Reservation(id.clone()));
        }
        let me = inner.me(&id, req.svc);
        let decision = {
            let view = View {
                config: &inner.config,
                config_name: &self.config_name,
                index: &inner.index,
                options: &self.options,
                me: &me,
            };
            engine::decide(req.svc, req.old, &view)
        };
        if req.dry_run {
            return decision;
        }
        let ips = decision.outcome.ips();
        if ips.is_empty() || matches!(decision.outcome, Outcome::Skipped(_)) {
            let admitted = matches!(
                decision.outcome,
                Outcome::Skipped(_) | Outcome::NoAddress(_)
            );
            if self.confirm == Confirm::OnAdmit && admitted && !req.svc.name.is_empty() {
                // No cache will tell us: the object as admitted is the Service now (a type
                // change away from LoadBalancer frees its address, SPEC 4.1).
                inner.index.apply_service(req.svc);
            }
            return decision;
        }
        let holder_ips: Vec<IpAddr> = ips
            .iter()
            .copied()
            .filter(|ip| !ip.is_unspecified())
            .collect();
        match self.confirm {
            Confirm::OnAdmit => {
                let mut svc = req.svc.clone();
                if svc.name.is_empty() {
                    // generateName in standalone mode: the apiserver would pick the suffix.
                    svc.name = format!("{}{}", svc.generate_name.as_deref().unwrap_or(""), req.id);
                }
                let holder = Holder {
                    id: HolderId::Service(svc.key()),
                    label: svc.display_name().into(),
                    ports: svc.ports.clone().into(),
                };
                inner.index.set_holder(holder, &holder_ips);
            }
            Confirm::ByCache { ttl } => {
                let holder = Holder {
                    id: HolderId::Reservation(id.clone()),
                    label: format!("{} (being admitted)", req.svc.display_name()).into(),
                    ports: req.svc.ports.clone().into(),
                };
                inner.index.set_holder(holder, &holder_ips);
                let expires = now + ttl;
                inner.reservations.insert(
                    id.clone(),
                    Reservation {
                        namespace: req.svc.namespace.clone(),
                        name: req.svc.name.clone(),
                        generate_name: req.svc.generate_name.clone(),
                        expires,
                    },
                );
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
        if inner.reservations.remove(&id).is_none() {
            return;
        }
        let freed = inner.index.remove_holder(&HolderId::Reservation(id));
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
            inner.reservations.remove(&other);
            inner.index.remove_holder(&HolderId::Reservation(other));
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
                    && crate::service::port_clash(&svc.ports, &h.ports).is_some()
                {
                    out.push((*ip, h.label.to_string()));
                }
            }
        }
        out
    }

    /// Replace the whole Service view (watch relist). Reservations are kept: they stand for
    /// admissions the new list may not contain yet.
    pub fn reset_services<'a>(&self, services: impl IntoIterator<Item = &'a SvcInfo>) {
        let mut inner = self.lock();
        let mut fresh = UsedIndex::new();
        for (id, ips) in inner.reservation_holdings() {
            fresh.set_holder(id, &ips);
        }
        inner.index = fresh;
        for svc in services {
            inner.index.apply_service(svc);
            inner.confirm_reservations(svc);
        }
    }

    /// New ConfigMap contents (`None`: the ConfigMap is missing). Parsed by the caller once per change.
    pub fn set_config(&self, config: Option<Config>) {
        let mut inner = self.lock();
        inner.config_present = config.is_some();
        inner.config = Arc::new(config.unwrap_or_default());
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

    /// Per pool and family: size and used, for metrics and `plan`.
    pub fn pool_stats(&self) -> Vec<PoolStat> {
        let inner = self.lock();
        let mut out = Vec::new();
        for pool in inner.config.pools() {
            for family in [Family::V4, Family::V6] {
                if let Some(FamilyPool::Set(set)) = pool.family(family) {
                    out.push(PoolStat {
                        pool: pool.key.clone(),
                        family: family.as_str(),
                        size: set.capacity(),
                        used: inner.index.addrs().count_in(set),
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
                self.reservations.remove(&id);
                self.index.remove_holder(&HolderId::Reservation(id));
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
        let key = HolderId::Service(svc.key());
        let mut done = Vec::new();
        for ip in self.index.addresses_of(&key) {
            for holder in self.index.holders(*ip) {
                if let HolderId::Reservation(id) = &holder.id
                    && self.reservations.get(id).is_some_and(|r| r.matches(svc))
                {
                    done.push(id.clone());
                }
            }
        }
        for id in done {
            self.reservations.remove(&id);
            self.index.remove_holder(&HolderId::Reservation(id));
        }
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
}
