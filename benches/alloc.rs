//! Allocation cost against the number of used addresses.
//!
//! * `next_free`: the worst case for a walk-from-the-start search is a large pool whose first
//!   million allocatable addresses are all used; with coalesced runs it should cost about the same
//!   as a /24 with 100 used.
//! * `admit`: one whole allocation through `Allocator::admit` (the webhook's path: expiry, decision,
//!   reservation) with 100k used addresses against 1k used (target: <= 1.5x), and the sharing path
//!   where every used address is held on the port the new Service asks for.
//!
//! After criterion's report, tables measured in the same run compare each scenario with its
//! baseline (printed only when run by `cargo bench`).

#[path = "alloc/admit.rs"]
mod admit;

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use criterion::Criterion;
use ipnet::IpNet;
use kube_vip_webhook::ipam::{AddressSet, Family, SearchOrder, UsedAddrs, is_filtered, next_free};

struct Scenario {
    name: &'static str,
    pool: AddressSet,
    used: UsedAddrs,
    order: SearchOrder,
}

fn ip_add(base: IpAddr, n: u128) -> IpAddr {
    match base {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + u32::try_from(n).unwrap()).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + n).into()),
    }
}

/// `cidr` with its first `n` allocatable addresses used (contiguously from the pool start).
fn scenario(name: &'static str, cidr: &str, n: usize, order: SearchOrder) -> Scenario {
    let net: IpNet = cidr.parse().unwrap();
    let family = Family::of(net.addr());
    let pool = AddressSet::from_cidrs(family, &[net], false);
    let mut used = UsedAddrs::new();
    let mut i = 0u128;
    while used.len() < n {
        let a = ip_add(net.network(), i);
        if !is_filtered(a) {
            used.insert(a);
        }
        i += 1;
    }
    // The search must find something past the used block.
    assert!(next_free(&pool, &used, order).is_some());
    Scenario {
        name,
        pool,
        used,
        order,
    }
}

fn scenarios() -> Vec<Scenario> {
    vec![
        scenario(
            "IPv4 /24, 100 used (baseline)",
            "10.0.0.0/24",
            100,
            SearchOrder::Ascending,
        ),
        scenario(
            "IPv4 /8, 1,000,000 used",
            "10.0.0.0/8",
            1_000_000,
            SearchOrder::Ascending,
        ),
        scenario(
            "IPv6 /64, 1,000,000 used",
            "fd00::/64",
            1_000_000,
            SearchOrder::Ascending,
        ),
    ]
}

fn bench(c: &mut Criterion, all: &[Scenario]) {
    let mut group = c.benchmark_group("next_free");
    for s in all {
        group.bench_function(s.name, |b| {
            b.iter(|| next_free(black_box(&s.pool), black_box(&s.used), black_box(s.order)))
        });
    }
    group.finish();
}

/// Mean ns per `next_free` call over a fixed number of calls.
fn time_per_op(s: &Scenario) -> f64 {
    const CALLS: u32 = 200_000;
    let start = Instant::now();
    for _ in 0..CALLS {
        black_box(next_free(
            black_box(&s.pool),
            black_box(&s.used),
            black_box(s.order),
        ));
    }
    start.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

fn print_table(all: &[Scenario]) {
    let times: Vec<f64> = all.iter().map(time_per_op).collect();
    let base = times[0];
    println!();
    println!("{:<30} {:>10} {:>8}", "scenario", "ns/op", "ratio");
    for (s, t) in all.iter().zip(&times) {
        println!("{:<30} {:>10.1} {:>8.2}", s.name, t, t / base);
    }
}

fn main() {
    let all = scenarios();
    let admits = admit::scenarios();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &all);
    admit::bench(&mut c, &admits);
    c.final_summary();
    // `cargo test --all-targets` runs this binary without `--bench` (criterion's test mode):
    // skip the timing tables there.
    if std::env::args().any(|a| a == "--bench") {
        print_table(&all);
        admit::print_table(&admits);
    }
}
