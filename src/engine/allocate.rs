//! A fresh allocation: the pools a Service may draw from, tried in order (`pools::entries`), the
//! first that gives what the Service's family policy needs wins; the pools after it are never
//! looked at.

use std::net::IpAddr;

use super::{Decision, FamilyPolicy, Miss, Outcome, Pools, View, other, pick};
use crate::ipam::Family;
use crate::pools::{Candidate, Entry, Selection, entries};
use crate::service::{
    IMPLEMENTATION_LABEL, IMPLEMENTATION_VALUE, INTERFACE_ANNOTATION, LB_IPS_ANNOTATION, SvcInfo,
};

pub(super) fn allocate(svc: &SvcInfo, view: &View<'_>, pools: &Pools<'_>) -> Decision {
    let handled = view.options.handles(svc);
    let tried = match entries(svc, handled, pools.namespace_labels, pools.set, view.config) {
        Ok(tried) => tried,
        Err((why, _)) => return Decision::new(Outcome::NoAddress(why)),
    };
    let primary = svc
        .families
        .first()
        .copied()
        .unwrap_or(view.options.default_family);
    let secondary = other(primary);
    let (wanted, required): (&[Family], bool) = match svc.policy {
        None | Some(FamilyPolicy::SingleStack) => (&[primary], true),
        Some(FamilyPolicy::RequireDualStack) => (&[primary, secondary], true),
        Some(FamilyPolicy::PreferDualStack) => (&[primary, secondary], false),
    };
    // The first pool, in order, that gives the Service what its policy needs. Why the others
    // could not is put into words only when none could.
    let mut misses = Vec::new();
    let mut disabled = Vec::new();
    for entry in tried {
        let candidate = match entry {
            Entry::Candidate(c) => c,
            Entry::Disabled(p) => {
                disabled.push(p);
                continue;
            }
        };
        match from_pool(svc, &candidate, wanted, required, view) {
            Ok(decision) => return decision,
            Err(missed) => misses.push((candidate, missed)),
        }
    }
    if misses.is_empty() {
        let selection = Selection {
            candidates: Vec::new(),
            disabled,
            refused: None,
        };
        return Decision::new(Outcome::NoAddress(no_pool(
            svc, handled, &selection, pools, view,
        )));
    }
    let mut failures = Vec::with_capacity(misses.len());
    let mut decision = Decision::new(Outcome::NoAddress(String::new()));
    for (candidate, missed) in misses {
        let why: Vec<String> = missed
            .iter()
            .flatten()
            .map(|(family, miss)| miss.explain(svc, &candidate, *family))
            .collect();
        let what = if wanted.len() == 2 && required {
            "RequireDualStack needs one free address of each family: "
        } else {
            ""
        };
        failures.push(format!("{what}{}", why.join("; ")));
        decision.warnings.extend(pool_warnings(&candidate, view));
    }
    decision.outcome = Outcome::NoAddress(failures.join("; "));
    decision
}

/// Problems in a pool's definition, as warnings.
fn pool_warnings(candidate: &Candidate<'_>, view: &View<'_>) -> Vec<String> {
    match (candidate.object, candidate.errors()) {
        (Some(o), Some(errors)) => errors
            .iter()
            .map(|e| format!("VIPPool {}: {e} (ignored)", o.name))
            .collect(),
        _ => view
            .config
            .errors_for_key(candidate.key())
            .map(|e| format!("ConfigMap {}: {e} (entry ignored)", view.config_name))
            .collect(),
    }
}

/// The families a pool could not give, and why (at most two).
type Missed<'a> = [Option<(Family, Miss<'a>)>; 2];

/// Why no pool can serve `svc` (there is no candidate).
fn no_pool(
    svc: &SvcInfo,
    handled: bool,
    selection: &Selection<'_>,
    pools: &Pools<'_>,
    view: &View<'_>,
) -> String {
    let ns = &svc.namespace;
    if let Some(why) = &selection.refused {
        return why.clone();
    }
    let configmap = format!(
        "ConfigMap {} has none of the keys cidr-{ns}, cidr-global, range-{ns}, range-global",
        view.config_name
    );
    if pools.set.is_empty() {
        return format!("no address pool for namespace {ns:?}: {configmap}");
    }
    let objects = if selection.disabled.is_empty() {
        "no VIPPool selects this Service".to_string()
    } else {
        let names: Vec<&str> = selection.disabled.iter().map(|p| p.name.as_str()).collect();
        format!(
            "the VIPPools that select this Service are disabled ({})",
            names.join(", ")
        )
    };
    if handled {
        format!("no address pool for namespace {ns:?}: {objects}, and {configmap}")
    } else {
        format!("no address pool for this Service: {objects}")
    }
}

/// The addresses `wanted` from one pool (with the pool's warnings), or which families it could
/// not give.
fn from_pool<'a>(
    svc: &SvcInfo,
    candidate: &Candidate<'a>,
    wanted: &[Family],
    required: bool,
    view: &View<'_>,
) -> Result<Decision, Missed<'a>> {
    let mut ips = Vec::new();
    let mut shared = false;
    let mut missed: Missed<'a> = [None, None];
    for (slot, family) in wanted.iter().enumerate() {
        match pick(svc, candidate, *family, view) {
            Ok((ip, was_shared)) => {
                ips.push(ip);
                shared |= was_shared;
            }
            Err(miss) => missed[slot] = Some((*family, miss)),
        }
    }
    let any_missed = missed.iter().any(Option::is_some);
    if ips.is_empty() || (required && any_missed) {
        return Err(missed);
    }
    let mut warnings = pool_warnings(candidate, view);
    // PreferDualStack with one family unavailable: admitted with what we have, and said so.
    warnings.extend(missed.iter().flatten().map(|(family, miss)| {
        format!("PreferDualStack: {}", miss.explain(svc, candidate, *family))
    }));

    let value = ips
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut decision = Decision::new(Outcome::Allocated {
        ips: ips.clone(),
        pool: candidate.key().to_string(),
        shared,
    });
    decision.warnings = warnings;
    let changes = &mut decision.changes;
    changes
        .annotations
        .insert(LB_IPS_ANNOTATION.to_string(), value);
    if let Some(iface) = candidate.interface {
        changes
            .annotations
            .insert(INTERFACE_ANNOTATION.to_string(), iface.to_string());
    }
    if !svc.has_implementation_label {
        changes.labels.insert(
            IMPLEMENTATION_LABEL.to_string(),
            IMPLEMENTATION_VALUE.to_string(),
        );
    }
    if view.options.write_spec_load_balancer_ip {
        changes.spec_load_balancer_ip = ips.first().map(IpAddr::to_string);
    }
    Ok(decision)
}
