//! Admission load: the real webhook server against a baseline server, in one run.
//!
//! Both servers are `server::serve_https` with the same rustls config builder and a generated
//! certificate on 127.0.0.1. The webhook serves the real `webhook::router` over an `Allocator` in
//! cluster mode (reservations, TTL) pre-loaded with N existing LoadBalancer Services; the baseline
//! reads the body and answers a fixed `allowed` AdmissionReview. Many keep-alive connections
//! (HTTP/1.1: one request at a time per connection; HTTP/2: several streams per connection) send
//! realistic CREATE AdmissionReviews of LoadBalancer Services with ports, each with its own name
//! and uid. Baseline and webhook are measured in alternating slices on warm connections, so that
//! machine noise hits both alike.
//!
//! Knobs for profiling: `BENCH_SERVER_THREADS=n` (server workers, default 2), `BENCH_ONLY=base|hook`
//! (load one server only).
//!
//! `cargo bench --bench admission` runs every scenario (`-- <text>` keeps scenarios whose name
//! contains the text). Without `--bench` (as `cargo test --benches` runs it) it only smoke-tests
//! one short scenario: the answers are checked, nothing is timed.

#[path = "admission/breakdown.rs"]
mod breakdown;
#[path = "admission/load.rs"]
mod load;
#[path = "admission/review.rs"]
mod review;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use kube_vip_webhook::config::Config;
use kube_vip_webhook::engine::Options;
use kube_vip_webhook::ipam::{Family, from_u128, is_filtered, to_u128};
use kube_vip_webhook::metrics::Metrics;
use kube_vip_webhook::service::{PortKey, Protocol, SvcInfo};
use kube_vip_webhook::state::{Allocator, Confirm};
use kube_vip_webhook::webhook::{self, WebhookState};
use tokio_util::sync::CancellationToken;

use load::{Http, Load, Stats};
use review::Mix;

/// The name in the serving certificate; clients resolve it to the server under test.
const SERVER_NAME: &str = "kube-vip-webhook.kube-system.svc";
const BASELINE_ANSWER: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"00000000-0000-0000-0000-000000000000","allowed":true}}"#;

/// Timing of one (scenario, protocol) run.
#[derive(Clone, Copy)]
struct Timing {
    warmup: Duration,
    slice: Duration,
    slices: u32,
}

const BENCH: Timing = Timing {
    warmup: Duration::from_millis(400),
    slice: Duration::from_millis(500),
    slices: 4,
};
const SMOKE: Timing = Timing {
    warmup: Duration::from_millis(50),
    slice: Duration::from_millis(50),
    slices: 1,
};
/// Hard bound on requests per server per run, whatever the speed of the machine.
const MAX_REQUESTS: u64 = 400_000;

struct Scenario {
    name: &'static str,
    configmap: &'static [(&'static str, &'static str)],
    existing: usize,
    /// Pool prefixes the existing Services' addresses are taken from (one address from each).
    existing_from: &'static [&'static str],
    mix: Mix,
    dry_run: bool,
    /// Addresses left for new allocations (the webhook run stops before the pool fills).
    room: u64,
}

fn scenarios() -> Vec<Scenario> {
    const V4_24: &[(&str, &str)] = &[("cidr-global", "10.0.0.0/24")];
    const V4_16: &[(&str, &str)] = &[("cidr-global", "10.0.0.0/16")];
    const V4_8: &[(&str, &str)] = &[("cidr-global", "10.0.0.0/8")];
    const V6_64: &[(&str, &str)] = &[("cidr-global", "fd00::/64")];
    const DUAL: &[(&str, &str)] = &[("cidr-global", "10.0.0.0/8,fd00::/64")];
    const SHARE: &[(&str, &str)] = &[
        ("cidr-global", "10.0.0.0/8"),
        ("allow-share-global", "true"),
    ];
    let slash16_room = 65_536 - 2 * 256;
    vec![
        Scenario {
            name: "0 existing, /24 (dryRun)",
            configmap: V4_24,
            existing: 0,
            existing_from: &[],
            mix: Mix::V4,
            dry_run: true,
            room: u64::MAX,
        },
        Scenario {
            name: "0 existing, /16",
            configmap: V4_16,
            existing: 0,
            existing_from: &[],
            mix: Mix::V4,
            dry_run: false,
            room: slash16_room,
        },
        Scenario {
            name: "10k existing, /16",
            configmap: V4_16,
            existing: 10_000,
            existing_from: &["10.0.0.0/16"],
            mix: Mix::V4,
            dry_run: false,
            room: slash16_room - 10_000,
        },
        Scenario {
            name: "100k existing, /8",
            configmap: V4_8,
            existing: 100_000,
            existing_from: &["10.0.0.0/8"],
            mix: Mix::V4,
            dry_run: false,
            room: 16_000_000,
        },
        Scenario {
            name: "100k existing, IPv6 /64",
            configmap: V6_64,
            existing: 100_000,
            existing_from: &["fd00::/64"],
            mix: Mix::V6,
            dry_run: false,
            room: u64::MAX,
        },
        Scenario {
            name: "100k existing, dual-stack mix",
            configmap: DUAL,
            existing: 100_000,
            existing_from: &["10.0.0.0/8", "fd00::/64"],
            mix: Mix::DualStack,
            dry_run: false,
            room: 16_000_000,
        },
        Scenario {
            name: "100k existing, sharing on",
            configmap: SHARE,
            existing: 100_000,
            existing_from: &["10.0.0.0/8"],
            mix: Mix::Sharing,
            dry_run: false,
            room: 16_000_000,
        },
    ]
}

/// The first `n` allocatable addresses of `cidr`, as an allocation from an empty pool gives them.
fn first_addresses(cidr: &str, n: usize) -> Vec<IpAddr> {
    let net: ipnet::IpNet = cidr.parse().expect("scenario CIDR");
    let family = Family::of(net.addr());
    let mut v = to_u128(net.network());
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let ip = from_u128(family, v);
        if !is_filtered(ip) {
            out.push(ip);
        }
        v += 1;
    }
    out
}

/// Existing LoadBalancer Services on 80/TCP and 443/TCP, each with one address per prefix.
fn existing_services(s: &Scenario) -> Vec<SvcInfo> {
    let lists: Vec<Vec<IpAddr>> = s
        .existing_from
        .iter()
        .map(|c| first_addresses(c, s.existing))
        .collect();
    (0..s.existing)
        .map(|i| SvcInfo {
            namespace: format!("ns-{}", i % 200),
            name: format!("existing-{i:06}"),
            load_balancer: true,
            lb_ips_annotation: Some(
                lists
                    .iter()
                    .map(|l| l[i].to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ports: vec![
                PortKey {
                    port: 80,
                    protocol: Protocol::Tcp,
                },
                PortKey {
                    port: 443,
                    protocol: Protocol::Tcp,
                },
            ],
            has_implementation_label: true,
            ..SvcInfo::default()
        })
        .collect()
}

fn allocator(s: &Scenario, existing: &[SvcInfo]) -> Arc<Allocator> {
    let data: BTreeMap<String, String> = s
        .configmap
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Cluster mode: admitted addresses are reservations until the cache shows the Service.
    let a = Arc::new(Allocator::new(
        Options::default(),
        Confirm::ByCache {
            ttl: Duration::from_secs(30),
        },
        "kube-system/kubevip",
    ));
    a.set_config(Some(Config::from_data(&data)));
    a.reset_services(existing);
    a
}

struct Tls {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn tls() -> Tls {
    let generated = kube_vip_webhook::tls::generate_self_signed(
        &[SERVER_NAME.to_string()],
        Duration::from_secs(3600),
    )
    .expect("generate certificate");
    let server =
        kube_vip_webhook::tls::server_config_from_pem(&generated.cert_pem, &generated.key_pem)
            .expect("server TLS config");
    Tls {
        ca_pem: generated.ca_cert_pem,
        server,
    }
}

fn baseline_router() -> Router {
    async fn answer(body: Bytes) -> axum::response::Response {
        std::hint::black_box(body.len());
        (
            [(header::CONTENT_TYPE, "application/json")],
            BASELINE_ANSWER,
        )
            .into_response()
    }
    Router::new()
        .route("/mutate", post(answer))
        .layer(DefaultBodyLimit::max(webhook::BODY_LIMIT))
}

/// A server on the server runtime, until `token` is cancelled.
fn serve(
    rt: &tokio::runtime::Runtime,
    tls: &Tls,
    app: Router,
) -> (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let token = CancellationToken::new();
    let handle = rt.spawn(kube_vip_webhook::server::serve_https(
        listener,
        tls.server.clone(),
        app,
        token.clone(),
        Duration::from_secs(2),
    ));
    (addr, token, handle)
}

struct Row {
    scenario: &'static str,
    http: Http,
    base: Stats,
    hook: Stats,
    existing: usize,
    /// Mean wall time inside the webhook handler under this load, ns.
    handler: f64,
}

fn run_scenario(
    s: &Scenario,
    http: Http,
    timing: Timing,
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    tls: &Tls,
    existing: &[SvcInfo],
) -> Row {
    let allocator = allocator(s, existing);
    let metrics = Arc::new(Metrics::new(allocator.clone()));
    let leadership = kube_vip_webhook::leadership::Leadership::single(None);
    leadership.set_synced();
    let hook_app = webhook::router(WebhookState {
        allocator: allocator.clone(),
        metrics: metrics.clone(),
        leadership,
        forward: None,
    });
    let (hook_addr, hook_token, hook_task) = serve(server_rt, tls, hook_app);
    let (base_addr, base_token, base_task) = serve(server_rt, tls, baseline_router());
    // Each request of a non-dry-run allocation takes up to two addresses (dual-stack).
    let cap = if s.dry_run {
        MAX_REQUESTS
    } else {
        (s.room / 2 * 9 / 10).min(MAX_REQUESTS)
    };
    let (base, hook) = client_rt.block_on(async {
        let base = Load::new(
            &tls.ca_pem,
            SERVER_NAME,
            base_addr,
            http,
            s.mix,
            s.dry_run,
            MAX_REQUESTS,
            "base",
        );
        let hook = Load::new(
            &tls.ca_pem,
            SERVER_NAME,
            hook_addr,
            http,
            s.mix,
            s.dry_run,
            cap,
            s.name,
        );
        base.slice(timing.warmup, false).await;
        hook.slice(timing.warmup, false).await;
        let (mut b, mut h) = (Stats::default(), Stats::default());
        // BENCH_ONLY=base|hook loads one server only (to profile it alone).
        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        for _ in 0..timing.slices {
            if only != "hook" {
                b.add(base.slice(timing.slice, true).await);
            }
            if only != "base" {
                h.add(hook.slice(timing.slice, true).await);
            }
        }
        (b, h)
    });
    let handler = mean_handler_time(&metrics.encode());
    hook_token.cancel();
    base_token.cancel();
    for task in [hook_task, base_task] {
        match server_rt.block_on(task) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("server failed: {e}"),
            Err(e) => panic!("server task: {e}"),
        }
    }
    Row {
        scenario: s.name,
        http,
        base,
        hook,
        existing: s.existing,
        handler,
    }
}

/// Mean time inside the handler (`admission_duration_seconds`: decode, decision, answer), from
/// the webhook's own metrics, in nanoseconds; warm-up requests included.
fn mean_handler_time(metrics: &str) -> f64 {
    let total = |suffix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with(&format!(
                    "kube_vip_webhook_admission_duration_seconds_{suffix}"
                ))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    total("sum") * 1e9 / total("count").max(1.0)
}

fn us(ns: u64) -> String {
    format!("{:.0}", ns as f64 / 1000.0)
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<31} {:<5} {:>8} {:>8} {:>5} | {:>16} | {:>16} | {:>5} | {:>9} {:>7} {:>7}",
        "scenario",
        "http",
        "base r/s",
        "hook r/s",
        "x r/s",
        "base p50/p99/p99.9",
        "hook p50/p99/p99.9",
        "x p99",
        "srv us/req",
        "handler",
        "patched"
    );
    for r in rows {
        let rps = r.hook.rps() / r.base.rps();
        let p99 = r.hook.percentile(0.99) as f64 / r.base.percentile(0.99) as f64;
        let lat = |s: &Stats| {
            format!(
                "{}/{}/{}",
                us(s.percentile(0.5)),
                us(s.percentile(0.99)),
                us(s.percentile(0.999))
            )
        };
        let cpu = format!(
            "{:.0}/{:.0}",
            r.base.server_cpu_per_request() / 1000.0,
            r.hook.server_cpu_per_request() / 1000.0
        );
        println!(
            "{:<31} {:<5} {:>8.0} {:>8.0} {:>5.2} | {:>16} | {:>16} | {:>5.2} | {:>9} {:>5.1}us {:>6.1}%",
            r.scenario,
            r.http.label(),
            r.base.rps(),
            r.hook.rps(),
            rps,
            lat(&r.base),
            lat(&r.hook),
            p99,
            cpu,
            r.handler / 1000.0,
            100.0 * r.hook.patched as f64 / r.hook.count().max(1) as f64,
        );
    }
    println!(
        "latencies in microseconds; x = webhook / baseline, same run, alternating slices; \
         srv us/req = server threads' CPU per request, baseline/webhook; \
         handler = mean wall time inside the webhook handler under the load"
    );
    let client: f64 = rows
        .iter()
        .map(|r| (r.base.client_cpu_per_request() + r.hook.client_cpu_per_request()) / 2.0)
        .sum::<f64>()
        / rows.len().max(1) as f64;
    println!(
        "the load generator used {:.0} us of CPU per request on the same cores",
        client / 1000.0
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    for (what, saturating) in [("saturating load", true), ("one connection", false)] {
        let at_100k: Vec<&Row> = rows
            .iter()
            .filter(|r| r.existing >= 100_000 && r.http.saturating() == saturating)
            .collect();
        if at_100k.is_empty() {
            continue;
        }
        let worst_rps = at_100k
            .iter()
            .map(|r| r.hook.rps() / r.base.rps())
            .fold(f64::MAX, f64::min);
        let worst_p99 = at_100k
            .iter()
            .map(|r| r.hook.percentile(0.99) as f64 / r.base.percentile(0.99) as f64)
            .fold(0.0, f64::max);
        println!(
            "targets with 100k existing, {what}: throughput >= 0.80x baseline: worst {worst_rps:.2} ({}); \
             p99 <= 1.25x baseline: worst {worst_p99:.2} ({})",
            verdict(worst_rps >= 0.8),
            verdict(worst_p99 <= 1.25)
        );
    }
}

fn runtime(name: &str, threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    let filter: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let (timing, all) = if bench {
        let all: Vec<Scenario> = scenarios()
            .into_iter()
            .filter(|s| filter.is_empty() || filter.iter().any(|f| s.name.contains(f.as_str())))
            .collect();
        (BENCH, all)
    } else {
        let mut all = scenarios();
        all.truncate(2);
        (SMOKE, all)
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "admission load: {cores} cores; HTTP/1.1 {} connections; HTTP/2 {} connections x {} streams; \
         1conn: one HTTP/1.1 connection, one request at a time; \
         warm-up {:?}, then {} x {:?} slices per server, alternating",
        load::H1_CONNECTIONS,
        load::H2_CONNECTIONS,
        load::H2_STREAMS,
        timing.warmup,
        timing.slices,
        timing.slice
    );
    // Servers and load generator on separate runtimes (they still share the machine's cores).
    // BENCH_SERVER_THREADS overrides the server's worker count (e.g. 1, to rule out contention).
    let server_threads = std::env::var("BENCH_SERVER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cores.min(2));
    let server_rt = runtime("server", server_threads);
    let client_rt = runtime("client", cores.min(2));
    let tls = tls();
    let mut rows = Vec::new();
    for s in &all {
        let existing = existing_services(s);
        for http in [Http::One, Http::Two, Http::Single] {
            let row = run_scenario(s, http, timing, &server_rt, &client_rt, &tls, &existing);
            assert_eq!(
                row.base.errors + row.hook.errors,
                0,
                "{}: request errors",
                s.name
            );
            assert_eq!(row.hook.denied, 0, "{}: webhook denied requests", s.name);
            if !bench {
                assert!(
                    row.hook.count() > 0 && row.base.count() > 0,
                    "no requests measured"
                );
                assert_eq!(
                    row.hook.patched,
                    row.hook.count(),
                    "{}: answers without patch",
                    s.name
                );
            }
            eprintln!(
                "  {} {}: base {:.0} r/s, hook {:.0} r/s",
                s.name,
                http.label(),
                row.base.rps(),
                row.hook.rps()
            );
            rows.push(row);
        }
    }
    print_table(&rows);
    if bench
        && let Some(s) = all
            .iter()
            .rev()
            .find(|s| s.existing >= 100_000)
            .or(all.last())
    {
        let existing = existing_services(s);
        breakdown::print(|| allocator(s, &existing), s.mix);
    }
}
