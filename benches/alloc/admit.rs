//! One allocation through `Allocator::admit`, the path the webhook takes: reservation expiry, the
//! decision, and the reservation of the chosen address, with n addresses already used.
//!
//! Each measured call is a new request (its own id) for a Service on port 80/TCP; its reservation
//! is expired right after, untimed, so every call sees exactly the prepared state.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::Criterion;
use kube_vip_webhook::config::Config;
use kube_vip_webhook::engine::{Options, Outcome};
use kube_vip_webhook::ipam::{Family, from_u128, is_filtered, to_u128};
use kube_vip_webhook::service::{PortKey, Protocol, SvcInfo};
use kube_vip_webhook::state::{Allocator, Confirm, Request};

const TTL: Duration = Duration::from_secs(30);

pub struct Scenario {
    pub name: &'static str,
    /// Index into the scenario list of the baseline this one is compared with.
    baseline: usize,
    allocator: Allocator,
    svc: SvcInfo,
    /// Whether the answer must be a shared address (checked once, so the bench measures what it says).
    expect_shared: bool,
}

fn port(p: i32) -> PortKey {
    PortKey {
        port: p,
        protocol: Protocol::Tcp,
    }
}

/// Existing Service `i` holding `ip` on `ports`.
fn holder(i: usize, ip: IpAddr, ports: &[PortKey]) -> SvcInfo {
    SvcInfo {
        namespace: format!("ns{}", i % 100),
        name: format!("svc-{i}"),
        load_balancer: true,
        lb_ips_annotation: Some(ip.to_string()),
        ports: ports.to_vec(),
        ..SvcInfo::default()
    }
}

/// Simple deterministic generator (no rand dependency in benches).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Clone, Copy)]
enum Layout {
    /// The first n allocatable addresses of the pool (one run).
    Contiguous,
    /// n addresses spread over the pool, each followed by a gap (n runs).
    Scattered,
}

/// `n` used addresses inside `cidr` according to `layout`.
fn used_addresses(cidr: &str, n: usize, layout: Layout) -> Vec<IpAddr> {
    let net: ipnet::IpNet = cidr.parse().unwrap();
    let family = Family::of(net.addr());
    let base = to_u128(net.network());
    let mut out = Vec::with_capacity(n);
    match layout {
        Layout::Contiguous => {
            let mut v = base;
            while out.len() < n {
                let ip = from_u128(family, v);
                if !is_filtered(ip) {
                    out.push(ip);
                }
                v += 1;
            }
        }
        Layout::Scattered => {
            // Every other allocatable address, shuffled: n runs of one, the first gap early.
            let mut v = base;
            let mut take = false;
            while out.len() < n {
                let ip = from_u128(family, v);
                if !is_filtered(ip) {
                    if take {
                        out.push(ip);
                    }
                    take = !take;
                }
                v += 1;
            }
            let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
            for i in (1..out.len()).rev() {
                let j = (rng.next() % (i as u64 + 1)) as usize;
                out.swap(i, j);
            }
        }
    }
    out
}

fn scenario(
    name: &'static str,
    baseline: usize,
    data: &[(&str, &str)],
    cidr: &str,
    n: usize,
    layout: Layout,
    expect_shared: bool,
) -> Scenario {
    let data: BTreeMap<String, String> = data
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let allocator = Allocator::new(
        Options::default(),
        Confirm::ByCache { ttl: TTL },
        "kube-system/kubevip",
    );
    allocator.set_config(Some(Config::from_data(&data)));
    let existing: Vec<SvcInfo> = used_addresses(cidr, n, layout)
        .into_iter()
        .enumerate()
        .map(|(i, ip)| holder(i, ip, &[port(80)]))
        .collect();
    allocator.reset_services(&existing);
    assert_eq!(allocator.used_count(), n);
    let family = Family::of(cidr.parse::<ipnet::IpNet>().unwrap().addr());
    let svc = SvcInfo {
        namespace: "bench".into(),
        name: "new".into(),
        load_balancer: true,
        families: vec![family],
        ports: vec![port(80)],
        ..SvcInfo::default()
    };
    Scenario {
        name,
        baseline,
        allocator,
        svc,
        expect_shared,
    }
}

pub fn scenarios() -> Vec<Scenario> {
    let v4 = [("cidr-global", "10.0.0.0/8")];
    let v6 = [("cidr-global", "fd00::/64")];
    let share = [
        ("cidr-global", "10.0.0.0/8"),
        ("allow-share-global", "true"),
    ];
    use Layout::*;
    let all = vec![
        scenario(
            "admit /8, 1k used (baseline)",
            0,
            &v4,
            "10.0.0.0/8",
            1_000,
            Contiguous,
            false,
        ),
        scenario(
            "admit /8, 100k used",
            0,
            &v4,
            "10.0.0.0/8",
            100_000,
            Contiguous,
            false,
        ),
        scenario(
            "admit /8, 1k used scattered",
            2,
            &v4,
            "10.0.0.0/8",
            1_000,
            Scattered,
            false,
        ),
        scenario(
            "admit /8, 100k used scattered",
            2,
            &v4,
            "10.0.0.0/8",
            100_000,
            Scattered,
            false,
        ),
        scenario(
            "admit /64, 1k used",
            4,
            &v6,
            "fd00::/64",
            1_000,
            Contiguous,
            false,
        ),
        scenario(
            "admit /64, 100k used",
            4,
            &v6,
            "fd00::/64",
            100_000,
            Contiguous,
            false,
        ),
        // Every used address is held on 80/TCP, the new Service asks for 80/TCP: nothing is
        // shareable, and a scan over the holders is the worst case.
        scenario(
            "share, 1k holders on :80",
            6,
            &share,
            "10.0.0.0/8",
            1_000,
            Contiguous,
            false,
        ),
        scenario(
            "share, 100k holders on :80",
            6,
            &share,
            "10.0.0.0/8",
            100_000,
            Contiguous,
            false,
        ),
        scenario(
            "share, 100k holders on :80 scattered",
            6,
            &share,
            "10.0.0.0/8",
            100_000,
            Scattered,
            false,
        ),
    ];
    for s in &all {
        let d = admit_once(s, "check", Instant::now());
        match &d {
            Outcome::Allocated { shared, .. } => assert_eq!(*shared, s.expect_shared, "{}", s.name),
            other => panic!("{}: not allocated: {other:?}", s.name),
        }
    }
    all
}

/// One admission, timed; its reservation is then expired (untimed).
fn admit_once(s: &Scenario, id: &str, now: Instant) -> Outcome {
    let d = s.allocator.admit(
        Request {
            id,
            svc: &s.svc,
            old: None,
            dry_run: false,
        },
        now,
    );
    s.allocator.expire(now + TTL * 2);
    d.outcome
}

/// Total time of `iters` admissions (only the `admit` calls are timed).
fn timed(s: &Scenario, ids: &[String], iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for i in 0..iters {
        let id = &ids[(i % ids.len() as u64) as usize];
        let now = Instant::now();
        let d = s.allocator.admit(
            Request {
                id,
                svc: black_box(&s.svc),
                old: None,
                dry_run: false,
            },
            now,
        );
        total += now.elapsed();
        black_box(d);
        s.allocator.expire(now + TTL * 2);
    }
    total
}

fn ids() -> Vec<String> {
    (0..4096).map(|i| format!("bench-request-{i:08}")).collect()
}

pub fn bench(c: &mut Criterion, all: &[Scenario]) {
    let ids = ids();
    let mut group = c.benchmark_group("admit");
    for s in all {
        group.bench_function(s.name, |b| b.iter_custom(|iters| timed(s, &ids, iters)));
    }
    group.finish();
}

/// Mean ns per admission over at most `CALLS` calls or about `BUDGET` of wall time.
fn ns_per_op(s: &Scenario, ids: &[String]) -> f64 {
    const CALLS: u64 = 100_000;
    const BUDGET: Duration = Duration::from_millis(300);
    const CHUNK: u64 = 500;
    let started = Instant::now();
    let (mut calls, mut total) = (0u64, Duration::ZERO);
    while calls < CALLS && started.elapsed() < BUDGET {
        total += timed(s, ids, CHUNK);
        calls += CHUNK;
    }
    total.as_nanos() as f64 / calls as f64
}

pub fn print_table(all: &[Scenario]) {
    let ids = ids();
    // Interleave repetitions so that machine noise hits every scenario alike; keep the best.
    let mut best = vec![f64::MAX; all.len()];
    for _ in 0..3 {
        for (i, s) in all.iter().enumerate() {
            best[i] = best[i].min(ns_per_op(s, &ids));
        }
    }
    println!();
    println!(
        "{:<40} {:>10} {:>8} {:>8}",
        "Allocator::admit (one allocation)", "ns/op", "ratio", "target"
    );
    for (s, t) in all.iter().zip(&best) {
        let base = best[s.baseline];
        let (ratio, target) = if std::ptr::eq(s, &all[s.baseline]) {
            ("base".to_string(), "")
        } else {
            let r = t / base;
            (
                format!("{r:.2}"),
                if r <= 1.5 { "<=1.5 ok" } else { "<=1.5 MISSED" },
            )
        };
        println!("{:<40} {:>10.0} {:>8} {:>8}", s.name, t, ratio, target);
    }
}
