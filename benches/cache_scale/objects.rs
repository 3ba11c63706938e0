//! Realistic LoadBalancer Services as a cluster holds them: labels, the last-applied annotation,
//! managedFields of two managers, two ports, a selector, cluster IPs, an ingress status.

use std::net::IpAddr;

use kube_vip_webhook::ipam::{Family, from_u128, is_filtered, to_u128};
use serde_json::{Value, json};

/// The `n`-th allocatable address of 10.0.0.0/8 (as allocation from an empty pool gives them).
pub fn address(n: u64) -> IpAddr {
    // 254 allocatable addresses per 256: skip .0 and .255.
    let base = to_u128("10.0.0.0".parse().expect("address"));
    let v = base + u128::from(n / 254) * 256 + 1 + u128::from(n % 254);
    let ip = from_u128(Family::V4, v);
    debug_assert!(!is_filtered(ip));
    ip
}

pub fn namespace(i: u64) -> String {
    format!("team-{:03}", i % 200)
}

pub fn service(i: u64, ip: IpAddr) -> Value {
    let ns = namespace(i);
    let name = format!("svc-{i:06}");
    let cluster_ip = format!("172.20.{}.{}", (i / 250) % 250, 1 + i % 250);
    let last_applied = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"annotations": {}, "labels": {"app.kubernetes.io/instance": name,
            "app.kubernetes.io/name": "web", "app.kubernetes.io/part-of": "shop"},
            "name": name, "namespace": ns},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                           {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8443}],
                 "selector": {"app.kubernetes.io/instance": name}, "type": "LoadBalancer"}
    })
    .to_string();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": name, "namespace": ns,
            "labels": {"app.kubernetes.io/instance": name, "app.kubernetes.io/name": "web",
                       "app.kubernetes.io/part-of": "shop", "implementation": "kube-vip"},
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": last_applied + "\n",
                "kube-vip.io/loadbalancerIPs": ip.to_string(),
                "prometheus.io/scrape": "true", "prometheus.io/port": "9090"
            },
            "managedFields": [
                {"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "v1",
                 "time": "2025-05-01T10:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {},
                     "f:prometheus.io/port": {}, "f:prometheus.io/scrape": {}},
                     "f:labels": {".": {}, "f:app.kubernetes.io/instance": {}, "f:app.kubernetes.io/name": {}, "f:app.kubernetes.io/part-of": {}}},
                     "f:spec": {"f:allocateLoadBalancerNodePorts": {}, "f:externalTrafficPolicy": {}, "f:internalTrafficPolicy": {},
                     "f:ports": {".": {}, "k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}},
                     "k:{\"port\":443,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}}},
                     "f:selector": {}, "f:sessionAffinity": {}, "f:type": {}}}},
                {"manager": "kube-vip-webhook", "operation": "Update", "apiVersion": "v1",
                 "time": "2025-05-01T10:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:annotations": {"f:kube-vip.io/loadbalancerIPs": {}},
                     "f:labels": {"f:implementation": {}}}}},
                {"manager": "kube-vip", "operation": "Update", "apiVersion": "v1",
                 "time": "2025-05-01T10:00:01Z", "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:loadBalancer": {"f:ingress": {}}}}}
            ]
        },
        "spec": {
            "type": "LoadBalancer",
            "ports": [
                {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30000 + (i % 2000) as i64},
                {"name": "https", "protocol": "TCP", "port": 443, "targetPort": 8443, "nodePort": 32000 + (i % 700) as i64}
            ],
            "selector": {"app.kubernetes.io/instance": name},
            "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "sessionAffinity": "None", "externalTrafficPolicy": "Cluster",
            "internalTrafficPolicy": "Cluster", "allocateLoadBalancerNodePorts": true
        },
        "status": {"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}}
    })
}

pub fn configmap() -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kubevip", "namespace": "kube-system"},
        "data": {"cidr-global": "10.0.0.0/8", "allow-share-global": "false"}
    })
}

/// The namespaces the Services live in, labelled for the pool objects' namespace selectors.
pub const NAMESPACES: u64 = 200;
/// Nodes of the cluster (their addresses are reserved, outside every pool here).
pub const NODES: u64 = 500;
/// VIPPool objects, one per group of namespaces, each its own /24 outside 10.0.0.0/8.
pub const POOLS: u64 = 10;

pub fn namespace_object(i: u64) -> Value {
    let name = namespace(i);
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/metadata.name": name, "team-group": format!("g{}", i % POOLS)}}
    })
}

/// A Node as `kubectl get node -o json` shows one, minus the image list.
pub fn node(i: u64) -> Value {
    let name = format!("worker-{i:04}");
    let ip = format!("192.168.{}.{}", i / 250, 1 + i % 250);
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "m5.xlarge",
            "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
        "spec": {"podCIDR": format!("100.64.{}.0/24", i % 250)},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
            "allocatable": {"cpu": "3900m", "memory": "15Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": "2025-05-01T10:00:00Z",
                            "lastTransitionTime": "2025-05-01T09:00:00Z"}],
            "nodeInfo": {"kubeletVersion": "v1.31.2", "containerRuntimeVersion": "containerd://1.7.22",
                         "osImage": "Ubuntu 24.04 LTS", "kernelVersion": "6.8.0",
                         "architecture": "amd64", "operatingSystem": "linux"}
        }
    })
}

/// The `default/kubernetes` EndpointSlice: the apiservers' addresses.
pub fn endpoint_slice() -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.168.200.1"], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]
    })
}

/// `kube-public/cluster-info`: the control-plane VIP every kubeconfig points at.
pub fn cluster_info() -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    certificate-authority-data: \"\"\n    server: https://192.168.200.10:6443\n"}
    })
}

/// Pool object `i`: a /24 of its own for one group of namespaces.
pub fn vippool(i: u64) -> Value {
    json!({
        "apiVersion": "lb.kube-vip.io/v1alpha1", "kind": "VIPPool",
        "metadata": {"name": format!("group-{i}")},
        "spec": {"addresses": [format!("172.31.{i}.0/24")], "priority": i,
                 "namespaceSelector": {"matchLabels": {"team-group": format!("g{i}")}}}
    })
}
