//! The monitoring component (manifest/monitoring) against real Prometheus tooling:
//! * `promtool check rules` and `promtool test rules` on the PrometheusRule's groups, with a
//!   firing and a silent case for every alert (tests/monitoring/alerts.test.yaml);
//! * each alert's summary, description and runbook entry in README "Troubleshoot";
//! * the Grafana dashboard: schema fields, and every query parsed by promtool;
//! * end to end: a real Prometheus scrapes `serve --standalone`, and after a tiny pool is
//!   exhausted through `/mutate` the exhaustion alert fires in Prometheus's own `/api/v1/alerts`.
//!
//! promtool and prometheus come from Debian's `prometheus` package; without them the tests that
//! need them say so in one line and pass. (`tests/cluster.rs` checks that every metric the rules
//! and the dashboard use is exported.)

#[path = "support/metrics.rs"]
mod metrics;
#[path = "support/monitoring.rs"]
mod monitoring;
#[path = "support/standalone.rs"]
mod standalone;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use kube_vip_webhook::cli::{Cli, Command as CliCommand};
use kube_vip_webhook::serve::{Running, Stop};
use monitoring::{
    alert_tests, alerts, as_promql, dashboard, dashboard_queries, metric_names, panels, promtool,
    repo, rule_groups, rules_file,
};
use serde_json::{Value, json};

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run the command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ---------------------------------------------------------------------------------------------
// Rules

#[test]
fn rules_pass_promtool_check_and_unit_tests() {
    let Some(promtool) = promtool("rules_pass_promtool_check_and_unit_tests") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rules_file(&rule_groups())).unwrap();
    let (tests, _) = alert_tests();
    std::fs::write(dir.path().join("alerts.test.yaml"), tests).unwrap();
    let (ok, out) =
        run(Command::new(&promtool)
            .current_dir(dir.path())
            .args(["check", "rules", "rules.yaml"]));
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = run(Command::new(&promtool).current_dir(dir.path()).args([
        "test",
        "rules",
        "alerts.test.yaml",
    ]));
    assert!(ok, "promtool test rules:\n{out}");
}

/// promtool runs only the cases written down: make sure each alert has both kinds.
#[test]
fn every_alert_has_a_firing_and_a_silent_case() {
    let names: BTreeSet<String> = alerts(&rule_groups()).into_iter().map(|(n, _)| n).collect();
    assert!(names.len() >= 9, "alerts: {names:?}");
    let (_, tests) = alert_tests();
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for case in tests.tests.iter().flat_map(|g| &g.alert_rule_test) {
        assert!(
            names.contains(&case.alertname),
            "a test case names {}, which no rule defines",
            case.alertname
        );
        if case.exp_alerts.is_empty() {
            silent.insert(case.alertname.clone());
        } else {
            fires.insert(case.alertname.clone());
        }
    }
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !fires.contains(*n))
        .map(|n| format!("{n} never fires"))
        .chain(
            names
                .iter()
                .filter(|n| !silent.contains(*n))
                .map(|n| format!("{n} is never checked silent")),
        )
        .collect();
    assert!(missing.is_empty(), "{missing:?}");
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_says_what_and_points_at_its_troubleshoot_entry() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    // The headings inside the "Troubleshoot" section.
    let mut in_section = false;
    let mut entries = BTreeSet::new();
    for line in readme.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            in_section = h.trim() == "Troubleshoot";
        } else if let Some(h) = line.strip_prefix("### ")
            && in_section
        {
            entries.insert(anchor(h));
        }
    }
    let mut problems = Vec::new();
    for (name, rule) in alerts(&rule_groups()) {
        for key in ["summary", "description", "runbook"] {
            if rule["annotations"][key].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{name}: no {key}"));
            }
        }
        if !matches!(
            rule["labels"]["severity"].as_str(),
            Some("warning" | "critical")
        ) {
            problems.push(format!("{name}: severity should be warning or critical"));
        }
        let runbook = rule["annotations"]["runbook"].as_str().unwrap_or_default();
        match runbook.strip_prefix("README.md#") {
            Some(a) if entries.contains(a) && a == name.to_lowercase() => {}
            _ => problems.push(format!(
                "{name}: runbook {runbook:?} should be README.md#{} under \"## Troubleshoot\" (found {entries:?})",
                name.to_lowercase()
            )),
        }
        if !readme.contains(&format!("`{name}`")) {
            problems.push(format!("{name}: not listed in README (Monitoring)"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

// ---------------------------------------------------------------------------------------------
// Dashboard

#[test]
fn dashboard_has_the_schema_fields_grafana_needs() {
    let d = dashboard();
    let mut problems = Vec::new();
    for key in ["title", "uid"] {
        if d[key].as_str().is_none_or(str::is_empty) {
            problems.push(format!("no {key}"));
        }
    }
    if !d["schemaVersion"].is_u64() {
        problems.push("schemaVersion should be a number".into());
    }
    let variables: BTreeSet<String> = d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(|n| format!("${{{n}}}")))
        .collect();
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        if !p["id"].as_u64().is_some_and(|id| ids.insert(id)) {
            problems.push(format!("{title}: id missing or repeated"));
        }
        if p["type"].as_str().is_none_or(str::is_empty) || title == "?" {
            problems.push(format!("{title}: no type or title"));
        }
        let g = &p["gridPos"];
        let inside = match (g["x"].as_u64(), g["w"].as_u64()) {
            (Some(x), Some(w)) => w > 0 && x + w <= 24,
            _ => false,
        };
        if !(inside && g["y"].is_u64() && g["h"].is_u64()) {
            problems.push(format!("{title}: gridPos outside the 24 columns"));
        }
        if p["type"] == "row" {
            continue;
        }
        let uid = p["datasource"]["uid"].as_str().unwrap_or_default();
        if !variables.contains(uid) {
            problems.push(format!(
                "{title}: datasource {uid:?} is not a dashboard variable"
            ));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("{title}: no query"));
        }
        let refs: BTreeSet<&str> = targets.iter().filter_map(|t| t["refId"].as_str()).collect();
        if refs.len() != targets.len() {
            problems.push(format!("{title}: refIds missing or repeated"));
        }
    }
    // What the issue asks to see.
    for needle in [
        "kube_vip_webhook_pool_addresses_used",
        "kube_vip_webhook_admission_requests_total",
        "kube_vip_webhook_admission_duration_seconds_bucket",
        "kube_vip_webhook_services_waiting",
        "kube_vip_webhook_reconciles_total",
        "kube_vip_webhook_events_total",
    ] {
        if !dashboard_queries(&d)
            .iter()
            .any(|(_, e)| e.contains(needle))
        {
            problems.push(format!("no panel shows {needle}"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// promtool has no bare query parser, but it parses every expression of a rules file: one
/// recording rule per dashboard query.
#[test]
fn every_dashboard_query_parses() {
    let Some(promtool) = promtool("every_dashboard_query_parses") else {
        return;
    };
    let queries = dashboard_queries(&dashboard());
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| json!({"record": format!("dashboard:query_{i}"), "expr": as_promql(expr)}))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(
        &file,
        rules_file(&json!({"groups": [{"name": "dashboard", "rules": rules}]})),
    )
    .unwrap();
    let (ok, out) = run(Command::new(promtool).arg("check").arg("rules").arg(&file));
    let listing: Vec<String> = queries.iter().map(|(n, e)| format!("{n}: {e}")).collect();
    assert!(
        ok,
        "promtool rejects a dashboard query:\n{out}\nqueries:\n{listing:#?}"
    );
    assert!(
        out.contains(&format!("{} rules found", queries.len())),
        "{out}"
    );
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(r#"sum by (le, outcome) (rate(a_bucket{outcome=~"x|y", pool="b"}[5m])) > 0.9"#),
        ["a_bucket"]
    );
    assert_eq!(
        names(
            "max by (namespace) (used) / on (pool) group_left max without (pod) (size) and free offset 5m > 1e3"
        ),
        ["free", "size", "used"]
    );
    assert_eq!(names("absent(ready == 1)"), ["ready"]);
    assert_eq!(names("cert - time() < 14 * 24 * 3600"), ["cert"]);
    assert_eq!(
        names(r#"label_replace(x, "dst", "$1", "src", "(.*)")"#),
        ["x"]
    );
}

// ---------------------------------------------------------------------------------------------
// End to end with a real Prometheus

/// Kills the process when dropped, so a failing assertion does not leave Prometheus running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free right now (the OS hands out another one next time; Prometheus binds it soon).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const TINY_POOL: &str = r#"apiVersion: v1
kind: ConfigMap
metadata: {name: kubevip, namespace: kube-system}
data:
  range-global: 10.9.0.1-10.9.0.2
"#;

async fn standalone(dir: &Path) -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cm = dir.join("configmap.yaml");
    std::fs::write(&cm, TINY_POOL).unwrap();
    let certs = dir.join("certs");
    let argv = standalone::argv(&cm, &["--cert-dir", certs.to_str().unwrap()]);
    let CliCommand::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!("serve was parsed")
    };
    kube_vip_webhook::cli::start(&args, Stop::default())
        .await
        .unwrap()
}

/// Prometheus scraping `admin` every second, evaluating the rules every second with every `for`
/// cut to zero (the `for` durations are promtool's to test; this is about the expressions
/// against the real exposition).
fn start_prometheus(dir: &Path, admin: SocketAddr) -> (KillOnDrop, String) {
    let mut groups = rule_groups();
    for g in groups["groups"].as_array_mut().unwrap() {
        for r in g["rules"].as_array_mut().unwrap() {
            r["for"] = json!("0s");
        }
    }
    std::fs::write(dir.join("rules.yaml"), rules_file(&groups)).unwrap();
    let config = json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [{
            "job_name": "kube-vip-webhook",
            "static_configs": [{"targets": [admin.to_string()]}]
        }]
    });
    std::fs::write(dir.join("prometheus.yml"), rules_file(&config)).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .current_dir(dir)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    (KillOnDrop(child), format!("http://{listen}"))
}

/// Poll until `f` gives Some; generous deadline (Prometheus start-up), not a timing claim.
async fn eventually<T>(what: &str, log: &Path, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; prometheus log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> Option<Value> {
    client.get(url).send().await.ok()?.json().await.ok()
}

/// The alerts Prometheus reports, as (name, state, labels).
async fn prometheus_alerts(
    client: &reqwest::Client,
    base: &str,
) -> Option<Vec<(String, String, BTreeMap<String, String>)>> {
    let v = get_json(client, &format!("{base}/api/v1/alerts")).await?;
    let list = v["data"]["alerts"].as_array()?;
    Some(
        list.iter()
            .map(|a| {
                (
                    a["labels"]["alertname"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    a["state"].as_str().unwrap_or_default().to_string(),
                    serde_json::from_value(a["labels"].clone()).unwrap_or_default(),
                )
            })
            .collect(),
    )
}

fn review(uid: &str, name: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Service"},
            "resource": {"group": "", "version": "v1", "resource": "services"},
            "name": name, "namespace": "default", "operation": "CREATE",
            "userInfo": {"username": "test"},
            "object": {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
            },
            "dryRun": false
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_fires_the_exhaustion_alert_for_a_real_webhook() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("prometheus not installed (Debian: apt-get install prometheus); skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let running = standalone(dir.path()).await;
    let (_prometheus, base) = start_prometheus(dir.path(), running.admin_addr);
    let log = dir.path().join("prometheus.log");
    let http = reqwest::Client::new();

    // Standalone mode exports the generated certificate's expiry and its config load time.
    let text = metrics::scrape(running.admin_addr).await;
    let pem = std::fs::read_to_string(dir.path().join("certs/tls.crt")).unwrap();
    let not_after = kube_vip_webhook::tls::not_after(&pem)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let name = "kube_vip_webhook_serving_certificate_not_after_timestamp_seconds";
    assert_eq!(metrics::sample(&text, name, &[]), Some(not_after));
    let name = "kube_vip_webhook_config_last_load_timestamp_seconds";
    assert!(metrics::sample(&text, name, &[]).is_some(), "{text}");

    // Scraped, two addresses free, the alert silent.
    let free_query = format!(
        "{base}/api/v1/query?query=kube_vip_webhook_pool_addresses_free%7Bpool%3D%22range-global%22%7D"
    );
    eventually("Prometheus to scrape the webhook", &log, async || {
        let v = get_json(&http, &free_query).await?;
        (v["data"]["result"][0]["value"][1] == "2").then_some(())
    })
    .await;
    // One evaluation after the scrape: rules have seen the sample.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = prometheus_alerts(&http, &base).await.expect("alerts API");
    assert!(
        !before
            .iter()
            .any(|(n, _, _)| n == "KubeVipWebhookPoolExhausted"),
        "exhaustion alert before the pool is exhausted: {before:?}"
    );

    // Exhaust the pool through /mutate.
    let ca = std::fs::read(dir.path().join("certs/ca.crt")).unwrap();
    let https = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/mutate", running.webhook_addr.port());
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let answer: Value = https
            .post(&url)
            .json(&review(&format!("uid-{i}"), name))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        // The third finds the pool empty: admitted with a warning, no patch.
        assert_eq!(answer["response"]["patch"].is_string(), i < 2, "{answer}");
    }

    let firing = eventually("the exhaustion alert to fire", &log, async || {
        let alerts = prometheus_alerts(&http, &base).await?;
        alerts
            .into_iter()
            .find(|(n, state, _)| n == "KubeVipWebhookPoolExhausted" && state == "firing")
    })
    .await;
    let labels = firing.2;
    assert_eq!(labels["pool"], "range-global");
    assert_eq!(labels["family"], "IPv4");
    assert_eq!(labels["severity"], "critical");
    assert_eq!(labels["job"], "kube-vip-webhook");

    // While here: every dashboard query evaluates on the real server.
    for (panel, expr) in dashboard_queries(&dashboard()) {
        let v = http
            .get(format!("{base}/api/v1/query"))
            .query(&[("query", as_promql(&expr))])
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        assert_eq!(v["status"], "success", "{panel}: {expr}: {v}");
    }
    running.stop.shutdown.cancel();
    running.wait().await.unwrap();
}
