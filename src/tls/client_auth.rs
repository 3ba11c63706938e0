//! Client certificates on the webhook port: only callers holding a certificate from the given
//! CA (and, optionally, with one of the given names) complete the handshake. The apiserver
//! presents one when its AdmissionConfiguration gives the webhook a `kubeConfigFile` with a
//! client certificate for the webhook's host name (see README "Authenticating the apiserver").
//! Other replicas forwarding to the leader are accepted too, by their serving certificate
//! ([`Peers`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig};

use super::peers::{PeerVerifier, Peers, names, roots_from_pem};
use super::stamp::Stamp;
use super::{TlsError, error_chain, provider, read, write};

/// What a client must present.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientAuth {
    /// PEM bundle of the CA(s) that sign client certificates; reloaded when the file changes.
    pub ca_file: PathBuf,
    /// When not empty, the client certificate's Subject Common Name or one of its DNS subject
    /// alternative names must be one of these.
    pub allowed_names: Vec<String>,
}

/// `config` (same certificate, same protocols) requiring a client certificate per `auth`, or a
/// peer's serving certificate when `peers` is given. The CA file is read now, so a bad one fails
/// before anything binds.
pub fn require_client_certs(
    config: &ServerConfig,
    auth: &ClientAuth,
    peers: Option<Peers>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = ReloadingVerifier::new(auth.clone(), peers.map(PeerVerifier::new))?;
    let mut out = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(config.cert_resolver.clone());
    out.alpn_protocols = config.alpn_protocols.clone();
    // No session resumption: a resumed session skips the client certificate check, so a
    // certificate from a CA rotated out would keep working. The apiserver keeps its connections
    // alive, full handshakes are rare.
    out.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    out.send_tls13_tickets = 0;
    Ok(Arc::new(out))
}

struct ReloadingVerifier {
    auth: ClientAuth,
    state: RwLock<Loaded>,
    reloading: Mutex<()>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
    peers: Option<PeerVerifier>,
}

struct Loaded {
    /// Metadata of the CA file last looked at (good or bad); `None` after a failure to stat it.
    seen: Option<Stamp>,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl fmt::Debug for ReloadingVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingVerifier")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

fn ca_what(path: &Path) -> String {
    format!("client CA file {}", path.display())
}

fn load(path: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let what = ca_what(path);
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        what: what.clone(),
        source,
    })?;
    let roots = roots_from_pem(&pem, &what)?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|source| TlsError::ClientVerifier { what, source })
}

impl ReloadingVerifier {
    fn new(auth: ClientAuth, peers: Option<PeerVerifier>) -> Result<Self, TlsError> {
        let seen = Stamp::of(&auth.ca_file).ok();
        let verifier = load(&auth.ca_file)?;
        Ok(ReloadingVerifier {
            auth,
            state: RwLock::new(Loaded { seen, verifier }),
            reloading: Mutex::new(()),
            algorithms: provider().signature_verification_algorithms,
            peers,
        })
    }

    /// The verifier for this handshake: reloaded first when the CA file changed (a `stat` per
    /// handshake, the file is read only on a change; a bad new file keeps the last good CA).
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        let now = Stamp::of(&self.auth.ca_file).ok();
        {
            let state = read(&self.state);
            if state.seen == now {
                return state.verifier.clone();
            }
        }
        let Ok(_reloading) = self.reloading.try_lock() else {
            return read(&self.state).verifier.clone();
        };
        let mut state = write(&self.state);
        state.seen = now;
        if now.is_none() {
            tracing::error!(file = %self.auth.ca_file.display(), "client CA file unreadable; keeping the current CA");
            return state.verifier.clone();
        }
        match load(&self.auth.ca_file) {
            Ok(verifier) => {
                tracing::info!(file = %self.auth.ca_file.display(), "client CA reloaded");
                state.verifier = verifier;
            }
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "new client CA file is invalid; keeping the current CA");
            }
        }
        state.verifier.clone()
    }

    fn name_allowed(&self, end_entity: &CertificateDer<'_>) -> bool {
        if self.auth.allowed_names.is_empty() {
            return true;
        }
        let allowed = names(end_entity)
            .iter()
            .any(|n| self.auth.allowed_names.contains(n));
        if !allowed {
            tracing::debug!("client certificate name is not among the allowed names");
        }
        allowed
    }
}

impl ClientCertVerifier for ReloadingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: the CA may change at runtime, and clients with one certificate send it anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let refused = match self
            .current()
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(verified) if self.name_allowed(end_entity) => return Ok(verified),
            Ok(_) => {
                rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
            }
            Err(e) => e,
        };
        match &self.peers {
            Some(peers) if peers.is_peer(end_entity, intermediates, now) => {
                Ok(ClientCertVerified::assertion())
            }
            _ => Err(refused),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
