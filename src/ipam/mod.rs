//! Pure address arithmetic: pools (`AddressSet`), used addresses (`UsedAddrs`) and the search for
//! the next free address. No I/O, no Kubernetes types.
//!
//! Every address is a `u128` inside its family (IPv4 uses the low 32 bits), so a `/8` or an IPv6
//! `/64` costs the same as a `/29`, and `next_free` never walks addresses one by one.

pub mod keyed;
pub mod set;
pub mod used;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use keyed::KeyedRuns;
pub use set::AddressSet;
pub use used::UsedAddrs;

/// An IP address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Kubernetes spelling (`ipFamilies`): "IPv4" / "IPv6".
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// Parses the Kubernetes spelling ("IPv4" / "IPv6", exact).
    pub fn from_k8s(s: &str) -> Option<Family> {
        match s {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }

    /// Largest address value of the family as a `u128`.
    pub fn max_value(self) -> u128 {
        match self {
            Family::V4 => u128::from(u32::MAX),
            Family::V6 => u128::MAX,
        }
    }

    /// Address width in bits.
    pub fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Direction in which a pool is searched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SearchOrder {
    /// Lowest address first.
    #[default]
    Ascending,
    /// Highest address first (`search-order: desc`).
    Descending,
}

/// The address as a number inside its family (IPv4 in the low 32 bits).
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Inverse of [`to_u128`]. For IPv4 only the low 32 bits are used (values come from this module,
/// which never produces larger ones).
pub fn from_u128(family: Family, v: u128) -> IpAddr {
    match family {
        // Truncation is intended: IPv4 values are always <= u32::MAX here.
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// Peer rule: an IPv4 address whose last octet is 0 or 255 is never handed out (any pool).
/// IPv6 is never filtered.
pub fn is_filtered(ip: IpAddr) -> bool {
    is_filtered_value(Family::of(ip), to_u128(ip))
}

/// [`is_filtered`] on the numeric form.
pub(crate) fn is_filtered_value(family: Family, v: u128) -> bool {
    family == Family::V4 && matches!(v & 0xff, 0 | 0xff)
}

/// First allocatable address of `pool` not in `used`, in search order (ascending: lowest first;
/// descending: highest first). Cost: O(log n) per pool interval, whatever the number of used
/// addresses (runs of used addresses are jumped over, see `UsedAddrs`).
pub fn next_free(pool: &AddressSet, used: &UsedAddrs, order: SearchOrder) -> Option<IpAddr> {
    let family = pool.family();
    let found = match order {
        SearchOrder::Ascending => pool
            .raw_intervals()
            .iter()
            .find_map(|&(s, e)| next_free_up(family, used, s, e)),
        SearchOrder::Descending => pool
            .raw_intervals()
            .iter()
            .rev()
            .find_map(|&(s, e)| next_free_down(family, used, s, e)),
    };
    found.map(|v| from_u128(family, v))
}

/// [`next_free`] for a pool that also hands out IPv4 `.0`/`.255` addresses (a pool object with
/// `avoidBuggyIPs: false`). The runs of `used` jump over those addresses as if taken, so the ones
/// before the first free ordinary address are looked at one by one: every one passed is a used
/// address, so the cost is O((u + 1) log n) for the u used `.0`/`.255` addresses passed.
pub fn next_free_any(pool: &AddressSet, used: &UsedAddrs, order: SearchOrder) -> Option<IpAddr> {
    let family = pool.family();
    if family == Family::V6 {
        return next_free(pool, used, order);
    }
    let free_filtered =
        |v: u128| is_filtered_value(family, v) && !used.contains(from_u128(family, v));
    let found = match order {
        SearchOrder::Ascending => pool.raw_intervals().iter().find_map(|&(s, e)| {
            let ordinary = next_free_up(family, used, s, e);
            let filtered = filtered_values_up(s, ordinary.unwrap_or(e)).find(|&v| free_filtered(v));
            filtered.or(ordinary)
        }),
        SearchOrder::Descending => pool.raw_intervals().iter().rev().find_map(|&(s, e)| {
            let ordinary = next_free_down(family, used, s, e);
            let filtered =
                filtered_values_down(ordinary.unwrap_or(s), e).find(|&v| free_filtered(v));
            filtered.or(ordinary)
        }),
    };
    found.map(|v| from_u128(family, v))
}

/// The IPv4 `.0`/`.255` values in `[s, e]`, ascending.
fn filtered_values_up(s: u128, e: u128) -> impl Iterator<Item = u128> {
    let base = s & !0xff;
    (0u128..)
        .map(move |k| base + (k / 2) * 256 + if k % 2 == 0 { 0 } else { 0xff })
        .skip_while(move |&v| v < s)
        .take_while(move |&v| v <= e)
}

/// The IPv4 `.0`/`.255` values in `[s, e]`, descending.
fn filtered_values_down(s: u128, e: u128) -> impl Iterator<Item = u128> {
    let base = e | 0xff;
    (0u128..)
        .map_while(move |k| {
            let block = (k / 2) * 256;
            let top = base.checked_sub(block)?;
            if k % 2 == 0 {
                Some(top)
            } else {
                top.checked_sub(0xff)
            }
        })
        .skip_while(move |&v| v > e)
        .take_while(move |&v| v >= s)
}

/// Lowest free, allocatable address in `[s, e]`.
fn next_free_up(family: Family, used: &UsedAddrs, s: u128, e: u128) -> Option<u128> {
    let mut c = s;
    loop {
        if is_filtered_value(family, c) {
            if c >= e {
                return None;
            }
            c += 1;
        } else if let Some((_, run_end)) = used.run_containing(family, c) {
            // `run_end >= e` also guards `run_end + 1` against overflow at the top of IPv6.
            if run_end >= e {
                return None;
            }
            c = run_end + 1;
        } else {
            return Some(c);
        }
    }
}

/// Highest free, allocatable address in `[s, e]` (mirror of `next_free_up`).
fn next_free_down(family: Family, used: &UsedAddrs, s: u128, e: u128) -> Option<u128> {
    let mut c = e;
    loop {
        if is_filtered_value(family, c) {
            if c <= s {
                return None;
            }
            c -= 1;
        } else if let Some((run_start, _)) = used.run_containing(family, c) {
            if run_start <= s {
                return None;
            }
            c = run_start - 1;
        } else {
            return Some(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(family: Family, list: &[&str], skip_end: bool) -> AddressSet {
        let nets: Vec<IpNet> = list.iter().map(|s| s.parse().unwrap()).collect();
        AddressSet::from_cidrs(family, &nets, skip_end)
    }

    fn range(a: &str, b: &str) -> AddressSet {
        AddressSet::from_ranges(Family::of(ip(a)), &[(ip(a), ip(b))])
    }

    /// Allocates until exhaustion, returning the addresses in the order handed out.
    fn drain(pool: &AddressSet, used: &mut UsedAddrs, order: SearchOrder) -> Vec<IpAddr> {
        let mut out = Vec::new();
        while let Some(a) = next_free(pool, used, order) {
            assert!(used.insert(a), "{a} handed out twice");
            out.push(a);
        }
        out
    }

    #[test]
    fn family_names() {
        assert_eq!(Family::of(ip("1.2.3.4")), Family::V4);
        assert_eq!(Family::of(ip("::1")), Family::V6);
        assert_eq!(Family::V4.to_string(), "IPv4");
        assert_eq!(Family::V6.as_str(), "IPv6");
        assert_eq!(Family::from_k8s("IPv6"), Some(Family::V6));
        assert_eq!(Family::from_k8s("IPv4"), Some(Family::V4));
        assert_eq!(Family::from_k8s("ipv4"), None);
        assert_eq!(SearchOrder::default(), SearchOrder::Ascending);
    }

    #[test]
    fn filtered_addresses() {
        assert!(is_filtered(ip("10.0.0.0")));
        assert!(is_filtered(ip("10.0.0.255")));
        assert!(is_filtered(ip("0.0.0.0")));
        assert!(is_filtered(ip("255.255.255.255")));
        assert!(!is_filtered(ip("10.0.0.1")));
        assert!(!is_filtered(ip("10.0.0.254")));
        assert!(!is_filtered(ip("fd00::")));
        assert!(!is_filtered(ip("fd00::ff")));
    }

    #[test]
    fn peer_range_example_crosses_octet_boundary() {
        let pool = range("10.0.0.253", "10.0.1.2");
        let mut used = UsedAddrs::new();
        let got = drain(&pool, &mut used, SearchOrder::Ascending);
        let want: Vec<IpAddr> = ["10.0.0.253", "10.0.0.254", "10.0.1.1", "10.0.1.2"]
            .iter()
            .map(|s| ip(s))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn dot_255_in_a_slash16_is_skipped() {
        let pool = cidrs(Family::V4, &["10.1.0.0/16"], false);
        let mut used = UsedAddrs::new();
        for i in 1..=254u8 {
            used.insert(IpAddr::V4(Ipv4Addr::new(10, 1, 0, i)));
        }
        assert_eq!(
            next_free(&pool, &used, SearchOrder::Ascending),
            Some(ip("10.1.1.1"))
        );
    }

    #[test]
    fn ipv6_first_address_is_handed_out() {
        let pool = cidrs(Family::V6, &["fd00::/126"], false);
        let mut used = UsedAddrs::new();
        let got = drain(&pool, &mut used, SearchOrder::Ascending);
        assert_eq!(
            got,
            vec![ip("fd00::"), ip("fd00::1"), ip("fd00::2"), ip("fd00::3")]
        );
    }

    #[test]
    fn descending_order_and_exhaustion() {
        let pool = range("10.0.0.253", "10.0.1.2");
        let mut used = UsedAddrs::new();
        let got = drain(&pool, &mut used, SearchOrder::Descending);
        let want: Vec<IpAddr> = ["10.0.1.2", "10.0.1.1", "10.0.0.254", "10.0.0.253"]
            .iter()
            .map(|s| ip(s))
            .collect();
        assert_eq!(got, want);
        assert_eq!(next_free(&pool, &used, SearchOrder::Descending), None);
        assert_eq!(next_free(&pool, &used, SearchOrder::Ascending), None);
    }

    #[test]
    fn multiple_intervals_searched_in_order() {
        let pool = AddressSet::from_ranges(
            Family::V4,
            &[
                (ip("10.0.2.1"), ip("10.0.2.2")),
                (ip("10.0.0.1"), ip("10.0.0.2")),
            ],
        );
        let mut used = UsedAddrs::new();
        let asc = drain(&pool, &mut used.clone(), SearchOrder::Ascending);
        assert_eq!(
            asc,
            vec![
                ip("10.0.0.1"),
                ip("10.0.0.2"),
                ip("10.0.2.1"),
                ip("10.0.2.2")
            ]
        );
        used.insert(ip("10.0.2.2"));
        assert_eq!(
            next_free(&pool, &used, SearchOrder::Descending),
            Some(ip("10.0.2.1"))
        );
    }

    #[test]
    fn exhausted_pool_returns_none_and_remove_refrees() {
        let pool = cidrs(Family::V4, &["192.168.0.210/29"], false);
        let mut used = UsedAddrs::new();
        let got = drain(&pool, &mut used, SearchOrder::Ascending);
        assert_eq!(got.len(), 8);
        assert_eq!(got[0], ip("192.168.0.208"));
        assert_eq!(next_free(&pool, &used, SearchOrder::Ascending), None);
        assert!(used.remove(ip("192.168.0.212")));
        assert_eq!(
            next_free(&pool, &used, SearchOrder::Ascending),
            Some(ip("192.168.0.212"))
        );
        assert_eq!(
            next_free(&pool, &used, SearchOrder::Descending),
            Some(ip("192.168.0.212"))
        );
    }

    #[test]
    fn used_outside_pool_is_ignored() {
        let pool = range("10.0.0.5", "10.0.0.6");
        let mut used = UsedAddrs::new();
        used.insert(ip("10.0.0.4"));
        used.insert(ip("10.0.0.7"));
        used.insert(ip("fd00::5"));
        assert_eq!(
            next_free(&pool, &used, SearchOrder::Ascending),
            Some(ip("10.0.0.5"))
        );
        assert_eq!(
            next_free(&pool, &used, SearchOrder::Descending),
            Some(ip("10.0.0.6"))
        );
    }

    #[test]
    fn edges_of_the_address_spaces() {
        // IPv4: the whole space; the first and last addresses are filtered.
        let all4 = cidrs(Family::V4, &["0.0.0.0/0"], false);
        let mut used = UsedAddrs::new();
        assert_eq!(
            next_free(&all4, &used, SearchOrder::Ascending),
            Some(ip("0.0.0.1"))
        );
        assert_eq!(
            next_free(&all4, &used, SearchOrder::Descending),
            Some(ip("255.255.255.254"))
        );
        used.insert(ip("255.255.255.254"));
        assert_eq!(
            next_free(&all4, &used, SearchOrder::Descending),
            Some(ip("255.255.255.253"))
        );

        // IPv6: the top of the space, used up to the last address.
        let top = range(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        );
        let mut used = UsedAddrs::new();
        let got = drain(&top, &mut used, SearchOrder::Ascending);
        assert_eq!(got.len(), 3);
        assert_eq!(next_free(&top, &used, SearchOrder::Ascending), None);
        assert_eq!(next_free(&top, &used, SearchOrder::Descending), None);
        let all6 = cidrs(Family::V6, &["::/0"], false);
        assert_eq!(
            next_free(&all6, &used, SearchOrder::Ascending),
            Some(ip("::"))
        );
        assert_eq!(
            next_free(&all6, &used, SearchOrder::Descending),
            Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc"))
        );
        let bottom = range("::", "::1");
        let mut used = UsedAddrs::new();
        assert_eq!(drain(&bottom, &mut used, SearchOrder::Descending).len(), 2);
        assert_eq!(next_free(&bottom, &used, SearchOrder::Descending), None);
    }

    #[test]
    fn only_filtered_addresses_is_exhausted() {
        let pool = range("10.0.0.255", "10.0.1.0");
        let used = UsedAddrs::new();
        assert_eq!(pool.capacity(), 0);
        assert_eq!(next_free(&pool, &used, SearchOrder::Ascending), None);
        assert_eq!(next_free(&pool, &used, SearchOrder::Descending), None);
    }

    #[test]
    fn large_pool_with_contiguous_used_block_jumps() {
        let pool = cidrs(Family::V4, &["10.0.0.0/8"], false);
        let mut used = UsedAddrs::new();
        // 10.0.0.1 .. 10.3.255.254, every allocatable address: one run.
        let mut n = 0;
        for v in to_u128(ip("10.0.0.1"))..=to_u128(ip("10.3.255.254")) {
            if !is_filtered_value(Family::V4, v) {
                used.insert(from_u128(Family::V4, v));
                n += 1;
            }
        }
        assert_eq!(used.len(), n);
        assert_eq!(used.run_count(Family::V4), 1);
        assert_eq!(
            next_free(&pool, &used, SearchOrder::Ascending),
            Some(ip("10.4.0.1"))
        );
    }
}
