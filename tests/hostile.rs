//! Issue 11: hostile clients against the real webhook over real HTTPS. Each attack checks that
//! its bound holds and that legitimate admissions still get addresses while it runs.

#[path = "support/hostile.rs"]
mod hostile_support;
#[path = "support/tls.rs"]
mod tls_support;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hostile_support::*;
use kube_vip_webhook::server::Limits;
use kube_vip_webhook::service::MAX_PORTS;
use kube_vip_webhook::state::Quotas;
use kube_vip_webhook::webhook::{MAX_ANSWER_BYTES, MAX_WARNINGS};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Generous bound so that a broken server fails a test instead of hanging it (not a threshold).
const PATIENCE: Duration = Duration::from_secs(60);

async fn patiently<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .expect("gave up waiting")
}

// ---------------------------------------------------------------------------------------------
// Pool pinning

#[tokio::test]
async fn one_review_cannot_pin_more_than_one_address_per_family() {
    let target = Target::start("10.0.0.0/26", Quotas::default(), Limits::default()).await;
    let client = target.client();
    // Every address of the pool in one annotation (the attack of the issue): refused whole.
    let all: Vec<String> = (1..=62).map(|i| format!("10.0.0.{i}")).collect();
    let answer = post_create(
        &client,
        target.addr,
        ("evil", "pin-all"),
        &[],
        Some(&all.join(",")),
    )
    .await;
    assert!(!answer.allowed());
    assert!(
        answer.message().contains("at most one address per family"),
        "{}",
        answer.message()
    );
    // Two of one family, even as the whole list: refused; one of each is fine.
    let answer = post_create(
        &client,
        target.addr,
        ("evil", "two"),
        &[(80, "TCP")],
        Some("10.0.0.1,10.0.0.2"),
    )
    .await;
    assert!(
        answer.message().contains("two IPv4 addresses"),
        "{}",
        answer.message()
    );
    let answer = post_create(
        &client,
        target.addr,
        ("ok", "dual"),
        &[(80, "TCP")],
        Some("10.0.0.1,fd00::1"),
    )
    .await;
    assert!(answer.allowed(), "{}", answer.review);
    assert_eq!(target.allocator.reservations(), 1);
    // 250k IPv6 addresses in one annotation (the memory flood): refused, nothing held.
    let huge: Vec<String> = (1..=250_000u32)
        .map(|i| format!("fd00::{:x}:{:x}", i >> 16, i & 0xffff))
        .collect();
    let body =
        serde_json::to_vec(&create(&service("evil", "v6", &[], Some(&huge.join(","))))).unwrap();
    assert!(body.len() <= kube_vip_webhook::webhook::BODY_LIMIT);
    let answer = post(&client, target.addr, body).await;
    assert!(!answer.allowed());
    assert!(answer.bytes <= MAX_ANSWER_BYTES);
    assert_eq!(target.allocator.reservations(), 1);
    assert_eq!(target.allocator.used_count(), 2);
    // Legitimate traffic is unaffected.
    assert!(
        legit_create(&client, target.addr, "default", "web")
            .await
            .is_some()
    );
    target.stop().await;
}

#[tokio::test]
async fn pool_pinning_flood_is_bounded_per_namespace_and_in_total() {
    let quotas = Quotas {
        reservations: 24,
        per_namespace: 8,
        ..Quotas::default()
    };
    // 62 addresses: more than an attacker may hold, so legitimate Services keep getting some.
    let target = Target::start("10.0.0.0/26", quotas, Limits::default()).await;
    let client = target.client();
    let mut handed_out: Vec<IpAddr> = Vec::new();
    let record = |handed_out: &mut Vec<IpAddr>, answer: &Answer| {
        if let Some(a) = answer.address() {
            handed_out.extend(a.split(',').map(|ip| ip.parse::<IpAddr>().unwrap()));
        }
    };

    // One namespace floods with allocations and pins, legitimate creates interleaved.
    for i in 0..60 {
        // Pins from the top of the pool, allocations from the bottom: they never meet here.
        let pinned = format!("10.0.0.{}", 62 - i / 2);
        let requested = (i % 2 == 0).then_some(pinned.as_str());
        let evil = service("evil", &format!("e{i}"), &[], requested);
        let answer = post(
            &client,
            target.addr,
            serde_json::to_vec(&create(&evil)).unwrap(),
        )
        .await;
        assert_eq!(answer.status, 200);
        if requested.is_some() && answer.allowed() {
            handed_out.push(pinned.parse().unwrap()); // held for it, as if handed out
        }
        if i >= 8 {
            // Past the namespace's share: nothing more is held, and the caller is told why.
            let told = format!("{} {}", answer.message(), answer.warnings().join(" "));
            assert!(told.contains("--max-reservations-per-namespace"), "{told}");
            assert!(answer.address().is_none(), "{}", answer.review);
        }
        record(&mut handed_out, &answer);
        if i % 5 == 0 {
            // Each in its own namespace: without a cache here, their reservations stay.
            let legit = service(&format!("team{i}"), "web", &[(80, "TCP")], None);
            let answer = post(
                &client,
                target.addr,
                serde_json::to_vec(&create(&legit)).unwrap(),
            )
            .await;
            assert!(
                answer.address().is_some(),
                "legitimate create starved: {}",
                answer.review
            );
            record(&mut handed_out, &answer);
        }
    }
    let legit_so_far = target.allocator.reservations() - 8;
    assert_eq!(
        legit_so_far, 12,
        "8 held by evil, the rest by legitimate creates"
    );

    // Spread over namespaces, the flood reaches the cluster-wide cap and no further.
    for i in 0..40 {
        let evil = service(&format!("evil{i}"), "e", &[], None);
        let answer = post(
            &client,
            target.addr,
            serde_json::to_vec(&create(&evil)).unwrap(),
        )
        .await;
        record(&mut handed_out, &answer);
    }
    assert_eq!(target.allocator.reservations(), quotas.reservations);
    // At the cap a new Service is admitted without an address, told why, never given a duplicate.
    let late = service("default", "late", &[(80, "TCP")], None);
    let answer = post(
        &client,
        target.addr,
        serde_json::to_vec(&create(&late)).unwrap(),
    )
    .await;
    assert!(answer.allowed() && answer.address().is_none());
    assert!(
        answer.warnings().join(" ").contains("--max-reservations)"),
        "{:?}",
        answer.warnings()
    );
    let distinct: HashSet<IpAddr> = handed_out.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        handed_out.len(),
        "an address was handed out twice"
    );
    assert_eq!(handed_out.len(), quotas.reservations);
    target.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Port bomb

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_bomb_does_not_hold_the_allocator() {
    let target = Target::start("10.0.0.0/24", Quotas::default(), Limits::default()).await;
    let client = target.client();
    // An earlier reservation on 10.0.0.10 with the most ports a Service may have (even ones).
    let first = service(
        "evil",
        "first",
        &many_ports(MAX_PORTS, 2, 2),
        Some("10.0.0.10"),
    );
    let answer = post(
        &client,
        target.addr,
        serde_json::to_vec(&create(&first)).unwrap(),
    )
    .await;
    assert!(answer.allowed(), "{}", answer.review);
    assert_eq!(target.allocator.reservations(), 1);

    // Bombs, all at once: reviews pinning the same address with the most ports allowed (other
    // ones: every pair is compared against the reservation's), and the 250k-entry list.
    let allowed_bomb = |i: usize| {
        // Disjoint from the reservation's pairs and from each other.
        let ports = match i {
            0 => many_ports(MAX_PORTS, 1, 2),
            1 => ports_on(MAX_PORTS, "UDP"),
            _ => ports_on(MAX_PORTS, "SCTP"),
        };
        let svc = service("evil", &format!("bomb{i}"), &ports, Some("10.0.0.10"));
        serde_json::to_vec(&create(&svc)).unwrap()
    };
    let huge_bomb = |i: usize| {
        let ports: Vec<serde_json::Value> = (0..250_000)
            .map(|p| json!({"port": 1 + p % 65535}))
            .collect();
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("huge{i}"), "namespace": "evil",
                         "annotations": {LB_IPS: "10.0.0.10"}},
            "spec": {"type": "LoadBalancer", "ports": ports},
        });
        serde_json::to_vec(&create(&svc)).unwrap()
    };
    let bodies: Vec<(bool, Vec<u8>)> = (0..3)
        .flat_map(|i| [(true, allowed_bomb(i)), (false, huge_bomb(i))])
        .collect();
    let done = Arc::new(AtomicUsize::new(0));
    let mut bombs = Vec::new();
    for (allowed, body) in bodies {
        let (client, addr, done) = (client.clone(), target.addr, done.clone());
        bombs.push(tokio::spawn(async move {
            let answer = post(&client, addr, body).await;
            (allowed, answer, done.fetch_add(1, Ordering::SeqCst))
        }));
    }
    // A legitimate admission meanwhile is answered before the bombs are done.
    let legit = patiently(legit_create(&client, target.addr, "default", "web")).await;
    let legit_done = done.load(Ordering::SeqCst);
    assert!(legit.is_some());
    let total = bombs.len();
    assert!(
        legit_done < total,
        "the legitimate admission waited for every bomb"
    );
    for bomb in bombs {
        let (allowed, answer, _) = patiently(bomb).await.unwrap();
        if allowed {
            // Pinned next to the reservation: no pair in common, so admitted (or held back by
            // the port quota), and never slow.
            assert!(answer.allowed(), "{}", answer.message());
        } else {
            assert!(!answer.allowed());
            assert!(
                answer.message().contains("distinct (port, protocol) pairs"),
                "{}",
                answer.message()
            );
        }
    }
    target.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Answers

#[tokio::test]
async fn answers_stay_small_whatever_the_review_carries() {
    let target = Target::start("10.0.0.0/26", Quotas::default(), Limits::default()).await;
    let client = target.client();
    // Large, yet under the body limit even where a review repeats it.
    let garbage = "x".repeat(1536 * 1024);
    // A huge UID: refused, not echoed.
    let mut review = create(&service("a", "b", &[(80, "TCP")], None));
    review["request"]["uid"] = json!(garbage);
    let answer = post(&client, target.addr, serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(answer.review["response"]["allowed"], false);
    assert!(
        answer.message().contains("request.uid"),
        "{}",
        answer.message()
    );
    // A huge garbage entry in the annotation, a huge name, a huge wrong apiVersion.
    let mut bodies = vec![
        create(&service("a", "b", &[(80, "TCP")], Some(&garbage))),
        create(&service("a", &garbage, &[(80, "TCP")], None)),
    ];
    let mut wrong = create(&service("a", "b", &[(80, "TCP")], None));
    wrong["request"]["object"]["apiVersion"] = json!(garbage);
    bodies.push(wrong);
    for review in bodies {
        let answer = post(&client, target.addr, serde_json::to_vec(&review).unwrap()).await;
        assert_eq!(answer.status, 200);
        assert!(!answer.allowed());
        assert!(answer.bytes <= MAX_ANSWER_BYTES, "{} bytes", answer.bytes);
    }
    // Two DNS names (two warnings) plus sharing: warnings stay few and short.
    let answer = post_create(
        &client,
        target.addr,
        ("a", "dns"),
        &[(80, "TCP")],
        Some(&format!("{}.example,b.example", "a".repeat(60))),
    )
    .await;
    assert!(answer.allowed());
    assert!(answer.warnings().len() <= MAX_WARNINGS);
    assert!(answer.warnings().iter().all(|w| w.len() <= 256));
    target.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Slowloris and the connection cap

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_reaped_and_do_not_block_admissions() {
    let limits = Limits {
        handshake_timeout: Duration::from_secs(1),
        first_request_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let target = Target::start("10.0.0.0/24", Quotas::default(), limits).await;
    let client = target.client();
    // Hundreds of idle connections: TCP only, TLS done but no request, half a request head.
    let mut idle: Vec<Box<dyn tokio::io::AsyncRead + Unpin + Send>> = Vec::new();
    for _ in 0..100 {
        idle.push(Box::new(TcpStream::connect(target.addr).await.unwrap()));
    }
    for i in 0..100 {
        let mut tls = tls_support_connect(&target).await;
        if i % 2 == 0 {
            tls.write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Len")
                .await
                .unwrap();
            tls.flush().await.unwrap();
        }
        idle.push(Box::new(tls));
    }
    // Legitimate admissions on new connections meanwhile.
    for i in 0..5 {
        let ip = patiently(legit_create(
            &client,
            target.addr,
            "default",
            &format!("web{i}"),
        ))
        .await;
        assert!(ip.is_some());
    }
    // Every idle connection is closed by the server (read ends), none left holding a slot.
    for mut conn in idle {
        let mut buf = [0u8; 256];
        loop {
            match patiently(tokio::io::AsyncReadExt::read(&mut conn, &mut buf)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {} // an alert or an error response on the way out
            }
        }
    }
    assert!(
        legit_create(&client, target.addr, "default", "after")
            .await
            .is_some()
    );
    target.stop().await;
}

/// A client that declares a body and never sends it (slowloris on the body) gets 408 once
/// `BODY_READ_TIMEOUT` has passed, and admissions on other connections go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_is_answered_408() {
    use kube_vip_webhook::webhook::BODY_READ_TIMEOUT;

    let target = Target::start("10.0.0.0/24", Quotas::default(), Limits::default()).await;
    let client = target.client();
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut tls = tls_support_connect(&target).await;
        tls.write_all(
            b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000000\r\n\r\n{\"apiVersion\":",
        )
        .await
        .unwrap();
        tls.flush().await.unwrap();
        stalled.push(tls);
    }
    let ip = patiently(legit_create(&client, target.addr, "default", "meanwhile")).await;
    assert!(ip.is_some());
    for tls in stalled {
        let head = response_head(tls).await;
        assert!(
            head.starts_with("HTTP/1.1 408"),
            "after {BODY_READ_TIMEOUT:?} without the body: {head}"
        );
    }
    target.stop().await;
}

/// Everything a request does ends within `REQUEST_TIMEOUT`. Stalled uploads take the whole body
/// budget; one more request waits for its share until they time out, then stalls too: it is
/// answered 503 at `REQUEST_TIMEOUT`, not 408 a full `BODY_READ_TIMEOUT` after it got its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_ends_within_the_request_timeout_whatever_it_waits_for() {
    use kube_vip_webhook::webhook::{
        BODY_LIMIT, BODY_READ_TIMEOUT, MAX_BODY_BYTES_IN_FLIGHT, REQUEST_TIMEOUT,
    };
    // The one left waiting gets its share after BODY_READ_TIMEOUT, and its own body read would
    // end BODY_READ_TIMEOUT later: past REQUEST_TIMEOUT.
    assert!(BODY_READ_TIMEOUT < REQUEST_TIMEOUT && REQUEST_TIMEOUT < 2 * BODY_READ_TIMEOUT);

    let target = Target::start("10.0.0.0/24", Quotas::default(), Limits::default()).await;
    let fill = MAX_BODY_BYTES_IN_FLIGHT / BODY_LIMIT;
    let mut stalled = Vec::new();
    // One more than the budget holds; whichever arrives last waits.
    for _ in 0..=fill {
        let mut tls = tls_support_connect(&target).await;
        let head = format!(
            "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {BODY_LIMIT}\r\n\r\n{{"
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        stalled.push(tls);
    }
    let heads = futures::future::join_all(stalled.into_iter().map(response_head)).await;
    let with = |status: &str| heads.iter().filter(|h| h.starts_with(status)).count();
    assert_eq!(
        (with("HTTP/1.1 408"), with("HTTP/1.1 503")),
        (fill, 1),
        "{heads:#?}"
    );
    target.stop().await;
}

/// The status line and headers of the answer on `tls` (empty if the server closes first).
async fn response_head(mut tls: tokio_rustls::client::TlsStream<TcpStream>) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match patiently(tls.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

async fn tls_support_connect(target: &Target) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls::pki_types::CertificateDer::pem_slice_iter(target.ca.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(target.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(tls_support::SERVER_NAME).unwrap();
    connector.connect(name, tcp).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_established_connections_keep_working() {
    let limits = Limits {
        max_connections: 8,
        first_request_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let target = Target::start("10.0.0.0/24", Quotas::default(), limits).await;
    // The apiserver's connection, established before the attack and kept alive (HTTP/2).
    let apiserver = tls_support::https_client_keepalive(&target.ca, target.addr);
    let first = post(
        &apiserver,
        target.addr,
        serde_json::to_vec(&create(&service("default", "a", &[(80, "TCP")], None))).unwrap(),
    )
    .await;
    assert!(first.address().is_some());
    // The attacker takes every other slot and more (the extra ones wait in the backlog).
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(target.addr).await.unwrap());
    }
    for i in 0..5 {
        let body = serde_json::to_vec(&create(&service(
            "default",
            &format!("b{i}"),
            &[(80, "TCP")],
            None,
        )))
        .unwrap();
        let answer = patiently(post(&apiserver, target.addr, body)).await;
        assert!(answer.address().is_some(), "{}", answer.review);
    }
    // Once the idle ones are reaped, new connections are served again.
    let fresh = target.client();
    assert!(
        patiently(legit_create(&fresh, target.addr, "default", "fresh"))
            .await
            .is_some()
    );
    drop(idle);
    target.stop().await;
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 stream flood

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_beyond_the_limit_are_refused() {
    let target = Target::start("10.0.0.0/24", Quotas::default(), Limits::default()).await;
    let mut conn = tls_support_connect(&target).await;
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    send(&mut conn, PREFACE).await;
    send(&mut conn, &frame(SETTINGS, 0, 0, &[])).await;
    // The server's settings come first: the stream limit and the small windows.
    let settings_frame = patiently(read_frame(&mut conn)).await.unwrap();
    assert_eq!(settings_frame.kind, SETTINGS);
    let advertised = settings(&settings_frame.payload);
    assert!(
        advertised.contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 32)),
        "{advertised:?}"
    );
    assert!(
        advertised.contains(&(SETTINGS_INITIAL_WINDOW_SIZE, 128 * 1024)),
        "{advertised:?}"
    );
    send(&mut conn, &frame(SETTINGS, ACK, 0, &[])).await;
    // 1000 requests opened at once, bodies never sent: ignoring the advertised limit.
    const STREAMS: u32 = 1000;
    let headers = hpack(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":path", "/mutate"),
        (":authority", "kube-vip-webhook.kube-system.svc"),
        ("content-type", "application/json"),
        ("content-length", "100"),
    ]);
    let mut flood = Vec::new();
    for i in 0..STREAMS {
        flood.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i, &headers));
    }
    send(&mut conn, &flood).await;
    // Legitimate admissions on another connection meanwhile.
    let client = target.client();
    assert!(
        patiently(legit_create(&client, target.addr, "default", "web"))
            .await
            .is_some()
    );
    // Streams past the limit are reset (REFUSED_STREAM), or the flooder is sent away (GOAWAY).
    let mut refused = 0;
    let goaway = loop {
        match patiently(read_frame(&mut conn)).await {
            Ok(f) if f.kind == RST_STREAM => {
                refused += 1;
                if refused >= STREAMS - 32 {
                    break false;
                }
            }
            Ok(f) if f.kind == GOAWAY => break true,
            Ok(_) => {}
            Err(_) => break true,
        }
    };
    assert!(goaway || refused >= STREAMS - 32, "refused {refused}");
    assert!(
        legit_create(&client, target.addr, "default", "after")
            .await
            .is_some()
    );
    target.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Oversized headers and silent HTTP/2 peers

/// A complete admission (it would reserve an address) whose head is over the limits: HTTP/1
/// beyond `H1_MAX_BUF`, HTTP/2 beyond `H2_MAX_HEADER_LIST`. Neither reaches the handler, and
/// the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_headers_are_refused_before_the_handler() {
    use kube_vip_webhook::server::{H1_MAX_BUF, H2_MAX_HEADER_LIST};
    use tokio::io::AsyncReadExt;

    let target = Target::start("10.0.0.0/24", Quotas::default(), Limits::default()).await;
    let review = serde_json::to_vec(&create(&service("default", "big", &[(80, "TCP")], None)))
        .expect("review JSON");

    // HTTP/1: one header larger than the whole read buffer.
    let mut h1 = tls_support_connect(&target).await;
    let pad = "a".repeat(H1_MAX_BUF + 1024);
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         X-Pad: {pad}\r\nContent-Length: {}\r\n\r\n",
        review.len()
    );
    // The server may close while we still write: only what it answers matters.
    let _ = h1.write_all(head.as_bytes()).await;
    let _ = h1.write_all(&review).await;
    let _ = h1.flush().await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match patiently(h1.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "a head over {H1_MAX_BUF} bytes: {text}"
    );
    assert_eq!(target.allocator.reservations(), 0, "the handler never ran");

    // HTTP/2: a header list over the limit (each entry counts name + value + 32 octets).
    let mut h2 = tls_support_connect(&target).await;
    send(&mut h2, PREFACE).await;
    send(&mut h2, &frame(SETTINGS, 0, 0, &[])).await;
    let mut list = vec![
        (":method", "POST".to_string()),
        (":scheme", "https".to_string()),
        (":path", "/mutate".to_string()),
        (":authority", "kube-vip-webhook.kube-system.svc".to_string()),
        ("content-type", "application/json".to_string()),
        ("content-length", review.len().to_string()),
    ];
    let value = "v".repeat(110);
    let names: Vec<String> = (0..120).map(|i| format!("x-pad-{i:03}")).collect();
    list.extend(names.iter().map(|n| (n.as_str(), value.clone())));
    let size: usize = list.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
    assert!(size > H2_MAX_HEADER_LIST as usize, "{size}");
    let pairs: Vec<(&str, &str)> = list.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let block = hpack(&pairs);
    assert!(block.len() <= 16_384, "fits one frame of the default size");
    send(&mut h2, &frame(HEADERS, END_HEADERS, 1, &block)).await;
    send(&mut h2, &frame(DATA, END_STREAM, 1, &review)).await;
    // Refused: a 431 response, a reset of the stream, or the connection sent away.
    let refused = loop {
        match patiently(read_frame(&mut h2)).await {
            Ok(f) if f.kind == HEADERS && f.stream == 1 => break is_status_431(&f.payload),
            Ok(f) if f.kind == RST_STREAM && f.stream == 1 => break true,
            Ok(f) if f.kind == GOAWAY => break true,
            Ok(f) if f.kind == DATA && f.stream == 1 => break false,
            Ok(_) => {}
            Err(_) => break true,
        }
    };
    assert!(refused, "a header list of {size} octets was served");
    assert_eq!(target.allocator.reservations(), 0, "the handler never ran");

    let client = target.client();
    assert!(
        patiently(legit_create(&client, target.addr, "default", "after"))
            .await
            .is_some()
    );
    target.stop().await;
}

/// Whether an HPACK block is `:status: 431` (indexed name, value plain or Huffman-coded, as
/// h2 sends it).
fn is_status_431(block: &[u8]) -> bool {
    const HUFFMAN_431: [u8; 3] = [0x69, 0x90, 0xff];
    let [first, len, value @ ..] = block else {
        return false;
    };
    // Literal without / never indexed (4-bit name index) or with incremental indexing (6-bit).
    let name = match first >> 4 {
        0 | 1 => first & 0x0f,
        4..=7 => first & 0x3f,
        _ => return false,
    };
    let (huffman, n) = (len & 0x80 != 0, usize::from(len & 0x7f));
    let Some(value) = value.get(..n) else {
        return false;
    };
    // Static table entries 8..=14 are `:status`.
    (8..=14).contains(&name) && value == if huffman { &HUFFMAN_431[..] } else { b"431" }
}

/// An HTTP/2 peer that stops answering PINGs (a vanished apiserver behind a half-open TCP
/// connection) is dropped after the keepalive interval and timeout, long before the idle or
/// first-request timeouts would close it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_peers_that_do_not_answer_pings_are_dropped() {
    let limits = Limits {
        h2_keepalive_interval: Duration::from_secs(1),
        h2_keepalive_timeout: Duration::from_secs(1),
        // Longer than PATIENCE: only the keepalive can close this connection within the test.
        first_request_timeout: 2 * PATIENCE,
        idle_timeout: 2 * PATIENCE,
        ..Limits::default()
    };
    let target = Target::start("10.0.0.0/24", Quotas::default(), limits).await;
    let mut conn = tls_support_connect(&target).await;
    send(&mut conn, PREFACE).await;
    send(&mut conn, &frame(SETTINGS, 0, 0, &[])).await;
    let mut pinged = false;
    let closed = loop {
        match patiently(read_frame(&mut conn)).await {
            Ok(f) if f.kind == SETTINGS && f.flags & ACK == 0 => {
                send(&mut conn, &frame(SETTINGS, ACK, 0, &[])).await;
            }
            // Never answered.
            Ok(f) if f.kind == PING && f.flags & ACK == 0 => pinged = true,
            Ok(f) if f.kind == GOAWAY => break true,
            Ok(_) => {}
            Err(_) => break true,
        }
    };
    assert!(pinged && closed, "pinged {pinged}, closed {closed}");
    target.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Flags

#[test]
fn out_of_range_limits_are_refused_by_the_command_line() {
    use clap::Parser;
    let parse = |extra: &[&str]| {
        let mut argv = vec!["kube-vip-webhook", "serve"];
        argv.extend_from_slice(extra);
        kube_vip_webhook::cli::Cli::try_parse_from(argv)
    };
    // `Instant + ttl` used to panic on a huge TTL.
    assert!(parse(&["--reservation-ttl-seconds", "18446744073709551615"]).is_err());
    assert!(parse(&["--reservation-ttl-seconds", "0"]).is_err());
    assert!(parse(&["--reservation-ttl-seconds", "3600"]).is_ok());
    assert!(parse(&["--max-reservations", "0"]).is_err());
    assert!(parse(&["--max-reservations-per-namespace", "0"]).is_err());
    assert!(
        parse(&["--client-allowed-names", "a"]).is_err(),
        "needs --client-ca-file"
    );
}

#[test]
fn reservations_with_huge_port_lists_cannot_starve_ordinary_ones() {
    use kube_vip_webhook::engine::{Options, Outcome};
    use kube_vip_webhook::service::{PortKey, Protocol, SvcInfo};
    use kube_vip_webhook::state::{Allocator, Confirm, Request};
    let a = Allocator::new(
        Options::default(),
        Confirm::ByCache {
            ttl: Duration::from_secs(30),
        },
        "kube-system/kubevip",
    );
    a.set_config(Some(kube_vip_webhook::config::Config::from_data(
        &[("cidr-global".to_string(), "10.0.0.0/16".to_string())].into(),
    )));
    let svc = |ns: &str, name: &str, ports: usize| SvcInfo {
        namespace: ns.into(),
        name: name.into(),
        load_balancer: true,
        ports: (1..=ports as i32)
            .map(|port| PortKey {
                port,
                protocol: Protocol::Tcp,
            })
            .collect(),
        ..Default::default()
    };
    let admit = |s: &SvcInfo, id: &str| {
        a.admit_review(
            Request {
                id,
                svc: s,
                old: None,
                dry_run: false,
            },
            std::time::Instant::now(),
        )
    };
    // Huge port lists, each in its own namespace, until the port budget refuses one.
    let mut refused = None;
    for i in 0..20 {
        let d = admit(&svc(&format!("big{i}"), "s", MAX_PORTS), &format!("big{i}"));
        if let Outcome::NoAddress(why) = d.outcome {
            refused = Some(why);
            break;
        }
    }
    let why = refused.expect("the port budget never refused");
    assert!(why.contains("(port, protocol) pairs"), "{why}");
    // Ordinary Services still get addresses.
    for i in 0..10 {
        let d = admit(&svc(&format!("team{i}"), "web", 4), &format!("small{i}"));
        assert!(
            matches!(d.outcome, Outcome::Allocated { .. }),
            "{:?}",
            d.outcome
        );
    }
}
