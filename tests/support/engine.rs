//! The allocation engine (`state::Allocator`) driven directly: the helpers the engine tests
//! share (ConfigMaps and pools from JSON, Services, admissions plain or held).
#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

use kube_vip_webhook::config::Config;
use kube_vip_webhook::engine::{Decision, Options, Outcome};
use kube_vip_webhook::pools::{PoolSet, VIPPool, VIPPoolSpec};
use kube_vip_webhook::service::SvcInfo;
use kube_vip_webhook::state::{Allocator, Confirm, Request};
use serde_json::{Value, json};

pub fn config(pairs: &[(&str, &str)]) -> Config {
    let data: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_data(&data)
}

/// A pool object from its spec as YAML/JSON would give it.
pub fn pool(name: &str, spec: Value) -> VIPPool {
    let spec: VIPPoolSpec = serde_json::from_value(spec).unwrap();
    let mut p = VIPPool::new(name, spec);
    p.metadata.generation = Some(1);
    p
}

pub fn alloc(cm: &[(&str, &str)], pools: &[VIPPool]) -> Allocator {
    alloc_with(cm, pools, Options::default())
}

pub fn alloc_with(cm: &[(&str, &str)], pools: &[VIPPool], options: Options) -> Allocator {
    let a = Allocator::new(options, Confirm::OnAdmit, "kube-system/kubevip");
    a.set_config(Some(config(cm)));
    a.set_pools(PoolSet::from_objects(pools));
    a
}

/// A LoadBalancer Service; `extra` is merged into the object (metadata/spec keys).
pub fn svc(ns: &str, name: &str, extra: Value) -> SvcInfo {
    let mut obj = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
    });
    merge(&mut obj, extra);
    SvcInfo::from_service(&serde_json::from_value(obj).unwrap())
}

pub fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// One admission of `s` (a CREATE with a request id of its own); nothing is held afterwards
/// but the reservation.
pub fn decide(a: &Allocator, s: &SvcInfo) -> Decision {
    a.admit(
        Request {
            id: &format!("uid-{}-{}", s.namespace, s.name),
            svc: s,
            old: None,
            dry_run: false,
        },
        Instant::now(),
    )
}

pub fn ips(d: &Decision) -> Vec<String> {
    d.outcome.ips().iter().map(IpAddr::to_string).collect()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// [`decide`], then the Service holds what it got, as the Service watch would report it.
pub fn admit(a: &Allocator, s: &SvcInfo) -> Decision {
    let d = decide(a, s);
    if let Outcome::Allocated { ips, .. } = &d.outcome {
        // Held from now on, as the Service watch would report it.
        let mut held = s.clone();
        held.lb_ips_annotation = Some(
            ips.iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        a.apply_service(&held);
    }
    d
}

/// (pool key, addresses) of an allocation, or the outcome's text.
pub fn got(d: &Decision) -> (String, Vec<String>) {
    match &d.outcome {
        Outcome::Allocated { ips, pool, .. } => {
            (pool.clone(), ips.iter().map(IpAddr::to_string).collect())
        }
        other => (format!("{other:?}"), Vec::new()),
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> Value {
    json!({"metadata": {"labels": pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()}})
}

/// A Service on `ports` ((port, protocol) pairs); `extra` merged as in [`svc`].
pub fn on(name: &str, ports: &[(i32, &str)], extra: Value) -> SvcInfo {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(p, proto)| json!({"port": p, "protocol": proto}))
        .collect();
    let mut obj = json!({"spec": {"ports": ports}});
    merge(&mut obj, extra);
    svc("x", name, obj)
}

pub fn pinned_json(ip: &str) -> Value {
    json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": ip}}})
}
