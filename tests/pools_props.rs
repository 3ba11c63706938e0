//! Property: with random pool objects (addresses, exclusions, selectors, priorities, drained
//! ones) beside a ConfigMap pool, and random Services, every address handed out lies in the
//! pool the decision names, never in that pool's `spec.exclude`, never twice, and the pool
//! selects the Service, is not drained, and no pool tried before it had a free address.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use kube_vip_webhook::config::Config;
use kube_vip_webhook::engine::{Options, Outcome};
use kube_vip_webhook::pools::{PoolSet, VIPPool, VIPPoolSpec};
use kube_vip_webhook::service::SvcInfo;
use kube_vip_webhook::state::{Allocator, Confirm, Request};
use proptest::prelude::*;
use serde_json::json;

/// Addresses live in 10.0.0.0/26 so pools overlap and fill up.
fn addr(n: u8) -> String {
    Ipv4Addr::new(10, 0, 0, n % 64).to_string()
}

fn entry() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..64).prop_map(addr),
        (0u8..64, 0u8..8).prop_map(|(a, len)| format!(
            "{}-{}",
            addr(a),
            addr(a.saturating_add(len).min(63))
        )),
        (0u8..8, 29u8..=31).prop_map(|(block, prefix)| format!("{}/{prefix}", addr(block * 8))),
    ]
}

#[derive(Clone, Debug)]
struct PoolCase {
    addresses: Vec<String>,
    exclude: Vec<String>,
    /// Selects Services with this `tier` label; `None`: every Service.
    tier: Option<&'static str>,
    priority: i32,
    disabled: bool,
}

fn pool_case() -> impl Strategy<Value = PoolCase> {
    (
        prop::collection::vec(entry(), 1..4),
        prop::collection::vec(entry(), 0..3),
        prop::option::of(prop::sample::select(vec!["a", "b"])),
        -2i32..3,
        prop::bool::weighted(0.2),
    )
        .prop_map(|(addresses, exclude, tier, priority, disabled)| PoolCase {
            addresses,
            exclude,
            tier,
            priority,
            disabled,
        })
}

fn object(i: usize, c: &PoolCase) -> VIPPool {
    let spec: VIPPoolSpec = serde_json::from_value(json!({
        "addresses": c.addresses,
        "exclude": c.exclude,
        "priority": c.priority,
        "disabled": c.disabled,
        "serviceSelector": c.tier.map(|t| json!({"matchLabels": {"tier": t}})),
    }))
    .unwrap();
    VIPPool::new(&format!("p{i}"), spec)
}

fn svc(name: &str, tier: Option<&str>) -> SvcInfo {
    let mut labels = serde_json::Map::new();
    if let Some(t) = tier {
        labels.insert("tier".into(), json!(t));
    }
    SvcInfo::from_service(
        &serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": name, "labels": labels},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
        }))
        .unwrap(),
    )
}

/// Whether `ip` is in one of `entries` (the same forms the pool takes).
fn in_entries(ip: IpAddr, entries: &[String]) -> bool {
    entries.iter().any(|e| {
        if let Ok(net) = e.parse::<ipnet::IpNet>() {
            net.contains(&ip)
        } else if let Some((a, b)) = e.split_once('-') {
            let (a, b): (IpAddr, IpAddr) = (a.parse().unwrap(), b.parse().unwrap());
            a <= ip && ip <= b
        } else {
            e.parse::<IpAddr>().ok() == Some(ip)
        }
    })
}

/// Whether a pool case still has an address it may hand out (model: every address listed,
/// minus exclusions, `.0`, and what is held).
fn has_free(c: &PoolCase, held: &HashSet<IpAddr>) -> bool {
    (1u8..64)
        .map(|n| IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)))
        .any(|ip| {
            in_entries(ip, &c.addresses) && !in_entries(ip, &c.exclude) && !held.contains(&ip)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn addresses_come_from_the_chosen_pool_and_never_from_an_exclusion(
        cases in prop::collection::vec(pool_case(), 1..5),
        services in prop::collection::vec(prop::option::of(prop::sample::select(vec!["a", "b"])), 1..40),
    ) {
        let a = Allocator::new(Options::default(), Confirm::OnAdmit, "kube-system/kubevip");
        let cm = BTreeMap::from([("range-global".to_string(), "10.0.1.1-10.0.1.4".to_string())]);
        a.set_config(Some(Config::from_data(&cm)));
        let objects: Vec<VIPPool> = cases.iter().enumerate().map(|(i, c)| object(i, c)).collect();
        a.set_pools(PoolSet::from_objects(&objects));
        // Tried order: priority descending, then name.
        let mut order: Vec<usize> = (0..cases.len()).collect();
        order.sort_by(|&x, &y| cases[y].priority.cmp(&cases[x].priority).then(format!("p{x}").cmp(&format!("p{y}"))));
        let mut held: HashSet<IpAddr> = HashSet::new();
        for (n, tier) in services.iter().enumerate() {
            let s = svc(&format!("s{n}"), *tier);
            let d = a.admit(Request { id: &format!("uid-{n}"), svc: &s, old: None, dry_run: false }, Instant::now());
            let selects = |c: &PoolCase| c.tier.is_none() || c.tier == *tier;
            match &d.outcome {
                Outcome::Allocated { ips, pool, shared } => {
                    prop_assert!(!shared);
                    prop_assert_eq!(ips.len(), 1);
                    let ip = ips[0];
                    prop_assert!(held.insert(ip), "{} handed out twice", ip);
                    if pool == "range-global" {
                        prop_assert!(in_entries(ip, &["10.0.1.1-10.0.1.4".to_string()]));
                        for &i in &order {
                            prop_assert!(!(selects(&cases[i]) && !cases[i].disabled && has_free(&cases[i], &held)),
                                "p{} had a free address, yet the ConfigMap was used", i);
                        }
                        continue;
                    }
                    let i: usize = pool.strip_prefix("vippool/p").unwrap().parse().unwrap();
                    let c = &cases[i];
                    prop_assert!(in_entries(ip, &c.addresses), "{} outside {:?}", ip, c.addresses);
                    prop_assert!(!in_entries(ip, &c.exclude), "{} inside the exclusion {:?}", ip, c.exclude);
                    prop_assert!(!c.disabled && selects(c));
                    prop_assert!(!ip.to_string().ends_with(".0"));
                    // Every pool tried before had nothing left for this Service.
                    let before = held.iter().copied().filter(|h| *h != ip).collect();
                    for &j in order.iter().take_while(|&&j| j != i) {
                        prop_assert!(!(selects(&cases[j]) && !cases[j].disabled && has_free(&cases[j], &before)),
                            "p{} comes before p{} and had a free address", j, i);
                    }
                }
                Outcome::NoAddress(_) => {
                    for c in &cases {
                        prop_assert!(!(selects(c) && !c.disabled && has_free(c, &held)));
                    }
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
            if let Some(ip) = d.outcome.ips().first() {
                let mut h = s.clone();
                h.lb_ips_annotation = Some(ip.to_string());
                a.apply_service(&h);
            }
        }
    }
}
