//! Reserved addresses read from the Kubernetes objects that report them: Nodes, the
//! `default/kubernetes` EndpointSlices and the `kube-public/cluster-info` ConfigMap.

use std::borrow::Cow;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ConfigMap, Node, NodeAddress, NodeStatus};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};

use super::{Holding, Source, server_ip};

/// Where the API endpoint is published for bootstrapping clients (kubeadm and most installers).
pub const CLUSTER_INFO_NAMESPACE: &str = "kube-public";
pub const CLUSTER_INFO_NAME: &str = "cluster-info";
/// The Service whose EndpointSlices list the apiservers' addresses; the apiserver itself names
/// its slice after it.
pub const KUBERNETES_NAMESPACE: &str = "default";
pub const KUBERNETES_SERVICE: &str = "kubernetes";

/// The Node address types that are addresses on the wire (`Hostname`, `InternalDNS`,
/// `ExternalDNS` are names).
const NODE_ADDRESS_TYPES: [&str; 2] = ["InternalIP", "ExternalIP"];

/// A Node's reserved addresses: one holding per address type (`node worker-1's InternalIP`).
/// Entries that are not IP addresses are ignored.
pub fn node(node: &Node) -> (Source, Vec<Holding>) {
    let name = node.metadata.name.clone().unwrap_or_default();
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let holdings = NODE_ADDRESS_TYPES
        .iter()
        .filter_map(|kind| {
            let ips = addresses
                .iter()
                .filter(|a| a.type_ == *kind)
                .filter_map(|a| a.address.trim().parse().ok())
                .collect();
            Holding::new(format!("node {name}'s {kind}"), ips)
        })
        .collect();
    (Source::Node(name), holdings)
}

/// An EndpointSlice of the `kubernetes` Service: the apiservers' own addresses.
pub fn endpoint_slice(slice: &EndpointSlice) -> (Source, Vec<Holding>) {
    let name = slice.metadata.name.clone().unwrap_or_default();
    let namespace = slice
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(KUBERNETES_NAMESPACE);
    let ips: Vec<IpAddr> = slice
        .endpoints
        .iter()
        .flat_map(|e| &e.addresses)
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    let owner = format!("the API endpoint (EndpointSlice {namespace}/{name})");
    (
        Source::EndpointSlice(name),
        Holding::new(owner, ips).into_iter().collect(),
    )
}

/// The `cluster-info` ConfigMap: the `server` of every cluster in its `kubeconfig` key that is
/// an IP address (the address every kubeconfig points at, often a kube-vip control-plane VIP).
/// An unreadable kubeconfig reserves nothing (nothing to read, and nothing else depends on it).
pub fn cluster_info(cm: Option<&ConfigMap>) -> (Source, Vec<Holding>) {
    let text = cm
        .and_then(|cm| cm.data.as_ref())
        .and_then(|d| d.get("kubeconfig"));
    let holdings = text
        .map(|t| kubeconfig_servers(t))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|server| {
            let ip = server_ip(&server)?;
            let owner = format!(
                "the API endpoint (server {server} in ConfigMap \
                 {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO_NAME})"
            );
            Holding::new(owner, vec![ip])
        })
        .collect();
    (Source::ClusterInfo, holdings)
}

/// Every `clusters[].cluster.server` of a kubeconfig (YAML or JSON); empty when unreadable.
fn kubeconfig_servers(text: &str) -> Vec<String> {
    #[derive(Deserialize)]
    struct Kubeconfig {
        #[serde(default)]
        clusters: Vec<Named>,
    }
    #[derive(Deserialize)]
    struct Named {
        #[serde(default)]
        cluster: Option<Cluster>,
    }
    #[derive(Deserialize)]
    struct Cluster {
        #[serde(default)]
        server: Option<String>,
    }
    match serde_yaml_ng::from_str::<Kubeconfig>(text) {
        Ok(kc) => kc
            .clusters
            .into_iter()
            .filter_map(|c| c.cluster?.server)
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "the cluster-info kubeconfig does not parse");
            Vec::new()
        }
    }
}

/// A Node decoded keeping only its name, resourceVersion and addresses: a Node's status also
/// carries its image list and conditions (tens of KB), which the watch would otherwise build
/// for every status update of every node.
#[derive(Clone, Debug)]
pub struct LeanNode(pub Node);

impl<'de> Deserialize<'de> for LeanNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Meta {
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            resource_version: Option<String>,
        }
        #[derive(Deserialize, Default)]
        struct Status {
            #[serde(default)]
            addresses: Option<Vec<NodeAddress>>,
        }
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            metadata: Option<Meta>,
            #[serde(default)]
            status: Option<Status>,
        }
        let wire = Wire::deserialize(d)?;
        let meta = wire.metadata.unwrap_or_default();
        Ok(LeanNode(Node {
            metadata: ObjectMeta {
                name: meta.name,
                resource_version: meta.resource_version,
                ..ObjectMeta::default()
            },
            spec: None,
            status: wire.status.map(|s| NodeStatus {
                addresses: s.addresses,
                ..NodeStatus::default()
            }),
        }))
    }
}

impl kube::Resource for LeanNode {
    type DynamicType = ();
    type Scope = <Node as kube::Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        <Node as kube::Resource>::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        <Node as kube::Resource>::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        <Node as kube::Resource>::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        <Node as kube::Resource>::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        <Node as kube::Resource>::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn node_addresses_by_type_names_ignored() {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": "worker-1"},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.0.5"},
                {"type": "InternalIP", "address": "fd00::5"},
                {"type": "ExternalIP", "address": "203.0.113.5"},
                {"type": "Hostname", "address": "worker-1"},
                {"type": "InternalDNS", "address": "10.0.0.99"},
                {"type": "ExternalIP", "address": "not-an-ip"},
            ]}
        }))
        .unwrap();
        let (source, holdings) = node(&n);
        assert_eq!(source, Source::Node("worker-1".into()));
        assert_eq!(
            holdings,
            [
                Holding {
                    owner: "node worker-1's InternalIP".into(),
                    ips: vec![ip("10.0.0.5"), ip("fd00::5")]
                },
                Holding {
                    owner: "node worker-1's ExternalIP".into(),
                    ips: vec![ip("203.0.113.5")]
                },
            ]
        );
        let bare: Node = serde_json::from_value(json!({"metadata": {"name": "new"}})).unwrap();
        assert!(node(&bare).1.is_empty());
    }

    #[test]
    fn lean_node_reads_what_the_full_decode_reads() {
        let v = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "w", "resourceVersion": "42", "labels": {"a": "b"},
                         "managedFields": [{"manager": "kubelet"}]},
            "spec": {"podCIDR": "10.244.0.0/24"},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "10.0.0.7"}],
                "images": [{"names": ["x"], "sizeBytes": 1}],
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        });
        let full: Node = serde_json::from_value(v.clone()).unwrap();
        let lean: LeanNode = serde_json::from_value(v).unwrap();
        assert_eq!(node(&lean.0), node(&full));
        assert_eq!(lean.0.metadata.resource_version.as_deref(), Some("42"));
        assert!(serde_json::from_value::<LeanNode>(json!({"status": 3})).is_err());
    }

    #[test]
    fn endpoint_slice_addresses() {
        let s: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.10"]}, {"addresses": ["10.0.0.11", "10.0.0.10"]}],
        }))
        .unwrap();
        let (source, holdings) = endpoint_slice(&s);
        assert_eq!(source, Source::EndpointSlice("kubernetes".into()));
        assert_eq!(
            holdings[0].owner,
            "the API endpoint (EndpointSlice default/kubernetes)"
        );
        assert_eq!(holdings[0].ips, [ip("10.0.0.10"), ip("10.0.0.11")]);
    }

    #[test]
    fn cluster_info_server_when_it_is_an_address() {
        let cm = |kubeconfig: &str| -> ConfigMap {
            serde_json::from_value(json!({
                "metadata": {"name": "cluster-info", "namespace": "kube-public"},
                "data": {"kubeconfig": kubeconfig},
            }))
            .unwrap()
        };
        let kc = "apiVersion: v1\nkind: Config\nclusters:\n- name: ''\n  cluster:\n    \
                  certificate-authority-data: AAAA\n    server: https://10.0.0.100:6443\n\
                  contexts: null\ncurrent-context: ''\nusers: null\n";
        let (source, holdings) = cluster_info(Some(&cm(kc)));
        assert_eq!(source, Source::ClusterInfo);
        assert_eq!(holdings.len(), 1);
        assert_eq!(holdings[0].ips, [ip("10.0.0.100")]);
        assert_eq!(
            holdings[0].owner,
            "the API endpoint (server https://10.0.0.100:6443 in ConfigMap kube-public/cluster-info)"
        );
        let named = kc.replace("10.0.0.100", "api.example.com");
        assert!(cluster_info(Some(&cm(&named))).1.is_empty());
        assert!(cluster_info(Some(&cm("{not yaml"))).1.is_empty());
        assert!(cluster_info(None).1.is_empty());
    }
}
