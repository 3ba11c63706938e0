//! What the two HA designs add to one admission, measured in the same run on a real
//! kube-apiserver (envtest; needs `KUBEBUILDER_ASSETS`):
//!
//! * forwarding (chosen): a follower sends the review to the leader over HTTPS;
//!   cost = (review through the follower) - (review straight to the leader);
//! * one object per allocated address (the ClusterIP allocator's design): one apiserver create
//!   per admission; cost = one create of a small object.
//!
//! `cargo bench --bench ha_cost` (prints a table; the ratio is against the forwarding hop).

#[path = "../tests/support/envtest.rs"]
mod envtest;
#[path = "../tests/support/replica.rs"]
mod replica;
#[path = "../tests/support/reviews.rs"]
mod reviews;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

const SAMPLES: usize = 400;
const CONCURRENCY: usize = 16;

struct Stats {
    p50: Duration,
    p99: Duration,
    per_sec: f64,
}

fn stats(mut v: Vec<Duration>, wall: Duration) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    Stats {
        p50: at(0.5),
        p99: at(0.99),
        per_sec: v.len() as f64 / wall.as_secs_f64(),
    }
}

/// Run `op(i)` SAMPLES times, CONCURRENCY at a time; latencies and wall time.
async fn measure<F, Fut>(op: F) -> Stats
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    let start = Instant::now();
    let lat: Vec<Duration> = futures::stream::iter(0..SAMPLES)
        .map(|i| {
            let fut = op(i);
            async move {
                let t = Instant::now();
                fut.await;
                t.elapsed()
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    stats(lat, start.elapsed())
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let Some(cp) = envtest::control_plane() else {
            return;
        };
        let client = cp.client().await;
        let ns = cp.namespace(&client, "bench").await;
        // The pool and the Lease the replicas use live in kube-system, as installed.
        let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "kubevip", "namespace": "kube-system"},
            "data": {"cidr-global": "10.128.0.0/16"},
        }))
        .expect("configmap");
        Api::namespaced(client.clone(), "kube-system")
            .create(&PostParams::default(), &cm)
            .await
            .expect("configmap");
        let certs = replica::certs();
        // Production timings: no takeover wait after the first acquisition of a fresh Lease is
        // what FAST_LEASE gives; the measurement is of steady state either way.
        let leader = replica::start(client.clone(), &replica::args(&certs, "leader", &[])).await;
        let http = reviews::client(&certs.ca_pem);
        let probe = |n: usize| reviews::create(&format!("warm-{n}"), &ns, &format!("w{n}"), true);
        let started = Instant::now();
        while reviews::address(&reviews::send(&http, leader.webhook_addr, &probe(0), false).await)
            .is_none()
        {
            assert!(started.elapsed() < Duration::from_secs(60), "leader never allocated");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let follower =
            replica::start(client.clone(), &replica::args(&certs, "follower", &[])).await;
        let started = Instant::now();
        while reviews::address(&reviews::send(&http, follower.webhook_addr, &probe(1), false).await)
            .is_none()
        {
            assert!(started.elapsed() < Duration::from_secs(60), "follower never forwarded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Dry-run reviews: the same decision work, nothing held (the pool never runs out).
        let direct = measure(|i| {
            let (http, review) = (http.clone(), probe(10_000 + i));
            let addr = leader.webhook_addr;
            async move {
                let a = reviews::send(&http, addr, &review, false).await;
                assert!(reviews::address(&a).is_some());
            }
        })
        .await;
        let forwarded = measure(|i| {
            let (http, review) = (http.clone(), probe(20_000 + i));
            let addr = follower.webhook_addr;
            async move {
                let a = reviews::send(&http, addr, &review, false).await;
                assert!(reviews::address(&a).is_some());
            }
        })
        .await;
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let create = measure(|i| {
            let leases = leases.clone();
            async move {
                // A claim object named after the address, as the alternative design would write.
                let claim: Lease = serde_json::from_value(json!({
                    "metadata": {"name": format!("ip-10-128-{}-{}", i / 250, i % 250)},
                    "spec": {"holderIdentity": "bench/svc"}
                }))
                .expect("claim");
                leases
                    .create(&PostParams::default(), &claim)
                    .await
                    .expect("create claim");
            }
        })
        .await;
        let hop_p50 = forwarded.p50.saturating_sub(direct.p50);
        let hop_p99 = forwarded.p99.saturating_sub(direct.p99);
        println!(
            "HA cost per admission ({SAMPLES} samples, {CONCURRENCY} in flight, envtest kube-apiserver 1.28, 2 cores)"
        );
        println!("| what | p50 | p99 | per second |");
        println!("| --- | --- | --- | --- |");
        for (name, s) in [
            ("review straight to the leader", &direct),
            ("review through a follower (forwarded)", &forwarded),
            ("apiserver create of one claim object", &create),
        ] {
            println!(
                "| {name} | {:.2} ms | {:.2} ms | {:.0} |",
                s.p50.as_secs_f64() * 1e3,
                s.p99.as_secs_f64() * 1e3,
                s.per_sec
            );
        }
        println!(
            "| added by forwarding (baseline) | {:.2} ms | {:.2} ms | |",
            hop_p50.as_secs_f64() * 1e3,
            hop_p99.as_secs_f64() * 1e3
        );
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-6);
        println!(
            "| added by a claim write | {:.2} ms ({:.1}x) | {:.2} ms ({:.1}x) | |",
            create.p50.as_secs_f64() * 1e3,
            ratio(create.p50, hop_p50),
            create.p99.as_secs_f64() * 1e3,
            ratio(create.p99, hop_p99)
        );
        leader.stop.shutdown.cancel();
        follower.stop.shutdown.cancel();
    });
}
