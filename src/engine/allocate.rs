//! A fresh allocation: the pools a Service may draw from, tried in order (`pools::select`), the
//! first that gives what the Service's family policy needs wins.

use std::net::IpAddr;

use super::{Decision, FamilyPolicy, Outcome, Pools, View, other, pick};
use crate::ipam::Family;
use crate::pools::{Candidate, Selection, select};
use crate::service::{
    IMPLEMENTATION_LABEL, IMPLEMENTATION_VALUE, INTERFACE_ANNOTATION, LB_IPS_ANNOTATION, SvcInfo,
};

pub(super) fn allocate(svc: &SvcInfo, view: &View<'_>, pools: &Pools<'_>) -> Decision {
    let handled = view.options.handles(svc);
    let selection = select(svc, handled, pools.namespace_labels, pools.set, view.config);
    if selection.candidates.is_empty() {
        return Decision::new(Outcome::NoAddress(no_pool(
            svc, handled, &selection, pools, view,
        )));
    }
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
    // The first pool, in order, that gives the Service what its policy needs.
    let mut failures = Vec::new();
    let mut failed_warnings = Vec::new();
    for candidate in &selection.candidates {
        match from_pool(svc, candidate, wanted, required, view) {
            Ok(decision) => return decision,
            Err((why, warnings)) => {
                failures.push(why);
                failed_warnings.extend(warnings);
            }
        }
    }
    let mut decision = Decision::new(Outcome::NoAddress(failures.join("; ")));
    decision.warnings = failed_warnings;
    decision
}

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

/// The addresses `wanted` from one pool, or why not (and the pool's warnings either way).
fn from_pool(
    svc: &SvcInfo,
    candidate: &Candidate<'_>,
    wanted: &[Family],
    required: bool,
    view: &View<'_>,
) -> Result<Decision, (String, Vec<String>)> {
    let mut warnings: Vec<String> = match (candidate.object, candidate.errors()) {
        (Some(o), Some(errors)) => errors
            .iter()
            .map(|e| format!("VIPPool {}: {e} (ignored)", o.name))
            .collect(),
        _ => view
            .config
            .errors_for_key(candidate.key())
            .map(|e| format!("ConfigMap {}: {e} (entry ignored)", view.config_name))
            .collect(),
    };
    let mut ips = Vec::new();
    let mut shared = false;
    let mut missing = Vec::new();
    for family in wanted {
        match pick(svc, candidate, *family, view) {
            Ok((ip, was_shared)) => {
                ips.push(ip);
                shared |= was_shared;
            }
            Err(why) => missing.push(why),
        }
    }
    if ips.is_empty() || (required && !missing.is_empty()) {
        let what = if wanted.len() == 2 && required {
            "RequireDualStack needs one free address of each family: "
        } else {
            ""
        };
        return Err((format!("{what}{}", missing.join("; ")), warnings));
    }
    // PreferDualStack with one family unavailable: admitted with what we have, and said so.
    warnings.extend(missing.into_iter().map(|m| format!("PreferDualStack: {m}")));

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
