//! Cluster mode against the in-process fake apiserver, through a real `kube::Client`:
//! caches, readiness, the reconciler, wake-ups, faults, Events, leader election.

mod support;
#[path = "support/metrics.rs"]
mod support_metrics;
#[path = "support/monitoring.rs"]
mod support_monitoring;
#[path = "support/wait.rs"]
mod wait;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::Method;
use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::events::v1::Event;
use kube_vip_webhook::cli::ServeArgs;
use kube_vip_webhook::cli::{Cli, Command};
use kube_vip_webhook::pools::{VIPPool, VIPPoolSpec};
use kube_vip_webhook::serve::{Running, Stop};
use kube_vip_webhook::service::SvcInfo;
use kube_vip_webhook::state::Request;
use serde_json::json;
use support::fake_apiserver::{FakeApiServer, Matcher, ResourceDef};
use support_metrics::{sample, scrape, series_names};
use wait::eventually;

const ANNOTATION: &str = "kube-vip.io/loadbalancerIPs";
const FAST_LEASE: [&str; 8] = [
    "--lease-duration-seconds",
    "3",
    "--renew-deadline-seconds",
    "2",
    "--retry-period-seconds",
    "1",
    "--takeover-grace-seconds",
    "0",
];

fn provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

struct Cluster {
    fake: FakeApiServer,
    running: Running,
    _dir: tempfile::TempDir,
}

fn serve_args(dir: &std::path::Path, extra: &[&str]) -> ServeArgs {
    let tls = kube_vip_webhook::tls::generate_self_signed(
        &["localhost".into()],
        Duration::from_secs(3600),
    )
    .unwrap();
    std::fs::write(dir.join("tls.crt"), &tls.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &tls.key_pem).unwrap();
    let cert = dir.join("tls.crt").display().to_string();
    let key = dir.join("tls.key").display().to_string();
    let mut argv = vec![
        "kube-vip-webhook",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--default-ip-family",
        "IPv4",
        "--reservation-ttl-seconds",
        "5",
    ];
    if !extra.iter().any(|a| a.starts_with("--leader-elect")) {
        argv.push("--leader-elect=false");
    }
    // Fast elections: these tests are about who reconciles, not about the timing.
    argv.extend_from_slice(&FAST_LEASE);
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Serve(a) => *a,
        _ => unreachable!(),
    }
}

fn configmap(data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": "kubevip", "namespace": "kube-system"},
        "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()
    }))
    .unwrap()
}

fn lb(ns: &str, name: &str, port: i32, annotation: Option<&str>) -> Service {
    let mut v = json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": "LoadBalancer", "ports": [{"port": port, "protocol": "TCP"}]}
    });
    if let Some(a) = annotation {
        v["metadata"]["annotations"] = json!({ANNOTATION: a});
    }
    serde_json::from_value(v).unwrap()
}

/// A fake with the ConfigMap (two addresses) and the VIPPool resource served.
fn with_pool_objects() -> FakeApiServer {
    let fake = FakeApiServer::new();
    fake.insert(&configmap(&[("range-global", "10.0.0.1-10.0.0.2")]))
        .unwrap();
    fake.register_resource(
        ResourceDef::new("lb.kube-vip.io", "v1alpha1", "vippools", "VIPPool", false)
            .with_status(None),
    );
    fake
}

async fn start(fake: FakeApiServer, extra: &[&str]) -> Cluster {
    provider();
    let dir = tempfile::tempdir().unwrap();
    let args = serve_args(dir.path(), extra);
    let running = kube_vip_webhook::cluster::start_with_client(
        args.cluster_settings().unwrap(),
        fake.client(),
        Stop::default(),
    )
    .await
    .unwrap();
    Cluster {
        fake,
        running,
        _dir: dir,
    }
}

fn annotation_of(fake: &FakeApiServer, ns: &str, name: &str) -> Option<String> {
    fake.get::<Service>(Some(ns), name)?
        .metadata
        .annotations?
        .get(ANNOTATION)
        .cloned()
}

async fn ready(c: &Cluster) {
    eventually("readiness", || async {
        c.running.readiness.is_ready().then_some(())
    })
    .await;
}

fn events(fake: &FakeApiServer, ns: &str, reason: &str) -> Vec<Event> {
    fake.list::<Event>(Some(ns))
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_sync_then_ready_and_reconciler_annotates_bypassed_service() {
    let fake = FakeApiServer::new();
    fake.insert(&configmap(&[("cidr-global", "10.0.0.0/29")]))
        .unwrap();
    fake.insert(&lb("web", "existing", 80, Some("10.0.0.1")))
        .unwrap();
    // The first Service LISTs fail: not ready until the cache really synced.
    fake.fail_next(3, Matcher::any().verb("list").resource("services"), 500);
    let c = start(fake, &[]).await;
    assert!(!c.running.readiness.is_ready());
    ready(&c).await;
    assert_eq!(c.fake.pending_faults(), 0, "the failed LISTs were retried");
    // Admin port says the same.
    let body = reqwest::get(format!("http://{}/readyz", c.running.admin_addr))
        .await
        .unwrap();
    assert_eq!(body.status(), 200);
    let text = scrape(c.running.admin_addr).await;
    assert_eq!(sample(&text, "kube_vip_webhook_ready", &[]), Some(1.0));
    let loaded = sample(
        &text,
        "kube_vip_webhook_config_last_load_timestamp_seconds",
        &[],
    )
    .expect("config load time exported");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        loaded <= now && loaded > now - 600.0,
        "loaded at {loaded}, now {now}"
    );
    // The files route: the certificate serve_args wrote, valid for an hour.
    let pem = std::fs::read_to_string(c._dir.path().join("tls.crt")).unwrap();
    let not_after = kube_vip_webhook::tls::not_after(&pem)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(
        sample(
            &text,
            "kube_vip_webhook_serving_certificate_not_after_timestamp_seconds",
            &[]
        ),
        Some(not_after)
    );

    // Created while the webhook was bypassed: the reconciler annotates it.
    c.fake.insert(&lb("web", "bypassed", 80, None)).unwrap();
    let ip = eventually("reconciler annotation", || async {
        annotation_of(&c.fake, "web", "bypassed")
    })
    .await;
    assert_eq!(ip, "10.0.0.2", "10.0.0.1 is held by the existing Service");
    let svc = c.fake.get::<Service>(Some("web"), "bypassed").unwrap();
    assert_eq!(svc.metadata.labels.unwrap()["implementation"], "kube-vip");
    let ev = eventually("IPAllocated event", || async {
        events(&c.fake, "web", "IPAllocated").pop()
    })
    .await;
    assert!(ev.note.unwrap().contains("10.0.0.2 from pool cidr-global"));
    // The patch was guarded by resourceVersion (a JSON patch with a test op).
    assert!(
        c.fake
            .count_requests(&Matcher::any().verb("patch").resource("services"))
            >= 1
    );
}

/// The initial list feeds the used-address index without labels or the pool annotation (only
/// pool selection reads them, and the list holds every Service at once); the Services listed
/// without an address are still allocated by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_listed_at_start_are_allocated_by_their_labels_and_pool_annotation() {
    let fake = with_pool_objects();
    for (name, spec) in [
        (
            "web",
            json!({"addresses": ["10.5.0.1"], "priority": 10,
                   "serviceSelector": {"matchLabels": {"tier": "web"}}}),
        ),
        ("other", json!({"addresses": ["10.7.0.1"], "priority": 5})),
        ("named", json!({"addresses": ["10.6.0.1"], "priority": -1})),
    ] {
        let spec: VIPPoolSpec = serde_json::from_value(spec).unwrap();
        fake.insert(&VIPPool::new(name, spec)).unwrap();
    }
    let mut labelled = lb("p", "labelled", 80, None);
    labelled.metadata.labels = Some([("tier".to_string(), "web".to_string())].into());
    fake.insert(&labelled).unwrap();
    let mut named = lb("p", "named", 80, None);
    named.metadata.annotations =
        Some([("lb.kube-vip.io/pool".to_string(), "named".to_string())].into());
    fake.insert(&named).unwrap();
    let c = start(fake, &[]).await;
    ready(&c).await;
    for (name, want) in [("labelled", "10.5.0.1"), ("named", "10.6.0.1")] {
        let ip = eventually("reconciler annotation", || async {
            annotation_of(&c.fake, "p", name)
        })
        .await;
        assert_eq!(ip, want, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_service_is_woken_by_delete_and_by_pool_growth() {
    let fake = FakeApiServer::new();
    fake.insert(&configmap(&[("range-global", "10.0.0.1-10.0.0.1")]))
        .unwrap();
    fake.insert(&lb("a", "holder", 80, Some("10.0.0.1")))
        .unwrap();
    let c = start(fake, &[]).await;
    ready(&c).await;
    c.fake.insert(&lb("a", "waiting", 80, None)).unwrap();
    let ev = eventually("AllocationFailed", || async {
        events(&c.fake, "a", "AllocationFailed").pop()
    })
    .await;
    assert!(ev.note.unwrap().contains("exhausted"));
    assert_eq!(annotation_of(&c.fake, "a", "waiting"), None);
    let admin = c.running.admin_addr;
    let waiting = |n: f64| async move {
        (sample(
            &scrape(admin).await,
            "kube_vip_webhook_services_waiting",
            &[],
        ) == Some(n))
        .then_some(())
    };
    eventually("one Service waiting in /metrics", || waiting(1.0)).await;

    // Deleting the holder frees 10.0.0.1: the waiting Service is woken and gets it.
    c.fake.delete::<Service>(Some("a"), "holder").unwrap();
    let ip = eventually("woken by delete", || async {
        annotation_of(&c.fake, "a", "waiting")
    })
    .await;
    assert_eq!(ip, "10.0.0.1");
    eventually("no Service waiting in /metrics", || waiting(0.0)).await;

    // Another waiter; the pool grows.
    c.fake.insert(&lb("a", "second", 80, None)).unwrap();
    eventually("second waits", || async {
        events(&c.fake, "a", "AllocationFailed")
            .into_iter()
            .find(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("second"))
    })
    .await;
    c.fake
        .upsert(&configmap(&[("range-global", "10.0.0.1-10.0.0.2")]))
        .unwrap();
    let ip = eventually("woken by config", || async {
        annotation_of(&c.fake, "a", "second")
    })
    .await;
    assert_eq!(ip, "10.0.0.2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_change_frees_the_address_for_a_waiter() {
    let fake = FakeApiServer::new();
    fake.insert(&configmap(&[("range-global", "10.0.0.1-10.0.0.1")]))
        .unwrap();
    fake.insert(&lb("a", "holder", 80, Some("10.0.0.1")))
        .unwrap();
    let c = start(fake, &[]).await;
    ready(&c).await;
    c.fake.insert(&lb("a", "waiting", 80, None)).unwrap();
    eventually("waits", || async {
        events(&c.fake, "a", "AllocationFailed").pop()
    })
    .await;
    let mut holder = c.fake.get::<Service>(Some("a"), "holder").unwrap();
    holder.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    c.fake.upsert(&holder).unwrap();
    let ip = eventually("woken by type change", || async {
        annotation_of(&c.fake, "a", "waiting")
    })
    .await;
    assert_eq!(ip, "10.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_admissions_and_reconciler_never_duplicate() {
    let fake = FakeApiServer::new();
    fake.insert(&configmap(&[("cidr-global", "10.1.0.0/24")]))
        .unwrap();
    let c = Arc::new(start(fake, &[]).await);
    ready(&c).await;
    // 60 admissions (each then "created" in the apiserver with the admitted address, as the
    // apiserver would after our patch) race with 60 Services the webhook never saw.
    let mut tasks = Vec::new();
    for i in 0..60 {
        let c1 = c.clone();
        tasks.push(tokio::spawn(async move {
            let c = c1;
            let svc = lb("race", &format!("admitted-{i}"), 80, None);
            let info = SvcInfo::from_service(&svc);
            let d = c.running.allocator.admit(
                Request {
                    id: &format!("uid-{i}"),
                    svc: &info,
                    old: None,
                    dry_run: false,
                },
                Instant::now(),
            );
            let ip = d.outcome.ips()[0].to_string();
            c.fake
                .insert(&lb("race", &format!("admitted-{i}"), 80, Some(&ip)))
                .unwrap();
        }));
        let c2 = c.clone();
        tasks.push(tokio::spawn(async move {
            c2.fake
                .insert(&lb("race", &format!("bypassed-{i}"), 80, None))
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = eventually("all 120 annotated", || async {
        let ips: Vec<String> = c
            .fake
            .list::<Service>(Some("race"))
            .iter()
            .filter_map(|s| s.metadata.annotations.as_ref()?.get(ANNOTATION).cloned())
            .collect();
        (ips.len() == 120).then_some(ips)
    })
    .await;
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), 120, "duplicates: {all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watch_resumes_and_conflicts_are_retried() {
    let fake = FakeApiServer::new();
    fake.insert(&configmap(&[("cidr-global", "10.2.0.0/29")]))
        .unwrap();
    let c = start(fake, &[]).await;
    ready(&c).await;
    let watches_before = c.fake.watch_count();
    c.fake.hold_watches();
    c.fake.drop_watches();
    // Made while no watch is open: must not be lost.
    c.fake.insert(&lb("w", "while-down", 80, None)).unwrap();
    c.fake.release_watches();
    let ip = eventually("annotated after resume", || async {
        annotation_of(&c.fake, "w", "while-down")
    })
    .await;
    assert_eq!(ip, "10.2.0.1");
    assert!(
        c.fake.watch_count() > watches_before,
        "the watch was re-established"
    );

    // The next Service PATCH answers 409: retried, then succeeds.
    c.fake
        .fail_next(1, Matcher::any().verb("patch").resource("services"), 409);
    c.fake.insert(&lb("w", "conflicted", 80, None)).unwrap();
    let ip = eventually("annotated after 409", || async {
        annotation_of(&c.fake, "w", "conflicted")
    })
    .await;
    assert_eq!(ip, "10.2.0.2");
    assert_eq!(c.fake.pending_faults(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configmap_entries_raise_an_event_and_missing_configmap_is_not_created() {
    let fake = FakeApiServer::new();
    let c = start(fake, &[]).await;
    ready(&c).await;
    // Missing ConfigMap: reported, never created, Services get AllocationFailed.
    c.fake.insert(&lb("n", "s", 80, None)).unwrap();
    let ev = eventually("AllocationFailed without ConfigMap", || async {
        events(&c.fake, "n", "AllocationFailed").pop()
    })
    .await;
    assert!(ev.note.unwrap().contains("no address pool"));
    assert!(
        c.fake
            .get::<ConfigMap>(Some("kube-system"), "kubevip")
            .is_none()
    );
    assert_eq!(
        c.fake
            .count_requests(&Matcher::new(Method::POST, "/configmaps")),
        0
    );

    // Bad entries: a Warning Event on the ConfigMap naming them; the good entry works.
    c.fake
        .insert(&configmap(&[
            ("cidr-global", "10.3.0.0/30, 10.3.0.999/24"),
            ("cdir-typo", "x"),
        ]))
        .unwrap();
    let ev = eventually("InvalidConfiguration", || async {
        events(&c.fake, "kube-system", "InvalidConfiguration").pop()
    })
    .await;
    let note = ev.note.unwrap();
    assert!(
        note.contains("10.3.0.999/24") && note.contains("cdir-typo"),
        "{note}"
    );
    assert_eq!(ev.regarding.unwrap().name.as_deref(), Some("kubevip"));
    let ip = eventually("allocated after config appeared", || async {
        annotation_of(&c.fake, "n", "s")
    })
    .await;
    assert_eq!(ip, "10.3.0.1");

    // Other bad entries: the Event says what is wrong now (not folded into the first one's note).
    c.fake
        .upsert(&configmap(&[
            ("cidr-global", "10.3.0.0/30"),
            ("range-other", "10.3.1.9-10.3.1.1"),
        ]))
        .unwrap();
    eventually(
        "an InvalidConfiguration Event naming the new entry",
        || async {
            events(&c.fake, "kube-system", "InvalidConfiguration")
                .into_iter()
                .any(|ev| ev.note.is_some_and(|n| n.contains("range-other")))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_clash_gets_warning_events_and_is_not_moved() {
    let fake = FakeApiServer::new();
    fake.insert(&configmap(&[("cidr-global", "10.4.0.0/29")]))
        .unwrap();
    let c = start(fake, &[]).await;
    ready(&c).await;
    c.fake
        .insert(&lb("p", "one", 443, Some("10.4.0.5")))
        .unwrap();
    c.fake
        .insert(&lb("q", "two", 443, Some("10.4.0.5")))
        .unwrap();
    eventually("conflict events on both", || async {
        let a = events(&c.fake, "p", "AddressConflict");
        let b = events(&c.fake, "q", "AddressConflict");
        (!a.is_empty() && !b.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        annotation_of(&c.fake, "p", "one").as_deref(),
        Some("10.4.0.5")
    );
    assert_eq!(
        annotation_of(&c.fake, "q", "two").as_deref(),
        Some("10.4.0.5")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_reconciles_and_a_standby_takes_over() {
    let fake = FakeApiServer::new();
    fake.insert(&configmap(&[("cidr-global", "10.5.0.0/29")]))
        .unwrap();
    let a = start(
        fake.clone(),
        &["--leader-elect=true", "--pod-name", "replica-a"],
    )
    .await;
    eventually("a leads", || async {
        let l = fake.get::<Lease>(Some("kube-system"), "kube-vip-webhook")?;
        l.spec?
            .holder_identity?
            .starts_with("replica-a_")
            .then_some(())
    })
    .await;
    let b = start(
        fake.clone(),
        &["--leader-elect=true", "--pod-name", "replica-b"],
    )
    .await;
    ready(&a).await;
    ready(&b).await; // both serve admissions
    fake.insert(&lb("l", "first", 80, None)).unwrap();
    eventually("annotated by the leader", || async {
        annotation_of(&fake, "l", "first")
    })
    .await;
    // The Event is posted after the patch that annotates: wait for it, do not race it.
    eventually("IPAllocated recorded", || async {
        (!events(&fake, "l", "IPAllocated").is_empty()).then_some(())
    })
    .await;
    let reporters: HashSet<String> = events(&fake, "l", "IPAllocated")
        .into_iter()
        .filter_map(|e| e.reporting_instance)
        .collect();
    assert_eq!(reporters.len(), 1, "{reporters:?}");
    assert!(
        reporters.iter().all(|r| r.starts_with("replica-a_")),
        "{reporters:?}"
    );
    let leader = |text: &str| sample(text, "kube_vip_webhook_leader", &[]);
    let transitions = |text: &str| sample(text, "kube_vip_webhook_leader_transitions_total", &[]);
    let text = scrape(a.running.admin_addr).await;
    assert_eq!((leader(&text), transitions(&text)), (Some(1.0), Some(1.0)));
    let text = scrape(b.running.admin_addr).await;
    assert_eq!((leader(&text), transitions(&text)), (Some(0.0), Some(0.0)));

    // The leader shuts down and releases the lease: b takes over and reconciles.
    a.running.stop.shutdown.cancel();
    a.running.wait().await.unwrap();
    eventually("b leads", || async {
        let l = fake.get::<Lease>(Some("kube-system"), "kube-vip-webhook")?;
        l.spec?
            .holder_identity?
            .starts_with("replica-b_")
            .then_some(())
    })
    .await;
    let b_admin = b.running.admin_addr;
    eventually("b reports leading in /metrics", || async move {
        let text = scrape(b_admin).await;
        (leader(&text) == Some(1.0) && transitions(&text) == Some(1.0)).then_some(())
    })
    .await;
    fake.insert(&lb("l", "second", 80, None)).unwrap();
    eventually("annotated by the new leader", || async {
        annotation_of(&fake, "l", "second")
    })
    .await;
    drop(b);
}
/// Every metric the alerts and the dashboard (manifest/monitoring) read is exported by a real
/// cluster-mode process once each code path has run once: an admission, a reconcile, an Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_dashboard_use_is_exported() {
    use support_monitoring::{
        alerts, as_promql, dashboard, dashboard_queries, metric_names, rule_groups,
    };

    let fake = with_pool_objects();
    // A pool object with a reversed range (the schema cannot refuse it): the per-pool gauges.
    let spec: VIPPoolSpec = serde_json::from_value(json!({
        "addresses": ["10.1.0.9-10.1.0.1", "10.1.0.20-10.1.0.21"],
        "serviceSelector": {"matchLabels": {"pool": "bad"}}
    }))
    .unwrap();
    fake.insert(&VIPPool::new("bad", spec)).unwrap();
    let c = start(fake, &[]).await;
    ready(&c).await;
    c.fake.insert(&lb("m", "bypassed", 80, None)).unwrap();
    eventually("reconciled", || async {
        annotation_of(&c.fake, "m", "bypassed")
    })
    .await;
    eventually("IPAllocated event", || async {
        events(&c.fake, "m", "IPAllocated").pop()
    })
    .await;
    // One admission over HTTPS (the names, not the certificate, are under test here).
    let https = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u1", "operation": "CREATE", "namespace": "m", "name": "admitted",
            "kind": {"group": "", "version": "v1", "kind": "Service"},
            "resource": {"group": "", "version": "v1", "resource": "services"},
            "userInfo": {"username": "test"},
            "object": serde_json::to_value(lb("m", "admitted", 80, None)).unwrap()
        }
    });
    let status = https
        .post(format!("https://{}/mutate", c.running.webhook_addr))
        .json(&review)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);

    let text = scrape(c.running.admin_addr).await;
    assert_eq!(sample(&text, "kube_vip_webhook_vippools", &[]), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "kube_vip_webhook_vippool_invalid_entries",
            &[("pool", "vippool/bad")]
        ),
        Some(1.0),
        "{text}"
    );
    let exported = series_names(&text);
    let mut used = Vec::new();
    for (alert, rule) in alerts(&rule_groups()) {
        let expr = rule["expr"].as_str().unwrap_or_default().to_string();
        used.extend(metric_names(&expr).into_iter().map(|m| (m, alert.clone())));
    }
    for (panel, expr) in dashboard_queries(&dashboard()) {
        used.extend(
            metric_names(&as_promql(&expr))
                .into_iter()
                .map(|m| (m, panel.clone())),
        );
    }
    assert!(
        used.len() >= 20,
        "too few metric references found: {used:?}"
    );
    let missing: Vec<String> = used
        .iter()
        .filter(|(m, _)| !exported.contains(m))
        .map(|(m, by)| format!("{m} (used by {by})"))
        .collect();
    assert!(
        missing.is_empty(),
        "not in /metrics: {missing:#?}\nexported: {exported:#?}"
    );
}

/// The status writer's bounds: with more pools needing a status than one round may write, each
/// round writes at most `MAX_STATUS_WRITES_PER_ROUND`, rounds are `STATUS_INTERVAL` apart, and
/// the pools left over are written in later rounds (none is lost to the limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_status_writes_are_rate_limited_and_none_is_lost() {
    use kube_vip_webhook::cluster::pools::{MAX_STATUS_WRITES_PER_ROUND, STATUS_INTERVAL};

    let pools = MAX_STATUS_WRITES_PER_ROUND + 5; // two rounds
    let fake = with_pool_objects();
    let names: Vec<String> = (0..pools).map(|i| format!("pool-{i:03}")).collect();
    for (i, name) in names.iter().enumerate() {
        let spec: VIPPoolSpec =
            serde_json::from_value(json!({"addresses": [format!("10.9.{i}.0/30")]})).unwrap();
        fake.insert(&VIPPool::new(name, spec)).unwrap();
    }
    let c = start(fake, &[]).await;
    ready(&c).await;
    eventually("every pool to have a status", || async {
        names
            .iter()
            .all(|n| {
                c.fake
                    .get::<VIPPool>(None, n)
                    .and_then(|p| p.status?.ipv4)
                    .is_some()
            })
            .then_some(())
    })
    .await;
    let mut writes: Vec<Instant> = c
        .fake
        .request_log()
        .into_iter()
        .filter(|r| {
            r.verb.as_deref() == Some("patch")
                && r.resource.as_deref() == Some("vippools")
                && r.subresource.as_deref() == Some("status")
        })
        .map(|r| r.at)
        .collect();
    writes.sort();
    assert!(writes.len() >= pools, "{} writes", writes.len());
    // Lower bounds only (a slow machine spreads the writes further, never closer): the first
    // round ends with its limit, and the last write is at least one interval after the first.
    let first = writes[0];
    let in_first_half_interval = writes
        .iter()
        .filter(|t| t.duration_since(first) < STATUS_INTERVAL / 2)
        .count();
    assert!(
        in_first_half_interval <= MAX_STATUS_WRITES_PER_ROUND,
        "{in_first_half_interval} writes in the first round"
    );
    let spread = writes[writes.len() - 1].duration_since(first);
    assert!(
        spread >= STATUS_INTERVAL,
        "{pools} pools written within {spread:?}"
    );
    drop(c);
}

/// The big lists (Services, Nodes) are read in pages: never one response of every object, which
/// kube's client would buffer whole (twice) before decoding. kube-apiserver ignores `limit` for
/// lists at `resourceVersion=0` (the fake does too), so this also checks that we never send one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_nodes_are_listed_in_pages() {
    use k8s_openapi::api::core::v1::Node;
    use kube_vip_webhook::cluster::LIST_PAGE_SIZE;

    let many = 2 * LIST_PAGE_SIZE as usize + 1;
    let fake = FakeApiServer::new();
    fake.insert(&configmap(&[("cidr-global", "10.0.0.0/16")]))
        .unwrap();
    for i in 0..many {
        let ip = format!("10.0.{}.{}", i / 250, i % 250 + 1);
        fake.insert(&lb("p", &format!("s{i}"), 80, Some(&ip)))
            .unwrap();
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": format!("n{i}")},
            "status": {"addresses": [
                {"type": "InternalIP", "address": format!("10.9.{}.{}", i / 250, i % 250 + 1)}
            ]}
        }))
        .unwrap();
        fake.insert(&node).unwrap();
    }
    let c = start(fake, &[]).await;
    ready(&c).await;
    let largest = c.fake.largest_list_response();
    assert!(
        largest <= LIST_PAGE_SIZE as usize,
        "a LIST response carried {largest} objects ({many} Services and {many} Nodes stored)"
    );
}
