//! Pool objects (VIPPool, issue 13) through the one allocation engine (`state::Allocator`, as
//! the webhook, the reconciler and `plan` call it): selectors, class, priority and its name
//! tiebreak, a pool named by annotation, exclusions, drain, and the ConfigMap below them all.

#[path = "support/engine.rs"]
mod engine;

use std::collections::BTreeMap;

use engine::{admit, alloc, alloc_with, config, got, labels, pool, svc};
use kube_vip_webhook::engine::{ClassMode, Options, Outcome};
use kube_vip_webhook::pools::PoolSet;
use kube_vip_webhook::state::{Allocator, Confirm};
use serde_json::json;

#[test]
fn a_configmap_only_cluster_is_unchanged_by_an_empty_pool_set() {
    // cidr-<ns> first, then cidr-global, range-<ns>, range-global (SPEC 4.2).
    let cm = [("cidr-team", "10.1.0.4/31"), ("cidr-global", "10.0.0.0/29")];
    let a = alloc(&cm, &[]);
    let b = Allocator::new(Options::default(), Confirm::OnAdmit, "kube-system/kubevip");
    b.set_config(Some(config(&cm)));
    for (ns, name) in [("team", "a"), ("team", "b"), ("team", "c"), ("web", "a")] {
        let s = svc(ns, name, json!({}));
        assert_eq!(got(&admit(&a, &s)), got(&admit(&b, &s)), "{ns}/{name}");
    }
    assert_eq!(
        got(&admit(&a, &svc("team", "d", json!({})))).0,
        "NoAddress(\"pool cidr-team for namespace \\\"team\\\" is exhausted: all 2 IPv4 addresses of 10.1.0.4-10.1.0.5 are in use\")",
        "a full namespace pool still does not fall back to the global one"
    );
}

#[test]
fn service_selector_chooses_the_pool_and_the_configmap_catches_the_rest() {
    let a = alloc(
        &[("cidr-global", "10.9.0.0/24")],
        &[pool(
            "web",
            json!({"addresses": ["10.0.0.0/30"], "serviceSelector": {"matchLabels": {"tier": "web"}}}),
        )],
    );
    let d = admit(&a, &svc("x", "a", labels(&[("tier", "web")])));
    assert_eq!(got(&d), ("vippool/web".into(), vec!["10.0.0.1".into()]));
    assert_eq!(
        got(&admit(&a, &svc("x", "b", labels(&[("tier", "db")])))),
        ("cidr-global".into(), vec!["10.9.0.1".into()])
    );
    assert_eq!(got(&admit(&a, &svc("x", "c", json!({})))).0, "cidr-global");
}

#[test]
fn a_full_pool_object_falls_through_to_the_next_pool_then_the_configmap() {
    let a = alloc(
        &[("range-global", "10.9.0.1-10.9.0.1")],
        &[
            pool("hi", json!({"addresses": ["10.0.0.1"], "priority": 10})),
            pool("lo", json!({"addresses": ["10.0.1.1"], "priority": 5})),
        ],
    );
    let order: Vec<(String, Vec<String>)> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| got(&admit(&a, &svc("x", n, json!({})))))
        .collect();
    assert_eq!(order[0], ("vippool/hi".into(), vec!["10.0.0.1".into()]));
    assert_eq!(order[1], ("vippool/lo".into(), vec!["10.0.1.1".into()]));
    assert_eq!(order[2], ("range-global".into(), vec!["10.9.0.1".into()]));
    // Every pool is full: the message names each one tried.
    let Outcome::NoAddress(why) = &admit(&a, &svc("x", "d", json!({}))).outcome else {
        panic!("expected NoAddress");
    };
    for key in ["vippool/hi", "vippool/lo", "range-global"] {
        assert!(why.contains(key), "{why}");
    }
}

#[test]
fn equal_priorities_are_tried_by_name_whatever_the_order_given() {
    for pools in [
        vec![
            pool("beta", json!({"addresses": ["10.0.2.1"]})),
            pool("alpha", json!({"addresses": ["10.0.1.1"]})),
        ],
        vec![
            pool("alpha", json!({"addresses": ["10.0.1.1"]})),
            pool("beta", json!({"addresses": ["10.0.2.1"]})),
        ],
    ] {
        let a = alloc(&[], &pools);
        assert_eq!(
            got(&admit(&a, &svc("x", "a", json!({})))).0,
            "vippool/alpha"
        );
        assert_eq!(got(&admit(&a, &svc("x", "b", json!({})))).0, "vippool/beta");
    }
    // A negative priority still comes before the ConfigMap.
    let a = alloc(
        &[("cidr-global", "10.9.0.0/24")],
        &[pool(
            "neg",
            json!({"addresses": ["10.0.1.1"], "priority": -100}),
        )],
    );
    assert_eq!(got(&admit(&a, &svc("x", "a", json!({})))).0, "vippool/neg");
}

#[test]
fn load_balancer_class_pools_serve_that_class_only_and_make_it_handled() {
    let a = alloc(
        &[("cidr-global", "10.9.0.0/24")],
        &[
            pool(
                "gold",
                json!({"addresses": ["10.0.5.1-10.0.5.2"], "loadBalancerClass": "example.com/gold"}),
            ),
            pool("any", json!({"addresses": ["10.0.6.0/30"], "priority": -1})),
        ],
    );
    let gold = json!({"spec": {"loadBalancerClass": "example.com/gold"}});
    // Without the pool object this class would not be ours (SPEC 3).
    assert_eq!(
        got(&admit(&a, &svc("x", "g", gold.clone()))),
        ("vippool/gold".into(), vec!["10.0.5.1".into()])
    );
    // A class-less Service never gets a class pool.
    assert_eq!(got(&admit(&a, &svc("x", "n", json!({})))).0, "vippool/any");
    // A class nobody names stays ignored.
    let other = svc(
        "x",
        "o",
        json!({"spec": {"loadBalancerClass": "example.com/other"}}),
    );
    assert!(matches!(admit(&a, &other).outcome, Outcome::Skipped(_)));
    // A class Service whose pool is full gets neither the class-less pool nor the ConfigMap.
    admit(&a, &svc("x", "g2", gold.clone()));
    let d = admit(&a, &svc("x", "g3", gold));
    assert!(
        matches!(d.outcome, Outcome::NoAddress(_)),
        "{:?}",
        d.outcome
    );
}

#[test]
fn class_mode_services_use_class_less_pools_too() {
    let options = Options {
        class_mode: ClassMode::Class(kube_vip_webhook::engine::DEFAULT_CLASS.into()),
        ..Options::default()
    };
    let a = alloc_with(
        &[],
        &[pool("any", json!({"addresses": ["10.0.6.0/30"]}))],
        options,
    );
    let s = svc(
        "x",
        "a",
        json!({"spec": {"loadBalancerClass": kube_vip_webhook::engine::DEFAULT_CLASS}}),
    );
    assert_eq!(got(&admit(&a, &s)).0, "vippool/any");
    // Class-less Services are not ours in class mode, pool objects or not.
    assert!(matches!(
        admit(&a, &svc("x", "b", json!({}))).outcome,
        Outcome::Skipped(_)
    ));
}

#[test]
fn namespace_selector_reads_namespace_labels_and_falls_back_to_the_name() {
    let a = alloc(
        &[("cidr-global", "10.9.0.0/24")],
        &[
            pool(
                "prod",
                json!({"addresses": ["10.0.7.0/30"], "namespaceSelector": {"matchLabels": {"env": "prod"}}}),
            ),
            pool(
                "byname",
                json!({"addresses": ["10.0.8.0/30"], "priority": -1,
                   "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "named"}}}),
            ),
        ],
    );
    a.set_namespace("shop", BTreeMap::from([("env".into(), "prod".into())]));
    a.set_namespace("lab", BTreeMap::from([("env".into(), "dev".into())]));
    assert_eq!(
        got(&admit(&a, &svc("shop", "a", json!({})))).0,
        "vippool/prod"
    );
    assert_eq!(
        got(&admit(&a, &svc("lab", "a", json!({})))).0,
        "cidr-global"
    );
    // Labels not known (yet): only a selector on the name can match.
    assert_eq!(
        got(&admit(&a, &svc("named", "a", json!({})))).0,
        "vippool/byname"
    );
    assert_eq!(
        got(&admit(&a, &svc("unknown", "a", json!({})))).0,
        "cidr-global"
    );
    // A label change moves new Services (never held ones).
    a.set_namespace("lab", BTreeMap::from([("env".into(), "prod".into())]));
    assert_eq!(
        got(&admit(&a, &svc("lab", "b", json!({})))).0,
        "vippool/prod"
    );
}

#[test]
fn a_named_pool_is_the_only_one_tried() {
    let a = alloc(
        &[("cidr-global", "10.9.0.0/24")],
        &[
            pool(
                "first",
                json!({"addresses": ["10.0.1.0/30"], "priority": 100}),
            ),
            pool("second", json!({"addresses": ["10.0.2.1"]})),
            pool(
                "picky",
                json!({"addresses": ["10.0.3.0/30"], "serviceSelector": {"matchLabels": {"a": "b"}}}),
            ),
        ],
    );
    let named = |n: &str| json!({"metadata": {"annotations": {"lb.kube-vip.io/pool": n}}});
    assert_eq!(
        got(&admit(&a, &svc("x", "a", named("second")))),
        ("vippool/second".into(), vec!["10.0.2.1".into()])
    );
    // Full: no other pool is tried.
    let d = admit(&a, &svc("x", "b", named("second")));
    assert!(
        matches!(&d.outcome, Outcome::NoAddress(w) if w.contains("vippool/second")),
        "{:?}",
        d.outcome
    );
    let d = admit(&a, &svc("x", "c", named("nope")));
    assert!(
        matches!(&d.outcome, Outcome::NoAddress(w) if w.contains("does not exist")),
        "{:?}",
        d.outcome
    );
    // A named pool must still select the Service.
    let d = admit(&a, &svc("x", "d", named("picky")));
    assert!(
        matches!(&d.outcome, Outcome::NoAddress(w) if w.contains("serviceSelector")),
        "{:?}",
        d.outcome
    );
}

#[test]
fn exclusions_are_never_handed_out_nor_pinned() {
    let a = alloc(
        &[],
        &[pool(
            "gw",
            json!({"addresses": ["10.0.0.0/29"], "exclude": ["10.0.0.1", "10.0.0.3-10.0.0.4"]}),
        )],
    );
    let handed: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .flat_map(|n| got(&admit(&a, &svc("x", n, json!({})))).1)
        .collect();
    // 10.0.0.0 is skipped by avoidBuggyIPs (.0), the exclusions by spec.exclude.
    assert_eq!(handed, ["10.0.0.2", "10.0.0.5", "10.0.0.6", "10.0.0.7"]);
    let pinned = svc(
        "x",
        "p",
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.3"}}}),
    );
    let d = admit(&a, &pinned);
    assert!(
        matches!(&d.outcome, Outcome::Denied(w) if w.contains("excluded by VIPPool gw")),
        "{:?}",
        d.outcome
    );
}

#[test]
fn avoid_buggy_ips_can_be_turned_off_per_pool() {
    let a = alloc(
        &[],
        &[pool(
            "all",
            json!({"addresses": ["10.0.0.255-10.0.1.0"], "avoidBuggyIPs": false}),
        )],
    );
    let d = admit(&a, &svc("x", "a", json!({})));
    assert_eq!(got(&d).1, ["10.0.0.255"], "{:?}", d.outcome);
    assert_eq!(got(&admit(&a, &svc("x", "b", json!({})))).1, ["10.0.1.0"]);
    let a = alloc(
        &[],
        &[pool(
            "default",
            json!({"addresses": ["10.0.0.255-10.0.1.0"]}),
        )],
    );
    assert!(matches!(
        admit(&a, &svc("x", "a", json!({}))).outcome,
        Outcome::NoAddress(_)
    ));
}

#[test]
fn a_disabled_pool_keeps_its_holders_and_hands_out_nothing_new() {
    let on = pool("drain", json!({"addresses": ["10.0.0.1-10.0.0.2"]}));
    let a = alloc(&[("cidr-global", "10.9.0.0/24")], std::slice::from_ref(&on));
    assert_eq!(got(&admit(&a, &svc("x", "a", json!({})))).1, ["10.0.0.1"]);
    let mut off = on.clone();
    off.spec.disabled = true;
    a.set_pools(PoolSet::from_objects([&off]));
    // The next Service goes to the ConfigMap, the held address stays held.
    assert_eq!(got(&admit(&a, &svc("x", "b", json!({})))).0, "cidr-global");
    assert_eq!(
        a.holders_of("10.0.0.1".parse().unwrap()),
        ["x/a".to_string()]
    );
    // Without a ConfigMap pool the reason names the drained pool.
    let a = alloc(&[], &[off]);
    let d = admit(&a, &svc("x", "c", json!({})));
    assert!(
        matches!(&d.outcome, Outcome::NoAddress(w) if w.contains("disabled")),
        "{:?}",
        d.outcome
    );
    // A Service that keeps its address from a drained pool is still admitted as it is.
    let mut kept = svc("x", "a", json!({}));
    kept.lb_ips_annotation = Some("10.0.0.1".into());
    assert!(!a.needs_allocation(&kept));
}

#[test]
fn deleting_a_pool_never_frees_or_moves_what_it_gave_out() {
    let p = pool("gone", json!({"addresses": ["10.0.0.1-10.0.0.2"]}));
    let a = alloc(&[("range-global", "10.0.0.1-10.0.0.3")], &[p]);
    assert_eq!(got(&admit(&a, &svc("x", "a", json!({})))).1, ["10.0.0.1"]);
    a.set_pools(PoolSet::default());
    // The ConfigMap overlaps the deleted pool: its held address is skipped, not reused.
    assert_eq!(
        got(&admit(&a, &svc("x", "b", json!({})))),
        ("range-global".into(), vec!["10.0.0.2".into()])
    );
    assert_eq!(a.holders_of("10.0.0.1".parse().unwrap()).len(), 1);
}

#[test]
fn pool_stats_label_both_kinds() {
    let a = alloc(
        &[("cidr-global", "10.9.0.0/30")],
        &[pool(
            "p",
            json!({"addresses": ["10.0.0.1-10.0.0.4", "fd00::1"]}),
        )],
    );
    admit(&a, &svc("x", "a", json!({})));
    let stats: Vec<(String, &str, u128, u128)> = a
        .pool_stats()
        .into_iter()
        .map(|s| (s.pool, s.family, s.size, s.used))
        .collect();
    assert_eq!(
        stats,
        [
            ("cidr-global".to_string(), "IPv4", 3, 0),
            ("vippool/p".to_string(), "IPv4", 4, 1),
            ("vippool/p".to_string(), "IPv6", 1, 0),
        ]
    );
}

#[test]
fn without_the_configmap_pool_objects_still_hand_out_addresses() {
    // What keeps KubeVipWebhookConfigMissing silent while pool objects exist must be true.
    let a = alloc(&[], &[pool("p", json!({"addresses": ["10.0.0.1"]}))]);
    a.set_config(None);
    assert!(!a.config_present());
    assert_eq!(
        got(&admit(&a, &svc("x", "a", json!({})))),
        ("vippool/p".into(), vec!["10.0.0.1".into()])
    );
}

#[test]
fn metrics_count_pool_objects_and_their_invalid_entries() {
    use kube_vip_webhook::metrics::{PoolObjectStat, StatsSource};
    let a = alloc(
        &[("cidr-global", "10.9.0.0/30")],
        &[
            // A reversed range and a range mixing families: what the schema cannot refuse.
            pool(
                "bad",
                json!({"addresses": ["10.0.0.9-10.0.0.1", "10.0.0.1-fd00::1", "10.0.1.0/30"]}),
            ),
            pool("good", json!({"addresses": ["10.0.2.0/30"]})),
        ],
    );
    assert_eq!(
        a.pool_objects(),
        [
            PoolObjectStat {
                pool: "vippool/bad".into(),
                invalid_entries: 2
            },
            PoolObjectStat {
                pool: "vippool/good".into(),
                invalid_entries: 0
            },
        ]
    );
    // ConfigMap entries stay in config_errors, pool objects' in their own gauge.
    assert_eq!(StatsSource::config_errors(&a), 0);
    a.set_pools(PoolSet::default());
    assert_eq!(a.pool_objects(), []);
}
