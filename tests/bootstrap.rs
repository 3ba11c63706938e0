//! Self-signed certificate route against the fake apiserver, through a real `kube::Client`:
//! Secret creation, reuse, races between replicas, renewal, `caBundle` publication, and the
//! served certificate checked by real TLS handshakes.

mod support;
#[path = "support/tls.rs"]
mod support_tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, ServiceReference, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube_vip_webhook::bootstrap::{
    self, BootstrapConfig, Bootstrapped, DEFAULT_VALIDITY, Status, service_dns_names,
};
use kube_vip_webhook::tls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_util::sync::CancellationToken;

use support::fake_apiserver::{FakeApiServer, Matcher};
use support_tls::{leaf_der, listener};

const NS: &str = "kube-system";
const SECRET: &str = "kube-vip-webhook-selfsigned";
const CONFIG: &str = "kube-vip-webhook";
const SERVICE_DNS: &str = "kube-vip-webhook.kube-system.svc";
/// Safety net so a broken background task fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

fn config() -> BootstrapConfig {
    BootstrapConfig {
        namespace: NS.to_string(),
        secret_name: SECRET.to_string(),
        webhook_configuration: CONFIG.to_string(),
        dns_names: service_dns_names("kube-vip-webhook", NS),
        validity: DEFAULT_VALIDITY,
        check_interval: Duration::from_secs(3600),
        retry_interval: Duration::from_millis(20),
        call_timeout: Duration::from_secs(5),
    }
}

fn webhook(name: &str) -> MutatingWebhook {
    MutatingWebhook {
        name: name.to_string(),
        admission_review_versions: vec!["v1".to_string()],
        side_effects: "NoneOnDryRun".to_string(),
        client_config: WebhookClientConfig {
            service: Some(ServiceReference {
                name: "kube-vip-webhook".to_string(),
                namespace: NS.to_string(),
                path: Some("/mutate".to_string()),
                port: Some(443),
            }),
            ..WebhookClientConfig::default()
        },
        ..MutatingWebhook::default()
    }
}

/// Two webhooks, each with a field of its own that patching must not disturb.
fn webhook_configuration() -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(CONFIG.to_string()),
            labels: Some(BTreeMap::from([("team".to_string(), "net".to_string())])),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![
            MutatingWebhook {
                timeout_seconds: Some(3),
                ..webhook("services.kube-vip-webhook.io")
            },
            MutatingWebhook {
                reinvocation_policy: Some("IfNeeded".to_string()),
                ..webhook("services-again.kube-vip-webhook.io")
            },
        ]),
    }
}

fn stored_secret(fake: &FakeApiServer) -> Secret {
    fake.get::<Secret>(Some(NS), SECRET).expect("Secret exists")
}

fn key(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

fn stored_bundles(fake: &FakeApiServer) -> Vec<Option<Vec<u8>>> {
    let config = fake
        .get::<MutatingWebhookConfiguration>(None, CONFIG)
        .unwrap();
    config
        .webhooks
        .unwrap()
        .into_iter()
        .map(|w| w.client_config.ca_bundle.map(|b| b.0))
        .collect()
}

/// Serve the bootstrapped config on a loopback port until `shutdown`.
fn serve(tls: Arc<rustls::ServerConfig>, shutdown: &CancellationToken) -> SocketAddr {
    let (listener, addr) = listener();
    tokio::spawn(kube_vip_webhook::server::serve_https(
        listener,
        tls,
        Router::new(),
        shutdown.clone(),
        Duration::from_secs(1),
    ));
    addr
}

/// Handshake as the apiserver would (trusting only `ca_bundle`, asking for `name`) and return
/// the certificate the server presented.
async fn handshake(
    addr: SocketAddr,
    ca_bundle: &[u8],
    name: &str,
) -> std::io::Result<CertificateDer<'static>> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_bundle) {
        roots.add(ca.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let tls = connector.connect(server_name, tcp).await?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].clone())
}

async fn wait_for(
    status: &mut tokio::sync::watch::Receiver<Status>,
    f: impl FnMut(&Status) -> bool,
) {
    tokio::time::timeout(PATIENCE, status.wait_for(f))
        .await
        .expect("background task got there")
        .expect("background task alive");
}

async fn start(
    fake: &FakeApiServer,
    cfg: BootstrapConfig,
    shutdown: &CancellationToken,
) -> Bootstrapped {
    bootstrap::ensure_with(&fake.client(), cfg, shutdown.clone())
        .await
        .unwrap()
}

#[tokio::test]
async fn first_start_creates_the_secret_patches_ca_bundle_and_serves_a_verifiable_certificate() {
    let fake = FakeApiServer::new();
    fake.insert(&webhook_configuration()).unwrap();
    let shutdown = CancellationToken::new();
    let boot = start(&fake, config(), &shutdown).await;

    let secret = stored_secret(&fake);
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let ca = key(&secret, "ca.crt");
    let cert = key(&secret, "tls.crt");
    tls::SwappableCert::new(&cert, &key(&secret, "tls.key")).unwrap();
    assert!(key(&secret, "ca.key").contains("PRIVATE KEY"));
    assert!(tls::not_after(&cert).unwrap() > SystemTime::now() + DEFAULT_VALIDITY * 9 / 10);

    // Both webhooks got base64(ca.crt); nothing else in the configuration changed.
    assert_eq!(
        stored_bundles(&fake),
        vec![Some(ca.clone().into_bytes()); 2]
    );
    let mut stored = fake
        .get::<MutatingWebhookConfiguration>(None, CONFIG)
        .unwrap();
    for w in stored.webhooks.iter_mut().flatten() {
        w.client_config.ca_bundle = None;
    }
    assert_eq!(stored.webhooks, webhook_configuration().webhooks);
    assert_eq!(
        stored.metadata.labels,
        webhook_configuration().metadata.labels
    );
    assert!(boot.status.borrow().ca_bundle_published);

    // A real handshake: the served certificate is the Secret's and verifies against the
    // published caBundle for the Service's DNS names, and for no other name.
    let addr = serve(boot.server_config.clone(), &shutdown);
    let bundle = stored_bundles(&fake)[0].clone().unwrap();
    for name in service_dns_names("kube-vip-webhook", NS) {
        let presented = handshake(addr, &bundle, &name).await.unwrap();
        assert_eq!(presented, leaf_der(&cert));
    }
    assert!(
        handshake(addr, &bundle, "other.kube-system.svc")
            .await
            .is_err()
    );
    // Nor against some other CA.
    let stranger = tls::generate_self_signed(&[SERVICE_DNS.to_string()], DEFAULT_VALIDITY).unwrap();
    assert!(
        handshake(addr, stranger.ca_cert_pem.as_bytes(), SERVICE_DNS)
            .await
            .is_err()
    );
    shutdown.cancel();
    boot.task.await.unwrap();
}

#[tokio::test]
async fn restart_reuses_the_secret_unchanged_and_serves_the_same_certificate() {
    let fake = FakeApiServer::new();
    fake.insert(&webhook_configuration()).unwrap();
    let first_run = CancellationToken::new();
    let first = start(&fake, config(), &first_run).await;
    let before = stored_secret(&fake);
    first_run.cancel();
    first.task.await.unwrap();

    let shutdown = CancellationToken::new();
    let second = start(&fake, config(), &shutdown).await;
    let after = stored_secret(&fake);
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(after.data, before.data);
    let writes = |verb: &str, resource: &str| {
        fake.count_requests(&Matcher::any().verb(verb).resource(resource))
    };
    assert_eq!(writes("create", "secrets"), 1);
    assert_eq!(writes("update", "secrets"), 0);
    // The bundle was already there: no second patch.
    assert_eq!(writes("patch", "mutatingwebhookconfigurations"), 1);

    let addr = serve(second.server_config.clone(), &shutdown);
    let presented = handshake(addr, key(&after, "ca.crt").as_bytes(), SERVICE_DNS)
        .await
        .unwrap();
    assert_eq!(presented, leaf_der(&key(&before, "tls.crt")));
    shutdown.cancel();
}

/// Two replicas starting at the same time, each with its own client.
async fn race(fake: &FakeApiServer, shutdown: &CancellationToken) -> (Bootstrapped, Bootstrapped) {
    let (client_a, client_b) = (fake.client(), fake.client());
    let (a, b) = tokio::join!(
        bootstrap::ensure_with(&client_a, config(), shutdown.clone()),
        bootstrap::ensure_with(&client_b, config(), shutdown.clone()),
    );
    (a.unwrap(), b.unwrap())
}

#[tokio::test]
async fn two_replicas_starting_together_converge_on_one_secret() {
    let fake = FakeApiServer::new();
    fake.insert(&webhook_configuration()).unwrap();
    let shutdown = CancellationToken::new();
    let (a, b) = race(&fake, &shutdown).await;
    assert_eq!(fake.list::<Secret>(Some(NS)).len(), 1);
    let secret = stored_secret(&fake);
    let cert = key(&secret, "tls.crt");
    assert_eq!(a.status.borrow().cert_pem, cert);
    assert_eq!(b.status.borrow().cert_pem, cert);
    assert_eq!(
        stored_bundles(&fake),
        vec![Some(key(&secret, "ca.crt").into_bytes()); 2]
    );
    for boot in [&a, &b] {
        let addr = serve(boot.server_config.clone(), &shutdown);
        let presented = handshake(addr, key(&secret, "ca.crt").as_bytes(), SERVICE_DNS)
            .await
            .unwrap();
        assert_eq!(presented, leaf_der(&cert));
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_replica_that_loses_the_create_race_uses_the_winners_secret() {
    let fake = FakeApiServer::new();
    fake.insert(&webhook_configuration()).unwrap();
    let shutdown = CancellationToken::new();
    let winner = start(&fake, config(), &shutdown).await;
    // The loser read "absent" just before the winner's create landed.
    fake.fail_next(1, Matcher::any().verb("get").resource("secrets"), 404);
    let loser = start(&fake, config(), &shutdown).await;
    assert_eq!(fake.pending_faults(), 0);
    assert_eq!(
        fake.count_requests(&Matcher::any().verb("create").resource("secrets")),
        2
    );
    assert_eq!(fake.list::<Secret>(Some(NS)).len(), 1);
    assert_eq!(
        loser.status.borrow().cert_pem,
        winner.status.borrow().cert_pem
    );
    assert_eq!(
        loser.status.borrow().cert_pem,
        key(&stored_secret(&fake), "tls.crt")
    );
    shutdown.cancel();
}

/// Replace the serving certificate in the stored Secret by one from the same CA.
fn rewrite_leaf(fake: &FakeApiServer, validity: Duration) -> String {
    let mut secret = stored_secret(fake);
    let names = service_dns_names("kube-vip-webhook", NS);
    let (cert, key_pem) = tls::issue_serving_cert(
        &key(&secret, "ca.crt"),
        &key(&secret, "ca.key"),
        &names,
        validity,
    )
    .unwrap();
    let data = secret.data.as_mut().unwrap();
    data.insert("tls.crt".to_string(), ByteString(cert.clone().into_bytes()));
    data.insert("tls.key".to_string(), ByteString(key_pem.into_bytes()));
    fake.upsert(&secret).unwrap();
    cert
}

#[tokio::test]
async fn near_expiry_certificate_is_renewed_from_the_same_ca() {
    let fake = FakeApiServer::new();
    fake.insert(&webhook_configuration()).unwrap();
    let first_run = CancellationToken::new();
    start(&fake, config(), &first_run).await;
    first_run.cancel();
    let original = stored_secret(&fake);
    let bundle_before = stored_bundles(&fake);
    // Ten minutes left of a 70-minute certificate (validity plus the issuer's backdating): due.
    let short = rewrite_leaf(&fake, Duration::from_secs(600));

    let shutdown = CancellationToken::new();
    let boot = start(&fake, config(), &shutdown).await;
    let renewed = stored_secret(&fake);
    let cert = key(&renewed, "tls.crt");
    assert_ne!(cert, short);
    assert!(tls::not_after(&cert).unwrap() > SystemTime::now() + DEFAULT_VALIDITY * 9 / 10);
    assert_eq!(key(&renewed, "ca.crt"), key(&original, "ca.crt"));
    assert_eq!(key(&renewed, "ca.key"), key(&original, "ca.key"));
    assert_eq!(stored_bundles(&fake), bundle_before);
    assert_eq!(boot.status.borrow().cert_pem, cert);
    let addr = serve(boot.server_config.clone(), &shutdown);
    let bundle = bundle_before[0].clone().unwrap();
    assert_eq!(
        handshake(addr, &bundle, SERVICE_DNS).await.unwrap(),
        leaf_der(&cert)
    );
    shutdown.cancel();
}

#[tokio::test]
async fn replicas_renewing_together_agree_on_one_certificate() {
    let fake = FakeApiServer::new();
    fake.insert(&webhook_configuration()).unwrap();
    let first_run = CancellationToken::new();
    start(&fake, config(), &first_run).await;
    first_run.cancel();
    let short = rewrite_leaf(&fake, Duration::from_secs(60));

    let shutdown = CancellationToken::new();
    let (a, b) = race(&fake, &shutdown).await;
    let cert = key(&stored_secret(&fake), "tls.crt");
    assert_ne!(cert, short);
    assert_eq!(a.status.borrow().cert_pem, cert);
    assert_eq!(b.status.borrow().cert_pem, cert);
    shutdown.cancel();
}

#[tokio::test]
async fn a_renewal_by_another_replica_is_picked_up_and_served_without_restart() {
    let fake = FakeApiServer::new();
    fake.insert(&webhook_configuration()).unwrap();
    let shutdown = CancellationToken::new();
    let cfg = BootstrapConfig {
        check_interval: Duration::from_millis(20),
        ..config()
    };
    let mut boot = start(&fake, cfg, &shutdown).await;
    let addr = serve(boot.server_config.clone(), &shutdown);
    let ca = key(&stored_secret(&fake), "ca.crt");

    let other = rewrite_leaf(&fake, DEFAULT_VALIDITY);
    wait_for(&mut boot.status, |s| s.cert_pem == other).await;
    assert_eq!(
        handshake(addr, ca.as_bytes(), SERVICE_DNS).await.unwrap(),
        leaf_der(&other)
    );
    // It was adopted, not renewed again.
    assert_eq!(key(&stored_secret(&fake), "tls.crt"), other);
    shutdown.cancel();
    boot.task.await.unwrap();
}

#[tokio::test]
async fn configuration_created_after_start_gets_its_ca_bundle_from_the_background_task() {
    let fake = FakeApiServer::new();
    let shutdown = CancellationToken::new();
    let mut boot = start(&fake, config(), &shutdown).await;
    assert!(!boot.status.borrow().ca_bundle_published);

    fake.insert(&webhook_configuration()).unwrap();
    wait_for(&mut boot.status, |s| s.ca_bundle_published).await;
    let ca = key(&stored_secret(&fake), "ca.crt");
    assert_eq!(stored_bundles(&fake), vec![Some(ca.into_bytes()); 2]);
    shutdown.cancel();
    boot.task.await.unwrap();
}

#[tokio::test]
async fn api_failures_name_the_object_and_the_missing_permission() {
    let fake = FakeApiServer::new();
    fake.insert(&webhook_configuration()).unwrap();
    let shutdown = CancellationToken::new();

    fake.fail_next(1, Matcher::any().verb("get").resource("secrets"), 403);
    let err = bootstrap::ensure_with(&fake.client(), config(), shutdown.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Secret kube-system/kube-vip-webhook-selfsigned"),
        "{err}"
    );
    assert!(err.contains("get, create and update on secrets"), "{err}");

    fake.fail_next(
        1,
        Matcher::any()
            .verb("patch")
            .resource("mutatingwebhookconfigurations"),
        403,
    );
    let err = bootstrap::ensure_with(&fake.client(), config(), shutdown.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MutatingWebhookConfiguration kube-vip-webhook"),
        "{err}"
    );
    assert!(
        err.contains("patch on mutatingwebhookconfigurations"),
        "{err}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn an_apiserver_that_never_answers_fails_the_start_instead_of_hanging_it() {
    let fake = FakeApiServer::new();
    let (client, partition) = fake.partitionable_client();
    partition.cut();
    let cfg = BootstrapConfig {
        call_timeout: Duration::from_millis(200),
        ..config()
    };
    let started = bootstrap::ensure_with(&client, cfg, CancellationToken::new());
    let Err(err) = tokio::time::timeout(PATIENCE, started)
        .await
        .expect("the start gave up on the call")
    else {
        panic!("started without an apiserver");
    };
    let err = err.to_string();
    assert!(
        err.contains("reading Secret kube-system/kube-vip-webhook-selfsigned"),
        "{err}"
    );
}
