//! What `plan` and `status` show of the addresses never handed out (SPEC 4.9): every address
//! the network uses (nodes, the API endpoint) with what it is and the pools that contain it,
//! every exclusion with where it comes from, and Services already holding a reserved address.

use std::fmt::Write as _;

use serde::Serialize;

use super::table;
use crate::reserved::ReservedAddress;
use crate::state::Allocator;

#[derive(Debug, Default, Serialize)]
pub struct Reserved {
    /// Addresses the network uses, sorted; `pools` lists the pools that would otherwise hand
    /// them out.
    pub addresses: Vec<ReservedAddress>,
    /// Exclusions: ConfigMap keys (sorted), then `--exclude`.
    pub excluded: Vec<Excluded>,
    /// Services holding an address the network uses (never moved; `AddressConflict` Events).
    pub conflicts: Vec<HeldByService>,
}

#[derive(Debug, Serialize)]
pub struct Excluded {
    /// `ConfigMap key exclude-global`, `--exclude`.
    pub source: String,
    /// `10.0.0.1, 10.0.0.8-10.0.0.15`.
    pub addresses: String,
}

#[derive(Debug, Serialize)]
pub struct HeldByService {
    pub service: String,
    pub address: String,
    pub owner: String,
}

/// What `allocator` (configured, with the network loaded) reserves.
pub fn reserved(allocator: &Allocator) -> Reserved {
    Reserved {
        addresses: allocator.reserved_addresses(),
        excluded: allocator
            .config()
            .exclusions()
            .filter(|e| !e.is_empty())
            .map(|e| Excluded {
                source: e.source.clone(),
                addresses: e.to_string(),
            })
            .collect(),
        conflicts: allocator
            .all_reserved_conflicts()
            .into_iter()
            .map(|c| HeldByService {
                service: c.service.to_string(),
                address: c.address.to_string(),
                owner: c.owner,
            })
            .collect(),
    }
}

/// The table of reserved addresses; nothing when there are none.
pub fn reserved_table(out: &mut String, r: &Reserved) {
    if r.addresses.is_empty() && r.excluded.is_empty() {
        return;
    }
    out.push('\n');
    let dash = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    let rows: Vec<[String; 3]> = r
        .addresses
        .iter()
        .map(|a| [a.address.to_string(), a.owner.clone(), dash(&a.pools)])
        .chain(r.excluded.iter().map(|e| {
            [
                e.addresses.clone(),
                format!("excluded by {}", e.source),
                "-".into(),
            ]
        }))
        .collect();
    table(out, ["NEVER HANDED OUT", "WHY", "IN POOLS"], &rows);
    for c in &r.conflicts {
        let _ = writeln!(
            out,
            "warning: Service {} holds {}, which is {} (not moved)",
            c.service, c.address, c.owner
        );
    }
}
