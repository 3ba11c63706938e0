//! Addresses the network already uses (SPEC 4.9), as the decision sees them: reserved holders
//! in the index (nodes, the API endpoint) refuse a pinned address naming their owner, and
//! exclusions are subtracted from the pool before anything is picked from it.

use std::borrow::Cow;
use std::net::IpAddr;

use super::View;
use crate::config::Pool;
use crate::index::HolderId;
use crate::ipam::{AddressSet, Family};

/// Why `ip` can never be the address of a Service of `namespace`: it is reserved (what it is)
/// or excluded (by what). `None` when it may be used.
pub(super) fn refusal(namespace: &str, ip: IpAddr, view: &View<'_>) -> Option<String> {
    let reserved = view.index.holders(ip).iter().find_map(|h| match &h.id {
        HolderId::Reserved(owner) => Some(owner),
        _ => None,
    });
    if let Some(owner) = reserved {
        return Some(format!(
            "address {ip} is {owner}, which the network already uses"
        ));
    }
    let exclusion = view.config.excluded(namespace, ip)?;
    Some(format!("address {ip} is excluded by {}", exclusion.source))
}

/// `set` (of `pool`, for Services of `namespace`) without its excluded addresses; an error
/// naming the exclusions when nothing is left.
pub(super) fn usable<'a>(
    pool: &Pool,
    family: Family,
    namespace: &str,
    set: &'a AddressSet,
    view: &View<'_>,
) -> Result<Cow<'a, AddressSet>, String> {
    let usable = view.config.without_excluded(namespace, set);
    if usable.is_empty() {
        let sources: Vec<&str> = view
            .config
            .exclusions_for(namespace)
            .map(|e| e.source.as_str())
            .collect();
        return Err(format!(
            "pool {} for namespace {namespace:?}: every {family} address is excluded ({})",
            pool.key,
            sources.join(", ")
        ));
    }
    Ok(usable)
}
