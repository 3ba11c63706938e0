//! The real binary stopped as Kubernetes stops a pod: SIGTERM turns `/readyz` off at once, the
//! webhook keeps answering for `--shutdown-delay-seconds` (while endpoints stop sending to it),
//! then drains and exits 0. (kube-apiserver's own pattern; `preStop.sleep` needs Kubernetes 1.30.)

#[path = "support/reviews.rs"]
mod reviews;
#[path = "support/webhook_proc.rs"]
mod webhook_proc;

use std::time::{Duration, Instant};

use webhook_proc::WebhookProc;

const DELAY: Duration = Duration::from_secs(3);
/// Safety net so a process that never stops fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

const CONFIGMAP: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: kubevip, namespace: kube-system}
data: {cidr-global: 10.77.0.0/24}
";

#[tokio::test]
async fn sigterm_turns_readiness_off_keeps_answering_for_the_delay_then_exits_0() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let cm = dir.path().join("configmap.yaml");
    std::fs::write(&cm, CONFIGMAP).expect("write configmap");
    let certs = dir.path().join("certs");
    let delay = DELAY.as_secs().to_string();
    let args: Vec<String> = [
        "serve",
        "--standalone",
        "--configmap",
        cm.to_str().expect("utf-8 path"),
        "--cert-dir",
        certs.to_str().expect("utf-8 path"),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--shutdown-delay-seconds",
        &delay,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut proc = WebhookProc::spawn("stopping", &args, &[]).await;
    proc.ready(PATIENCE).await;
    let ca = std::fs::read_to_string(certs.join("ca.crt")).expect("generated CA");
    let http = reviews::client(&ca);

    let signalled = Instant::now();
    proc.terminate();
    let readyz = format!("http://{}/readyz", proc.admin);
    loop {
        let status = reqwest::get(&readyz)
            .await
            .expect("admin port answers")
            .status();
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(signalled.elapsed() < PATIENCE, "/readyz stayed {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An apiserver that has not yet seen the endpoint go still gets its answer, on a new
    // connection.
    let late = reviews::create("late", "default", "late", false);
    let answer = reviews::send(&http, proc.webhook, &late, false).await;
    assert!(reviews::address(&answer).is_some(), "{answer}");
    let answered = signalled.elapsed();

    assert_eq!(
        proc.wait_exit(PATIENCE).await,
        Some(0),
        "{}",
        proc.log_text()
    );
    let exited = signalled.elapsed();
    assert!(
        answered < DELAY,
        "the late review was answered {answered:?} after SIGTERM, past the delay: cannot tell"
    );
    assert!(exited >= DELAY, "exited {exited:?} after SIGTERM");
}
