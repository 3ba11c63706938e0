//! Followers forward admissions to the lease holder, so one allocator decides for the whole
//! cluster: two replicas deciding independently could hand one address to two Services created
//! at the same moment (each replica's reservations are its own).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;

use super::lease::LeaderState;

/// Marks a forwarded request so it is never forwarded again (no loops during a leader change).
pub const FORWARDED_HEADER: &str = "x-kube-vip-webhook-forwarded";

/// The apiserver's webhook timeout is a few seconds; leave room to answer locally.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Forwarder {
    leader: LeaderState,
    /// PEM of the CA that signed the serving certificate (the leader serves the same one).
    ca_pem: Vec<u8>,
    /// Name in the serving certificate (`<service>.<namespace>.svc`).
    server_name: String,
    client: Mutex<Option<(SocketAddr, reqwest::Client)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no leader is known yet")]
    NoLeader,
    #[error("leader address {0:?} is not host:port")]
    BadAddress(String),
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
    pub fn new(leader: LeaderState, ca_pem: Vec<u8>, server_name: String) -> Self {
        Forwarder {
            leader,
            ca_pem,
            server_name,
            client: Mutex::new(None),
        }
    }

    /// True when this replica must not decide itself.
    pub fn should_forward(&self) -> bool {
        !self.leader.is_leader()
    }

    /// Send the review body to the leader; its answer is returned verbatim.
    pub async fn forward(&self, body: Bytes) -> Result<Bytes, ForwardError> {
        let raw = self.leader.leader_address().ok_or(ForwardError::NoLeader)?;
        let addr: SocketAddr = raw
            .parse()
            .map_err(|_| ForwardError::BadAddress(raw.clone()))?;
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

    /// One keep-alive client per leader address; the certificate is checked for the Service
    /// name while connecting to the leader pod's address.
    fn client_for(&self, addr: SocketAddr) -> Result<reqwest::Client, ForwardError> {
        let mut cached = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((a, c)) = cached.as_ref()
            && *a == addr
        {
            return Ok(c.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut self.ca_pem.as_slice()) {
            let cert = cert.map_err(|e| ForwardError::Client(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| ForwardError::Client(e.to_string()))?;
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
        *cached = Some((addr, client.clone()));
        Ok(client)
    }
}
