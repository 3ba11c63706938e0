//! `AddressSet`: a pool of one family as sorted, disjoint, non-adjacent inclusive intervals.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{Family, from_u128, to_u128};

/// A pool of addresses of one family: sorted, disjoint, non-adjacent, inclusive `u128` intervals
/// (IPv4 in the low 32 bits). Size in memory depends on the number of intervals, never on the
/// number of addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressSet {
    family: Family,
    intervals: Vec<(u128, u128)>,
}

impl AddressSet {
    /// An empty pool of `family`.
    pub fn empty(family: Family) -> AddressSet {
        AddressSet {
            family,
            intervals: Vec::new(),
        }
    }

    /// CIDRs of `family` (entries of the other family are ignored). Host bits are masked,
    /// overlapping/adjacent prefixes merged. If `skip_end`, each merged interval is decomposed into
    /// minimal CIDR prefixes and the first and last address of every IPv4 prefix shorter than /31
    /// is dropped (no effect on /31, /32 or IPv6), like the peer's `skip-end-ips-in-cidr`.
    pub fn from_cidrs(family: Family, nets: &[IpNet], skip_end: bool) -> AddressSet {
        let raw = nets
            .iter()
            .filter(|n| Family::of(n.addr()) == family)
            .map(|n| {
                let n = n.trunc();
                (to_u128(n.network()), to_u128(n.broadcast()))
            })
            .collect();
        let merged = normalize(raw);
        if !skip_end || family == Family::V6 {
            return AddressSet {
                family,
                intervals: merged,
            };
        }
        let mut trimmed = Vec::with_capacity(merged.len());
        for (s, e) in merged {
            for (ps, pe, len) in prefixes(family, s, e) {
                if len < 31 {
                    // Prefixes shorter than /31 have at least 4 addresses, so this never inverts.
                    trimmed.push((ps + 1, pe - 1));
                } else {
                    trimmed.push((ps, pe));
                }
            }
        }
        // A /31 or /32 next to another kept prefix may now be adjacent to it: merge again.
        AddressSet {
            family,
            intervals: normalize(trimmed),
        }
    }

    /// Inclusive ranges of `family`; union of all. Ranges of the other family, mixed-family or
    /// reversed ranges are ignored (the caller validates them before).
    pub fn from_ranges(family: Family, ranges: &[(IpAddr, IpAddr)]) -> AddressSet {
        let raw = ranges
            .iter()
            .filter(|(a, b)| Family::of(*a) == family && Family::of(*b) == family)
            .map(|&(a, b)| (to_u128(a), to_u128(b)))
            .filter(|(a, b)| a <= b)
            .collect();
        AddressSet {
            family,
            intervals: normalize(raw),
        }
    }

    /// The family of every address of the pool.
    pub fn family(&self) -> Family {
        self.family
    }

    /// True when the pool holds no address at all (filtered ones included).
    pub fn is_empty(&self) -> bool {
        self.intervals.is_empty()
    }

    /// True when `ip` lies inside an interval (an address of the other family: false).
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family && self.contains_value(to_u128(ip))
    }

    /// True when `ip` is in the pool and may be handed out (not an IPv4 `.0`/`.255`).
    pub fn is_allocatable(&self, ip: IpAddr) -> bool {
        self.contains(ip) && !super::is_filtered(ip)
    }

    /// Number of allocatable addresses (IPv4 `.0`/`.255` excluded), computed per interval.
    /// Saturates at `u128::MAX` (only reachable with the whole IPv6 space, 2^128 addresses).
    pub fn capacity(&self) -> u128 {
        self.intervals.iter().fold(0u128, |acc, &(s, e)| {
            let filtered = match self.family {
                Family::V4 => filtered_upto(e) - if s == 0 { 0 } else { filtered_upto(s - 1) },
                Family::V6 => 0,
            };
            // (e - s) + 1 overflows only for ::/0; saturate there.
            let len = (e - s).saturating_add(1);
            acc.saturating_add(len - filtered)
        })
    }

    /// Number of addresses, IPv4 `.0`/`.255` included (for pools that hand them out).
    /// Saturates at `u128::MAX`.
    pub fn size(&self) -> u128 {
        self.intervals.iter().fold(0u128, |acc, &(s, e)| {
            acc.saturating_add((e - s).saturating_add(1))
        })
    }

    /// The intervals as inclusive address pairs, ascending.
    pub fn intervals(&self) -> impl Iterator<Item = (IpAddr, IpAddr)> + '_ {
        self.intervals
            .iter()
            .map(|&(s, e)| (from_u128(self.family, s), from_u128(self.family, e)))
    }

    /// The addresses of `self` that are not in `other` (an empty set when `other` covers
    /// everything; `self` when the families differ). O(a + b) intervals: exclusions are
    /// subtracted from a pool without ever walking addresses.
    pub fn minus(&self, other: &AddressSet) -> AddressSet {
        if other.family != self.family || other.intervals.is_empty() {
            return self.clone();
        }
        let mut out = Vec::with_capacity(self.intervals.len());
        let mut cut = other.intervals.iter().peekable();
        for &(s, e) in &self.intervals {
            let mut start = s;
            // Cuts that end before this interval can no longer matter (both lists ascend).
            while cut.next_if(|&&(_, ce)| ce < start).is_some() {}
            let mut open = true;
            for &(cs, ce) in cut.clone() {
                if cs > e {
                    break;
                }
                if cs > start {
                    out.push((start, cs - 1));
                }
                if ce >= e {
                    open = false;
                    break;
                }
                start = ce + 1;
            }
            if open {
                out.push((start, e));
            }
        }
        AddressSet {
            family: self.family,
            intervals: out,
        }
    }

    /// Every address of `self` or `other` (same family; `self` unchanged otherwise).
    pub fn union(&self, other: &AddressSet) -> AddressSet {
        if other.family != self.family {
            return self.clone();
        }
        let mut all = self.intervals.clone();
        all.extend_from_slice(&other.intervals);
        AddressSet {
            family: self.family,
            intervals: normalize(all),
        }
    }

    /// The intervals in numeric form, ascending.
    pub(crate) fn raw_intervals(&self) -> &[(u128, u128)] {
        &self.intervals
    }

    fn contains_value(&self, v: u128) -> bool {
        let i = self.intervals.partition_point(|&(s, _)| s <= v);
        i > 0 && self.intervals[i - 1].1 >= v
    }
}

impl fmt::Display for AddressSet {
    /// Compact form for messages: "10.0.0.1-10.0.0.254, 10.0.2.5"; "(empty)" for no address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.intervals.is_empty() {
            return f.write_str("(empty)");
        }
        for (i, (s, e)) in self.intervals().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if s == e {
                write!(f, "{s}")?;
            } else {
                write!(f, "{s}-{e}")?;
            }
        }
        Ok(())
    }
}

/// Sorts and merges overlapping or adjacent inclusive intervals.
fn normalize(mut v: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    v.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            // saturating_add: an interval ending at u128::MAX absorbs everything after it.
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Number of IPv4 `.0`/`.255` values in `[0, n]`.
fn filtered_upto(n: u128) -> u128 {
    let count = n + 1; // n <= u32::MAX for IPv4, no overflow
    2 * (count / 256) + u128::from(!count.is_multiple_of(256))
}

/// Minimal CIDR decomposition of `[s, e]`: (first, last, prefix length) per prefix, ascending.
fn prefixes(family: Family, s: u128, e: u128) -> Vec<(u128, u128, u32)> {
    let bits = family.bits();
    let mut out = Vec::new();
    let mut c = s;
    loop {
        // Largest block aligned at `c` ...
        let mut k = if c == 0 {
            bits
        } else {
            c.trailing_zeros().min(bits)
        };
        // ... that does not pass `e`: block_last = c + 2^k - 1 <= e.
        while k > 0 && block_last(c, k) > e {
            k -= 1;
        }
        let last = block_last(c, k);
        out.push((c, last, bits - k));
        if last >= e {
            return out;
        }
        c = last + 1;
    }
}

/// `c + 2^k - 1`, saturating (k may be 128 for the whole IPv6 space).
fn block_last(c: u128, k: u32) -> u128 {
    let span = if k >= 128 {
        u128::MAX
    } else {
        (1u128 << k) - 1
    };
    c.saturating_add(span)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::is_filtered_value;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(family: Family, list: &[&str], skip_end: bool) -> AddressSet {
        let nets: Vec<IpNet> = list.iter().map(|s| s.parse().unwrap()).collect();
        AddressSet::from_cidrs(family, &nets, skip_end)
    }

    #[test]
    fn host_bits_are_masked() {
        let s = cidrs(Family::V4, &["192.168.0.210/29"], false);
        assert_eq!(s.to_string(), "192.168.0.208-192.168.0.215");
    }

    #[test]
    fn overlapping_and_adjacent_cidrs_merge() {
        let s = cidrs(
            Family::V4,
            &[
                "10.0.0.128/25",
                "10.0.0.0/25",
                "10.0.0.64/26",
                "10.0.5.0/24",
            ],
            false,
        );
        assert_eq!(s.to_string(), "10.0.0.0-10.0.0.255, 10.0.5.0-10.0.5.255");
        assert_eq!(s.intervals().count(), 2);
    }

    #[test]
    fn other_family_entries_are_ignored() {
        let s = cidrs(Family::V4, &["10.0.0.0/30", "fd00::/120"], false);
        assert_eq!(s.to_string(), "10.0.0.0-10.0.0.3");
        let s = cidrs(Family::V6, &["10.0.0.0/30", "fd00::/126"], false);
        assert_eq!(s.to_string(), "fd00::-fd00::3");
    }

    #[test]
    fn skip_end_on_merged_prefix() {
        let s = cidrs(Family::V4, &["10.0.0.0/25", "10.0.0.128/25"], true);
        assert_eq!(s.to_string(), "10.0.0.1-10.0.0.254");
    }

    #[test]
    fn skip_end_keeps_slash31_and_slash32() {
        let s = cidrs(Family::V4, &["10.0.0.4/31"], true);
        assert_eq!(s.to_string(), "10.0.0.4-10.0.0.5");
        let s = cidrs(Family::V4, &["10.0.0.7/32"], true);
        assert_eq!(s.to_string(), "10.0.0.7");
        let s = cidrs(Family::V4, &["10.0.0.4/30"], true);
        assert_eq!(s.to_string(), "10.0.0.5-10.0.0.6");
    }

    #[test]
    fn skip_end_per_minimal_prefix_of_merged_interval() {
        // .0/30 + .4/31 + .6/32 merge into .0-.6 = /30 (.0-.3) + /31 (.4-.5) + /32 (.6).
        let s = cidrs(
            Family::V4,
            &["10.0.0.0/30", "10.0.0.4/31", "10.0.0.6/32"],
            true,
        );
        assert_eq!(s.to_string(), "10.0.0.1-10.0.0.2, 10.0.0.4-10.0.0.6");
        // .0/24 + .1.0/25 merge into .0.0-.1.127 = /24 + /25, both trimmed.
        let s = cidrs(Family::V4, &["10.0.0.0/24", "10.0.1.0/25"], true);
        assert_eq!(s.to_string(), "10.0.0.1-10.0.0.254, 10.0.1.1-10.0.1.126");
    }

    #[test]
    fn skip_end_does_not_touch_ipv6() {
        let s = cidrs(Family::V6, &["fd00::/126"], true);
        assert_eq!(s.to_string(), "fd00::-fd00::3");
    }

    #[test]
    fn skip_end_on_whole_ipv4_space() {
        let s = cidrs(Family::V4, &["0.0.0.0/0"], true);
        assert_eq!(s.to_string(), "0.0.0.1-255.255.255.254");
    }

    #[test]
    fn ranges_union() {
        let s = AddressSet::from_ranges(
            Family::V4,
            &[
                (ip("10.0.0.10"), ip("10.0.0.20")),
                (ip("10.0.0.21"), ip("10.0.0.25")),
                (ip("10.0.0.5"), ip("10.0.0.12")),
                (ip("10.0.2.0"), ip("10.0.2.9")),
                (ip("10.0.3.7"), ip("10.0.3.7")),
            ],
        );
        assert_eq!(
            s.to_string(),
            "10.0.0.5-10.0.0.25, 10.0.2.0-10.0.2.9, 10.0.3.7"
        );
    }

    #[test]
    fn ranges_of_wrong_family_or_reversed_are_ignored() {
        let s = AddressSet::from_ranges(
            Family::V4,
            &[
                (ip("10.0.0.9"), ip("10.0.0.1")),
                (ip("10.0.0.1"), ip("fd00::1")),
                (ip("fd00::1"), ip("fd00::2")),
            ],
        );
        assert!(s.is_empty());
        assert_eq!(s.to_string(), "(empty)");
        assert_eq!(s.capacity(), 0);
    }

    #[test]
    fn contains_and_allocatable() {
        let s = AddressSet::from_ranges(
            Family::V4,
            &[
                (ip("10.0.0.250"), ip("10.0.1.5")),
                (ip("10.0.3.1"), ip("10.0.3.1")),
            ],
        );
        assert!(s.contains(ip("10.0.0.250")));
        assert!(s.contains(ip("10.0.1.5")));
        assert!(s.contains(ip("10.0.0.255")));
        assert!(!s.is_allocatable(ip("10.0.0.255")));
        assert!(!s.is_allocatable(ip("10.0.1.0")));
        assert!(s.is_allocatable(ip("10.0.1.1")));
        assert!(!s.contains(ip("10.0.0.249")));
        assert!(!s.contains(ip("10.0.1.6")));
        assert!(!s.contains(ip("10.0.3.0")));
        assert!(s.contains(ip("10.0.3.1")));
        assert!(!s.contains(ip("10.0.3.2")));
        assert!(!s.contains(ip("::a00:fa")));
        assert_eq!(s.family(), Family::V4);
    }

    #[test]
    fn capacity_is_arithmetic() {
        // /24: 256 - .0 - .255
        assert_eq!(cidrs(Family::V4, &["10.0.0.0/24"], false).capacity(), 254);
        // skip-end removes .0/.255 which are filtered anyway
        assert_eq!(cidrs(Family::V4, &["10.0.0.0/24"], true).capacity(), 254);
        // /16: 256 blocks of 254
        assert_eq!(
            cidrs(Family::V4, &["10.1.0.0/16"], false).capacity(),
            256 * 254
        );
        // /8 and the whole space
        assert_eq!(
            cidrs(Family::V4, &["10.0.0.0/8"], false).capacity(),
            65536 * 254
        );
        assert_eq!(
            cidrs(Family::V4, &["0.0.0.0/0"], false).capacity(),
            (1u128 << 24) * 254
        );
        // peer example range: .253, .254, 1.1, 1.2
        let r = AddressSet::from_ranges(Family::V4, &[(ip("10.0.0.253"), ip("10.0.1.2"))]);
        assert_eq!(r.capacity(), 4);
        // /30 with .0: 3 allocatable; the /30 at the top of a block: .252-.255 -> 3
        assert_eq!(cidrs(Family::V4, &["10.0.0.0/30"], false).capacity(), 3);
        assert_eq!(cidrs(Family::V4, &["10.0.0.252/30"], false).capacity(), 3);
        assert_eq!(cidrs(Family::V4, &["10.0.0.4/30"], false).capacity(), 4);
        // IPv6: nothing filtered
        assert_eq!(
            cidrs(Family::V6, &["fd00::/64"], false).capacity(),
            1u128 << 64
        );
        assert_eq!(cidrs(Family::V6, &["fd00::/126"], false).capacity(), 4);
        assert_eq!(cidrs(Family::V6, &["::/0"], false).capacity(), u128::MAX);
    }

    #[test]
    fn capacity_matches_a_count() {
        let s = AddressSet::from_ranges(
            Family::V4,
            &[
                (ip("0.0.0.0"), ip("0.0.2.3")),
                (ip("10.0.0.200"), ip("10.0.3.17")),
                (ip("255.255.254.250"), ip("255.255.255.255")),
            ],
        );
        let counted = s
            .raw_intervals()
            .iter()
            .flat_map(|&(a, b)| a..=b)
            .filter(|&v| !is_filtered_value(Family::V4, v))
            .count();
        assert_eq!(s.capacity(), counted as u128);
    }

    #[test]
    fn ipv6_top_of_space() {
        let s = AddressSet::from_ranges(
            Family::V6,
            &[
                (
                    ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0"),
                    ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
                ),
                (
                    ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00"),
                    ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff5"),
                ),
            ],
        );
        assert_eq!(s.intervals().count(), 1);
        assert_eq!(s.capacity(), 256);
        assert!(s.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
    }

    #[test]
    fn minimal_prefix_decomposition() {
        let p = prefixes(Family::V4, 0, u128::from(u32::MAX));
        assert_eq!(p, vec![(0, u128::from(u32::MAX), 0)]);
        let p = prefixes(Family::V6, 0, u128::MAX);
        assert_eq!(p, vec![(0, u128::MAX, 0)]);
        let p = prefixes(Family::V4, 1, 6);
        assert_eq!(p, vec![(1, 1, 32), (2, 3, 31), (4, 5, 31), (6, 6, 32)]);
    }

    #[test]
    fn minus_cuts_intervals_and_matches_a_count() {
        let pool = AddressSet::from_ranges(
            Family::V4,
            &[
                (ip("10.0.0.0"), ip("10.0.0.20")),
                (ip("10.0.0.30"), ip("10.0.0.40")),
                (ip("10.0.1.0"), ip("10.0.1.3")),
            ],
        );
        let cut = AddressSet::from_ranges(
            Family::V4,
            &[
                (ip("9.0.0.0"), ip("10.0.0.2")),
                (ip("10.0.0.5"), ip("10.0.0.5")),
                (ip("10.0.0.18"), ip("10.0.0.31")),
                (ip("10.0.0.40"), ip("10.0.0.40")),
                (ip("10.0.1.0"), ip("10.0.1.3")),
            ],
        );
        let left = pool.minus(&cut);
        assert_eq!(
            left.to_string(),
            "10.0.0.3-10.0.0.4, 10.0.0.6-10.0.0.17, 10.0.0.32-10.0.0.39"
        );
        // Address by address: in the pool and not cut.
        for v in to_u128(ip("9.255.255.0"))..=to_u128(ip("10.0.1.10")) {
            let a = from_u128(Family::V4, v);
            assert_eq!(
                left.contains(a),
                pool.contains(a) && !cut.contains(a),
                "{a}"
            );
        }
        assert_eq!(pool.minus(&pool).to_string(), "(empty)");
        assert_eq!(pool.minus(&AddressSet::empty(Family::V4)), pool);
        // Another family cuts nothing; the top of IPv6 does not overflow.
        assert_eq!(pool.minus(&cidrs(Family::V6, &["::/0"], false)), pool);
        let top = cidrs(Family::V6, &["ffff::/16"], false);
        let cut = AddressSet::from_ranges(
            Family::V6,
            &[(ip("ffff::5"), ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))],
        );
        assert_eq!(top.minus(&cut).to_string(), "ffff::-ffff::4");
    }

    #[test]
    fn union_merges() {
        let a = AddressSet::from_ranges(Family::V4, &[(ip("10.0.0.1"), ip("10.0.0.3"))]);
        let b = AddressSet::from_ranges(Family::V4, &[(ip("10.0.0.4"), ip("10.0.0.9"))]);
        assert_eq!(a.union(&b).to_string(), "10.0.0.1-10.0.0.9");
        assert_eq!(a.union(&cidrs(Family::V6, &["fd00::/64"], false)), a);
    }

    #[test]
    fn display_single_address_and_ipv6() {
        let s = AddressSet::from_ranges(
            Family::V6,
            &[
                (ip("fd00::1"), ip("fd00::1")),
                (ip("fd00::10"), ip("fd00::20")),
            ],
        );
        assert_eq!(s.to_string(), "fd00::1, fd00::10-fd00::20");
    }
}
