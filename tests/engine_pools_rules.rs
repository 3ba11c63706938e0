//! VIPPools follow the rules ConfigMap pools follow (issue 13: "sharing, pinned-address
//! validation, dual-stack rules, warnings and Events work the same for both"), through the one
//! allocation engine: `allowShare`, IPv6 and dual-stack policies, pinned addresses.

#[path = "support/engine.rs"]
mod engine;

use std::net::IpAddr;

use engine::{admit, alloc, alloc_with, got, on, pinned_json, pool, svc};
use kube_vip_webhook::engine::{Options, Outcome};
use serde_json::json;

#[test]
fn allow_share_on_a_pool_object_shares_unless_a_port_clashes() {
    let share = pool(
        "share",
        json!({"addresses": ["10.0.0.1-10.0.0.3"], "allowShare": true}),
    );
    let a = alloc(&[], &[share]);
    assert_eq!(
        got(&admit(&a, &on("a", &[(80, "TCP")], json!({})))),
        ("vippool/share".into(), vec!["10.0.0.1".into()])
    );
    let d = admit(&a, &on("b", &[(443, "TCP")], json!({})));
    assert_eq!(got(&d), ("vippool/share".into(), vec!["10.0.0.1".into()]));
    assert!(
        matches!(d.outcome, Outcome::Allocated { shared: true, .. }),
        "{d:?}"
    );
    // 80/TCP clashes with a: a fresh address, not shared.
    let d = admit(&a, &on("c", &[(80, "TCP")], json!({})));
    assert_eq!(got(&d).1, ["10.0.0.2"]);
    assert!(matches!(
        d.outcome,
        Outcome::Allocated { shared: false, .. }
    ));
    // 80/UDP shares with a (the protocol is part of the pair).
    assert_eq!(
        got(&admit(&a, &on("d", &[(80, "UDP")], json!({})))).1,
        ["10.0.0.1"]
    );
}

#[test]
fn a_pool_object_without_allow_share_never_shares_whatever_the_configmap_says() {
    // allow-share-x is the ConfigMap pool's setting: it does not reach a pool object.
    let a = alloc(
        &[("allow-share-x", "true"), ("allow-share-global", "true")],
        &[pool("solo", json!({"addresses": ["10.0.0.1-10.0.0.2"]}))],
    );
    assert_eq!(
        got(&admit(&a, &on("a", &[(80, "TCP")], json!({})))).1,
        ["10.0.0.1"]
    );
    let d = admit(&a, &on("b", &[(443, "TCP")], json!({})));
    assert_eq!(got(&d), ("vippool/solo".into(), vec!["10.0.0.2".into()]));
    // Full: nothing is shared, the Service waits.
    let d = admit(&a, &on("c", &[(8080, "TCP")], json!({})));
    assert!(
        matches!(&d.outcome, Outcome::NoAddress(w) if w.contains("vippool/solo") && w.contains("exhausted")),
        "{d:?}"
    );
}

#[test]
fn sharing_in_a_pool_object_only_considers_its_own_addresses() {
    let a = alloc(
        &[
            ("range-global", "10.9.0.1-10.9.0.2"),
            ("allow-share-global", "true"),
        ],
        &[pool(
            "share",
            json!({"addresses": ["10.0.0.5-10.0.0.6"], "allowShare": true}),
        )],
    );
    // A holder outside the pool (pinned), with no port in common.
    a.apply_service(&on("outside", &[(1, "TCP")], pinned_json("10.9.0.1")));
    assert_eq!(
        got(&admit(&a, &on("n", &[(80, "TCP")], json!({})))),
        ("vippool/share".into(), vec!["10.0.0.5".into()])
    );
}

#[test]
fn ipv6_pool_objects_and_dual_stack_from_one_pool() {
    let both = pool("both", json!({"addresses": ["10.0.0.0/30", "fd00::/126"]}));
    let six = pool(
        "six",
        json!({"addresses": ["fd01::/126"], "priority": 10,
        "serviceSelector": {"matchLabels": {"want": "six"}}}),
    );
    let a = alloc(&[], &[both, six]);
    // IPv6 is never filtered: fd01:: itself is handed out.
    let v6 = json!({"metadata": {"labels": {"want": "six"}}, "spec": {"ipFamilies": ["IPv6"]}});
    assert_eq!(
        got(&admit(&a, &svc("x", "v6", v6))),
        ("vippool/six".into(), vec!["fd01::".into()])
    );
    // One address per family, both from the pool, in ipFamilies order.
    let d = admit(
        &a,
        &svc(
            "x",
            "req",
            json!({"spec": {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"]}}),
        ),
    );
    assert_eq!(
        got(&d),
        (
            "vippool/both".into(),
            vec!["fd00::".into(), "10.0.0.1".into()]
        )
    );
    assert_eq!(
        d.changes.annotations["kube-vip.io/loadbalancerIPs"],
        "fd00::,10.0.0.1"
    );
    let d = admit(
        &a,
        &svc(
            "x",
            "pref",
            json!({"spec": {"ipFamilyPolicy": "PreferDualStack"}}),
        ),
    );
    assert_eq!(
        got(&d),
        (
            "vippool/both".into(),
            vec!["10.0.0.2".into(), "fd00::1".into()]
        )
    );
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    // The cluster's primary family decides an unset ipFamilies (CREATE).
    let v6_primary = Options {
        default_family: kube_vip_webhook::ipam::Family::V6,
        ..Options::default()
    };
    let b = alloc_with(
        &[],
        &[pool(
            "both",
            json!({"addresses": ["10.0.0.0/30", "fd00::/126"]}),
        )],
        v6_primary,
    );
    assert_eq!(got(&admit(&b, &svc("x", "a", json!({})))).1, ["fd00::"]);
}

#[test]
fn a_pool_object_missing_a_family_falls_through_or_says_why() {
    let v4 = || pool("v4", json!({"addresses": ["10.0.0.0/30"], "priority": 10}));
    let require = json!({"spec": {"ipFamilyPolicy": "RequireDualStack"}});
    let single6 = json!({"spec": {"ipFamilies": ["IPv6"]}});
    // The ConfigMap has both families: RequireDualStack and IPv6 go there.
    let a = alloc(&[("cidr-global", "10.9.0.0/24,fd09::/120")], &[v4()]);
    assert_eq!(
        got(&admit(&a, &svc("x", "req", require.clone()))),
        (
            "cidr-global".into(),
            vec!["10.9.0.1".into(), "fd09::".into()]
        )
    );
    assert_eq!(
        got(&admit(&a, &svc("x", "six", single6.clone()))),
        ("cidr-global".into(), vec!["fd09::1".into()])
    );
    // PreferDualStack takes what the first pool has, and says what is missing.
    let d = admit(
        &a,
        &svc(
            "x",
            "pref",
            json!({"spec": {"ipFamilyPolicy": "PreferDualStack"}}),
        ),
    );
    assert_eq!(got(&d), ("vippool/v4".into(), vec!["10.0.0.1".into()]));
    assert!(
        d.warnings.iter().any(|w| w.contains("PreferDualStack")
            && w.contains("vippool/v4")
            && w.contains("no IPv6 addresses")),
        "{:?}",
        d.warnings
    );
    // Without another pool: no address, and the reason names the pool and the family.
    let a = alloc(&[], &[v4()]);
    let d = admit(&a, &svc("x", "six", single6));
    assert!(
        matches!(&d.outcome, Outcome::NoAddress(w)
            if w.contains("pool vippool/v4") && w.contains("no IPv6 addresses")),
        "{d:?}"
    );
    let d = admit(&a, &svc("x", "req", require));
    assert!(
        matches!(&d.outcome, Outcome::NoAddress(w)
            if w.contains("RequireDualStack") && w.contains("vippool/v4") && w.contains("IPv6")),
        "{d:?}"
    );
    assert!(
        a.holders_of("10.0.0.1".parse().unwrap()).is_empty(),
        "nothing half-allocated"
    );
}

#[test]
fn a_pinned_address_in_a_pool_object_is_checked_like_a_configmap_one() {
    for allow_share in [false, true] {
        let a = alloc(
            &[("cidr-global", "10.9.0.0/24")],
            &[pool(
                "p",
                json!({"addresses": ["10.0.0.0/29"], "allowShare": allow_share}),
            )],
        );
        a.apply_service(&on("holder", &[(53, "TCP")], pinned_json("10.0.0.3")));
        // Whatever allowShare says, a port clash is denied naming the holder.
        let d = admit(&a, &on("clash", &[(53, "TCP")], pinned_json("10.0.0.3")));
        assert!(
            matches!(&d.outcome, Outcome::Denied(w)
                if w.contains("10.0.0.3") && w.contains("x/holder") && w.contains("TCP/53")),
            "allowShare {allow_share}: {d:?}"
        );
        // Another protocol shares; without allowShare the warning names the pool's setting.
        let d = admit(&a, &on("udp", &[(53, "UDP")], pinned_json("10.0.0.3")));
        assert_eq!(d.outcome.ips(), ["10.0.0.3".parse::<IpAddr>().unwrap()]);
        let warned = d.warnings.iter().any(|w| {
            w.contains("shared with x/holder")
                && w.contains("allowShare is not enabled for VIPPool p")
        });
        assert_eq!(warned, !allow_share, "{:?}", d.warnings);
        // Nothing says it is outside a pool: it is inside the one this Service may use.
        assert!(
            !d.warnings.iter().any(|w| w.contains("outside")),
            "{:?}",
            d.warnings
        );
    }
}

#[test]
fn a_pinned_address_outside_every_pool_is_admitted_with_a_warning_as_without_pool_objects() {
    let cm = [("cidr-global", "10.9.0.0/24")];
    let with_objects = alloc(&cm, &[pool("p", json!({"addresses": ["10.0.0.0/29"]}))]);
    let configmap_only = alloc(&cm, &[]);
    for a in [&with_objects, &configmap_only] {
        let d = admit(a, &svc("x", "out", pinned_json("192.168.7.7")));
        assert_eq!(
            d.outcome,
            Outcome::Requested {
                ips: vec!["192.168.7.7".parse().unwrap()]
            }
        );
        assert!(
            d.warnings.iter().any(
                |w| w.contains("192.168.7.7 is outside") && w.contains("admitted as requested")
            ),
            "{:?}",
            d.warnings
        );
        // And a clash there is still denied naming the holder.
        a.apply_service(&on("held", &[(80, "TCP")], pinned_json("192.168.7.8")));
        let d = admit(a, &on("clash", &[(80, "TCP")], pinned_json("192.168.7.8")));
        assert!(
            matches!(&d.outcome, Outcome::Denied(w) if w.contains("x/held")),
            "{d:?}"
        );
    }
    // With pool objects the warning lists the pools the Service may use.
    let d = admit(&with_objects, &svc("x", "out2", pinned_json("192.168.7.9")));
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains("(vippool/p, cidr-global)")),
        "{:?}",
        d.warnings
    );
}
