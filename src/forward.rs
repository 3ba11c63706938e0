//! Replicas that may not allocate forward admissions to the leader, so one allocator decides for
//! the whole cluster: two replicas deciding independently could hand one address to two Services
//! created at the same moment (each replica's reservations are its own).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use futures::future::BoxFuture;

use crate::leadership::Leadership;
use crate::tls::{CaSource, CaStamp, CurrentCert, PresentCert};

/// Marks a forwarded request. Only a replica that may allocate honours it by deciding; any other
/// replica validates only and never forwards it again (no loops during a leader change).
pub const FORWARDED_HEADER: &str = "x-kube-vip-webhook-forwarded";

/// The apiserver's webhook timeout is a few seconds; leave room to answer locally.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads the Lease again and returns the leader's address (after a failed forward).
pub type Refresh = Arc<dyn Fn() -> BoxFuture<'static, Option<String>> + Send + Sync>;

pub struct Forwarder {
    leadership: Leadership,
    ca: CaSource,
    /// Name in the serving certificate (`<service>.<namespace>.svc`).
    server_name: String,
    refresh: Option<Refresh>,
    /// Our serving certificate, presented to the leader (which may require client certificates).
    identity: Option<Arc<dyn CurrentCert>>,
    client: Mutex<Option<Cached>>,
}

struct Cached {
    addr: SocketAddr,
    ca_stamp: CaStamp,
    client: reqwest::Client,
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
        identity: Option<Arc<dyn CurrentCert>>,
    ) -> Self {
        Forwarder {
            leadership,
            ca,
            server_name,
            refresh,
            identity,
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

    /// One keep-alive client per leader address and CA version; the certificate is checked for
    /// the Service name while connecting to the leader pod's address.
    fn client_for(&self, addr: SocketAddr) -> Result<reqwest::Client, ForwardError> {
        let stamp = self
            .ca
            .stamp()
            .map_err(|e| ForwardError::Ca(e.to_string()))?;
        let mut cached = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_ref()
            && c.addr == addr
            && c.ca_stamp == stamp
        {
            return Ok(c.client.clone());
        }
        let roots = self
            .ca
            .roots(&stamp)
            .map_err(|e| ForwardError::Ca(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ForwardError::Client(e.to_string()))?
            .with_root_certificates(roots);
        let mut tls = match &self.identity {
            Some(cert) => builder.with_client_cert_resolver(Arc::new(PresentCert(cert.clone()))),
            None => builder.with_no_client_auth(),
        };
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
