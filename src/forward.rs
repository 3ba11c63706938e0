//! Replicas that may not allocate forward admissions to the leader, so one allocator decides for
//! the whole cluster: two replicas deciding independently could hand one address to two Services
//! created at the same moment (each replica's reservations are its own).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use futures::future::BoxFuture;

use crate::leadership::Leadership;

/// Marks a forwarded request. Only a replica that may allocate honours it by deciding; any other
/// replica validates only and never forwards it again (no loops during a leader change).
pub const FORWARDED_HEADER: &str = "x-kube-vip-webhook-forwarded";

/// The apiserver's webhook timeout is a few seconds; leave room to answer locally.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the CA that signed the leader's serving certificate comes from; read again when it
/// changes, so a CA rotation does not break forwarding until a restart.
#[derive(Clone)]
pub enum CaSource {
    /// A PEM file (cert-manager's `ca.crt`), re-read when its modification time or size changes.
    File(PathBuf),
    /// The self-signed route's current bundle (PEM).
    Bundle(Arc<dyn Fn() -> Vec<u8> + Send + Sync>),
}

/// Reads the Lease again and returns the leader's address (after a failed forward).
pub type Refresh = Arc<dyn Fn() -> BoxFuture<'static, Option<String>> + Send + Sync>;

pub struct Forwarder {
    leadership: Leadership,
    ca: CaSource,
    /// Name in the serving certificate (`<service>.<namespace>.svc`).
    server_name: String,
    refresh: Option<Refresh>,
    client: Mutex<Option<Cached>>,
}

struct Cached {
    addr: SocketAddr,
    ca_stamp: CaStamp,
    client: reqwest::Client,
}

/// Identifies one version of the CA (file metadata, or the bundle itself).
#[derive(Clone, Debug, PartialEq, Eq)]
enum CaStamp {
    File(Option<SystemTime>, u64),
    Bundle(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no leader is known")]
    NoLeader,
    #[error("leader address {0:?} is not host:port")]
    BadAddress(String),
    #[error("no CA to verify the leader with: {0}")]
    Ca(String),
    #[error("cannot build the TLS client: {0}")]
    Client(String),
    #[error("forwarding to the leader at {addr} failed: {source}")]
    Send {
        addr: SocketAddr,
        #[source]
        source: reqwest::Error,
    },
    #[error("leader at {addr} answered HTTP {status}")]
    Status { addr: SocketAddr, status: u16 },
}

impl Forwarder {
    pub fn new(
        leadership: Leadership,
        ca: CaSource,
        server_name: String,
        refresh: Option<Refresh>,
    ) -> Self {
        Forwarder {
            leadership,
            ca,
            server_name,
            refresh,
            client: Mutex::new(None),
        }
    }

    /// Send the review body to the leader; its answer is returned verbatim. When that fails, the
    /// Lease is read again and, if it names another leader, the request is sent there once more.
    pub async fn forward(&self, body: Bytes) -> Result<Bytes, ForwardError> {
        let first = self.leadership.leader_address();
        let attempt = match &first {
            Some(addr) => self.send(addr, body.clone()).await,
            None => Err(ForwardError::NoLeader),
        };
        let Err(err) = attempt else {
            return attempt;
        };
        let Some(refresh) = &self.refresh else {
            return Err(err);
        };
        match refresh().await {
            Some(fresh) if Some(&fresh) != first.as_ref() => {
                tracing::info!(leader = %fresh, error = %err, "forwarding failed; the Lease names another leader, retrying there");
                self.send(&fresh, body).await
            }
            _ => Err(err),
        }
    }

    async fn send(&self, raw: &str, body: Bytes) -> Result<Bytes, ForwardError> {
        let addr: SocketAddr = raw
            .parse()
            .map_err(|_| ForwardError::BadAddress(raw.to_string()))?;
        let client = self.client_for(addr)?;
        let url = format!("https://{}:{}/mutate", self.server_name, addr.port());
        let resp = client
            .post(url)
            .header(FORWARDED_HEADER, "1")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|source| ForwardError::Send { addr, source })?;
        if !resp.status().is_success() {
            return Err(ForwardError::Status {
                addr,
                status: resp.status().as_u16(),
            });
        }
        resp.bytes()
            .await
            .map_err(|source| ForwardError::Send { addr, source })
    }

    fn ca_stamp(&self) -> Result<CaStamp, ForwardError> {
        match &self.ca {
            CaSource::File(path) => {
                let meta = std::fs::metadata(path)
                    .map_err(|e| ForwardError::Ca(format!("{}: {e}", path.display())))?;
                Ok(CaStamp::File(meta.modified().ok(), meta.len()))
            }
            CaSource::Bundle(current) => Ok(CaStamp::Bundle(current())),
        }
    }

    fn ca_pem(&self, stamp: &CaStamp) -> Result<Vec<u8>, ForwardError> {
        match (&self.ca, stamp) {
            (_, CaStamp::Bundle(pem)) => Ok(pem.clone()),
            (CaSource::File(path), _) => std::fs::read(path)
                .map_err(|e| ForwardError::Ca(format!("{}: {e}", path.display()))),
            (CaSource::Bundle(current), _) => Ok(current()),
        }
    }

    /// One keep-alive client per leader address and CA version; the certificate is checked for
    /// the Service name while connecting to the leader pod's address.
    fn client_for(&self, addr: SocketAddr) -> Result<reqwest::Client, ForwardError> {
        let stamp = self.ca_stamp()?;
        let mut cached = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_ref()
            && c.addr == addr
            && c.ca_stamp == stamp
        {
            return Ok(c.client.clone());
        }
        let pem = self.ca_pem(&stamp)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| ForwardError::Ca(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| ForwardError::Ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ForwardError::Ca("no certificate in the CA PEM".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ForwardError::Client(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .resolve(&self.server_name, addr)
            .timeout(FORWARD_TIMEOUT)
            .build()
            .map_err(|e| ForwardError::Client(e.to_string()))?;
        *cached = Some(Cached {
            addr,
            ca_stamp: stamp,
            client: client.clone(),
        });
        Ok(client)
    }
}
