//! Serving infrastructure over real sockets: HTTPS (h1 + h2), certificate rotation, graceful
//! shutdown, admin endpoints, signals.

#[path = "support/tls.rs"]
mod support_tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use kube_vip_webhook::admin::{self, Readiness};
use kube_vip_webhook::metrics::{Metrics, PoolStat, StatsSource};
use kube_vip_webhook::server::{cancel_on_signal, serve_http, serve_https};
use kube_vip_webhook::tls::{
    TlsError, generate_self_signed, issue_serving_cert, reloading_server_config,
    server_config_from_pem,
};
use reqwest::StatusCode;
use support_tls::{
    Http, SecretVolume, https_client, install_provider, leaf_der, listener, names, presented_cert,
    url,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const DAY: Duration = Duration::from_secs(24 * 3600);
/// Generous upper bound so a broken server fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(20);

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<io::Result<()>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

fn spawn_https(tls: Arc<rustls::ServerConfig>, app: Router, drain: Duration) -> Running {
    let (listener, addr) = listener();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_https(listener, tls, app, shutdown.clone(), drain));
    Running {
        addr,
        shutdown,
        task,
    }
}

fn hello_app() -> Router {
    Router::new().route(
        "/hello",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { format!("hello {}", peer.ip()) }),
    )
}

// ---------------------------------------------------------------------------------------------
// HTTPS basics

#[tokio::test]
async fn https_serves_http1_and_http2() {
    install_provider();
    let certs = generate_self_signed(&names(), DAY).unwrap();
    let tls = server_config_from_pem(&certs.cert_pem, &certs.key_pem).unwrap();
    let server = spawn_https(tls, hello_app(), PATIENCE);
    for (http, expected) in [
        (Http::One, reqwest::Version::HTTP_11),
        (Http::Two, reqwest::Version::HTTP_2),
    ] {
        let client = https_client(&certs.ca_cert_pem, server.addr, http);
        // Several requests, so HTTP/1.1 keep-alive / HTTP/2 streams are exercised too.
        for _ in 0..3 {
            let response = client.get(url(server.addr, "/hello")).send().await.unwrap();
            assert_eq!(response.version(), expected);
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.text().await.unwrap(), "hello 127.0.0.1");
        }
    }
    // A client that does not trust our CA is refused.
    let stranger = generate_self_signed(&names(), DAY).unwrap();
    let client = https_client(&stranger.ca_cert_pem, server.addr, Http::Two);
    assert!(client.get(url(server.addr, "/hello")).send().await.is_err());
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Certificate files: validation and rotation

#[test]
fn invalid_files_are_reported_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let a = generate_self_signed(&names(), DAY).unwrap();
    let b = generate_self_signed(&names(), DAY).unwrap();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    let message = |e: TlsError| e.to_string();

    let err = reloading_server_config(&cert, &key).unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err}");
    assert!(message(err).contains(&cert.display().to_string()));

    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, &a.key_pem).unwrap();
    let err = reloading_server_config(&cert, &key).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    assert!(message(err).contains(&cert.display().to_string()));

    std::fs::write(&cert, &a.cert_pem).unwrap();
    std::fs::write(&key, &a.cert_pem).unwrap();
    let err = reloading_server_config(&cert, &key).unwrap_err();
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");
    assert!(message(err).contains(&key.display().to_string()));

    std::fs::write(&key, &b.key_pem).unwrap();
    let err = reloading_server_config(&cert, &key).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    let text = message(err);
    assert!(
        text.contains(&key.display().to_string()) && text.contains(&cert.display().to_string())
    );

    // A certificate block whose content is not X.509.
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(&key, &a.key_pem).unwrap();
    let err = reloading_server_config(&cert, &key).unwrap_err();
    assert!(matches!(err, TlsError::BadCertificate { .. }), "{err}");

    std::fs::write(&cert, &a.cert_pem).unwrap();
    reloading_server_config(&cert, &key).unwrap();
}

/// One CA, several serving certificates: the client trusts all of them, so what changes between
/// connections is only which one the server presents.
struct Issued {
    ca_pem: String,
    pairs: Vec<(String, String)>,
}

fn issue(count: usize) -> Issued {
    let ca = generate_self_signed(&names(), DAY).unwrap();
    let pairs = (0..count)
        .map(|_| issue_serving_cert(&ca.ca_cert_pem, &ca.ca_key_pem, &names(), DAY).unwrap())
        .collect();
    Issued {
        ca_pem: ca.ca_cert_pem,
        pairs,
    }
}

#[tokio::test]
async fn rotation_of_plain_files_reaches_new_connections() {
    install_provider();
    let issued = issue(3);
    let [(a_cert, a_key), (b_cert, b_key), (c_cert, c_key)] = &issued.pairs[..] else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, a_cert).unwrap();
    std::fs::write(&key, a_key).unwrap();
    let server = spawn_https(
        reloading_server_config(&cert, &key).unwrap(),
        hello_app(),
        PATIENCE,
    );
    let presented = || presented_cert(server.addr, &issued.ca_pem);

    assert_eq!(presented().await, leaf_der(a_cert));

    // In-place rewrite of both files.
    std::fs::write(&cert, b_cert).unwrap();
    std::fs::write(&key, b_key).unwrap();
    assert_eq!(presented().await, leaf_der(b_cert));
    let client = https_client(&issued.ca_pem, server.addr, Http::One);
    assert_eq!(
        client
            .get(url(server.addr, "/hello"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    // Garbage: keep B.
    std::fs::write(&cert, "garbage").unwrap();
    assert_eq!(presented().await, leaf_der(b_cert));
    // Key file gone: keep B.
    std::fs::write(&cert, b_cert).unwrap();
    std::fs::remove_file(&key).unwrap();
    assert_eq!(presented().await, leaf_der(b_cert));
    std::fs::write(&key, b_key).unwrap();

    // Non-atomic update seen half-way (new cert, old key): keep B; once the key follows, C.
    std::fs::write(&cert, c_cert).unwrap();
    assert_eq!(presented().await, leaf_der(b_cert));
    std::fs::write(&key, c_key).unwrap();
    assert_eq!(presented().await, leaf_der(c_cert));

    server.stop().await;
}

#[tokio::test]
async fn rotation_by_secret_volume_symlink_swap() {
    install_provider();
    let issued = issue(3);
    let [(a_cert, a_key), (b_cert, b_key), (c_cert, c_key)] = &issued.pairs[..] else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut volume = SecretVolume::new(dir.path(), a_cert, a_key);
    let tls = reloading_server_config(&volume.cert(), &volume.key()).unwrap();
    let server = spawn_https(tls, hello_app(), PATIENCE);
    let presented = || presented_cert(server.addr, &issued.ca_pem);

    assert_eq!(presented().await, leaf_der(a_cert));
    volume.update(b_cert, b_key);
    assert_eq!(presented().await, leaf_der(b_cert));
    // An invalid Secret (key of another certificate) keeps B in service.
    volume.update(c_cert, a_key);
    assert_eq!(presented().await, leaf_der(b_cert));
    volume.update(c_cert, c_key);
    assert_eq!(presented().await, leaf_der(c_cert));

    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown

/// A router whose `/slow` handler signals `entered` and then waits for `release`.
fn slow_app(entered: Arc<Notify>, release: Arc<Notify>) -> Router {
    Router::new().route(
        "/slow",
        get(move || async move {
            entered.notify_one();
            release.notified().await;
            "done"
        }),
    )
}

/// Connect until the port refuses (the accept loop stops asynchronously after the cancel; a
/// connection that lands in the backlog before the listener closes is reset and we try again).
async fn wait_until_refused(addr: SocketAddr) {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await
    .unwrap();
}

async fn in_flight_request_survives_shutdown(http: Http) {
    install_provider();
    let certs = generate_self_signed(&names(), DAY).unwrap();
    let tls = server_config_from_pem(&certs.cert_pem, &certs.key_pem).unwrap();
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let server = spawn_https(tls, slow_app(entered.clone(), release.clone()), PATIENCE);
    let client = https_client(&certs.ca_cert_pem, server.addr, http);
    let request = tokio::spawn(client.get(url(server.addr, "/slow")).send());

    entered.notified().await;
    server.shutdown.cancel();
    wait_until_refused(server.addr).await;
    assert!(
        !server.task.is_finished(),
        "server returned while a request was in flight"
    );

    release.notify_one();
    let response = tokio::time::timeout(PATIENCE, request)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "done");
    tokio::time::timeout(PATIENCE, server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn graceful_shutdown_http1() {
    in_flight_request_survives_shutdown(Http::One).await;
}

#[tokio::test]
async fn graceful_shutdown_http2() {
    in_flight_request_survives_shutdown(Http::Two).await;
}

#[tokio::test]
async fn drain_deadline_bounds_shutdown() {
    install_provider();
    let certs = generate_self_signed(&names(), DAY).unwrap();
    let tls = server_config_from_pem(&certs.cert_pem, &certs.key_pem).unwrap();
    // Never released: only the drain deadline can end this request.
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let server = spawn_https(
        tls,
        slow_app(entered.clone(), release),
        Duration::from_millis(100),
    );
    let client = https_client(&certs.ca_cert_pem, server.addr, Http::One);
    let request = tokio::spawn(client.get(url(server.addr, "/slow")).send());
    entered.notified().await;
    server.shutdown.cancel();
    tokio::time::timeout(PATIENCE, server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let outcome = tokio::time::timeout(PATIENCE, request)
        .await
        .unwrap()
        .unwrap();
    assert!(
        outcome.is_err(),
        "the cut-off request cannot have succeeded: {outcome:?}"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_do_not_delay_shutdown() {
    install_provider();
    let certs = generate_self_signed(&names(), DAY).unwrap();
    let tls = server_config_from_pem(&certs.cert_pem, &certs.key_pem).unwrap();
    // A drain budget far beyond the test's patience: only closing idle connections at once lets
    // the server return in time.
    let server = spawn_https(tls, hello_app(), Duration::from_secs(3600));
    // Clients that keep their connections open and idle.
    let mut clients = Vec::new();
    for http in [Http::One, Http::Two] {
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(certs.ca_cert_pem.as_bytes()).unwrap(),
            )
            .resolve(support_tls::SERVER_NAME, server.addr);
        let client = match http {
            Http::One => client.http1_only(),
            Http::Two => client,
        }
        .build()
        .unwrap();
        assert_eq!(
            client
                .get(url(server.addr, "/hello"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
        clients.push(client);
    }
    server.shutdown.cancel();
    tokio::time::timeout(PATIENCE, server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Admin port

struct FixedStats;

impl StatsSource for FixedStats {
    fn pools(&self) -> Vec<PoolStat> {
        vec![
            PoolStat {
                pool: "cidr-default".into(),
                family: "IPv4",
                size: 254,
                used: 4,
            },
            PoolStat {
                pool: "cidr-v6".into(),
                family: "IPv6",
                size: 1u128 << 64,
                used: 3,
            },
        ]
    }
    fn reservations(&self) -> usize {
        2
    }
    fn config_errors(&self) -> usize {
        1
    }
    fn config_present(&self) -> bool {
        true
    }
}

/// The value of the sample `series` (name plus label block, exactly as exposed), parsed as f64.
fn sample(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|line| {
            line.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"));
    line[series.len()..].trim().parse().unwrap()
}

#[tokio::test]
async fn admin_endpoints() {
    install_provider();
    let readiness = Readiness::default();
    let metrics = Arc::new(Metrics::new(Arc::new(FixedStats)));
    let (listener, addr) = listener();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_http(
        listener,
        admin::router(readiness.clone(), metrics.clone()),
        shutdown.clone(),
        PATIENCE,
    ));
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("http://{addr}{path}")).send();

    let live = get("/livez").await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    assert_eq!(live.text().await.unwrap(), "ok");

    let ready = get("/readyz").await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.text().await.unwrap(), "not ready");
    readiness.set_ready(true);
    let ready = get("/readyz").await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(ready.text().await.unwrap(), "ready");
    readiness.set_ready(false);
    assert_eq!(
        get("/readyz").await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    metrics.observe_admission("CREATE", "allocated", Duration::from_micros(300));
    metrics.observe_admission("CREATE", "allocated", Duration::from_millis(3));
    metrics.observe_admission("UPDATE", "skipped", Duration::from_micros(50));
    metrics.inc_reconcile("patched");
    metrics.inc_event("AddressAllocated");
    let response = get("/metrics").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[reqwest::header::CONTENT_TYPE],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let p = "kube_vip_webhook_";
    assert_eq!(
        sample(
            &text,
            &format!("{p}admission_requests_total{{operation=\"CREATE\",outcome=\"allocated\"}}")
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("{p}admission_requests_total{{operation=\"UPDATE\",outcome=\"skipped\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                "{p}admission_duration_seconds_count{{operation=\"CREATE\",outcome=\"allocated\"}}"
            )
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                "{p}admission_duration_seconds_bucket{{le=\"0.0005\",operation=\"CREATE\",outcome=\"allocated\"}}"
            )
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                "{p}admission_duration_seconds_bucket{{le=\"0.005\",operation=\"CREATE\",outcome=\"allocated\"}}"
            )
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                "{p}admission_duration_seconds_bucket{{le=\"0.0001\",operation=\"UPDATE\",outcome=\"skipped\"}}"
            )
        ),
        1.0
    );
    let sum = sample(
        &text,
        &format!("{p}admission_duration_seconds_sum{{operation=\"CREATE\",outcome=\"allocated\"}}"),
    );
    assert!((sum - 0.0033).abs() < 1e-9, "{sum}");
    assert_eq!(
        sample(
            &text,
            &format!("{p}reconciles_total{{outcome=\"patched\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("{p}events_total{{reason=\"AddressAllocated\"}}")
        ),
        1.0
    );

    let v6 = "{pool=\"cidr-v6\",family=\"IPv6\"}";
    assert_eq!(
        sample(&text, &format!("{p}pool_addresses{v6}")),
        18446744073709551616.0
    );
    assert_eq!(sample(&text, &format!("{p}pool_addresses_used{v6}")), 3.0);
    assert_eq!(
        sample(&text, &format!("{p}pool_addresses_free{v6}")),
        ((1u128 << 64) - 3) as f64
    );
    let v4 = "{pool=\"cidr-default\",family=\"IPv4\"}";
    assert_eq!(sample(&text, &format!("{p}pool_addresses{v4}")), 254.0);
    assert_eq!(sample(&text, &format!("{p}pool_addresses_free{v4}")), 250.0);
    assert_eq!(sample(&text, &format!("{p}reservations_pending")), 2.0);
    // `/readyz` said not ready just before; nothing set the mode-specific gauges.
    assert_eq!(sample(&text, &format!("{p}ready")), 0.0);
    assert!(!text.contains(&format!("{p}leader ")), "{text}");
    assert_eq!(sample(&text, &format!("{p}config_errors")), 1.0);
    assert_eq!(sample(&text, &format!("{p}config_present")), 1.0);
    assert!(text.trim_end().ends_with("# EOF"));

    shutdown.cancel();
    tokio::time::timeout(PATIENCE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Stopped: the port is closed.
    wait_until_refused(addr).await;
}

// ---------------------------------------------------------------------------------------------
// Signals

#[tokio::test]
async fn sigterm_cancels_the_token() {
    let token = CancellationToken::new();
    cancel_on_signal(token.clone());
    assert!(!token.is_cancelled());
    // The handler is installed when cancel_on_signal returns, so this SIGTERM is caught.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(PATIENCE, token.cancelled())
        .await
        .unwrap();
}
