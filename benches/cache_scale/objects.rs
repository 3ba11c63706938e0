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
