//! Cluster mode against 100k LoadBalancer Services served by the fake apiserver: initial sync time,
//! memory of the caches, and how fast a watch event reaches the used-address index. The fake also
//! serves what cluster mode watches besides Services (200 Namespaces, 500 Nodes, the
//! `kubernetes` EndpointSlice, `cluster-info`, 10 VIPPools), so readiness waits for those too.
//!
//! Every measurement runs in a fresh process (this binary re-executes itself), so that nothing a
//! previous run allocated is still resident. Two setups:
//! * `separate`: the fake apiserver is another process, reached over TCP; this process holds only
//!   cluster mode, so its RSS is ours alone.
//! * `in-process`: the fake runs inside this process (`FakeApiServer::client()`); its store is
//!   subtracted by measuring RSS after loading it and before starting cluster mode. Buffers the
//!   fake allocates while serving the LIST are counted against us, so this is an upper bound.
//!
//! Two more, `standalone-yaml` and `standalone-json`, are `serve --standalone --services FILE` with
//! the same Services in a file as `kubectl get svc -A -o yaml|json` prints them (a `List`,
//! managedFields hidden as kubectl does by default): the memory of loading a large export, next to
//! cluster mode's.
//!
//! `cargo bench --bench cache_scale` prints the table; without `--bench` (as `cargo test --benches`
//! runs it) a small smoke run checks that sync and events work, without timing claims.

#[path = "../tests/support/fake_apiserver.rs"]
mod fake_apiserver;
#[path = "cache_scale/objects.rs"]
mod objects;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::PostParams;
use kube::core::GroupVersionResource;
use kube_vip_webhook::cli::ServeArgs;
use kube_vip_webhook::cli::{Cli, Command as CliCommand};
use kube_vip_webhook::serve::{Running, Stop};
use serde_json::{Value, json};

use fake_apiserver::{FakeApiServer, ResourceDef};

/// How long any wait may take before the run is declared failed (not a timing claim).
const GIVE_UP: Duration = Duration::from_secs(120);
const EVENTS: u64 = 20;
/// After readiness: let the leader's reconcile pass and the freeing of the list's buffers finish.
const SETTLE: Duration = Duration::from_secs(3);

fn rss_kib_of(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    rss_kib_of(&std::fs::read_to_string("/proc/self/status").unwrap_or_default()) * 1024
}

fn rss_of(pid: u32) -> u64 {
    rss_kib_of(&std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()) * 1024
}

/// CPU time of every thread of this process so far.
fn cpu() -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn services_gvr() -> GroupVersionResource {
    GroupVersionResource::gvr("", "v1", "services")
}

/// A fake apiserver holding the pool ConfigMap, `n` Services, and what cluster mode also watches:
/// the Namespaces, Nodes, the `kubernetes` EndpointSlice, `cluster-info` and VIPPools.
fn loaded_fake(n: u64) -> FakeApiServer {
    let fake = FakeApiServer::new();
    fake.register_resource(
        ResourceDef::new("lb.kube-vip.io", "v1alpha1", "vippools", "VIPPool", false)
            .with_status(None),
    );
    let configmaps = GroupVersionResource::gvr("", "v1", "configmaps");
    let insert = |gvr: &GroupVersionResource, v: Value| {
        fake.insert_value(gvr, v).expect("insert an object");
    };
    insert(&configmaps, objects::configmap());
    insert(&configmaps, objects::cluster_info());
    let discovery = GroupVersionResource::gvr("discovery.k8s.io", "v1", "endpointslices");
    insert(&discovery, objects::endpoint_slice());
    let namespaces = GroupVersionResource::gvr("", "v1", "namespaces");
    for i in 0..objects::NAMESPACES {
        insert(&namespaces, objects::namespace_object(i));
    }
    let nodes = GroupVersionResource::gvr("", "v1", "nodes");
    for i in 0..objects::NODES {
        insert(&nodes, objects::node(i));
    }
    let pools = GroupVersionResource::gvr("lb.kube-vip.io", "v1alpha1", "vippools");
    for i in 0..objects::POOLS {
        insert(&pools, objects::vippool(i));
    }
    let gvr = services_gvr();
    for i in 0..n {
        fake.insert_value(&gvr, objects::service(i, objects::address(i)))
            .expect("insert Service");
    }
    fake
}

/// The Services as `kubectl get svc -A -o yaml` writes them, streamed item by item (building
/// the whole `List` as one value first would need gigabytes here).
fn write_services_yaml(path: &std::path::Path, n: u64) {
    let file = std::fs::File::create(path).expect("create the Services file");
    let mut out = std::io::BufWriter::new(file);
    writeln!(out, "apiVersion: v1\nitems:").expect("write");
    for i in 0..n {
        let mut svc = objects::service(i, objects::address(i));
        if let Some(meta) = svc["metadata"].as_object_mut() {
            meta.remove("managedFields"); // kubectl hides them unless --show-managed-fields
        }
        let yaml = serde_yaml_ng::to_string(&svc).expect("YAML");
        for (j, line) in yaml.lines().enumerate() {
            let indent = if j == 0 { "- " } else { "  " };
            writeln!(out, "{indent}{line}").expect("write");
        }
    }
    writeln!(out, "kind: List\nmetadata:\n  resourceVersion: \"\"").expect("write");
    out.flush().expect("flush");
}

/// The same Services as `kubectl get svc -A -o json` writes them, streamed item by item.
fn write_services_json(path: &std::path::Path, n: u64) {
    let file = std::fs::File::create(path).expect("create the Services file");
    let mut out = std::io::BufWriter::new(file);
    write!(out, "{{\n    \"apiVersion\": \"v1\",\n    \"items\": [").expect("write");
    for i in 0..n {
        let mut svc = objects::service(i, objects::address(i));
        if let Some(meta) = svc["metadata"].as_object_mut() {
            meta.remove("managedFields");
        }
        if i > 0 {
            write!(out, ",").expect("write");
        }
        serde_json::to_writer_pretty(&mut out, &svc).expect("JSON");
    }
    writeln!(
        out,
        "],\n    \"kind\": \"List\",\n    \"metadata\": {{\"resourceVersion\": \"\"}}\n}}"
    )
    .expect("write");
    out.flush().expect("flush");
}

/// `--measure standalone-yaml|standalone-json N DIR`: `serve --standalone` loading
/// DIR/services.yaml or DIR/services.json.
async fn measure_standalone(n: u64, dir: &std::path::Path, file: &str) -> Value {
    let configmap = dir.join("configmap.yaml");
    std::fs::write(
        &configmap,
        serde_yaml_ng::to_string(&objects::configmap()).expect("YAML"),
    )
    .expect("write the ConfigMap");
    let (cm, services) = (
        configmap.display().to_string(),
        dir.join(file).display().to_string(),
    );
    let cert_dir = dir.join("certs").display().to_string();
    let argv = [
        "kube-vip-webhook",
        "serve",
        "--standalone",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--configmap",
        &cm,
        "--services",
        &services,
        "--cert-dir",
        &cert_dir,
    ];
    let args = match Cli::try_parse_from(argv).expect("serve flags").command {
        CliCommand::Serve(a) => *a,
        _ => unreachable!("serve was parsed"),
    };
    let before = rss();
    let cpu_before = cpu();
    let started = Instant::now();
    let running = kube_vip_webhook::cli::start(&args, Stop::default())
        .await
        .expect("standalone starts");
    let sync = started.elapsed();
    let cpu_sync = cpu().saturating_sub(cpu_before);
    let after_sync = rss();
    assert_eq!(
        running.allocator.used_count() as u64,
        n,
        "every address loaded"
    );
    tokio::time::sleep(if n >= 10_000 {
        SETTLE
    } else {
        Duration::from_millis(100)
    })
    .await;
    let settled = rss();
    running.stop.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), running.wait()).await;
    let mode = if file.ends_with(".json") {
        "standalone-json"
    } else {
        "standalone-yaml"
    };
    json!({
        "mode": mode, "n": n, "sync_s": sync.as_secs_f64(),
        "cpu_sync_s": cpu_sync.as_secs_f64(), "rss_before": before,
        "rss_after_sync": after_sync, "rss_settled": settled,
    })
}

fn serve_args(dir: &std::path::Path) -> ServeArgs {
    let tls = kube_vip_webhook::tls::generate_self_signed(
        &["localhost".into()],
        Duration::from_secs(3600),
    )
    .expect("certificate");
    std::fs::write(dir.join("tls.crt"), &tls.cert_pem).expect("write cert");
    std::fs::write(dir.join("tls.key"), &tls.key_pem).expect("write key");
    let cert = dir.join("tls.crt").display().to_string();
    let key = dir.join("tls.key").display().to_string();
    let argv = [
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
        "--pod-name",
        "bench-0",
    ];
    match Cli::try_parse_from(argv).expect("serve flags").command {
        CliCommand::Serve(a) => *a,
        _ => unreachable!("serve was parsed"),
    }
}

async fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < GIVE_UP, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    started.elapsed()
}

/// Start cluster mode on `client`, wait for readiness, then time watch events.
async fn measure_ours(
    client: kube::Client,
    n: u64,
    mut out: serde_json::Map<String, Value>,
) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = serve_args(dir.path());
    let before = rss();
    let cpu_before = cpu();
    let started = Instant::now();
    let running: Running = kube_vip_webhook::cluster::start_with_client(
        args.cluster_settings().expect("settings"),
        client.clone(),
        Stop::default(),
    )
    .await
    .expect("cluster mode starts");
    let readiness = running.readiness.clone();
    wait_for("readiness", || readiness.is_ready()).await;
    let sync = started.elapsed();
    let cpu_sync = cpu().saturating_sub(cpu_before);
    let after_sync = rss();
    // The other watches were served and read, not skipped as absent (a 404 counts as synced).
    assert_eq!(running.allocator.pools().len() as u64, objects::POOLS);
    let reserved = running.allocator.reserved_addresses().len() as u64;
    assert_eq!(
        reserved,
        objects::NODES + 2,
        "every Node's InternalIP, the API endpoint and the cluster-info server"
    );
    assert_eq!(
        running.allocator.used_count() as u64,
        n + reserved,
        "every Service's address is in the index (next to the reserved ones)"
    );
    // The smoke run (few Services) has nothing to settle.
    tokio::time::sleep(if n >= 10_000 {
        SETTLE
    } else {
        Duration::from_millis(100)
    })
    .await;
    let settled = rss();

    // Watch events: a new annotated Service created through the API, until the index holds it.
    let api: Api<Service> = Api::namespaced(client, "events");
    let mut latencies = Vec::new();
    for e in 0..EVENTS {
        let ip = objects::address(n + 1000 + e);
        let mut obj = objects::service(n + 1000 + e, ip);
        obj["metadata"]["namespace"] = json!("events");
        let svc: Service = serde_json::from_value(obj).expect("Service");
        let allocator = running.allocator.clone();
        let t = Instant::now();
        api.create(&PostParams::default(), &svc)
            .await
            .expect("create");
        while allocator.holders_of(ip).is_empty() {
            assert!(t.elapsed() < GIVE_UP, "the index never saw {ip}");
            tokio::task::yield_now().await;
        }
        latencies.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    running.stop.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), running.wait()).await;
    out.insert("n".into(), json!(n));
    out.insert("sync_s".into(), json!(sync.as_secs_f64()));
    out.insert("cpu_sync_s".into(), json!(cpu_sync.as_secs_f64()));
    out.insert("rss_before".into(), json!(before));
    out.insert("rss_after_sync".into(), json!(after_sync));
    out.insert("rss_settled".into(), json!(settled));
    out.insert(
        "event_p50_ms".into(),
        json!(ms(latencies[latencies.len() / 2])),
    );
    out.insert(
        "event_max_ms".into(),
        json!(ms(latencies[latencies.len() - 1])),
    );
    Value::Object(out)
}

/// `--measure separate N`: the fake in a child process, over TCP.
async fn measure_separate(n: u64) -> Value {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args(["--fake-apiserver", &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the fake apiserver process");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("child stdout"))
        .read_line(&mut line)
        .expect("fake apiserver address");
    let url = line
        .trim()
        .strip_prefix("READY ")
        .expect("READY <url>")
        .to_string();
    let config = kube::Config::new(url.parse().expect("url"));
    let client = kube::Client::try_from(config).expect("client");
    let mut out = serde_json::Map::new();
    out.insert("mode".into(), json!("separate"));
    let mut result = measure_ours(client, n, out).await;
    result["fake_rss"] = json!(rss_of(child.id()));
    drop(child.stdin.take()); // the fake exits when its stdin closes
    let _ = child.wait();
    result
}

/// `--measure in-process N`: the fake in this process.
async fn measure_in_process(n: u64) -> Value {
    let empty = rss();
    let fake = loaded_fake(n);
    let loaded = rss();
    let mut out = serde_json::Map::new();
    out.insert("mode".into(), json!("in-process"));
    out.insert("rss_empty".into(), json!(empty));
    out.insert("fake_rss".into(), json!(loaded.saturating_sub(empty)));
    let client = fake.client();
    let result = measure_ours(client, n, out).await;
    drop(fake);
    result
}

/// `--fake-apiserver N`: serve N Services over TCP until stdin closes.
fn fake_process(rt: &tokio::runtime::Runtime, n: u64) {
    let fake = loaded_fake(n);
    let tcp = rt.block_on(fake.serve_tcp()).expect("serve the fake");
    println!("READY {}", tcp.url());
    std::io::stdout().flush().expect("stdout");
    let mut sink = String::new();
    while std::io::stdin()
        .read_line(&mut sink)
        .map(|r| r > 0)
        .unwrap_or(false)
    {}
    drop(tcp);
}

/// Run one measurement in a fresh process and read its result line.
fn in_child(mode: &str, n: u64, dir: &std::path::Path) -> Value {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .args(["--measure", mode, &n.to_string()])
        .arg(dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("run the measurement");
    assert!(out.status.success(), "{mode} measurement failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("RESULT line");
    serde_json::from_str(line).expect("result JSON")
}

fn print_table(results: &[Value]) {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    println!();
    println!(
        "{:<15} {:>8} {:>8} {:>9} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10} {:>9}",
        "setup",
        "services",
        "sync s",
        "CPU s",
        "RSS MiB",
        "settled",
        "B/svc",
        "fake MiB",
        "event p50",
        "event max",
        "targets"
    );
    for r in results {
        let n = f(r, "n");
        let grown = f(r, "rss_after_sync") - f(r, "rss_before");
        let settled = f(r, "rss_settled") - f(r, "rss_before");
        let ok = mib(grown.max(settled) as u64) <= 150.0 && f(r, "sync_s") < 5.0;
        println!(
            "{:<15} {:>8.0} {:>8.2} {:>9.2} {:>10.1} {:>10.1} {:>9.0} {:>9.0} {:>8.1}ms {:>8.1}ms {:>9}",
            r["mode"].as_str().unwrap_or("?"),
            n,
            f(r, "sync_s"),
            f(r, "cpu_sync_s"),
            mib(grown as u64),
            mib(settled as u64),
            settled.max(grown) / n.max(1.0),
            mib(f(r, "fake_rss") as u64),
            f(r, "event_p50_ms"),
            f(r, "event_max_ms"),
            if ok { "met" } else { "MISSED" }
        );
    }
    println!(
        "RSS = growth of this process from before cluster mode starts to readiness (settled: {SETTLE:?} later); targets: RSS <= 150 MiB, sync < 5 s; \
         CPU = all threads of the measuring process during sync (in-process: the fake's too); \
         event = create through the API -> index holds the address ({EVENTS} events); \
         standalone-*: sync = loading the file, no fake and no events"
    );
    let rss_of_mode = |mode: &str| {
        results.iter().find(|r| r["mode"] == mode).map(|r| {
            (f(r, "rss_after_sync") - f(r, "rss_before"))
                .max(f(r, "rss_settled") - f(r, "rss_before"))
        })
    };
    for file in ["standalone-yaml", "standalone-json"] {
        if let (Some(f), Some(cluster)) = (rss_of_mode(file), rss_of_mode("separate")) {
            println!(
                "{file} / separate (RSS growth): {:.2}x",
                f / cluster.max(1.0)
            );
        }
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let number = |i: usize| -> u64 { args.get(i).and_then(|v| v.parse().ok()).expect("count") };
    match args.first().map(String::as_str) {
        Some("--fake-apiserver") => return fake_process(&rt, number(1)),
        Some("--measure") => {
            let n = number(2);
            let dir = std::path::PathBuf::from(args.get(3).expect("directory"));
            let result = match args.get(1).map(String::as_str) {
                Some("separate") => rt.block_on(measure_separate(n)),
                Some("standalone-yaml") => {
                    rt.block_on(measure_standalone(n, &dir, "services.yaml"))
                }
                Some("standalone-json") => {
                    rt.block_on(measure_standalone(n, &dir, "services.json"))
                }
                _ => rt.block_on(measure_in_process(n)),
            };
            println!("RESULT {result}");
            return;
        }
        _ => {}
    }
    let bench = args.iter().any(|a| a == "--bench");
    let n = if bench { 100_000 } else { 300 };
    let dir = tempfile::tempdir().expect("temp dir");
    write_services_yaml(&dir.path().join("services.yaml"), n);
    write_services_json(&dir.path().join("services.json"), n);
    let results: Vec<Value> = [
        "separate",
        "in-process",
        "standalone-yaml",
        "standalone-json",
    ]
    .iter()
    .map(|mode| {
        let r = in_child(mode, n, dir.path());
        eprintln!(
            "  {mode}: {n} Services loaded in {:.2} s",
            r["sync_s"].as_f64().unwrap_or(0.0)
        );
        r
    })
    .collect();
    print_table(&results);
}
