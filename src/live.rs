//! One read of a live cluster, for `status` and `plan --kubeconfig`: the pool ConfigMap, every
//! Service (decoded lean, as the watch does), what reserves addresses (Nodes, the API endpoint),
//! the leader-election Lease and the certificates the webhook serves. Read-only: GET and LIST,
//! nothing else.

use std::collections::BTreeMap;
use std::time::SystemTime;

use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;

mod pools;

use crate::admission::LeanService;
use crate::ipam::Family;
use crate::reserved::objects::{
    self, CLUSTER_INFO_NAME, CLUSTER_INFO_NAMESPACE, KUBERNETES_NAMESPACE, KUBERNETES_SERVICE,
    LeanNode,
};
use crate::reserved::{Holding, Source};
use crate::service::SvcInfo;

/// Bound on a single read (kube's client has no read timeout of its own).
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Services are listed in pages of this many (a 100k-Service cluster is read in 200 requests
/// instead of one response of hundreds of MB).
const PAGE: u32 = 500;

/// Where to look. The default is the shipped install (`kube-system`, names as in `manifest/`).
#[derive(Clone, Debug)]
pub struct Target {
    pub config_namespace: String,
    pub config_name: String,
    /// The webhook's own namespace (Lease, certificate Secrets).
    pub namespace: String,
    pub lease_name: String,
    /// Secrets that may hold the serving certificate (`tls.crt`): the self-signed route's and
    /// cert-manager's; those that do not exist are skipped.
    pub cert_secrets: Vec<String>,
    pub webhook_configuration: String,
}

impl Default for Target {
    fn default() -> Self {
        Target {
            config_namespace: "kube-system".into(),
            config_name: "kubevip".into(),
            namespace: "kube-system".into(),
            lease_name: "kube-vip-webhook".into(),
            cert_secrets: vec![
                "kube-vip-webhook-selfsigned".into(),
                "kube-vip-webhook-tls".into(),
            ],
            webhook_configuration: "kube-vip-webhook".into(),
        }
    }
}

/// A certificate found in the cluster and when it expires.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CertInfo {
    /// `Secret kube-system/x (tls.crt)` or `MutatingWebhookConfiguration x (caBundle)`.
    pub source: String,
    #[serde(serialize_with = "unix_seconds")]
    pub not_after: SystemTime,
}

fn unix_seconds<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    s.serialize_u64(secs)
}

pub struct Snapshot {
    /// `None`: the ConfigMap does not exist.
    pub config_data: Option<BTreeMap<String, String>>,
    pub services: Vec<SvcInfo>,
    /// What reserves addresses: every Node, the kubernetes EndpointSlice, cluster-info.
    pub network: Vec<(Source, Vec<Holding>)>,
    pub lease: Option<Lease>,
    pub certs: Vec<CertInfo>,
    /// VIPPools and namespace labels (empty where the CRD is absent or not readable).
    pub objects: crate::pools::PoolObjects,
}

pub async fn read(client: &kube::Client, target: &Target) -> anyhow::Result<Snapshot> {
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &target.config_namespace);
    let config_data = configmaps
        .get_opt(&target.config_name)
        .await?
        .map(|cm| cm.data.unwrap_or_default());
    let services = list_services(client).await?;
    let network = read_network(client).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &target.namespace);
    let lease = leases.get_opt(&target.lease_name).await?;
    let mut certs = Vec::new();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.namespace);
    for name in &target.cert_secrets {
        // A Secret we may not read is as good as absent here; the report says what it found.
        let Ok(Some(secret)) = secrets.get_opt(name).await else {
            continue;
        };
        if let Some(pem) = secret.data.as_ref().and_then(|d| d.get("tls.crt"))
            && let Ok(text) = std::str::from_utf8(&pem.0)
            && let Ok(not_after) = crate::tls::not_after(text)
        {
            certs.push(CertInfo {
                source: format!("Secret {}/{name} (tls.crt)", target.namespace),
                not_after,
            });
        }
    }
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if let Ok(Some(mwc)) = configs.get_opt(&target.webhook_configuration).await
        && let Some(bundle) = mwc
            .webhooks
            .iter()
            .flatten()
            .find_map(|w| w.client_config.ca_bundle.as_ref())
        && let Ok(text) = std::str::from_utf8(&bundle.0)
        && let Ok(not_after) = crate::tls::not_after(text)
    {
        certs.push(CertInfo {
            source: format!(
                "MutatingWebhookConfiguration {} (caBundle)",
                target.webhook_configuration
            ),
            not_after,
        });
    }
    Ok(Snapshot {
        config_data,
        services,
        network,
        lease,
        certs,
        objects: pools::read_objects(client).await,
    })
}

async fn list_services(client: &kube::Client) -> anyhow::Result<Vec<SvcInfo>> {
    let api: Api<LeanService> = Api::all(client.clone());
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await?;
        out.extend(page.items.iter().map(|s| SvcInfo::from_service(&s.0)));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    Ok(out)
}

/// Nodes (paged, decoded lean), the `default/kubernetes` EndpointSlice and `cluster-info`, as
/// the webhook watches them.
pub async fn read_network(client: &kube::Client) -> anyhow::Result<Vec<(Source, Vec<Holding>)>> {
    let mut out = Vec::new();
    let nodes: Api<LeanNode> = Api::all(client.clone());
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = nodes.list(&params).await.context("cannot list Nodes")?;
        out.extend(page.items.iter().map(|n| objects::node(&n.0)));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), KUBERNETES_NAMESPACE);
    let by_name = ListParams::default().fields(&format!("metadata.name={KUBERNETES_SERVICE}"));
    let listed = slices.list(&by_name).await.with_context(|| {
        format!("cannot list the {KUBERNETES_NAMESPACE}/{KUBERNETES_SERVICE} EndpointSlice")
    })?;
    out.extend(listed.items.iter().map(objects::endpoint_slice));
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), CLUSTER_INFO_NAMESPACE);
    let cm = configmaps
        .get_opt(CLUSTER_INFO_NAME)
        .await
        .with_context(|| format!("cannot read {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO_NAME}"))?;
    out.push(objects::cluster_info(cm.as_ref()));
    Ok(out)
}

/// A client from `--kubeconfig`, or the usual places (in-cluster, `$KUBECONFIG`, `~/.kube/config`).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
            Ok(kube::Client::try_from(config)?)
        }
        None => kube::Client::try_default()
            .await
            .context("no cluster credentials (in-cluster config or kubeconfig)"),
    }
}

/// The cluster's primary family: the first family of the `default/kubernetes` Service.
pub async fn primary_family(client: &kube::Client) -> Family {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    match tokio::time::timeout(CALL_TIMEOUT, api.get("kubernetes")).await {
        Ok(Ok(svc)) => svc
            .spec
            .and_then(|s| s.ip_families)
            .and_then(|f| f.first().and_then(|f| Family::from_k8s(f)))
            .unwrap_or(Family::V4),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read default/kubernetes to learn the primary IP family; assuming IPv4 (set --default-ip-family)");
            Family::V4
        }
        Err(_) => {
            tracing::warn!(
                "reading default/kubernetes timed out; assuming IPv4 (set --default-ip-family)"
            );
            Family::V4
        }
    }
}
