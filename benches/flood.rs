//! Memory under a sustained flood of hostile reviews (issue 11), as a table.
//!
//! The webhook (real router on the real server, cluster-mode allocator with 30 s reservations,
//! default quotas and limits) runs in a child process (this binary re-executed with `--server`),
//! so the resident memory sampled from `/proc/<pid>/status` is the server's alone. Its idle RSS
//! is measured in the same run; every row shows the ratio to it. Two floods, each from
//! `FLOODERS` concurrent connections sending as fast as answers come back:
//! * `maximal`: the largest review the webhook accepts and allocates for (4 MiB body, the most
//!   ports a Service may have, a last-applied annotation filling the rest), a new UID each time;
//! * `pin 250k v6`: the review pinning 250,000 IPv6 addresses (+481 MiB for ten of them
//!   before the bounds), now refused before anything is held.
//!
//! A legitimate one-port CREATE is sent every 100 ms meanwhile, on a new connection each; the
//! table counts how many got an address.
//!
//! `cargo bench --bench flood` prints the table; without `--bench` (as `cargo test --benches`
//! runs it) a short smoke run checks the floods are answered, nothing is timed.

#[path = "../tests/support/hostile.rs"]
mod hostile_support;
#[path = "../tests/support/tls.rs"]
mod tls_support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hostile_support::{MaximalReview, Target, create, legit_create, post, service};
use kube_vip_webhook::server::Limits;
use kube_vip_webhook::state::Quotas;
use kube_vip_webhook::webhook::{BODY_LIMIT, MAX_BODY_BYTES_IN_FLIGHT};

/// Concurrent flooding connections: twice what the body budget admits at once.
const FLOODERS: usize = 2 * MAX_BODY_BYTES_IN_FLIGHT / BODY_LIMIT;
const MIB: f64 = 1024.0 * 1024.0;

struct Timing {
    flood: Duration,
    sample: Duration,
    settle: Duration,
}

const BENCH: Timing = Timing {
    flood: Duration::from_secs(10),
    sample: Duration::from_secs(1),
    settle: Duration::from_secs(3),
};
const SMOKE: Timing = Timing {
    flood: Duration::from_millis(500),
    sample: Duration::from_millis(250),
    settle: Duration::from_millis(100),
};

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `--server`: serve until stdin closes; print the address and the CA file.
fn server(rt: &tokio::runtime::Runtime) {
    let target = rt.block_on(Target::start(
        "10.0.0.0/8",
        Quotas::default(),
        Limits::default(),
    ));
    let ca = std::env::temp_dir().join(format!("flood-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, &target.ca).expect("write CA");
    println!("READY {} {}", target.addr, ca.display());
    std::io::stdout().flush().expect("stdout");
    let mut sink = String::new();
    while std::io::stdin()
        .read_line(&mut sink)
        .map(|r| r > 0)
        .unwrap_or(false)
    {}
    let _ = std::fs::remove_file(ca);
}

struct Row {
    label: String,
    rss: u64,
    answered: u64,
    legit_ok: u64,
    legit_sent: u64,
}

/// One flood of `body()` reviews for `timing.flood`, sampled every `timing.sample`.
async fn flood(
    name: &str,
    pid: u32,
    addr: std::net::SocketAddr,
    ca: &str,
    body: Arc<dyn Fn() -> reqwest::Body + Send + Sync>,
    timing: &Timing,
    rows: &mut Vec<Row>,
) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..FLOODERS {
        // One connection per flooder (HTTP/2, kept alive).
        let client = tls_support::https_client_keepalive(ca, addr);
        let (stop, answered, body) = (stop.clone(), answered.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = post(&client, addr, body()).await;
                assert_eq!(answer.status, 200, "{}", answer.review);
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let legit_ok = Arc::new(AtomicU64::new(0));
    let legit_sent = Arc::new(AtomicU64::new(0));
    let legit = {
        let (stop, ok, sent, ca) = (
            stop.clone(),
            legit_ok.clone(),
            legit_sent.clone(),
            ca.to_string(),
        );
        tokio::spawn(async move {
            let client = tls_support::https_client(&ca, addr, tls_support::Http::Two);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                if legit_create(&client, addr, "default", &format!("web-{i}"))
                    .await
                    .is_some()
                {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < timing.flood {
        tokio::time::sleep(timing.sample).await;
        let rss = rss_of(pid);
        peak = peak.max(rss);
        rows.push(Row {
            label: format!("{name} {:>4.1}s", started.elapsed().as_secs_f64()),
            rss,
            answered: answered.load(Ordering::Relaxed),
            legit_ok: legit_ok.load(Ordering::Relaxed),
            legit_sent: legit_sent.load(Ordering::Relaxed),
        });
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("flooder");
    }
    legit.await.expect("legitimate client");
    peak = peak.max(rss_of(pid));
    tokio::time::sleep(timing.settle).await;
    rows.push(Row {
        label: format!("{name} +{:.0}s after", timing.settle.as_secs_f64()),
        rss: rss_of(pid),
        answered: answered.load(Ordering::Relaxed),
        legit_ok: legit_ok.load(Ordering::Relaxed),
        legit_sent: legit_sent.load(Ordering::Relaxed),
    });
    peak
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if args.first().map(String::as_str) == Some("--server") {
        return server(&rt);
    }
    let timing = if args.iter().any(|a| a == "--bench") {
        &BENCH
    } else {
        &SMOKE
    };
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .arg("--server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the server process");
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server address");
    let mut words = line
        .trim()
        .strip_prefix("READY ")
        .expect("READY")
        .split(' ');
    let addr: std::net::SocketAddr = words.next().expect("addr").parse().expect("addr");
    let ca = std::fs::read_to_string(words.next().expect("ca")).expect("CA");

    rt.block_on(async {
        // Idle: started, one legitimate admission answered (connections and pools warm).
        let client = tls_support::https_client(&ca, addr, tls_support::Http::Two);
        assert!(legit_create(&client, addr, "default", "warm").await.is_some());
        tokio::time::sleep(timing.settle).await;
        let idle = rss_of(pid);
        let mut rows = vec![Row {
            label: "idle".into(),
            rss: idle,
            answered: 0,
            legit_ok: 1,
            legit_sent: 1,
        }];
        let maximal = Arc::new(MaximalReview::new(BODY_LIMIT - 1024));
        let max_len = maximal.len();
        let peak_max = flood(
            "maximal",
            pid,
            addr,
            &ca,
            Arc::new(move || maximal.body()),
            timing,
            &mut rows,
        )
        .await;
        let v6: Vec<String> = (1..=250_000u32)
            .map(|i| format!("fd00::{:x}:{:x}", i >> 16, i & 0xffff))
            .collect();
        let pin = Arc::new(
            serde_json::to_vec(&create(&service("evil", "v6", &[], Some(&v6.join(","))))).expect("json"),
        );
        let pin_len = pin.len();
        let peak_pin = flood(
            "pin 250k v6",
            pid,
            addr,
            &ca,
            Arc::new(move || reqwest::Body::from(pin.as_ref().clone())),
            timing,
            &mut rows,
        )
        .await;

        println!();
        println!(
            "RSS of the webhook process under floods from {FLOODERS} connections (maximal review {} KiB, pin review {} KiB)",
            max_len / 1024,
            pin_len / 1024
        );
        println!(
            "{:<22} {:>9} {:>8} {:>10} {:>12}",
            "phase", "RSS MiB", "x idle", "answered", "legit ok"
        );
        for r in &rows {
            println!(
                "{:<22} {:>9.1} {:>8.2} {:>10} {:>7}/{:<4}",
                r.label,
                r.rss as f64 / MIB,
                r.rss as f64 / idle.max(1) as f64,
                r.answered,
                r.legit_ok,
                r.legit_sent
            );
        }
        println!(
            "{:<22} {:>9.1} {:>8.2}",
            "peak, maximal",
            peak_max as f64 / MIB,
            peak_max as f64 / idle.max(1) as f64
        );
        println!(
            "{:<22} {:>9.1} {:>8.2}",
            "peak, pin 250k v6",
            peak_pin as f64 / MIB,
            peak_pin as f64 / idle.max(1) as f64
        );
        // Rows taken mid-flood may count a request still in flight; the final rows may not.
        let legit_missed: u64 = rows
            .iter()
            .filter(|r| r.label.ends_with("after"))
            .map(|r| r.legit_sent - r.legit_ok)
            .max()
            .unwrap_or(0);
        assert_eq!(legit_missed, 0, "a legitimate admission got no address");
    });
    drop(child.stdin.take());
    let _ = child.wait();
}
