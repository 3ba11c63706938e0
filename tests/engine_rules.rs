//! SPEC sections 3-4 rule by rule, through the one allocation engine (via `state::Allocator`,
//! which is what the webhook, the reconciler and `plan` call).

use std::time::{Duration, Instant};

use kube_vip_webhook::engine::{ClassMode, Options, Outcome};
use kube_vip_webhook::ipam::Family;
use kube_vip_webhook::service::{ServiceKey, SvcInfo};
use kube_vip_webhook::state::{Allocator, Confirm, Request};
use serde_json::{Value, json};

#[path = "support/engine.rs"]
mod engine;
use engine::{config, decide as admit, ip, ips, merge, svc};

fn alloc(pairs: &[(&str, &str)]) -> Allocator {
    alloc_with(pairs, Options::default(), Confirm::OnAdmit)
}

fn alloc_with(pairs: &[(&str, &str)], options: Options, confirm: Confirm) -> Allocator {
    let a = Allocator::new(options, confirm, "kube-system/kubevip");
    a.set_config(Some(config(pairs)));
    a
}

#[test]
fn allocation_writes_annotation_and_label() {
    let a = alloc(&[("cidr-global", "10.0.0.0/29")]);
    let d = admit(&a, &svc("web", "a", json!({})));
    assert_eq!(ips(&d), ["10.0.0.1"]);
    assert_eq!(
        d.changes.annotations["kube-vip.io/loadbalancerIPs"],
        "10.0.0.1"
    );
    assert_eq!(d.changes.labels["implementation"], "kube-vip");
    assert_eq!(
        d.changes.spec_load_balancer_ip, None,
        "deprecated field not written by default"
    );
    assert!(
        matches!(&d.outcome, Outcome::Allocated { pool, shared: false, .. } if pool == "cidr-global")
    );
    let d = admit(&a, &svc("web", "b", json!({})));
    assert_eq!(ips(&d), ["10.0.0.2"]);
}

#[test]
fn spec_load_balancer_ip_is_written_only_when_asked() {
    let opts = Options {
        write_spec_load_balancer_ip: true,
        ..Options::default()
    };
    let a = alloc_with(
        &[("range-global", "10.0.0.5-10.0.0.6")],
        opts,
        Confirm::OnAdmit,
    );
    let d = admit(&a, &svc("web", "a", json!({})));
    assert_eq!(d.changes.spec_load_balancer_ip.as_deref(), Some("10.0.0.5"));
}

#[test]
fn namespace_pool_wins_and_full_namespace_pool_does_not_fall_back() {
    let a = alloc(&[
        ("cidr-global", "10.9.0.0/24"),
        ("range-team", "10.1.0.1-10.1.0.1"),
        ("cidr-team", "10.2.0.4/31"),
    ]);
    // cidr-<ns> beats everything.
    assert_eq!(ips(&admit(&a, &svc("team", "a", json!({})))), ["10.2.0.4"]);
    assert_eq!(ips(&admit(&a, &svc("team", "b", json!({})))), ["10.2.0.5"]);
    let d = admit(&a, &svc("team", "c", json!({})));
    match &d.outcome {
        Outcome::NoAddress(why) => {
            assert!(
                why.contains("cidr-team") && why.contains("\"team\"") && why.contains("exhausted"),
                "{why}"
            );
            assert!(why.contains("all 2 IPv4 addresses"), "{why}");
        }
        other => panic!("expected no address, got {other:?}"),
    }
    // cidr-global shadows range-<ns> (peer precedence).
    let a = alloc(&[
        ("cidr-global", "10.9.0.0/24"),
        ("range-team", "10.1.0.1-10.1.0.9"),
    ]);
    assert_eq!(ips(&admit(&a, &svc("team", "a", json!({})))), ["10.9.0.1"]);
}

#[test]
fn no_pool_is_admitted_without_address_and_says_which_keys() {
    let a = alloc(&[("cidr-other", "10.0.0.0/24")]);
    let d = admit(&a, &svc("web", "a", json!({})));
    match &d.outcome {
        Outcome::NoAddress(why) => assert!(
            why.contains("cidr-web") && why.contains("range-global"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(d.changes.is_empty());
}

#[test]
fn dot_zero_and_dot_255_are_never_handed_out() {
    let a = alloc(&[("range-global", "10.0.0.253-10.0.1.2")]);
    let got: Vec<String> = (0..4)
        .map(|i| ips(&admit(&a, &svc("x", &format!("s{i}"), json!({}))))[0].clone())
        .collect();
    assert_eq!(got, ["10.0.0.253", "10.0.0.254", "10.0.1.1", "10.0.1.2"]);
    assert!(matches!(
        admit(&a, &svc("x", "s5", json!({}))).outcome,
        Outcome::NoAddress(_)
    ));
}

#[test]
fn descending_search_order() {
    let a = alloc(&[("cidr-global", "10.0.0.0/24"), ("search-order", "desc")]);
    assert_eq!(ips(&admit(&a, &svc("x", "a", json!({})))), ["10.0.0.254"]);
    assert_eq!(ips(&admit(&a, &svc("x", "b", json!({})))), ["10.0.0.253"]);
}

#[test]
fn skip_end_ips_in_cidr() {
    let a = alloc(&[
        ("cidr-global", "fd00::/127,10.0.1.0/30"),
        ("skip-end-ips-in-cidr", "true"),
    ]);
    assert_eq!(ips(&admit(&a, &svc("x", "a", json!({})))), ["10.0.1.1"]);
    assert_eq!(ips(&admit(&a, &svc("x", "b", json!({})))), ["10.0.1.2"]);
    assert!(matches!(
        admit(&a, &svc("x", "c", json!({}))).outcome,
        Outcome::NoAddress(_)
    ));
}

#[test]
fn dhcp_pool_gives_the_placeholder_to_everyone() {
    let a = alloc(&[("cidr-global", "0.0.0.0/32")]);
    for name in ["a", "b", "c"] {
        assert_eq!(ips(&admit(&a, &svc("x", name, json!({})))), ["0.0.0.0"]);
    }
    assert_eq!(
        a.used_count(),
        0,
        "the DHCP placeholder is not a used address"
    );
    let a = alloc(&[("cidr-global", "0.0.0.0/32,fd00::/126")]);
    let d = admit(
        &a,
        &svc(
            "x",
            "a",
            json!({"spec": {"ipFamilyPolicy": "PreferDualStack"}}),
        ),
    );
    assert_eq!(ips(&d), ["0.0.0.0", "fd00::"]);
}

#[test]
fn one_cluster_wide_view_across_namespace_pools() {
    // The peer scans only the namespace for namespace pools and hands out duplicates here.
    let a = alloc(&[("cidr-global", "10.0.0.0/29"), ("cidr-team", "10.0.0.0/30")]);
    assert_eq!(ips(&admit(&a, &svc("other", "g", json!({})))), ["10.0.0.1"]);
    assert_eq!(ips(&admit(&a, &svc("team", "t", json!({})))), ["10.0.0.2"]);
}

#[test]
fn every_address_source_of_other_services_counts_as_used() {
    let a = alloc(&[("range-global", "10.0.0.1-10.0.0.9")]);
    a.apply_service(&svc(
        "p",
        "pinned",
        json!({"spec": {"loadBalancerIP": "10.0.0.1"}}),
    ));
    a.apply_service(&svc(
        "p",
        "status",
        json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.2"}]}}}),
    ));
    a.apply_service(&svc(
        "p",
        "dhcp",
        json!({"metadata": {"annotations": {"kube-vip.io/requestedIP": "10.0.0.3"}}}),
    ));
    a.apply_service(&svc(
        "p",
        "anno",
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.4"}}}),
    ));
    // Malformed entries elsewhere are skipped and counted, never block allocation.
    a.apply_service(&svc("p", "broken", json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.5, not-an-ip,10.0.0.999"}}})));
    assert_eq!(a.malformed_count(), 2);
    assert_eq!(ips(&admit(&a, &svc("q", "new", json!({})))), ["10.0.0.6"]);
}

#[test]
fn a_service_that_stops_being_a_load_balancer_frees_its_address() {
    let a = alloc(&[("range-global", "10.0.0.1-10.0.0.1")]);
    let s = svc(
        "p",
        "one",
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.1"}}}),
    );
    a.apply_service(&s);
    assert!(matches!(
        admit(&a, &svc("p", "two", json!({}))).outcome,
        Outcome::NoAddress(_)
    ));
    let mut s2 = s.clone();
    s2.load_balancer = false;
    a.apply_service(&s2);
    assert_eq!(ips(&admit(&a, &svc("p", "three", json!({})))), ["10.0.0.1"]);
    a.delete_service(&ServiceKey::new("p", "three"));
    assert_eq!(a.used_count(), 0);
}

#[test]
fn requested_address_clash_is_denied_naming_the_other_service() {
    let a = alloc(&[("cidr-global", "10.0.0.0/24")]);
    a.apply_service(&svc(
        "ns1",
        "dns",
        json!({
        "metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.10"}},
        "spec": {"ports": [{"port": 53, "protocol": "TCP"}]}}),
    ));
    let clash = svc(
        "ns2",
        "dns2",
        json!({
        "metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.10"}},
        "spec": {"ports": [{"port": 53, "protocol": "TCP"}]}}),
    );
    match admit(&a, &clash).outcome {
        Outcome::Denied(why) => {
            assert!(
                why.contains("ns1/dns") && why.contains("TCP/53") && why.contains("10.0.0.10"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    // UDP 53 on the same address is sharing, admitted, with a warning since allow-share is off.
    let udp = svc(
        "ns2",
        "dns-udp",
        json!({
        "metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.10"}},
        "spec": {"ports": [{"port": 53, "protocol": "UDP"}]}}),
    );
    let d = admit(&a, &udp);
    assert_eq!(ips(&d), ["10.0.0.10"]);
    assert!(
        d.warnings.iter().any(|w| w.contains("shared with ns1/dns")),
        "{:?}",
        d.warnings
    );
    assert_eq!(d.changes.labels["implementation"], "kube-vip");
    assert!(
        d.changes.annotations.is_empty(),
        "the user's annotation is never rewritten"
    );
}

#[test]
fn spec_load_balancer_ip_is_copied_into_the_annotation_and_counted() {
    let a = alloc(&[("range-global", "10.0.0.1-10.0.0.3")]);
    let d = admit(
        &a,
        &svc("x", "pin", json!({"spec": {"loadBalancerIP": "10.0.0.1"}})),
    );
    assert_eq!(
        d.changes.annotations["kube-vip.io/loadbalancerIPs"],
        "10.0.0.1"
    );
    assert_eq!(d.changes.labels["implementation"], "kube-vip");
    assert_eq!(ips(&admit(&a, &svc("x", "next", json!({})))), ["10.0.0.2"]);
}

#[test]
fn requested_garbage_is_denied_and_outside_pool_is_warned() {
    let a = alloc(&[("cidr-global", "10.0.0.0/24")]);
    let bad = svc(
        "x",
        "bad",
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.300"}}}),
    );
    assert!(matches!(admit(&a, &bad).outcome, Outcome::Denied(why) if why.contains("10.0.0.300")));
    let out = svc(
        "x",
        "out",
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "192.168.7.7"}}}),
    );
    let d = admit(&a, &out);
    assert_eq!(ips(&d), ["192.168.7.7"]);
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains("outside the address pool"))
    );
}

#[test]
fn sharing_reuses_first_compatible_address_in_search_order() {
    let a = alloc(&[
        ("cidr-global", "10.0.0.0/24,fd00::/120"),
        ("allow-share-web", "true"),
    ]);
    let on = |name: &str, port: i32, proto: &str, extra: Value| {
        let mut base = json!({"spec": {"ports": [{"port": port, "protocol": proto}]}});
        merge(&mut base, extra);
        svc("web", name, base)
    };
    assert_eq!(
        ips(&admit(&a, &on("a", 80, "TCP", json!({})))),
        ["10.0.0.1"]
    );
    assert_eq!(
        ips(&admit(&a, &on("b", 443, "TCP", json!({})))),
        ["10.0.0.1"]
    );
    // 80/TCP clashes with a: fresh address.
    assert_eq!(
        ips(&admit(&a, &on("c", 80, "TCP", json!({})))),
        ["10.0.0.2"]
    );
    // 80/UDP shares with a (protocol matters), first in order.
    let d = admit(&a, &on("d", 80, "UDP", json!({})));
    assert_eq!(ips(&d), ["10.0.0.1"]);
    assert!(matches!(d.outcome, Outcome::Allocated { shared: true, .. }));
    // IPv6 shares too (and IPv6 is never filtered: fd00:: itself is handed out).
    let v6 = json!({"spec": {"ipFamilies": ["IPv6"]}});
    assert_eq!(ips(&admit(&a, &on("e", 80, "TCP", v6.clone()))), ["fd00::"]);
    assert_eq!(ips(&admit(&a, &on("f", 81, "TCP", v6))), ["fd00::"]);
    // Without allow-share in another namespace: never shared.
    assert_eq!(
        ips(&admit(
            &a,
            &svc("other", "g", json!({"spec": {"ports": [{"port": 9999}]}}))
        )),
        ["10.0.0.3"]
    );
}

#[test]
fn sharing_only_considers_addresses_inside_the_pool() {
    let a = alloc(&[
        ("range-global", "10.0.0.5-10.0.0.6"),
        ("allow-share-global", "TRUE"),
    ]);
    a.apply_service(&svc(
        "p",
        "outside",
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.9"}},
        "spec": {"ports": [{"port": 1}]}}),
    ));
    assert_eq!(ips(&admit(&a, &svc("p", "n", json!({})))), ["10.0.0.5"]);
}

#[test]
fn families_single_prefer_require() {
    let both = [("cidr-global", "10.0.0.0/24,fd00::/64")];
    let a = alloc(&both);
    // Unset families at CREATE: the cluster's primary family.
    assert_eq!(ips(&admit(&a, &svc("x", "a", json!({})))), ["10.0.0.1"]);
    let v6_primary = Options {
        default_family: Family::V6,
        ..Options::default()
    };
    let a6 = alloc_with(&both, v6_primary, Confirm::OnAdmit);
    assert_eq!(ips(&admit(&a6, &svc("x", "a", json!({})))), ["fd00::"]);
    // Order follows ipFamilies[0].
    let d = admit(
        &a,
        &svc(
            "x",
            "b",
            json!({"spec": {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"]}}),
        ),
    );
    assert_eq!(ips(&d), ["fd00::", "10.0.0.2"]);
    assert_eq!(
        d.changes.annotations["kube-vip.io/loadbalancerIPs"],
        "fd00::,10.0.0.2"
    );

    let v4only = alloc(&[("cidr-global", "10.0.0.0/24")]);
    let req = admit(
        &v4only,
        &svc(
            "x",
            "r",
            json!({"spec": {"ipFamilyPolicy": "RequireDualStack"}}),
        ),
    );
    assert!(
        matches!(&req.outcome, Outcome::NoAddress(w) if w.contains("RequireDualStack") && w.contains("IPv6")),
        "{req:?}"
    );
    let pref = admit(
        &v4only,
        &svc(
            "x",
            "p",
            json!({"spec": {"ipFamilyPolicy": "PreferDualStack"}}),
        ),
    );
    assert_eq!(ips(&pref), ["10.0.0.1"]);
    assert!(
        pref.warnings
            .iter()
            .any(|w| w.contains("PreferDualStack") && w.contains("IPv6"))
    );
    let single6 = admit(
        &v4only,
        &svc("x", "s", json!({"spec": {"ipFamilies": ["IPv6"]}})),
    );
    assert!(matches!(&single6.outcome, Outcome::NoAddress(w) if w.contains("no IPv6 addresses")));
}

#[test]
fn class_modes() {
    let pool = [("cidr-global", "10.0.0.0/24")];
    let classless = alloc(&pool);
    let classed = svc(
        "x",
        "c",
        json!({"spec": {"loadBalancerClass": "kube-vip.io/kube-vip-class"}}),
    );
    assert!(matches!(
        admit(&classless, &classed).outcome,
        Outcome::Skipped(_)
    ));
    let not_lb = svc("x", "n", json!({"spec": {"type": "ClusterIP"}}));
    assert!(matches!(
        admit(&classless, &not_lb).outcome,
        Outcome::Skipped(_)
    ));

    let opts = Options {
        class_mode: ClassMode::Class("kube-vip.io/kube-vip-class".into()),
        ..Options::default()
    };
    let class_mode = alloc_with(&pool, opts, Confirm::OnAdmit);
    assert_eq!(ips(&admit(&class_mode, &classed)), ["10.0.0.1"]);
    assert!(matches!(
        admit(&class_mode, &svc("x", "plain", json!({}))).outcome,
        Outcome::Skipped(_)
    ));
    let other = svc(
        "x",
        "o",
        json!({"spec": {"loadBalancerClass": "example.com/other"}}),
    );
    assert!(matches!(
        admit(&class_mode, &other).outcome,
        Outcome::Skipped(_)
    ));
}

#[test]
fn interface_annotation_and_config_warnings() {
    let a = alloc(&[
        ("cidr-global", "10.0.0.0/30, nonsense/33"),
        ("interface-global", "eth1"),
        ("interface-web", "bond0"),
    ]);
    let d = admit(&a, &svc("web", "a", json!({})));
    assert_eq!(
        d.changes.annotations["kube-vip.io/serviceInterface"],
        "bond0"
    );
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains("cidr-global") && w.contains("nonsense/33")),
        "{:?}",
        d.warnings
    );
    let d = admit(&a, &svc("db", "a", json!({})));
    assert_eq!(
        d.changes.annotations["kube-vip.io/serviceInterface"],
        "eth1"
    );
}

#[test]
fn update_rules() {
    let a = alloc(&[("range-global", "10.0.0.1-10.0.0.9")]);
    a.apply_service(&svc(
        "o",
        "holder",
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.1"}}}),
    ));
    let old = svc(
        "x",
        "s",
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.1"}}}),
    );
    let upd = |new: &SvcInfo, old: &SvcInfo| {
        a.admit(
            Request {
                id: "u",
                svc: new,
                old: Some(old),
                dry_run: false,
            },
            Instant::now(),
        )
    };
    // Unchanged user choice is not re-validated (an unrelated edit is never denied).
    assert!(matches!(upd(&old, &old).outcome, Outcome::Requested { .. }));
    // Changing it is a new request: validated.
    let changed = svc(
        "o",
        "s2",
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.1"}}}),
    );
    let old2 = svc(
        "o",
        "s2",
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.5"}}}),
    );
    assert!(matches!(upd(&changed, &old2).outcome, Outcome::Denied(_)));
    // Removing the annotation allocates anew.
    let removed = svc("x", "s", json!({}));
    assert_eq!(ips(&upd(&removed, &old)), ["10.0.0.2"]);
    // Changing the type to LoadBalancer allocates.
    let was = svc("x", "t", json!({"spec": {"type": "ClusterIP"}}));
    assert_eq!(ips(&upd(&svc("x", "t", json!({})), &was)), ["10.0.0.3"]);
}

#[test]
fn reservations_hold_until_confirmed_or_expired_and_dry_run_holds_nothing() {
    let ttl = Duration::from_secs(30);
    let a = alloc_with(
        &[("range-global", "10.0.0.1-10.0.0.3")],
        Options::default(),
        Confirm::ByCache { ttl },
    );
    let t0 = Instant::now();
    let generated = svc("x", "", json!({"metadata": {"generateName": "web-"}}));
    let dry = a.admit(
        Request {
            id: "d",
            svc: &generated,
            old: None,
            dry_run: true,
        },
        t0,
    );
    assert_eq!(ips(&dry), ["10.0.0.1"]);
    assert_eq!(a.reservations(), 0);
    let first = a.admit(
        Request {
            id: "r1",
            svc: &generated,
            old: None,
            dry_run: false,
        },
        t0,
    );
    let second = a.admit(
        Request {
            id: "r2",
            svc: &generated,
            old: None,
            dry_run: false,
        },
        t0,
    );
    assert_eq!(
        (ips(&first), ips(&second)),
        (vec!["10.0.0.1".to_string()], vec!["10.0.0.2".to_string()])
    );
    assert_eq!(a.reservations(), 2);
    // The generated-name Service shows up in the cache with its address: confirmed.
    a.apply_service(&svc(
        "x",
        "web-abcde",
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.1"}}}),
    ));
    assert_eq!(a.reservations(), 1);
    assert_eq!(a.holders_of(ip("10.0.0.1")), ["x/web-abcde"]);
    // The other one never appears (a later admission step rejected it): expires, address freed.
    a.expire(t0 + ttl + Duration::from_millis(1));
    assert_eq!(a.reservations(), 0);
    assert!(a.holders_of(ip("10.0.0.2")).is_empty());
    let third = a.admit(
        Request {
            id: "r3",
            svc: &svc("x", "n", json!({})),
            old: None,
            dry_run: false,
        },
        t0 + ttl * 2,
    );
    assert_eq!(ips(&third), ["10.0.0.2"]);
}

#[test]
fn relist_keeps_reservations() {
    let a = alloc_with(
        &[("range-global", "10.0.0.1-10.0.0.3")],
        Options::default(),
        Confirm::ByCache {
            ttl: Duration::from_secs(30),
        },
    );
    let now = Instant::now();
    a.admit(
        Request {
            id: "r1",
            svc: &svc("x", "a", json!({})),
            old: None,
            dry_run: false,
        },
        now,
    );
    let listed = svc(
        "y",
        "b",
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.2"}}}),
    );
    a.reset_services([&listed]);
    assert_eq!(a.reservations(), 1);
    let d = a.admit(
        Request {
            id: "r2",
            svc: &svc("x", "c", json!({})),
            old: None,
            dry_run: false,
        },
        now,
    );
    assert_eq!(ips(&d), ["10.0.0.3"]);
}

#[test]
fn the_same_request_decided_again_gets_the_same_address() {
    let a = alloc_with(
        &[("range-global", "10.0.0.1-10.0.0.3")],
        Options::default(),
        Confirm::ByCache {
            ttl: Duration::from_secs(30),
        },
    );
    let now = Instant::now();
    let s = svc("x", "a", json!({}));
    let first = a.admit(
        Request {
            id: "same",
            svc: &s,
            old: None,
            dry_run: false,
        },
        now,
    );
    let again = a.admit(
        Request {
            id: "same",
            svc: &s,
            old: None,
            dry_run: false,
        },
        now,
    );
    assert_eq!(ips(&first), ips(&again));
    assert_eq!(a.reservations(), 1);
    let other = a.admit(
        Request {
            id: "other",
            svc: &svc("x", "b", json!({})),
            old: None,
            dry_run: false,
        },
        now,
    );
    assert_eq!(ips(&other), ["10.0.0.2"]);
}

#[test]
fn standalone_update_away_from_load_balancer_frees_the_address() {
    let a = alloc(&[("range-global", "10.0.0.1-10.0.0.1")]);
    let s = svc("x", "a", json!({}));
    assert_eq!(ips(&admit(&a, &s)), ["10.0.0.1"]);
    let now_cluster_ip = svc(
        "x",
        "a",
        json!({"spec": {"type": "ClusterIP"},
        "metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.1"}}}),
    );
    let d = a.admit(
        Request {
            id: "u",
            svc: &now_cluster_ip,
            old: Some(&s),
            dry_run: false,
        },
        Instant::now(),
    );
    assert!(matches!(d.outcome, Outcome::Skipped(_)));
    assert_eq!(ips(&admit(&a, &svc("x", "b", json!({})))), ["10.0.0.1"]);
}

#[test]
fn sharing_skips_every_clashing_holder_and_keeps_a_services_own_address() {
    for (order, want) in [("asc", "10.0.0.8"), ("desc", "10.0.0.10")] {
        let a = alloc(&[
            ("range-global", "10.0.0.1-10.0.0.20"),
            ("allow-share-global", "true"),
            ("search-order", order),
        ]);
        let holder = |name: &str, ip: &str, port: i32, proto: &str| {
            svc(
                "h",
                name,
                json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": ip}},
                       "spec": {"ports": [{"port": port, "protocol": proto}]}}),
            )
        };
        // 80/TCP on .1-.6 and .11-.20, .7 and .9 free, 53/UDP on .8, 443/TCP on .10.
        for i in (1..=6).chain(11..=20) {
            a.apply_service(&holder(
                &format!("web{i}"),
                &format!("10.0.0.{i}"),
                80,
                "TCP",
            ));
        }
        a.apply_service(&holder("dns", "10.0.0.8", 53, "UDP"));
        a.apply_service(&holder("tls", "10.0.0.10", 443, "TCP"));
        let d = admit(&a, &svc("n", "new", json!({})));
        assert_eq!(ips(&d), [want], "search order {order}");
        assert!(matches!(d.outcome, Outcome::Allocated { shared: true, .. }));
        // A Service re-decided on UPDATE without its annotation: its own address never clashes
        // with itself, even inside a stretch of clashing holders.
        let old = holder("web3", "10.0.0.3", 80, "TCP");
        let new = svc("h", "web3", json!({}));
        let d = a.admit(
            Request {
                id: "update-web3",
                svc: &new,
                old: Some(&old),
                dry_run: false,
            },
            Instant::now(),
        );
        // Descending, .10 now also holds "new" on 80/TCP, so .8 comes before .3.
        let own = if order == "asc" {
            "10.0.0.3"
        } else {
            "10.0.0.8"
        };
        assert_eq!(ips(&d), [own], "search order {order}");
    }
    // Once the only non-clashing holders are gone, a port-80 Service gets a free address.
    let a = alloc(&[
        ("range-global", "10.0.0.1-10.0.0.4"),
        ("allow-share-global", "true"),
    ]);
    a.apply_service(&svc(
        "h",
        "web",
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.1"}}}),
    ));
    a.apply_service(&svc(
        "h",
        "dns",
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.3"}},
               "spec": {"ports": [{"port": 53, "protocol": "UDP"}]}}),
    ));
    assert_eq!(ips(&admit(&a, &svc("n", "one", json!({})))), ["10.0.0.3"]);
    a.delete_service(&ServiceKey::new("h", "dns"));
    // "one" now holds .3 on 80/TCP (OnAdmit): nothing shareable for port 80 any more.
    assert_eq!(ips(&admit(&a, &svc("n", "two", json!({})))), ["10.0.0.2"]);
}

/// Issue 9: the reconciler reserves an address and patches the Service; the apiserver sends that
/// patch back to the webhook as an UPDATE (new request id) asking for the reserved address. It is
/// the same Service confirming its own reservation: admitted. Another Service asking for that
/// address on the same port is still denied, and a `generateName` reservation is not "the same
/// Service" for a Service that merely shares the prefix.
#[test]
fn an_update_confirming_this_services_own_reservation_is_admitted() {
    let a = alloc_with(
        &[("range-global", "10.0.0.1-10.0.0.3")],
        Options::default(),
        Confirm::ByCache {
            ttl: Duration::from_secs(30),
        },
    );
    let now = Instant::now();
    let bare = svc("x", "o3", json!({}));
    let by_reconciler = a.admit(
        Request {
            id: "reconcile/uid-o3",
            svc: &bare,
            old: None,
            dry_run: false,
        },
        now,
    );
    assert_eq!(ips(&by_reconciler), ["10.0.0.1"]);
    let pinned = |name: &str| {
        svc(
            "x",
            name,
            json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.1"}}}),
        )
    };
    let update = pinned("o3");
    let echoed = a.admit(
        Request {
            id: "apiserver-update-uid",
            svc: &update,
            old: Some(&bare),
            dry_run: false,
        },
        now,
    );
    assert_eq!(
        echoed.outcome,
        Outcome::Requested {
            ips: vec![ip("10.0.0.1")]
        },
        "{echoed:?}"
    );
    let thief = a.admit(
        Request {
            id: "other-uid",
            svc: &pinned("other"),
            old: None,
            dry_run: false,
        },
        now,
    );
    assert!(
        matches!(&thief.outcome, Outcome::Denied(why) if why.contains("x/o3")),
        "{thief:?}"
    );
    // The Service shows up holding it: every reservation for it is confirmed, none leaks.
    a.apply_service(&update);
    assert_eq!(a.reservations(), 0);

    let generated = svc("x", "", json!({"metadata": {"generateName": "web-"}}));
    let gen_ips = ips(&a.admit(
        Request {
            id: "gen-uid",
            svc: &generated,
            old: None,
            dry_run: false,
        },
        now,
    ));
    let prefix_sharer = svc(
        "x",
        "web-other",
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": gen_ips[0]}}}),
    );
    let d = a.admit(
        Request {
            id: "sharer-uid",
            svc: &prefix_sharer,
            old: None,
            dry_run: false,
        },
        now,
    );
    assert!(matches!(d.outcome, Outcome::Denied(_)), "{d:?}");
}

#[test]
fn update_keeping_its_address_but_adding_a_clashing_port_is_denied() {
    let a = alloc(&[("range-global", "10.0.0.1-10.0.0.9")]);
    let pinned = |ns: &str, name: &str, ports: Value| {
        svc(
            ns,
            name,
            json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.1"}},
                   "spec": {"ports": ports}}),
        )
    };
    a.apply_service(&pinned(
        "o",
        "tls",
        json!([{"port": 443, "protocol": "TCP"}]),
    ));
    let old = pinned("x", "web", json!([{"port": 80, "protocol": "TCP"}]));
    a.apply_service(&old);
    let upd = |new: &SvcInfo| {
        a.admit(
            Request {
                id: "u",
                svc: new,
                old: Some(&old),
                dry_run: true,
            },
            Instant::now(),
        )
    };
    // Same address, a new port that another holder of the address already uses: denied,
    // naming the other Service and the pair.
    let clashing = pinned(
        "x",
        "web",
        json!([{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}]),
    );
    match upd(&clashing).outcome {
        Outcome::Denied(why) => {
            assert!(why.contains("o/tls") && why.contains("TCP/443"), "{why}")
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    // A new port nobody else uses on the address is fine; so is an unrelated edit.
    let fine = pinned(
        "x",
        "web",
        json!([{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "UDP"}]),
    );
    assert!(matches!(upd(&fine).outcome, Outcome::Requested { .. }));
    assert!(matches!(upd(&old).outcome, Outcome::Requested { .. }));
}

#[test]
fn a_huge_reservation_ttl_is_clamped_instead_of_overflowing() {
    let a = alloc_with(
        &[("range-global", "10.0.0.1-10.0.0.2")],
        Options::default(),
        Confirm::ByCache { ttl: Duration::MAX },
    );
    let d = admit(&a, &svc("x", "a", json!({})));
    assert_eq!(ips(&d), ["10.0.0.1"]);
    assert_eq!(a.reservations(), 1);
}
