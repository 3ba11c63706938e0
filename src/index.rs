//! The cluster-wide view of used addresses (SPEC 4.1): address -> holders.
//!
//! Holders are Services (from the cache, a Services file, or admitted in standalone mode) and
//! reservations (admission answers not yet seen in the cache). Updated incrementally: applying a
//! Service replaces only that Service's entries, so nothing ever rescans all Services.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::ipam::UsedAddrs;
use crate::service::{PortKey, ServiceKey, SvcInfo};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HolderId {
    Service(ServiceKey),
    /// An admission answer or reconciler write not yet confirmed by the cache, by request id.
    Reservation(Arc<str>),
}

#[derive(Clone, Debug)]
pub struct Holder {
    pub id: HolderId,
    /// How to name the holder in messages (`ns/name`, or `ns/prefix<generated>`).
    pub label: Arc<str>,
    pub ports: Arc<[PortKey]>,
}

#[derive(Debug, Default)]
pub struct UsedIndex {
    by_addr: HashMap<IpAddr, Vec<Holder>>,
    by_holder: HashMap<HolderId, Vec<IpAddr>>,
    addrs: UsedAddrs,
    malformed: HashMap<ServiceKey, usize>,
    malformed_total: usize,
}

impl UsedIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Distinct used addresses, for `ipam::next_free`.
    pub fn addrs(&self) -> &UsedAddrs {
        &self.addrs
    }

    pub fn holders(&self, ip: IpAddr) -> &[Holder] {
        self.by_addr.get(&ip).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn addresses_of(&self, id: &HolderId) -> &[IpAddr] {
        self.by_holder.get(id).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn holder_count(&self) -> usize {
        self.by_holder.len()
    }

    /// Address entries on Services that could not be parsed (skipped, SPEC 4.3).
    pub fn malformed_count(&self) -> usize {
        self.malformed_total
    }

    /// Replace everything `id` holds with `ips`.
    pub fn set_holder(&mut self, holder: Holder, ips: &[IpAddr]) {
        self.remove_holder(&holder.id);
        if ips.is_empty() {
            return;
        }
        for ip in ips {
            let list = self.by_addr.entry(*ip).or_default();
            if list.is_empty() {
                self.addrs.insert(*ip);
            }
            list.push(holder.clone());
        }
        self.by_holder.insert(holder.id, ips.to_vec());
    }

    pub fn remove_holder(&mut self, id: &HolderId) -> Vec<IpAddr> {
        let Some(ips) = self.by_holder.remove(id) else {
            return Vec::new();
        };
        for ip in &ips {
            if let Some(list) = self.by_addr.get_mut(ip) {
                list.retain(|h| &h.id != id);
                if list.is_empty() {
                    self.by_addr.remove(ip);
                    self.addrs.remove(*ip);
                }
            }
        }
        ips
    }

    /// Index a Service as it is now (add, update, or type change away from LoadBalancer).
    pub fn apply_service(&mut self, svc: &SvcInfo) {
        let key = svc.key();
        let held = svc.held();
        self.set_malformed(&key, held.malformed.len());
        let holder = Holder {
            id: HolderId::Service(key),
            label: svc.display_name().into(),
            ports: svc.ports.clone().into(),
        };
        self.set_holder(holder, &held.ips);
    }

    pub fn remove_service(&mut self, key: &ServiceKey) {
        self.set_malformed(key, 0);
        self.remove_holder(&HolderId::Service(key.clone()));
    }

    fn set_malformed(&mut self, key: &ServiceKey, n: usize) {
        let old = if n == 0 {
            self.malformed.remove(key).unwrap_or(0)
        } else {
            self.malformed.insert(key.clone(), n).unwrap_or(0)
        };
        self.malformed_total = self.malformed_total + n - old;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Protocol;

    fn lb(ns: &str, name: &str, ips: &str) -> SvcInfo {
        SvcInfo {
            namespace: ns.into(),
            name: name.into(),
            load_balancer: true,
            lb_ips_annotation: Some(ips.into()),
            ports: vec![PortKey {
                port: 80,
                protocol: Protocol::Tcp,
            }],
            ..Default::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn apply_replaces_and_shared_address_stays_used_until_last_holder_leaves() {
        let mut idx = UsedIndex::new();
        idx.apply_service(&lb("a", "one", "10.0.0.1"));
        idx.apply_service(&lb("b", "two", "10.0.0.1,10.0.0.2"));
        assert_eq!(idx.holders(ip("10.0.0.1")).len(), 2);
        idx.apply_service(&lb("a", "one", "10.0.0.3"));
        assert_eq!(idx.holders(ip("10.0.0.1")).len(), 1);
        assert!(idx.addrs().contains(ip("10.0.0.3")));
        idx.remove_service(&ServiceKey::new("b", "two"));
        assert!(!idx.addrs().contains(ip("10.0.0.1")));
        assert!(!idx.addrs().contains(ip("10.0.0.2")));
        assert_eq!(idx.addrs().len(), 1);
    }

    #[test]
    fn type_change_frees_and_malformed_is_counted() {
        let mut idx = UsedIndex::new();
        let mut s = lb("a", "one", "10.0.0.1,nonsense");
        idx.apply_service(&s);
        assert_eq!(idx.malformed_count(), 1);
        s.load_balancer = false;
        idx.apply_service(&s);
        assert!(idx.addrs().is_empty());
        assert_eq!(idx.malformed_count(), 0);
        assert_eq!(idx.holder_count(), 0);
    }
}
