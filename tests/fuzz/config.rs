//! (c) ConfigMap parsing: `data` maps built from real ConfigMaps by adding, removing and changing
//! keys and values, and whole ConfigMap files (YAML/JSON text) mutated as text. Parsing never
//! panics, every reported error names a key of the ConfigMap (and an entry of its value), every
//! unknown key is reported, pool precedence holds, and every address a pool hands out lies
//! inside an entry the operator wrote.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube_vip_webhook::config::{Config, FamilyPool};
use kube_vip_webhook::files::parse_objects;
use kube_vip_webhook::ipam::{Family, SearchOrder, UsedAddrs, is_filtered, next_free};
use proptest::prelude::*;
use serde_json::Value;

use crate::harness::json::pick;
use crate::harness::{TextMutation, fuzz, mutate_text, seeds_dir, text_mutation};

const CASES: u32 = 2500;

const PREFIXES: &[&str] = &[
    "cidr-",
    "range-",
    "allow-share-",
    "interface-",
    "exclude-",
    "",
    "CIDR-",
    "cidr",
    "range--",
];
const SUFFIXES: &[&str] = &[
    "global",
    "default",
    "web",
    "team-a",
    "dns",
    "Web",
    "",
    "a-",
    "-a",
    "kube-system",
    "global ",
    "é",
    "a.b",
    "0",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
];
const SPECIAL_KEYS: &[&str] = &["search-order", "skip-end-ips-in-cidr"];
/// List entries: prefixes, ranges, DHCP, edges of both families, and near-misses.
const ENTRIES: &[&str] = &[
    "10.0.0.0/29",
    "10.0.0.210/29",
    "192.168.0.0/16",
    "10.0.0.255/32",
    "10.0.0.0/31",
    "10.0.0.4/30",
    "0.0.0.0/32",
    "0.0.0.0/0",
    "255.255.255.255/32",
    "fd00::/125",
    "fd00::17/126",
    "::/0",
    "::/128",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
    "10.0.0.1-10.0.0.9",
    "10.0.0.250-10.0.1.5",
    "10.0.0.9-10.0.0.1",
    "0.0.0.0-255.255.255.255",
    "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fd00::10-fd00::20",
    "10.0.0.1-fd00::1",
    "10.0.0.1 - 10.0.0.1",
    "10.0.0.0/33",
    "10.0.0.0/+8",
    "10.0.0.0/0256",
    "10.0.0.1",
    "10.0.0.300/24",
    "web/24",
    "/24",
    "-",
    "10.0.0.1-10.0.0.2-10.0.0.3",
    "1.2.3.4/32/5",
    "",
];
const SEPARATORS: &[&str] = &[",", ", ", ",,", " ,\t", ",\n", "\u{a0},"];
const WORDS: &[&str] = &[
    "true",
    "TRUE",
    "t",
    "1",
    "false",
    "f",
    "0",
    "yes",
    "",
    " ",
    "desc",
    "DESC",
    "asc",
    "random",
    "eth0",
    "bond0.100",
    "eth0:1",
    "a-name-too-long-x",
    "..",
    "é",
    "lo",
];

#[derive(Clone, Debug)]
enum ValuePlan {
    Entries(Vec<(u8, u8)>),
    Word(u8),
}

#[derive(Clone, Debug)]
enum Edit {
    Add {
        prefix: u8,
        suffix: u8,
        special: Option<u8>,
        value: ValuePlan,
    },
    Remove {
        which: u32,
    },
    Set {
        which: u32,
        value: ValuePlan,
    },
    MutateValue {
        which: u32,
        m: TextMutation,
    },
    MutateKey {
        which: u32,
        m: TextMutation,
    },
}

fn value_plan() -> impl Strategy<Value = ValuePlan> {
    prop_oneof![
        3 => prop::collection::vec((any::<u8>(), any::<u8>()), 0..5).prop_map(ValuePlan::Entries),
        1 => any::<u8>().prop_map(ValuePlan::Word),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    let n = any::<u32>;
    prop_oneof![
        4 => (any::<u8>(), any::<u8>(), prop::option::weighted(0.15, any::<u8>()), value_plan())
            .prop_map(|(prefix, suffix, special, value)| Edit::Add { prefix, suffix, special, value }),
        1 => n().prop_map(|which| Edit::Remove { which }),
        2 => (n(), value_plan()).prop_map(|(which, value)| Edit::Set { which, value }),
        3 => (n(), text_mutation()).prop_map(|(which, m)| Edit::MutateValue { which, m }),
        1 => (n(), text_mutation()).prop_map(|(which, m)| Edit::MutateKey { which, m }),
    ]
}

fn render(plan: &ValuePlan) -> String {
    match plan {
        ValuePlan::Word(w) => pick(WORDS, *w).to_string(),
        ValuePlan::Entries(list) => {
            let mut out = String::new();
            for (i, (e, sep)) in list.iter().enumerate() {
                if i > 0 {
                    out.push_str(pick(SEPARATORS, *sep));
                }
                out.push_str(pick(ENTRIES, *e));
            }
            out
        }
    }
}

fn data_seeds() -> Vec<BTreeMap<String, String>> {
    let dir = seeds_dir().join("configmaps");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("configmap seeds")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).expect("seed")).expect("a data map"))
        .collect()
}

fn build(
    seeds: &[BTreeMap<String, String>],
    seed: u32,
    edits: &[Edit],
) -> BTreeMap<String, String> {
    let mut data = seeds[seed as usize % seeds.len()].clone();
    let nth = |data: &BTreeMap<String, String>, i: u32| {
        (!data.is_empty())
            .then(|| data.keys().nth(i as usize % data.len()).cloned())
            .flatten()
    };
    for e in edits {
        match e {
            Edit::Add {
                prefix,
                suffix,
                special,
                value,
            } => {
                let key = match special {
                    Some(s) => pick(SPECIAL_KEYS, *s).to_string(),
                    None => format!("{}{}", pick(PREFIXES, *prefix), pick(SUFFIXES, *suffix)),
                };
                data.insert(key, render(value));
            }
            Edit::Remove { which } => {
                if let Some(k) = nth(&data, *which) {
                    data.remove(&k);
                }
            }
            Edit::Set { which, value } => {
                if let Some(k) = nth(&data, *which) {
                    data.insert(k, render(value));
                }
            }
            Edit::MutateValue { which, m } => {
                if let Some(k) = nth(&data, *which)
                    && let Some(v) = data.get_mut(&k)
                {
                    mutate_text(v, m);
                }
            }
            Edit::MutateKey { which, m } => {
                if let Some(k) = nth(&data, *which)
                    && let Some(v) = data.remove(&k)
                {
                    let mut k = k;
                    mutate_text(&mut k, m);
                    data.insert(k, v);
                }
            }
        }
    }
    data
}

/// RFC 1123 label, written independently of the parser's own check.
fn namespace_name(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&s.len())
        && s.starts_with(ok)
        && s.ends_with(ok)
        && s.chars().all(|c| ok(c) || c == '-')
}

fn boolean(s: &str) -> bool {
    ["true", "t", "1"]
        .iter()
        .any(|t| s.trim().eq_ignore_ascii_case(t))
}

/// Whether `ip` lies in one of the entries of a pool value, read independently of the parser.
fn in_some_entry(value: &str, ip: IpAddr) -> bool {
    value.split(',').map(str::trim).any(|entry| {
        if let Some((a, len)) = entry.split_once('/') {
            let net = a
                .trim()
                .parse::<IpAddr>()
                .ok()
                .zip(len.trim().parse::<u8>().ok());
            net.and_then(|(a, l)| IpNet::new(a, l).ok())
                .is_some_and(|n| n.trunc().contains(&ip))
        } else if let Some((s, e)) = entry.split_once('-') {
            match (s.trim().parse::<IpAddr>(), e.trim().parse::<IpAddr>()) {
                (Ok(s), Ok(e)) => s <= ip && ip <= e && s.is_ipv4() == ip.is_ipv4(),
                _ => false,
            }
        } else {
            false
        }
    })
}

/// The properties of a parsed ConfigMap against its data.
pub fn check(data: &BTreeMap<String, String>, cfg: &Config) -> Result<(), TestCaseError> {
    let errors = cfg.errors();
    for e in errors {
        let value = data.get(&e.key);
        prop_assert!(
            value.is_some(),
            "error names no key of the ConfigMap: {:?}",
            e
        );
        prop_assert!(
            e.to_string().starts_with(&e.key),
            "error text does not start with its key: {}",
            e
        );
        prop_assert!(
            value.is_some_and(|v| v.contains(&e.entry)),
            "error entry is not part of the value: {:?}",
            e
        );
    }
    prop_assert!(
        errors.windows(2).all(|w| w[0].key <= w[1].key),
        "errors not sorted by key"
    );
    let prefixes = ["cidr-", "range-", "allow-share-", "interface-", "exclude-"];
    for key in data.keys() {
        let known = SPECIAL_KEYS.contains(&key.as_str())
            || prefixes
                .iter()
                .any(|p| key.strip_prefix(p).is_some_and(namespace_name));
        if !known {
            prop_assert!(
                errors.iter().any(|e| &e.key == key),
                "key {:?} not reported",
                key
            );
        }
    }
    // Precedence: the first present key wins.
    let mut namespaces: Vec<&str> = vec!["default", "global", "zzz"];
    namespaces.extend(
        data.keys()
            .filter_map(|k| prefixes.iter().find_map(|p| k.strip_prefix(p)))
            .filter(|s| namespace_name(s)),
    );
    for ns in namespaces {
        let want = [
            format!("cidr-{ns}"),
            "cidr-global".into(),
            format!("range-{ns}"),
            "range-global".into(),
        ]
        .into_iter()
        .find(|k| data.contains_key(k));
        prop_assert_eq!(
            cfg.pool_for(ns).map(|p| p.key.clone()),
            want,
            "pool for {}",
            ns
        );
        let share_key = [format!("allow-share-{ns}"), "allow-share-global".into()]
            .into_iter()
            .find(|k| data.contains_key(k));
        prop_assert_eq!(
            cfg.allow_share(ns),
            share_key.is_some_and(|k| boolean(&data[&k]))
        );
    }
    let desc = data
        .get("search-order")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("desc"));
    prop_assert_eq!(cfg.search_order() == SearchOrder::Descending, desc);
    // Addresses handed out from each pool.
    let used = UsedAddrs::new();
    for pool in cfg.pools() {
        for family in [Family::V4, Family::V6] {
            let Some(FamilyPool::Set(set)) = pool.family(family) else {
                continue;
            };
            for order in [SearchOrder::Ascending, SearchOrder::Descending] {
                let got = next_free(set, &used, order);
                prop_assert_eq!(
                    got.is_some(),
                    set.capacity() > 0,
                    "{} {:?}",
                    pool.key,
                    order
                );
                // Exclusions: what the pool's own Services may get is never excluded for them.
                let ns = pool.key.split_once('-').map_or("global", |(_, ns)| ns);
                if let Some(ip) = next_free(&cfg.without_excluded(ns, set), &used, order) {
                    prop_assert!(set.is_allocatable(ip), "{} hands out {}", pool.key, ip);
                    prop_assert!(
                        cfg.excluded(ns, ip).is_none(),
                        "{} hands out {}, excluded for {}",
                        pool.key,
                        ip,
                        ns
                    );
                }
                if let Some(ip) = got {
                    prop_assert_eq!(Family::of(ip), family);
                    prop_assert!(!is_filtered(ip), "{} hands out {}", pool.key, ip);
                    prop_assert!(set.is_allocatable(ip));
                    prop_assert!(
                        in_some_entry(&data[&pool.key], ip),
                        "{} hands out {} which no entry of {:?} holds",
                        pool.key,
                        ip,
                        data[&pool.key]
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn configmap_data() {
    let seeds = data_seeds();
    fuzz(
        "configmap_data",
        CASES,
        (any::<u32>(), prop::collection::vec(edit(), 0..8)),
        |(seed, edits)| format!("{:#?}", build(&seeds, *seed, edits)),
        |(seed, edits), tally| {
            let data = build(&seeds, seed, &edits);
            let cfg = Config::from_data(&data);
            check(&data, &cfg)?;
            tally.exec(if cfg.errors().is_empty() {
                "no errors"
            } else {
                "errors reported"
            });
            Ok(())
        },
    );
}

/// ConfigMap files as `plan` and `--standalone` read them: YAML or JSON text, mutated as text.
#[test]
fn configmap_file() {
    let mut seeds = vec![
        std::fs::read_to_string(seeds_dir().join("configmaps/01-example.yaml")).expect("yaml seed"),
    ];
    for data in data_seeds() {
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kubevip", "namespace": "kube-system"}, "data": data});
        seeds.push(serde_yaml_ng::to_string(&cm).expect("yaml"));
        seeds.push(serde_json::to_string_pretty(&cm).expect("json"));
    }
    let build = |seed: u32, muts: &[TextMutation]| {
        let mut text = seeds[seed as usize % seeds.len()].clone();
        muts.iter().for_each(|m| mutate_text(&mut text, m));
        text
    };
    fuzz(
        "configmap_file",
        // YAML parsing of long texts is slow in a debug build.
        CASES / 8,
        (any::<u32>(), prop::collection::vec(text_mutation(), 1..6)),
        |(seed, muts)| build(*seed, muts),
        |(seed, muts), tally| {
            let text = build(seed, &muts);
            let Ok(objects) = parse_objects(&text) else {
                tally.exec("not YAML");
                return Ok(());
            };
            let Some(cm) = objects
                .into_iter()
                .find(|o| o.get("kind") == Some(&Value::from("ConfigMap")))
            else {
                tally.exec("no ConfigMap");
                return Ok(());
            };
            let Ok(cm) = serde_json::from_value::<ConfigMap>(cm) else {
                tally.exec("not a ConfigMap");
                return Ok(());
            };
            let data = cm.data.unwrap_or_default();
            check(&data, &Config::from_data(&data))?;
            tally.exec("parsed");
            Ok(())
        },
    );
}
