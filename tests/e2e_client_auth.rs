//! The apiserver authenticates itself to the webhook with a client certificate, configured the
//! way README "Hostile clients" tells operators to (AdmissionConfiguration + kubeconfig), on a
//! real kube-apiserver: its calls are served; a caller without that certificate is refused.
//!
//! Skips unless `KUBEBUILDER_ASSETS` points at kube-apiserver and etcd.

#[path = "support/e2e.rs"]
mod e2e;
#[path = "support/envtest.rs"]
mod envtest;
#[path = "support/tls.rs"]
mod tls_support;
#[path = "support/wait.rs"]
mod wait;
#[path = "support/webhook_proc.rs"]
mod webhook_proc;

use std::path::Path;

use e2e::{E2e, annotation, lb};
use kube::api::PostParams;

/// The name the webhook requires in the apiserver's client certificate.
const CLIENT_NAME: &str = "kube-apiserver-webhook-client";

/// Writes the client CA, the apiserver's client certificate, its webhook kubeconfig and the
/// AdmissionConfiguration into the control plane's dir; the apiserver flag that loads them.
fn admission_config(dir: &Path) -> Result<Vec<String>, String> {
    let (ca, cert, key) = tls_support::client_identity(CLIENT_NAME);
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
    };
    write("webhook-client-ca.crt", &ca)?;
    write("webhook-client.crt", &cert)?;
    write("webhook-client.key", &key)?;
    let p = |name: &str| dir.join(name).display().to_string();
    // "*": this identity for every webhook (the test registers by URL on a random port).
    write(
        "webhooks.kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nusers:\n- name: \"*\"\n  user:\n    client-certificate: {}\n    client-key: {}\n",
            p("webhook-client.crt"),
            p("webhook-client.key")
        ),
    )?;
    write(
        "admission.yaml",
        &format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: MutatingAdmissionWebhook\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {}\n",
            p("webhooks.kubeconfig")
        ),
    )?;
    Ok(vec![format!(
        "--admission-control-config-file={}",
        p("admission.yaml")
    )])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apiserver_presents_its_client_certificate_and_others_are_refused() {
    let _ = envtest::EXTRA_FLAGS.set(admission_config);
    let Some(t) = E2e::new("clientauth").await else {
        return;
    };
    t.set_config(&[(&t.key("range"), &t.range(1, 10))]).await;
    t.register().await;
    let ca = t.cp.dir.join("webhook-client-ca.crt").display().to_string();
    let wh = t
        .start_webhook(
            "clientauth-0",
            &[
                "--client-ca-file",
                &ca,
                "--client-allowed-names",
                CLIENT_NAME,
            ],
        )
        .await;
    // Served: the apiserver's calls carry the certificate.
    t.wait_active().await;
    let svc = t
        .services()
        .create(&PostParams::default(), &lb("web", 80))
        .await
        .expect("create");
    assert!(annotation(&svc).is_some(), "allocated at admission");

    // Anyone else reaching the port is refused during the handshake.
    let anyone = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(t.ca_pem.as_bytes()).expect("CA"))
        .build()
        .expect("client");
    let refused = anyone
        .post(format!("https://127.0.0.1:{}/mutate", t.port))
        .body("{}")
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a caller without a certificate was served"
    );
    assert!(wh.log_lines("denied").is_empty());
}
