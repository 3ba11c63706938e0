//! TLS test helpers: clients trusting a test CA, raw handshakes, Kubernetes-style secret volumes.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// The name the test certificates are issued for; clients resolve it to the test server.
pub const SERVER_NAME: &str = "kube-vip-webhook.kube-system.svc";

/// reqwest's rustls backend needs a process-wide provider; the crate itself never does.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A bound loopback listener on a free port.
pub fn listener() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

pub fn names() -> Vec<String> {
    vec![SERVER_NAME.to_string()]
}

/// Which HTTP version a client should negotiate.
#[derive(Clone, Copy, Debug)]
pub enum Http {
    One,
    Two,
}

/// An HTTPS client trusting only `ca_pem` that sends requests for [`SERVER_NAME`] to `addr`.
pub fn https_client(ca_pem: &str, addr: SocketAddr, http: Http) -> reqwest::Client {
    install_provider();
    let builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve(SERVER_NAME, addr)
        // Every request on a fresh connection: rotation and shutdown tests count connections.
        .pool_max_idle_per_host(0);
    let builder = match http {
        Http::One => builder.http1_only(),
        // ALPN offers h2 and http/1.1; the server prefers h2.
        Http::Two => builder,
    };
    builder.build().unwrap()
}

pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("https://{SERVER_NAME}:{}{path}", addr.port())
}

/// DER of the first certificate in a PEM string.
pub fn leaf_der(cert_pem: &str) -> CertificateDer<'static> {
    CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
}

/// Handshake with the server (trusting `ca_pem`) and return the certificate it presented.
pub async fn presented_cert(addr: SocketAddr, ca_pem: &str) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
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
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// A directory laid out like a Kubernetes Secret volume: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..<version>`; [`SecretVolume::update`] swaps `..data` atomically like the kubelet.
pub struct SecretVolume {
    pub dir: PathBuf,
    version: u32,
}

impl SecretVolume {
    pub fn new(dir: &Path, cert_pem: &str, key_pem: &str) -> SecretVolume {
        let mut volume = SecretVolume {
            dir: dir.to_path_buf(),
            version: 0,
        };
        volume.update(cert_pem, key_pem);
        std::os::unix::fs::symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", dir.join("tls.key")).unwrap();
        volume
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    pub fn update(&mut self, cert_pem: &str, key_pem: &str) {
        self.version += 1;
        let name = format!("..v{}", self.version);
        let versioned = self.dir.join(&name);
        std::fs::create_dir(&versioned).unwrap();
        std::fs::write(versioned.join("tls.crt"), cert_pem).unwrap();
        std::fs::write(versioned.join("tls.key"), key_pem).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

/// A client certificate (and key, PEM) with Common Name `cn`, signed by a CA made on the spot;
/// returns (CA PEM, certificate PEM, key PEM).
pub fn client_identity(cn: &str) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "test client CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

/// [`https_client`] presenting a client certificate (PEM certificate and key).
pub fn https_client_with_identity(
    ca_pem: &str,
    addr: SocketAddr,
    cert_pem: &str,
    key_pem: &str,
) -> reqwest::Client {
    install_provider();
    let identity = reqwest::Identity::from_pem(format!("{cert_pem}{key_pem}").as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .identity(identity)
        .resolve(SERVER_NAME, addr)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// An HTTP/2 client trusting `ca_pem` that keeps its connection (like the apiserver's).
pub fn https_client_keepalive(ca_pem: &str, addr: SocketAddr) -> reqwest::Client {
    install_provider();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve(SERVER_NAME, addr)
        .http2_prior_knowledge()
        .build()
        .unwrap()
}
