//! Bounds on what reviews can make the allocator hold.
//!
//! Anyone who reaches the webhook port can send a review (unless client certificates are
//! required), and a review that is answered with an address holds that address until the
//! Service shows up or the reservation expires. The quotas bound how many addresses, and how
//! much memory, such reviews can hold at once: in total, per namespace (one namespace flooding
//! leaves the others their share), and in (port, protocol) pairs, which is what a reservation's
//! memory grows with.

use std::collections::HashMap;
use std::time::Duration;

/// Default cap on reservations made for reviews, cluster-wide. A reservation lives from the
/// admission answer until the Service appears in the cache (milliseconds) or the TTL passes, so
/// even a burst of `kubectl apply` keeps far fewer outstanding; 4096 holds a few MiB.
pub const DEFAULT_MAX_RESERVATIONS: usize = 4096;
/// Default cap per namespace, so that one namespace cannot take the whole cluster-wide cap.
pub const DEFAULT_MAX_RESERVATIONS_PER_NAMESPACE: usize = 256;
/// (port, protocol) pairs x addresses a reservation holds without charge: ordinary Services
/// (up to 64 ports, dual-stack) never touch [`MAX_RESERVED_PORT_ENTRIES`], so a flood of
/// Services with huge port lists cannot starve them. What they cost is bounded by the
/// reservation cap: at most 128 sharing-index entries each (~60 MiB for 4096 reservations at
/// worst, ~100 bytes per entry), since holders with more pairs are indexed as one key
/// (`index::MAX_INDEXED_PORTS`).
pub const FREE_PORT_ENTRIES: usize = 128;
/// Cap on the (port, protocol) pairs x addresses that reservations for reviews hold beyond
/// [`FREE_PORT_ENTRIES`] each: their port lists (8 bytes a pair) and the exact clash checks
/// against them (a requested address is compared with every holder's pairs). Three maximal
/// dual-stack Services fit (`service::MAX_PORTS` pairs on two addresses each).
pub const MAX_RESERVED_PORT_ENTRIES: usize = 131_072;
/// Shortest reservation TTL: a reservation must outlive the apiserver's write and the watch
/// event that confirms it.
pub const MIN_RESERVATION_TTL: Duration = Duration::from_secs(1);
/// Longest reservation TTL: an admission that never became a Service (rejected by a later
/// admission step, or forged) keeps its address this long at most.
pub const MAX_RESERVATION_TTL: Duration = Duration::from_secs(3600);
/// Standalone: a review's object holding more addresses than this is not remembered as a
/// holder (no Service holds that many; a forged one would only grow the index).
pub const MAX_HELD_FROM_REVIEW: usize = 8;

/// Caps on what reviews may hold (see the module docs). In standalone mode, where admitted
/// Services stay in the index, `reservations` caps the Services admitted by reviews.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    pub reservations: usize,
    pub per_namespace: usize,
    pub port_entries: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            reservations: DEFAULT_MAX_RESERVATIONS,
            per_namespace: DEFAULT_MAX_RESERVATIONS_PER_NAMESPACE,
            port_entries: MAX_RESERVED_PORT_ENTRIES,
        }
    }
}

impl Quotas {
    pub(super) fn standalone_refusal(&self) -> String {
        format!(
            "{} Services were already admitted by this standalone server (limit {}, \
             --max-reservations)",
            self.reservations, self.reservations
        )
    }
}

/// What a reservation holding `pairs` (port, protocol) pairs on `addresses` addresses is
/// charged against the port budget: what it holds beyond [`FREE_PORT_ENTRIES`].
pub(super) fn charged(pairs: usize, addresses: usize) -> usize {
    (pairs.max(1) * addresses).saturating_sub(FREE_PORT_ENTRIES)
}

/// What counted reservations hold now.
#[derive(Debug, Default)]
pub(super) struct Usage {
    total: usize,
    port_entries: usize,
    per_namespace: HashMap<String, usize, foldhash::fast::RandomState>,
}

impl Usage {
    /// Ok when one more reservation in `namespace` holding `entries` fits; else why not.
    /// `entries` is what it is charged ([`charged`]).
    pub(super) fn admits(&self, q: &Quotas, namespace: &str, entries: usize) -> Result<(), String> {
        let in_ns = self.per_namespace.get(namespace).copied().unwrap_or(0);
        if in_ns >= q.per_namespace {
            return Err(format!(
                "{in_ns} addresses are already held for admissions in namespace {namespace:?} that \
                 have not shown up as Services yet (limit {}, --max-reservations-per-namespace)",
                q.per_namespace
            ));
        }
        if self.total >= q.reservations {
            return Err(format!(
                "{} addresses are already held for admissions that have not shown up as Services \
                 yet (limit {}, --max-reservations)",
                self.total, q.reservations
            ));
        }
        if entries > 0 && self.port_entries + entries > q.port_entries {
            return Err(format!(
                "admissions in flight already hold {} (port, protocol) pairs x addresses beyond \
                 {FREE_PORT_ENTRIES} each, and this one needs {entries} more (limit {})",
                self.port_entries, q.port_entries
            ));
        }
        Ok(())
    }

    pub(super) fn add(&mut self, namespace: &str, entries: usize) {
        self.total += 1;
        self.port_entries += entries;
        *self.per_namespace.entry(namespace.to_string()).or_default() += 1;
    }

    pub(super) fn remove(&mut self, namespace: &str, entries: usize) {
        self.total = self.total.saturating_sub(1);
        self.port_entries = self.port_entries.saturating_sub(entries);
        if let Some(n) = self.per_namespace.get_mut(namespace) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_namespace.remove(namespace);
            }
        }
    }
}
