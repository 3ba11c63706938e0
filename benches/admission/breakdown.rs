//! Where the webhook's time goes, per request, outside any server: decoding the review, the whole
//! handler (`webhook::review`: decode, decision, response), encoding the answer.

use std::hint::black_box;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::core::admission::AdmissionReview;
use kube_vip_webhook::state::Allocator;
use std::sync::Arc;

use super::review::{self, Mix};

/// Mean ns per call of `f(i)` over at most `calls` calls or about 300 ms.
fn mean_ns(calls: u64, mut f: impl FnMut(u64)) -> f64 {
    let started = Instant::now();
    let mut n = 0;
    while n < calls && started.elapsed() < Duration::from_millis(300) {
        f(n);
        n += 1;
    }
    started.elapsed().as_nanos() as f64 / n.max(1) as f64
}

pub fn print(make: impl Fn() -> Arc<Allocator>, mix: Mix) {
    let allocator = &*make();
    let bodies: Vec<String> = (0..1000).map(|n| review::body(mix, false, 7, n)).collect();
    let size = bodies.iter().map(String::len).sum::<usize>() / bodies.len();
    let full_decode = mean_ns(200_000, |n| {
        let r: AdmissionReview<Service> =
            serde_json::from_slice(bodies[(n % 1000) as usize].as_bytes()).expect("review");
        black_box(r);
    });
    let scan = mean_ns(200_000, |n| {
        let r: serde::de::IgnoredAny =
            serde_json::from_slice(bodies[(n % 1000) as usize].as_bytes()).expect("json");
        black_box(r);
    });
    let decode = mean_ns(200_000, |n| {
        let r = kube_vip_webhook::admission::decode_service_review(
            bodies[(n % 1000) as usize].as_bytes(),
        )
        .expect("review");
        black_box(r);
    });
    // Dry-run, so that the allocator's state stays as prepared.
    let dry: Vec<String> = (0..1000).map(|n| review::body(mix, true, 7, n)).collect();
    let mut answers = Vec::new();
    let handler = mean_ns(200_000, |n| {
        let out = kube_vip_webhook::webhook::review(
            allocator,
            dry[(n % 1000) as usize].as_bytes(),
            Instant::now(),
        );
        if answers.len() < 1000 {
            answers.push(out.0);
        }
    });
    // Allocating: every call reserves an address, the index grows as under load.
    let growing = make();
    let mut copies: Vec<Vec<u8>> = bodies.iter().map(|b| b.clone().into_bytes()).collect();
    let allocating = mean_ns(50_000, |n| {
        // A new uid each call (same length), so each is a new reservation.
        let body = &mut copies[(n % 1000) as usize];
        let uid = format!("{:08x}-0000-4000-8000-{:012x}", 0xb0d1e5u32, n);
        body[review::UID_AT..review::UID_AT + 36].copy_from_slice(uid.as_bytes());
        black_box(kube_vip_webhook::webhook::review(
            &growing,
            body,
            Instant::now(),
        ));
    });
    let encode = mean_ns(200_000, |n| {
        black_box(
            kube_vip_webhook::webhook::encode_review(&answers[(n as usize) % answers.len()])
                .expect("encode"),
        );
    });
    println!();
    println!("webhook handler cost per request, single thread ({size} byte reviews):");
    println!(
        "  decode, full AdmissionReview<Service> (kube) {:>8.1} us",
        full_decode / 1000.0
    );
    println!(
        "  scan only (serde IgnoredAny, the floor)     {:>8.1} us",
        scan / 1000.0
    );
    println!(
        "  decode, admission::decode_service_review    {:>8.1} us",
        decode / 1000.0
    );
    println!(
        "  webhook::review (decode, decide, answer)    {:>8.1} us",
        handler / 1000.0
    );
    println!(
        "  webhook::review, allocating (index grows)   {:>8.1} us",
        allocating / 1000.0
    );
    println!(
        "  webhook::encode_review                      {:>8.1} us",
        encode / 1000.0
    );
}
