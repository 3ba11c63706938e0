//! `UsedAddrs`: the distinct used addresses of both families, kept twice: exactly (for
//! membership, counting and listing) and as coalesced runs (so `next_free` jumps over any number
//! of used addresses in O(log n)).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{AddressSet, Family, SearchOrder, from_u128, is_filtered_value, to_u128};

/// The set of distinct used addresses, both families.
#[derive(Clone, Debug, Default)]
pub struct UsedAddrs {
    v4: FamilyUsed,
    v6: FamilyUsed,
}

/// Used addresses of one family.
///
/// Run invariants (checked by `check_invariants` in tests):
/// * every address inside a run is used or filtered (IPv4 `.0`/`.255`); both ends are used;
/// * runs are disjoint and sorted (a `BTreeMap` start -> end);
/// * the gap between two consecutive runs holds at least one unused, non-filtered address (runs
///   separated only by filtered addresses are coalesced).
///
/// Hence after jumping past a run, the next non-filtered address (at most 2 filtered ones later)
/// is free.
#[derive(Clone, Debug, Default)]
struct FamilyUsed {
    exact: BTreeSet<u128>,
    runs: BTreeMap<u128, u128>,
}

impl UsedAddrs {
    /// No address used.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `ip` used; true if it was not present.
    pub fn insert(&mut self, ip: IpAddr) -> bool {
        let family = Family::of(ip);
        self.family_mut(family).insert(family, to_u128(ip))
    }

    /// Frees `ip`; true if it was present.
    pub fn remove(&mut self, ip: IpAddr) -> bool {
        let family = Family::of(ip);
        self.family_mut(family).remove(family, to_u128(ip))
    }

    /// True when `ip` is used.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.family(Family::of(ip)).exact.contains(&to_u128(ip))
    }

    /// Number of distinct used addresses, both families.
    pub fn len(&self) -> usize {
        self.v4.exact.len() + self.v6.exact.len()
    }

    /// True when no address is used.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All used addresses, IPv4 ascending then IPv6 ascending.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let v4 = self.v4.exact.iter().map(|&v| from_u128(Family::V4, v));
        let v6 = self.v6.exact.iter().map(|&v| from_u128(Family::V6, v));
        v4.chain(v6)
    }

    /// Used addresses that are allocatable addresses of `pool` (for metrics: used/free per pool).
    /// O(k + log n) for k used addresses inside the pool.
    pub fn count_in(&self, pool: &AddressSet) -> u128 {
        let family = pool.family();
        let exact = &self.family(family).exact;
        pool.raw_intervals()
            .iter()
            .map(|&(s, e)| {
                exact
                    .range(s..=e)
                    .filter(|&&v| !is_filtered_value(family, v))
                    .count() as u128
            })
            .sum()
    }

    /// Used addresses inside `pool`, IPv4 `.0`/`.255` included. O(k + log n).
    pub fn count_all_in(&self, pool: &AddressSet) -> u128 {
        let exact = &self.family(pool.family()).exact;
        pool.raw_intervals()
            .iter()
            .map(|&(s, e)| exact.range(s..=e).count() as u128)
            .sum()
    }

    /// Used addresses inside `pool` that are allocatable, in search order; lazy.
    pub fn iter_in<'a>(
        &'a self,
        pool: &'a AddressSet,
        order: SearchOrder,
    ) -> impl Iterator<Item = IpAddr> + 'a {
        let family = pool.family();
        let exact = &self.family(family).exact;
        let ivs = pool.raw_intervals();
        let values: Box<dyn Iterator<Item = u128> + 'a> = match order {
            SearchOrder::Ascending => Box::new(
                ivs.iter()
                    .flat_map(move |&(s, e)| exact.range(s..=e).copied()),
            ),
            SearchOrder::Descending => Box::new(
                ivs.iter()
                    .rev()
                    .flat_map(move |&(s, e)| exact.range(s..=e).rev().copied()),
            ),
        };
        values
            .filter(move |&v| !is_filtered_value(family, v))
            .map(move |v| from_u128(family, v))
    }

    /// The run `(start, end)` of `family` that contains `v`, if any.
    pub(crate) fn run_containing(&self, family: Family, v: u128) -> Option<(u128, u128)> {
        self.family(family).run_containing(v)
    }

    /// The nearest used, allocatable (not IPv4 `.0`/`.255`) value of `family` below `v`.
    pub(crate) fn prev_allocatable(&self, family: Family, v: u128) -> Option<u128> {
        self.family(family)
            .exact
            .range(..v)
            .rev()
            .copied()
            .find(|&u| !is_filtered_value(family, u))
    }

    /// The nearest used, allocatable value of `family` above `v`.
    pub(crate) fn next_allocatable(&self, family: Family, v: u128) -> Option<u128> {
        if v == u128::MAX {
            return None;
        }
        self.next_allocatable_from(family, v + 1)
    }

    /// The smallest used, allocatable value of `family` that is `>= v`.
    pub(crate) fn next_allocatable_from(&self, family: Family, v: u128) -> Option<u128> {
        self.family(family)
            .exact
            .range(v..)
            .copied()
            .find(|&u| !is_filtered_value(family, u))
    }

    /// The largest used, allocatable value of `family` that is `<= v`.
    pub(crate) fn prev_allocatable_to(&self, family: Family, v: u128) -> Option<u128> {
        self.family(family)
            .exact
            .range(..=v)
            .rev()
            .copied()
            .find(|&u| !is_filtered_value(family, u))
    }

    /// The used, allocatable addresses right before and after `ip` in its family (not `ip`).
    pub fn neighbours(&self, ip: IpAddr) -> (Option<IpAddr>, Option<IpAddr>) {
        let family = Family::of(ip);
        let v = to_u128(ip);
        (
            self.prev_allocatable(family, v)
                .map(|u| from_u128(family, u)),
            self.next_allocatable(family, v)
                .map(|u| from_u128(family, u)),
        )
    }

    /// Number of runs of `family` (for tests and diagnostics).
    pub fn run_count(&self, family: Family) -> usize {
        self.family(family).runs.len()
    }

    /// The runs of `family` as inclusive address pairs, ascending (for tests and diagnostics).
    pub fn runs(&self, family: Family) -> impl Iterator<Item = (IpAddr, IpAddr)> + '_ {
        self.family(family)
            .runs
            .iter()
            .map(move |(&s, &e)| (from_u128(family, s), from_u128(family, e)))
    }

    fn family(&self, family: Family) -> &FamilyUsed {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn family_mut(&mut self, family: Family) -> &mut FamilyUsed {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    /// Panics when a run invariant is broken (test helper).
    #[cfg(test)]
    fn check_invariants(&self) {
        self.v4.check_invariants(Family::V4);
        self.v6.check_invariants(Family::V6);
    }
}

/// True when every address strictly between `lo` and `hi` (lo < hi) is filtered, or there is none.
/// Two filtered addresses in a row at most (`.255`, `.0`), so the gap is at most 2 long.
fn gap_only_filtered(family: Family, lo: u128, hi: u128) -> bool {
    let len = hi - lo - 1;
    len == 0 || (len <= 2 && (lo + 1..hi).all(|v| is_filtered_value(family, v)))
}

impl FamilyUsed {
    fn run_containing(&self, v: u128) -> Option<(u128, u128)> {
        self.runs
            .range(..=v)
            .next_back()
            .filter(|&(_, &e)| e >= v)
            .map(|(&s, &e)| (s, e))
    }

    fn insert(&mut self, family: Family, v: u128) -> bool {
        if !self.exact.insert(v) {
            return false;
        }
        // Inside a run already: `v` was a filtered gap address of it; the run is unchanged.
        if self.run_containing(v).is_some() {
            return true;
        }
        let mut start = v;
        let mut end = v;
        if let Some((&ps, &pe)) = self.runs.range(..v).next_back()
            && gap_only_filtered(family, pe, v)
        {
            self.runs.remove(&ps);
            start = ps;
        }
        if v < u128::MAX
            && let Some((&ns, &ne)) = self.runs.range(v + 1..).next()
            && gap_only_filtered(family, v, ns)
        {
            self.runs.remove(&ns);
            end = ne;
        }
        self.runs.insert(start, end);
        true
    }

    fn remove(&mut self, family: Family, v: u128) -> bool {
        if !self.exact.remove(&v) {
            return false;
        }
        let Some((s, e)) = self.run_containing(v) else {
            // Unreachable while the invariants hold: every used address lies in a run.
            return true;
        };
        // Nearest used addresses on each side inside the run: the new ends (this trims the unused
        // filtered addresses, at most 2, next to `v`).
        let left = if v > s {
            self.exact.range(s..v).next_back().copied()
        } else {
            None
        };
        let right = if v < e {
            self.exact.range(v + 1..=e).next().copied()
        } else {
            None
        };
        match (left, right) {
            // `v` was filtered and the neighbours are still separated by filtered addresses only.
            (Some(l), Some(r)) if gap_only_filtered(family, l, r) => {}
            (Some(l), Some(r)) => {
                self.runs.insert(s, l);
                self.runs.insert(r, e);
            }
            (Some(l), None) => {
                self.runs.insert(s, l);
            }
            (None, Some(r)) => {
                self.runs.remove(&s);
                self.runs.insert(r, e);
            }
            (None, None) => {
                self.runs.remove(&s);
            }
        }
        true
    }

    #[cfg(test)]
    fn check_invariants(&self, family: Family) {
        let mut prev: Option<u128> = None;
        for (&s, &e) in &self.runs {
            assert!(s <= e);
            assert!(self.exact.contains(&s) && self.exact.contains(&e));
            for v in s..=e {
                assert!(self.exact.contains(&v) || is_filtered_value(family, v));
            }
            if let Some(p) = prev {
                assert!(p < s, "runs overlap");
                assert!(
                    !gap_only_filtered(family, p, s),
                    "runs {p}..{s} not coalesced"
                );
            }
            prev = Some(e);
        }
        for &v in &self.exact {
            assert!(self.run_containing(v).is_some(), "{v} not in a run");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::next_free;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn runs(u: &UsedAddrs, family: Family) -> Vec<String> {
        u.runs(family).map(|(a, b)| format!("{a}-{b}")).collect()
    }

    #[test]
    fn insert_remove_contains_len() {
        let mut u = UsedAddrs::new();
        assert!(u.is_empty());
        assert!(u.insert(ip("10.0.0.1")));
        assert!(!u.insert(ip("10.0.0.1")));
        assert!(u.insert(ip("fd00::1")));
        assert_eq!(u.len(), 2);
        assert!(u.contains(ip("10.0.0.1")));
        assert!(u.contains(ip("fd00::1")));
        assert!(!u.contains(ip("10.0.0.2")));
        // Same low bits, other family: distinct.
        assert!(!u.contains(ip("::a00:1")));
        assert!(u.remove(ip("10.0.0.1")));
        assert!(!u.remove(ip("10.0.0.1")));
        assert_eq!(u.len(), 1);
        assert_eq!(u.iter().collect::<Vec<_>>(), vec![ip("fd00::1")]);
        u.check_invariants();
    }

    #[test]
    fn adjacent_inserts_coalesce_in_any_order() {
        let mut u = UsedAddrs::new();
        for a in ["10.0.0.3", "10.0.0.1", "10.0.0.2", "10.0.0.5"] {
            u.insert(ip(a));
            u.check_invariants();
        }
        assert_eq!(
            runs(&u, Family::V4),
            vec!["10.0.0.1-10.0.0.3", "10.0.0.5-10.0.0.5"]
        );
        u.insert(ip("10.0.0.4"));
        assert_eq!(runs(&u, Family::V4), vec!["10.0.0.1-10.0.0.5"]);
        u.check_invariants();
    }

    #[test]
    fn runs_coalesce_across_255_and_0() {
        let mut u = UsedAddrs::new();
        u.insert(ip("10.0.0.254"));
        u.insert(ip("10.0.1.1"));
        // Gap .255, 1.0: both filtered -> one run.
        assert_eq!(runs(&u, Family::V4), vec!["10.0.0.254-10.0.1.1"]);
        u.check_invariants();
        // Gap of one filtered address.
        let mut u = UsedAddrs::new();
        u.insert(ip("10.0.1.1"));
        u.insert(ip("10.0.0.255"));
        assert_eq!(runs(&u, Family::V4), vec!["10.0.0.255-10.0.1.1"]);
        u.check_invariants();
        // Gap holding an allocatable address: not coalesced.
        let mut u = UsedAddrs::new();
        u.insert(ip("10.0.0.253"));
        u.insert(ip("10.0.1.1"));
        assert_eq!(u.run_count(Family::V4), 2);
        u.check_invariants();
        // IPv6 never coalesces across a gap.
        let mut u = UsedAddrs::new();
        u.insert(ip("fd00::fe"));
        u.insert(ip("fd00::100"));
        assert_eq!(u.run_count(Family::V6), 2);
        u.insert(ip("fd00::ff"));
        assert_eq!(runs(&u, Family::V6), vec!["fd00::fe-fd00::100"]);
    }

    #[test]
    fn remove_splits_and_trims_filtered_ends() {
        let mut u = UsedAddrs::new();
        for a in ["10.0.0.253", "10.0.0.254", "10.0.1.1", "10.0.1.2"] {
            u.insert(ip(a));
        }
        assert_eq!(runs(&u, Family::V4), vec!["10.0.0.253-10.0.1.2"]);
        // Removing 1.1 leaves 1.0 (filtered) and 0.255 next to the left part: trimmed.
        u.remove(ip("10.0.1.1"));
        assert_eq!(
            runs(&u, Family::V4),
            vec!["10.0.0.253-10.0.0.254", "10.0.1.2-10.0.1.2"]
        );
        u.check_invariants();
        // Removing a run end that sits next to filtered addresses.
        u.insert(ip("10.0.1.1"));
        u.remove(ip("10.0.0.254"));
        assert_eq!(
            runs(&u, Family::V4),
            vec!["10.0.0.253-10.0.0.253", "10.0.1.1-10.0.1.2"]
        );
        u.check_invariants();
        // Removing the first address of a run whose next addresses are filtered.
        let mut u = UsedAddrs::new();
        for a in ["10.0.0.254", "10.0.1.1"] {
            u.insert(ip(a));
        }
        u.remove(ip("10.0.0.254"));
        assert_eq!(runs(&u, Family::V4), vec!["10.0.1.1-10.0.1.1"]);
        u.remove(ip("10.0.1.1"));
        assert_eq!(u.run_count(Family::V4), 0);
        u.check_invariants();
    }

    #[test]
    fn used_filtered_addresses_inside_runs() {
        // A user may pin a .255: it is used, the run keeps it.
        let mut u = UsedAddrs::new();
        for a in ["10.0.0.254", "10.0.1.1"] {
            u.insert(ip(a));
        }
        assert!(u.insert(ip("10.0.0.255")));
        assert_eq!(runs(&u, Family::V4), vec!["10.0.0.254-10.0.1.1"]);
        u.check_invariants();
        // Removing it keeps the run: neighbours still separated by filtered addresses only.
        assert!(u.remove(ip("10.0.0.255")));
        assert_eq!(runs(&u, Family::V4), vec!["10.0.0.254-10.0.1.1"]);
        assert!(!u.contains(ip("10.0.0.255")));
        u.check_invariants();
        // A lone used filtered address forms its own run and blocks nothing allocatable.
        let mut u = UsedAddrs::new();
        u.insert(ip("10.0.0.0"));
        let pool = AddressSet::from_ranges(Family::V4, &[(ip("10.0.0.0"), ip("10.0.0.2"))]);
        assert_eq!(
            next_free(&pool, &u, SearchOrder::Ascending),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(u.count_in(&pool), 0);
        assert_eq!(u.iter_in(&pool, SearchOrder::Ascending).count(), 0);
        u.check_invariants();
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut u = UsedAddrs::new();
        for a in [
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
            "::",
            "::1",
            "255.255.255.255",
            "255.255.255.254",
            "0.0.0.0",
            "0.0.0.1",
        ] {
            assert!(u.insert(ip(a)));
            u.check_invariants();
        }
        assert_eq!(u.run_count(Family::V6), 2);
        assert_eq!(u.run_count(Family::V4), 2);
        for a in [
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::",
            "255.255.255.254",
            "0.0.0.1",
        ] {
            assert!(u.remove(ip(a)));
            u.check_invariants();
        }
        assert_eq!(u.len(), 4);
    }

    #[test]
    fn count_in_and_iter_in() {
        let pool = AddressSet::from_ranges(
            Family::V4,
            &[
                (ip("10.0.0.250"), ip("10.0.1.3")),
                (ip("10.0.5.1"), ip("10.0.5.9")),
            ],
        );
        let mut u = UsedAddrs::new();
        for a in [
            "10.0.0.249", // outside
            "10.0.0.251",
            "10.0.0.255", // filtered
            "10.0.1.2",
            "10.0.5.9",
            "10.0.6.1", // outside
            "fd00::1",  // other family
        ] {
            u.insert(ip(a));
        }
        assert_eq!(u.count_in(&pool), 3);
        let asc: Vec<IpAddr> = u.iter_in(&pool, SearchOrder::Ascending).collect();
        assert_eq!(asc, vec![ip("10.0.0.251"), ip("10.0.1.2"), ip("10.0.5.9")]);
        let desc: Vec<IpAddr> = u.iter_in(&pool, SearchOrder::Descending).collect();
        assert_eq!(desc, vec![ip("10.0.5.9"), ip("10.0.1.2"), ip("10.0.0.251")]);
        let v6 = AddressSet::from_ranges(Family::V6, &[(ip("fd00::"), ip("fd00::ff"))]);
        assert_eq!(u.count_in(&v6), 1);
        assert_eq!(
            u.iter_in(&v6, SearchOrder::Descending).collect::<Vec<_>>(),
            vec![ip("fd00::1")]
        );
    }

    #[test]
    fn next_free_jumps_a_coalesced_run() {
        let mut u = UsedAddrs::new();
        for a in ["10.0.0.253", "10.0.0.254", "10.0.1.1"] {
            u.insert(ip(a));
        }
        let pool = AddressSet::from_ranges(Family::V4, &[(ip("10.0.0.253"), ip("10.0.1.5"))]);
        assert_eq!(
            next_free(&pool, &u, SearchOrder::Ascending),
            Some(ip("10.0.1.2"))
        );
        u.remove(ip("10.0.0.254"));
        assert_eq!(
            next_free(&pool, &u, SearchOrder::Ascending),
            Some(ip("10.0.0.254"))
        );
    }
}
