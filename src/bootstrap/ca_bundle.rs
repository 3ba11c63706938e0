//! Publishing the CA in our MutatingWebhookConfiguration.
//!
//! A JSON patch that touches only `webhooks[i].clientConfig.caBundle`, each guarded by a `test`
//! of `webhooks[i].name`: nothing else in the object is written, and if the list was reordered
//! since we read it the apiserver rejects the whole patch (422) instead of putting the bundle on
//! the wrong entry; then we read again.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use std::time::Duration;

use super::{BootstrapError, api_code, within};

const MAX_ATTEMPTS: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every webhook already had the bundle.
    Unchanged,
    /// This many webhooks were patched.
    Patched(usize),
    /// The configuration does not exist (yet).
    Missing,
}

/// Make every webhook of configuration `name` carry `bundle` as its `caBundle`.
pub async fn ensure(
    api: &Api<MutatingWebhookConfiguration>,
    name: &str,
    bundle: &[u8],
    call_timeout: Duration,
) -> Result<Outcome, BootstrapError> {
    let err = |action: &'static str| {
        move |source| BootstrapError::WebhookConfiguration {
            action,
            name: name.to_string(),
            source: Box::new(source),
        }
    };
    let encoded = serde_json::to_value(ByteString(bundle.to_vec())).unwrap_or(Value::Null);
    for _ in 0..MAX_ATTEMPTS {
        let read = within(call_timeout, api.get_opt(name)).await;
        let Some(config) = read.map_err(err("reading"))? else {
            return Ok(Outcome::Missing);
        };
        let ops = patch_ops(&config, bundle, &encoded);
        if ops.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        let patched = ops.len() / 2;
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(ops)).map_err(BootstrapError::Internal)?;
        let params = PatchParams::default();
        match within(
            call_timeout,
            api.patch(name, &params, &Patch::Json::<()>(patch)),
        )
        .await
        {
            Ok(_) => return Ok(Outcome::Patched(patched)),
            // A `test` failed (webhooks changed since we read them), or it was deleted: look again.
            Err(e) if matches!(api_code(&e), Some(422 | 404 | 409)) => continue,
            Err(e) => return Err(err("patching caBundle of")(e)),
        }
    }
    Err(BootstrapError::WebhookContended {
        name: name.to_string(),
        attempts: MAX_ATTEMPTS,
    })
}

/// `test` + `add` per webhook whose bundle differs (`add` replaces an existing member).
fn patch_ops(config: &MutatingWebhookConfiguration, bundle: &[u8], encoded: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    for (i, webhook) in config.webhooks.iter().flatten().enumerate() {
        if webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice())
            == Some(bundle)
        {
            continue;
        }
        ops.push(
            json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook.name}),
        );
        ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}));
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};

    fn webhook(name: &str, bundle: Option<&[u8]>) -> MutatingWebhook {
        MutatingWebhook {
            name: name.to_string(),
            client_config: WebhookClientConfig {
                ca_bundle: bundle.map(|b| ByteString(b.to_vec())),
                ..WebhookClientConfig::default()
            },
            ..MutatingWebhook::default()
        }
    }

    #[test]
    fn only_differing_webhooks_are_patched_each_guarded_by_its_name() {
        let config = MutatingWebhookConfiguration {
            webhooks: Some(vec![
                webhook("a.example", Some(b"old")),
                webhook("b.example", Some(b"new")),
                webhook("c.example", None),
            ]),
            ..MutatingWebhookConfiguration::default()
        };
        let encoded = serde_json::to_value(ByteString(b"new".to_vec())).unwrap();
        assert_eq!(encoded, json!("bmV3"));
        let ops = patch_ops(&config, b"new", &encoded);
        assert_eq!(
            ops,
            vec![
                json!({"op": "test", "path": "/webhooks/0/name", "value": "a.example"}),
                json!({"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "bmV3"}),
                json!({"op": "test", "path": "/webhooks/2/name", "value": "c.example"}),
                json!({"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": "bmV3"}),
            ]
        );
        assert!(serde_json::from_value::<json_patch::Patch>(Value::Array(ops)).is_ok());
    }
}
