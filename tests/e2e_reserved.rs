//! End to end on a real kube-apiserver (envtest), issue 14: addresses the network already uses
//! (Nodes, the API endpoint from `kube-public/cluster-info` and the `default/kubernetes`
//! EndpointSlice, exclusions) are never handed out, even by a pool that covers them.
//!
//! Nodes and `cluster-info` are created through the API (no kubelet: a Node is only an object
//! here). Nodes are cluster-wide, so each test's Nodes carry addresses of its own /24 only.
//!
//! Skips (passing, with one line saying why) unless `KUBEBUILDER_ASSETS` points at kube-apiserver
//! and etcd: `KUBEBUILDER_ASSETS=/work/shared/envtest cargo test --test e2e_reserved`.

#[path = "support/e2e.rs"]
mod e2e;
#[path = "support/envtest.rs"]
mod envtest;
#[path = "support/wait.rs"]
mod wait;
#[path = "support/webhook_proc.rs"]
mod webhook_proc;

use std::collections::HashSet;

use e2e::{ANNOTATION, E2e, annotation, cli_json, eventually, lb};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// Create Node `name` (if needed) with these `(type, address)` pairs as its status.addresses.
async fn set_node(t: &E2e, name: &str, addresses: &[(&str, &str)]) {
    let api: Api<Node> = Api::all(t.client.clone());
    let list: Vec<_> = addresses
        .iter()
        .map(|(kind, ip)| json!({"type": kind, "address": ip}))
        .collect();
    if api.get_opt(name).await.expect("get node").is_none() {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        }))
        .expect("node");
        api.create(&PostParams::default(), &node)
            .await
            .expect("create node");
    }
    // Addresses are status: set through the status subresource, as the kubelet does.
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"addresses": list}})),
    )
    .await
    .expect("node status");
}

/// `kube-public/cluster-info` as kubeadm writes it, its server at `server`.
async fn set_cluster_info(t: &E2e, server: &str) {
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    \
         certificate-authority-data: AAAA\n    server: {server}\ncontexts: null\n\
         current-context: \"\"\npreferences: {{}}\nusers: null\n"
    );
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": kubeconfig},
    }))
    .expect("cluster-info");
    Api::<ConfigMap>::namespaced(t.client.clone(), "kube-public")
        .patch(
            "cluster-info",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&cm),
        )
        .await
        .expect("apply cluster-info");
}

/// Warning Events of `reason` in the test namespace, oldest first.
async fn events(t: &E2e, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(t.client.clone(), &t.ns);
    let mut list: Vec<Event> = api
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect();
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    list
}

fn pinned(name: &str, ip: &str) -> Service {
    let mut svc = lb(name, 80);
    svc.metadata.annotations = Some([(ANNOTATION.to_string(), ip.to_string())].into());
    svc
}

/// The addresses of the `default/kubernetes` EndpointSlice (what the webhook reads as the API
/// endpoint besides cluster-info). The envtest apiserver here publishes none (a real control
/// plane does): then the test writes it as the control plane would, with `ip` as the
/// apiserver's address.
async fn kubernetes_endpoints(t: &E2e, ip: &str) -> Vec<String> {
    let api: Api<EndpointSlice> = Api::namespaced(t.client.clone(), "default");
    let slice = match api.get_opt("kubernetes").await.expect("get slice") {
        Some(slice) => slice,
        None => {
            let slice: EndpointSlice = serde_json::from_value(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes", "namespace": "default", "labels": {
                    "kubernetes.io/service-name": "kubernetes",
                    "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io",
                }},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
                "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
            }))
            .expect("slice");
            api.create(&PostParams::default(), &slice)
                .await
                .expect("create the kubernetes EndpointSlice")
        }
    };
    slice
        .endpoints
        .iter()
        .flat_map(|e| e.addresses.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_over_nodes_and_the_api_endpoint_never_hands_them_out() {
    let Some(t) = E2e::new("reserved").await else {
        return;
    };
    set_node(
        &t,
        "reserved-w1",
        &[
            ("InternalIP", &t.ip(5)),
            ("ExternalIP", &t.ip(6)),
            ("Hostname", "reserved-w1"),
        ],
    )
    .await;
    set_node(&t, "reserved-w2", &[("InternalIP", &t.ip(10))]).await;
    let vip = format!("https://{}:6443", t.ip(7));
    set_cluster_info(&t, &vip).await;
    let endpoints = kubernetes_endpoints(&t, &t.ip(11)).await;
    assert!(!endpoints.is_empty(), "the apiserver publishes its address");
    // The pool covers every one of them, the apiserver's own address(es) included.
    let mut pool = t.range(1, 215);
    for ip in &endpoints {
        pool.push_str(&format!(",{ip}-{ip}"));
    }
    t.set_config(&[(&t.key("range"), &pool), (&t.key("exclude"), &t.ip(8))])
        .await;
    t.register().await;
    let wh = t
        .start_webhook("reserved-0", &["--exclude", &t.ip(9)])
        .await;
    t.wait_active().await;

    let mut never: HashSet<String> = [5, 6, 7, 8, 9, 10].map(|i| t.ip(i)).into();
    never.extend(endpoints.iter().cloned());

    // 200 concurrent creates: distinct addresses, none of them reserved.
    let creates = (0..200).map(|i| {
        let api = t.services();
        async move {
            api.create(&PostParams::default(), &lb(&format!("c{i}"), 80))
                .await
                .map(|s| annotation(&s))
        }
    });
    let answers = futures::future::join_all(creates).await;
    let mut seen = HashSet::new();
    for (i, a) in answers.into_iter().enumerate() {
        let ip = a
            .unwrap_or_else(|e| panic!("create c{i}: {e}"))
            .unwrap_or_else(|| panic!("c{i} came back without an address"));
        assert!(!never.contains(&ip), "c{i} got {ip}, which is reserved");
        assert!(seen.insert(ip.clone()), "{ip} handed out twice");
    }

    // Pinned: denied, naming what holds the address.
    let api = t.services();
    for (name, ip, why) in [
        (
            "p-node",
            t.ip(5),
            "is node reserved-w1's InternalIP".to_string(),
        ),
        (
            "p-ext",
            t.ip(6),
            "is node reserved-w1's ExternalIP".to_string(),
        ),
        (
            "p-vip",
            t.ip(7),
            format!("is the API endpoint (server {vip} in ConfigMap kube-public/cluster-info)"),
        ),
        (
            "p-excl",
            t.ip(8),
            format!("is excluded by ConfigMap key exclude-{}", t.ns),
        ),
        ("p-flag", t.ip(9), "is excluded by --exclude".to_string()),
        (
            "p-api",
            endpoints[0].clone(),
            "is the API endpoint (EndpointSlice default/kubernetes)".to_string(),
        ),
    ] {
        let err = api
            .create(&PostParams::default(), &pinned(name, &ip))
            .await
            .expect_err("a reserved address cannot be pinned")
            .to_string();
        assert!(
            err.contains(&format!("address {ip} {why}")),
            "{name}: {err}"
        );
    }

    // The ConfigMap is told which addresses of its pools are never handed out, and by whom.
    let warning = eventually("a ReservedAddressInPool Event", || async {
        events(&t, "ReservedAddressInPool").await.pop()
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    let regarding = warning.regarding.clone().unwrap_or_default();
    assert_eq!(
        (regarding.kind.as_deref(), regarding.name.as_deref()),
        (Some("ConfigMap"), Some("kubevip"))
    );
    let note = warning.note.clone().unwrap_or_default();
    for owner in [
        format!(
            "{} in {} is node reserved-w1's InternalIP",
            t.ip(5),
            t.key("range")
        ),
        format!(
            "{} in {} is node reserved-w2's InternalIP",
            t.ip(10),
            t.key("range")
        ),
        format!(
            "{} in {} is the API endpoint (server {vip}",
            t.ip(7),
            t.key("range")
        ),
        format!(
            "{} in {} is the API endpoint (EndpointSlice default/kubernetes)",
            endpoints[0],
            t.key("range")
        ),
    ] {
        assert!(note.contains(&owner), "{owner:?} missing from {note:?}");
    }
    // Exclusions are not "used by the network": not listed as reserved in the pool.
    assert!(!note.contains(&format!("{} in", t.ip(8))), "{note}");
    let metrics = wh.metrics().await;
    let line = format!(
        "kube_vip_webhook_pool_reserved_addresses{{pool=\"{}\",family=\"IPv4\"}} {}",
        t.key("range"),
        4 + endpoints.len()
    );
    assert!(
        metrics.lines().any(|l| l == line),
        "{line} not in\n{metrics}"
    );
    assert!(wh.log_lines("Node watch error").is_empty());

    // `status` shows what is never handed out and why.
    let report = cli_json(vec![
        "status".into(),
        "--kubeconfig".into(),
        t.cp.kubeconfig.display().to_string(),
        "--kubevip-namespace".into(),
        t.ns.clone(),
        "--namespace".into(),
        t.ns.clone(),
        "--exclude".into(),
        t.ip(9),
        "-o".into(),
        "json".into(),
    ])
    .await;
    let reserved = &report["reserved"];
    let addresses = reserved["addresses"].as_array().expect("addresses");
    let node = addresses
        .iter()
        .find(|a| a["address"] == t.ip(5))
        .unwrap_or_else(|| panic!("{} missing from {reserved}", t.ip(5)));
    assert_eq!(node["owner"], "node reserved-w1's InternalIP");
    assert_eq!(node["pools"], json!([t.key("range")]));
    assert!(
        addresses.iter().any(|a| a["address"] == t.ip(7)),
        "{reserved}"
    );
    assert_eq!(
        reserved["excluded"],
        json!([
            {"source": format!("ConfigMap key exclude-{}", t.ns), "addresses": t.ip(8)},
            {"source": "--exclude", "addresses": t.ip(9)},
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_changes_free_addresses_and_a_new_node_on_a_service_address_moves_nothing() {
    let Some(t) = E2e::new("nodes").await else {
        return;
    };
    set_node(&t, "nodes-a", &[("InternalIP", &t.ip(1))]).await;
    t.set_config(&[(&t.key("range"), &t.range(1, 3))]).await;
    t.register().await;
    let wh = t.start_webhook("nodes-0", &[]).await;
    t.wait_active().await;
    let api = t.services();
    let mut held = Vec::new();
    for name in ["s1", "s2"] {
        let svc = api
            .create(&PostParams::default(), &lb(name, 80))
            .await
            .expect("create");
        held.push(annotation(&svc).expect("an address"));
    }
    assert_eq!(held, [t.ip(2), t.ip(3)], "the node's .1 is skipped");
    let waiting = api
        .create(&PostParams::default(), &lb("s3", 80))
        .await
        .expect("create");
    assert_eq!(annotation(&waiting), None, "the pool is full");

    // The node moves to an address outside the pool: .1 is free, the waiting Service gets it.
    set_node(&t, "nodes-a", &[("InternalIP", &t.ip(100))]).await;
    let got = eventually("s3 to get the freed address", || t.address_of("s3")).await;
    assert_eq!(got, t.ip(1));

    // A node comes up on s2's address: reported on s2, and s2 keeps it.
    set_node(&t, "nodes-b", &[("InternalIP", &t.ip(3))]).await;
    let conflict = eventually("an AddressConflict Event on s2", || async {
        events(&t, "AddressConflict")
            .await
            .into_iter()
            .find(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("s2"))
    })
    .await;
    let note = conflict.note.unwrap_or_default();
    assert!(
        note.contains(&format!(
            "address {} of this Service is also node nodes-b's InternalIP",
            t.ip(3)
        )),
        "{note}"
    );
    assert_eq!(t.address_of("s2").await, Some(t.ip(3)), "nothing is moved");
    // Each change of what the pools contain is a new Warning naming the current owners (not
    // a repeat of the first one's note).
    eventually("a ReservedAddressInPool Event naming nodes-b", || async {
        events(&t, "ReservedAddressInPool")
            .await
            .into_iter()
            .find(|e| {
                e.note
                    .as_deref()
                    .is_some_and(|n| n.contains("nodes-b's InternalIP") && !n.contains("nodes-a"))
            })
    })
    .await;

    // The node goes: with s2 deleted too, .3 is free and a new Service gets it.
    Api::<Node>::all(t.client.clone())
        .delete("nodes-b", &DeleteParams::default())
        .await
        .expect("delete node");
    api.delete("s2", &DeleteParams::default())
        .await
        .expect("delete s2");
    let again = eventually("an address for s4", || async {
        let svc = api
            .create(
                &PostParams {
                    dry_run: true,
                    ..PostParams::default()
                },
                &lb("s4", 80),
            )
            .await
            .ok()?;
        annotation(&svc)
    })
    .await;
    assert_eq!(again, t.ip(3));
    assert!(
        wh.log_lines("denied").is_empty(),
        "{:?}",
        wh.log_lines("denied")
    );
}
