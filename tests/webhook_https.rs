//! Issue 3 end to end: the real `serve --standalone` server on ephemeral ports, driven over real
//! HTTPS (rustls client trusting the generated CA, HTTP/1.1 and HTTP/2) with AdmissionReviews as
//! the apiserver sends them. Every returned patch is applied to the sent object, as the apiserver
//! would, and the result is checked.

#[path = "support/standalone.rs"]
mod standalone;
#[path = "support/tls.rs"]
mod tls_support;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::Parser;
use ipnet::IpNet;
use kube_vip_webhook::cli::ServeArgs;
use kube_vip_webhook::cli::{Cli, Command};
use kube_vip_webhook::serve::{Running, Stop};
use kube_vip_webhook::webhook::BODY_LIMIT;
use reqwest::{Client, StatusCode, Version};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tempfile::TempDir;
use tls_support::Http;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous upper bound so a broken server fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(30);
const LB_IPS: &str = "kube-vip.io/loadbalancerIPs";

/// Pools of every test server. No `*-global` key, so namespace `nowhere` has no pool.
const CONFIGMAP: &str = r#"apiVersion: v1
kind: ConfigMap
metadata: {name: kubevip, namespace: kube-system}
data:
  cidr-default: 10.0.0.0/28
  range-small: 10.9.0.1-10.9.0.2
  cidr-big: 10.1.0.0/22
"#;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Harness

struct Server {
    running: Running,
    ca: String,
    h1: Client,
    h2: Client,
    _dir: TempDir,
}

impl Server {
    async fn start() -> Server {
        Server::start_with(CONFIGMAP, None, None).await
    }

    /// `serve --standalone` with `configmap` and optional `--services` content; with `tls`
    /// (certificate file, key file, CA PEM) serves those files instead of generating a certificate.
    async fn start_with(
        configmap: &str,
        services: Option<&str>,
        tls: Option<(&Path, &Path, &str)>,
    ) -> Server {
        Server::start_with_pools(configmap, services, None, tls).await
    }

    /// [`start_with`](Self::start_with) plus `--pools` content (VIPPool objects).
    async fn start_with_pools(
        configmap: &str,
        services: Option<&str>,
        pools: Option<&str>,
        tls: Option<(&Path, &Path, &str)>,
    ) -> Server {
        tls_support::install_provider();
        let dir = tempfile::tempdir().unwrap();
        let cm = dir.path().join("configmap.yaml");
        std::fs::write(&cm, configmap).unwrap();
        let certs = dir.path().join("certs");
        let mut argv = standalone::argv(&cm, &[]);
        if let Some(services) = services {
            let path = dir.path().join("services.yaml");
            std::fs::write(&path, services).unwrap();
            argv.extend(["--services".to_string(), path.to_str().unwrap().to_string()]);
        }
        if let Some(pools) = pools {
            let path = dir.path().join("pools.yaml");
            std::fs::write(&path, pools).unwrap();
            argv.extend(["--pools".to_string(), path.to_str().unwrap().to_string()]);
        }
        match tls {
            Some((cert, key, _)) => argv.extend([
                "--tls-cert-file".to_string(),
                cert.to_str().unwrap().to_string(),
                "--tls-key-file".to_string(),
                key.to_str().unwrap().to_string(),
            ]),
            None => argv.extend([
                "--cert-dir".to_string(),
                certs.to_str().unwrap().to_string(),
            ]),
        }
        let running = kube_vip_webhook::cli::start(&serve_args(&argv), Stop::default())
            .await
            .unwrap();
        let ca = match tls {
            Some((_, _, ca)) => ca.to_string(),
            None => {
                // The generated certificate lands where --cert-dir said.
                assert_eq!(running.cert_dir.as_deref(), Some(certs.as_path()));
                std::fs::read_to_string(certs.join("ca.crt")).unwrap()
            }
        };
        let h1 = client(&ca, running.webhook_addr, Http::One);
        let h2 = client(&ca, running.webhook_addr, Http::Two);
        Server {
            running,
            ca,
            h1,
            h2,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "https://localhost:{}{path}",
            self.running.webhook_addr.port()
        )
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_addr)
    }

    async fn post(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.h2
            .post(self.url("/mutate"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// POST a review and decode the answer (must be 200 with a v1 AdmissionReview).
    async fn admit(&self, review: &Value) -> Answer {
        answer_of(self.post(serde_json::to_vec(review).unwrap()).await).await
    }

    /// CREATE `svc`, check it was allocated, return the object the apiserver would store.
    async fn create(&self, svc: Value) -> (Value, IpAddr) {
        let answer = self.admit(&create(&svc)).await;
        assert!(answer.allowed(), "{}", answer.review);
        let stored = answer.apply(&svc);
        let ip = lb_ip(&stored).unwrap_or_else(|| panic!("no address: {}", answer.review));
        (stored, ip)
    }

    async fn stop(self) {
        self.running.stop.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.running.wait())
            .await
            .unwrap()
            .unwrap();
    }
}

fn serve_args(argv: &[String]) -> ServeArgs {
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Serve(args) => *args,
        _ => unreachable!(),
    }
}

/// A client trusting only `ca` that resolves `localhost` to the server. Connections are pooled:
/// HTTP/2 requests multiplex over one connection, HTTP/1.1 ones open as many as needed.
fn client(ca: &str, addr: SocketAddr, http: Http) -> Client {
    let builder = Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .timeout(PATIENCE);
    match http {
        Http::One => builder.http1_only(),
        // ALPN offers h2 and http/1.1; answers are checked to really be HTTP/2.
        Http::Two => builder,
    }
    .build()
    .unwrap()
}

/// A decoded webhook answer.
struct Answer {
    version: Version,
    review: Value,
}

async fn answer_of(resp: reqwest::Response) -> Answer {
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let version = resp.version();
    let review: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let answer = Answer { version, review };
    answer.check_shape();
    answer
}

impl Answer {
    fn response(&self) -> &Value {
        &self.review["response"]
    }

    /// What the apiserver requires of any answer.
    fn check_shape(&self) {
        assert!(self.response().is_object(), "{}", self.review);
        assert!(self.response()["allowed"].is_boolean(), "{}", self.review);
        assert!(self.response()["uid"].is_string(), "{}", self.review);
        assert!(self.review.get("request").is_none());
        // patch and patchType come together or not at all.
        assert_eq!(
            self.response().get("patch").is_some(),
            self.response().get("patchType").is_some(),
            "{}",
            self.review
        );
    }

    /// Shape of an answer to a well-formed v1 review.
    fn check_v1(&self, uid: &str) {
        assert_eq!(self.review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(self.review["kind"], "AdmissionReview");
        assert_eq!(self.response()["uid"], uid);
    }

    fn allowed(&self) -> bool {
        self.response()["allowed"].as_bool().unwrap()
    }

    fn uid(&self) -> &str {
        self.response()["uid"].as_str().unwrap()
    }

    fn message(&self) -> String {
        self.response()["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn warnings(&self) -> Vec<String> {
        self.response()["warnings"]
            .as_array()
            .map(|w| w.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }

    /// The JSON patch, decoded from base64 as the apiserver does.
    fn patch(&self) -> Option<json_patch::Patch> {
        let patch = self.response().get("patch")?;
        assert_eq!(self.response()["patchType"], "JSONPatch");
        let bytes = BASE64
            .decode(patch.as_str().expect("patch must be a base64 string"))
            .unwrap();
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    /// The object the apiserver would store: `sent` with the patch applied (must apply cleanly).
    fn apply(&self, sent: &Value) -> Value {
        let mut doc = sent.clone();
        if let Some(patch) = self.patch() {
            json_patch::patch(&mut doc, &patch)
                .unwrap_or_else(|e| panic!("patch does not apply: {e}\n{}", self.review));
        }
        doc
    }
}

// ---------------------------------------------------------------------------------------------
// Objects

fn service(namespace: &str, name: &str, ports: &[(i32, &str)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port, proto)| {
            json!({"name": format!("p{port}"), "port": port, "protocol": proto, "targetPort": port})
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
        "spec": {
            "type": "LoadBalancer",
            "ports": ports,
            "selector": {"app": name},
            "sessionAffinity": "None",
            "externalTrafficPolicy": "Cluster"
        },
        "status": {"loadBalancer": {}}
    })
}

fn with(mut obj: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let mut at = &mut obj;
    for token in parent.split('/').skip(1) {
        if at.get(token).is_none() {
            at[token] = json!({});
        }
        at = at.get_mut(token).unwrap();
    }
    at[key.replace("~1", "/")] = value;
    obj
}

fn without_annotation(mut obj: Value, key: &str) -> Value {
    obj["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove(key);
    obj
}

fn lb_ip(obj: &Value) -> Option<IpAddr> {
    obj["metadata"]["annotations"][LB_IPS]
        .as_str()
        .map(|s| s.parse().unwrap())
}

static UID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_uid() -> String {
    let n = UID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("00000000-0000-4000-8000-{n:012}")
}

/// An AdmissionReview as the apiserver sends it for core/v1 Services.
fn review_of(operation: &str, object: Option<&Value>, old: Option<&Value>, dry_run: bool) -> Value {
    let meta = &object.or(old).unwrap()["metadata"];
    let options_kind = match operation {
        "CREATE" => "CreateOptions",
        "UPDATE" => "UpdateOptions",
        _ => "DeleteOptions",
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": next_uid(),
            "kind": {"group": "", "version": "v1", "kind": "Service"},
            "resource": {"group": "", "version": "v1", "resource": "services"},
            "requestKind": {"group": "", "version": "v1", "kind": "Service"},
            "requestResource": {"group": "", "version": "v1", "resource": "services"},
            "name": meta["name"].as_str().unwrap_or(""),
            "namespace": meta["namespace"],
            "operation": operation,
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:authenticated"]},
            "object": object,
            "oldObject": old,
            "dryRun": dry_run,
            "options": {"kind": options_kind, "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

fn create(svc: &Value) -> Value {
    review_of("CREATE", Some(svc), None, false)
}

fn update(old: &Value, new: &Value) -> Value {
    review_of("UPDATE", Some(new), Some(old), false)
}

fn uid_of(review: &Value) -> &str {
    review["request"]["uid"].as_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// CREATE

#[tokio::test]
async fn create_gets_a_patch_that_applies_with_and_without_metadata_maps() {
    let server = Server::start().await;
    let pool = net("10.0.0.0/28");
    let mut seen = HashSet::new();

    // No annotations, no labels: both maps must be created by the patch.
    let bare = service("default", "bare", &[(80, "TCP")]);
    let review = create(&bare);
    let answer = server.admit(&review).await;
    answer.check_v1(uid_of(&review));
    assert!(answer.allowed());
    assert!(answer.warnings().is_empty(), "{}", answer.review);
    let stored = answer.apply(&bare);
    let ip = lb_ip(&stored).unwrap();
    assert!(pool.contains(&ip));
    assert_eq!(
        stored["metadata"]["labels"],
        json!({"implementation": "kube-vip"})
    );
    assert_eq!(
        stored["metadata"]["annotations"],
        json!({LB_IPS: ip.to_string()})
    );
    // Nothing else is touched; status never written.
    let mut back = stored.clone();
    back["metadata"].as_object_mut().unwrap().remove("labels");
    back["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    assert_eq!(back, bare);
    assert!(seen.insert(ip));

    // Existing maps: kept, ours added next to them.
    let dressed = with(
        with(
            service("default", "dressed", &[(443, "TCP")]),
            "/metadata/annotations",
            json!({"team": "web", "example.com/owner": "ops"}),
        ),
        "/metadata/labels",
        json!({"app": "dressed"}),
    );
    let review = create(&dressed);
    let answer = server.admit(&review).await;
    answer.check_v1(uid_of(&review));
    let stored = answer.apply(&dressed);
    let ip = lb_ip(&stored).unwrap();
    assert!(pool.contains(&ip) && seen.insert(ip), "{ip} reused");
    assert_eq!(
        stored["metadata"]["annotations"],
        json!({"team": "web", "example.com/owner": "ops", LB_IPS: ip.to_string()})
    );
    assert_eq!(
        stored["metadata"]["labels"],
        json!({"app": "dressed", "implementation": "kube-vip"})
    );

    // Empty annotations map, label already there: only the annotation is added.
    let labelled = with(
        with(
            service("default", "labelled", &[(80, "TCP")]),
            "/metadata/annotations",
            json!({}),
        ),
        "/metadata/labels",
        json!({"implementation": "kube-vip"}),
    );
    let answer = server.admit(&create(&labelled)).await;
    let ops = serde_json::to_value(answer.patch().unwrap()).unwrap();
    assert_eq!(ops.as_array().unwrap().len(), 1, "{ops}");
    assert_eq!(
        ops[0]["path"],
        "/metadata/annotations/kube-vip.io~1loadbalancerIPs"
    );
    let stored = answer.apply(&labelled);
    assert!(seen.insert(lb_ip(&stored).unwrap()));

    // generateName: no name at admission; still its own address.
    let mut generated = service("default", "", &[(80, "TCP")]);
    generated["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("name");
    generated["metadata"]["generateName"] = json!("gen-");
    let (_, ip) = server.create(generated).await;
    assert!(pool.contains(&ip) && seen.insert(ip));

    // Each address is held by exactly the Service it was given to.
    for ip in &seen {
        assert_eq!(server.running.allocator.holders_of(*ip).len(), 1, "{ip}");
    }
    assert_eq!(
        server.running.allocator.holders_of(lb_ip(&stored).unwrap()),
        ["default/labelled"]
    );
    server.stop().await;
}

#[tokio::test]
async fn spec_load_balancer_ip_is_copied_into_the_annotation() {
    let server = Server::start().await;
    let pinned = with(
        service("default", "pinned", &[(80, "TCP")]),
        "/spec/loadBalancerIP",
        json!("10.0.0.9"),
    );
    let answer = server.admit(&create(&pinned)).await;
    assert!(answer.allowed());
    let stored = answer.apply(&pinned);
    assert_eq!(lb_ip(&stored), Some("10.0.0.9".parse().unwrap()));
    assert_eq!(stored["spec"]["loadBalancerIP"], "10.0.0.9");
    // It counts as used: the next allocation never hands it out.
    assert_eq!(
        server
            .running
            .allocator
            .holders_of("10.0.0.9".parse().unwrap()),
        ["default/pinned"]
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// UPDATE (SPEC 4.6)

#[tokio::test]
async fn update_semantics() {
    let server = Server::start().await;
    let pool = net("10.0.0.0/28");
    let (web, ip1) = server
        .create(service("default", "web", &[(80, "TCP")]))
        .await;
    let (_other, ip2) = server
        .create(service("default", "other", &[(443, "TCP")]))
        .await;
    assert_ne!(ip1, ip2);

    // Unchanged address (an unrelated edit): allowed, no patch, no warning.
    let edited = with(web.clone(), "/metadata/labels/tier", json!("frontend"));
    let review = update(&web, &edited);
    let answer = server.admit(&review).await;
    answer.check_v1(uid_of(&review));
    assert!(answer.allowed());
    assert!(answer.patch().is_none(), "{}", answer.review);
    assert!(answer.warnings().is_empty(), "{}", answer.review);

    // Annotation removed: a fresh address, held by web.
    let removed = without_annotation(web.clone(), LB_IPS);
    let answer = server.admit(&update(&web, &removed)).await;
    assert!(answer.allowed());
    let web2 = answer.apply(&removed);
    let ip3 = lb_ip(&web2).unwrap();
    assert!(pool.contains(&ip3));
    assert_ne!(ip3, ip2);
    assert_eq!(server.running.allocator.holders_of(ip3), ["default/web"]);

    // Annotation changed to an address whose (port, protocol) clashes: denied, other named.
    let clashing = with(
        with(
            web2.clone(),
            "/metadata/annotations/kube-vip.io~1loadbalancerIPs",
            json!(ip2.to_string()),
        ),
        "/spec/ports",
        json!([{"port": 443, "protocol": "TCP", "targetPort": 443}]),
    );
    let review = update(&web2, &clashing);
    let answer = server.admit(&review).await;
    answer.check_v1(uid_of(&review));
    assert!(!answer.allowed());
    assert!(answer.patch().is_none());
    let message = answer.message();
    assert!(message.contains("default/other"), "{message}");
    assert!(message.contains(&ip2.to_string()), "{message}");
    assert!(message.contains("TCP/443"), "{message}");
    // The denial changed nothing.
    assert_eq!(server.running.allocator.holders_of(ip2), ["default/other"]);

    // Changed to an address shared without a port clash: admitted, with a warning naming the other.
    let sharing = with(
        web2.clone(),
        "/metadata/annotations/kube-vip.io~1loadbalancerIPs",
        json!(ip2.to_string()),
    );
    let answer = server.admit(&update(&web2, &sharing)).await;
    assert!(answer.allowed(), "{}", answer.review);
    assert!(answer.patch().is_none());
    assert!(
        answer
            .warnings()
            .iter()
            .any(|w| w.contains("default/other")),
        "{:?}",
        answer.warnings()
    );

    // Type changed to LoadBalancer: allocated.
    let mut cluster_ip = service("default", "db", &[(5432, "TCP")]);
    cluster_ip["spec"]["type"] = json!("ClusterIP");
    let answer = server.admit(&create(&cluster_ip)).await;
    assert!(
        answer.allowed() && answer.patch().is_none(),
        "{}",
        answer.review
    );
    let promoted = with(cluster_ip.clone(), "/spec/type", json!("LoadBalancer"));
    let answer = server.admit(&update(&cluster_ip, &promoted)).await;
    let db = answer.apply(&promoted);
    let ip4 = lb_ip(&db).unwrap();
    assert!(pool.contains(&ip4));
    assert_eq!(server.running.allocator.holders_of(ip4), ["default/db"]);
    assert_eq!(db["metadata"]["labels"]["implementation"], "kube-vip");

    // Type changed away from LoadBalancer: untouched.
    let demoted = with(db.clone(), "/spec/type", json!("NodePort"));
    let answer = server.admit(&update(&db, &demoted)).await;
    assert!(answer.allowed());
    assert!(answer.patch().is_none(), "{}", answer.review);
    assert!(answer.warnings().is_empty(), "{}", answer.review);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// dryRun (SPEC 4.7)

#[tokio::test]
async fn dry_run_gets_the_same_answer_and_reserves_nothing() {
    let server = Server::start().await;
    let allocator = server.running.allocator.clone();
    let svc = service("default", "web", &[(80, "TCP")]);
    let used = allocator.used_count();

    let dry = review_of("CREATE", Some(&svc), None, true);
    let answer = server.admit(&dry).await;
    answer.check_v1(uid_of(&dry));
    let dry_ip = lb_ip(&answer.apply(&svc)).unwrap();
    assert_eq!(allocator.used_count(), used);
    assert!(allocator.holders_of(dry_ip).is_empty());

    // A second dry run (another Service) is offered the same address: nothing was held.
    let other = service("default", "other", &[(80, "TCP")]);
    let answer = server
        .admit(&review_of("CREATE", Some(&other), None, true))
        .await;
    assert_eq!(lb_ip(&answer.apply(&other)), Some(dry_ip));

    // The real CREATE gets what the dry run announced; the next one gets another.
    let (_, real_ip) = server.create(svc).await;
    assert_eq!(real_ip, dry_ip);
    let (_, next) = server.create(other).await;
    assert_ne!(next, dry_ip);
    assert_eq!(allocator.used_count(), used + 2);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Concurrency (SPEC 4.2)

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_concurrent_creates_get_distinct_addresses() {
    let server = Arc::new(Server::start().await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500 {
        let server = server.clone();
        tasks.spawn(async move {
            let mut svc = service("big", &format!("svc-{i}"), &[(80, "TCP")]);
            if i % 10 == 0 {
                // generateName Services have no name at admission.
                svc["metadata"].as_object_mut().unwrap().remove("name");
                svc["metadata"]["generateName"] = json!(format!("gen-{i}-"));
            }
            let review = create(&svc);
            let client = if i % 2 == 0 { &server.h1 } else { &server.h2 };
            let resp = client
                .post(server.url("/mutate"))
                .json(&review)
                .send()
                .await
                .unwrap();
            let answer = answer_of(resp).await;
            answer.check_v1(uid_of(&review));
            (answer.version, lb_ip(&answer.apply(&svc)).unwrap())
        });
    }
    let mut ips = HashSet::new();
    let mut versions = HashSet::new();
    while let Some(done) = tasks.join_next().await {
        let (version, ip) = done.unwrap();
        assert!(net("10.1.0.0/22").contains(&ip), "{ip}");
        assert!(ips.insert(ip), "{ip} handed out twice");
        versions.insert(version);
    }
    assert_eq!(ips.len(), 500);
    assert_eq!(versions, HashSet::from([Version::HTTP_11, Version::HTTP_2]));
    let stats = server.running.allocator.pool_stats();
    let big = stats.iter().find(|s| s.pool == "cidr-big").unwrap();
    assert_eq!(big.used, 500);
    Arc::into_inner(server).unwrap().stop().await;
}

// ---------------------------------------------------------------------------------------------
// No address: warnings (SPEC 4.8)

#[tokio::test]
async fn exhausted_or_missing_pool_admits_with_a_warning() {
    let server = Server::start().await;
    for name in ["a", "b"] {
        let (_, ip) = server.create(service("small", name, &[(80, "TCP")])).await;
        assert!(net("10.9.0.0/30").contains(&ip));
    }
    let svc = service("small", "c", &[(80, "TCP")]);
    let review = create(&svc);
    let answer = server.admit(&review).await;
    answer.check_v1(uid_of(&review));
    assert!(answer.allowed());
    assert!(answer.patch().is_none(), "{}", answer.review);
    let warnings = answer.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("range-small") && w.contains("exhausted")),
        "{warnings:?}"
    );
    // kubectl prints warnings as one line each; the apiserver truncates beyond 256 characters.
    assert!(warnings.iter().all(|w| w.len() <= 256 && !w.contains('\n')));

    let answer = server
        .admit(&create(&service("nowhere", "web", &[(80, "TCP")])))
        .await;
    assert!(answer.allowed());
    assert!(answer.patch().is_none());
    let warnings = answer.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("no address pool") && w.contains("nowhere")),
        "{warnings:?}"
    );
    server.stop().await;
}

/// `--standalone --pools`: VIPPool objects from a file, tried before the ConfigMap's pools.
#[tokio::test]
async fn standalone_pool_objects_come_before_the_configmap() {
    let pools = r#"apiVersion: lb.kube-vip.io/v1alpha1
kind: VIPPool
metadata: {name: web}
spec:
  addresses: [10.7.0.0/29]
  exclude: [10.7.0.1]
  serviceSelector: {matchLabels: {tier: web}}
"#;
    let server = Server::start_with_pools(CONFIGMAP, None, Some(pools), None).await;
    let web = with(
        service("default", "web", &[(80, "TCP")]),
        "/metadata/labels",
        json!({"tier": "web"}),
    );
    let (_, ip) = server.create(web).await;
    assert_eq!(
        ip,
        "10.7.0.2".parse::<IpAddr>().unwrap(),
        "first address after the exclusion"
    );
    let (_, ip) = server
        .create(service("default", "plain", &[(80, "TCP")]))
        .await;
    assert!(
        net("10.0.0.0/28").contains(&ip),
        "{ip}: the ConfigMap's pool"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// --services FILE and requested addresses (SPEC 4.1, 4.4)

const EXISTING: &str = r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: ingress
    namespace: default
    annotations: {kube-vip.io/loadbalancerIPs: 10.0.0.1}
  spec:
    type: LoadBalancer
    ports: [{port: 443, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: legacy, namespace: other}
  spec:
    type: LoadBalancer
    loadBalancerIP: 10.0.0.2
    ports: [{port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: from-status, namespace: default}
  spec:
    type: LoadBalancer
    ports: [{port: 22, protocol: TCP}]
  status:
    loadBalancer:
      ingress: [{ip: 10.0.0.3}]
"#;

#[tokio::test]
async fn services_file_addresses_are_used_and_clashes_are_denied() {
    let server = Server::start_with(CONFIGMAP, Some(EXISTING), None).await;
    // .1 .2 .3 are taken (annotation, spec.loadBalancerIP in another namespace, status).
    let (_, ip) = server
        .create(service("default", "web", &[(80, "TCP")]))
        .await;
    assert_eq!(ip, "10.0.0.4".parse::<IpAddr>().unwrap());

    // Requested address on a clashing (port, protocol): denied, naming the other Service.
    let clash = with(
        service("default", "clash", &[(443, "TCP")]),
        "/metadata/annotations",
        json!({LB_IPS: "10.0.0.1"}),
    );
    let review = create(&clash);
    let answer = server.admit(&review).await;
    answer.check_v1(uid_of(&review));
    assert!(!answer.allowed());
    assert!(answer.patch().is_none());
    let message = answer.message();
    assert!(
        message.contains("default/ingress") && message.contains("10.0.0.1"),
        "{message}"
    );

    // Same through spec.loadBalancerIP, against a Service of another namespace.
    let pinned = with(
        service("default", "pinned", &[(8080, "TCP")]),
        "/spec/loadBalancerIP",
        json!("10.0.0.2"),
    );
    let answer = server.admit(&create(&pinned)).await;
    assert!(!answer.allowed());
    assert!(
        answer.message().contains("other/legacy"),
        "{}",
        answer.message()
    );

    // Same address, other protocol: that is sharing, admitted.
    let udp = with(
        service("default", "udp", &[(443, "UDP")]),
        "/metadata/annotations",
        json!({LB_IPS: "10.0.0.1"}),
    );
    let answer = server.admit(&create(&udp)).await;
    assert!(answer.allowed(), "{}", answer.review);
    let stored = answer.apply(&udp);
    assert_eq!(stored["metadata"]["annotations"][LB_IPS], "10.0.0.1");
    assert!(
        answer
            .warnings()
            .iter()
            .any(|w| w.contains("default/ingress")),
        "{:?}",
        answer.warnings()
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Bad input (SPEC 7)

#[tokio::test]
async fn bad_input_gets_the_documented_answers() {
    let server = Server::start().await;

    // Malformed JSON: 200, not allowed, an `invalid` status saying what is wrong.
    let answer = answer_of(
        server
            .post(r#"{"apiVersion": "admission.k8s.io/v1", "kind": "#)
            .await,
    )
    .await;
    assert!(!answer.allowed());
    assert_eq!(answer.response()["status"]["status"], "Failure");
    assert_eq!(answer.response()["status"]["reason"], "InvalidRequest");
    assert!(
        answer.message().contains("malformed AdmissionReview"),
        "{}",
        answer.message()
    );

    // Not even an object.
    let answer = answer_of(server.post("[1, 2, 3]").await).await;
    assert!(!answer.allowed());
    let answer = answer_of(server.post("").await).await;
    assert!(!answer.allowed());

    // A review of another kind: allowed untouched.
    let mut pod = create(&service("default", "pod", &[]));
    pod["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Pod"});
    pod["request"]["resource"] = json!({"group": "", "version": "v1", "resource": "pods"});
    pod["request"]["object"] = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "pod", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}]}]},
        "status": {"conditions": [{"type": "Ready", "status": "False"}]}
    });
    let answer = server.admit(&pod).await;
    answer.check_v1(uid_of(&pod));
    assert!(answer.allowed());
    assert!(answer.patch().is_none());

    // A Service of another group (not core/v1) is not ours either.
    let mut foreign = create(&service("default", "foreign", &[(80, "TCP")]));
    foreign["request"]["kind"]["group"] = json!("serving.knative.dev");
    let answer = server.admit(&foreign).await;
    assert!(
        answer.allowed() && answer.patch().is_none(),
        "{}",
        answer.review
    );

    // Missing request.
    let answer = server
        .admit(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}))
        .await;
    assert!(!answer.allowed());
    assert!(
        answer.message().contains("no request"),
        "{}",
        answer.message()
    );

    // Missing object on CREATE: invalid, uid echoed.
    let mut no_object = create(&service("default", "ghost", &[(80, "TCP")]));
    no_object["request"]
        .as_object_mut()
        .unwrap()
        .remove("object");
    let answer = server.admit(&no_object).await;
    assert!(!answer.allowed());
    assert_eq!(answer.uid(), uid_of(&no_object));
    assert!(
        answer.message().contains("no object"),
        "{}",
        answer.message()
    );

    // A Service object that does not decode (port is not a number): invalid, uid echoed.
    let mut bad_port = create(&service("default", "bad", &[(80, "TCP")]));
    bad_port["request"]["object"]["spec"]["ports"][0]["port"] = json!("eighty");
    let answer = server.admit(&bad_port).await;
    assert!(!answer.allowed());
    assert_eq!(answer.uid(), uid_of(&bad_port));
    assert!(
        answer.message().contains("malformed Service"),
        "{}",
        answer.message()
    );

    // DELETE and status subresource updates are allowed untouched.
    let svc = service("default", "gone", &[(80, "TCP")]);
    let delete = review_of("DELETE", None, Some(&svc), false);
    let answer = server.admit(&delete).await;
    answer.check_v1(uid_of(&delete));
    assert!(answer.allowed() && answer.patch().is_none());
    let mut status = update(&svc, &svc);
    status["request"]["subResource"] = json!("status");
    let answer = server.admit(&status).await;
    assert!(
        answer.allowed() && answer.patch().is_none(),
        "{}",
        answer.review
    );

    // A body at the limit is read (JSON whitespace padding); one byte more is refused with 413.
    let svc = service("default", "padded", &[(80, "TCP")]);
    let mut body = serde_json::to_vec(&create(&svc)).unwrap();
    body.resize(BODY_LIMIT, b' ');
    let answer = answer_of(server.post(body.clone()).await).await;
    assert!(lb_ip(&answer.apply(&svc)).is_some(), "{}", answer.review);
    body.push(b' ');
    assert_eq!(
        server.post(body).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // Wrong method, wrong path.
    let get = server.h1.get(server.url("/mutate")).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    let nowhere = server
        .h1
        .post(server.url("/validate"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(nowhere.status(), StatusCode::NOT_FOUND);
    let root = server.h2.get(server.url("/")).send().await.unwrap();
    assert_eq!(root.status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

/// Deterministic xorshift64*: reproducible garbage without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn garbage(rng: &mut Rng, valid: &[u8], i: usize) -> Vec<u8> {
    const TOKENS: [&[u8]; 12] = [
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b":",
        b",",
        b"null",
        b"\"request\"",
        b"-1e999",
        b"\\u0000",
        b"\"object\"",
    ];
    match i % 6 {
        // Truncated review.
        0 => valid[..rng.below(valid.len())].to_vec(),
        // A few bytes overwritten.
        1 => {
            let mut body = valid.to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(body.len());
                body[at] = rng.next() as u8;
            }
            body
        }
        // JSON-ish token soup.
        2 => (0..rng.below(200))
            .flat_map(|_| TOKENS[rng.below(TOKENS.len())].to_vec())
            .collect(),
        // Random bytes.
        3 => (0..rng.below(512)).map(|_| rng.next() as u8).collect(),
        // Deep nesting (serde_json's recursion limit must hold).
        4 => {
            let depth = 100 + rng.below(5000);
            let mut body = b"{\"request\":".to_vec();
            body.extend(std::iter::repeat_n(b'[', depth));
            body
        }
        // A well-formed review with a field of the wrong type.
        _ => {
            let mut review: Value = serde_json::from_slice(valid).unwrap();
            let fields = [
                "/request/uid",
                "/request/operation",
                "/request/object/metadata",
                "/request/object/spec/ports",
                "/request/object/spec/type",
                "/request/namespace",
                "/request/dryRun",
                "/request/kind",
            ];
            let field = fields[rng.below(fields.len())];
            let values = [
                json!(null),
                json!(7),
                json!("x"),
                json!([]),
                json!({}),
                json!(true),
            ];
            if let Some(slot) = review.pointer_mut(field) {
                *slot = values[rng.below(values.len())].clone();
            }
            serde_json::to_vec(&review).unwrap()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_breaks_the_server() {
    let server = Arc::new(Server::start().await);
    let valid = serde_json::to_vec(&create(&service("big", "fuzz", &[(80, "TCP")]))).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let bodies: Vec<Vec<u8>> = (0..360).map(|i| garbage(&mut rng, &valid, i)).collect();
    let (mut allowed, mut refused) = (0, 0);
    for chunk in bodies.chunks(40) {
        let mut tasks = tokio::task::JoinSet::new();
        for body in chunk.iter().cloned() {
            let server = server.clone();
            tasks.spawn(async move {
                let resp = server.post(body.clone()).await;
                let status = resp.status();
                (body, status, resp.bytes().await.unwrap())
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (body, status, answer) = done.unwrap();
            let sent = String::from_utf8_lossy(&body);
            assert_eq!(status, StatusCode::OK, "for body {sent:?}");
            let review: Value = serde_json::from_slice(&answer)
                .unwrap_or_else(|e| panic!("unparsable answer ({e}) for body {sent:?}"));
            let answer = Answer {
                version: Version::HTTP_2,
                review,
            };
            answer.check_shape();
            if answer.allowed() {
                allowed += 1;
            } else {
                refused += 1;
            }
        }
    }
    // Both kinds of answers were exercised (mostly invalid, some still decodable reviews).
    assert!(
        allowed > 0 && refused > 0,
        "{allowed} allowed, {refused} refused"
    );
    // Still allocating correctly: a fresh address, held by exactly that Service.
    let (_, ip) = server
        .create(service("default", "after", &[(80, "TCP")]))
        .await;
    assert!(net("10.0.0.0/28").contains(&ip));
    assert_eq!(server.running.allocator.holders_of(ip), ["default/after"]);
    let (_, ip2) = server
        .create(service("default", "after-2", &[(80, "TCP")]))
        .await;
    assert_ne!(ip, ip2);
    Arc::into_inner(server).unwrap().stop().await;
}

// ---------------------------------------------------------------------------------------------
// Admin port

/// Value of the sample of `name` whose labels include every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            return None;
        }
        let all = labels.iter().all(|(k, v)| {
            rest.split(',')
                .any(|pair| pair.trim_end_matches('}') == format!("{k}=\"{v}\""))
        });
        all.then(|| value.parse().unwrap())
    })
}

#[tokio::test]
async fn readyz_and_metrics_reflect_what_was_sent() {
    let server = Server::start().await;
    let http = Client::new();
    let get = |path: &str| http.get(server.admin(path)).send();
    let livez = get("/livez").await.unwrap();
    assert_eq!(livez.status(), StatusCode::OK);
    let readyz = get("/readyz").await.unwrap();
    assert_eq!(readyz.status(), StatusCode::OK);
    assert_eq!(readyz.text().await.unwrap(), "ready");

    // CREATE allocated x2, dry-run allocated x1, UPDATE requested x1, CREATE denied x1,
    // CREATE no_address x1, CREATE skipped x1 (a Pod), OTHER invalid x2.
    let (web, ip) = server
        .create(service("default", "web", &[(80, "TCP")]))
        .await;
    server
        .create(service("default", "api", &[(443, "TCP")]))
        .await;
    server
        .admit(&review_of(
            "CREATE",
            Some(&service("default", "dry", &[(80, "TCP")])),
            None,
            true,
        ))
        .await;
    let edited = with(web.clone(), "/metadata/labels/x", json!("y"));
    server.admit(&update(&web, &edited)).await;
    let clash = with(
        service("default", "clash", &[(80, "TCP")]),
        "/metadata/annotations",
        json!({LB_IPS: ip.to_string()}),
    );
    assert!(!server.admit(&create(&clash)).await.allowed());
    server
        .admit(&create(&service("nowhere", "x", &[(80, "TCP")])))
        .await;
    let mut pod = create(&service("default", "pod", &[]));
    pod["request"]["kind"]["kind"] = json!("Pod");
    server.admit(&pod).await;
    answer_of(server.post("not json").await).await;
    server
        .admit(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}))
        .await;

    let metrics = get("/metrics").await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = metrics.text().await.unwrap();
    let total = "kube_vip_webhook_admission_requests_total";
    for (operation, outcome, n) in [
        ("CREATE", "allocated", 3.0),
        ("UPDATE", "requested", 1.0),
        ("CREATE", "denied", 1.0),
        ("CREATE", "no_address", 1.0),
        ("CREATE", "skipped", 1.0),
        ("OTHER", "invalid", 2.0),
    ] {
        assert_eq!(
            sample(
                &text,
                total,
                &[("operation", operation), ("outcome", outcome)]
            ),
            Some(n),
            "{operation}/{outcome} in\n{text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            "kube_vip_webhook_admission_duration_seconds_count",
            &[("operation", "CREATE"), ("outcome", "allocated")]
        ),
        Some(3.0)
    );
    // Pool gauges: the dry run and the denial hold nothing.
    let pool = [("pool", "cidr-default"), ("family", "IPv4")];
    assert_eq!(
        sample(&text, "kube_vip_webhook_pool_addresses", &pool),
        Some(15.0)
    );
    assert_eq!(
        sample(&text, "kube_vip_webhook_pool_addresses_used", &pool),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "kube_vip_webhook_pool_addresses_free", &pool),
        Some(13.0)
    );
    let big = [("pool", "cidr-big"), ("family", "IPv4")];
    assert_eq!(
        sample(&text, "kube_vip_webhook_pool_addresses", &big),
        Some(1016.0)
    );
    assert_eq!(
        sample(&text, "kube_vip_webhook_config_present", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "kube_vip_webhook_config_errors", &[]),
        Some(0.0)
    );
    assert!(text.trim_end().ends_with("# EOF"));
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Certificate files (cert-manager rotation through `serve`)

#[tokio::test]
async fn replaced_certificate_files_reach_the_next_handshake() {
    tls_support::install_provider();
    let day = Duration::from_secs(24 * 3600);
    // `localhost` for the admission client, the Service name for the raw handshakes.
    let names = [
        "localhost".to_string(),
        tls_support::SERVER_NAME.to_string(),
    ];
    let first = kube_vip_webhook::tls::generate_self_signed(&names, day).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let server = Server::start_with(CONFIGMAP, None, Some((&cert, &key, &first.ca_cert_pem))).await;
    assert!(server.running.cert_dir.is_none());
    let addr = server.running.webhook_addr;
    let presented = tls_support::presented_cert(addr, &first.ca_cert_pem).await;
    assert_eq!(presented, tls_support::leaf_der(&first.cert_pem));
    // Admissions work with the files' certificate.
    let (_, ip) = server
        .create(service("default", "web", &[(80, "TCP")]))
        .await;
    assert!(net("10.0.0.0/28").contains(&ip));

    let second = kube_vip_webhook::tls::generate_self_signed(&names, day).unwrap();
    let (tmp_cert, tmp_key) = (dir.path().join("new.crt"), dir.path().join("new.key"));
    std::fs::write(&tmp_cert, &second.cert_pem).unwrap();
    std::fs::write(&tmp_key, &second.key_pem).unwrap();
    std::fs::rename(&tmp_key, &key).unwrap();
    std::fs::rename(&tmp_cert, &cert).unwrap();
    let want = tls_support::leaf_der(&second.cert_pem);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if tls_support::presented_cert(addr, &second.ca_cert_pem).await == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new certificate never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// SIGTERM drain

async fn connect_h1(addr: SocketAddr, ca: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Read until the end of an HTTP head; returns the head and whatever was read past it.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8(buf).unwrap(), rest);
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed inside a response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn shutdown_drains_an_in_flight_admission() {
    let server = Server::start().await;
    let (addr, admin) = (server.running.webhook_addr, server.running.admin_addr);
    let readiness = server.running.readiness.clone();
    let svc = service("default", "slow", &[(80, "TCP")]);
    let review = create(&svc);
    let body = serde_json::to_vec(&review).unwrap();

    // Head first, with `Expect: 100-continue`: the server answers `100 Continue` only once the
    // handler is reading the body, so the request is provably in flight before shutdown.
    let mut tls = connect_h1(addr, &server.ca).await;
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let (interim, rest) = read_head(&mut tls).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    assert!(rest.is_empty());

    // SIGTERM (the signal handler cancels this token; see tests/serving.rs).
    server.running.stop.shutdown.cancel();

    // Not ready while draining: the admin port still answers, with 503.
    let admin_client = Client::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let resp = admin_client
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(resp.text().await.unwrap(), "not ready");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never went 503"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!readiness.is_ready());
    let livez = admin_client
        .get(format!("http://{admin}/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(livez.status(), StatusCode::OK);
    // New webhook connections are refused once shutdown starts.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhook port still accepting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Trickle the body; the in-flight request completes normally.
    for part in body.chunks(body.len() / 5 + 1) {
        tls.write_all(part).await.unwrap();
        tls.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    let (head, mut rest) = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap();
    while rest.len() < length {
        let mut chunk = [0u8; 4096];
        let n = tls.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the body was complete");
        rest.extend_from_slice(&chunk[..n]);
    }
    let answer: Value = serde_json::from_slice(&rest[..length]).unwrap();
    assert_eq!(answer["response"]["uid"], uid_of(&review));
    let answer = Answer {
        version: Version::HTTP_11,
        review: answer,
    };
    assert!(net("10.0.0.0/28").contains(&lb_ip(&answer.apply(&svc)).unwrap()));

    // Then the process ends cleanly and the admin port closes.
    let Server { running, .. } = server;
    tokio::time::timeout(PATIENCE, running.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(admin).await.is_err());
}

#[tokio::test]
async fn standalone_without_configmap_is_a_clear_error() {
    let argv: Vec<String> = [
        "kube-vip-webhook",
        "serve",
        "--standalone",
        "--listen",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let err = kube_vip_webhook::cli::start(&serve_args(&argv), Stop::default())
        .await
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("--configmap"), "{err:#}");
}
