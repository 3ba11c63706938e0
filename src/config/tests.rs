use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;

use super::*;

fn cfg(pairs: &[(&str, &str)]) -> Config {
    let data: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_data(&data)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cidrs(family: Family, nets: &[&str], skip_end: bool) -> AddressSet {
    let nets: Vec<IpNet> = nets.iter().map(|n| n.parse().unwrap()).collect();
    AddressSet::from_cidrs(family, &nets, skip_end)
}

fn ranges(family: Family, rs: &[(&str, &str)]) -> AddressSet {
    let rs: Vec<(IpAddr, IpAddr)> = rs.iter().map(|(a, b)| (ip(a), ip(b))).collect();
    AddressSet::from_ranges(family, &rs)
}

fn set(pool: &Pool, f: Family) -> &AddressSet {
    match pool.family(f) {
        Some(FamilyPool::Set(s)) => s,
        other => panic!("{}: expected a {} set, got {other:?}", pool.key, f.as_str()),
    }
}

fn key_for<'a>(c: &'a Config, ns: &str) -> Option<&'a str> {
    c.pool_for(ns).map(|p| p.key.as_str())
}

fn err(key: &str, entry: &str, reason: &str) -> ConfigError {
    ConfigError {
        key: key.into(),
        entry: entry.into(),
        reason: reason.into(),
    }
}

#[test]
fn precedence_cidr_ns_then_cidr_global_then_range_ns_then_range_global() {
    let all = [
        ("cidr-web", "10.0.1.0/24"),
        ("cidr-global", "10.0.2.0/24"),
        ("range-web", "10.0.3.1-10.0.3.9"),
        ("range-db", "10.0.4.1-10.0.4.9"),
        ("range-global", "10.0.5.1-10.0.5.9"),
    ];
    let c = cfg(&all);
    assert_eq!(key_for(&c, "web"), Some("cidr-web"));
    // A global CIDR shadows a namespace range.
    assert_eq!(key_for(&c, "db"), Some("cidr-global"));
    assert_eq!(key_for(&c, "other"), Some("cidr-global"));

    let c = cfg(&all[2..]);
    assert_eq!(key_for(&c, "web"), Some("range-web"));
    assert_eq!(key_for(&c, "db"), Some("range-db"));
    assert_eq!(key_for(&c, "other"), Some("range-global"));

    let c = cfg(&[("cidr-web", "10.0.1.0/24")]);
    assert_eq!(key_for(&c, "other"), None);
    assert!(cfg(&[]).pool_for("web").is_none());
    assert!(c.errors().is_empty());
}

#[test]
fn empty_namespace_value_blocks_global() {
    let c = cfg(&[("cidr-web", ""), ("cidr-global", "10.0.0.0/24")]);
    let p = c.pool_for("web").unwrap();
    assert_eq!(p.key, "cidr-web");
    assert!(p.is_empty());
    assert!(!p.global);
    assert_eq!((&p.v4, &p.v6), (&None, &None));
    assert!(c.errors().is_empty(), "{:?}", c.errors());
    assert_eq!(key_for(&c, "db"), Some("cidr-global"));
    assert!(!c.pool_for("db").unwrap().is_empty());
}

#[test]
fn all_bad_value_still_blocks_global() {
    let c = cfg(&[
        ("cidr-web", "10.0.0.300/24,bogus/8"),
        ("cidr-global", "10.0.0.0/24"),
    ]);
    let p = c.pool_for("web").unwrap();
    assert_eq!(p.key, "cidr-web");
    assert!(p.is_empty());
    assert_eq!(c.errors_for_key("cidr-web").count(), 2);
}

#[test]
fn entries_are_trimmed_and_trailing_comma_is_ignored() {
    let c = cfg(&[("cidr-global", " 10.0.0.0/24, 10.0.1.0/24 ,")]);
    assert!(c.errors().is_empty(), "{:?}", c.errors());
    let p = c.pool_for("x").unwrap();
    assert_eq!(
        set(p, Family::V4),
        &cidrs(Family::V4, &["10.0.0.0/23"], false)
    );
    let c = cfg(&[("range-global", "10.0.0.1 - 10.0.0.5 ,  10.0.0.9-10.0.0.9")]);
    assert!(c.errors().is_empty(), "{:?}", c.errors());
    let p = c.pool_for("x").unwrap();
    assert_eq!(
        set(p, Family::V4),
        &ranges(
            Family::V4,
            &[("10.0.0.1", "10.0.0.5"), ("10.0.0.9", "10.0.0.9")]
        )
    );
}

#[test]
fn host_bits_are_masked() {
    let c = cfg(&[("cidr-global", "192.168.0.210/29")]);
    let s = set(c.pool_for("x").unwrap(), Family::V4);
    assert!(s.contains(ip("192.168.0.208")));
    assert!(s.contains(ip("192.168.0.215")));
    assert!(!s.contains(ip("192.168.0.207")));
    assert!(!s.contains(ip("192.168.0.216")));
    assert_eq!(s, &cidrs(Family::V4, &["192.168.0.208/29"], false));
    assert!(c.errors().is_empty());
}

#[test]
fn overlapping_and_adjacent_cidrs_merge() {
    let c = cfg(&[(
        "cidr-global",
        "10.0.0.0/25,10.0.0.128/25,10.0.0.64/26,10.0.0.7/32",
    )]);
    let s = set(c.pool_for("x").unwrap(), Family::V4);
    assert_eq!(s, &cidrs(Family::V4, &["10.0.0.0/24"], false));
    assert_eq!(
        s.capacity(),
        cidrs(Family::V4, &["10.0.0.0/24"], false).capacity()
    );
}

#[test]
fn mixed_families_are_split() {
    let c = cfg(&[
        ("cidr-web", "10.0.0.0/30, fd00::/126,10.0.0.4/30"),
        ("range-global", "10.0.1.1-10.0.1.3,fd00:1::1-fd00:1::2"),
    ]);
    assert!(c.errors().is_empty(), "{:?}", c.errors());
    let p = c.pool_for("web").unwrap();
    assert_eq!(p.kind, PoolKind::Cidr);
    assert_eq!(
        set(p, Family::V4),
        &cidrs(Family::V4, &["10.0.0.0/29"], false)
    );
    assert_eq!(
        set(p, Family::V6),
        &cidrs(Family::V6, &["fd00::/126"], false)
    );
    assert_eq!(set(p, Family::V6).family(), Family::V6);

    let p = c.pool_for("other").unwrap();
    assert_eq!(p.kind, PoolKind::Range);
    assert_eq!(
        set(p, Family::V4),
        &ranges(Family::V4, &[("10.0.1.1", "10.0.1.3")])
    );
    assert_eq!(
        set(p, Family::V6),
        &ranges(Family::V6, &[("fd00:1::1", "fd00:1::2")])
    );

    let c = cfg(&[("cidr-global", "fd00::/64")]);
    let p = c.pool_for("x").unwrap();
    assert!(p.v4.is_none());
    assert!(p.family(Family::V6).is_some());
}

#[test]
fn value_decides_the_kind_not_the_key() {
    let c = cfg(&[
        ("range-global", "10.0.0.8/30"),
        ("cidr-ipv6", "2001::10-2001::20"),
    ]);
    assert!(c.errors().is_empty(), "{:?}", c.errors());
    let p = c.pool_by_key("range-global").unwrap();
    assert_eq!(p.kind, PoolKind::Cidr);
    assert_eq!(
        set(p, Family::V4),
        &cidrs(Family::V4, &["10.0.0.8/30"], false)
    );
    let p = c.pool_for("ipv6").unwrap();
    assert_eq!((p.key.as_str(), p.kind), ("cidr-ipv6", PoolKind::Range));
    assert_eq!(
        set(p, Family::V6),
        &ranges(Family::V6, &[("2001::10", "2001::20")])
    );
    assert_eq!(
        c.pool_by_key("cidr-ipv6").map(|p| p.kind),
        Some(PoolKind::Range)
    );
    assert!(c.pool_by_key("cidr-nothing").is_none());
    assert!(c.pool_by_key("ipv6").is_none());
}

#[test]
fn wrong_kind_entry_in_a_list_is_bad() {
    // Contains '/', so the range entry is a bad CIDR entry; the CIDR entry still works.
    let c = cfg(&[("cidr-global", "10.0.0.0/30,10.0.1.1-10.0.1.5")]);
    let errs: Vec<_> = c.errors_for_key("cidr-global").collect();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].entry, "10.0.1.1-10.0.1.5");
    assert!(errs[0].reason.contains("range"), "{}", errs[0].reason);
    let p = c.pool_for("x").unwrap();
    assert_eq!(p.kind, PoolKind::Cidr);
    assert_eq!(
        set(p, Family::V4),
        &cidrs(Family::V4, &["10.0.0.0/30"], false)
    );
    // No '/', so a bare address is a bad range entry.
    let c = cfg(&[("range-global", "10.0.0.5,10.0.0.6-10.0.0.7")]);
    assert_eq!(c.errors()[0].entry, "10.0.0.5");
    assert!(c.errors()[0].reason.starts_with("not a range"));
    let p = c.pool_for("x").unwrap();
    assert_eq!(
        set(p, Family::V4),
        &ranges(Family::V4, &[("10.0.0.6", "10.0.0.7")])
    );
}

#[test]
fn dhcp_alone_and_trimmed() {
    for v in ["0.0.0.0/32", " 0.0.0.0/32 ", "0.0.0.0/32,0.0.0.0/32"] {
        let c = cfg(&[("cidr-global", v)]);
        let p = c.pool_for("x").unwrap();
        assert_eq!(p.v4, Some(FamilyPool::Dhcp), "{v:?}");
        assert_eq!(p.v6, None);
        assert!(!p.is_empty());
        assert!(!p.contains(ip("0.0.0.0")));
        assert!(c.errors().is_empty());
    }
}

#[test]
fn dhcp_as_ipv4_part_of_mixed_value() {
    let c = cfg(&[("cidr-global", "0.0.0.0/32,fd00::/126")]);
    let p = c.pool_for("x").unwrap();
    assert_eq!(p.v4, Some(FamilyPool::Dhcp));
    assert_eq!(
        set(p, Family::V6),
        &cidrs(Family::V6, &["fd00::/126"], false)
    );
    // A bad IPv4 entry disables only itself: what is left of the IPv4 part is DHCP.
    let c = cfg(&[("cidr-global", "fd00::/126,0.0.0.0/32,10.0.0.300/24")]);
    assert_eq!(c.pool_for("x").unwrap().v4, Some(FamilyPool::Dhcp));
    assert_eq!(c.errors().len(), 1);
}

#[test]
fn dhcp_with_other_ipv4_cidrs_is_an_ordinary_cidr() {
    let c = cfg(&[("cidr-global", "0.0.0.0/32,10.0.0.0/30")]);
    let p = c.pool_for("x").unwrap();
    assert_eq!(
        set(p, Family::V4),
        &cidrs(Family::V4, &["0.0.0.0/32", "10.0.0.0/30"], false)
    );
    assert!(set(p, Family::V4).contains(ip("10.0.0.1")));
    // Not the exact CIDR `0.0.0.0/32`: ordinary pools.
    let c = cfg(&[
        ("range-global", "0.0.0.0-0.0.0.0"),
        ("cidr-web", "0.0.0.0/31"),
    ]);
    assert!(matches!(
        c.pool_for("x").unwrap().v4,
        Some(FamilyPool::Set(_))
    ));
    assert!(matches!(
        c.pool_for("web").unwrap().v4,
        Some(FamilyPool::Set(_))
    ));
}

#[test]
fn bad_cidr_entries_are_reported_and_the_rest_works() {
    let c = cfg(&[(
        "cidr-web",
        "10.0.0.0/24, 10.0.0.300/24,fd00::/126,10.0.1.0/33",
    )]);
    assert_eq!(
        c.errors(),
        &[
            err("cidr-web", "10.0.0.300/24", "invalid IPv4 address"),
            err(
                "cidr-web",
                "10.0.1.0/33",
                "prefix length 33 is longer than 32, the maximum for IPv4"
            ),
        ]
    );
    assert_eq!(
        c.errors()[0].to_string(),
        r#"cidr-web: entry "10.0.0.300/24": invalid IPv4 address"#
    );
    let p = c.pool_for("web").unwrap();
    assert_eq!(
        set(p, Family::V4),
        &cidrs(Family::V4, &["10.0.0.0/24"], false)
    );
    assert_eq!(
        set(p, Family::V6),
        &cidrs(Family::V6, &["fd00::/126"], false)
    );
}

#[test]
fn bad_range_entries_are_reported_and_the_rest_works() {
    let c = cfg(&[(
        "range-global",
        "10.0.0.9-10.0.0.1,10.0.0.1-fd00::1,10.0.0.1-10.0.0.999,10.0.1.1-10.0.1.2,fd00::5-fd00::6",
    )]);
    let errs: Vec<_> = c.errors_for_key("range-global").collect();
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert_eq!(errs[0].entry, "10.0.0.9-10.0.0.1");
    assert!(errs[0].reason.starts_with("reversed range"));
    assert_eq!(errs[1].entry, "10.0.0.1-fd00::1");
    assert!(errs[1].reason.starts_with("mixed families"));
    assert_eq!(errs[2].entry, "10.0.0.1-10.0.0.999");
    assert_eq!(errs[2].reason, "end of range: invalid IPv4 address");
    let p = c.pool_for("x").unwrap();
    assert_eq!(
        set(p, Family::V4),
        &ranges(Family::V4, &[("10.0.1.1", "10.0.1.2")])
    );
    assert_eq!(
        set(p, Family::V6),
        &ranges(Family::V6, &[("fd00::5", "fd00::6")])
    );
}

#[test]
fn allow_share_booleans_and_precedence() {
    for (v, want) in [
        ("true", true),
        ("TRUE", true),
        ("t", true),
        (" 1 ", true),
        ("F", false),
        ("0", false),
    ] {
        let c = cfg(&[("allow-share-web", v)]);
        assert_eq!(c.allow_share("web"), want, "{v:?}");
        assert!(c.errors().is_empty());
    }
    let c = cfg(&[("allow-share-global", "true")]);
    assert!(c.allow_share("web"));
    // A namespace `false` overrides a global `true`.
    let c = cfg(&[("allow-share-global", "true"), ("allow-share-web", "false")]);
    assert!(!c.allow_share("web"));
    assert!(c.allow_share("db"));
    // A bad value is reported, counts as false and still hides the global key.
    let c = cfg(&[("allow-share-global", "true"), ("allow-share-web", "yes")]);
    assert!(!c.allow_share("web"));
    assert!(c.allow_share("db"));
    let e: Vec<_> = c.errors_for_key("allow-share-web").collect();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].entry, "yes");
    assert!(e[0].reason.starts_with("not a boolean"));
    assert!(!cfg(&[]).allow_share("web"));
}

#[test]
fn search_order_values() {
    assert_eq!(cfg(&[]).search_order(), SearchOrder::Ascending);
    for (v, want) in [
        ("desc", SearchOrder::Descending),
        (" DESC ", SearchOrder::Descending),
        ("asc", SearchOrder::Ascending),
        ("", SearchOrder::Ascending),
    ] {
        let c = cfg(&[("search-order", v)]);
        assert_eq!(c.search_order(), want, "{v:?}");
        assert!(c.errors().is_empty());
    }
    let c = cfg(&[("search-order", "descending")]);
    assert_eq!(c.search_order(), SearchOrder::Ascending);
    assert_eq!(c.errors().len(), 1);
    assert_eq!(c.errors()[0].key, "search-order");
    assert_eq!(c.errors()[0].entry, "descending");
}

#[test]
fn skip_end_trims_every_ipv4_cidr_pool() {
    let pools = [
        ("cidr-global", "10.0.0.4/30,fd00::/126"),
        ("cidr-web", "10.0.0.8/31,10.0.0.20/32"),
        ("range-db", "10.0.0.4-10.0.0.7"),
        ("range-global", "10.0.1.4/30"),
    ];
    let plain = cfg(&pools);
    let mut with = pools.to_vec();
    with.push(("skip-end-ips-in-cidr", "True"));
    let skip = cfg(&with);
    assert!(!plain.skip_end());
    assert!(skip.skip_end());
    assert!(skip.errors().is_empty(), "{:?}", skip.errors());
    let cap = |c: &Config, key: &str, f| set(c.pool_by_key(key).unwrap(), f).capacity();
    // First and last address of each IPv4 prefix dropped: 4 -> 2.
    assert_eq!(
        cap(&plain, "cidr-global", Family::V4) - 2,
        cap(&skip, "cidr-global", Family::V4)
    );
    assert!(!set(skip.pool_by_key("cidr-global").unwrap(), Family::V4).contains(ip("10.0.0.4")));
    assert!(set(skip.pool_by_key("cidr-global").unwrap(), Family::V4).contains(ip("10.0.0.5")));
    // Whatever the key prefix, a CIDR value is a CIDR pool.
    assert_eq!(
        cap(&plain, "range-global", Family::V4) - 2,
        cap(&skip, "range-global", Family::V4)
    );
    // Not IPv6, not /31 or /32, not ranges.
    for (key, f) in [
        ("cidr-global", Family::V6),
        ("cidr-web", Family::V4),
        ("range-db", Family::V4),
    ] {
        assert_eq!(cap(&plain, key, f), cap(&skip, key, f), "{key}");
    }
}

#[test]
fn skip_end_bad_value_is_reported_and_false() {
    let c = cfg(&[
        ("skip-end-ips-in-cidr", "yes"),
        ("cidr-global", "10.0.0.4/30"),
    ]);
    assert!(!c.skip_end());
    assert_eq!(c.errors().len(), 1);
    assert_eq!(c.errors()[0].key, "skip-end-ips-in-cidr");
    assert_eq!(
        set(c.pool_for("x").unwrap(), Family::V4),
        &cidrs(Family::V4, &["10.0.0.4/30"], false)
    );
}

#[test]
fn unknown_and_malformed_keys_are_reported_and_the_rest_works() {
    let c = cfg(&[
        ("cdir-global", "10.0.0.0/24"),
        ("search-order-web", "desc"),
        ("cidr-", "10.0.1.0/24"),
        ("cidr-Web", "10.0.2.0/24"),
        ("range-global", "10.0.3.1-10.0.3.5"),
    ]);
    assert_eq!(
        c.errors_for_key("cdir-global").next(),
        Some(&err("cdir-global", "", "unknown key"))
    );
    assert_eq!(c.errors()[0].to_string(), "cdir-global: unknown key");
    assert_eq!(
        c.errors_for_key("search-order-web").next().unwrap().reason,
        "unknown key"
    );
    assert!(
        c.errors_for_key("cidr-")
            .next()
            .unwrap()
            .reason
            .starts_with("missing namespace")
    );
    assert!(
        c.errors_for_key("cidr-Web")
            .next()
            .unwrap()
            .reason
            .contains("not a valid namespace")
    );
    assert_eq!(c.errors().len(), 4);
    // Errors are sorted by key.
    let keys: Vec<_> = c.errors().iter().map(|e| e.key.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(c.search_order(), SearchOrder::Ascending);
    assert_eq!(key_for(&c, "web"), Some("range-global"));
    assert!(c.pool_by_key("cidr-Web").is_some());
    assert!(c.pool_by_key("cidr-").is_none());
}

#[test]
fn interfaces() {
    let c = cfg(&[
        ("interface-global", " eth0 "),
        ("interface-web", "bond0"),
        ("interface-db", ""),
        ("interface-bad", "eth 0"),
    ]);
    assert_eq!(c.interface("web"), Some("bond0"));
    assert_eq!(c.interface("other"), Some("eth0"));
    // Present but empty or invalid: no interface, and no fallback.
    assert_eq!(c.interface("db"), None);
    assert_eq!(c.interface("bad"), None);
    assert_eq!(c.errors().len(), 1);
    assert_eq!(c.errors()[0].key, "interface-bad");
    assert_eq!(cfg(&[]).interface("web"), None);
}

#[test]
fn namespace_named_global_uses_the_global_keys() {
    let c = cfg(&[("cidr-global", "10.0.0.0/24"), ("allow-share-global", "1")]);
    let p = c.pool_for("global").unwrap();
    assert_eq!(p.key, "cidr-global");
    assert!(p.global);
    assert!(c.allow_share("global"));
}

#[test]
fn pools_are_listed_sorted_by_key() {
    let c = cfg(&[
        ("range-a", "10.0.0.1-10.0.0.2"),
        ("cidr-z", "10.0.1.0/30"),
        ("cidr-global", ""),
        ("range-global", "10.0.2.0/30"),
        ("allow-share-a", "true"),
    ]);
    let keys: Vec<_> = c.pools().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["cidr-global", "cidr-z", "range-a", "range-global"]);
    let globals: Vec<_> = c.pools().map(|p| p.global).collect();
    assert_eq!(globals, [true, false, false, true]);
}

#[test]
fn pool_contains_checks_the_right_family() {
    let c = cfg(&[("cidr-global", "10.0.0.0/30,fd00::/126")]);
    let p = c.pool_for("x").unwrap();
    assert!(p.contains(ip("10.0.0.2")));
    assert!(p.contains(ip("fd00::3")));
    assert!(!p.contains(ip("10.0.0.9")));
    assert!(!p.contains(ip("fd00::9")));
}

#[test]
fn config_error_display_without_entry_and_with_empty_value() {
    let c = cfg(&[("skip-end-ips-in-cidr", "")]);
    assert_eq!(c.errors().len(), 1);
    let text = c.errors()[0].to_string();
    assert!(
        text.starts_with("skip-end-ips-in-cidr: empty value"),
        "{text}"
    );
}

fn config_key() -> impl Strategy<Value = String> {
    let prefix = prop_oneof![
        Just("cidr-"),
        Just("range-"),
        Just("allow-share-"),
        Just("interface-"),
        Just(""),
    ];
    (
        prefix,
        prop_oneof![Just("global".to_string()), "[a-z0-9-]{0,6}", ".{0,8}"],
    )
        .prop_map(|(p, s)| format!("{p}{s}"))
}

fn config_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-fA-F.:/, -]{0,40}",
        r"((25[0-5]|1?[0-9]{1,2})\.){3}[0-9]{1,3}/[0-9]{1,3}",
        "(::|fd00::[0-9a-f]{0,4})/[0-9]{1,3}",
        ".{0,30}",
        Just("::/0".to_string()),
        Just("0.0.0.0/0,::/0".to_string()),
        Just("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".to_string()),
        Just("0.0.0.0/32".to_string()),
    ]
}

proptest! {
    #[test]
    fn from_data_never_panics(
        data in prop::collection::btree_map(
            prop_oneof![config_key(), Just("search-order".to_string()), Just("skip-end-ips-in-cidr".to_string()), ".*"],
            config_value(),
            0..8,
        )
    ) {
        let c = Config::from_data(&data);
        for p in c.pools() {
            let _ = p.is_empty();
            for f in [Family::V4, Family::V6] {
                if let Some(FamilyPool::Set(s)) = p.family(f) {
                    prop_assert_eq!(s.family(), f);
                    let _ = s.capacity();
                }
            }
            prop_assert!(data.contains_key(&p.key));
        }
        for e in c.errors() {
            prop_assert!(data.contains_key(&e.key));
            let _ = e.to_string();
        }
        for ns in ["global", "web", ""] {
            let _ = (c.pool_for(ns), c.allow_share(ns), c.interface(ns));
        }
    }
}
