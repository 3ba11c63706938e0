//! Failover on a real kube-apiserver (envtest): three replicas of the real binary behind a
//! round-robin TCP proxy (what a Service does), the shipped registration pointing at the proxy,
//! and the leader killed (SIGKILL) or stopped (SIGTERM) in the middle of 300 concurrent creates;
//! and what idle replicas cost the apiserver.
//!
//! Skips unless `KUBEBUILDER_ASSETS` points at kube-apiserver and etcd.

#[path = "support/e2e.rs"]
mod e2e;
#[path = "support/envtest.rs"]
mod envtest;
#[path = "support/metrics.rs"]
mod metrics;
#[path = "support/reviews.rs"]
mod reviews;
#[path = "support/tcp_proxy.rs"]
mod tcp_proxy;
#[path = "support/wait.rs"]
mod wait;
#[path = "support/webhook_proc.rs"]
mod webhook_proc;

use std::collections::{HashMap, HashSet};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::{E2e, annotation, eventually, lb};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::ResourceExt;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use tcp_proxy::Proxy;
use webhook_proc::WebhookProc;

/// The shipped default (`--lease-duration-seconds`).
const LEASE_DURATION: Duration = Duration::from_secs(15);
const CREATES: usize = 300;
/// The leader is stopped once this many creates have been answered.
const STOP_AFTER: usize = 100;
/// Creates in flight at once.
const CONCURRENCY: usize = 10;

/// One failover at a time: the replicas, the apiserver and the test share two cores, and the
/// bounds below are about failover, not about CPU contention between two of them.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Ha {
    t: E2e,
    replicas: Vec<WebhookProc>,
    _proxy: Proxy,
}

async fn three_replicas(prefix: &str) -> Option<Ha> {
    let t = E2e::new(prefix).await?;
    // Two /24s: room for 300 Services.
    let (second, _) = t.cp.unique_pool();
    t.set_config(&[(&t.key("cidr"), &format!("{},{second}", t.pool))])
        .await;
    t.register().await;
    let mut replicas = Vec::new();
    for i in 0..3 {
        let pod = format!("{prefix}-{i}");
        let args = t.webhook_args_on(&pod, "127.0.0.1:0", &[]);
        replicas.push(WebhookProc::spawn(&pod, &args, &[]).await);
    }
    for r in &replicas {
        r.ready(e2e::PATIENCE).await;
    }
    let listen = format!("127.0.0.1:{}", t.port).parse().expect("addr");
    let proxy = Proxy::start(listen, replicas.iter().map(|r| r.webhook).collect()).await;
    t.wait_active().await;
    Some(Ha {
        t,
        replicas,
        _proxy: proxy,
    })
}

impl Ha {
    async fn holder(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.t.client.clone(), &self.t.ns);
        leases
            .get_opt("kube-vip-webhook")
            .await
            .ok()??
            .spec?
            .holder_identity
            .filter(|h| !h.is_empty())
    }

    /// Index of the replica holding the Lease (identity = pod name + `_` + nonce).
    async fn leader(&self) -> usize {
        let holder = eventually("a leader", || self.holder()).await;
        self.replicas
            .iter()
            .position(|r| holder.starts_with(&format!("{}_", r.name)))
            .unwrap_or_else(|| panic!("holder {holder} is none of the replicas"))
    }

    /// 300 creates, 10 at a time (so most of them really come after the stop); `stop` runs once
    /// STOP_AFTER have been answered. Every create must be admitted. Returns when `stop` ran.
    async fn creates_with_a_stop_in_the_middle(&self, stop: impl FnOnce()) -> Instant {
        use futures::StreamExt;
        let answered = Arc::new(AtomicUsize::new(0));
        let api = self.t.services();
        let creates = futures::stream::iter(0..CREATES)
            .map(|i| {
                let (api, answered) = (api.clone(), answered.clone());
                async move {
                    let r = api
                        .create(&PostParams::default(), &lb(&format!("s{i}"), 80))
                        .await;
                    answered.fetch_add(1, Ordering::SeqCst);
                    r.map(|_| ())
                        .unwrap_or_else(|e| panic!("create s{i} must be admitted: {e}"));
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<()>>();
        let stopper = async {
            while answered.load(Ordering::SeqCst) < STOP_AFTER {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            stop();
            Instant::now()
        };
        let (_, stopped) = tokio::join!(creates, stopper);
        stopped
    }

    /// When the Lease first names a holder other than `first`. From a watch: polling the
    /// apiserver would add load to the very failover being timed.
    fn watch_handover(&self, first: String) -> tokio::task::JoinHandle<(String, Instant)> {
        let leases: Api<Lease> = Api::namespaced(self.t.client.clone(), &self.t.ns);
        let cfg = watcher::Config::default().fields("metadata.name=kube-vip-webhook");
        tokio::spawn(async move {
            let mut leases = std::pin::pin!(watcher(leases, cfg).applied_objects());
            loop {
                let lease = leases
                    .next()
                    .await
                    .expect("lease watch ended")
                    .expect("lease watch");
                if let Some(h) = lease.spec.and_then(|s| s.holder_identity)
                    && !h.is_empty()
                    && h != first
                {
                    return (h, Instant::now());
                }
            }
        })
    }

    /// When every Service first had an address. Follows a watch (no polling load on the
    /// catch-up being timed) and checks at every event that no address is held twice.
    async fn all_assigned(&self) -> Instant {
        let mut events = std::pin::pin!(watcher(self.t.services(), watcher::Config::default()));
        let (mut held, mut listing) = (HashMap::new(), HashMap::new());
        let deadline = tokio::time::Instant::now() + e2e::PATIENCE;
        loop {
            let event = tokio::time::timeout_at(deadline, events.next())
                .await
                .expect("every Service to have an address in time")
                .expect("service watch ended")
                .expect("service watch");
            match event {
                watcher::Event::Init => listing.clear(),
                watcher::Event::InitApply(svc) => {
                    listing.insert(svc.name_any(), annotation(&svc));
                }
                watcher::Event::InitDone => held = std::mem::take(&mut listing),
                watcher::Event::Apply(svc) => {
                    held.insert(svc.name_any(), annotation(&svc));
                }
                watcher::Event::Delete(svc) => {
                    held.remove(&svc.name_any());
                }
            }
            let mut by_ip: HashMap<&String, &String> = HashMap::new();
            for (name, ip) in held.iter().filter_map(|(n, ip)| Some((n, ip.as_ref()?))) {
                if let Some(other) = by_ip.insert(ip, name) {
                    panic!("{ip} is held by both {other} and {name}");
                }
            }
            if held.len() == CREATES && by_ip.len() == CREATES {
                return Instant::now();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_burst_every_service_gets_a_distinct_address() {
    let _serial = SERIAL.lock().await;
    let Some(mut ha) = three_replicas("ha-kill").await else {
        return;
    };
    let leader = ha.leader().await;
    let first = ha.holder().await;
    let handover = ha.watch_handover(first.clone().expect("holder"));
    let pid = ha.replicas[leader].pid().expect("running");
    let killed = ha
        .creates_with_a_stop_in_the_middle(|| {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        })
        .await;
    let done = ha.all_assigned().await;
    let took = done - killed;
    let (_, led) = handover.await.expect("handover watcher");
    eprintln!(
        "SIGKILL of the leader: a new leader {:?} after the kill, every Service had an address {took:?} after the kill",
        led - killed
    );
    assert!(
        took <= LEASE_DURATION + Duration::from_secs(3),
        "took {took:?} (lease duration {LEASE_DURATION:?} + 3 s)"
    );
    assert_ne!(ha.holder().await, first, "another replica leads");
    ha.replicas[leader].kill();
    for (i, r) in ha.replicas.iter().enumerate() {
        if i != leader {
            assert!(r.log_lines("panicked").is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_stopped_gracefully_hands_over_within_two_seconds() {
    let _serial = SERIAL.lock().await;
    let Some(mut ha) = three_replicas("ha-term").await else {
        return;
    };
    let leader = ha.leader().await;
    let first = ha.holder().await.expect("holder");
    let handover = ha.watch_handover(first);
    let stopping = ha
        .creates_with_a_stop_in_the_middle(|| ha.replicas[leader].terminate())
        .await;
    let (next, at) = handover.await.expect("handover watcher");
    let took = at - stopping;
    eprintln!("SIGTERM of the leader: {next} leads {took:?} later");
    assert!(took < Duration::from_secs(2), "handover took {took:?}");
    let done = ha.all_assigned().await;
    eprintln!(
        "SIGTERM of the leader: every Service had an address {:?} after it",
        done - stopping
    );
    let code = ha.replicas[leader].wait_exit(e2e::PATIENCE).await;
    assert_eq!(code, Some(0), "a clean exit after the graceful stop");
    let released: HashSet<_> = ha.replicas[leader]
        .log_lines("released the Lease")
        .into_iter()
        .collect();
    assert_eq!(released.len(), 1);
}

/// Anyone can set the forwarded marker: a follower that gets it decides nothing (it validates
/// only, reserves nothing, never forwards again); the leader honours it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_honours_the_forwarded_marker() {
    let _serial = SERIAL.lock().await;
    let Some(ha) = three_replicas("ha-marker").await else {
        return;
    };
    let leader = ha.leader().await;
    let ca = std::fs::read_to_string(ha.t.certs.path().join("ca.crt")).expect("CA");
    let http = reviews::client(&ca);
    let pending = |text: &str| metrics::sample(text, "kube_vip_webhook_reservations_pending", &[]);
    for (i, r) in ha.replicas.iter().enumerate() {
        let review = reviews::create(&format!("marked-{i}"), &ha.t.ns, &format!("m{i}"), false);
        let answer = reviews::send(&http, r.webhook, &review, true).await;
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        let reserved = pending(&r.metrics().await);
        if i == leader {
            assert!(
                reviews::address(&answer).is_some(),
                "the leader decides: {answer}"
            );
            assert_eq!(reserved, Some(1.0), "the leader holds the reservation");
        } else {
            assert_eq!(
                reviews::address(&answer),
                None,
                "a follower decided: {answer}"
            );
            assert_eq!(reserved, Some(0.0), "a follower reserved");
        }
    }
}

/// Writes per (verb, resource) the apiserver has served, from its own `/metrics`.
async fn apiserver_writes(client: &kube::Client) -> HashMap<(String, String), f64> {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = client.request_text(req).await.expect("apiserver /metrics");
    let mut writes = HashMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |name: &str| {
            let start = line.find(&format!("{name}=\""))? + name.len() + 2;
            let len = line[start..].find('"')?;
            Some(line[start..start + len].to_string())
        };
        let (Some(verb), Some(resource)) = (label("verb"), label("resource")) else {
            continue;
        };
        if !matches!(verb.as_str(), "POST" | "PUT" | "PATCH" | "DELETE" | "APPLY") {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *writes.entry((verb, resource)).or_default() += value;
    }
    writes
}

/// Three idle replicas cost the apiserver one Lease renewal per retry period and nothing else:
/// no Service, Event, ConfigMap, Secret, registration or pool writes, and no Lease churn (the
/// leader used to be woken by its own renewal and renew again at once, hundreds of times a
/// second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_replicas_write_only_their_lease_renewals() {
    /// The shipped default (`--retry-period-seconds`).
    const RETRY_PERIOD: Duration = Duration::from_secs(2);
    const WINDOW: Duration = Duration::from_secs(10);
    let _serial = SERIAL.lock().await;
    let Some(ha) = three_replicas("ha-idle").await else {
        return;
    };
    let _ = ha.leader().await;
    let leases: Api<Lease> = Api::namespaced(ha.t.client.clone(), &ha.t.ns);
    let cfg = watcher::Config::default().fields("metadata.name=kube-vip-webhook");
    let renewals = Arc::new(AtomicUsize::new(0));
    let counting = renewals.clone();
    let (listed_tx, listed) = tokio::sync::oneshot::channel();
    let watch = tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(leases, cfg));
        let mut listed_tx = Some(listed_tx);
        while let Some(ev) = events.next().await {
            match ev {
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = listed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(watcher::Event::Apply(_)) => {
                    counting.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
        }
    });
    listed.await.expect("Lease watch listed");
    let before = apiserver_writes(&ha.t.client).await;
    tokio::time::sleep(WINDOW).await;
    let after = apiserver_writes(&ha.t.client).await;
    let renewed = renewals.load(Ordering::SeqCst);
    watch.abort();
    let most = (WINDOW.as_secs() / RETRY_PERIOD.as_secs() + 1) as usize;
    assert!(
        (1..=most).contains(&renewed),
        "{renewed} changes of the Lease in {WINDOW:?} (one renewal per {RETRY_PERIOD:?})"
    );
    // Leases are left out: the apiserver renews its own identity Lease too.
    let ours = [
        "services",
        "events",
        "configmaps",
        "secrets",
        "mutatingwebhookconfigurations",
        "vippools",
    ];
    let written: Vec<_> = after
        .iter()
        .filter(|((_, resource), _)| ours.contains(&resource.as_str()))
        .filter(|(k, v)| **v > before.get(*k).copied().unwrap_or(0.0))
        .collect();
    assert!(written.is_empty(), "writes while idle: {written:?}");
}

/// An address given at admission costs the apiserver nothing beyond the create itself: no
/// reconciler patch, no Event, whichever replica the create reaches (followers forward).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admissions_cost_the_apiserver_no_write_beyond_the_create() {
    const SERVICES: usize = 50;
    /// Time for any write that would follow the creates (reconciler, Events) to show up.
    const AFTERMATH: Duration = Duration::from_secs(3);
    let _serial = SERIAL.lock().await;
    let Some(ha) = three_replicas("ha-cost").await else {
        return;
    };
    let _ = ha.leader().await;
    let before = apiserver_writes(&ha.t.client).await;
    for i in 0..SERVICES {
        let created =
            ha.t.services()
                .create(&PostParams::default(), &lb(&format!("c{i}"), 80))
                .await
                .expect("create");
        assert!(
            annotation(&created).is_some(),
            "c{i} created without an address"
        );
    }
    tokio::time::sleep(AFTERMATH).await;
    let after = apiserver_writes(&ha.t.client).await;
    let grew = |verb: &str, resource: &str| {
        let key = (verb.to_string(), resource.to_string());
        after.get(&key).copied().unwrap_or(0.0) - before.get(&key).copied().unwrap_or(0.0)
    };
    assert_eq!(grew("POST", "services"), SERVICES as f64);
    // Leases are renewals; the apiserver itself may touch its `default/kubernetes` endpoints.
    let extra: Vec<_> = after
        .keys()
        .filter(|(verb, resource)| {
            let expected = matches!(resource.as_str(), "leases" | "endpoints")
                || (verb == "POST" && resource == "services");
            !expected
        })
        .map(|(verb, resource)| (verb, resource, grew(verb, resource)))
        .filter(|(_, _, n)| *n > 0.0)
        .collect();
    assert!(extra.is_empty(), "writes besides the creates: {extra:?}");
}
