//! Exclusions: addresses never handed out whatever the pools say (SPEC 4.9). ConfigMap keys
//! `exclude-global` and `exclude-<namespace>`, and the operator's `--exclude` flag.
//!
//! Values take the pool syntax, entry by entry: a CIDR (`10.0.0.0/29`), a range
//! (`10.0.0.1-10.0.0.9`), and also a single address (`10.0.0.1`, a gateway), IPv4 and IPv6
//! mixed. Unlike pools, `skip-end-ips-in-cidr` never applies (an excluded CIDR is excluded
//! whole) and `0.0.0.0/32` has no DHCP meaning. Exclusions are kept as interval sets and
//! subtracted from pools, never expanded address by address (a /8 costs one interval).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{ConfigError, parse};
use crate::ipam::{AddressSet, Family};

/// The key prefix of exclusions.
pub(super) const EXCLUDE_PREFIX: &str = "exclude-";

/// Addresses excluded by one source (a ConfigMap key or the flag).
#[derive(Debug, Clone, PartialEq)]
pub struct Exclusion {
    /// Where it comes from, for messages: `ConfigMap key exclude-global`, `--exclude`.
    pub source: String,
    v4: AddressSet,
    v6: AddressSet,
}

impl Exclusion {
    /// An exclusion with nothing in it, from `source`.
    pub fn empty(source: impl Into<String>) -> Exclusion {
        Exclusion {
            source: source.into(),
            v4: AddressSet::empty(Family::V4),
            v6: AddressSet::empty(Family::V6),
        }
    }

    /// Parses a list value; bad entries are returned as reasons (`(entry, reason)`), the good
    /// ones are kept.
    pub fn parse(source: impl Into<String>, value: &str) -> (Exclusion, Vec<(String, String)>) {
        let mut bad = Vec::new();
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for entry in parse::entries(value) {
            match entry_range(entry) {
                Ok((a, b)) if a.is_ipv4() => v4.push((a, b)),
                Ok(r) => v6.push(r),
                Err(reason) => bad.push((entry.to_string(), reason)),
            }
        }
        let excl = Exclusion {
            source: source.into(),
            v4: AddressSet::from_ranges(Family::V4, &v4),
            v6: AddressSet::from_ranges(Family::V6, &v6),
        };
        (excl, bad)
    }

    /// The excluded addresses of `family`.
    pub fn family(&self, family: Family) -> &AddressSet {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.family(Family::of(ip)).contains(ip)
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

impl fmt::Display for Exclusion {
    /// `10.0.0.1, 10.0.0.8-10.0.0.15, fd00::1`; `(empty)` when nothing is excluded.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.v4.is_empty(), self.v6.is_empty()) {
            (true, true) => f.write_str("(empty)"),
            (false, true) => write!(f, "{}", self.v4),
            (true, false) => write!(f, "{}", self.v6),
            (false, false) => write!(f, "{}, {}", self.v4, self.v6),
        }
    }
}

impl super::Config {
    /// Exclusions that apply to Services of `namespace`, in the order they are named:
    /// `exclude-global`, `exclude-<namespace>`, then the `--exclude` flag. They add up (unlike
    /// pools, a namespace key does not hide the global one).
    pub fn exclusions_for<'a>(
        &'a self,
        namespace: &str,
    ) -> impl Iterator<Item = &'a Exclusion> + use<'a> {
        let ns = if namespace == super::GLOBAL {
            None
        } else {
            self.exclude.get(namespace)
        };
        self.exclude
            .get(super::GLOBAL)
            .into_iter()
            .chain(ns)
            .chain(self.operator_exclude.as_ref())
    }

    /// Every exclusion, ConfigMap keys sorted, the flag last (for `status` and `plan`).
    pub fn exclusions(&self) -> impl Iterator<Item = &Exclusion> {
        self.exclude.values().chain(self.operator_exclude.as_ref())
    }

    /// The exclusion that covers `ip` for Services of `namespace`, if any.
    pub fn excluded(&self, namespace: &str, ip: IpAddr) -> Option<&Exclusion> {
        self.exclusions_for(namespace).find(|e| e.contains(ip))
    }

    /// `set` without what is excluded for `namespace`: borrowed when nothing applies.
    pub fn without_excluded<'a>(
        &self,
        namespace: &str,
        set: &'a AddressSet,
    ) -> std::borrow::Cow<'a, AddressSet> {
        let mut out = std::borrow::Cow::Borrowed(set);
        for e in self.exclusions_for(namespace) {
            let cut = e.family(set.family());
            if !cut.is_empty() {
                out = std::borrow::Cow::Owned(out.minus(cut));
            }
        }
        out
    }

    /// The operator's `--exclude` (applies to every namespace, like `exclude-global`).
    pub fn set_operator_exclusion(&mut self, exclusion: Option<Exclusion>) {
        self.operator_exclude = exclusion.filter(|e| !e.is_empty());
    }
}

/// One entry as an inclusive range: a CIDR (host bits masked), a range, or one address.
fn entry_range(entry: &str) -> Result<(IpAddr, IpAddr), String> {
    if entry.contains('/') {
        let net: IpNet = parse::cidr(entry)?;
        Ok((net.network(), net.broadcast()))
    } else if entry.contains('-') {
        parse::range(entry)
    } else {
        entry.parse::<IpAddr>().map(|ip| (ip, ip)).map_err(|_| {
            "not an address, a CIDR (10.0.0.0/24) or a range (10.0.0.1-10.0.0.9)".to_string()
        })
    }
}

/// The exclusion of ConfigMap key `key`, its bad entries reported into `errors`.
pub(super) fn from_key(key: &str, value: &str, errors: &mut Vec<ConfigError>) -> Exclusion {
    let (excl, bad) = Exclusion::parse(format!("ConfigMap key {key}"), value);
    for (entry, reason) in bad {
        errors.push(ConfigError::new(key, &entry, reason));
    }
    excl
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn entries_may_be_cidrs_ranges_or_single_addresses_of_both_families() {
        let (e, bad) = Exclusion::parse(
            "--exclude",
            "10.0.0.1, 10.0.1.0/30 ,10.0.2.5-10.0.2.6,fd00::1,fd00:1::/127",
        );
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(
            e.to_string(),
            "10.0.0.1, 10.0.1.0-10.0.1.3, 10.0.2.5-10.0.2.6, fd00::1, fd00:1::-fd00:1::1"
        );
        assert!(e.contains(ip("10.0.1.3")));
        assert!(!e.contains(ip("10.0.1.4")));
        assert!(e.contains(ip("fd00:1::1")));
    }

    #[test]
    fn a_bad_entry_disables_only_itself() {
        let (e, bad) = Exclusion::parse("k", "10.0.0.1,nonsense,10.0.0.9-10.0.0.3,10.0.0.7/33");
        assert_eq!(e.to_string(), "10.0.0.1");
        let entries: Vec<&str> = bad.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(entries, ["nonsense", "10.0.0.9-10.0.0.3", "10.0.0.7/33"]);
        assert!(bad[1].1.contains("reversed range"), "{bad:?}");
    }

    #[test]
    fn configmap_keys_add_up_per_namespace_and_bad_entries_are_reported() {
        let data: std::collections::BTreeMap<String, String> = [
            ("cidr-global", "10.0.0.0/29"),
            ("exclude-global", "10.0.0.1"),
            ("exclude-web", "10.0.0.2, bad"),
            ("exclude-Web", "10.0.0.3"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut c = super::super::Config::from_data(&data);
        let errors: Vec<String> = c.errors().iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("exclude-Web: \"Web\" is not a valid namespace name"));
        assert!(errors[1].starts_with("exclude-web: entry \"bad\": not an address"));
        let sources = |c: &super::super::Config, ns: &str| -> Vec<String> {
            c.exclusions_for(ns).map(|e| e.source.clone()).collect()
        };
        assert_eq!(
            sources(&c, "web"),
            ["ConfigMap key exclude-global", "ConfigMap key exclude-web"]
        );
        assert_eq!(sources(&c, "api"), ["ConfigMap key exclude-global"]);
        assert_eq!(sources(&c, "global"), ["ConfigMap key exclude-global"]);
        assert_eq!(
            c.excluded("web", ip("10.0.0.2")).map(|e| e.source.as_str()),
            Some("ConfigMap key exclude-web")
        );
        assert!(c.excluded("api", ip("10.0.0.2")).is_none());
        c.set_operator_exclusion(Some(Exclusion::parse("--exclude", "10.0.0.4").0));
        assert_eq!(
            sources(&c, "api"),
            ["ConfigMap key exclude-global", "--exclude"]
        );
        let pool = c
            .pool_for("web")
            .and_then(|p| p.family(Family::V4))
            .cloned();
        let Some(super::super::FamilyPool::Set(set)) = pool else {
            panic!("{pool:?}")
        };
        assert_eq!(
            c.without_excluded("web", &set).to_string(),
            "10.0.0.0, 10.0.0.3, 10.0.0.5-10.0.0.7"
        );
        // Nothing applies: the pool itself, not a copy.
        let bare = super::super::Config::default();
        assert!(matches!(
            bare.without_excluded("web", &set),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn cidrs_are_excluded_whole() {
        // No skip-end, no DHCP meaning: the ends of a CIDR and 0.0.0.0 are excluded too.
        let (e, _) = Exclusion::parse("k", "10.0.0.0/24,0.0.0.0/32");
        assert!(e.contains(ip("10.0.0.0")) && e.contains(ip("10.0.0.255")));
        assert!(e.contains(ip("0.0.0.0")));
        let (empty, bad) = Exclusion::parse("k", " , ");
        assert!(empty.is_empty() && bad.is_empty());
        assert_eq!(empty.to_string(), "(empty)");
    }
}
