//! Replicas talking to each other: a follower forwards admissions to the leader over TLS. The
//! leader's certificate is checked against the CA that signed the serving certificates
//! ([`CaSource`]); when the webhook port requires client certificates (`--client-ca-file`), the
//! follower presents its own serving certificate ([`PresentCert`]) and the leader accepts it as a
//! peer ([`Peers`]): signed by that same CA and naming the webhook Service.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};

use super::stamp::Stamp;
use super::{TlsError, parse_certs, provider};

/// Where the CA that signed the serving certificates comes from; read again when it changes, so
/// a CA rotation does not break forwarding until a restart.
#[derive(Clone)]
pub enum CaSource {
    /// A PEM file (cert-manager's `ca.crt`), re-read when it changes.
    File(PathBuf),
    /// The self-signed route's current bundle (PEM).
    Bundle(Arc<dyn Fn() -> Vec<u8> + Send + Sync>),
}

/// One version of the CA (file metadata, or the bundle itself): equal stamps, same CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaStamp(Version);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Version {
    File(Stamp),
    Bundle(Vec<u8>),
}

impl CaSource {
    /// The current version, without reading a file.
    pub fn stamp(&self) -> Result<CaStamp, TlsError> {
        match self {
            CaSource::File(path) => {
                Stamp::of(path)
                    .map(|s| CaStamp(Version::File(s)))
                    .map_err(|source| TlsError::Read {
                        what: ca_what(path),
                        source,
                    })
            }
            CaSource::Bundle(current) => Ok(CaStamp(Version::Bundle(current()))),
        }
    }

    /// The CA certificates of version `stamp` as trust roots.
    pub fn roots(&self, stamp: &CaStamp) -> Result<RootCertStore, TlsError> {
        let (pem, what) = match (self, &stamp.0) {
            (_, Version::Bundle(pem)) => (pem.clone(), "CA bundle".to_string()),
            (CaSource::File(path), Version::File(_)) => {
                let pem = std::fs::read(path).map_err(|source| TlsError::Read {
                    what: ca_what(path),
                    source,
                })?;
                (pem, ca_what(path))
            }
            (CaSource::Bundle(current), Version::File(_)) => (current(), "CA bundle".to_string()),
        };
        roots_from_pem(&pem, &what)
    }
}

/// Every certificate in `pem` as a trust root; `what` names the input in errors.
pub(super) fn roots_from_pem(pem: &[u8], what: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (index, der) in parse_certs(pem, what)?.into_iter().enumerate() {
        roots.add(der).map_err(|e| TlsError::BadCertificate {
            what: what.to_string(),
            index: index + 1,
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn ca_what(path: &std::path::Path) -> String {
    format!("CA file {}", path.display())
}

/// The certificate this process serves with right now (it rotates).
pub trait CurrentCert: fmt::Debug + Send + Sync {
    fn current(&self) -> Arc<CertifiedKey>;
}

/// Presents the serving certificate as a client certificate (to the leader).
#[derive(Debug)]
pub struct PresentCert(pub Arc<dyn CurrentCert>);

impl ResolvesClientCert for PresentCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Other replicas, accepted as clients when the webhook port requires client certificates.
#[derive(Clone)]
pub struct Peers {
    /// The CA that signs every replica's serving certificate.
    pub ca: CaSource,
    /// The webhook Service's name (`<service>.<namespace>.svc`): a peer's certificate carries it
    /// as a DNS name, as every replica's serving certificate does.
    pub name: String,
}

impl fmt::Debug for Peers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peers")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Verifies peer certificates; the verifier is rebuilt only when the CA changes.
pub(super) struct PeerVerifier {
    peers: Peers,
    cached: Mutex<Option<(CaStamp, Arc<dyn ClientCertVerifier>)>>,
}

impl PeerVerifier {
    pub(super) fn new(peers: Peers) -> Self {
        PeerVerifier {
            peers,
            cached: Mutex::new(None),
        }
    }

    /// Is `end_entity` another replica's serving certificate?
    pub(super) fn is_peer(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> bool {
        let Some(verifier) = self.verifier() else {
            return false;
        };
        verifier
            .verify_client_cert(end_entity, intermediates, now)
            .is_ok()
            && names(end_entity).contains(&self.peers.name)
    }

    fn verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        let stamp = match self.peers.ca.stamp() {
            Ok(stamp) => stamp,
            Err(e) => {
                tracing::debug!(error = %e, "no CA to verify a peer with");
                return None;
            }
        };
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, verifier)) = cached.as_ref()
            && *seen == stamp
        {
            return Some(verifier.clone());
        }
        let built = self.peers.ca.roots(&stamp).and_then(|roots| {
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    what: "peer CA".into(),
                    source,
                })
        });
        match built {
            Ok(verifier) => {
                *cached = Some((stamp, verifier.clone()));
                Some(verifier)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot verify peers with the serving CA");
                None
            }
        }
    }
}

/// The certificate's Subject Common Names and DNS subject alternative names.
pub(super) fn names(end_entity: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(end_entity) else {
        return Vec::new();
    };
    let mut out: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_string)
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        out.extend(san.value.general_names.iter().filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tls::{generate_self_signed, issue_serving_cert};

    const NAME: &str = "kube-vip-webhook.kube-system.svc";
    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn der(pem: &str) -> CertificateDer<'static> {
        parse_certs(pem.as_bytes(), "test").expect("certificate")[0].clone()
    }

    fn verifier_for(ca_pem: String) -> PeerVerifier {
        PeerVerifier::new(Peers {
            ca: CaSource::Bundle(Arc::new(move || ca_pem.clone().into_bytes())),
            name: NAME.into(),
        })
    }

    #[test]
    fn a_peer_is_a_serving_certificate_of_the_same_ca_naming_the_service() {
        let ours = generate_self_signed(&[NAME.into()], DAY).expect("CA");
        let peers = verifier_for(ours.ca_cert_pem.clone());
        let now = UnixTime::now();
        assert!(peers.is_peer(&der(&ours.cert_pem), &[], now));

        let (other_name, _) = issue_serving_cert(
            &ours.ca_cert_pem,
            &ours.ca_key_pem,
            &["x.y.svc".into()],
            DAY,
        )
        .expect("issue");
        assert!(!peers.is_peer(&der(&other_name), &[], now), "wrong name");

        let theirs = generate_self_signed(&[NAME.into()], DAY).expect("CA");
        assert!(!peers.is_peer(&der(&theirs.cert_pem), &[], now), "other CA");
    }

    #[test]
    fn a_rotated_ca_applies_to_the_next_check() {
        let old = generate_self_signed(&[NAME.into()], DAY).expect("CA");
        let new = generate_self_signed(&[NAME.into()], DAY).expect("CA");
        let current = Arc::new(Mutex::new(old.ca_cert_pem.clone()));
        let source = current.clone();
        let peers = PeerVerifier::new(Peers {
            ca: CaSource::Bundle(Arc::new(move || {
                source.lock().expect("lock").clone().into_bytes()
            })),
            name: NAME.into(),
        });
        let now = UnixTime::now();
        assert!(peers.is_peer(&der(&old.cert_pem), &[], now));
        assert!(!peers.is_peer(&der(&new.cert_pem), &[], now));
        *current.lock().expect("lock") = new.ca_cert_pem.clone();
        assert!(peers.is_peer(&der(&new.cert_pem), &[], now));
        assert!(!peers.is_peer(&der(&old.cert_pem), &[], now));
    }
}
