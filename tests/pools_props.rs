//! Property: with random pool objects (IPv4 and IPv6 addresses mixed, exclusions, selectors,
//! priorities, drained ones) beside a dual-stack ConfigMap pool, and random Services (IPv4,
//! IPv6, RequireDualStack, PreferDualStack), every address handed out lies in the pool the
//! decision names, never in that pool's `spec.exclude`, never twice; the Service gets one
//! address of each family its policy asks for that the pool has free (all of them when
//! required); the pool selects the Service, is not drained, and no pool tried before it could
//! have served it.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use kube_vip_webhook::config::Config;
use kube_vip_webhook::engine::{Options, Outcome};
use kube_vip_webhook::pools::{PoolSet, VIPPool, VIPPoolSpec};
use kube_vip_webhook::service::SvcInfo;
use kube_vip_webhook::state::{Allocator, Confirm, Request};
use proptest::prelude::*;
use serde_json::json;

/// The ConfigMap's pool, tried after every pool object.
const CONFIGMAP: [&str; 2] = ["10.0.1.1-10.0.1.4", "fd00:1::1-fd00:1::4"];

/// Addresses live in 10.0.0.0/26 and fd00::/122 so pools overlap and fill up.
fn addr(v6: bool, n: u8) -> IpAddr {
    let n = n % 64;
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n.into()))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }
}

fn entry() -> impl Strategy<Value = String> {
    (any::<bool>()).prop_flat_map(|v6| {
        // A v4 /29../31 holds as many addresses as a v6 /125../127.
        let shift = if v6 { 96 } else { 0 };
        prop_oneof![
            (0u8..64).prop_map(move |a| addr(v6, a).to_string()),
            (0u8..64, 0u8..8).prop_map(move |(a, len)| format!(
                "{}-{}",
                addr(v6, a),
                addr(v6, a.saturating_add(len).min(63))
            )),
            (0u8..8, 29u8..=31).prop_map(move |(block, prefix)| format!(
                "{}/{}",
                addr(v6, block * 8),
                prefix + shift
            )),
        ]
    })
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

/// What a Service asks for: its families (primary first) and whether all are required.
#[derive(Clone, Copy, Debug)]
enum Policy {
    V4,
    V6,
    Require { v6_first: bool },
    Prefer { v6_first: bool },
}

impl Policy {
    /// (families as "is IPv6", primary first; whether every one is required).
    fn wants(self) -> (Vec<bool>, bool) {
        match self {
            Policy::V4 => (vec![false], true),
            Policy::V6 => (vec![true], true),
            Policy::Require { v6_first } => (vec![v6_first, !v6_first], true),
            Policy::Prefer { v6_first } => (vec![v6_first, !v6_first], false),
        }
    }
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::V4),
        Just(Policy::V6),
        any::<bool>().prop_map(|v6_first| Policy::Require { v6_first }),
        any::<bool>().prop_map(|v6_first| Policy::Prefer { v6_first }),
    ]
}

fn svc(name: &str, tier: Option<&str>, policy: Policy) -> SvcInfo {
    let mut labels = serde_json::Map::new();
    if let Some(t) = tier {
        labels.insert("tier".into(), json!(t));
    }
    let families = |v6_first: bool| {
        if v6_first {
            json!(["IPv6", "IPv4"])
        } else {
            json!(["IPv4", "IPv6"])
        }
    };
    let (policy, families) = match policy {
        Policy::V4 => (json!(null), json!(null)),
        Policy::V6 => (json!(null), json!(["IPv6"])),
        Policy::Require { v6_first } => (json!("RequireDualStack"), families(v6_first)),
        Policy::Prefer { v6_first } => (json!("PreferDualStack"), families(v6_first)),
    };
    SvcInfo::from_service(
        &serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": name, "labels": labels},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}],
                     "ipFamilyPolicy": policy, "ipFamilies": families}
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
            // IpAddr orders every IPv4 address before every IPv6 one: a range holds one family.
            a <= ip && ip <= b
        } else {
            e.parse::<IpAddr>().ok() == Some(ip)
        }
    })
}

/// A pool as the model sees it: its entries and exclusions, and whether it may serve the
/// Service at hand (selects it, not drained).
struct Model<'a> {
    addresses: &'a [String],
    exclude: &'a [String],
    open: bool,
}

impl Model<'_> {
    /// Whether the pool still has an address of the family it may hand out (model: every
    /// address listed, minus exclusions, IPv4 `.0`, and what is held).
    fn has_free(&self, v6: bool, held: &HashSet<IpAddr>) -> bool {
        let space = (0u8..64).map(|n| addr(v6, n));
        space.chain(configmap_space(v6)).any(|ip| {
            !ip.to_string().ends_with(".0")
                && in_entries(ip, self.addresses)
                && !in_entries(ip, self.exclude)
                && !held.contains(&ip)
        })
    }

    /// The families (of `wants`, in order) it has free; `None` when it cannot serve the Service.
    fn serves(&self, wants: &[bool], required: bool, held: &HashSet<IpAddr>) -> Option<Vec<bool>> {
        if !self.open {
            return None;
        }
        let free: Vec<bool> = wants
            .iter()
            .copied()
            .filter(|f| self.has_free(*f, held))
            .collect();
        let ok = if required {
            free.len() == wants.len()
        } else {
            !free.is_empty()
        };
        ok.then_some(free)
    }
}

/// The ConfigMap's addresses of a family (outside the generated space).
fn configmap_space(v6: bool) -> impl Iterator<Item = IpAddr> {
    (1u8..=4).map(move |n| {
        if v6 {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, n.into()))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 0, 1, n))
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn addresses_come_from_the_chosen_pool_and_never_from_an_exclusion(
        cases in prop::collection::vec(pool_case(), 1..5),
        services in prop::collection::vec(
            (prop::option::of(prop::sample::select(vec!["a", "b"])), policy()), 1..40),
    ) {
        let a = Allocator::new(Options::default(), Confirm::OnAdmit, "kube-system/kubevip");
        let cm = BTreeMap::from([("range-global".to_string(), CONFIGMAP.join(","))]);
        a.set_config(Some(Config::from_data(&cm)));
        let objects: Vec<VIPPool> = cases.iter().enumerate().map(|(i, c)| object(i, c)).collect();
        a.set_pools(PoolSet::from_objects(&objects));
        // Tried order: priority descending, then name; the ConfigMap (index cases.len()) last.
        let mut order: Vec<usize> = (0..cases.len()).collect();
        order.sort_by(|&x, &y| cases[y].priority.cmp(&cases[x].priority).then(format!("p{x}").cmp(&format!("p{y}"))));
        order.push(cases.len());
        let configmap: Vec<String> = CONFIGMAP.iter().map(|s| s.to_string()).collect();
        let mut held: HashSet<IpAddr> = HashSet::new();
        for (n, (tier, policy)) in services.iter().enumerate() {
            let s = svc(&format!("s{n}"), *tier, *policy);
            let d = a.admit(Request { id: &format!("uid-{n}"), svc: &s, old: None, dry_run: false }, Instant::now());
            let model = |i: usize| match cases.get(i) {
                Some(c) => Model {
                    addresses: &c.addresses,
                    exclude: &c.exclude,
                    open: !c.disabled && (c.tier.is_none() || c.tier == *tier),
                },
                None => Model { addresses: &configmap, exclude: &[], open: true },
            };
            let (wants, required) = policy.wants();
            match &d.outcome {
                Outcome::Allocated { ips, pool, shared } => {
                    prop_assert!(!shared);
                    let i = if pool == "range-global" {
                        cases.len()
                    } else {
                        pool.strip_prefix("vippool/p").unwrap().parse().unwrap()
                    };
                    let m = model(i);
                    // One address per family the pool has free, in the Service's order.
                    let families: Vec<bool> = ips.iter().map(IpAddr::is_ipv6).collect();
                    prop_assert_eq!(Some(families), m.serves(&wants, required, &held),
                        "{:?} from {} for {:?}", ips, pool, policy);
                    for ip in ips {
                        prop_assert!(!held.contains(ip), "{} handed out twice", ip);
                        prop_assert!(in_entries(*ip, m.addresses), "{} outside {:?}", ip, m.addresses);
                        prop_assert!(!in_entries(*ip, m.exclude), "{} inside the exclusion {:?}", ip, m.exclude);
                        prop_assert!(!ip.to_string().ends_with(".0"));
                    }
                    // Every pool tried before could not serve this Service.
                    for &j in order.iter().take_while(|&&j| j != i) {
                        prop_assert!(model(j).serves(&wants, required, &held).is_none(),
                            "pool {} comes before {} and could serve {:?}", j, pool, policy);
                    }
                    held.extend(ips.iter().copied());
                }
                Outcome::NoAddress(_) => {
                    for &j in &order {
                        prop_assert!(model(j).serves(&wants, required, &held).is_none(),
                            "pool {} could serve {:?}", j, policy);
                    }
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
            let ips = d.outcome.ips();
            if !ips.is_empty() {
                let mut h = s.clone();
                h.lb_ips_annotation = Some(ips.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(","));
                a.apply_service(&h);
            }
        }
    }
}
