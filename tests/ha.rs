//! High availability against the fake apiserver, for what a real one cannot do on demand: a
//! leader cut off from the apiserver, a Service LIST that never answers.
//! (Failover with real processes, SIGKILL and SIGTERM, is in `e2e_ha.rs` on a real apiserver.)

#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;
#[path = "support/replica.rs"]
mod replica;
#[path = "support/reviews.rs"]
mod reviews;
#[path = "support/tls.rs"]
mod tls_support;
#[path = "support/wait.rs"]
mod wait;

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use fake_apiserver::{FakeApiServer, Matcher};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube_vip_webhook::serve::Running;
use serde_json::json;
use wait::{PATIENCE, eventually};

/// The pool ConfigMap and the holder-less Lease the manifests ship.
fn cluster() -> FakeApiServer {
    let fake = FakeApiServer::new();
    let data: BTreeMap<String, String> =
        BTreeMap::from([("cidr-global".into(), "10.9.0.0/24".into())]);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "kubevip", "namespace": "kube-system"}, "data": data
    }))
    .expect("configmap");
    fake.insert(&cm).expect("insert configmap");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "kube-vip-webhook", "namespace": "kube-system"}, "spec": {}
    }))
    .expect("lease");
    fake.insert(&lease).expect("insert lease");
    fake
}

fn holder(fake: &FakeApiServer) -> Option<String> {
    fake.get::<Lease>(Some("kube-system"), "kube-vip-webhook")?
        .spec?
        .holder_identity
}

/// Does the replica at `addr` allocate right now? A dry-run CREATE (reserves nothing) marked as
/// forwarded (so it is decided there or not at all, never passed on).
async fn allocates(client: &reqwest::Client, addr: std::net::SocketAddr) -> bool {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let review = reviews::create(&format!("probe-{n}"), "p", &format!("p{n}"), true);
    reviews::address(&reviews::send(client, addr, &review, true).await).is_some()
}

/// Replica `a` started with `flags`, once it leads and allocates.
async fn leader(
    fake: &FakeApiServer,
    certs: &replica::Certs,
    http: &reqwest::Client,
    flags: &[&str],
) -> Running {
    let a = replica::start(fake.client(), &replica::args(certs, "a", flags)).await;
    eventually("a to allocate", || async {
        allocates(http, a.webhook_addr).await.then_some(())
    })
    .await;
    a
}

/// Replica `a` leading and allocating, then replica `b` forwarding to it (both with `flags`).
async fn leader_and_follower(
    fake: &FakeApiServer,
    certs: &replica::Certs,
    http: &reqwest::Client,
    flags: &[&str],
) -> (Running, Running) {
    let a = leader(fake, certs, http, flags).await;
    let b = replica::start(fake.client(), &replica::args(certs, "b", flags)).await;
    eventually("b to forward to the leader", || async {
        // Unmarked, b forwards to a: the answer carries an address.
        let review = reviews::create("fwd", "p", "fwd", true);
        reviews::address(&reviews::send(http, b.webhook_addr, &review, false).await)
    })
    .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_apiserver_stops_allocating_before_another_takes_over() {
    let fake = cluster();
    let certs = replica::certs();
    let http = reviews::client(&certs.ca_pem);
    let (client_a, partition) = fake.partitionable_client();
    let a = replica::start(client_a, &replica::args(&certs, "a", &[])).await;
    eventually("a to allocate", || async {
        allocates(&http, a.webhook_addr).await.then_some(())
    })
    .await;
    let b = replica::start(fake.client(), &replica::args(&certs, "b", &[])).await;
    eventually("b to be ready", || async {
        b.readiness.is_ready().then_some(())
    })
    .await;
    assert!(!allocates(&http, b.webhook_addr).await, "b follows");

    // Every apiserver call of a now hangs: its renewals never return.
    partition.cut();
    let mut a_last = None;
    let started = Instant::now();
    let b_first = loop {
        let now = Instant::now();
        if allocates(&http, a.webhook_addr).await {
            a_last = Some(now);
        }
        if allocates(&http, b.webhook_addr).await {
            break Instant::now();
        }
        assert!(started.elapsed() < PATIENCE, "b never took over");
    };
    let a_last = a_last.expect("a allocated for a while after the cut (its term ran on)");
    assert!(
        a_last < b_first,
        "a allocated until {:?} after b started",
        a_last - b_first
    );
    for _ in 0..10 {
        assert!(
            !allocates(&http, a.webhook_addr).await,
            "a must not allocate again"
        );
    }
    assert!(
        holder(&fake).is_some_and(|h| h.starts_with("b_")),
        "{:?}",
        holder(&fake)
    );
    partition.heal();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_does_not_allocate_before_its_cache_has_synced() {
    let fake = cluster();
    let certs = replica::certs();
    let http = reviews::client(&certs.ca_pem);
    let (client_a, partition) = fake.partitionable_client();
    let _a = replica::start(client_a, &replica::args(&certs, "a", &[])).await;
    eventually("a to allocate", || async {
        allocates(&http, _a.webhook_addr).await.then_some(())
    })
    .await;
    let first = holder(&fake).expect("a holds the Lease");
    // a dies (nothing of it reaches the apiserver any more) and comes back as a new process
    // with the same pod name, whose Service LIST does not answer.
    partition.cut();
    fake.hang(Matcher::any().verb("list").resource("services"));
    let again = replica::start(fake.client(), &replica::args(&certs, "a", &[])).await;
    let second = eventually("the restarted process to take the Lease", || async {
        holder(&fake).filter(|h| *h != first)
    })
    .await;
    assert!(second.starts_with("a_"), "{second}");
    for _ in 0..20 {
        assert!(
            !allocates(&http, again.webhook_addr).await,
            "leads with an unsynced cache: must not allocate"
        );
    }
    assert!(!again.readiness.is_ready());
    fake.unhang();
    eventually("allocation once synced", || async {
        allocates(&http, again.webhook_addr).await.then_some(())
    })
    .await;
    partition.heal();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_honours_the_forwarded_marker() {
    let fake = cluster();
    let certs = replica::certs();
    let http = reviews::client(&certs.ca_pem);
    let (a, b) = leader_and_follower(&fake, &certs, &http, &[]).await;

    // Marked as forwarded, sent to the follower: validated only, nothing held anywhere.
    let review = reviews::create("marked", "f", "marked", false);
    let answer = reviews::send(&http, b.webhook_addr, &review, true).await;
    assert_eq!(reviews::address(&answer), None, "{answer}");
    assert_eq!(answer["response"]["allowed"], true);
    let warned = answer["response"]["warnings"].to_string();
    assert!(warned.contains("not the allocating leader"), "{warned}");
    assert_eq!(b.allocator.reservations(), 0);
    assert_eq!(a.allocator.reservations(), 0);

    // Unmarked, the follower forwards it and the leader holds the address.
    let review = reviews::create("unmarked", "f", "unmarked", false);
    let answer = reviews::send(&http, b.webhook_addr, &review, false).await;
    assert!(reviews::address(&answer).is_some(), "{answer}");
    assert_eq!(a.allocator.reservations(), 1);
    assert_eq!(b.allocator.reservations(), 0);
}

/// Two replicas answering admissions at once: the follower forwards to the leader, so one
/// allocator decides and no address is handed out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admissions_on_two_replicas_get_distinct_addresses() {
    let fake = cluster();
    let certs = replica::certs();
    let http = reviews::client(&certs.ca_pem);
    let (a, b) = leader_and_follower(&fake, &certs, &http, &[]).await;
    let answers = futures::future::join_all((0..80).map(|i| {
        let addr = if i % 2 == 0 {
            a.webhook_addr
        } else {
            b.webhook_addr
        };
        let (http, review) = (
            http.clone(),
            reviews::create(&format!("uid-{i}"), "f", &format!("s{i}"), false),
        );
        async move { reviews::address(&reviews::send(&http, addr, &review, false).await) }
    }))
    .await;
    let mut ips = HashSet::new();
    for (i, ip) in answers.into_iter().enumerate() {
        let ip = ip.unwrap_or_else(|| panic!("s{i} got no address"));
        assert!(ips.insert(ip.clone()), "{ip} handed out twice");
    }
    assert_eq!(ips.len(), 80);
    assert_eq!(
        a.allocator.reservations(),
        80,
        "the leader decided every admission"
    );
    assert_eq!(b.allocator.reservations(), 0, "the follower decided none");
}

/// With client certificates required (`--client-ca-file`, only the apiserver may call), replicas
/// present their serving certificate to each other: a follower still forwards and the leader
/// decides, so admissions through a follower keep getting their address at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_client_certificates_required_a_follower_still_forwards() {
    let fake = cluster();
    let certs = replica::certs();
    let (client_ca, cert, key) = tls_support::client_identity("kube-apiserver-webhook-client");
    let ca_file = certs.dir.path().join("client-ca.crt");
    std::fs::write(&ca_file, client_ca).expect("write client CA");
    let ca_file = ca_file.display().to_string();
    let flags = [
        "--client-ca-file",
        &ca_file,
        "--client-allowed-names",
        "kube-apiserver-webhook-client",
    ];
    let apiserver = reviews::client_with_identity(&certs.ca_pem, &cert, &key);
    let (a, b) = leader_and_follower(&fake, &certs, &apiserver, &flags).await;
    let review = reviews::create("through-b", "f", "through-b", false);
    let answer = reviews::send(&apiserver, b.webhook_addr, &review, false).await;
    assert!(reviews::address(&answer).is_some(), "{answer}");
    assert_eq!(a.allocator.reservations(), 1, "the leader decided");
    assert_eq!(b.allocator.reservations(), 0);
}

/// A follower whose idea of the leader is stale (its Lease watch lags) reads the Lease again when
/// forwarding fails and sends the review to the leader it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_forward_reads_the_lease_again_and_reaches_the_new_leader() {
    use kube_vip_webhook::forward::{Forwarder, Refresh};
    use kube_vip_webhook::leadership::Leadership;
    use kube_vip_webhook::tls::CaSource;

    let fake = cluster();
    let certs = replica::certs();
    let http = reviews::client(&certs.ca_pem);
    let a = leader(&fake, &certs, &http, &[]).await;
    // Nothing listens on this port once the listener is dropped: the stale leader is gone.
    let stale = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let forwarder = |fresh: Option<String>| {
        let leadership = Leadership::elected(None);
        leadership.follow(Some(stale.to_string()));
        let refresh: Refresh = std::sync::Arc::new(move || {
            let fresh = fresh.clone();
            Box::pin(async move { fresh })
        });
        Forwarder::new(
            leadership,
            CaSource::File(certs.dir.path().join("ca.crt")),
            "kube-vip-webhook.kube-system.svc".into(),
            Some(refresh),
            None,
        )
    };
    let review = serde_json::to_vec(&reviews::create("stale", "p", "stale", true)).expect("json");

    let answer = forwarder(Some(a.webhook_addr.to_string()))
        .forward(review.clone().into())
        .await
        .expect("forwarded to the leader the Lease names");
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("review answer");
    assert!(reviews::address(&answer).is_some(), "{answer}");

    // The Lease names the same dead address: the failure is reported, not retried forever.
    let err = forwarder(Some(stale.to_string()))
        .forward(review.into())
        .await
        .expect_err("nobody to forward to");
    assert!(err.to_string().contains(&stale.to_string()), "{err}");
}

/// The forwarder reads its CA file again when it changes (a CA rotation): a forward that fails
/// against the old CA succeeds with the same forwarder once the file holds the leader's CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_follows_a_rotated_ca_file() {
    use kube_vip_webhook::forward::Forwarder;
    use kube_vip_webhook::leadership::Leadership;
    use kube_vip_webhook::tls::CaSource;

    let fake = cluster();
    let certs = replica::certs();
    let http = reviews::client(&certs.ca_pem);
    let a = leader(&fake, &certs, &http, &[]).await;
    let foreign = replica::certs();
    let ca_file = foreign.dir.path().join("forwarder-ca.crt");
    std::fs::write(&ca_file, &foreign.ca_pem).expect("write CA");
    let leadership = Leadership::elected(None);
    leadership.follow(Some(a.webhook_addr.to_string()));
    let forwarder = Forwarder::new(
        leadership,
        CaSource::File(ca_file.clone()),
        "kube-vip-webhook.kube-system.svc".into(),
        None,
        None,
    );
    let review = serde_json::to_vec(&reviews::create("rotate", "p", "r", true)).expect("json");

    let err = forwarder
        .forward(review.clone().into())
        .await
        .expect_err("the leader's certificate is not signed by the CA in the file");
    assert!(
        err.to_string().contains(&a.webhook_addr.to_string()),
        "{err}"
    );

    std::fs::write(&ca_file, &certs.ca_pem).expect("rotate CA");
    let answer = forwarder
        .forward(review.into())
        .await
        .expect("forwarded with the rotated CA");
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("review answer");
    assert!(reviews::address(&answer).is_some(), "{answer}");
}

/// A leader renews once per retry period: its own renewal, seen on the Lease watch, must not
/// wake it to renew again at once (that would write the Lease as fast as the apiserver answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_renews_once_per_retry_period() {
    let fake = cluster();
    let certs = replica::certs();
    let http = reviews::client(&certs.ca_pem);
    let _leading = leader(&fake, &certs, &http, &[]).await;
    let lease_writes = || {
        fake.count_requests(
            &Matcher::any()
                .resource("leases")
                .method(axum::http::Method::PUT),
        )
    };
    let before = lease_writes();
    let span = replica::RETRY_PERIOD * 4;
    tokio::time::sleep(span).await;
    let writes = lease_writes() - before;
    // One per retry period, and one more if a period boundary falls at each end of the span.
    assert!(writes <= 5, "{writes} Lease writes in {span:?}");
    assert!(writes >= 1, "the leader renewed");
}
