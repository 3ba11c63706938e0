use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::status::{CONFLICT, Counts, INVALID, READY, desired};
use super::*;
use crate::config::Config;

fn pool(name: &str, priority: i32, addresses: &[&str]) -> Arc<ObjectPool> {
    let spec = VIPPoolSpec {
        addresses: addresses.iter().map(|s| s.to_string()).collect(),
        priority,
        ..VIPPoolSpec::default()
    };
    Arc::new(ObjectPool::parse(name, Some(2), None, &spec))
}

fn names(set: &PoolSet) -> Vec<&str> {
    set.iter().map(|p| p.name.as_str()).collect()
}

#[test]
fn pools_are_tried_by_priority_then_name_and_a_name_is_kept_once() {
    let set = PoolSet::new([
        pool("b", 0, &["10.0.0.1"]),
        pool("z", 5, &["10.0.0.2"]),
        pool("a", 0, &["10.0.0.3"]),
        pool("m", -1, &["10.0.0.4"]),
        pool("b", 0, &["10.0.0.9"]),
    ]);
    assert_eq!(names(&set), ["z", "a", "b", "m"]);
    assert!(
        set.get("b")
            .unwrap()
            .pool
            .contains("10.0.0.9".parse().unwrap())
    );
    assert_eq!(set.len(), 4);
}

#[test]
fn overlaps_name_the_other_pools_both_kinds() {
    let set = PoolSet::new([
        pool("a", 0, &["10.0.0.0/29"]),
        pool("b", 0, &["10.0.0.6-10.0.0.9"]),
        pool("c", 0, &["10.0.1.0/30", "fd00::/126"]),
        pool("d", 0, &["fd00::3"]),
    ]);
    let config = Config::from_data(&BTreeMap::from([(
        "range-global".to_string(),
        "10.0.0.9-10.0.0.20".to_string(),
    )]));
    let o = set.overlaps(Some(&config));
    assert_eq!(o["vippool/a"], ["vippool/b"]);
    assert_eq!(o["vippool/b"], ["range-global", "vippool/a"]);
    assert_eq!(o["vippool/c"], ["vippool/d"]);
    assert_eq!(o["vippool/d"], ["vippool/c"]);
    // ConfigMap keys are not pool objects: they get no status, so no entry.
    assert!(!o.contains_key("range-global"));
    assert!(set.overlaps(None).get("vippool/b").unwrap() == &["vippool/a".to_string()]);
}

fn now(s: i64) -> Time {
    Time(Timestamp::from_second(s).unwrap())
}

fn condition<'a>(s: &'a VIPPoolStatus, t: &str) -> (&'a str, &'a str) {
    let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

#[test]
fn status_says_ready_conflict_invalid_and_counts() {
    let p = pool("a", 0, &["10.0.0.0/29", "10.0.0.9-10.0.0.1"]);
    let counts = Counts {
        v4: Some((7, 2)),
        v6: None,
    };
    let s = desired(&p, &counts, &["vippool/b".into()], None, &now(100));
    assert_eq!(s.observed_generation, Some(2));
    assert_eq!(s.ipv4.map(|u| (u.size, u.used, u.free)), Some((7, 2, 5)));
    assert_eq!(s.ipv6, None);
    assert_eq!(condition(&s, READY), ("True", "Available"));
    assert_eq!(condition(&s, CONFLICT), ("True", "Overlap"));
    assert_eq!(condition(&s, INVALID), ("True", "InvalidEntries"));
    assert!(
        s.conditions
            .iter()
            .all(|c| c.observed_generation == Some(2))
    );

    // Later, same conditions: the transition times are kept; Conflict gone: its time moves.
    let later = desired(&p, &counts, &[], Some(&s), &now(200));
    let time = |s: &VIPPoolStatus, t: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
            .last_transition_time
            .clone()
    };
    assert_eq!(time(&later, READY), now(100));
    assert_eq!(time(&later, CONFLICT), now(200));
    assert_eq!(condition(&later, CONFLICT), ("False", "NoOverlap"));
}

#[test]
fn a_disabled_or_empty_pool_is_not_ready() {
    let mut spec = VIPPoolSpec {
        addresses: vec!["10.0.0.0/30".into()],
        disabled: true,
        ..VIPPoolSpec::default()
    };
    let p = ObjectPool::parse("d", Some(1), None, &spec);
    let s = desired(&p, &Counts::default(), &[], None, &now(1));
    assert_eq!(condition(&s, READY), ("False", "Disabled"));
    spec.disabled = false;
    spec.exclude = vec!["10.0.0.0/24".into()];
    let p = ObjectPool::parse("e", Some(1), None, &spec);
    let s = desired(&p, &Counts::default(), &[], None, &now(1));
    assert_eq!(condition(&s, READY), ("False", "NoAddresses"));
}

#[test]
fn huge_counts_saturate() {
    let u = crd::FamilyUsage::new(1 << 100, 3);
    assert_eq!((u.size, u.used, u.free), (i64::MAX, 3, i64::MAX));
}
