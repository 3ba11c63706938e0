//! `KeyedRuns`: for each key (for sharing: a (port, protocol) pair), the used addresses that carry
//! it, kept as runs that jump over everything except used addresses *without* the key.
//!
//! Sharing asks for "the first used address of the pool, in search order, that carries none of
//! these keys". Scanning used addresses one by one is linear in the number of holders (100k
//! Services on port 80 means 100k checks for every new port-80 Service). Instead, for each key the
//! members are grouped into runs over the *used* addresses: two members belong to one run when no
//! used address without the key lies between them (free addresses do not separate runs). Jumping
//! past the run that contains a blocked address therefore lands on a used address that does not
//! carry that key, or past the last one: for a Service with one port, the search costs O(log n)
//! whatever the layout of the holders.
//!
//! Only allocatable addresses take part (IPv4 `.0`/`.255` are never handed out, so never shared).
//!
//! Invariants per key and family (checked by `check` in tests), with U = the used, allocatable
//! addresses of the family and M = the members:
//! * runs are disjoint and sorted; both ends of a run are members;
//! * every address of U inside a run is a member; every member is inside a run;
//! * between two consecutive runs lies at least one address of U that is not a member (maximal).
//!
//! Membership is therefore "inside a run and used", so no per-address set is stored: a key costs
//! one map entry per run, and contiguously allocated holders are a single run.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;

use super::{AddressSet, Family, SearchOrder, UsedAddrs, from_u128, is_filtered_value, to_u128};

/// Runs per key and family. The caller ([`crate::index::UsedIndex`]) reports every change of
/// membership and of used-ness, in the order the methods describe.
#[derive(Clone, Debug)]
pub struct KeyedRuns<K> {
    keys: HashMap<K, Families, foldhash::fast::RandomState>,
}

impl<K> Default for KeyedRuns<K> {
    fn default() -> Self {
        KeyedRuns {
            keys: HashMap::default(),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Families {
    v4: BTreeMap<u128, u128>,
    v6: BTreeMap<u128, u128>,
}

impl Families {
    fn runs(&self, family: Family) -> &BTreeMap<u128, u128> {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn runs_mut(&mut self, family: Family) -> &mut BTreeMap<u128, u128> {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

fn containing(runs: &BTreeMap<u128, u128>, v: u128) -> Option<(u128, u128)> {
    runs.range(..=v)
        .next_back()
        .filter(|&(_, &e)| e >= v)
        .map(|(&s, &e)| (s, e))
}

/// `ip` as (family, value) when it takes part (allocatable), else `None`.
fn allocatable(ip: IpAddr) -> Option<(Family, u128)> {
    let family = Family::of(ip);
    let v = to_u128(ip);
    (!is_filtered_value(family, v)).then_some((family, v))
}

impl<K: Hash + Eq + Clone> KeyedRuns<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys with at least one member.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Number of runs of `key` in `family` (tests, diagnostics).
    pub fn run_count(&self, key: &K, family: Family) -> usize {
        self.keys.get(key).map_or(0, |f| f.runs(family).len())
    }

    /// True when `ip` carries `key`. `used` must be the current used set.
    pub fn contains(&self, key: &K, ip: IpAddr, used: &UsedAddrs) -> bool {
        let Some((family, v)) = allocatable(ip) else {
            return false;
        };
        used.contains(ip)
            && self
                .keys
                .get(key)
                .is_some_and(|f| containing(f.runs(family), v).is_some())
    }

    /// `ip` (already in `used`) now carries `key`. Call it once the address is used; when it has
    /// just become used, call [`KeyedRuns::split_at`] for the keys it does not carry first.
    pub fn insert(&mut self, key: &K, ip: IpAddr, used: &UsedAddrs) {
        let Some((family, v)) = allocatable(ip) else {
            return;
        };
        let runs = self.keys.entry(key.clone()).or_default().runs_mut(family);
        if containing(runs, v).is_some() {
            return; // already a member (a run spanning a newly used address with this key)
        }
        let (mut start, mut end) = (v, v);
        // Join the previous run when no used address lies between its end and `v`.
        if let Some((&ps, &pe)) = runs.range(..v).next_back()
            && used.next_allocatable(family, pe) == Some(v)
        {
            runs.remove(&ps);
            start = ps;
        }
        if let Some((&ns, &ne)) = runs.range(v..).next()
            && used.prev_allocatable(family, ns) == Some(v)
        {
            runs.remove(&ns);
            end = ne;
        }
        runs.insert(start, end);
    }

    /// `ip` no longer carries `key` (no holder of it has the key any more). `used` is the used set
    /// after the change: whether `ip` is still used decides between splitting the run and keeping it.
    pub fn remove(&mut self, key: &K, ip: IpAddr, used: &UsedAddrs) {
        let Some((family, v)) = allocatable(ip) else {
            return;
        };
        let Some(families) = self.keys.get_mut(key) else {
            return;
        };
        let runs = families.runs_mut(family);
        let Some((s, e)) = containing(runs, v) else {
            return;
        };
        // Inside a run every used address is a member, so the nearest used ones are the new ends.
        let left = used.prev_allocatable(family, v).filter(|&l| l >= s);
        let right = used.next_allocatable(family, v).filter(|&r| r <= e);
        let still_used = used.contains(ip);
        match (left, right) {
            // Now free: a free address does not separate a run.
            (Some(_), Some(_)) if !still_used => {}
            (Some(l), Some(r)) => {
                runs.insert(s, l);
                runs.insert(r, e);
            }
            (Some(l), None) => {
                runs.insert(s, l);
            }
            (None, Some(r)) => {
                runs.remove(&s);
                runs.insert(r, e);
            }
            (None, None) => {
                runs.remove(&s);
            }
        }
        if families.is_empty() {
            self.keys.remove(key);
        }
    }

    /// `ip` has just become used and does not carry `key`: a run of `key` around it is split.
    pub fn split_at(&mut self, key: &K, ip: IpAddr, used: &UsedAddrs) {
        let Some((family, v)) = allocatable(ip) else {
            return;
        };
        let Some(runs) = self.keys.get_mut(key).map(|f| f.runs_mut(family)) else {
            return;
        };
        let Some((s, e)) = containing(runs, v) else {
            return;
        };
        // `v` is not a member, so it is strictly inside and both sides keep a member.
        if let (Some(l), Some(r)) = (
            used.prev_allocatable(family, v).filter(|&l| l >= s),
            used.next_allocatable(family, v).filter(|&r| r <= e),
        ) {
            runs.insert(s, l);
            runs.insert(r, e);
        }
    }

    /// `ip` has just become free: the runs of `key` on both sides of it join when its used
    /// neighbours both carry `key` (it was the only thing separating them).
    pub fn join_across(&mut self, key: &K, ip: IpAddr, used: &UsedAddrs) {
        let Some((family, v)) = allocatable(ip) else {
            return;
        };
        let Some(runs) = self.keys.get_mut(key).map(|f| f.runs_mut(family)) else {
            return;
        };
        let (Some(a), Some(b)) = (
            used.prev_allocatable(family, v),
            used.next_allocatable(family, v),
        ) else {
            return;
        };
        if let (Some((s1, e1)), Some((s2, e2))) = (containing(runs, a), containing(runs, b))
            && s1 != s2
        {
            debug_assert!(e1 == a && s2 == b);
            runs.remove(&s2);
            runs.insert(s1, e2);
        }
    }

    /// The first used, allocatable address of `pool` in search order that carries none of the
    /// blocked keys; `blocking(ip)` names the blocked keys a used address carries (the caller
    /// knows its holders). Each step jumps past the longest run, among those keys, containing
    /// the address; with one blocked key the first address after a run is already the answer.
    /// A step costs what the address carries, not the number of blocked keys.
    pub fn first_without(
        &self,
        used: &UsedAddrs,
        pool: &AddressSet,
        order: SearchOrder,
        blocking: impl Fn(IpAddr) -> Vec<K>,
    ) -> Option<IpAddr> {
        let family = pool.family();
        // The runs of the blocked keys `v` carries, containing `v`.
        let runs_at = |v: u128| -> Vec<(u128, u128)> {
            blocking(from_u128(family, v))
                .iter()
                .filter_map(|k| self.keys.get(k))
                .filter_map(|f| containing(f.runs(family), v))
                .collect()
        };
        let found = match order {
            SearchOrder::Ascending => pool
                .raw_intervals()
                .iter()
                .find_map(|&(s, e)| first_up(used, family, &runs_at, s, e)),
            SearchOrder::Descending => pool
                .raw_intervals()
                .iter()
                .rev()
                .find_map(|&(s, e)| first_down(used, family, &runs_at, s, e)),
        };
        found.map(|v| from_u128(family, v))
    }

    /// Panics when an invariant is broken (tests).
    #[cfg(test)]
    pub(crate) fn check(&self, used: &UsedAddrs, members: impl Fn(&K, IpAddr) -> bool) {
        for (key, families) in &self.keys {
            assert!(!families.is_empty(), "empty key kept");
            for family in [Family::V4, Family::V6] {
                let runs = families.runs(family);
                let mut prev_end: Option<u128> = None;
                for (&s, &e) in runs {
                    assert!(s <= e);
                    for end in [s, e] {
                        let ip = from_u128(family, end);
                        assert!(
                            used.contains(ip) && members(key, ip),
                            "run end {ip} not a member"
                        );
                    }
                    let mut u = Some(s);
                    while let Some(x) = u.filter(|&x| x <= e) {
                        assert!(
                            members(key, from_u128(family, x)),
                            "used non-member in a run"
                        );
                        u = used.next_allocatable(family, x);
                    }
                    if let Some(p) = prev_end {
                        assert!(p < s, "runs overlap");
                        let between = used.next_allocatable(family, p);
                        assert!(
                            between.is_some_and(|x| x < s && !members(key, from_u128(family, x))),
                            "runs not maximal"
                        );
                    }
                    prev_end = Some(e);
                }
            }
        }
        for ip in used.iter() {
            if let Some((family, v)) = allocatable(ip) {
                for (key, families) in &self.keys {
                    if members(key, ip) {
                        assert!(
                            containing(families.runs(family), v).is_some(),
                            "member {ip} not in a run"
                        );
                    }
                }
            }
        }
    }
}

fn first_up(
    used: &UsedAddrs,
    family: Family,
    runs_at: &impl Fn(u128) -> Vec<(u128, u128)>,
    s: u128,
    e: u128,
) -> Option<u128> {
    let mut c = s;
    loop {
        let v = used.next_allocatable_from(family, c).filter(|&v| v <= e)?;
        match runs_at(v).iter().map(|&(_, end)| end).max() {
            None => return Some(v),
            Some(end) if end >= e => return None,
            Some(end) => c = end + 1,
        }
    }
}

fn first_down(
    used: &UsedAddrs,
    family: Family,
    runs_at: &impl Fn(u128) -> Vec<(u128, u128)>,
    s: u128,
    e: u128,
) -> Option<u128> {
    let mut c = e;
    loop {
        let v = used.prev_allocatable_to(family, c).filter(|&v| v >= s)?;
        match runs_at(v).iter().map(|&(start, _)| start).min() {
            None => return Some(v),
            Some(start) if start <= s => return None,
            Some(start) => c = start - 1,
        }
    }
}
