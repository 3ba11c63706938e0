//! The CA and serving certificate kept in the Secret: reading them from Secret data, deciding
//! whether they can be served as they are, and producing their replacement. No I/O; the time is
//! a parameter so every decision can be tested at any date.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::tls::{self, TlsError};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
/// The CA that signed serving certificates before the last CA rotation. It stays in the
/// `caBundle` until it expires, so replicas still serving a certificate from it (until their
/// next check) stay trusted while the rotation spreads.
pub const PREVIOUS_CA: &str = "ca-previous.crt";

/// PEM contents of the Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub previous_ca_pem: Option<String>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// What to do with the Secret's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Reuse,
    /// Issue a new serving certificate from the same CA (the `caBundle` does not change).
    RenewLeaf(String),
    /// Generate a new CA and serving certificate.
    NewCa(String),
}

/// Validity window of one certificate.
#[derive(Clone, Copy, Debug)]
struct Window {
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Window {
    fn of(pem: &str) -> Result<(Self, bool), String> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| e.to_string())?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
        let window = Self {
            not_before: from_unix(cert.validity().not_before.timestamp()),
            not_after: from_unix(cert.validity().not_after.timestamp()),
        };
        Ok((window, cert.is_ca()))
    }

    /// Renewal starts when less than a third of the lifetime is left.
    fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_after - lifetime / 3
    }

    fn contains(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

fn from_unix(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    t.unwrap_or(UNIX_EPOCH)
}

impl Material {
    /// Read the four required keys (and the optional previous CA) from Secret data.
    pub fn from_data(data: Option<&BTreeMap<String, ByteString>>) -> Result<Self, String> {
        let get = |key: &str| -> Result<String, String> {
            let bytes = data
                .and_then(|d| d.get(key))
                .ok_or_else(|| format!("key {key} is missing"))?;
            String::from_utf8(bytes.0.clone()).map_err(|_| format!("key {key} is not PEM text"))
        };
        Ok(Self {
            ca_cert_pem: get(CA_CERT)?,
            ca_key_pem: get(CA_KEY)?,
            cert_pem: get(TLS_CERT)?,
            key_pem: get(TLS_KEY)?,
            previous_ca_pem: get(PREVIOUS_CA).ok(),
        })
    }

    /// Write our keys into `data`, keeping any other keys someone put there.
    pub fn write_data(&self, data: &mut BTreeMap<String, ByteString>) {
        let mut put = |key: &str, value: &str| {
            data.insert(key.to_string(), ByteString(value.as_bytes().to_vec()));
        };
        put(CA_CERT, &self.ca_cert_pem);
        put(CA_KEY, &self.ca_key_pem);
        put(TLS_CERT, &self.cert_pem);
        put(TLS_KEY, &self.key_pem);
        match &self.previous_ca_pem {
            Some(pem) => put(PREVIOUS_CA, pem),
            None => {
                data.remove(PREVIOUS_CA);
            }
        }
    }

    /// A new CA and serving certificate. The CA being replaced (if still valid) is kept as the
    /// previous CA.
    pub fn generate(
        names: &[String],
        validity: Duration,
        replacing: Option<&Material>,
        now: SystemTime,
    ) -> Result<Self, TlsError> {
        let s = tls::generate_self_signed(names, validity)?;
        let previous_ca_pem = replacing
            .map(|old| old.ca_cert_pem.clone())
            .filter(|pem| *pem != s.ca_cert_pem && ca_usable(pem, now));
        Ok(Self {
            ca_cert_pem: s.ca_cert_pem,
            ca_key_pem: s.ca_key_pem,
            cert_pem: s.cert_pem,
            key_pem: s.key_pem,
            previous_ca_pem,
        })
    }

    /// The same CA with a new serving certificate.
    pub fn renew_leaf(
        &self,
        names: &[String],
        validity: Duration,
        now: SystemTime,
    ) -> Result<Self, TlsError> {
        let (cert_pem, key_pem) =
            tls::issue_serving_cert(&self.ca_cert_pem, &self.ca_key_pem, names, validity)?;
        Ok(Self {
            cert_pem,
            key_pem,
            previous_ca_pem: self.previous_ca_pem.clone().filter(|p| ca_usable(p, now)),
            ..self.clone()
        })
    }

    /// The `caBundle` to publish: the CA, then the previous CA while it is still valid.
    pub fn ca_bundle(&self, now: SystemTime) -> Vec<u8> {
        let mut bundle = self.ca_cert_pem.trim_end().to_string();
        bundle.push('\n');
        if let Some(previous) = self
            .previous_ca_pem
            .as_deref()
            .filter(|p| ca_usable(p, now))
        {
            bundle.push_str(previous.trim_end());
            bundle.push('\n');
        }
        bundle.into_bytes()
    }

    /// When the next renewal (of the serving certificate or the CA) is due. `None` if the
    /// certificates cannot be parsed (then they are due now).
    pub fn renew_at(&self) -> Option<SystemTime> {
        let (ca, _) = Window::of(&self.ca_cert_pem).ok()?;
        let (leaf, _) = Window::of(&self.cert_pem).ok()?;
        Some(ca.renew_at().min(leaf.renew_at()))
    }

    /// Can this be served as it is at `now` for all of `names`?
    pub fn assess(&self, names: &[String], now: SystemTime) -> Plan {
        if let Err(reason) = self.check_ca(now) {
            return Plan::NewCa(reason);
        }
        match self.check_leaf(names, now) {
            Ok(()) => Plan::Reuse,
            Err(reason) => Plan::RenewLeaf(reason),
        }
    }

    fn check_ca(&self, now: SystemTime) -> Result<(), String> {
        let (window, is_ca) =
            Window::of(&self.ca_cert_pem).map_err(|e| format!("{CA_CERT} does not parse: {e}"))?;
        if !is_ca {
            return Err(format!("{CA_CERT} is not a CA certificate"));
        }
        if !window.contains(now) {
            return Err(format!("{CA_CERT} is expired or not yet valid"));
        }
        if now >= window.renew_at() {
            return Err(format!("{CA_CERT} is due for renewal"));
        }
        let key = rcgen::KeyPair::from_pem(&self.ca_key_pem)
            .map_err(|e| format!("{CA_KEY} does not parse: {e}"))?;
        let der = CertificateDer::from_pem_slice(self.ca_cert_pem.as_bytes())
            .map_err(|e| e.to_string())?;
        let (_, ca) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
        if rcgen::PublicKeyData::subject_public_key_info(&key) != ca.public_key().raw {
            return Err(format!("{CA_KEY} does not belong to {CA_CERT}"));
        }
        Ok(())
    }

    fn check_leaf(&self, names: &[String], now: SystemTime) -> Result<(), String> {
        let (window, _) =
            Window::of(&self.cert_pem).map_err(|e| format!("{TLS_CERT} does not parse: {e}"))?;
        verify_for_names(&self.ca_cert_pem, &self.cert_pem, names, now)?;
        tls::SwappableCert::new(&self.cert_pem, &self.key_pem)
            .map_err(|e| format!("{TLS_CERT}/{TLS_KEY}: {}", tls::error_chain(&e)))?;
        if now >= window.renew_at() {
            return Err(format!("{TLS_CERT} is due for renewal"));
        }
        Ok(())
    }
}

fn ca_usable(pem: &str, now: SystemTime) -> bool {
    matches!(Window::of(pem), Ok((window, true)) if window.contains(now))
}

/// Check the serving certificate chains to the CA and is valid for every name at `now`, the
/// way the apiserver's client will check it.
fn verify_for_names(
    ca_pem: &str,
    cert_pem: &str,
    names: &[String],
    now: SystemTime,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| e.to_string())?;
    roots
        .add(ca)
        .map_err(|e| format!("{CA_CERT} is not usable as a root: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())?;
    let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| e.to_string())?;
    let at = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    for name in names {
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| format!("{name} is not a valid server name: {e}"))?;
        verifier
            .verify_server_cert(&leaf, &[], &server_name, &[], at)
            .map_err(|e| format!("{TLS_CERT} does not verify for {name}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    fn names() -> Vec<String> {
        crate::bootstrap::service_dns_names("kube-vip-webhook", "kube-system")
    }

    fn fresh() -> Material {
        Material::generate(&names(), YEAR, None, SystemTime::now()).unwrap()
    }

    #[test]
    fn fresh_material_is_reused_and_round_trips_through_secret_data() {
        let m = fresh();
        assert_eq!(m.assess(&names(), SystemTime::now()), Plan::Reuse);
        let mut data = BTreeMap::new();
        data.insert("other".to_string(), ByteString(b"kept".to_vec()));
        m.write_data(&mut data);
        assert_eq!(Material::from_data(Some(&data)).unwrap(), m);
        assert_eq!(data["other"].0, b"kept");
    }

    #[test]
    fn missing_or_binary_keys_are_reported() {
        let mut data = BTreeMap::new();
        fresh().write_data(&mut data);
        data.remove(CA_KEY);
        let err = Material::from_data(Some(&data)).unwrap_err();
        assert!(err.contains("ca.key"), "{err}");
        data.insert(CA_KEY.to_string(), ByteString(vec![0xff, 0xfe]));
        let err = Material::from_data(Some(&data)).unwrap_err();
        assert!(err.contains("not PEM text"), "{err}");
        assert!(Material::from_data(None).is_err());
    }

    #[test]
    fn leaf_renewal_is_due_in_the_last_third_and_keeps_the_ca() {
        let m = fresh();
        let now = SystemTime::now();
        assert_eq!(m.assess(&names(), now + YEAR / 2), Plan::Reuse);
        let later = now + YEAR * 7 / 10;
        assert!(matches!(m.assess(&names(), later), Plan::RenewLeaf(_)));
        let renewed = m.renew_leaf(&names(), YEAR, now).unwrap();
        assert_eq!(renewed.ca_cert_pem, m.ca_cert_pem);
        assert_ne!(renewed.cert_pem, m.cert_pem);
        assert_eq!(renewed.ca_bundle(now), m.ca_bundle(now));
        let due = m.renew_at().unwrap();
        assert!(due > now + YEAR / 2 && due < later);
    }

    #[test]
    fn wrong_names_or_foreign_key_renew_the_leaf() {
        let m = fresh();
        let other = names_for("other");
        assert!(
            matches!(m.assess(&other, SystemTime::now()), Plan::RenewLeaf(r) if r.contains("other.kube-system.svc"))
        );
        let foreign = Material {
            key_pem: fresh().key_pem,
            ..m.clone()
        };
        assert!(matches!(
            foreign.assess(&names(), SystemTime::now()),
            Plan::RenewLeaf(_)
        ));
        // A leaf from another CA does not chain.
        let stranger = Material {
            cert_pem: fresh().cert_pem,
            ..m
        };
        assert!(
            matches!(stranger.assess(&names(), SystemTime::now()), Plan::RenewLeaf(r) if r.contains("does not verify"))
        );
    }

    fn names_for(service: &str) -> Vec<String> {
        crate::bootstrap::service_dns_names(service, "kube-system")
    }

    #[test]
    fn ca_problems_need_a_new_ca_and_the_old_one_stays_in_the_bundle() {
        let m = fresh();
        let now = SystemTime::now();
        // CA (10 years) due in its last third, and expired.
        assert!(matches!(m.assess(&names(), now + 7 * YEAR), Plan::NewCa(_)));
        assert!(matches!(
            m.assess(&names(), now + 11 * YEAR),
            Plan::NewCa(_)
        ));
        let wrong_key = Material {
            ca_key_pem: fresh().ca_key_pem,
            ..m.clone()
        };
        assert!(
            matches!(wrong_key.assess(&names(), now), Plan::NewCa(r) if r.contains("does not belong"))
        );
        let not_ca = Material {
            ca_cert_pem: m.cert_pem.clone(),
            ..m.clone()
        };
        assert!(matches!(not_ca.assess(&names(), now), Plan::NewCa(r) if r.contains("not a CA")));

        let rotated = Material::generate(&names(), YEAR, Some(&m), now).unwrap();
        assert_ne!(rotated.ca_cert_pem, m.ca_cert_pem);
        let bundle = String::from_utf8(rotated.ca_bundle(now)).unwrap();
        assert!(bundle.starts_with(rotated.ca_cert_pem.trim_end()));
        assert!(bundle.contains(m.ca_cert_pem.trim_end()));
        // Once the previous CA has expired it leaves the bundle.
        let after = now + 11 * YEAR;
        assert_eq!(
            rotated.ca_bundle(after),
            format!("{}\n", rotated.ca_cert_pem.trim_end()).into_bytes()
        );
        // A broken old CA is not carried over.
        let rotated = Material::generate(&names(), YEAR, Some(&not_ca), now).unwrap();
        assert_eq!(rotated.previous_ca_pem, None);
    }

    #[test]
    fn short_lived_leaf_is_due_now() {
        let m = fresh();
        let (cert_pem, key_pem) =
            tls::issue_serving_cert(&m.ca_cert_pem, &m.ca_key_pem, &names(), DAY).unwrap();
        let short = Material {
            cert_pem,
            key_pem,
            ..m
        };
        let now = SystemTime::now();
        assert_eq!(short.assess(&names(), now), Plan::Reuse);
        assert!(
            matches!(short.assess(&names(), now + DAY * 2 / 3 + Duration::from_secs(3600)), Plan::RenewLeaf(r) if r.contains("due"))
        );
    }
}
