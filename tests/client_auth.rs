//! Issue 11: authenticating the apiserver with a client certificate (`--client-ca-file`,
//! `--client-allowed-names`), through the real `serve --standalone` flags and a real TLS client;
//! and the standalone server's generated key kept private.

#[path = "support/hostile.rs"]
mod hostile_support;
#[path = "support/standalone.rs"]
mod standalone;
#[path = "support/tls.rs"]
mod tls_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use hostile_support::{create, service};
use kube_vip_webhook::cli::ServeArgs;
use kube_vip_webhook::cli::{Cli, Command};
use kube_vip_webhook::serve::{Running, Stop};

const CONFIGMAP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kubevip, namespace: kube-system}\ndata:\n  cidr-global: 10.0.0.0/28\n";

fn serve_args(argv: &[String]) -> ServeArgs {
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Serve(args) => *args,
        _ => unreachable!(),
    }
}

/// `serve --standalone` with `extra` flags; returns the server and its CA (PEM).
async fn standalone(dir: &Path, extra: &[&str]) -> (Running, String) {
    tls_support::install_provider();
    let running = kube_vip_webhook::cli::start(&standalone_args(dir, extra), Stop::default())
        .await
        .unwrap();
    let ca = std::fs::read_to_string(dir.join("certs").join("ca.crt")).unwrap();
    (running, ca)
}

/// The flags of [`standalone`] (its ConfigMap written into `dir`, certificates in `dir/certs`).
fn standalone_args(dir: &Path, extra: &[&str]) -> ServeArgs {
    let cm = dir.join("configmap.yaml");
    std::fs::write(&cm, CONFIGMAP).unwrap();
    let certs = dir.join("certs");
    let mut argv = standalone::argv(&cm, &["--cert-dir", certs.to_str().unwrap()]);
    argv.extend(extra.iter().map(|s| s.to_string()));
    serve_args(&argv)
}

/// [`standalone`] requiring client certificates from `client_ca` (written to a file in `dir`),
/// with `allowed` names when given.
async fn requiring_client_certs(
    dir: &Path,
    client_ca: &str,
    allowed: Option<&str>,
) -> (Running, String) {
    let ca_file = dir.join("client-ca.crt");
    std::fs::write(&ca_file, client_ca).unwrap();
    let mut flags = vec!["--client-ca-file", ca_file.to_str().unwrap()];
    if let Some(names) = allowed {
        flags.extend(["--client-allowed-names", names]);
    }
    standalone(dir, &flags).await
}

async fn stop(running: Running) {
    running.stop.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running.wait())
        .await
        .unwrap()
        .unwrap();
}

fn review(name: &str) -> Vec<u8> {
    serde_json::to_vec(&create(&service("default", name, &[(80, "TCP")], None))).unwrap()
}

/// A client for the standalone server (certificate for `localhost`), presenting `identity`
/// (certificate and key PEM) when given.
fn client(server_ca: &str, running: &Running, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(server_ca.as_bytes()).unwrap())
        .resolve("localhost", running.webhook_addr)
        .pool_max_idle_per_host(0);
    if let Some((cert, key)) = identity {
        builder = builder
            .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

/// Ok when the request got an answer; else the error, which must be the server refusing us in
/// the handshake (a TLS alert), not anything else.
async fn reaches(client: &reqwest::Client, running: &Running) -> bool {
    let url = format!("https://localhost:{}/mutate", running.webhook_addr.port());
    match client
        .post(url)
        .header("Content-Type", "application/json")
        .body(review("probe"))
        .send()
        .await
    {
        Ok(resp) => {
            assert_eq!(resp.status(), 200);
            true
        }
        Err(e) => {
            let chain = format!("{e:?}");
            assert!(
                chain.contains("received fatal alert"),
                "not refused by the server's handshake: {chain}"
            );
            false
        }
    }
}

#[tokio::test]
async fn only_clients_with_a_certificate_from_the_ca_and_an_allowed_name_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_support::client_identity("kube-apiserver-webhook-client");
    let (running, server_ca) =
        requiring_client_certs(dir.path(), &ca, Some("kube-apiserver-webhook-client,other")).await;
    let addr = running.webhook_addr;

    // No certificate: the handshake fails, nothing is decided.
    let anonymous = client(&server_ca, &running, None);
    assert!(!reaches(&anonymous, &running).await);
    // A certificate from another CA, with the right name: refused.
    let (_, foreign_cert, foreign_key) =
        tls_support::client_identity("kube-apiserver-webhook-client");
    let foreign = client(&server_ca, &running, Some((&foreign_cert, &foreign_key)));
    assert!(!reaches(&foreign, &running).await);
    assert_eq!(running.allocator.used_count(), 0);

    // The apiserver's certificate: served, gets an address.
    let apiserver = client(&server_ca, &running, Some((&cert, &key)));
    let answer = apiserver
        .post(format!("https://localhost:{}/mutate", addr.port()))
        .header("Content-Type", "application/json")
        .body(review("web"))
        .send()
        .await
        .unwrap();
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert!(answer["response"]["patch"].is_string(), "{answer}");
    assert_eq!(running.allocator.used_count(), 1);
    stop(running).await;
}

#[tokio::test]
async fn a_name_outside_the_allowed_names_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_support::client_identity("someone-else");
    let (running, server_ca) =
        requiring_client_certs(dir.path(), &ca, Some("kube-apiserver-webhook-client")).await;
    let refused = client(&server_ca, &running, Some((&cert, &key)));
    assert!(!reaches(&refused, &running).await);
    stop(running).await;
}

#[tokio::test]
async fn a_rotated_client_ca_applies_to_the_next_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, old_cert, old_key) = tls_support::client_identity("apiserver");
    let (new_ca, new_cert, new_key) = tls_support::client_identity("apiserver");
    let (running, server_ca) = requiring_client_certs(dir.path(), &old_ca, None).await;
    let ca_file = dir.path().join("client-ca.crt");
    let old = client(&server_ca, &running, Some((&old_cert, &old_key)));
    let new = client(&server_ca, &running, Some((&new_cert, &new_key)));
    assert!(reaches(&old, &running).await);
    assert!(!reaches(&new, &running).await);
    // Rotated by renaming a new file over it (as an atomic writer does).
    let tmp = dir.path().join("client-ca.tmp");
    std::fs::write(&tmp, &new_ca).unwrap();
    std::fs::rename(&tmp, &ca_file).unwrap();
    assert!(reaches(&new, &running).await);
    assert!(!reaches(&old, &running).await);
    // A broken file keeps the CA in service.
    std::fs::write(&ca_file, "not a certificate").unwrap();
    assert!(reaches(&new, &running).await);
    stop(running).await;
}

#[tokio::test]
async fn a_bad_client_ca_file_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("client-ca.crt");
    std::fs::write(&ca_file, "garbage").unwrap();
    let args = standalone_args(dir.path(), &["--client-ca-file", ca_file.to_str().unwrap()]);
    let err = match kube_vip_webhook::cli::start(&args, Stop::default()).await {
        Ok(_) => panic!("started with a bad client CA"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("client CA file"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The standalone server's key

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_generated_key_is_private_and_links_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = standalone(dir.path(), &[]).await;
    let certs = running.cert_dir.clone().unwrap();
    assert_eq!(mode(&certs), 0o700);
    assert_eq!(mode(&certs.join("tls.key")), 0o600);
    stop(running).await;

    // A link planted where the key goes: replaced, the target untouched.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    std::fs::remove_file(certs.join("tls.key")).unwrap();
    std::os::unix::fs::symlink(&victim, certs.join("tls.key")).unwrap();
    let (running, _) = standalone(dir.path(), &[]).await;
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    assert!(
        !std::fs::symlink_metadata(certs.join("tls.key"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    stop(running).await;

    // --cert-dir itself a link, or writable by others: refused.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::remove_dir_all(&certs).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &certs).unwrap();
    let cm = dir.path().join("configmap.yaml");
    let argv = |cert_dir: &Path| standalone::argv(&cm, &["--cert-dir", cert_dir.to_str().unwrap()]);
    let err = kube_vip_webhook::cli::start(&serve_args(&argv(&certs)), Stop::default()).await;
    assert!(format!("{:#}", err.err().unwrap()).contains("symbolic link"));
    assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = kube_vip_webhook::cli::start(&serve_args(&argv(&shared)), Stop::default()).await;
    assert!(format!("{:#}", err.err().unwrap()).contains("writable by other users"));
}

#[tokio::test]
async fn without_cert_dir_a_fresh_private_directory_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let cm = dir.path().join("configmap.yaml");
    std::fs::write(&cm, CONFIGMAP).unwrap();
    // The directory an older version used: a link planted there must not be followed.
    let predictable = std::env::temp_dir().join(format!("kube-vip-webhook-{}", std::process::id()));
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let _ = std::fs::remove_file(&predictable);
    std::os::unix::fs::symlink(&victim, &predictable).unwrap();
    let argv = standalone::argv(&cm, &[]);
    tls_support::install_provider();
    let running = kube_vip_webhook::cli::start(&serve_args(&argv), Stop::default())
        .await
        .unwrap();
    let certs = running.cert_dir.clone().unwrap();
    let _ = std::fs::remove_file(&predictable);
    assert!(
        std::fs::read_dir(&victim).unwrap().next().is_none(),
        "wrote through the planted link"
    );
    assert_ne!(certs, predictable);
    assert_eq!(mode(&certs), 0o700);
    assert_eq!(mode(&certs.join("tls.key")), 0o600);
    stop(running).await;
    std::fs::remove_dir_all(&certs).unwrap();
}
