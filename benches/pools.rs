//! Pool objects (issue 13) at 100k Services: memory and time per allocation with 100 VIPPools
//! against one, and against the ConfigMap alone (today's path), measured in the same run.
//!
//! Each scenario runs in a fresh process (this binary re-executes itself with `--measure NAME`),
//! so that its resident memory is its own: RSS after building the allocator with its pools and
//! 100k held Services, minus RSS before. Time per allocation is one `Allocator::admit` (the
//! webhook's path), its reservation expired after, untimed; the best of three rounds of at most
//! 20k calls is kept.
//!
//! Scenarios (100k Services held in every one):
//! * `configmap`: `cidr-global` 10.0.0.0/8, no pool objects (today).
//! * `1 pool`: one VIPPool 10.0.0.0/8 (the baseline of the ratio).
//! * `100 pools, first`: 100 VIPPools with a serviceSelector each, by priority; the new Service
//!   matches the first tried.
//! * `100 pools, last`: the same; the new Service matches only the last one tried (99 selectors
//!   refuse it first).
//! * `100 pools, 99 full`: 100 VIPPools without selectors, the first 99 full: the new Service is
//!   refused by 99 exhausted pools before the last one gives it an address.
//!
//! `cargo bench --bench pools` prints the table; without `--bench` (as `cargo test --benches` runs
//! it) a small smoke run checks every scenario allocates, without timing claims.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use kube_vip_webhook::config::Config;
use kube_vip_webhook::engine::{Options, Outcome};
use kube_vip_webhook::ipam::is_filtered;
use kube_vip_webhook::pools::{PoolSet, VIPPool, VIPPoolSpec};
use kube_vip_webhook::service::{PortKey, Protocol, SvcInfo};
use kube_vip_webhook::state::{Allocator, Confirm, Request};
use serde_json::json;

const TTL: Duration = Duration::from_secs(30);
const SCENARIOS: [&str; 5] = [
    "configmap",
    "1 pool",
    "100 pools, first",
    "100 pools, last",
    "100 pools, 99 full",
];
/// The ratio's baseline.
const BASELINE: &str = "1 pool";

fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn pool(name: &str, spec: serde_json::Value) -> VIPPool {
    let spec: VIPPoolSpec = serde_json::from_value(spec).expect("spec");
    VIPPool::new(name, spec)
}

fn holder(i: usize, ip: IpAddr, tier: Option<String>) -> SvcInfo {
    SvcInfo {
        namespace: format!("ns{}", i % 100),
        name: format!("svc-{i}"),
        load_balancer: true,
        lb_ips_annotation: Some(ip.to_string()),
        ports: vec![PortKey {
            port: 80,
            protocol: Protocol::Tcp,
        }],
        labels: tier
            .map(|t| BTreeMap::from([("tier".into(), t)]))
            .unwrap_or_default(),
        ..SvcInfo::default()
    }
}

/// The first `n` allocatable addresses from `start`.
fn addresses(start: Ipv4Addr, n: usize) -> impl Iterator<Item = IpAddr> {
    (u32::from(start)..)
        .map(|v| IpAddr::V4(Ipv4Addr::from(v)))
        .filter(|ip| !is_filtered(*ip))
        .take(n)
}

/// /23 blocks: 508 allocatable addresses each (512 less two .0 and two .255).
const BLOCK: usize = 508;

fn block(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, (k / 128) as u8, ((k % 128) * 2) as u8, 0)
}

/// Services go straight into the allocator, one at a time as the watch feeds them: no list of
/// them is ever built, so the memory measured is the allocator's (input labels are not kept).
struct Feed<'a> {
    allocator: &'a Allocator,
    fed: usize,
}

impl Feed<'_> {
    fn extend(&mut self, services: impl Iterator<Item = SvcInfo>) {
        for s in services {
            self.allocator.apply_service(&s);
            self.fed += 1;
        }
    }

    fn len(&self) -> usize {
        self.fed
    }
}

/// The allocator of scenario `name` holding `n` Services, and the Service to allocate for.
fn build(name: &str, n: usize) -> (Allocator, SvcInfo) {
    let a = Allocator::new(
        Options::default(),
        Confirm::ByCache { ttl: TTL },
        "kube-system/kubevip",
    );
    let mut cm = BTreeMap::new();
    let mut pools = Vec::new();
    let mut existing = Feed {
        allocator: &a,
        fed: 0,
    };
    let mut new_tier = None;
    match name {
        "configmap" | "1 pool" => {
            if name == "configmap" {
                cm.insert("cidr-global".to_string(), "10.0.0.0/8".to_string());
            } else {
                pools.push(pool("only", json!({"addresses": ["10.0.0.0/8"]})));
            }
            existing.extend(
                addresses(Ipv4Addr::new(10, 0, 0, 0), n)
                    .enumerate()
                    .map(|(i, ip)| holder(i, ip, None)),
            );
        }
        "100 pools, first" | "100 pools, last" => {
            // Pool k: a /16 of its own, priority 100-k (tried in k order), tier=t<k> only.
            for k in 0..100 {
                pools.push(pool(
                    &format!("p{k:03}"),
                    json!({"addresses": [format!("10.{k}.0.0/16")], "priority": 100 - k as i32,
                           "serviceSelector": {"matchLabels": {"tier": format!("t{k}")}}}),
                ));
                existing.extend(
                    addresses(Ipv4Addr::new(10, k as u8, 0, 0), n / 100)
                        .enumerate()
                        .map(|(i, ip)| holder(k * (n / 100) + i, ip, Some(format!("t{k}")))),
                );
            }
            new_tier = Some(if name.ends_with("first") { "t0" } else { "t99" }.to_string());
        }
        "100 pools, 99 full" => {
            // Pools 0..98: one /23 each, full; pool 99: the rest of the Services and free room.
            for k in 0..100 {
                let size = if k < 99 { 23 } else { 16 };
                let start = if k < 99 {
                    block(k)
                } else {
                    Ipv4Addr::new(10, 99, 0, 0)
                };
                pools.push(pool(
                    &format!("p{k:03}"),
                    json!({"addresses": [format!("{start}/{size}")], "priority": 100 - k as i32}),
                ));
            }
            let full = (BLOCK * 99).min(n);
            for k in 0..99 {
                let base = existing.len();
                existing.extend(
                    addresses(block(k), BLOCK.min(full - base))
                        .enumerate()
                        .map(|(i, ip)| holder(base + i, ip, None)),
                );
            }
            let base = existing.len();
            existing.extend(
                addresses(Ipv4Addr::new(10, 99, 0, 0), n - base)
                    .enumerate()
                    .map(|(i, ip)| holder(base + i, ip, None)),
            );
        }
        other => panic!("unknown scenario {other}"),
    }
    a.set_config(Some(Config::from_data(&cm)));
    a.set_pools(PoolSet::from_objects(&pools));
    assert_eq!(a.used_count(), n, "{name}");
    let svc = SvcInfo {
        namespace: "bench".into(),
        name: "new".into(),
        load_balancer: true,
        ports: vec![PortKey {
            port: 80,
            protocol: Protocol::Tcp,
        }],
        labels: new_tier
            .map(|t| BTreeMap::from([("tier".into(), t)]))
            .unwrap_or_default(),
        ..SvcInfo::default()
    };
    (a, svc)
}

/// Mean ns per admission over `calls` admissions (only the `admit` calls are timed).
fn ns_per_admit(a: &Allocator, svc: &SvcInfo, ids: &[String], calls: usize) -> f64 {
    let mut total = Duration::ZERO;
    for i in 0..calls {
        let now = Instant::now();
        let d = a.admit(
            Request {
                id: &ids[i % ids.len()],
                svc: black_box(svc),
                old: None,
                dry_run: false,
            },
            now,
        );
        total += now.elapsed();
        black_box(d);
        a.expire(now + TTL * 2);
    }
    total.as_nanos() as f64 / calls as f64
}

/// One scenario in this process: `RESULT <name>|<rss bytes>|<ns per admit>|<pool>`.
fn measure(name: &str, n: usize, calls: usize) {
    let before = rss();
    let (a, svc) = build(name, n);
    let grown = rss().saturating_sub(before);
    let check = a.admit(
        Request {
            id: "check",
            svc: &svc,
            old: None,
            dry_run: false,
        },
        Instant::now(),
    );
    let pool = match &check.outcome {
        Outcome::Allocated { pool, .. } => pool.clone(),
        other => panic!("{name}: not allocated: {other:?}"),
    };
    a.expire(Instant::now() + TTL * 2);
    let ids: Vec<String> = (0..4096).map(|i| format!("bench-{i:06}")).collect();
    let best = (0..3)
        .map(|_| ns_per_admit(&a, &svc, &ids, calls))
        .fold(f64::MAX, f64::min);
    println!("RESULT {name}|{grown}|{best}|{pool}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--measure") {
        let n = args[2].parse().expect("count");
        let calls = args[3].parse().expect("calls");
        return measure(&args[1], n, calls);
    }
    let bench = args.iter().any(|a| a == "--bench");
    let (n, calls) = if bench {
        (100_000, 20_000)
    } else {
        (20_000, 10)
    };
    let me = std::env::current_exe().expect("own path");
    let mut rows = Vec::new();
    for name in SCENARIOS {
        let out = Command::new(&me)
            .args(["--measure", name, &n.to_string(), &calls.to_string()])
            .output()
            .expect("run scenario");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .expect("a result line");
        let f: Vec<&str> = line.split('|').collect();
        rows.push((
            f[0].to_string(),
            f[1].parse::<f64>().unwrap(),
            f[2].parse::<f64>().unwrap(),
            f[3].to_string(),
        ));
    }
    if !bench {
        println!("pools bench smoke run: every scenario allocated ({n} Services)");
        return;
    }
    let base = rows.iter().find(|r| r.0 == BASELINE).expect("baseline");
    let (base_mem, base_ns) = (base.1, base.2);
    println!("\nPool objects at {n} Services (RSS of allocator + index + pools; one admit)");
    println!(
        "| scenario | memory (MiB) | x {BASELINE} | ns per allocation | x {BASELINE} | pool chosen |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    for (name, mem, ns, pool) in &rows {
        println!(
            "| {name} | {:.1} | {:.2} | {:.0} | {:.2} | {pool} |",
            mem / 1048576.0,
            mem / base_mem,
            ns,
            ns / base_ns
        );
    }
}
