//! Property: over random sequences of allocations, requests and releases through the allocator,
//! no address is ever held by two Services whose (port, protocol) pairs clash, every allocated
//! address is an allocatable address of the Service's pool, and IPv4 .0/.255 never appear.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Instant;

use kube_vip_webhook::config::{Config, FamilyPool};
use kube_vip_webhook::engine::{Options, Outcome};
use kube_vip_webhook::ipam::{Family, is_filtered};
use kube_vip_webhook::service::{PortKey, Protocol, ServiceKey, SvcInfo, port_clash};
use kube_vip_webhook::state::{Allocator, Confirm, Request};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// New Service in namespace `ns` with these ports.
    Create { ns: usize, ports: Vec<(i32, bool)> },
    /// New Service asking for an address (index into the held ones, or a raw one).
    Pin {
        ns: usize,
        pick: usize,
        ports: Vec<(i32, bool)>,
    },
    /// Delete the n-th live Service.
    Delete(usize),
}

fn ports() -> impl Strategy<Value = Vec<(i32, bool)>> {
    prop::collection::vec(
        (prop::sample::select(vec![53, 80, 443]), any::<bool>()),
        1..3,
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, ports()).prop_map(|(ns, ports)| Op::Create { ns, ports }),
        1 => (0..3usize, any::<usize>(), ports()).prop_map(|(ns, pick, ports)| Op::Pin { ns, pick, ports }),
        2 => any::<usize>().prop_map(Op::Delete),
    ]
}

const NAMESPACES: [&str; 3] = ["a", "b", "c"];

fn svc(ns: &str, name: &str, ports: &[(i32, bool)], pin: Option<IpAddr>) -> SvcInfo {
    let mut ports: Vec<PortKey> = ports
        .iter()
        .map(|(port, udp)| PortKey {
            port: *port,
            protocol: if *udp { Protocol::Udp } else { Protocol::Tcp },
        })
        .collect();
    ports.sort();
    ports.dedup();
    SvcInfo {
        namespace: ns.into(),
        name: name.into(),
        load_balancer: true,
        lb_ips_annotation: pin.map(|ip| ip.to_string()),
        ports,
        ..SvcInfo::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_clashing_holders_and_addresses_stay_in_pool(
        ops in prop::collection::vec(op(), 1..60),
        share_a in any::<bool>(),
        desc in any::<bool>(),
        // A global range crossing a .255/.0 boundary, a namespace CIDR overlapping it, IPv6.
        start in 250u8..255,
    ) {
        let mut data = BTreeMap::new();
        data.insert("range-global".to_string(), format!("10.0.0.{start}-10.0.1.3"));
        data.insert("cidr-b".to_string(), "10.0.0.252/30,fd00::/126".to_string());
        data.insert("allow-share-a".to_string(), share_a.to_string());
        data.insert("allow-share-b".to_string(), "true".to_string());
        if desc {
            data.insert("search-order".to_string(), "desc".to_string());
        }
        let config = Config::from_data(&data);
        let alloc = Allocator::new(Options::default(), Confirm::OnAdmit, "cm");
        alloc.set_config(Some(config.clone()));

        let mut live: Vec<SvcInfo> = Vec::new();
        let mut held: HashMap<ServiceKey, Vec<IpAddr>> = HashMap::new();
        for (i, op) in ops.into_iter().enumerate() {
            let name = format!("s{i}");
            let (s, pinned) = match op {
                Op::Delete(n) if !live.is_empty() => {
                    let gone = live.remove(n % live.len());
                    alloc.delete_service(&gone.key());
                    held.remove(&gone.key());
                    continue;
                }
                Op::Delete(_) => continue,
                Op::Create { ns, ports } => (svc(NAMESPACES[ns], &name, &ports, None), false),
                Op::Pin { ns, pick, ports } => {
                    let all: Vec<IpAddr> = held.values().flatten().copied().collect();
                    let ip = if all.is_empty() { "10.0.1.1".parse().unwrap() } else { all[pick % all.len()] };
                    (svc(NAMESPACES[ns], &name, &ports, Some(ip)), true)
                }
            };
            let d = alloc.admit(Request { id: &name, svc: &s, old: None, dry_run: false }, Instant::now());
            let ips = d.outcome.ips().to_vec();
            match &d.outcome {
                Outcome::Allocated { .. } => {
                    let pool = config.pool_for(&s.namespace).unwrap();
                    for ip in &ips {
                        prop_assert!(!is_filtered(*ip), "{ip} handed out");
                        match pool.family(Family::of(*ip)) {
                            Some(FamilyPool::Set(set)) => prop_assert!(set.is_allocatable(*ip), "{ip} outside {set}"),
                            other => prop_assert!(false, "allocated {ip} from {other:?}"),
                        }
                    }
                }
                Outcome::Requested { .. } => prop_assert!(pinned),
                Outcome::Denied(_) => { prop_assert!(pinned); continue; }
                _ => {}
            }
            if !ips.is_empty() {
                let mut kept = s.clone();
                kept.lb_ips_annotation = Some(ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
                held.insert(kept.key(), ips);
                live.push(kept);
            }
            // Invariant over everything held so far.
            let mut by_ip: HashMap<IpAddr, Vec<&SvcInfo>> = HashMap::new();
            for l in &live {
                for ip in &held[&l.key()] {
                    by_ip.entry(*ip).or_default().push(l);
                }
            }
            for (ip, holders) in by_ip {
                for (x, a) in holders.iter().enumerate() {
                    for b in &holders[x + 1..] {
                        prop_assert!(
                            port_clash(&a.ports, &b.ports).is_none(),
                            "{ip} held by {} and {} with a clash", a.display_name(), b.display_name()
                        );
                    }
                }
            }
        }
    }
}
