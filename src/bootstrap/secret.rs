//! Converging the certificate Secret: create it when absent, reuse it when valid, rewrite it when
//! due. Every write is conditional (create fails if it exists, replace carries the
//! resourceVersion), so replicas racing each other all end up with the winner's contents.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use super::material::{Material, Plan};
use super::{BootstrapConfig, BootstrapError, api_code, within};

/// Rounds of read-decide-write before giving up on a Secret that keeps changing under us.
const MAX_ATTEMPTS: usize = 5;
const SECRET_TYPE: &str = "kubernetes.io/tls";

/// Make the Secret hold servable material and return it.
pub async fn converge(
    api: &Api<Secret>,
    cfg: &BootstrapConfig,
) -> Result<Material, BootstrapError> {
    let err = |action: &'static str| {
        move |source| BootstrapError::Secret {
            action,
            namespace: cfg.namespace.clone(),
            name: cfg.secret_name.clone(),
            source: Box::new(source),
        }
    };
    for _ in 0..MAX_ATTEMPTS {
        let now = SystemTime::now();
        let Some(secret) = within(cfg.call_timeout, api.get_opt(&cfg.secret_name))
            .await
            .map_err(err("reading"))?
        else {
            let material = Material::generate(&cfg.dns_names, cfg.validity, None, now)
                .map_err(|e| cfg.tls_error(e))?;
            let secret = new_secret(cfg, &material);
            match within(
                cfg.call_timeout,
                api.create(&PostParams::default(), &secret),
            )
            .await
            {
                Ok(_) => {
                    tracing::info!(secret = %cfg.secret_ref(), "created the self-signed CA and serving certificate");
                    return Ok(material);
                }
                // Another replica created it first: use theirs.
                Err(e) if api_code(&e) == Some(409) => continue,
                Err(e) => return Err(err("creating")(e)),
            }
        };
        let (next, reason, ca_rotated) = match Material::from_data(secret.data.as_ref()) {
            Err(reason) => (new_ca(cfg, None, now)?, reason, true),
            Ok(current) => match replacement(cfg, &current, now)? {
                None => return Ok(current),
                Some((next, reason)) => {
                    let rotated = next.ca_cert_pem != current.ca_cert_pem;
                    (next, reason, rotated)
                }
            },
        };
        let mut updated = secret;
        next.write_data(updated.data.get_or_insert_with(BTreeMap::new));
        // The type is immutable; a Secret someone created as Opaque stays Opaque.
        let params = PostParams::default();
        let replace = api.replace(&cfg.secret_name, &params, &updated);
        match within(cfg.call_timeout, replace).await {
            Ok(_) => {
                tracing::info!(secret = %cfg.secret_ref(), reason, ca_rotated, "renewed the self-signed certificate");
                return Ok(next);
            }
            // Someone else rewrote (or deleted) it since we read it: look again.
            Err(e) if matches!(api_code(&e), Some(409 | 404)) => continue,
            Err(e) => return Err(err("updating")(e)),
        }
    }
    Err(BootstrapError::Contended {
        secret: cfg.secret_ref(),
        attempts: MAX_ATTEMPTS,
    })
}

/// What to write instead of `current` and why; `None` if it can be served as it is.
fn replacement(
    cfg: &BootstrapConfig,
    current: &Material,
    now: SystemTime,
) -> Result<Option<(Material, String)>, BootstrapError> {
    match current.assess(&cfg.dns_names, now) {
        Plan::Reuse => Ok(None),
        Plan::RenewLeaf(reason) => match current.renew_leaf(&cfg.dns_names, cfg.validity, now) {
            Ok(next) => Ok(Some((next, reason))),
            // The CA can still fail here (e.g. it expired a moment ago): start over with a new one.
            Err(_) => Ok(Some((new_ca(cfg, Some(current), now)?, reason))),
        },
        Plan::NewCa(reason) => Ok(Some((new_ca(cfg, Some(current), now)?, reason))),
    }
}

fn new_ca(
    cfg: &BootstrapConfig,
    replacing: Option<&Material>,
    now: SystemTime,
) -> Result<Material, BootstrapError> {
    Material::generate(&cfg.dns_names, cfg.validity, replacing, now).map_err(|e| cfg.tls_error(e))
}

fn new_secret(cfg: &BootstrapConfig, material: &Material) -> Secret {
    let mut data = BTreeMap::new();
    material.write_data(&mut data);
    Secret {
        metadata: ObjectMeta {
            name: Some(cfg.secret_name.clone()),
            namespace: Some(cfg.namespace.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "kube-vip-webhook".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE.to_string()),
        data: Some(data),
        ..Secret::default()
    }
}
