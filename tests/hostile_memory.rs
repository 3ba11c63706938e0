//! Issue 11: a flood of maximal reviews (the largest body accepted, the most ports, each a new
//! admission) keeps the process's memory bounded, and legitimate admissions get addresses
//! throughout. Alone in its test binary: it measures the process's resident memory.

#[path = "support/hostile.rs"]
mod hostile_support;
#[path = "support/tls.rs"]
mod tls_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hostile_support::*;
use kube_vip_webhook::server::{H2_CONNECTION_WINDOW, Limits, MAX_CONNECTIONS};
use kube_vip_webhook::state::Quotas;
use kube_vip_webhook::webhook::{BODY_LIMIT, MAX_BODY_BYTES_IN_FLIGHT};

const PATIENCE: Duration = Duration::from_secs(120);
/// Clients flooding at once: twice what the body budget lets in.
const FLOODERS: usize = 2 * MAX_BODY_BYTES_IN_FLIGHT / BODY_LIMIT;
const ROUNDS: usize = 2;
const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_maximal_reviews_stays_within_the_memory_bound() {
    let target = Target::start("10.0.0.0/16", Quotas::default(), Limits::default()).await;
    let review = Arc::new(MaximalReview::new(BODY_LIMIT - 1024));
    assert!(review.len() <= BODY_LIMIT && review.len() > BODY_LIMIT - 4096);
    let flood_client = target.client();
    // Warm up: one maximal review, so that the baseline includes the allocator's first pools.
    let warm = post(&flood_client, target.addr, review.body()).await;
    assert!(warm.allowed(), "{}", warm.review);
    let baseline = rss_bytes();

    let peak = Arc::new(AtomicU64::new(baseline));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut flooders = Vec::new();
    let (served, shed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    for _ in 0..FLOODERS {
        let (client, addr, review) = (flood_client.clone(), target.addr, review.clone());
        let (served, shed) = (served.clone(), shed.clone());
        flooders.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let answer = post(&client, addr, review.body()).await;
                // A flooder waiting for the body budget longer than the request timeout is
                // answered 408: shedding attackers is allowed; anything else is not.
                if answer.status == 408 {
                    shed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                assert_eq!(answer.status, 200);
                assert!(answer.allowed(), "{}", answer.review);
                served.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Legitimate admissions while the flood runs, each on a new connection.
    let legit = target.client();
    let mut during = 0;
    while flooders.iter().any(|f| !f.is_finished()) {
        let ip = tokio::time::timeout(
            PATIENCE,
            legit_create(&legit, target.addr, "default", &format!("web{during}")),
        )
        .await
        .expect("legitimate admission starved");
        assert!(ip.is_some(), "legitimate admission got no address");
        during += 1;
    }
    for f in flooders {
        tokio::time::timeout(PATIENCE, f).await.unwrap().unwrap();
    }
    sampling.abort();
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    // Bodies in flight (budget), their decoding (at most as much again), unread HTTP/2 data on
    // every connection, and slack for the allocator's arenas and the client side.
    let bound = 2 * MAX_BODY_BYTES_IN_FLIGHT as u64
        + (MAX_CONNECTIONS as u64) * u64::from(H2_CONNECTION_WINDOW)
        + 64 * MIB;
    println!(
        "flood: {} x {} reviews of {} KiB ({} served, {} shed by timeouts); baseline RSS {} MiB, peak growth {} MiB (bound {} MiB); {during} legitimate admissions during the flood",
        FLOODERS,
        ROUNDS,
        review.len() / 1024,
        served.load(Ordering::Relaxed),
        shed.load(Ordering::Relaxed),
        baseline / MIB,
        growth / MIB,
        bound / MIB
    );
    assert!(
        growth <= bound,
        "RSS grew by {} MiB (bound {} MiB)",
        growth / MIB,
        bound / MIB
    );
    assert!(
        during > 0,
        "the flood ended before any legitimate admission was sent"
    );
    assert!(
        served.load(Ordering::Relaxed) > 0,
        "no maximal review was served: the bound was not exercised"
    );
    // What reviews hold stays within the quotas.
    assert!(target.allocator.reservations() <= Quotas::default().reservations);
    target.stop().await;
}
