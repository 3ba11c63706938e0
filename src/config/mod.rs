//! The `kubevip` ConfigMap `data` -> [`Config`] (SPEC section 2). Pure, no I/O.
//!
//! A `Config` is built once per ConfigMap change and then only read: lookups are map lookups.
//! Building never fails; every problem becomes a [`ConfigError`] and disables only itself.
//!
//! Decisions where the spec is silent:
//! * Empty list entries (`a,,b`, trailing comma) are skipped silently. A wholly empty pool value
//!   is not reported either: `cidr-<ns>: ""` is a legitimate way to give a namespace no pool.
//! * Key presence wins for every per-namespace key, not only pools: `allow-share-<ns>` with a bad
//!   value counts as `false` and hides `allow-share-global`; `interface-<ns>` that is empty or
//!   invalid means "no interface annotation" and hides `interface-global` (as the peer does).
//! * A pool value without `/` is a range list, so an empty value gives `PoolKind::Range`.
//! * A namespace literally named `global` uses the `-global` keys as its own; such a pool reports
//!   `global == true`.
//! * A key whose suffix cannot be a namespace name (`cidr-Web`) is kept but reported: it never applies.

mod exclude;
pub(crate) mod parse;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use crate::ipam::{AddressSet, Family, SearchOrder};

pub use exclude::Exclusion;

/// Key of the global search order.
pub const SEARCH_ORDER_KEY: &str = "search-order";
/// Key of the global skip-end flag.
pub const SKIP_END_KEY: &str = "skip-end-ips-in-cidr";
/// Suffix of the cluster-wide keys.
pub const GLOBAL: &str = "global";

const CIDR_PREFIX: &str = "cidr-";
const RANGE_PREFIX: &str = "range-";
const ALLOW_SHARE_PREFIX: &str = "allow-share-";
const INTERFACE_PREFIX: &str = "interface-";

/// One problem found in the ConfigMap: which key, which entry of its value (empty when the
/// problem is the key itself), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub entry: String,
    pub reason: String,
}

impl ConfigError {
    fn new(key: &str, entry: &str, reason: impl Into<String>) -> Self {
        ConfigError {
            key: key.to_string(),
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entry.is_empty() {
            write!(f, "{}: {}", self.key, self.reason)
        } else {
            write!(f, "{}: entry {:?}: {}", self.key, self.entry, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The addresses of one family of a pool.
#[derive(Debug, Clone, PartialEq)]
pub enum FamilyPool {
    /// `0.0.0.0/32`: the Service gets `0.0.0.0` and kube-vip asks DHCP. IPv4 only.
    Dhcp,
    Set(AddressSet),
}

/// How a pool value was written; decided by the value (contains `/`), not by the key prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    Cidr,
    Range,
}

impl PoolKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Cidr => "cidr",
            PoolKind::Range => "range",
        }
    }
}

impl fmt::Display for PoolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `cidr-*` or `range-*` key. A family is `None` when the value has no usable entry of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// The ConfigMap key, e.g. `cidr-web`.
    pub key: String,
    pub kind: PoolKind,
    /// The key ends in `-global`.
    pub global: bool,
    pub v4: Option<FamilyPool>,
    pub v6: Option<FamilyPool>,
}

impl Pool {
    pub fn family(&self, f: Family) -> Option<&FamilyPool> {
        match f {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }

    /// No usable entry at all (empty value, or every entry bad).
    pub fn is_empty(&self) -> bool {
        [&self.v4, &self.v6].into_iter().all(|fp| match fp {
            None => true,
            Some(FamilyPool::Dhcp) => false,
            Some(FamilyPool::Set(s)) => s.is_empty(),
        })
    }

    /// Whether `ip` is one of the pool's addresses (DHCP pools contain none).
    pub fn contains(&self, ip: IpAddr) -> bool {
        matches!(self.family(Family::of(ip)), Some(FamilyPool::Set(s)) if s.contains(ip))
    }
}

/// The parsed ConfigMap.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// `cidr-*` pools by key suffix (namespace or `global`).
    cidr: BTreeMap<String, Pool>,
    /// `range-*` pools by key suffix.
    range: BTreeMap<String, Pool>,
    allow_share: BTreeMap<String, bool>,
    /// `None`: the key is present but empty or invalid (it still hides the global key).
    interfaces: BTreeMap<String, Option<String>>,
    search_order: SearchOrder,
    skip_end: bool,
    errors: Vec<ConfigError>,
    /// `exclude-*` keys by suffix (namespace or `global`), see `exclude.rs`.
    exclude: BTreeMap<String, Exclusion>,
    /// The operator's `--exclude` flag (not from the ConfigMap; set by the allocator).
    operator_exclude: Option<Exclusion>,
}

impl Config {
    /// Parses ConfigMap `data`. Never fails: bad entries become [`ConfigError`]s.
    pub fn from_data(data: &BTreeMap<String, String>) -> Config {
        let mut cfg = Config::default();
        // Needed before any CIDR pool is built.
        if let Some(v) = data.get(SKIP_END_KEY) {
            cfg.skip_end = parse::boolean(v).unwrap_or_else(|reason| {
                cfg.errors
                    .push(ConfigError::new(SKIP_END_KEY, v.trim(), reason));
                false
            });
        }
        for (key, value) in data {
            cfg.add(key, value);
        }
        // Stable: entry order within a key is kept.
        cfg.errors.sort_by(|a, b| a.key.cmp(&b.key));
        cfg
    }

    fn add(&mut self, key: &str, value: &str) {
        match key {
            SKIP_END_KEY => return,
            SEARCH_ORDER_KEY => {
                self.search_order = match parse::descending(value) {
                    Ok(true) => SearchOrder::Descending,
                    Ok(false) => SearchOrder::Ascending,
                    Err(reason) => {
                        self.errors
                            .push(ConfigError::new(key, value.trim(), reason));
                        SearchOrder::Ascending
                    }
                };
                return;
            }
            _ => {}
        }
        let prefixes = [
            CIDR_PREFIX,
            RANGE_PREFIX,
            ALLOW_SHARE_PREFIX,
            INTERFACE_PREFIX,
            exclude::EXCLUDE_PREFIX,
        ];
        let Some((prefix, suffix)) = prefixes
            .into_iter()
            .find_map(|p| key.strip_prefix(p).map(|s| (p, s)))
        else {
            self.errors.push(ConfigError::new(key, "", "unknown key"));
            return;
        };
        if suffix.is_empty() {
            self.errors.push(ConfigError::new(
                key,
                "",
                format!("missing namespace (or \"global\") after {prefix:?}"),
            ));
            return;
        }
        if !parse::is_namespace_name(suffix) {
            self.errors.push(ConfigError::new(
                key,
                "",
                format!("{suffix:?} is not a valid namespace name, so this key never applies"),
            ));
        }
        let suffix = suffix.to_string();
        match prefix {
            CIDR_PREFIX | RANGE_PREFIX => {
                let pool = build_pool(
                    key,
                    suffix == GLOBAL,
                    value,
                    self.skip_end,
                    &mut self.errors,
                );
                let map = if prefix == CIDR_PREFIX {
                    &mut self.cidr
                } else {
                    &mut self.range
                };
                map.insert(suffix, pool);
            }
            exclude::EXCLUDE_PREFIX => {
                let excl = exclude::from_key(key, value, &mut self.errors);
                self.exclude.insert(suffix, excl);
            }
            ALLOW_SHARE_PREFIX => {
                let share = parse::boolean(value).unwrap_or_else(|reason| {
                    self.errors
                        .push(ConfigError::new(key, value.trim(), reason));
                    false
                });
                self.allow_share.insert(suffix, share);
            }
            _ => {
                let name = parse::interface(value).unwrap_or_else(|reason| {
                    self.errors
                        .push(ConfigError::new(key, value.trim(), reason));
                    None
                });
                self.interfaces.insert(suffix, name.map(str::to_string));
            }
        }
    }

    /// The pool for `namespace`: `cidr-<ns>` > `cidr-global` > `range-<ns>` > `range-global`.
    /// Key presence wins: an empty or all-bad value still blocks the fallback.
    pub fn pool_for(&self, namespace: &str) -> Option<&Pool> {
        self.cidr
            .get(namespace)
            .or_else(|| self.cidr.get(GLOBAL))
            .or_else(|| self.range.get(namespace))
            .or_else(|| self.range.get(GLOBAL))
    }

    /// The pool stored under a ConfigMap key (`cidr-web`), if any.
    pub fn pool_by_key(&self, key: &str) -> Option<&Pool> {
        if let Some(s) = key.strip_prefix(CIDR_PREFIX) {
            self.cidr.get(s)
        } else {
            self.range.get(key.strip_prefix(RANGE_PREFIX)?)
        }
    }

    /// `allow-share-<ns>` if present, else `allow-share-global`, else false.
    pub fn allow_share(&self, namespace: &str) -> bool {
        self.allow_share
            .get(namespace)
            .or_else(|| self.allow_share.get(GLOBAL))
            .copied()
            .unwrap_or(false)
    }

    /// `interface-<ns>` if present, else `interface-global`; `None` when empty or invalid.
    pub fn interface(&self, namespace: &str) -> Option<&str> {
        self.interfaces
            .get(namespace)
            .or_else(|| self.interfaces.get(GLOBAL))
            .and_then(|name| name.as_deref())
    }

    pub fn search_order(&self) -> SearchOrder {
        self.search_order
    }

    pub fn skip_end(&self) -> bool {
        self.skip_end
    }

    /// Every pool, sorted by key (all `cidr-*` sort before all `range-*`).
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.cidr.values().chain(self.range.values())
    }

    /// Every problem found, sorted by key.
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }

    pub fn errors_for_key<'a>(
        &'a self,
        key: &'a str,
    ) -> impl Iterator<Item = &'a ConfigError> + 'a {
        self.errors.iter().filter(move |e| e.key == key)
    }
}

/// Builds one pool; the value decides the kind. Bad entries are reported and left out.
fn build_pool(
    key: &str,
    global: bool,
    value: &str,
    skip_end: bool,
    errors: &mut Vec<ConfigError>,
) -> Pool {
    let mut bad = |entry: &str, reason: String| errors.push(ConfigError::new(key, entry, reason));
    let (kind, v4, v6) = if value.contains('/') {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for entry in parse::entries(value) {
            match parse::cidr(entry) {
                Ok(net @ IpNet::V4(_)) => v4.push(net),
                Ok(net) => v6.push(net),
                Err(reason) => bad(entry, reason),
            }
        }
        let dhcp = IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 32).ok();
        let v4 = if v4.is_empty() {
            None
        } else if v4.iter().all(|n| Some(*n) == dhcp) {
            // Written `0.0.0.0/32` (repetitions change nothing): the whole IPv4 part is DHCP.
            Some(FamilyPool::Dhcp)
        } else {
            Some(FamilyPool::Set(AddressSet::from_cidrs(
                Family::V4,
                &v4,
                skip_end,
            )))
        };
        let v6 = (!v6.is_empty())
            .then(|| FamilyPool::Set(AddressSet::from_cidrs(Family::V6, &v6, skip_end)));
        (PoolKind::Cidr, v4, v6)
    } else {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for entry in parse::entries(value) {
            match parse::range(entry) {
                Ok(r @ (IpAddr::V4(_), _)) => v4.push(r),
                Ok(r) => v6.push(r),
                Err(reason) => bad(entry, reason),
            }
        }
        let set = |family, ranges: Vec<(IpAddr, IpAddr)>| {
            (!ranges.is_empty()).then(|| FamilyPool::Set(AddressSet::from_ranges(family, &ranges)))
        };
        (PoolKind::Range, set(Family::V4, v4), set(Family::V6, v6))
    };
    Pool {
        key: key.to_string(),
        kind,
        global,
        v4,
        v6,
    }
}

#[cfg(test)]
mod tests;
