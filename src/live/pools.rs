//! VIPPools and namespace labels, read once for `status` and `plan --live`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;

use crate::pools::{PoolObjects, VIPPool};

/// Every VIPPool and every namespace's labels. What cannot be read (no CRD installed, no RBAC
/// for it) is left empty and logged: the report is then the ConfigMap's alone, as before pools.
pub async fn read_objects(client: &kube::Client) -> PoolObjects {
    let pools = match Api::<VIPPool>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            tracing::info!(error = %e, "VIPPools not read (CRD not installed?): ConfigMap pools only");
            Vec::new()
        }
    };
    let namespaces = if pools.is_empty() {
        Vec::new()
    } else {
        match Api::<PartialObjectMeta<Namespace>>::all(client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(list) => list
                .items
                .into_iter()
                .map(|m| {
                    (
                        m.metadata.name.unwrap_or_default(),
                        m.metadata.labels.unwrap_or_default(),
                    )
                })
                .collect::<Vec<(String, BTreeMap<String, String>)>>(),
            Err(e) => {
                tracing::info!(error = %e, "Namespaces not read: namespace selectors match by name only");
                Vec::new()
            }
        }
    };
    PoolObjects { pools, namespaces }
}
