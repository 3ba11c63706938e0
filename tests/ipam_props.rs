//! Property tests of `ipam`: `next_free`, `count_in` and `iter_in` against a brute-force model
//! that walks every address of small pools (IPv4 pools crossing `.255`/`.0` boundaries and the
//! edges of the space, IPv6 pools including the top of the space).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use kube_vip_webhook::ipam::{AddressSet, Family, SearchOrder, UsedAddrs, is_filtered, next_free};
use proptest::prelude::*;

/// Addresses of the test window: `base + offset`, offset < WINDOW.
const WINDOW: u128 = 1100;

fn addr(family: Family, v: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap())),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

fn value(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn max_of(family: Family) -> u128 {
    match family {
        Family::V4 => u128::from(u32::MAX),
        Family::V6 => u128::MAX,
    }
}

/// A window of the address space: its family and first address.
fn window() -> impl Strategy<Value = (Family, u128)> {
    prop_oneof![
        Just((Family::V4, 0)),
        // 10.0.0.0 + some blocks: crosses several .255/.0 boundaries.
        (0u128..4).prop_map(|b| (Family::V4, 0x0a00_0000 + b * 256 + 200)),
        Just((Family::V4, u128::from(u32::MAX) + 1 - WINDOW)),
        Just((Family::V6, 0)),
        Just((Family::V6, 0xfd00_u128 << 112)),
        Just((Family::V6, u128::MAX - WINDOW + 1)),
    ]
}

#[derive(Clone, Debug)]
enum PoolSpec {
    Ranges(Vec<(u128, u128)>),
    Cidrs(Vec<(u128, u8)>, bool),
}

fn pool_spec(family: Family) -> impl Strategy<Value = PoolSpec> {
    let bits: u8 = if family == Family::V4 { 32 } else { 128 };
    prop_oneof![
        prop::collection::vec((0..WINDOW, 0u128..400), 1..4).prop_map(PoolSpec::Ranges),
        (
            prop::collection::vec((0..WINDOW, (bits - 10)..=bits), 1..4),
            any::<bool>()
        )
            .prop_map(|(v, skip)| PoolSpec::Cidrs(v, skip)),
    ]
}

/// Builds the pool and its brute-force list of allocatable addresses (ascending).
fn build(family: Family, base: u128, spec: &PoolSpec) -> (AddressSet, Vec<u128>) {
    let top = max_of(family);
    match spec {
        PoolSpec::Ranges(rs) => {
            let ranges: Vec<(IpAddr, IpAddr)> = rs
                .iter()
                .map(|&(off, len)| {
                    let s = base + off;
                    let e = s.saturating_add(len).min(top).min(base + (WINDOW - 1));
                    (addr(family, s), addr(family, e))
                })
                .collect();
            let pool = AddressSet::from_ranges(family, &ranges);
            let mut all = BTreeSet::new();
            for (s, e) in &ranges {
                for v in value(*s)..=value(*e) {
                    all.insert(v);
                }
            }
            let alloc = all
                .into_iter()
                .filter(|&v| !is_filtered(addr(family, v)))
                .collect();
            (pool, alloc)
        }
        PoolSpec::Cidrs(cs, skip) => {
            let nets: Vec<IpNet> = cs
                .iter()
                .map(|&(off, len)| IpNet::new(addr(family, base + off), len).unwrap())
                .collect();
            let pool = AddressSet::from_cidrs(family, &nets, *skip);
            // Reference: addresses of the merged union; with skip-end, drop the ends of every
            // minimal prefix shorter than /31 (computed independently by testing alignment).
            let mut all = BTreeSet::new();
            for n in &nets {
                let n = n.trunc();
                for v in value(n.network())..=value(n.broadcast()) {
                    all.insert(v);
                }
            }
            let mut keep: BTreeSet<u128> = all.clone();
            if *skip && family == Family::V4 {
                for (s, e) in runs_of(&all) {
                    for (ps, pe) in greedy_prefixes(s, e) {
                        if pe - ps + 1 >= 4 {
                            keep.remove(&ps);
                            keep.remove(&pe);
                        }
                    }
                }
            }
            let alloc = keep
                .into_iter()
                .filter(|&v| !is_filtered(addr(family, v)))
                .collect();
            (pool, alloc)
        }
    }
}

/// Maximal runs of consecutive values.
fn runs_of(set: &BTreeSet<u128>) -> Vec<(u128, u128)> {
    let mut out: Vec<(u128, u128)> = Vec::new();
    for &v in set {
        match out.last_mut() {
            Some(last) if last.1 + 1 == v => last.1 = v,
            _ => out.push((v, v)),
        }
    }
    out
}

/// Minimal prefix cover of [s, e] by trying the largest aligned power-of-two block at each step.
fn greedy_prefixes(s: u128, e: u128) -> Vec<(u128, u128)> {
    let mut out = Vec::new();
    let mut c = s;
    while c <= e {
        let mut size: u128 = 1;
        while c.is_multiple_of(size * 2) && c + size * 2 - 1 <= e {
            size *= 2;
        }
        out.push((c, c + size - 1));
        c += size;
    }
    out
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u128),
    Remove(u128),
    Alloc(bool),
    /// An address of the other family with the same low bits: must not interfere.
    InsertOther(u128),
}

/// An offset in the window, half of the time next to a `.255`/`.0` boundary (where runs are
/// coalesced and split), so that those cases are hit often.
fn offset(base: u128) -> impl Strategy<Value = u128> {
    let shift = 256 - base % 256;
    prop_oneof![
        0..WINDOW,
        (0u128..4, 0u128..6).prop_map(move |(k, d)| (k * 256 + 253 + d + shift) % WINDOW),
    ]
}

fn ops(base: u128) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => offset(base).prop_map(Op::Insert),
            2 => offset(base).prop_map(Op::Remove),
            3 => any::<bool>().prop_map(Op::Alloc),
            1 => offset(base).prop_map(Op::InsertOther),
        ],
        0..120,
    )
}

/// Checks the public view of the runs: ends used, contents used or filtered, disjoint, and
/// never two runs separated only by filtered addresses.
fn check_runs(used: &UsedAddrs, family: Family) -> Result<(), TestCaseError> {
    let mut prev: Option<u128> = None;
    for (a, b) in used.runs(family) {
        let (s, e) = (value(a), value(b));
        prop_assert!(s <= e);
        prop_assert!(used.contains(a) && used.contains(b));
        prop_assert!(e - s < 100_000, "run too long for this test");
        for v in s..=e {
            let ip = addr(family, v);
            prop_assert!(used.contains(ip) || is_filtered(ip), "{ip} in a run");
        }
        if let Some(p) = prev {
            prop_assert!(p < s);
            let gap_has_free = (p + 1..s).any(|v| !is_filtered(addr(family, v)));
            prop_assert!(
                gap_has_free,
                "runs ending {p} and starting {s} not coalesced"
            );
        }
        prev = Some(e);
    }
    Ok(())
}

fn check_all(
    family: Family,
    pool: &AddressSet,
    alloc: &[u128],
    used: &UsedAddrs,
    model: &BTreeSet<u128>,
) -> Result<(), TestCaseError> {
    let free: Vec<u128> = alloc
        .iter()
        .copied()
        .filter(|v| !model.contains(v))
        .collect();
    let asc = next_free(pool, used, SearchOrder::Ascending);
    let desc = next_free(pool, used, SearchOrder::Descending);
    prop_assert_eq!(asc, free.first().map(|&v| addr(family, v)));
    prop_assert_eq!(desc, free.last().map(|&v| addr(family, v)));
    for got in [asc, desc].into_iter().flatten() {
        prop_assert!(pool.is_allocatable(got));
        prop_assert!(pool.contains(got));
        prop_assert!(!is_filtered(got));
        prop_assert!(!used.contains(got));
    }
    let used_in: Vec<IpAddr> = alloc
        .iter()
        .copied()
        .filter(|v| model.contains(v))
        .map(|v| addr(family, v))
        .collect();
    prop_assert_eq!(used.count_in(pool), used_in.len() as u128);
    let it_asc: Vec<IpAddr> = used.iter_in(pool, SearchOrder::Ascending).collect();
    prop_assert_eq!(&it_asc, &used_in);
    let mut it_desc: Vec<IpAddr> = used.iter_in(pool, SearchOrder::Descending).collect();
    it_desc.reverse();
    prop_assert_eq!(&it_desc, &used_in);
    check_runs(used, family)
}

fn other(family: Family) -> Family {
    match family {
        Family::V4 => Family::V6,
        Family::V6 => Family::V4,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    /// Pool arithmetic: membership, allocatability and capacity agree with the walk.
    #[test]
    fn pool_matches_reference(
        (family, base, spec) in window().prop_flat_map(|(f, b)| (Just(f), Just(b), pool_spec(f)))
    ) {
        let (pool, alloc) = build(family, base, &spec);
        prop_assert_eq!(pool.family(), family);
        prop_assert_eq!(pool.capacity(), alloc.len() as u128);
        let allocset: BTreeSet<u128> = alloc.iter().copied().collect();
        for off in 0..WINDOW {
            let v = base + off;
            let ip = addr(family, v);
            prop_assert_eq!(pool.is_allocatable(ip), allocset.contains(&v), "{}", ip);
        }
        // Intervals sorted, disjoint, non-adjacent.
        let ivs: Vec<(u128, u128)> = pool.intervals().map(|(a, b)| (value(a), value(b))).collect();
        for w in ivs.windows(2) {
            prop_assert!(w[0].1 + 1 < w[1].0);
        }
        for &(s, e) in &ivs {
            prop_assert!(s <= e);
            prop_assert!(pool.contains(addr(family, s)) && pool.contains(addr(family, e)));
        }
    }

    /// Random insert/remove/allocate sequences: `next_free` (both orders), `count_in`, `iter_in`
    /// and the run invariants agree with the model after every step.
    #[test]
    fn operations_match_model(
        (family, base, spec, ops) in window()
            .prop_flat_map(|(f, b)| (Just(f), Just(b), pool_spec(f), ops(b))),
    ) {
        let (pool, alloc) = build(family, base, &spec);
        let mut used = UsedAddrs::new();
        let mut model: BTreeSet<u128> = BTreeSet::new();
        let mut others = 0usize;
        for op in ops {
            match op {
                Op::Insert(off) => {
                    let v = base + off;
                    prop_assert_eq!(used.insert(addr(family, v)), model.insert(v));
                }
                Op::Remove(off) => {
                    let v = base + off;
                    prop_assert_eq!(used.remove(addr(family, v)), model.remove(&v));
                }
                Op::Alloc(desc) => {
                    let order = if desc { SearchOrder::Descending } else { SearchOrder::Ascending };
                    if let Some(ip) = next_free(&pool, &used, order) {
                        prop_assert!(used.insert(ip));
                        prop_assert!(model.insert(value(ip)));
                    }
                }
                Op::InsertOther(off) => {
                    let o = other(family);
                    let v = (base + off) & u128::from(u32::MAX);
                    if used.insert(addr(o, v)) {
                        others += 1;
                    }
                }
            }
            prop_assert_eq!(used.len(), model.len() + others);
            prop_assert_eq!(used.is_empty(), model.is_empty() && others == 0);
            check_all(family, &pool, &alloc, &used, &model)?;
        }
        for off in 0..WINDOW {
            let v = base + off;
            prop_assert_eq!(used.contains(addr(family, v)), model.contains(&v));
        }
    }

    /// Allocating until exhaustion (any mix of orders) hands out every allocatable, not yet used
    /// address of the pool exactly once; removing one afterwards makes exactly it free again.
    #[test]
    fn exhaustion_hands_out_everything_once(
        (family, base, spec) in window().prop_flat_map(|(f, b)| (Just(f), Just(b), pool_spec(f))),
        pre in prop::collection::vec(0..WINDOW, 0..200),
        orders in prop::collection::vec(any::<bool>(), 1..8),
        pick in any::<prop::sample::Index>(),
    ) {
        let (pool, alloc) = build(family, base, &spec);
        let mut used = UsedAddrs::new();
        let mut pre_used = BTreeSet::new();
        for off in pre {
            used.insert(addr(family, base + off));
            pre_used.insert(base + off);
        }
        let mut handed = Vec::new();
        let mut i = 0usize;
        loop {
            let order = if orders[i % orders.len()] { SearchOrder::Descending } else { SearchOrder::Ascending };
            i += 1;
            let Some(ip) = next_free(&pool, &used, order) else { break };
            prop_assert!(used.insert(ip), "{} handed out twice", ip);
            handed.push(value(ip));
            prop_assert!(handed.len() <= alloc.len());
        }
        let handed_set: BTreeSet<u128> = handed.iter().copied().collect();
        prop_assert_eq!(handed_set.len(), handed.len());
        let expected: BTreeSet<u128> = alloc.iter().copied().filter(|v| !pre_used.contains(v)).collect();
        prop_assert_eq!(&handed_set, &expected);
        prop_assert_eq!(used.count_in(&pool), pool.capacity());
        prop_assert_eq!(next_free(&pool, &used, SearchOrder::Descending), None);
        if !alloc.is_empty() {
            let v = alloc[pick.index(alloc.len())];
            prop_assert!(used.remove(addr(family, v)));
            prop_assert_eq!(next_free(&pool, &used, SearchOrder::Ascending), Some(addr(family, v)));
            prop_assert_eq!(next_free(&pool, &used, SearchOrder::Descending), Some(addr(family, v)));
        }
    }
}
