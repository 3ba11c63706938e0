//! A `VIPPool` spec -> [`ObjectPool`]: the same address sets the ConfigMap pools use, the
//! exclusions carved out, the selectors compiled. Never fails: every problem is reported and
//! disables only itself (an entry is left out, a selector that cannot be read selects nothing).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

use super::crd::{KEY_PREFIX, VIPPoolSpec};
use crate::config::{ConfigError, FamilyPool, Pool, PoolKind, parse};
use crate::ipam::{AddressSet, Family, from_u128, to_u128};

/// Label every namespace carries (set by the apiserver since Kubernetes 1.21): a namespace whose
/// labels are not known yet still matches a selector on its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// One pool object, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectPool {
    pub name: String,
    /// `metadata.generation` of the object parsed (status reports it as `observedGeneration`).
    pub generation: Option<i64>,
    pub uid: Option<String>,
    /// The spec as read, to tell a change of spec from a status write.
    pub spec: VIPPoolSpec,
    /// The addresses handed out (exclusions removed), keyed `vippool/<name>`.
    pub pool: Pool,
    /// `spec.exclude`, per family (pinned addresses in it are refused).
    pub exclude_v4: AddressSet,
    pub exclude_v6: AddressSet,
    pub service_selector: Match,
    pub namespace_selector: Match,
    /// Entries and selectors left out, with why (key: the field, e.g. `spec.addresses`).
    pub errors: Vec<ConfigError>,
}

/// A compiled label selector.
#[derive(Clone, Debug, PartialEq)]
pub enum Match {
    /// Absent: every object.
    All,
    Selector(Selector),
    /// Could not be read (reported): nothing, so a typo never widens a pool.
    Nothing,
}

impl Match {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Match::All => true,
            Match::Selector(s) => s.matches(labels),
            Match::Nothing => false,
        }
    }

    /// Matches something other than every object (or nothing).
    pub fn is_restrictive(&self) -> bool {
        !matches!(self, Match::All)
    }
}

impl ObjectPool {
    /// Parse one pool object's spec.
    pub fn parse(
        name: &str,
        generation: Option<i64>,
        uid: Option<String>,
        spec: &VIPPoolSpec,
    ) -> ObjectPool {
        let key = format!("{KEY_PREFIX}{name}");
        let mut errors = Vec::new();
        let mut bad = |field: &str, entry: &str, reason: String| {
            errors.push(ConfigError {
                key: field.to_string(),
                entry: entry.to_string(),
                reason,
            });
        };
        let (addresses, all_cidrs) = ranges("spec.addresses", &spec.addresses, &mut bad);
        let (excluded, _) = ranges("spec.exclude", &spec.exclude, &mut bad);
        let exclude_v4 = AddressSet::from_ranges(Family::V4, &excluded);
        let exclude_v6 = AddressSet::from_ranges(Family::V6, &excluded);
        let family = |f: Family, minus: &AddressSet| {
            let set = AddressSet::from_ranges(f, &addresses);
            // The unspecified address means DHCP to kube-vip and is never held: never handed out.
            let unspecified = from_u128(f, 0);
            let set = without(
                &set,
                &AddressSet::from_ranges(f, &[(unspecified, unspecified)]),
            );
            let set = without(&set, minus);
            (!set.is_empty()).then_some(FamilyPool::Set(set))
        };
        let pool = Pool {
            key,
            kind: if all_cidrs {
                PoolKind::Cidr
            } else {
                PoolKind::Range
            },
            global: false,
            v4: family(Family::V4, &exclude_v4),
            v6: family(Family::V6, &exclude_v6),
        };
        let service_selector = selector(
            "spec.serviceSelector",
            spec.service_selector.as_ref(),
            &mut bad,
        );
        let namespace_selector = selector(
            "spec.namespaceSelector",
            spec.namespace_selector.as_ref(),
            &mut bad,
        );
        if let Some(iface) = &spec.interface
            && let Err(reason) = parse::interface(iface)
        {
            bad("spec.interface", iface, reason);
        }
        ObjectPool {
            name: name.to_string(),
            generation,
            uid,
            spec: spec.clone(),
            pool,
            exclude_v4,
            exclude_v6,
            service_selector,
            namespace_selector,
            errors,
        }
    }

    /// `vippool/<name>`.
    pub fn key(&self) -> &str {
        &self.pool.key
    }

    /// The interface to annotate, when valid.
    pub fn interface(&self) -> Option<&str> {
        self.spec
            .interface
            .as_deref()
            .and_then(|i| parse::interface(i).ok().flatten())
    }

    /// Whether `ip` is in `spec.exclude`.
    pub fn excludes(&self, ip: IpAddr) -> bool {
        self.exclude_v4.contains(ip) || self.exclude_v6.contains(ip)
    }

    /// Whether the namespace's labels (or, unknown yet, its name) match the namespace selector.
    pub fn selects_namespace(
        &self,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        match (&self.namespace_selector, labels) {
            (Match::All, _) => true,
            (Match::Nothing, _) => false,
            (selector, Some(l)) => selector.matches(l),
            (selector, None) => selector.matches(&BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                namespace.to_string(),
            )])),
        }
    }
}

/// Every entry as an inclusive range; `true` when all were CIDRs.
fn ranges(
    field: &str,
    entries: &[String],
    bad: &mut impl FnMut(&str, &str, String),
) -> (Vec<(IpAddr, IpAddr)>, bool) {
    let mut out = Vec::with_capacity(entries.len());
    let mut all_cidrs = true;
    for raw in entries {
        let entry = raw.trim();
        let parsed = if entry.contains('/') {
            parse::cidr(entry).map(|net| (net.network(), net.broadcast()))
        } else if entry.contains('-') {
            all_cidrs = false;
            parse::range(entry)
        } else {
            all_cidrs = false;
            parse::ip(entry).map(|ip| (ip, ip))
        };
        match parsed {
            Ok(r) => out.push(r),
            Err(reason) => bad(field, entry, reason),
        }
    }
    (out, all_cidrs)
}

fn selector(
    field: &str,
    selector: Option<&LabelSelector>,
    bad: &mut impl FnMut(&str, &str, String),
) -> Match {
    let Some(selector) = selector else {
        return Match::All;
    };
    // Kubernetes' own rules, which kube's conversion does not check: In/NotIn need values,
    // Exists/DoesNotExist take none. Broken either way, the selector would select the wrong set.
    for req in selector.match_expressions.iter().flatten() {
        let values = req.values.as_ref().map_or(0, Vec::len);
        let problem = match req.operator.as_str() {
            "In" | "NotIn" if values == 0 => Some("needs at least one value"),
            "Exists" | "DoesNotExist" if values > 0 => Some("takes no values"),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => None,
            _ => Some("is not an operator (In, NotIn, Exists, DoesNotExist)"),
        };
        if let Some(why) = problem {
            bad(
                field,
                &req.key,
                format!(
                    "operator {:?} {why}; the selector selects nothing",
                    req.operator
                ),
            );
            return Match::Nothing;
        }
    }
    match Selector::try_from(selector.clone()) {
        Ok(s) if s.selects_all() => Match::All,
        Ok(s) => Match::Selector(s),
        Err(e) => {
            bad(field, "", format!("{}; the selector selects nothing", e.0));
            Match::Nothing
        }
    }
}

/// `set` without the addresses of `minus` (same family).
pub(crate) fn without(set: &AddressSet, minus: &AddressSet) -> AddressSet {
    let family = set.family();
    let cut: Vec<(u128, u128)> = minus
        .intervals()
        .map(|(a, b)| (to_u128(a), to_u128(b)))
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    for (a, b) in set.intervals() {
        let (mut s, e) = (to_u128(a), to_u128(b));
        // `cut` is sorted and disjoint: skip what ends before this interval, cut through the rest.
        while i < cut.len() && cut[i].1 < s {
            i += 1;
        }
        let mut j = i;
        let mut open = true;
        while j < cut.len() && cut[j].0 <= e {
            let (cs, ce) = cut[j];
            if cs > s {
                out.push((from_u128(family, s), from_u128(family, cs - 1)));
            }
            if ce >= e {
                open = false;
                break;
            }
            s = s.max(ce + 1);
            j += 1;
        }
        if open {
            out.push((from_u128(family, s), from_u128(family, e)));
        }
    }
    AddressSet::from_ranges(family, &out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn spec(addresses: &[&str], exclude: &[&str]) -> VIPPoolSpec {
        VIPPoolSpec {
            addresses: addresses.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            ..VIPPoolSpec::default()
        }
    }

    fn set(p: &ObjectPool, f: Family) -> String {
        match p.pool.family(f) {
            Some(FamilyPool::Set(s)) => s.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn mixed_entries_and_exclusions() {
        let p = ObjectPool::parse(
            "a",
            Some(3),
            None,
            &spec(
                &["10.0.0.0/29", "10.0.1.5-10.0.1.9", "10.0.2.7", "fd00::/126"],
                &["10.0.0.1", "10.0.1.6-10.0.1.7", "fd00::3"],
            ),
        );
        assert_eq!(p.key(), "vippool/a");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        // 10.0.0.0 is kept in the set: the .0 rule is applied when handing out.
        assert_eq!(
            set(&p, Family::V4),
            "10.0.0.0, 10.0.0.2-10.0.0.7, 10.0.1.5, 10.0.1.8-10.0.1.9, 10.0.2.7"
        );
        assert_eq!(set(&p, Family::V6), "fd00::-fd00::2");
        assert!(p.excludes("10.0.1.7".parse().unwrap()));
        assert!(!p.excludes("10.0.1.8".parse().unwrap()));
        assert_eq!(p.pool.kind, PoolKind::Range);
    }

    #[test]
    fn bad_entries_are_reported_and_left_out() {
        let p = ObjectPool::parse(
            "a",
            None,
            None,
            &spec(
                &[
                    "10.0.0.0/33",
                    "10.0.0.9-10.0.0.1",
                    "10.0.0.1-fd00::1",
                    "10.0.5.0/30",
                ],
                &["nonsense"],
            ),
        );
        let fields: Vec<(&str, &str)> = p
            .errors
            .iter()
            .map(|e| (e.key.as_str(), e.entry.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                ("spec.addresses", "10.0.0.0/33"),
                ("spec.addresses", "10.0.0.9-10.0.0.1"),
                ("spec.addresses", "10.0.0.1-fd00::1"),
                ("spec.exclude", "nonsense"),
            ]
        );
        assert_eq!(set(&p, Family::V4), "10.0.5.0-10.0.5.3");
        assert_eq!(p.pool.family(Family::V6), None);
    }

    #[test]
    fn the_unspecified_address_is_never_in_a_pool() {
        let p = ObjectPool::parse("a", None, None, &spec(&["0.0.0.0/30", "::/127"], &[]));
        assert_eq!(set(&p, Family::V4), "0.0.0.1-0.0.0.3");
        assert_eq!(set(&p, Family::V6), "::1");
        let p = ObjectPool::parse("a", None, None, &spec(&["0.0.0.0/32"], &[]));
        assert!(p.pool.is_empty());
    }

    #[test]
    fn an_exclusion_covering_everything_leaves_an_empty_pool() {
        let p = ObjectPool::parse("a", None, None, &spec(&["10.0.0.4/30"], &["10.0.0.0/24"]));
        assert!(p.pool.is_empty());
        assert_eq!(p.pool.family(Family::V4), None);
    }

    #[test]
    fn selectors_compile_and_broken_ones_select_nothing() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let mut s = spec(&["10.0.0.0/30"], &[]);
        s.service_selector = Some(LabelSelector {
            match_labels: Some(labels(&[("tier", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "NotIn".into(),
                values: Some(vec!["dev".into()]),
            }]),
        });
        s.namespace_selector = Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: "In".into(),
                values: Some(vec![]),
            }]),
            ..LabelSelector::default()
        });
        let p = ObjectPool::parse("a", None, None, &s);
        assert!(p.service_selector.matches(&labels(&[("tier", "web")])));
        assert!(
            !p.service_selector
                .matches(&labels(&[("tier", "web"), ("env", "dev")]))
        );
        assert!(!p.service_selector.matches(&labels(&[])));
        assert_eq!(p.namespace_selector, Match::Nothing);
        assert_eq!(p.errors.len(), 1);
        assert!(p.errors[0].reason.contains("needs at least one value"));
        // An empty selector selects everything, like an absent one.
        s.namespace_selector = Some(LabelSelector::default());
        let p = ObjectPool::parse("a", None, None, &s);
        assert_eq!(p.namespace_selector, Match::All);
    }

    #[test]
    fn an_unknown_namespace_matches_by_its_name() {
        let mut s = spec(&["10.0.0.0/30"], &[]);
        s.namespace_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                "web".to_string(),
            )])),
            ..LabelSelector::default()
        });
        let p = ObjectPool::parse("a", None, None, &s);
        assert!(p.selects_namespace("web", None));
        assert!(!p.selects_namespace("other", None));
        assert!(!p.selects_namespace("web", Some(&BTreeMap::new())));
    }

    #[test]
    fn without_cuts_every_way() {
        let v4 = |ranges: &[(&str, &str)]| {
            let r: Vec<(IpAddr, IpAddr)> = ranges
                .iter()
                .map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap()))
                .collect();
            AddressSet::from_ranges(Family::V4, &r)
        };
        let set = v4(&[("10.0.0.1", "10.0.0.10"), ("10.0.0.20", "10.0.0.30")]);
        let cases = [
            (vec![], "10.0.0.1-10.0.0.10, 10.0.0.20-10.0.0.30"),
            (
                vec![("10.0.0.1", "10.0.0.1")],
                "10.0.0.2-10.0.0.10, 10.0.0.20-10.0.0.30",
            ),
            (
                vec![("10.0.0.5", "10.0.0.25")],
                "10.0.0.1-10.0.0.4, 10.0.0.26-10.0.0.30",
            ),
            (
                vec![
                    ("10.0.0.3", "10.0.0.3"),
                    ("10.0.0.5", "10.0.0.6"),
                    ("10.0.0.30", "10.0.0.40"),
                ],
                "10.0.0.1-10.0.0.2, 10.0.0.4, 10.0.0.7-10.0.0.10, 10.0.0.20-10.0.0.29",
            ),
            (vec![("10.0.0.0", "10.0.1.0")], "(empty)"),
            (
                vec![("10.0.0.11", "10.0.0.19")],
                "10.0.0.1-10.0.0.10, 10.0.0.20-10.0.0.30",
            ),
        ];
        for (cut, want) in cases {
            assert_eq!(without(&set, &v4(&cut)).to_string(), want, "{cut:?}");
        }
    }
}
