//! SPEC 4.9, addresses the network already uses, through the allocator the webhook, the
//! reconciler and `plan` call: every source (Node InternalIP/ExternalIP, the cluster-info
//! server, the `kubernetes` EndpointSlices, `exclude-*` keys, the `--exclude` flag) is never
//! handed out, never shared, denied when pinned naming what holds it; a source that changes or
//! goes frees its addresses; a node that comes up on a Service's address moves nothing.

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_vip_webhook::config::{Config, Exclusion};
use kube_vip_webhook::engine::{Decision, Options, Outcome};
use kube_vip_webhook::reserved::{InPool, Source, SourceKind, objects};
use kube_vip_webhook::service::SvcInfo;
use kube_vip_webhook::state::{Allocator, Confirm, Request, ReservedConflict};
use serde_json::{Value, json};

#[path = "support/engine.rs"]
mod engine;
use engine::{decide as admit, ip, ips, pool, svc};
use kube_vip_webhook::pools::PoolSet;

fn alloc(pairs: &[(&str, &str)]) -> Allocator {
    alloc_excluding(pairs, None)
}

fn alloc_excluding(pairs: &[(&str, &str)], flag: Option<&str>) -> Allocator {
    let exclusion = flag.map(|v| {
        let (e, bad) = Exclusion::parse("--exclude", v);
        assert!(bad.is_empty(), "{bad:?}");
        e
    });
    let a = Allocator::new(Options::default(), Confirm::OnAdmit, "kube-system/kubevip")
        .with_exclusion(exclusion);
    let data: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    a.set_config(Some(Config::from_data(&data)));
    a
}

/// `a` with these pool objects (VIPPools).
fn with_pools(a: Allocator, pools: &[kube_vip_webhook::pools::VIPPool]) -> Allocator {
    a.set_pools(PoolSet::from_objects(pools));
    a
}

fn pinned(ns: &str, name: &str, ip: &str) -> SvcInfo {
    svc(
        ns,
        name,
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": ip}}}),
    )
}

fn denied(d: &Decision) -> &str {
    match &d.outcome {
        Outcome::Denied(why) => why,
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn node(name: &str, addresses: &[(&str, &str)]) -> Node {
    let addresses: Vec<Value> = addresses
        .iter()
        .map(|(t, a)| json!({"type": t, "address": a}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "status": {"addresses": addresses},
    }))
    .unwrap()
}

fn set_node(a: &Allocator, n: &Node) -> kube_vip_webhook::state::ReservedChange {
    let (source, holdings) = objects::node(n);
    a.set_reserved(source, holdings)
}

fn slice(addresses: &[&str]) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "addressType": "IPv4",
        "endpoints": [{"addresses": addresses}],
    }))
    .unwrap()
}

fn cluster_info(server: &str) -> ConfigMap {
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: ''\n  cluster:\n    server: {server}\n"
    );
    serde_json::from_value(json!({
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": kubeconfig},
    }))
    .unwrap()
}

/// Allocates until the pool is exhausted; the addresses handed out, in order.
/// A reserved address inside a pool, as `reserved_in_pools` lists it.
fn in_pool(pool: &str, addr: &str, owner: &str) -> InPool {
    InPool {
        pool: pool.into(),
        address: ip(addr),
        owner: owner.into(),
    }
}

fn drain(a: &Allocator, ns: &str) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0.. {
        let d = admit(a, &svc(ns, &format!("s{i}"), json!({})));
        match d.outcome {
            Outcome::Allocated { .. } => out.extend(ips(&d)),
            Outcome::NoAddress(_) => return out,
            other => panic!("{other:?}"),
        }
    }
    out
}

#[test]
fn node_addresses_are_never_handed_out_and_pinning_one_is_denied_naming_the_node() {
    let a = alloc(&[("range-global", "10.0.0.1-10.0.0.6")]);
    let change = set_node(
        &a,
        &node(
            "worker-1",
            &[
                ("InternalIP", "10.0.0.2"),
                ("ExternalIP", "10.0.0.4"),
                ("Hostname", "worker-1"),
            ],
        ),
    );
    assert!(change.changed && !change.freed && change.conflicts.is_empty());
    assert_eq!(
        drain(&a, "web"),
        ["10.0.0.1", "10.0.0.3", "10.0.0.5", "10.0.0.6"]
    );

    let b = alloc(&[("range-global", "10.0.0.1-10.0.0.6")]);
    set_node(&b, &node("worker-1", &[("InternalIP", "10.0.0.2")]));
    let d = admit(&b, &pinned("web", "pin", "10.0.0.2"));
    assert_eq!(
        denied(&d),
        "annotation kube-vip.io/loadbalancerIPs: address 10.0.0.2 is node worker-1's InternalIP, \
         which the network already uses; choose another address"
    );
    // spec.loadBalancerIP is a request too; ExternalIP is named as such.
    set_node(&b, &node("edge", &[("ExternalIP", "203.0.113.9")]));
    let d = admit(
        &b,
        &svc(
            "web",
            "old",
            json!({"spec": {"loadBalancerIP": "203.0.113.9"}}),
        ),
    );
    assert!(
        denied(&d)
            .starts_with("spec.loadBalancerIP: address 203.0.113.9 is node edge's ExternalIP"),
        "{d:?}"
    );
    // Outside every pool it is still refused: the network uses it wherever it is.
    assert_eq!(b.reserved_in_pools().len(), 1, "only 10.0.0.2 is in a pool");
}

#[test]
fn sharing_never_picks_a_reserved_address() {
    // Every address of the pool is held: one by a Service on 80/TCP, one by a node.
    let a = alloc(&[
        ("range-global", "10.0.0.1-10.0.0.2"),
        ("allow-share-global", "true"),
    ]);
    set_node(&a, &node("n", &[("InternalIP", "10.0.0.1")]));
    assert_eq!(ips(&admit(&a, &svc("web", "a", json!({})))), ["10.0.0.2"]);
    // A Service on another port shares the Service's address, never the node's.
    let other = svc(
        "web",
        "b",
        json!({"spec": {"ports": [{"port": 443, "protocol": "TCP"}]}}),
    );
    let d = admit(&a, &other);
    assert!(
        matches!(&d.outcome, Outcome::Allocated { shared: true, .. }),
        "{d:?}"
    );
    assert_eq!(ips(&d), ["10.0.0.2"]);
    // And nothing else: the node's address clashes with every port.
    let third = svc(
        "web",
        "c",
        json!({"spec": {"ports": [{"port": 8443, "protocol": "UDP"}]}}),
    );
    assert_eq!(ips(&admit(&a, &third)), ["10.0.0.2"]);
    let a = alloc(&[
        ("range-global", "10.0.0.1-10.0.0.1"),
        ("allow-share-global", "true"),
    ]);
    set_node(&a, &node("n", &[("InternalIP", "10.0.0.1")]));
    assert!(matches!(
        admit(&a, &svc("web", "x", json!({}))).outcome,
        Outcome::NoAddress(_)
    ));
}

#[test]
fn the_api_endpoint_from_cluster_info_and_endpoint_slices() {
    let a = alloc(&[("cidr-global", "10.0.0.0/29,fd00::/126")]);
    let (source, holdings) = objects::cluster_info(Some(&cluster_info("https://10.0.0.1:6443")));
    a.set_reserved(source, holdings);
    let (source, holdings) = objects::endpoint_slice(&slice(&["10.0.0.2", "10.0.0.3"]));
    a.set_reserved(source, holdings);
    let (source, holdings) = objects::cluster_info(Some(&cluster_info("https://[fd00::1]:6443")));
    // A second read replaces the first: 10.0.0.1 is free again, fd00::1 reserved.
    let change = a.set_reserved(source, holdings);
    assert!(change.freed);
    assert_eq!(
        drain(&a, "web"),
        ["10.0.0.1", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7"]
    );
    let d = admit(&a, &pinned("web", "api", "10.0.0.3"));
    assert_eq!(
        denied(&d),
        "annotation kube-vip.io/loadbalancerIPs: address 10.0.0.3 is the API endpoint \
         (EndpointSlice default/kubernetes), which the network already uses; choose another address"
    );
    let d = admit(&a, &pinned("web", "api6", "fd00::1"));
    assert!(
        denied(&d).contains(
            "address fd00::1 is the API endpoint (server https://[fd00::1]:6443 in ConfigMap \
             kube-public/cluster-info)"
        ),
        "{d:?}"
    );
    // A dual-stack pinned pair is refused for either half.
    let d = admit(&a, &pinned("web", "pair", "10.0.0.0,fd00::1"));
    assert!(denied(&d).contains("fd00::1"), "{d:?}");
}

#[test]
fn exclusions_from_keys_and_the_flag_are_subtracted_and_denied_naming_their_source() {
    let a = alloc_excluding(
        &[
            ("cidr-global", "10.0.0.0/28"),
            ("exclude-global", "10.0.0.1"),
            ("exclude-web", "10.0.0.2-10.0.0.3"),
        ],
        Some("10.0.0.4/31"),
    );
    // web sees every exclusion; other namespaces not exclude-web.
    assert_eq!(ips(&admit(&a, &svc("web", "a", json!({})))), ["10.0.0.6"]);
    assert_eq!(ips(&admit(&a, &svc("api", "a", json!({})))), ["10.0.0.2"]);
    for (ns, addr, by) in [
        ("web", "10.0.0.1", "ConfigMap key exclude-global"),
        ("web", "10.0.0.3", "ConfigMap key exclude-web"),
        ("api", "10.0.0.5", "--exclude"),
    ] {
        let d = admit(&a, &pinned(ns, &format!("pin-{addr}"), addr));
        assert_eq!(
            denied(&d),
            format!(
                "annotation kube-vip.io/loadbalancerIPs: address {addr} is excluded by {by}; \
                 choose another address"
            )
        );
    }
    // Not excluded for api: a pinned 10.0.0.3 is fine there.
    assert!(matches!(
        admit(&a, &pinned("api", "ok", "10.0.0.3")).outcome,
        Outcome::Requested { .. }
    ));
    // The global pool's size leaves out what every namespace excludes (not exclude-web).
    let stats = a.pool_stats();
    assert_eq!(stats[0].size, 15 - 3, "{stats:?}");
    // A CIDR exclusion covering the whole pool: nothing left, and said so.
    let all = alloc_excluding(
        &[("range-global", "10.1.0.1-10.1.0.9")],
        Some("10.1.0.0/16"),
    );
    let d = admit(&all, &svc("web", "x", json!({})));
    match d.outcome {
        Outcome::NoAddress(why) => assert!(
            why.contains("every IPv4 address is excluded (--exclude)"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_excluded_address_a_service_holds_is_never_shared() {
    let a = alloc(&[
        ("range-global", "10.0.0.1-10.0.0.2"),
        ("allow-share-global", "true"),
        ("exclude-global", "10.0.0.1"),
    ]);
    // Pinned before the exclusion existed (it is only a Service in the cache now).
    a.apply_service(&pinned("web", "old", "10.0.0.1"));
    let other = svc(
        "web",
        "b",
        json!({"spec": {"ports": [{"port": 443, "protocol": "TCP"}]}}),
    );
    assert_eq!(ips(&admit(&a, &other)), ["10.0.0.2"]);
}

#[test]
fn a_node_address_that_changes_or_disappears_becomes_free() {
    let a = alloc(&[("range-global", "10.0.0.1-10.0.0.3")]);
    set_node(&a, &node("w", &[("InternalIP", "10.0.0.1")]));
    assert_eq!(drain(&a, "web"), ["10.0.0.2", "10.0.0.3"]);
    // The node's address changes: the old one is free (waiting Services may get it).
    let change = set_node(&a, &node("w", &[("InternalIP", "10.0.0.9")]));
    assert!(change.changed && change.freed);
    assert_eq!(
        ips(&admit(&a, &svc("web", "late", json!({})))),
        ["10.0.0.1"]
    );
    assert_eq!(a.holders_of(ip("10.0.0.9")), ["node w's InternalIP"]);
    // The same status again changes nothing.
    assert_eq!(
        set_node(&a, &node("w", &[("InternalIP", "10.0.0.9")])),
        Default::default()
    );
    // The node is deleted: its address is free.
    let change = a.set_reserved(Source::Node("w".into()), Vec::new());
    assert!(change.freed);
    assert!(a.holders_of(ip("10.0.0.9")).is_empty());
    assert_eq!(a.used_count(), 3);
}

#[test]
fn a_relist_drops_nodes_no_longer_listed_and_a_service_relist_keeps_reserved_ones() {
    let a = alloc(&[("range-global", "10.0.0.1-10.0.0.9")]);
    set_node(&a, &node("gone", &[("InternalIP", "10.0.0.1")]));
    set_node(&a, &node("kept", &[("InternalIP", "10.0.0.2")]));
    let listed = vec![objects::node(&node("kept", &[("InternalIP", "10.0.0.2")]))];
    let change = a.reset_reserved(SourceKind::Node, listed);
    assert!(change.freed);
    assert!(a.holders_of(ip("10.0.0.1")).is_empty());
    // A relist of Services rebuilds the index: reserved holders stay.
    a.reset_services(&[pinned("web", "s", "10.0.0.5")]);
    assert_eq!(a.holders_of(ip("10.0.0.2")), ["node kept's InternalIP"]);
    assert_eq!(
        drain(&a, "web").first().map(String::as_str),
        Some("10.0.0.1")
    );
    // Another kind's relist leaves nodes alone.
    a.reset_reserved(SourceKind::EndpointSlice, Vec::new());
    assert_eq!(a.holders_of(ip("10.0.0.2")), ["node kept's InternalIP"]);
}

#[test]
fn a_node_added_on_a_service_address_is_a_conflict_and_nothing_moves() {
    let a = alloc(&[("range-global", "10.0.0.1-10.0.0.5")]);
    let web = svc("web", "a", json!({}));
    assert_eq!(ips(&admit(&a, &web)), ["10.0.0.1"]);
    let change = set_node(&a, &node("late", &[("InternalIP", "10.0.0.1")]));
    assert_eq!(
        change.conflicts,
        [ReservedConflict {
            service: web.key(),
            address: ip("10.0.0.1"),
            owner: "node late's InternalIP".into(),
        }]
    );
    // Nothing moved: the Service still holds it, and so does the node.
    let mut holders = a.holders_of(ip("10.0.0.1"));
    holders.sort();
    assert_eq!(holders, ["node late's InternalIP", "web/a"]);
    let held = pinned("web", "a", "10.0.0.1");
    a.apply_service(&held);
    assert_eq!(a.reserved_conflicts_of(&held.key()).len(), 1);
    // An unrelated UPDATE of that Service (same address, a new port) is not denied.
    let mut edited = held.clone();
    edited.ports.push(kube_vip_webhook::service::PortKey {
        port: 443,
        protocol: kube_vip_webhook::service::Protocol::Tcp,
    });
    let d = a.admit(
        Request {
            id: "update",
            svc: &edited,
            old: Some(&held),
            dry_run: false,
        },
        Instant::now(),
    );
    assert!(matches!(d.outcome, Outcome::Requested { .. }), "{d:?}");
    // A second node on it is reported again (another owner); the same status is not.
    assert!(
        set_node(&a, &node("late", &[("InternalIP", "10.0.0.1")]))
            .conflicts
            .is_empty()
    );
    assert_eq!(
        set_node(&a, &node("twin", &[("ExternalIP", "10.0.0.1")]))
            .conflicts
            .len(),
        1
    );
}

#[test]
fn pools_containing_reserved_addresses_are_listed_with_owners() {
    let a = alloc(&[
        ("cidr-global", "10.0.0.0/24"),
        ("range-web", "10.0.1.1-10.0.1.9"),
        ("exclude-web", "10.0.1.5"),
    ]);
    set_node(&a, &node("a", &[("InternalIP", "10.0.0.10")]));
    set_node(
        &a,
        &node(
            "b",
            &[("InternalIP", "10.0.1.5"), ("ExternalIP", "10.0.1.6")],
        ),
    );
    set_node(&a, &node("c", &[("InternalIP", "192.168.0.1")]));
    // 10.0.1.5 is excluded where range-web applies: not in that pool any more.
    assert_eq!(
        a.reserved_in_pools(),
        [
            in_pool("cidr-global", "10.0.0.10", "node a's InternalIP"),
            in_pool("range-web", "10.0.1.6", "node b's ExternalIP"),
        ]
    );
    let all = a.reserved_addresses();
    assert_eq!(all.len(), 4);
    let c = all
        .iter()
        .find(|r| r.owner == "node c's InternalIP")
        .unwrap();
    assert!(c.pools.is_empty());
    let b = all.iter().find(|r| r.address == ip("10.0.1.6")).unwrap();
    assert_eq!(b.pools, ["range-web"]);
    // The pool's used count includes them (they are not free).
    let web = a
        .pool_stats()
        .into_iter()
        .find(|p| p.pool == "range-web")
        .unwrap();
    assert_eq!((web.size, web.used), (8, 1));
}

#[test]
fn a_vippool_never_hands_out_node_or_api_addresses_and_denies_pinning_them_by_owner() {
    let a = with_pools(
        alloc(&[]),
        &[pool("p", json!({"addresses": ["10.0.0.1-10.0.0.6"]}))],
    );
    set_node(&a, &node("worker-1", &[("InternalIP", "10.0.0.2")]));
    let (source, holdings) = objects::cluster_info(Some(&cluster_info("https://10.0.0.4:6443")));
    a.set_reserved(source, holdings);
    let (source, holdings) = objects::endpoint_slice(&slice(&["10.0.0.5"]));
    a.set_reserved(source, holdings);
    let d = admit(&a, &svc("web", "first", json!({})));
    assert!(
        matches!(&d.outcome, Outcome::Allocated { pool, .. } if pool == "vippool/p"),
        "{d:?}"
    );
    assert_eq!(ips(&d), ["10.0.0.1"]);
    assert_eq!(drain(&a, "web"), ["10.0.0.3", "10.0.0.6"]);
    let d = admit(&a, &pinned("web", "pin", "10.0.0.2"));
    assert_eq!(
        denied(&d),
        "annotation kube-vip.io/loadbalancerIPs: address 10.0.0.2 is node worker-1's InternalIP, \
         which the network already uses; choose another address"
    );
    let d = admit(&a, &pinned("web", "api", "10.0.0.5"));
    assert!(
        denied(&d)
            .contains("address 10.0.0.5 is the API endpoint (EndpointSlice default/kubernetes)"),
        "{d:?}"
    );
    // Naming the pool changes nothing: the address is still the node's.
    let named = svc(
        "web",
        "named",
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.4",
            "lb.kube-vip.io/pool": "p"}}}),
    );
    assert!(denied(&admit(&a, &named)).contains("is the API endpoint"));
}

#[test]
fn exclusions_from_keys_and_the_flag_apply_to_vippool_allocations() {
    let a = with_pools(
        alloc_excluding(
            &[
                ("exclude-global", "10.0.0.1"),
                ("exclude-web", "10.0.0.2-10.0.0.3"),
            ],
            Some("10.0.0.4/31"),
        ),
        &[pool("p", json!({"addresses": ["10.0.0.0/28"]}))],
    );
    assert_eq!(ips(&admit(&a, &svc("web", "a", json!({})))), ["10.0.0.6"]);
    assert_eq!(ips(&admit(&a, &svc("api", "a", json!({})))), ["10.0.0.2"]);
    for (ns, addr, by) in [
        ("web", "10.0.0.1", "ConfigMap key exclude-global"),
        ("web", "10.0.0.3", "ConfigMap key exclude-web"),
        ("api", "10.0.0.5", "--exclude"),
    ] {
        let d = admit(&a, &pinned(ns, &format!("pin-{addr}"), addr));
        assert_eq!(
            denied(&d),
            format!(
                "annotation kube-vip.io/loadbalancerIPs: address {addr} is excluded by {by}; \
                 choose another address"
            )
        );
    }
    // A pool object belongs to no namespace: its size leaves out what every namespace
    // excludes (exclude-global, --exclude), as the ConfigMap's cidr-global does.
    let stats = a.pool_stats();
    let p = stats.iter().find(|s| s.pool == "vippool/p").unwrap();
    assert_eq!((p.size, p.used), (15 - 3, 2), "{stats:?}");
    // Everything excluded: no address, and the reason names the exclusion.
    let all = with_pools(
        alloc_excluding(&[], Some("10.1.0.0/16")),
        &[pool("all", json!({"addresses": ["10.1.0.1-10.1.0.9"]}))],
    );
    match admit(&all, &svc("web", "x", json!({}))).outcome {
        Outcome::NoAddress(why) => assert!(
            why.contains("vippool/all")
                && why.contains("every IPv4 address is excluded (--exclude)"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn vippools_containing_reserved_addresses_are_listed_as_vippool_name() {
    let a = with_pools(
        alloc(&[("exclude-global", "10.0.0.12")]),
        &[
            pool(
                "nodes",
                json!({"addresses": ["10.0.0.0/24"], "exclude": ["10.0.0.11"], "priority": 1}),
            ),
            // .0 is a host address in a /23: a pool that hands it out must report a node on it.
            pool(
                "edge",
                json!({"addresses": ["10.0.3.0/31"], "avoidBuggyIPs": false}),
            ),
        ],
    );
    set_node(&a, &node("a", &[("InternalIP", "10.0.0.10")]));
    // Carved out of the pool by spec.exclude, and by exclude-global: not in it.
    set_node(&a, &node("b", &[("InternalIP", "10.0.0.11")]));
    set_node(&a, &node("c", &[("InternalIP", "10.0.0.12")]));
    set_node(&a, &node("d", &[("InternalIP", "10.0.3.0")]));
    assert_eq!(
        a.reserved_in_pools(),
        [
            in_pool("vippool/edge", "10.0.3.0", "node d's InternalIP"),
            in_pool("vippool/nodes", "10.0.0.10", "node a's InternalIP"),
        ]
    );
    let all = a.reserved_addresses();
    let of = |addr: &str| all.iter().find(|r| r.address == ip(addr)).unwrap();
    assert_eq!(of("10.0.0.10").pools, ["vippool/nodes"]);
    assert!(of("10.0.0.11").pools.is_empty());
    // And allocation skips them all, the node's .0 included.
    let handed = drain(&a, "web");
    assert_eq!(handed.len(), 254 - 3 + 1, "{handed:?}");
    assert_eq!(handed.last().map(String::as_str), Some("10.0.3.1"));
    for taken in ["10.0.0.10", "10.0.0.11", "10.0.0.12", "10.0.3.0"] {
        assert!(!handed.iter().any(|h| h == taken), "{taken}");
    }
}
