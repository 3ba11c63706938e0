//! TLS material: server configurations (reloading from files, swappable from PEM) and the
//! self-signed bootstrap CA / serving certificate.
//!
//! All configurations use the `ring` provider explicitly, so they do not depend on a process-wide
//! default provider being installed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod client_auth;
mod peers;
mod stamp;

pub use client_auth::{ClientAuth, require_client_certs};
pub use peers::{CaSource, CaStamp, CurrentCert, Peers, PresentCert};
use stamp::Stamp;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Errors loading, validating or generating TLS material. Messages name the file (or PEM input)
/// and what is wrong with it; the underlying cause is the error's `source()`.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: malformed PEM")]
    Pem {
        what: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what}: no PEM CERTIFICATE block found")]
    NoCertificate { what: String },
    #[error("{what}: certificate #{index} is not a valid X.509 certificate: {reason}")]
    BadCertificate {
        what: String,
        index: usize,
        reason: String,
    },
    #[error(
        "{what}: no PEM private key found (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
    )]
    NoPrivateKey { what: String },
    #[error("{what}: unusable private key")]
    BadKey {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("building the TLS server configuration")]
    Config(#[source] rustls::Error),
    #[error("no DNS names or IP addresses given for the serving certificate")]
    NoNames,
    #[error("certificate validity must be between 1 second and 100 years, got {0:?}")]
    Validity(Duration),
    #[error("CA key does not match the CA certificate")]
    CaKeyMismatch,
    #[error("the CA certificate is not a CA (basicConstraints CA:TRUE missing)")]
    NotCa,
    #[error("the CA certificate expired or is not yet valid; generate a new CA")]
    CaNotValid,
    #[error("generating a certificate")]
    Generate(#[source] rcgen::Error),
    #[error("{what}: cannot verify client certificates with it")]
    ClientVerifier {
        what: String,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS 1.2 + 1.3 server config offering `h2` and `http/1.1` over ALPN.
fn build_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: what.to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what: what.to_string(),
        });
    }
    for (index, der) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::BadCertificate {
            what: what.to_string(),
            index: index + 1,
            reason: e.to_string(),
        })?;
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            what: what.to_string(),
        },
        source => TlsError::Pem {
            what: what.to_string(),
            source,
        },
    })
}

/// Parse and cross-check a certificate chain and its key. `cert_what` / `key_what` name the inputs
/// in error messages.
fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_what: &str,
    key_what: &str,
) -> Result<CertifiedKey, TlsError> {
    let chain = parse_certs(cert_pem, cert_what)?;
    let key = parse_key(key_pem, key_what)?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::BadKey {
            what: key_what.to_string(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // ring always knows the public key; `Unknown` would only mean "cannot check".
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(TlsError::KeyMismatch {
                cert: cert_what.to_string(),
                key: key_what.to_string(),
            });
        }
    }
    warn_if_not_current(&certified, cert_what);
    Ok(certified)
}

/// An expired certificate is still served (rotation may be late), but say so loudly.
fn warn_if_not_current(key: &CertifiedKey, what: &str) {
    let Some(der) = key.cert.first() else { return };
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der)
        && !cert.validity().is_valid()
    {
        tracing::warn!(certificate = what, not_after = %cert.validity().not_after, "serving certificate is expired or not yet valid");
    }
}

/// Render an error with its causes, for log lines.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Reloading from files

/// Load and validate the certificate chain and private key from PEM files now (so a bad pair fails
/// before anything binds), and return a server config whose certificate follows the files.
///
/// Rotation check: on every TLS handshake the resolver looks at both files' metadata (device,
/// inode, size, modification and change times: a `stat`, no read, no lock held) and compares it
/// with what it last loaded; only a change triggers reading and parsing. So the very next
/// connection after a rotation gets the new certificate, without a background task, and the
/// check is immune to in-place rewrites (the change time moves) and Kubernetes' `..data` symlink
/// swaps (the path resolves to another inode) alike.
///
/// Invalid new files (unparsable, key not matching the certificate, unreadable) keep the last good
/// pair in service; the error is logged once per change of the files.
pub fn reloading_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    Ok(reloading_serving(cert, key)?.0)
}

/// [`reloading_server_config`], and the certificate it currently serves with (for presenting it
/// to other replicas).
pub fn reloading_serving(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<ServerConfig>, Arc<dyn CurrentCert>), TlsError> {
    let resolver = Arc::new(FileResolver::new(cert.to_path_buf(), key.to_path_buf())?);
    Ok((build_config(resolver.clone())?, resolver))
}

struct FileResolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    state: RwLock<FileState>,
    /// Held while one handshake reloads; the others keep serving the current pair meanwhile.
    reloading: Mutex<()>,
}

struct FileState {
    /// Metadata of the files last looked at (good or bad); `None` after a failure to stat them.
    seen: Option<(Stamp, Stamp)>,
    current: Arc<CertifiedKey>,
}

impl fmt::Debug for FileResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileResolver")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl FileResolver {
    fn new(cert_path: PathBuf, key_path: PathBuf) -> Result<Self, TlsError> {
        // Stamped before reading: a change in between is seen (and loaded) at the next look.
        let seen = stamps(&cert_path, &key_path).ok();
        let (cert_pem, key_pem) = read_pair(&cert_path, &key_path)?;
        let current = certified_key(
            &cert_pem,
            &key_pem,
            &cert_what(&cert_path),
            &key_what(&key_path),
        )?;
        Ok(Self {
            cert_path,
            key_path,
            state: RwLock::new(FileState {
                seen,
                current: Arc::new(current),
            }),
            reloading: Mutex::new(()),
        })
    }

    fn loaded(&self) -> Arc<CertifiedKey> {
        read(&self.state).current.clone()
    }

    /// The certified key for a handshake: the loaded one, reloaded first if the files changed.
    fn resolve_now(&self) -> Arc<CertifiedKey> {
        let now = stamps(&self.cert_path, &self.key_path);
        {
            let state = read(&self.state);
            match &now {
                Ok(now) if state.seen.as_ref() == Some(now) => return state.current.clone(),
                Err(_) if state.seen.is_none() => return state.current.clone(),
                _ => {}
            }
        }
        // Another handshake is already reloading: serve the current pair, don't wait.
        let Ok(_reloading) = self.reloading.try_lock() else {
            return self.loaded();
        };
        let now = match now {
            Ok(now) => now,
            Err(e) => {
                let mut state = write(&self.state);
                if state.seen.take().is_some() {
                    tracing::error!(error = %error_chain(&e), "TLS files unreadable; keeping the current certificate");
                }
                return state.current.clone();
            }
        };
        let loaded = read_pair(&self.cert_path, &self.key_path).and_then(|(cert, key)| {
            certified_key(
                &cert,
                &key,
                &cert_what(&self.cert_path),
                &key_what(&self.key_path),
            )
        });
        // Remember the stamps even when the files are bad, so they are not re-read on every
        // handshake; the next change is looked at again.
        let mut state = write(&self.state);
        state.seen = Some(now);
        match loaded {
            Ok(key) => {
                tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                state.current = Arc::new(key);
            }
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "new TLS files are invalid; keeping the current certificate");
            }
        }
        state.current.clone()
    }
}

impl ResolvesServerCert for FileResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.resolve_now())
    }
}

impl CurrentCert for FileResolver {
    fn current(&self) -> Arc<CertifiedKey> {
        self.resolve_now()
    }
}

fn stamps(cert: &Path, key: &Path) -> Result<(Stamp, Stamp), TlsError> {
    let one = |path: &Path, what: String| {
        Stamp::of(path).map_err(|source| TlsError::Read { what, source })
    };
    Ok((one(cert, cert_what(cert))?, one(key, key_what(key))?))
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn cert_what(path: &Path) -> String {
    format!("certificate file {}", path.display())
}

fn key_what(path: &Path) -> String {
    format!("private key file {}", path.display())
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::Read {
        what: cert_what(cert),
        source,
    })?;
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Read {
        what: key_what(key),
        source,
    })?;
    Ok((cert_pem, key_pem))
}

// ---------------------------------------------------------------------------------------------
// From PEM strings, swappable

/// Static server config from PEM strings.
pub fn server_config_from_pem(
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    Ok(SwappableCert::new(cert_pem, key_pem)?.server_config())
}

/// A certificate that can be replaced while serving (self-signed bootstrap renewal): every server
/// config obtained from [`SwappableCert::server_config`] presents the latest swapped-in pair to new
/// connections. Clones share the certificate.
#[derive(Clone, Debug)]
pub struct SwappableCert {
    resolver: Arc<SwapResolver>,
    config: Arc<ServerConfig>,
}

#[derive(Debug)]
struct SwapResolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for SwapResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl CurrentCert for SwapResolver {
    fn current(&self) -> Arc<CertifiedKey> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl SwappableCert {
    /// Validate the pair and build the config.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = certified_key(
            cert_pem.as_bytes(),
            key_pem.as_bytes(),
            "certificate PEM",
            "private key PEM",
        )?;
        let resolver = Arc::new(SwapResolver(RwLock::new(Arc::new(key))));
        let config = build_config(resolver.clone())?;
        Ok(Self { resolver, config })
    }

    /// The server config to serve with.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The certificate served right now (follows swaps).
    pub fn current_cert(&self) -> Arc<dyn CurrentCert> {
        self.resolver.clone()
    }

    /// Replace the certificate for new connections. An invalid pair is rejected and the current
    /// one stays in service.
    pub fn swap(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let key = certified_key(
            cert_pem.as_bytes(),
            key_pem.as_bytes(),
            "certificate PEM",
            "private key PEM",
        )?;
        *self
            .resolver
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Self-signed bootstrap

/// A generated CA and a serving certificate signed by it, all PEM (keys are PKCS#8).
#[derive(Clone)]
pub struct SelfSigned {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelfSigned")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The CA lives this many times longer than the serving certificates it signs, so that renewals
/// (which reuse the CA) keep the webhook's `caBundle` unchanged for many rounds.
pub const CA_VALIDITY_FACTOR: u32 = 10;
/// Upper bound on any validity (X.509 dates stop at year 9999; this is far below).
const MAX_VALIDITY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Certificates start being valid a little in the past, tolerating clock skew between us and the
/// apiserver (the same allowance client-go's self-signed helper makes).
const BACKDATE: Duration = Duration::from_secs(3600);

/// A new CA (ECDSA P-256, valid `CA_VALIDITY_FACTOR` x `validity`, capped at 100 years) and a
/// serving certificate signed by it for `dns_names` (entries that parse as IP addresses become IP
/// SANs), valid `validity` from now.
pub fn generate_self_signed(
    dns_names: &[String],
    validity: Duration,
) -> Result<SelfSigned, TlsError> {
    generate_self_signed_at(dns_names, validity, SystemTime::now())
}

fn generate_self_signed_at(
    dns_names: &[String],
    validity: Duration,
    now: SystemTime,
) -> Result<SelfSigned, TlsError> {
    check_validity(validity)?;
    let ca_validity = validity
        .checked_mul(CA_VALIDITY_FACTOR)
        .unwrap_or(MAX_VALIDITY)
        .min(MAX_VALIDITY);
    let ca_key = KeyPair::generate().map_err(TlsError::Generate)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "kube-vip-webhook CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let (not_before, not_after) = window(now, ca_validity)?;
    ca.not_before = not_before.into();
    ca.not_after = not_after.into();
    let ca_cert = ca.self_signed(&ca_key).map_err(TlsError::Generate)?;
    let ca_cert_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);
    let (cert_pem, key_pem) = issue(&issuer, not_after, dns_names, validity, now)?;
    Ok(SelfSigned {
        ca_cert_pem,
        ca_key_pem,
        cert_pem,
        key_pem,
    })
}

/// A new serving certificate and key (PEM) for `dns_names`, signed by an existing CA, valid
/// `validity` from now but never beyond the CA's own expiry. Fails with [`TlsError::CaNotValid`]
/// when the CA has expired (the caller then generates a new CA), and when the key does not belong
/// to the CA certificate.
pub fn issue_serving_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    dns_names: &[String],
    validity: Duration,
) -> Result<(String, String), TlsError> {
    issue_serving_cert_at(
        ca_cert_pem,
        ca_key_pem,
        dns_names,
        validity,
        SystemTime::now(),
    )
}

fn issue_serving_cert_at(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    dns_names: &[String],
    validity: Duration,
    now: SystemTime,
) -> Result<(String, String), TlsError> {
    check_validity(validity)?;
    let what = "CA certificate PEM";
    let ca_der = parse_certs(ca_cert_pem.as_bytes(), what)?.swap_remove(0);
    let (_, ca_x509) =
        x509_parser::parse_x509_certificate(&ca_der).map_err(|e| TlsError::BadCertificate {
            what: what.to_string(),
            index: 1,
            reason: e.to_string(),
        })?;
    if !ca_x509.is_ca() {
        return Err(TlsError::NotCa);
    }
    let ca_not_before = asn1_to_system_time(ca_x509.validity().not_before.timestamp());
    let ca_not_after = asn1_to_system_time(ca_x509.validity().not_after.timestamp());
    if now < ca_not_before || now >= ca_not_after {
        return Err(TlsError::CaNotValid);
    }
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(TlsError::Generate)?;
    if rcgen::PublicKeyData::subject_public_key_info(&ca_key) != ca_x509.public_key().raw {
        return Err(TlsError::CaKeyMismatch);
    }
    let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key).map_err(TlsError::Generate)?;
    issue(&issuer, ca_not_after, dns_names, validity, now)
}

fn issue(
    issuer: &Issuer<'_, KeyPair>,
    ca_not_after: SystemTime,
    dns_names: &[String],
    validity: Duration,
    now: SystemTime,
) -> Result<(String, String), TlsError> {
    let Some(first) = dns_names.first() else {
        return Err(TlsError::NoNames);
    };
    let mut params = CertificateParams::new(dns_names.to_vec()).map_err(TlsError::Generate)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, first.as_str());
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Client auth too: replicas present their serving certificate to each other when the
    // webhook port requires client certificates (see `peers`).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let (not_before, not_after) = window(now, validity)?;
    params.not_before = not_before.into();
    params.not_after = not_after.min(ca_not_after).into();
    let key = KeyPair::generate().map_err(TlsError::Generate)?;
    let cert = params.signed_by(&key, issuer).map_err(TlsError::Generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn check_validity(validity: Duration) -> Result<(), TlsError> {
    if validity < Duration::from_secs(1) || validity > MAX_VALIDITY {
        return Err(TlsError::Validity(validity));
    }
    Ok(())
}

fn window(now: SystemTime, validity: Duration) -> Result<(SystemTime, SystemTime), TlsError> {
    let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
    let not_after = now
        .checked_add(validity)
        .ok_or(TlsError::Validity(validity))?;
    Ok((not_before, not_after))
}

fn asn1_to_system_time(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}

/// `notAfter` of the first certificate in a PEM bundle (for renewal decisions).
pub fn not_after(cert_pem: &str) -> Result<SystemTime, TlsError> {
    let what = "certificate PEM";
    let first = parse_certs(cert_pem.as_bytes(), what)?.swap_remove(0);
    let (_, cert) =
        x509_parser::parse_x509_certificate(&first).map_err(|e| TlsError::BadCertificate {
            what: what.to_string(),
            index: 1,
            reason: e.to_string(),
        })?;
    Ok(asn1_to_system_time(cert.validity().not_after.timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn names() -> Vec<String> {
        vec![
            "kube-vip-webhook.kube-system.svc".to_string(),
            "10.0.0.7".to_string(),
        ]
    }

    fn verify(ca_pem: &str, cert_pem: &str, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in parse_certs(ca_pem.as_bytes(), "ca").unwrap() {
            roots.add(ca).unwrap();
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        let chain = parse_certs(cert_pem.as_bytes(), "cert").unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn self_signed_serving_cert_verifies_for_its_names_only() {
        let s = generate_self_signed(&names(), DAY).unwrap();
        verify(
            &s.ca_cert_pem,
            &s.cert_pem,
            "kube-vip-webhook.kube-system.svc",
        )
        .unwrap();
        verify(&s.ca_cert_pem, &s.cert_pem, "10.0.0.7").unwrap();
        assert!(verify(&s.ca_cert_pem, &s.cert_pem, "other.kube-system.svc").is_err());
        // It does not verify against an unrelated CA.
        let other = generate_self_signed(&names(), DAY).unwrap();
        assert!(
            verify(
                &other.ca_cert_pem,
                &s.cert_pem,
                "kube-vip-webhook.kube-system.svc"
            )
            .is_err()
        );
        // The pair is usable as a server certificate.
        SwappableCert::new(&s.cert_pem, &s.key_pem).unwrap();
    }

    #[test]
    fn renewal_reuses_the_ca() {
        let s = generate_self_signed(&names(), DAY).unwrap();
        let (cert, key) = issue_serving_cert(&s.ca_cert_pem, &s.ca_key_pem, &names(), DAY).unwrap();
        assert_ne!(cert, s.cert_pem);
        verify(&s.ca_cert_pem, &cert, "kube-vip-webhook.kube-system.svc").unwrap();
        SwappableCert::new(&cert, &key).unwrap();
    }

    #[test]
    fn not_after_is_now_plus_validity_and_ca_outlives_leaf() {
        let now = SystemTime::now();
        let s = generate_self_signed_at(&names(), 7 * DAY, now).unwrap();
        let leaf = not_after(&s.cert_pem).unwrap();
        let expected = now + 7 * DAY;
        // X.509 times have whole-second precision.
        assert!(
            leaf <= expected && leaf + Duration::from_secs(1) > expected,
            "{leaf:?} vs {expected:?}"
        );
        let ca = not_after(&s.ca_cert_pem).unwrap();
        let expected_ca = now + 70 * DAY;
        assert!(ca <= expected_ca && ca + Duration::from_secs(1) > expected_ca);
    }

    #[test]
    fn leaf_never_outlives_its_ca() {
        let start = SystemTime::now() - 60 * DAY;
        // CA valid 10 days from `start` + 10 * 7 days = start + 70 days = now + 10 days.
        let s = generate_self_signed_at(&names(), 7 * DAY, start).unwrap();
        let (cert, _) =
            issue_serving_cert(&s.ca_cert_pem, &s.ca_key_pem, &names(), 30 * DAY).unwrap();
        assert_eq!(
            not_after(&cert).unwrap(),
            not_after(&s.ca_cert_pem).unwrap()
        );
    }

    #[test]
    fn expired_or_foreign_ca_is_refused() {
        let s = generate_self_signed_at(&names(), DAY, SystemTime::now() - 30 * DAY).unwrap();
        let err = issue_serving_cert(&s.ca_cert_pem, &s.ca_key_pem, &names(), DAY).unwrap_err();
        assert!(matches!(err, TlsError::CaNotValid), "{err}");

        let a = generate_self_signed(&names(), DAY).unwrap();
        let b = generate_self_signed(&names(), DAY).unwrap();
        let err = issue_serving_cert(&a.ca_cert_pem, &b.ca_key_pem, &names(), DAY).unwrap_err();
        assert!(matches!(err, TlsError::CaKeyMismatch), "{err}");

        // A serving certificate is not a CA.
        let err = issue_serving_cert(&a.cert_pem, &a.key_pem, &names(), DAY).unwrap_err();
        assert!(matches!(err, TlsError::NotCa), "{err}");
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(
            generate_self_signed(&[], DAY),
            Err(TlsError::NoNames)
        ));
        assert!(matches!(
            generate_self_signed(&names(), Duration::ZERO),
            Err(TlsError::Validity(_))
        ));
        assert!(matches!(
            generate_self_signed(&names(), Duration::MAX),
            Err(TlsError::Validity(_))
        ));
        assert!(matches!(
            generate_self_signed(&["b\u{e4}d.example".to_string()], DAY),
            Err(TlsError::Generate(_))
        ));
        assert!(matches!(
            not_after("no pem here"),
            Err(TlsError::NoCertificate { .. })
        ));
    }

    #[test]
    fn swappable_rejects_mismatched_pair_and_keeps_serving() {
        let a = generate_self_signed(&names(), DAY).unwrap();
        let b = generate_self_signed(&names(), DAY).unwrap();
        let err = SwappableCert::new(&a.cert_pem, &b.key_pem).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        let swappable = SwappableCert::new(&a.cert_pem, &a.key_pem).unwrap();
        assert!(swappable.swap(&b.cert_pem, &a.key_pem).is_err());
        let served = swappable.resolver.0.read().unwrap().cert[0].clone();
        assert_eq!(served, parse_certs(a.cert_pem.as_bytes(), "a").unwrap()[0]);
        swappable.swap(&b.cert_pem, &b.key_pem).unwrap();
        let served = swappable.resolver.0.read().unwrap().cert[0].clone();
        assert_eq!(served, parse_certs(b.cert_pem.as_bytes(), "b").unwrap()[0]);
    }
}
