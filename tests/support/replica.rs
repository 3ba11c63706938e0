//! Replicas of cluster mode in-process (against the fake apiserver): shared serving certificate,
//! files route, leader election with short timings.
#![allow(dead_code)] // each test binary uses a different part

use std::time::Duration;

use clap::Parser;
use kube_vip_webhook::cli::{Cli, Command, ServeArgs};
use kube_vip_webhook::serve::{Running, Stop};

/// Short election timings: lease 4 s, renew deadline 2 s, retry 1 s, no takeover grace.
/// `--retry-period-seconds` of [`FAST_LEASE`].
pub const RETRY_PERIOD: Duration = Duration::from_secs(1);

pub const FAST_LEASE: [&str; 8] = [
    "--lease-duration-seconds",
    "4",
    "--renew-deadline-seconds",
    "2",
    "--retry-period-seconds",
    "1",
    "--takeover-grace-seconds",
    "0",
];

/// One serving certificate for every replica (as the Secret of either route would give them).
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
}

pub fn certs() -> Certs {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = kube_vip_webhook::tls::generate_self_signed(
        &[
            "kube-vip-webhook.kube-system.svc".into(),
            "localhost".into(),
            "127.0.0.1".into(),
        ],
        Duration::from_secs(3600),
    )
    .expect("certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    for (f, pem) in [
        ("ca.crt", &tls.ca_cert_pem),
        ("tls.crt", &tls.cert_pem),
        ("tls.key", &tls.key_pem),
    ] {
        std::fs::write(dir.path().join(f), pem).expect("write cert");
    }
    Certs {
        dir,
        ca_pem: tls.ca_cert_pem,
    }
}

/// `serve` flags of replica `pod` (leader election on, fast timings), plus `extra`.
pub fn args(certs: &Certs, pod: &str, extra: &[&str]) -> ServeArgs {
    let p = |f: &str| certs.dir.path().join(f).display().to_string();
    let mut argv: Vec<String> = [
        "kube-vip-webhook",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--tls-cert-file",
        &p("tls.crt"),
        "--tls-key-file",
        &p("tls.key"),
        "--tls-ca-file",
        &p("ca.crt"),
        "--default-ip-family",
        "IPv4",
        "--pod-ip",
        "127.0.0.1",
        "--pod-name",
        pod,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(FAST_LEASE.iter().map(|s| s.to_string()));
    argv.extend(extra.iter().map(|s| s.to_string()));
    match Cli::try_parse_from(argv).expect("flags").command {
        Command::Serve(a) => *a,
        _ => unreachable!("serve flags"),
    }
}

/// Start a replica on `client` (cluster mode, in this process).
pub async fn start(client: kube::Client, args: &ServeArgs) -> Running {
    kube_vip_webhook::cluster::start_with_client(
        args.cluster_settings().expect("settings"),
        client,
        Stop::default(),
    )
    .await
    .expect("replica starts")
}
