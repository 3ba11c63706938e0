//! The RBAC table (`support/api_calls.rs`, which `tests/manifests.rs` holds the manifests to)
//! against what the code really sends: each install route is run against the fake apiserver
//! through every path that talks to the API (ConfigMap watch, reconciler patch, Events, lease
//! create/renew/release, self-signed Secret create/update and `caBundle`
//! patch), and its request log must match the table both ways: every request is in the table,
//! and every table entry was requested.

#[path = "support/api_calls.rs"]
mod api_calls;
mod support;
#[path = "support/metrics.rs"]
mod support_metrics;
#[path = "support/wait.rs"]
mod wait;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use axum::http::Method;
use clap::Parser;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, ServiceReference, WebhookClientConfig,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::ObjectMeta;
use kube_vip_webhook::cli::ServeArgs;
use kube_vip_webhook::cli::{Cli, Command};
use kube_vip_webhook::pools::VIPPool;
use kube_vip_webhook::serve::Stop;
use serde_json::json;
use support::fake_apiserver::{FakeApiServer, Matcher, RequestRecord, ResourceDef};
use wait::eventually;

use api_calls::{ApiCall, At, CONFIG_MAP, NAME, NAMESPACE, SELF_SIGNED_SECRET, calls_for};

const ANNOTATION: &str = "kube-vip.io/loadbalancerIPs";
const POD: &str = "replica-0";
const SERVICE_DNS: &str = "kube-vip-webhook.kube-system.svc";

// ---------------------------------------------------------------------------------------------
// A logged request as RBAC sees it, and the comparison with the table.

/// What the apiserver authorises a request as.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Authz {
    verb: String,
    group: String,
    /// Plural, with `/subresource` when one was called (as RBAC rules name it).
    resource: String,
    namespace: Option<String>,
    /// From the URL or, for list/watch, from a `metadata.name` field selector.
    name: Option<String>,
}

impl fmt::Display for Authz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{} in {} on {}",
            self.verb,
            self.group,
            self.resource,
            self.namespace.as_deref().unwrap_or("(no namespace)"),
            self.name.as_deref().unwrap_or("(no name)")
        )
    }
}

/// Discovery and version paths carry no resource (and every authenticated user may read them).
fn is_discovery(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        parts.as_slice(),
        ["version"] | ["api"] | ["api", _] | ["apis"] | ["apis", _] | ["apis", _, _]
    ) || parts.first() == Some(&"openapi")
}

/// `%XX` and `+` decoding of one query value.
fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The name a list/watch is scoped to, as the apiserver's RequestInfo derives it: a field selector
/// requiring `metadata.name` to equal one value (`=` or `==`).
fn field_selector_name(query: Option<&str>) -> Option<String> {
    let selector = query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "fieldSelector")
        .map(|(_, v)| url_decode(v))?;
    selector.split(',').find_map(|term| {
        let (field, value) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .filter(|(f, _)| !f.ends_with('!'))?;
        (field.trim() == "metadata.name").then(|| value.trim().to_string())
    })
}

/// `Ok(None)` for discovery; `Err` for a request the fake could not place (unknown path).
fn authz_of(r: &RequestRecord) -> Result<Option<Authz>, String> {
    let Some(verb) = r.verb.clone() else {
        return if is_discovery(&r.path) {
            Ok(None)
        } else {
            Err(format!("unrecognised request {} {}", r.method, r.path))
        };
    };
    let resource = r.resource.clone().unwrap_or_default();
    let resource = match &r.subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource,
    };
    let name = match verb.as_str() {
        "list" | "watch" if r.name.is_none() => field_selector_name(r.query.as_deref()),
        _ => r.name.clone(),
    };
    Ok(Some(Authz {
        verb,
        group: r.group.clone().unwrap_or_default(),
        resource,
        namespace: r.namespace.clone(),
        name,
    }))
}

/// Is `a` one of the calls table entry `c` stands for?
fn covers(c: &ApiCall, a: &Authz) -> bool {
    let scope = match c.at {
        At::EveryNamespace => true,
        At::In(ns) => a.namespace.as_deref() == Some(ns),
        At::ClusterScoped => a.namespace.is_none(),
    };
    let name = match c.name {
        None => true,
        Some(n) => a.name.as_deref() == Some(n),
    };
    c.verb == a.verb && c.group == a.group && c.resource == a.resource && scope && name
}

/// The distinct calls in `log` with how often each was made, and every mismatch with `table`.
fn compare(table: &[ApiCall], log: &[RequestRecord]) -> (BTreeMap<Authz, usize>, Vec<String>) {
    let mut seen = BTreeMap::new();
    let mut problems = BTreeSet::new();
    let mut used = vec![false; table.len()];
    for r in log {
        match authz_of(r) {
            Err(e) => {
                problems.insert(e);
            }
            Ok(None) => {}
            Ok(Some(a)) => {
                let mut hit = false;
                for (i, c) in table.iter().enumerate() {
                    if covers(c, &a) {
                        used[i] = true;
                        hit = true;
                    }
                }
                if !hit {
                    problems.insert(format!("the code calls {a}, which API_CALLS lacks"));
                }
                *seen.entry(a).or_insert(0) += 1;
            }
        }
    }
    for (c, used) in table.iter().zip(used) {
        if !used {
            problems.insert(format!(
                "API_CALLS has {} {}/{} at {:?} name {:?}, which the code never called",
                c.verb, c.group, c.resource, c.at, c.name
            ));
        }
    }
    (seen, problems.into_iter().collect())
}

fn assert_table_matches(route: &str, log: &[RequestRecord]) {
    let (seen, problems) = compare(&calls_for(route), log);
    // The observed calls, for whoever reads the test output (`--nocapture`).
    println!("{route} route: {} requests", log.len());
    for (a, n) in &seen {
        println!("  {n:>4} x {a}");
    }
    assert!(
        problems.is_empty(),
        "{route} route: the request log and API_CALLS disagree:\n  {}",
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// Driving the real code.

fn provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn parse(argv: &[&str]) -> ServeArgs {
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Serve(a) => *a,
        _ => unreachable!(),
    }
}

const COMMON: [&str; 10] = [
    "kube-vip-webhook",
    "serve",
    "--listen",
    "127.0.0.1:0",
    "--admin-listen",
    "127.0.0.1:0",
    "--pod-name",
    POD,
    "--pod-ip",
    "127.0.0.1",
];

/// cert-manager route: certificate files mounted from the cert-manager Secret, leader election
/// on, no `--default-ip-family` (so the primary family is read from `default/kubernetes`).
fn files_route_args(dir: &Path) -> ServeArgs {
    let tls = kube_vip_webhook::tls::generate_self_signed(
        &[SERVICE_DNS.into()],
        Duration::from_secs(3600),
    )
    .unwrap();
    for (f, pem) in [
        ("ca.crt", &tls.ca_cert_pem),
        ("tls.crt", &tls.cert_pem),
        ("tls.key", &tls.key_pem),
    ] {
        std::fs::write(dir.join(f), pem).unwrap();
    }
    let p = |f: &str| dir.join(f).display().to_string();
    let (ca, cert, key) = (p("ca.crt"), p("tls.crt"), p("tls.key"));
    let mut argv = COMMON.to_vec();
    argv.extend([
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-file",
        &ca,
    ]);
    parse(&argv)
}

fn self_signed_args() -> ServeArgs {
    let mut argv = COMMON.to_vec();
    argv.push("--self-signed");
    parse(&argv)
}

fn configmap(data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": CONFIG_MAP, "namespace": NAMESPACE},
        "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()
    }))
    .unwrap()
}

fn lb(ns: &str, name: &str, annotation: Option<&str>) -> Service {
    let mut v = json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
    });
    if let Some(a) = annotation {
        v["metadata"]["annotations"] = json!({ANNOTATION: a});
    }
    serde_json::from_value(v).unwrap()
}

/// An object exactly as a manifest file ships it (the Lease, the empty Secret): the code finds
/// them in place, as after `kubectl apply -k`, and never needs `create`.
fn shipped<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn shipped_lease() -> k8s_openapi::api::coordination::v1::Lease {
    shipped("manifest/base/lease.yaml")
}

/// The Service the primary IP family is read from.
fn kubernetes_service() -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "spec": {"type": "ClusterIP", "ipFamilies": ["IPv4"], "ports": [{"port": 443, "protocol": "TCP"}]}
    }))
    .unwrap()
}

fn webhook_configuration() -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(NAME.to_string()),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: "loadbalancer-ips.kube-vip.io".to_string(),
            admission_review_versions: vec!["v1".to_string()],
            side_effects: "NoneOnDryRun".to_string(),
            client_config: WebhookClientConfig {
                service: Some(ServiceReference {
                    name: NAME.to_string(),
                    namespace: NAMESPACE.to_string(),
                    path: Some("/mutate".to_string()),
                    port: Some(443),
                }),
                ..WebhookClientConfig::default()
            },
            ..MutatingWebhook::default()
        }]),
    }
}

fn annotation_of(fake: &FakeApiServer, ns: &str, name: &str) -> Option<String> {
    fake.get::<Service>(Some(ns), name)?
        .metadata
        .annotations?
        .get(ANNOTATION)
        .cloned()
}

fn events(fake: &FakeApiServer, ns: &str, reason: &str) -> Vec<Event> {
    fake.list::<Event>(Some(ns))
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

fn lease_holder(fake: &FakeApiServer) -> Option<String> {
    fake.get::<Lease>(Some(NAMESPACE), NAME)?
        .spec?
        .holder_identity
}

fn ca_bundle(fake: &FakeApiServer) -> Option<Vec<u8>> {
    let config = fake.get::<MutatingWebhookConfiguration>(None, NAME)?;
    config
        .webhooks?
        .first()?
        .client_config
        .ca_bundle
        .clone()
        .map(|b| b.0)
}

/// One replica's whole life through every path that reaches the API, ending in a clean shutdown.
async fn exercise(fake: &FakeApiServer, args: &ServeArgs) {
    provider();
    fake.register_resource(
        ResourceDef::new("lb.kube-vip.io", "v1alpha1", "vippools", "VIPPool", false)
            .with_status(None),
    );
    // The address of the only pool is taken; the pools appear only later.
    fake.insert(&lb("apps", "holder", Some("10.0.0.1")))
        .unwrap();
    let stop = Stop::default();
    let running = kube_vip_webhook::cluster::start_with_client(
        args.cluster_settings().unwrap(),
        fake.client(),
        stop.clone(),
    )
    .await
    .unwrap();
    // Lease created by the first (and only) candidate; caches synced.
    eventually("lease acquired", || async {
        lease_holder(fake)?
            .starts_with(&format!("{POD}_"))
            .then_some(())
    })
    .await;
    eventually("ready", || async {
        running.readiness.is_ready().then_some(())
    })
    .await;

    // No ConfigMap: the reconciler cannot allocate and says so.
    fake.insert(&lb("apps", "waiting", None)).unwrap();
    let first = eventually("AllocationFailed without pools", || async {
        events(fake, "apps", "AllocationFailed").pop()
    })
    .await;
    assert!(
        first
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("no address pool"),
        "{first:?}"
    );
    assert!(first.series.is_none());

    // The ConfigMap appears with a bad entry (a Warning on the ConfigMap) and a pool whose one
    // address is held: the waiting Service is woken and fails again for another reason: a new
    // Event saying so (never a series PATCH, which would keep the first note).
    fake.insert(&configmap(&[
        ("range-global", "10.0.0.1-10.0.0.1"),
        ("cdir-typo", "x"),
    ]))
    .unwrap();
    let invalid = eventually("InvalidConfiguration", || async {
        events(fake, NAMESPACE, "InvalidConfiguration").pop()
    })
    .await;
    assert_eq!(
        invalid.regarding.and_then(|r| r.name).as_deref(),
        Some(CONFIG_MAP)
    );
    eventually("a second AllocationFailed with the new reason", || async {
        let evs = events(fake, "apps", "AllocationFailed");
        (evs.len() == 2 && evs.iter().all(|e| e.series.is_none())).then_some(())
    })
    .await;
    assert_eq!(
        fake.count_requests(&Matcher::any().method(Method::PATCH).resource("events")),
        0
    );

    // The address frees up: the reconciler patches the Service and reports it.
    fake.delete::<Service>(Some("apps"), "holder").unwrap();
    let ip = eventually("reconciler annotation", || async {
        annotation_of(fake, "apps", "waiting")
    })
    .await;
    assert_eq!(ip, "10.0.0.1");
    eventually("IPAllocated", || async {
        events(fake, "apps", "IPAllocated").pop()
    })
    .await;

    // A VIPPool appears (selecting no Service here): the leader writes its status.
    let pool = VIPPool::new(
        "rbac",
        serde_json::from_value(json!({
            "addresses": ["10.1.0.0/30"],
            "serviceSelector": {"matchLabels": {"never": "matches"}}
        }))
        .unwrap(),
    );
    fake.insert(&pool).unwrap();
    let status = eventually("VIPPool status written", || async {
        fake.get::<VIPPool>(None, "rbac")?.status
    })
    .await;
    assert_eq!(status.ipv4.map(|u| u.free), Some(3), "{status:?}");

    // The lease is renewed (an update of the Lease we hold).
    eventually("lease renewed", || async {
        let renewals = fake.count_requests(&Matcher::any().verb("update").resource("leases"));
        (renewals >= 1).then_some(())
    })
    .await;

    stop.shutdown.cancel();
    running.wait().await.unwrap();
    assert_eq!(
        lease_holder(fake),
        None,
        "the lease is released on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_manager_route_calls_exactly_the_table() {
    let fake = FakeApiServer::new();
    fake.insert(&kubernetes_service()).unwrap();
    fake.insert(&shipped_lease()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    exercise(&fake, &files_route_args(dir.path())).await;
    assert_table_matches("cert-manager", &fake.request_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_route_calls_exactly_the_table() {
    let fake = FakeApiServer::new();
    fake.insert(&kubernetes_service()).unwrap();
    fake.insert(&webhook_configuration()).unwrap();
    fake.insert(&shipped_lease()).unwrap();
    fake.insert(&shipped::<Secret>(
        "manifest/overlays/self-signed/secret.yaml",
    ))
    .unwrap();
    let args = self_signed_args();

    // First start: the shipped empty Secret is filled and the caBundle patched.
    exercise(&fake, &args).await;
    let created = fake
        .get::<Secret>(Some(NAMESPACE), SELF_SIGNED_SECRET)
        .expect("the Secret is there");
    assert!(
        created
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key("tls.crt")),
        "the Secret was filled"
    );
    let first_bundle = ca_bundle(&fake).expect("caBundle patched");

    // Restart over a damaged Secret: it is rewritten in place (update) with a new CA, which is
    // published again.
    let mut damaged = created.clone();
    damaged.data = None;
    fake.upsert(&damaged).unwrap();
    let stop = Stop::default();
    let running = kube_vip_webhook::cluster::start_with_client(
        args.cluster_settings().unwrap(),
        fake.client(),
        stop.clone(),
    )
    .await
    .unwrap();
    eventually("ready after restart", || async {
        running.readiness.is_ready().then_some(())
    })
    .await;
    eventually("lease re-acquired", || async {
        lease_holder(&fake)?
            .starts_with(&format!("{POD}_"))
            .then_some(())
    })
    .await;
    // The self-signed route exports the expiry of the certificate it serves (the Secret's).
    let secret = fake
        .get::<Secret>(Some(NAMESPACE), SELF_SIGNED_SECRET)
        .unwrap();
    let served = String::from_utf8(secret.data.unwrap()["tls.crt"].0.clone()).unwrap();
    let not_after = kube_vip_webhook::tls::not_after(&served)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let text = support_metrics::scrape(running.admin_addr).await;
    let name = "kube_vip_webhook_serving_certificate_not_after_timestamp_seconds";
    assert_eq!(support_metrics::sample(&text, name, &[]), Some(not_after));
    stop.shutdown.cancel();
    running.wait().await.unwrap();
    let rewritten = fake
        .get::<Secret>(Some(NAMESPACE), SELF_SIGNED_SECRET)
        .unwrap();
    assert!(rewritten.data.is_some_and(|d| d.contains_key("tls.crt")));
    let second_bundle = ca_bundle(&fake).unwrap();
    assert_ne!(first_bundle, second_bundle, "the new CA was published");

    assert_table_matches("self-signed", &fake.request_log());
}

// ---------------------------------------------------------------------------------------------
// The comparison itself can fail.

fn record(
    method: Method,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
    query: Option<&str>,
) -> RequestRecord {
    let path = match namespace {
        Some(ns) => format!("/api/v1/namespaces/{ns}/{resource}"),
        None => format!("/api/v1/{resource}"),
    };
    RequestRecord {
        method,
        path,
        query: query.map(str::to_string),
        content_type: None,
        verb: Some(verb.to_string()),
        group: Some(group.to_string()),
        version: Some("v1".to_string()),
        resource: Some(resource.to_string()),
        subresource: None,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        at: std::time::Instant::now(),
    }
}

#[test]
fn field_selector_names_are_read_like_the_apiserver_does() {
    assert_eq!(
        field_selector_name(Some("fieldSelector=metadata.name%3Dkubevip&watch=true")),
        Some("kubevip".to_string())
    );
    assert_eq!(
        field_selector_name(Some("limit=500&fieldSelector=metadata.name%3D%3Dkubevip")),
        Some("kubevip".to_string())
    );
    assert_eq!(
        field_selector_name(Some("fieldSelector=metadata.name%21%3Dkubevip")),
        None
    );
    assert_eq!(
        field_selector_name(Some("fieldSelector=metadata.namespace%3Dx")),
        None
    );
    assert_eq!(field_selector_name(None), None);
}

#[test]
fn comparison_reports_calls_missing_from_the_table_and_entries_never_called() {
    let table = calls_for("cert-manager");
    // A list of ConfigMaps scoped to another name than the table's is not covered; a GET of
    // Secrets is not in this route at all; nothing else was called.
    let log = vec![
        record(
            Method::GET,
            "list",
            "",
            "configmaps",
            Some(NAMESPACE),
            None,
            Some("fieldSelector=metadata.name%3Dother"),
        ),
        record(
            Method::GET,
            "get",
            "",
            "secrets",
            Some(NAMESPACE),
            Some(SELF_SIGNED_SECRET),
            None,
        ),
        RequestRecord {
            path: "/apis/coordination.k8s.io/v1".into(),
            verb: None,
            ..record(Method::GET, "", "", "", None, None, None)
        },
        RequestRecord {
            path: "/metrics".into(),
            verb: None,
            ..record(Method::GET, "", "", "", None, None, None)
        },
    ];
    let (_, problems) = compare(&table, &log);
    let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
    assert!(
        has("the code calls list /configmaps in kube-system on other"),
        "{problems:#?}"
    );
    assert!(
        has("the code calls get /secrets in kube-system on kube-vip-webhook-selfsigned"),
        "{problems:#?}"
    );
    assert!(has("unrecognised request GET /metrics"), "{problems:#?}");
    assert!(!has("coordination.k8s.io/v1"), "discovery is ignored");
    // Every entry of the route is reported as never called.
    let never = problems
        .iter()
        .filter(|p| p.contains("never called"))
        .count();
    assert_eq!(never, table.len(), "{problems:#?}");

    // And a log that makes exactly the table's calls passes.
    let exact: Vec<RequestRecord> = table
        .iter()
        .map(|c| {
            let namespace = match c.at {
                At::In(ns) => Some(ns),
                At::EveryNamespace => Some("anywhere"),
                At::ClusterScoped => None,
            };
            let (name, query) = match (c.verb, c.name) {
                ("list" | "watch", Some(n)) => {
                    (None, Some(format!("fieldSelector=metadata.name%3D{n}")))
                }
                (_, n) => (n, None),
            };
            record(
                Method::GET,
                c.verb,
                c.group,
                c.resource,
                namespace,
                name,
                query.as_deref(),
            )
        })
        .collect();
    let (seen, problems) = compare(&table, &exact);
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(seen.len(), table.len());
}
