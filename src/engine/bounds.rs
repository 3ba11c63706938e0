//! Bounds on what a Service we handle may carry, checked before any decision (and before the
//! allocator lock): nothing a request carries makes a decision scan something unbounded.

use std::net::IpAddr;

use super::Options;
use crate::ipam::Family;
use crate::service::{
    LB_IPS_ANNOTATION, MAX_NAME_LEN, MAX_NAMESPACE_LEN, MAX_PORTS, RequestSource, SvcInfo,
    normalized_ports,
};

/// Entries a requested address list may have: a Service has at most one address per family,
/// so two (dual-stack). Checked before anything else reads the list.
pub const MAX_REQUESTED_ENTRIES: usize = 2;
/// Longest requested address list: two DNS names of the longest legal length (253) and a
/// separator fit with room to spare; anything longer cannot be valid and is refused unsplit.
pub const MAX_REQUESTED_LEN: usize = 2 * 253 + 16;
/// User input quoted in a message is cut to this many characters (messages stay readable, and
/// an answer never carries back a large part of what it was sent).
pub const MAX_QUOTED: usize = 80;
/// Why a Service we handle is refused before any decision: what it carries exceeds what a
/// Service can legitimately have (names, ports, requested addresses). Cheap (no scan of
/// anything unbounded), pure, and called outside the allocator lock; [`decide`] calls it too.
pub fn check_bounds(svc: &SvcInfo, options: &Options) -> Option<String> {
    if !options.handles(svc) {
        return None;
    }
    limits(svc)
}

/// [`check_bounds`] for a Service the webhook handles (whichever rule made it ours).
pub(super) fn limits(svc: &SvcInfo) -> Option<String> {
    if svc.namespace.len() > MAX_NAMESPACE_LEN {
        return Some(format!(
            "namespace name is {} characters long; at most {MAX_NAMESPACE_LEN} are valid",
            svc.namespace.len()
        ));
    }
    for (what, len) in [
        ("name", svc.name.len()),
        (
            "generateName",
            svc.generate_name.as_deref().map_or(0, str::len),
        ),
    ] {
        if len > MAX_NAME_LEN {
            return Some(format!(
                "metadata.{what} is {len} characters long; at most {MAX_NAME_LEN} are valid"
            ));
        }
    }
    if svc.ports.len() > MAX_PORTS {
        let distinct = if svc.ports.is_sorted() {
            svc.ports.len()
        } else {
            normalized_ports(&svc.ports).len()
        };
        if distinct > MAX_PORTS {
            return Some(format!(
                "the Service has {distinct} distinct (port, protocol) pairs; at most {MAX_PORTS} are \
                 supported (the most Kubernetes can publish in an EndpointSlice)"
            ));
        }
    }
    if let Some(p) = svc.ports.iter().find(|p| !(1..=65535).contains(&p.port)) {
        return Some(format!(
            "port {} is outside 1-65535 (the apiserver refuses it too)",
            p.port
        ));
    }
    let req = svc.requested()?;
    let field = field_name(req.source);
    if req.value.len() > MAX_REQUESTED_LEN {
        return Some(format!(
            "{field} is {} characters long; a Service has at most one address per family \
             ({MAX_REQUESTED_ENTRIES} entries, at most {MAX_REQUESTED_LEN} characters)",
            req.value.len()
        ));
    }
    let entries: Vec<&str> = entries(req.value).collect();
    if entries.len() > MAX_REQUESTED_ENTRIES {
        return Some(format!(
            "{field} has {} entries; a Service has at most one address per family \
             (at most {MAX_REQUESTED_ENTRIES}: one IPv4, one IPv6)",
            entries.len()
        ));
    }
    let parsed: Vec<IpAddr> = entries.iter().filter_map(|e| e.parse().ok()).collect();
    if let [a, b] = parsed[..]
        && a.is_ipv4() == b.is_ipv4()
    {
        return Some(format!(
            "{field} has two {} addresses ({a}, {b}); a Service has at most one address per family",
            Family::of(a)
        ));
    }
    None
}

pub(super) fn field_name(source: RequestSource) -> String {
    match source {
        RequestSource::Annotation => format!("annotation {LB_IPS_ANNOTATION}"),
        RequestSource::SpecLoadBalancerIp => "spec.loadBalancerIP".to_string(),
    }
}

/// The non-empty, trimmed entries of an address list.
pub(super) fn entries(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|e| !e.is_empty())
}

/// `text` quoted for a message, cut to [`MAX_QUOTED`] characters.
pub(super) fn quoted(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
    }
}
