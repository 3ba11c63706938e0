//! The cluster-wide view of used addresses (SPEC 4.1): address -> holders.
//!
//! Holders are Services (from the cache, a Services file, or admitted in standalone mode),
//! reservations (admission answers not yet seen in the cache) and addresses the network already
//! uses (nodes, the API endpoint: `HolderId::Reserved`). Updated incrementally: applying a
//! Service replaces only that Service's entries, so nothing ever rescans all Services.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::ipam::{AddressSet, KeyedRuns, SearchOrder, UsedAddrs};
use crate::service::{PortKey, ServiceKey, SvcInfo, normalized_ports};

/// Holders with more (port, protocol) pairs than this are filed in the sharing index under
/// `AllPorts`, as if they had none: automatic sharing (`allow-share`) never picks their
/// addresses. Indexing each pair costs an entry per pair and address under the allocator lock
/// (a Service with `service::MAX_PORTS` pairs held it ~50 ms); real Services have a handful.
/// Requested addresses are still checked against their exact pairs.
pub const MAX_INDEXED_PORTS: usize = 128;

/// What a holder occupies on its addresses, for sharing: its (port, protocol) pairs, or every
/// port when it has none (without ports nothing can be proven not to clash).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClashKey {
    Port(PortKey),
    AllPorts,
}

impl Holder {
    /// A holder occupying `ports` (kept sorted and deduplicated: lookups are binary searches).
    pub fn new(id: HolderId, label: impl Into<Arc<str>>, ports: &[PortKey]) -> Holder {
        let ports = if ports.is_sorted() && ports.windows(2).all(|w| w[0] != w[1]) {
            ports.into()
        } else {
            normalized_ports(ports).into()
        };
        Holder {
            id,
            label: label.into(),
            ports,
        }
    }

    /// Its (port, protocol) pairs, sorted and without duplicates.
    pub fn ports(&self) -> &[PortKey] {
        &self.ports
    }

    /// True when the sharing index files this holder under `AllPorts` only (see
    /// [`MAX_INDEXED_PORTS`]).
    fn indexed_as_all_ports(&self) -> bool {
        self.ports.is_empty() || self.ports.len() > MAX_INDEXED_PORTS
    }

    /// The keys the sharing index files this holder under, in ascending order (`AllPorts`
    /// sorts after every port).
    fn clash_keys(&self) -> impl Iterator<Item = ClashKey> + '_ {
        let (ports, all): (&[PortKey], _) = if self.indexed_as_all_ports() {
            (&[], Some(ClashKey::AllPorts))
        } else {
            (&self.ports, None)
        };
        ports.iter().map(|p| ClashKey::Port(*p)).chain(all)
    }
}

/// Which of `keys` (sorted, distinct) at least one of `holders` carries. O((k + total holder
/// ports) log k): every holder's keys are looked up in `keys`, never `keys` in every holder.
fn carried(keys: &[ClashKey], holders: &[Holder]) -> Vec<bool> {
    let mut found = vec![false; keys.len()];
    for h in holders {
        for key in h.clash_keys() {
            if let Ok(i) = keys.binary_search(&key) {
                found[i] = true;
            }
        }
    }
    found
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HolderId {
    Service(ServiceKey),
    /// An admission answer or reconciler write not yet confirmed by the cache, by request id.
    Reservation(Arc<str>),
    /// An address the network already uses (a node's, the API endpoint's), by its owner's
    /// description (`node worker-1's InternalIP`, see `reserved`). Has no ports: it clashes
    /// with every port, so sharing never picks it.
    Reserved(Arc<str>),
}

#[derive(Clone, Debug)]
pub struct Holder {
    pub id: HolderId,
    /// How to name the holder in messages (`ns/name`, or `ns/prefix<generated>`).
    pub label: Arc<str>,
    /// Sorted, distinct (see [`Holder::new`]).
    ports: Arc<[PortKey]>,
}

/// The index's maps: keys are addresses and Service names, hashed on every admission.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
pub struct UsedIndex {
    by_addr: Map<IpAddr, Vec<Holder>>,
    by_holder: Map<HolderId, Vec<IpAddr>>,
    addrs: UsedAddrs,
    /// Used addresses by the (port, protocol) pairs their holders occupy, so that sharing jumps
    /// over clashing addresses instead of checking every holder.
    clash: KeyedRuns<ClashKey>,
    malformed: Map<ServiceKey, usize>,
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
        let keys: Vec<ClashKey> = holder.clash_keys().collect();
        for ip in ips {
            let newly_used = self.by_addr.get(ip).is_none_or(Vec::is_empty);
            if newly_used {
                self.addrs.insert(*ip);
                // Runs of keys this holder lacks that spanned the (free) address end here.
                for key in self.neighbour_keys(*ip) {
                    if keys.binary_search(&key).is_err() {
                        self.clash.split_at(&key, *ip, &self.addrs);
                    }
                }
            }
            // Most addresses have one holder: no spare capacity (at 100k Services it adds up).
            let list = self
                .by_addr
                .entry(*ip)
                .or_insert_with(|| Vec::with_capacity(1));
            let present = carried(&keys, list);
            list.push(holder.clone());
            for (key, present) in keys.iter().zip(present) {
                if !present {
                    self.clash.insert(key, *ip, &self.addrs);
                }
            }
        }
        self.by_holder.insert(holder.id, ips.to_vec());
    }

    pub fn remove_holder(&mut self, id: &HolderId) -> Vec<IpAddr> {
        let Some(ips) = self.by_holder.remove(id) else {
            return Vec::new();
        };
        for ip in &ips {
            let Some(list) = self.by_addr.get_mut(ip) else {
                continue;
            };
            let Some(at) = list.iter().position(|h| &h.id == id) else {
                continue;
            };
            let gone = list.remove(at);
            let emptied = list.is_empty();
            let keys: Vec<ClashKey> = gone.clash_keys().collect();
            let kept = carried(&keys, list);
            let lost: Vec<ClashKey> = keys
                .into_iter()
                .zip(kept)
                .filter_map(|(k, kept)| (!kept).then_some(k))
                .collect();
            if emptied {
                self.by_addr.remove(ip);
                self.addrs.remove(*ip);
            }
            for key in &lost {
                self.clash.remove(key, *ip, &self.addrs);
            }
            if emptied {
                // The address no longer separates runs of the keys its neighbours share.
                for key in self.neighbour_keys(*ip) {
                    self.clash.join_across(&key, *ip, &self.addrs);
                }
            }
        }
        ips
    }

    /// Keys of the used neighbour of `ip` with fewer holders (a run that spans `ip` contains
    /// both neighbours, so its key is in both). Empty when `ip` lacks a neighbour on either side.
    fn neighbour_keys(&self, ip: IpAddr) -> Vec<ClashKey> {
        let (Some(a), Some(b)) = self.addrs.neighbours(ip) else {
            return Vec::new();
        };
        let (ha, hb) = (self.holders(a), self.holders(b));
        let fewer = if ha.len() <= hb.len() { ha } else { hb };
        let mut keys: Vec<ClashKey> = fewer.iter().flat_map(Holder::clash_keys).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// The first used address of `pool` (search order) none of whose holders clashes with
    /// `ports` (sorted, distinct), ignoring no holder. O(log n) per run of a clashing key that
    /// is jumped over, plus, at each address landed on, a lookup of its holders' keys in `ports`
    /// (so a Service with many ports costs what the addresses it visits hold, never
    /// ports x addresses).
    pub fn first_shareable(
        &self,
        pool: &AddressSet,
        order: SearchOrder,
        ports: &[PortKey],
    ) -> Option<IpAddr> {
        if ports.is_empty() {
            return None; // a Service without ports clashes with every holder
        }
        let normalized;
        let ports = if ports.is_sorted() {
            ports
        } else {
            normalized = normalized_ports(ports);
            &normalized
        };
        // The keys `ip` carries that block `ports`: a holder without ports blocks everything.
        let blocking = |ip: IpAddr| -> Vec<ClashKey> {
            let mut out: Vec<ClashKey> = Vec::new();
            for h in self.holders(ip) {
                if h.indexed_as_all_ports() {
                    out.push(ClashKey::AllPorts);
                    continue;
                }
                let (short, long) = if h.ports.len() <= ports.len() {
                    (&h.ports[..], ports)
                } else {
                    (ports, &h.ports[..])
                };
                out.extend(
                    short
                        .iter()
                        .filter(|p| long.binary_search(p).is_ok())
                        .map(|p| ClashKey::Port(*p)),
                );
            }
            out.sort_unstable();
            out.dedup();
            out
        };
        self.clash.first_without(&self.addrs, pool, order, blocking)
    }

    /// Index a Service as it is now (add, update, or type change away from LoadBalancer).
    pub fn apply_service(&mut self, svc: &SvcInfo) {
        let key = svc.key();
        let held = svc.held();
        self.set_malformed(&key, held.malformed.len());
        let holder = Holder::new(HolderId::Service(key), svc.display_name(), &svc.ports);
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

    fn port(p: i32, protocol: Protocol) -> PortKey {
        PortKey { port: p, protocol }
    }

    /// The scan the index replaces: every used address of the pool in order, every holder checked.
    fn brute_shareable(
        idx: &UsedIndex,
        pool: &AddressSet,
        order: SearchOrder,
        ports: &[PortKey],
    ) -> Option<IpAddr> {
        idx.addrs().iter_in(pool, order).find(|ip| {
            idx.holders(*ip).iter().all(|h| {
                !h.indexed_as_all_ports() && crate::service::port_clash(ports, &h.ports).is_none()
            })
        })
    }

    fn check(idx: &UsedIndex) {
        idx.clash.check(&idx.addrs, |key, ip| {
            idx.holders(ip)
                .iter()
                .any(|h| h.clash_keys().any(|k| k == *key))
        });
    }

    #[test]
    fn sharing_jumps_a_run_of_clashing_holders_in_one_step() {
        let mut idx = UsedIndex::new();
        let web = [port(80, Protocol::Tcp)];
        // 10.0.0.1 .. 10.0.3.254 on 80/TCP (a .255/.0 gap inside), one free hole, then 443 only.
        let mut n = 0;
        for third in 0..4u8 {
            for last in 1..=254u8 {
                if (third, last) == (1, 7) {
                    continue; // free: does not separate the run
                }
                let ip = IpAddr::from([10, 0, third, last]);
                let mut s = lb("ns", &format!("s{n}"), &ip.to_string());
                s.ports = web.to_vec();
                idx.apply_service(&s);
                n += 1;
            }
        }
        let mut other = lb("ns", "tls", "10.0.4.9");
        other.ports = vec![port(443, Protocol::Tcp)];
        idx.apply_service(&other);
        let key = ClashKey::Port(web[0]);
        assert_eq!(idx.clash.run_count(&key, crate::ipam::Family::V4), 1);
        check(&idx);
        let pool = AddressSet::from_ranges(
            crate::ipam::Family::V4,
            &[(ip("10.0.0.0"), ip("10.0.255.255"))],
        );
        for order in [SearchOrder::Ascending, SearchOrder::Descending] {
            assert_eq!(
                idx.first_shareable(&pool, order, &web),
                Some(ip("10.0.4.9"))
            );
        }
        // 443 clashes with tls only: the first 80/TCP holder shares.
        let tls = [port(443, Protocol::Tcp)];
        assert_eq!(
            idx.first_shareable(&pool, SearchOrder::Ascending, &tls),
            Some(ip("10.0.0.1"))
        );
        // A used address without 80/TCP inside the run splits it; removing it joins it again.
        let mut dns = lb("ns", "dns", "10.0.1.7");
        dns.ports = vec![port(53, Protocol::Udp)];
        idx.apply_service(&dns);
        assert_eq!(idx.clash.run_count(&key, crate::ipam::Family::V4), 2);
        assert_eq!(
            idx.first_shareable(&pool, SearchOrder::Ascending, &web),
            Some(ip("10.0.1.7"))
        );
        check(&idx);
        idx.remove_service(&ServiceKey::new("ns", "dns"));
        assert_eq!(idx.clash.run_count(&key, crate::ipam::Family::V4), 1);
        check(&idx);
        // A holder without ports clashes with everything.
        let mut bare = lb("ns", "bare", "10.0.4.9");
        bare.ports.clear();
        idx.apply_service(&bare);
        assert_eq!(
            idx.first_shareable(&pool, SearchOrder::Ascending, &web),
            None
        );
        assert_eq!(
            idx.first_shareable(&pool, SearchOrder::Ascending, &[]),
            None
        );
    }

    #[test]
    fn a_reserved_holder_is_used_and_clashes_with_every_port() {
        let pool =
            AddressSet::from_ranges(crate::ipam::Family::V4, &[(ip("10.0.0.1"), ip("10.0.0.3"))]);
        let mut idx = UsedIndex::new();
        let node = Holder::new(
            HolderId::Reserved("node n's InternalIP".into()),
            "node n's InternalIP",
            &[],
        );
        idx.set_holder(node, &[ip("10.0.0.1")]);
        idx.apply_service(&lb("ns", "web", "10.0.0.2"));
        assert_eq!(
            crate::ipam::next_free(&pool, idx.addrs(), SearchOrder::Ascending),
            Some(ip("10.0.0.3"))
        );
        // Whatever the ports, only the Service's address can be shared.
        for ports in [
            vec![port(443, Protocol::Tcp)],
            vec![port(53, Protocol::Udp)],
        ] {
            assert_eq!(
                idx.first_shareable(&pool, SearchOrder::Ascending, &ports),
                Some(ip("10.0.0.2"))
            );
        }
        check(&idx);
        // Gone, the address is free again.
        idx.remove_holder(&HolderId::Reserved("node n's InternalIP".into()));
        assert_eq!(
            crate::ipam::next_free(&pool, idx.addrs(), SearchOrder::Ascending),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn holders_with_huge_port_lists_are_never_shared_automatically() {
        let pool = AddressSet::from_ranges(
            crate::ipam::Family::V4,
            &[(ip("10.0.0.0"), ip("10.0.0.255"))],
        );
        let udp =
            |n: usize| -> Vec<PortKey> { (1..=n as i32).map(|p| port(p, Protocol::Udp)).collect() };
        let mut idx = UsedIndex::new();
        let mut ordinary = lb("ns", "ordinary", "10.0.0.2");
        ordinary.ports = udp(MAX_INDEXED_PORTS);
        idx.apply_service(&ordinary);
        let mut huge = lb("ns", "huge", "10.0.0.1");
        huge.ports = udp(MAX_INDEXED_PORTS + 1);
        idx.apply_service(&huge);
        check(&idx);
        // No pair in common with either; only the ordinary holder's address is offered.
        let web = [port(80, Protocol::Tcp)];
        assert_eq!(
            idx.first_shareable(&pool, SearchOrder::Ascending, &web),
            Some(ip("10.0.0.2"))
        );
        // The huge holder costs the index one key, not one per pair.
        assert_eq!(idx.clash.key_count(), MAX_INDEXED_PORTS + 1);
        idx.remove_service(&ServiceKey::new("ns", "huge"));
        idx.remove_service(&ServiceKey::new("ns", "ordinary"));
        assert_eq!(idx.clash.key_count(), 0);
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            /// Service `svc` now holds these addresses (by index) on these ports (by index).
            Set(u8, Vec<u8>, Vec<u8>),
            Remove(u8),
        }

        /// Around an IPv4 `.255/.0` boundary (filtered addresses included) plus a little IPv6.
        const ADDRS: [&str; 12] = [
            "10.0.0.250",
            "10.0.0.251",
            "10.0.0.252",
            "10.0.0.253",
            "10.0.0.254",
            "10.0.0.255",
            "10.0.1.0",
            "10.0.1.1",
            "10.0.1.2",
            "10.0.1.3",
            "fd00::1",
            "fd00::3",
        ];
        const PORTS: [(i32, Protocol); 4] = [
            (80, Protocol::Tcp),
            (443, Protocol::Tcp),
            (80, Protocol::Udp),
            (53, Protocol::Udp),
        ];

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0u8..8, prop::collection::vec(0u8..12, 0..3), prop::collection::vec(0u8..4, 0..3))
                    .prop_map(|(s, a, p)| Op::Set(s, a, p)),
                1 => (0u8..8).prop_map(Op::Remove),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn first_shareable_matches_a_full_scan(ops in prop::collection::vec(op(), 1..40)) {
                let mut idx = UsedIndex::new();
                let pools = [
                    AddressSet::from_ranges(crate::ipam::Family::V4, &[(ip("10.0.0.250"), ip("10.0.1.3"))]),
                    AddressSet::from_ranges(crate::ipam::Family::V4, &[(ip("10.0.0.252"), ip("10.0.1.1"))]),
                    AddressSet::from_ranges(crate::ipam::Family::V6, &[(ip("fd00::"), ip("fd00::ff"))]),
                ];
                let queries: Vec<Vec<PortKey>> = vec![
                    vec![port(80, Protocol::Tcp)],
                    vec![port(443, Protocol::Tcp)],
                    vec![port(80, Protocol::Tcp), port(80, Protocol::Udp)],
                    vec![port(53, Protocol::Udp), port(443, Protocol::Tcp)],
                    vec![port(8080, Protocol::Tcp)],
                    // Many ports, unsorted: every key the holders can carry, and more.
                    vec![
                        port(9000, Protocol::Sctp),
                        port(53, Protocol::Udp),
                        port(443, Protocol::Tcp),
                        port(80, Protocol::Udp),
                        port(80, Protocol::Tcp),
                    ],
                ];
                for op in ops {
                    match op {
                        Op::Set(svc, addrs, ports) => {
                            let ips: Vec<IpAddr> = addrs.iter().map(|a| ip(ADDRS[*a as usize])).collect();
                            let list = ips.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(",");
                            let mut s = lb("ns", &format!("s{svc}"), &list);
                            s.ports = ports.iter().map(|p| { let (n, pr) = PORTS[*p as usize]; port(n, pr) }).collect();
                            idx.apply_service(&s);
                        }
                        Op::Remove(svc) => idx.remove_service(&ServiceKey::new("ns", format!("s{svc}"))),
                    }
                    check(&idx);
                    for pool in &pools {
                        for order in [SearchOrder::Ascending, SearchOrder::Descending] {
                            for q in &queries {
                                prop_assert_eq!(
                                    idx.first_shareable(pool, order, q),
                                    brute_shareable(&idx, pool, order, q),
                                    "pool {} order {:?} ports {:?}", pool, order, q
                                );
                            }
                        }
                    }
                }
                for svc in 0..8u8 {
                    idx.remove_service(&ServiceKey::new("ns", format!("s{svc}")));
                }
                prop_assert_eq!(idx.clash.key_count(), 0);
                prop_assert!(idx.addrs().is_empty());
            }
        }
    }
}
